"""The CPU backend: the C kernels through the cffi extension module (API mode).

cffi releases the GIL around every call; arrays are passed with ffi.from_buffer (no copy).
Half-precision arrays are passed as their uint16 bit patterns.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from . import _pool
from ._cffi import ffi, lib
from ._checks import dtype_name

# Every instruction set the C library knows (csrc/isa_list.h), by enum value, compiled in or not.
ISA_NAMES = tuple(ffi.string(lib.fusedce_isa_name(code)).decode() for code in range(lib.FUSEDCE_ISA_COUNT))

_DTYPE_CODE = {
    "float32": lib.FUSEDCE_F32,
    "float64": lib.FUSEDCE_F64,
    "float16": lib.FUSEDCE_F16,
    "bfloat16": lib.FUSEDCE_BF16,
}
_BCE_ENTRY = {
    "float32": lib.fusedce_bce_f32,
    "float64": lib.fusedce_bce_f64,
    "float16": lib.fusedce_bce_f16,
    "bfloat16": lib.fusedce_bce_bf16,
}
_CE_ENTRY = {
    "float32": lib.fusedce_ce_f32,
    "float64": lib.fusedce_ce_f64,
    "float16": lib.fusedce_ce_f16,
    "bfloat16": lib.fusedce_ce_bf16,
}


def compute_dtype(dtype):
    """What the kernels compute in: float64 for float64 logits, float32 for the rest."""
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def _buf(arr):
    """A cffi pointer to an array's memory, half types as uint16."""
    if arr.dtype.itemsize == 2:
        arr = arr.view(np.uint16)
    return ffi.from_buffer(arr)


def _check_rc(rc, call=None):
    if rc == lib.FUSEDCE_OK:
        return
    if rc == lib.FUSEDCE_ETARGET and call is not None:
        raise ValueError("target is out of range: class indices must be in [0, K) or equal ignore_index")
    raise RuntimeError(f"fusedce C kernel failed with code {rc}")


class _Pointers:
    """cffi pointers to arrays, kept alive (with their buffers) for the duration of a call."""

    def __init__(self):
        self._keep = []

    def __call__(self, arr, ctype="void *"):
        b = _buf(arr)
        self._keep.append(b)
        return ffi.cast(ctype, b)


def binary_cross_entropy(call, *, want_elements):
    """Run one checked BCE call (see _checks.BCECall): (sum of element losses, element losses
    in the logits' shape and dtype or None); writes call.grad when it is set."""
    x = call.x
    loss = _pool.empty_like(x) if want_elements else None
    total = ffi.new("double *", 0.0)
    if x.size:
        ptr = _Pointers()
        compute = compute_dtype(x.dtype)
        args = ffi.new("fusedce_bce_args *")
        args.rows, args.classes = x.shape
        args.logits = ptr(x)
        args.target = ptr(call.target)
        if call.weight is not None:
            args.weight = ptr(np.ascontiguousarray(call.weight, dtype=compute))
            args.weight_per_class = call.weight_per_class
        if call.pos_weight is not None:
            args.pos_weight = ptr(np.ascontiguousarray(call.pos_weight, dtype=compute))
            args.pos_weight_per_element = not call.pos_weight_per_class
        if isinstance(call.grad_scale, np.ndarray):
            args.grad_scale = ptr(np.ascontiguousarray(call.grad_scale, dtype=compute))
        elif call.grad_scale is not None:
            args.grad_scale_all = call.grad_scale
        if loss is not None:
            args.loss = ptr(loss)
        if call.grad is not None:
            args.grad = ptr(call.grad)
        args.loss_sum = total
        _check_rc(_BCE_ENTRY[dtype_name(x.dtype)](args))
    return total[0], None if loss is None else loss.reshape(call.logits.shape)


def cross_entropy(call, *, want_loss, want_lse=False, lse_in=None):
    """Run one checked call (see _checks.CECall). Returns (loss, lse) float64 per-row arrays
    (None where not asked); writes call.grad when it is set."""
    rows, classes = call.rows, call.classes
    loss = _pool.empty(rows, np.float64) if want_loss else None
    lse = _pool.empty(rows, np.float64) if want_lse else None
    if rows == 0 or classes == 0:  # nothing to score (_checks.as_rows): loss 0, lse -inf
        if loss is not None:
            loss.fill(0.0)
        if lse is not None:
            lse.fill(-np.inf)
        return loss, lse
    name = dtype_name(call.x.dtype)
    args = ffi.new("fusedce_ce_args *")
    bad_row = ffi.new("int64_t *", -1)
    ptr = _Pointers()

    args.rows = rows
    args.classes = classes
    args.logits = ptr(call.x, "void *")
    if call.soft:
        args.target_probs = ptr(call.target, "void *")
    else:
        args.target = ptr(call.target, "void *")
        args.target_is_i64 = call.target.dtype == np.int64
    if call.weight is not None:
        args.weight = ptr(np.ascontiguousarray(call.weight, dtype=compute_dtype(call.x.dtype)), "void *")
    args.ignore_index = call.ignore_index
    args.label_smoothing = call.label_smoothing
    args.z_loss = call.z_loss
    args.softcap = call.softcap
    if isinstance(call.grad_scale, np.ndarray):
        args.grad_scale = ptr(call.grad_scale, "double *")
    elif call.grad_scale is not None:
        args.grad_scale_all = call.grad_scale
    if lse_in is not None:
        args.lse_in = ptr(lse_in, "double *")
    if loss is not None:
        args.loss = ptr(loss, "double *")
    if lse is not None:
        args.lse_out = ptr(lse, "double *")
    if call.grad is not None:
        args.grad = ptr(call.grad, "void *")
    args.class_offset = call.class_offset
    args.total_classes = call.total_classes
    args.bad_row = bad_row
    _check_rc(_CE_ENTRY[name](args), call)
    return loss, lse


