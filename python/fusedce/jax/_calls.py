"""The XLA custom calls: fusedce's C handlers (csrc/jax_ffi.c) registered with XLA:CPU and
called through jax.ffi.ffi_call.

The handlers live in fusedce's own extension module (fusedce._cffi); their addresses are
wrapped in PyCapsules and registered on first use. XLA asks each handler which XLA FFI API
version it was written against and refuses the registration if it cannot serve it; that
refusal is raised here as a RuntimeError naming both versions.

Every call uses vmap_method="broadcast_all": under jax.vmap the operands get the same leading
batch dimensions, and the handlers (told the rank of the call as written, `batch_rank`) treat
each vmapped instance as a group of rows with its own reduction and weights.
"""

from __future__ import annotations

import threading

import jax
import numpy as np

from .._cffi import ffi, lib
from ._arguments import compute_dtype

CE, BCE, SOFTMAX = "fusedce_ce", "fusedce_bce", "fusedce_softmax"
_HANDLERS = {CE: "fusedce_xla_ce", BCE: "fusedce_xla_bce", SOFTMAX: "fusedce_xla_softmax"}
# Platforms with XLA but no fusedce kernels under jit: a handler that raises a clear error.
_OTHER_PLATFORMS = ("CUDA", "ROCM")

# Whether the CE gradient is written over the logits (below); bench/bench_jax_alias.py measures
# both choices and is the only reader that changes it.
ALIAS_GRADIENT = True

_lock = threading.Lock()
_registered = False


def _capsule(symbol):
    address = int(ffi.cast("uintptr_t", ffi.addressof(lib, symbol)))
    return jax.ffi.pycapsule(address)


def api_version():
    """(major, minor) of the XLA FFI API the handlers are written against."""
    v = lib.fusedce_xla_api_version()
    return v // 1000, v % 1000


def register():
    """Register the handlers with XLA once per process (idempotent, thread-safe)."""
    global _registered
    if _registered:
        return
    with _lock:
        if _registered:
            return
        jax.devices()  # XLA checks a handler when its backend exists: errors are raised here
        for name, symbol in _HANDLERS.items():
            try:
                jax.ffi.register_ffi_target(name, _capsule(symbol), platform="cpu")
            except Exception as exc:
                major, minor = api_version()
                raise RuntimeError(
                    f"fusedce.jax: this JAX ({jax.__version__}) refused fusedce's XLA FFI handler {name!r}, written against XLA FFI API {major}.{minor}: {exc}"
                ) from exc
        for platform in _OTHER_PLATFORMS:
            for name in _HANDLERS:
                try:
                    jax.ffi.register_ffi_target(name, _capsule("fusedce_xla_unsupported"), platform=platform)
                except Exception:  # a jaxlib without that platform
                    pass
        _registered = True


def _i(v):
    return np.int64(v)


def _f(v):
    return np.float64(v)


def ce(opts, x, t, w, *, fwd=False, grad=False, cot=None, lse=None):
    """One call of the cross-entropy handler. Returns, in order, (loss, lse) if fwd and the
    gradient if grad. cot: the upstream gradient (a scalar for 'mean'/'sum', per row for
    'none') in the compute dtype; lse: the saved per-row log-sum-exp (then only the gradient)."""
    register()
    cd = compute_dtype(x.dtype)
    batch = x.shape[:-1]
    out = []
    if fwd:
        out += [jax.ShapeDtypeStruct(batch if opts.reduction == "none" else (), cd), jax.ShapeDtypeStruct(batch, cd)]
    if grad:
        out.append(jax.ShapeDtypeStruct(x.shape, x.dtype))
    operands = [x, t] + ([w] if w is not None else []) + ([cot.astype(cd)] if grad else [])
    operands += [lse.astype(cd)] if lse is not None else []
    # The gradient is written over the logits (the kernels allow it): where the logits die in
    # the loss, as in a training step that computes them, XLA then needs no logits-sized buffer
    # for the gradient (nor the page faults of a fresh one); where they are still needed (a jitted
    # function's own argument that is not donated), XLA copies them first. Measured with
    # bench/bench_jax_alias.py (4096x32000): in place is 4x faster donated and 1.2-1.7x faster in
    # a step that computes the logits than a buffer of its own; a kept argument pays the copy.
    aliases = {0: len(out) - 1} if grad and ALIAS_GRADIENT else None
    call = jax.ffi.ffi_call(CE, out, vmap_method="broadcast_all", input_output_aliases=aliases)
    return call(*operands, reduction=_i(opts.reduction_code), batch_rank=_i(opts.batch_rank),
                ignore_index=_i(opts.ignore_index), label_smoothing=_f(opts.label_smoothing),
                z_loss=_f(opts.z_loss), softcap=_f(opts.softcap), has_weight=_i(w is not None),
                soft=_i(opts.soft), fwd=_i(fwd), grad=_i(grad), lse_given=_i(lse is not None))


def bce(opts, x, t, w, pw, *, fwd=False, grad=False, cot=None):
    """One call of the binary cross-entropy handler: (loss,) if fwd, then the gradient if grad.
    The loss is one value for 'mean'/'sum' (compute dtype), element losses for 'none'."""
    register()
    cd = compute_dtype(x.dtype)
    out = []
    if fwd:
        out.append(jax.ShapeDtypeStruct(x.shape, x.dtype) if opts.reduction == "none" else jax.ShapeDtypeStruct((), cd))
    if grad:
        out.append(jax.ShapeDtypeStruct(x.shape, x.dtype))
    operands = [x, t] + [a for a in (w, pw) if a is not None] + ([cot.astype(cd)] if grad else [])
    aliases = {0: len(out) - 1} if grad else None  # as for ce(): the gradient over the logits
    call = jax.ffi.ffi_call(BCE, out, vmap_method="broadcast_all", input_output_aliases=aliases)
    return call(*operands, reduction=_i(opts.reduction_code), batch_rank=_i(opts.batch_rank),
                has_weight=_i(w is not None), weight_per_class=_i(opts.weight_per_class),
                has_pos_weight=_i(pw is not None), pos_weight_per_class=_i(opts.pos_weight_per_class),
                fwd=_i(fwd), grad=_i(grad))


MODES = {"logsumexp": 0, "softmax": 1, "log_softmax": 2}


def softmax_family(mode, x):
    """(lse,) for logsumexp; (out, lse) for softmax and log_softmax. lse in the compute dtype."""
    register()
    lse = jax.ShapeDtypeStruct(x.shape[:-1], compute_dtype(x.dtype))
    out = [lse] if mode == "logsumexp" else [jax.ShapeDtypeStruct(x.shape, x.dtype), lse]
    return jax.ffi.ffi_call(SOFTMAX, out, vmap_method="broadcast_all")(x, mode=_i(MODES[mode]))
