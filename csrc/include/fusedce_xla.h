/* fusedce's XLA FFI handlers (csrc/jax_ffi.c): the C kernels as XLA custom calls, for
 * fusedce.jax. Each is an XLA FFI handler, XLA_FFI_Error *(*)(XLA_FFI_CallFrame *), written
 * here with void pointers so that this header, and the cffi module generated from it, need no
 * XLA declarations; the Python side takes their addresses and hands them to
 * jax.ffi.register_ffi_target. What each takes is documented in csrc/jax_ffi.c.
 */
#ifndef FUSEDCE_XLA_H
#define FUSEDCE_XLA_H

#ifdef __cplusplus
extern "C" {
#endif

void *fusedce_xla_ce(void *call_frame);          /* cross-entropy: loss, lse and/or gradient */
void *fusedce_xla_bce(void *call_frame);         /* binary cross-entropy with logits */
void *fusedce_xla_softmax(void *call_frame);     /* logsumexp, softmax, log_softmax */
void *fusedce_xla_unsupported(void *call_frame); /* always an error: for platforms without kernels */

/* The XLA FFI API version the handlers declare, major * 1000 + minor. */
int fusedce_xla_api_version(void);

#ifdef __cplusplus
}
#endif
#endif /* FUSEDCE_XLA_H */