SOFTMAX_MODES = {"logsumexp": lib.FUSEDCE_LOGSUMEXP, "softmax": lib.FUSEDCE_SOFTMAX, "log_softmax": lib.FUSEDCE_LOG_SOFTMAX}


def softmax_family(mode, x2d):
    """(out, lse) for x2d (rows, K) C-contiguous; out is None for logsumexp."""
    rows, classes = x2d.shape
    lse = _pool.empty(rows, np.float64)
    out = None if mode == "logsumexp" else _pool.empty_like(x2d)
    if rows == 0 or classes == 0:
        lse.fill(-np.inf)  # log of an empty sum
        return out, lse
    xb = _buf(x2d)
    ob = _buf(out) if out is not None else ffi.NULL
    lb = ffi.from_buffer(lse)
    rc = lib.fusedce_softmax(_DTYPE_CODE[dtype_name(x2d.dtype)], SOFTMAX_MODES[mode], rows, classes,
                             ffi.cast("void *", xb), ffi.cast("void *", ob), ffi.cast("double *", lb))
    _check_rc(rc)
    return out, lse


ROOFLINE_PATTERNS = {"read": lib.FUSEDCE_ROOFLINE_READ, "copy": lib.FUSEDCE_ROOFLINE_COPY}


def roofline(pattern, src, dst=None):
    """Seconds the C library takes for one pass of a memory pattern over src's bytes, with the
    threads a kernel call over src's elements uses: 'read' reads them once, 'copy' copies them
    into dst (an array of the same size) with streaming stores (see fusedce.h)."""
    seconds = ffi.new("double *")
    src_buf = _buf(src)
    dst_buf = _buf(dst) if dst is not None else ffi.NULL
    _check_rc(lib.fusedce_roofline(ROOFLINE_PATTERNS[pattern], ffi.cast("void *", src_buf), ffi.cast("void *", dst_buf),
                                   src.nbytes, src.size, seconds))
    return seconds[0]


def isa_name(code):
    return ffi.string(lib.fusedce_isa_name(code)).decode()


def isa_code(name):
    if name not in ISA_NAMES:
        raise ValueError(f"isa must be one of {', '.join(ISA_NAMES)}, got {name!r}")
    return ISA_NAMES.index(name)


def available_isas():
    """ISAs that are both compiled in and supported by this CPU."""
    return [name for code, name in enumerate(ISA_NAMES) if lib.fusedce_isa_available(code)]


def cpu_isas():
    """ISAs this CPU (and its OS) supports, whether this build compiled them in or not."""
    return [name for code, name in enumerate(ISA_NAMES) if lib.fusedce_cpu_has_isa(code)]


def set_isa(name):
    code = isa_code(name)
    if lib.fusedce_set_isa(code) != lib.FUSEDCE_OK:
        raise ValueError(
            f"isa {name!r} is not available on this machine (available: {', '.join(available_isas())})"
        )


def active_isa():
    return isa_name(lib.fusedce_active_isa())


def detected_isa():
    return isa_name(lib.fusedce_detected_isa())


_forked = False  # this process is a fork child: OpenMP must stay on one thread


def _one_thread_after_fork():
    """GNU OpenMP (libgomp) cannot run a parallel region in a child forked after the parent
    ran one: the child inherits the thread pool's bookkeeping but not its threads, and waits
    for them forever. The child computes on one thread, as torch's intra-op pool does."""
    global _forked
    _forked = True
    lib.fusedce_set_num_threads(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_one_thread_after_fork)


def set_num_threads(n):
    n = int(n)
    if _forked and n != 1:
        warnings.warn(f"fusedce.set_num_threads({n}) in a forked child: fusedce stays on one thread "
                      "(OpenMP cannot start threads in a child forked from a process that ran them; "
                      "use the 'spawn' or 'forkserver' start method for multi-threaded workers)",
                      RuntimeWarning, stacklevel=2)
        n = 1
    lib.fusedce_set_num_threads(n)


def get_num_threads():
    return lib.fusedce_get_num_threads()


def max_threads():
    return lib.fusedce_max_threads()


def openmp():
    """Whether the C kernels were built with OpenMP (threads); without it (Apple's compiler,
    say) they run on one thread."""
    return lib.fusedce_openmp() > 0


def cache_bytes():
    """(L2 per core, last-level cache) in bytes, as the kernels' split and streaming use them."""
    return int(lib.fusedce_l2_bytes()), int(lib.fusedce_llc_bytes())
