"""GPU backend: the fusedce API on CUDA device arrays, computed by Numba CUDA kernels.

Same functions, keyword arguments, semantics and error messages as :mod:`fusedce.reference`
(see its docstring); the arguments are checked, and out-of-range targets detected, before
anything the caller owns is written. Importing this module does not import numba; the first
call does (``is_device_array`` never does).

Inputs
    logits: a device array (Numba device array, any object with ``__cuda_array_interface__``
    such as CuPy arrays and PyTorch CUDA tensors, or a DLPack object on a CUDA device) of
    float16, float32 or float64, shape (..., K). bfloat16 raises TypeError: numba-cuda has no
    bfloat16 arrays. Logits with more than two axes must be C-contiguous; 2-D ones may be strided.
    target: integer class indices (...) of any integer dtype, or probabilities of the logits'
    shape (a floating array; computed in the logits' dtype, as the reference does).
    target, weight, grad_output, lse may be device arrays or host (NumPy / Python) values.
    Device class indices are range-checked on the device (one small kernel, one read-back),
    host ones on the host. Device weights, and any grad_output or lse that is not already a
    contiguous float64 (float32/float64 for lse) device array, are read to the host for the
    shared checks: they hold one value per class or per row.

Results (on the device; launched on the logits' stream when its array interface names one)
    loss: a Python float for reduction 'mean'/'sum' (reading it back synchronises), a device
        array of shape logits.shape[:-1] for 'none': float64 for float64 logits, float32
        otherwise (as the CPU backend).
    lse (cross_entropy_forward, logsumexp): a device array of shape logits.shape[:-1], dtype
        as the per-row loss.
    gradient: a Numba device array of the logits' dtype and shape; with inplace=True the
        caller's logits object, with out= the caller's out object, holding the gradient.
    softmax / log_softmax: a Numba device array of the logits' dtype and shape.
    binary_cross_entropy_with_logits: a float for 'mean'/'sum', the element losses (a device
        array of the logits' shape and dtype) for 'none'; its target, of the logits' shape,
        stays on the device; weight, pos_weight and grad_output are checked on the host.

Numerics: float64 logits compute in float64, float16/float32 in float32 (the gradient is
rounded once, at the store, the target element included); the per-row epilogue (lse, loss,
gradient coefficients) runs in float64.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import _checks

__all__ = [
    "available",
    "is_device_array",
    "cross_entropy",
    "cross_entropy_with_grad",
    "cross_entropy_forward",
    "cross_entropy_backward",
    "log_softmax",
    "softmax",
    "logsumexp",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_with_grad",
]

# Launch tunables, module-level so that tests can shrink them to reach every path.
MAX_THREADS = 512  # largest block (a power of two); also sizes the reduction scratch
ELEMS_PER_THREAD = 8  # a block gets about span / ELEMS_PER_THREAD threads, at least a warp
ROW_CACHE_BYTES = 64 * 1024  # rows up to this size stay in shared memory between the passes
DEFAULT_SMEM_BYTES = 48 * 1024  # per block without the opt-in kernel attribute
SPLIT_MIN_CLASSES = 32768  # rows at least this long may be split over several blocks
SPLIT_CHUNK_MIN = 8192  # ... of at least this many elements each
BLOCKS_PER_SM = 4  # a split aims at this many blocks per multiprocessor
SM_COUNT = None  # None: ask the device (the simulator counts as 1)
REDUCE_BLOCKS = 128  # grid of the target check, the loss sum and casts
ELEMENTWISE_BLOCKS = 4096  # largest grid of the binary cross-entropy kernel


_DLPACK_CUDA_DEVICES = (2, 13)  # kDLCUDA, kDLCUDAManaged


def _dlpack_on_cuda(obj) -> bool:
    device = getattr(obj, "__dlpack_device__", None)
    if device is None:
        return False
    try:
        return int(device()[0]) in _DLPACK_CUDA_DEVICES
    except Exception:
        return False


def is_device_array(obj) -> bool:
    """True for CUDA device arrays: Numba's (real or simulated), any object exposing
    ``__cuda_array_interface__``, DLPack objects on a CUDA device. Never imports numba."""
    if obj is None or isinstance(obj, (np.ndarray, np.generic, numbers.Number, str, list, tuple)):
        return False
    if getattr(type(obj), "__cuda_ndarray__", False):
        return True
    try:
        if getattr(obj, "__cuda_array_interface__", None) is not None:
            return True
    except AttributeError:  # e.g. a CPU torch tensor
        pass
    except Exception:  # a CUDA tensor refusing the interface (torch: requires_grad)
        return True
    return _dlpack_on_cuda(obj)


def available() -> bool:
    """True when numba imports and a CUDA GPU (or NUMBA_ENABLE_CUDASIM=1) is usable."""
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:
        return False


# --------------------------------------------------------------------------- plumbing


def _numba():
    from numba import cuda

    from . import _cuda_kernels

    return cuda, _cuda_kernels


def _simulated() -> bool:
    from numba.cuda.core import config

    return bool(config.ENABLE_CUDASIM)


def _interface_stream(obj):
    """The stream field of obj's CUDA array interface (None: the default stream)."""
    try:
        iface = getattr(obj, "__cuda_array_interface__", None)
    except Exception:
        return None
    return iface.get("stream") if isinstance(iface, dict) else None


def _launch_stream(cuda, stream_field):
    if stream_field is None or _simulated():
        return 0
    if stream_field == 1:
        return cuda.legacy_default_stream()
    if stream_field == 2:
        return cuda.per_thread_default_stream()
    return cuda.external_stream(stream_field)


def _from_dlpack(cuda, obj):
    """A Numba device array viewing a CUDA DLPack object's memory."""
    from cuda.core.utils import StridedMemoryView

    # Consumer stream 1, the legacy default stream: the producer orders its work before ours.
    view = StridedMemoryView.from_dlpack(obj, stream_ptr=1)
    itemsize = np.dtype(view.dtype).itemsize
    strides = None if view.strides is None else tuple(s * itemsize for s in view.strides)
    desc = {"shape": tuple(view.shape), "strides": strides, "typestr": np.dtype(view.dtype).str,
            "data": (view.ptr, bool(view.readonly)), "version": 3}
    return cuda.from_cuda_array_interface(desc, owner=obj, sync=False)


def _device(cuda, obj, name, stream_field):
    """A Numba device array viewing obj's memory (no copy)."""
    if getattr(type(obj), "__cuda_ndarray__", False):
        return obj
    try:
        if not hasattr(obj, "__cuda_array_interface__") and _dlpack_on_cuda(obj):
            return _from_dlpack(cuda, obj)
        # Only arrays produced on another stream than the one we launch on need a sync.
        return cuda.as_cuda_array(obj, sync=_interface_stream(obj) != stream_field)
    except Exception as exc:
        raise TypeError(f"{name}: cannot read this {type(obj).__name__} as a CUDA array ({exc})") from exc


def _to_host(dev, stream):
    host = dev.copy_to_host(stream=stream)
    if not isinstance(stream, int):
        stream.synchronize()
    return host


def _shape_proxy(dev):
    """A zero-strided NumPy stand-in with dev's dtype and shape, so that _checks can judge
    (and word errors about) dtype and shape without touching device memory."""
    return np.broadcast_to(np.zeros((), dtype=dev.dtype), tuple(dev.shape))


def _address(dev):
    try:
        return dev.device_ctypes_pointer.value or 0
    except AttributeError:  # the simulator's arrays wrap NumPy arrays
        return dev.__array_interface__["data"][0]


def _overlap(a, b):
    if a is None or b is None or a.size == 0 or b.size == 0:
        return False

    def span(d):
        start = _address(d)
        extents = [(n - 1) * s for n, s in zip(d.shape, d.strides)]
        return (start + sum(min(0, e) for e in extents),
                start + sum(max(0, e) for e in extents) + d.dtype.itemsize)

    (alo, ahi), (blo, bhi) = span(a), span(b)
    return alo < bhi and blo < ahi


def _read_only(obj):
    try:
        iface = getattr(obj, "__cuda_array_interface__", None)
    except Exception:
        return False
    return isinstance(iface, dict) and bool(iface.get("data", (0, False))[1])


def _rows_view(dev, rows, classes):
    """dev as (rows, classes) without a copy, or None when its strides do not allow it."""
    if dev.is_c_contiguous():
        return dev.reshape(rows, classes)
    return dev if dev.ndim == 2 else None  # the kernels index 2-D arrays by stride


def _ceil_div(a, b):
    return -(-a // b)


def _pow2_at_least(n):
    p = 1
    while p < n:
        p *= 2
    return p


def _block_size(span):
    return min(MAX_THREADS, max(32, _pow2_at_least(_ceil_div(span, ELEMS_PER_THREAD))))


def _sm_count():
    if SM_COUNT is not None:
        return SM_COUNT
    cuda, _ = _numba()
    return getattr(cuda.get_current_device(), "MULTIPROCESSOR_COUNT", 1)


def _plan(rows, classes, itemsize, out_kind, needs_stats=True):
    """How a call is laid out: (blocks per row, elements per block, threads, cache the row?).

    One block per row, unless rows are too few to fill the GPU and long enough to share out;
    then several blocks per row whose partial statistics a second kernel merges. A row that
    gets a second pass and fits ROW_CACHE_BYTES is kept in shared memory between the passes.
    """
    _, kernels = _numba()
    n_chunks = 1
    if classes >= SPLIT_MIN_CLASSES and rows > 0:
        wanted = _ceil_div(BLOCKS_PER_SM * _sm_count(), rows)
        n_chunks = max(1, min(wanted, _ceil_div(classes, SPLIT_CHUNK_MIN), MAX_THREADS))
    chunk_len = _ceil_div(classes, n_chunks)
    n_chunks = _ceil_div(classes, chunk_len)  # no empty chunks
    threads = _block_size(chunk_len)
    if n_chunks > 1 and needs_stats:
        threads = max(threads, _pow2_at_least(n_chunks))  # a thread per partial to merge
    use_cache = (n_chunks == 1 and needs_stats and out_kind != kernels.OUT_NONE
                 and classes * itemsize <= ROW_CACHE_BYTES)
    return n_chunks, chunk_len, threads, use_cache


_dummies = {}


def _dummy(dtype, ndim):
    """A one-element device array standing in for an argument a launch does not use."""
    key = (np.dtype(dtype).str, ndim)
    if key not in _dummies:
        cuda, _ = _numba()
        _dummies[key] = cuda.to_device(np.zeros((1,) * ndim, dtype=dtype))
    return _dummies[key]


_smem_opted = {}


def _allow_dynamic_smem(kernel, args, nbytes, static_bytes):
    """Let this specialization of kernel use nbytes of dynamic shared memory; above 48 KiB in
    all CUDA needs the per-kernel opt-in, which Numba has no public API for. False if refused."""
    if nbytes + static_bytes <= DEFAULT_SMEM_BYTES or _simulated():
        return True
    try:
        from cuda.bindings import driver as binding
        from numba.cuda.cudadrv.driver import driver

        compiled = kernel._compile_for_args(*args)
        if _smem_opted.get(id(compiled), 0) < nbytes:
            cufunc = compiled._codelibrary.get_cufunc()
            attr = binding.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
            driver.cuKernelSetAttribute(attr, nbytes, cufunc.handle, cufunc.device.id)
            _smem_opted[id(compiled)] = nbytes
        return True
    except Exception:
        return False


# --------------------------------------------------------------------------- argument checks


class _Call:
    """One call in the form the launches take (every check already passed)."""

    def __init__(self, cuda, logits, name="logits", elementwise=False):
        self.cuda = cuda
        self.stream_field = _interface_stream(logits)
        self.stream = _launch_stream(cuda, self.stream_field)
        self.logits = logits
        dev = _device(cuda, logits, name, self.stream_field)
        if dev.dtype.name == "bfloat16":
            raise TypeError(f"{name}: bfloat16 is not supported on the GPU backend (numba-cuda "
                            "has no bfloat16 arrays); pass float16, float32 or float64")
        if elementwise:  # binary cross-entropy: any shape, 0-d included
            _checks.check_logits_dtype(dev, name)
        else:
            _checks.as_logits(_shape_proxy(dev), name)  # dtype, ndim and K, in the shared wording
        self.dev = dev
        self.dtype = dev.dtype
        self.compute_dtype = np.dtype(np.float64 if self.dtype == np.float64 else np.float32)
        self.shape = tuple(dev.shape)  # plain tuple: the simulator's shapes refuse index -1
        self.batch_shape = self.shape[:-1]
        classes = self.shape[-1] if self.shape else 1
        self.x = _rows_view(dev, int(np.prod(self.batch_shape, dtype=np.int64)), classes)
        if self.x is None:
            raise ValueError(f"{name} on the GPU must be C-contiguous when it has more than 2 "
                             f"dimensions, got strides {dev.strides}")
        # Cross-entropy settings; the defaults are what softmax and friends run with.
        self.target = None  # (rows,) class indices the kernels read
        self.target_source = None  # the caller's device class indices, for the error path
        self.probs = None  # (rows, K) probability targets in the logits' dtype
        self.weight = None  # per class (K,), or for binary cross-entropy (1 or rows, C)
        self.pos_weight = None
        self.weight_sum = 0.0
        self.ignore_index = -100
        self.reduction = "none"
        self.label_smoothing = 0.0
        self.z_loss = 0.0
        self.softcap = 0.0
        self.denominator = 1.0
        self.scale = 1.0
        self.scale_arr = None
        self.lse_in = None  # (rows,) the backward's given log-sum-exp
        self.grad = None
        self.grad_result = None

    @property
    def rows(self):
        return self.x.shape[0]

    @property
    def classes(self):
        return self.x.shape[1]

    def device(self, obj, name):
        return _device(self.cuda, obj, name, self.stream_field)

    def upload(self, host):
        return self.cuda.to_device(np.asarray(host, order="C"), stream=self.stream)

    def empty(self, shape, dtype):
        return self.cuda.device_array(shape, dtype=dtype, stream=self.stream)


def _check_writable(call, obj, dev, name):
    """out= and inplace=True arrays: _checks.check_writable_target's rules for device arrays."""
    if tuple(dev.shape) != call.shape:
        raise ValueError(f"{name} must have shape {call.shape}, got {tuple(dev.shape)}")
    if dev.dtype != call.dtype:
        raise TypeError(f"{name} must have dtype {call.dtype}, got {dev.dtype}")
    if _read_only(obj):
        raise ValueError(f"{name} is read-only; the gradient cannot be written into it")
    if not dev.is_c_contiguous():
        raise ValueError(f"{name} must be C-contiguous to be written in place, got strides {dev.strides}")


def _set_target(call, target):
    """Class indices or probabilities, as _checks.check_ce tells them apart. Device class
    indices: dtype and shape here, the range later on the device (_device_target_check).
    Host targets go through _checks and are uploaded. Returns the host class indices, or None."""
    K, ignore_index, batch_shape = call.classes, call.ignore_index, call.batch_shape
    if is_device_array(target):
        dev = call.device(target, "target")
        if _checks.is_float_array(dev) and tuple(dev.shape) == call.shape:
            if ignore_index != -100:
                _checks.as_probability_target(_shape_proxy(dev), _shape_proxy(call.dev), ignore_index)
            call.probs = _probabilities(call, dev)
            if call.probs is not None:
                return None
            target = _to_host(dev, call.stream)
        elif dev.dtype.kind not in "iu" or tuple(dev.shape) != batch_shape:
            _checks.as_target(_shape_proxy(dev), batch_shape, K, ignore_index)  # raises
        elif dev.is_c_contiguous() or dev.ndim == 1:
            call.target = dev if dev.ndim == 1 else dev.reshape(call.rows)
            call.target_source = dev
            return None
        else:
            target = _to_host(dev, call.stream)  # strided N-d indices: checked on the host
    t = _checks.as_array(target, "target")
    if _checks.is_float_array(t) and t.shape == call.shape:
        probs = _checks.as_probability_target(t, _shape_proxy(call.dev), ignore_index)
        call.probs = call.upload(probs)
        return None
    host = _checks.as_target(t, batch_shape, K, ignore_index)
    call.target = call.upload(host)
    return host


def _probabilities(call, dev):
    """Device probability targets as (rows, K) of the logits' dtype (the reference rounds
    them to it); None when only a trip through the host can make that."""
    if dev.dtype == call.dtype:
        return _rows_view(dev, call.rows, call.classes)
    if not dev.is_c_contiguous() or dev.dtype.name == "bfloat16":
        return None
    probs = call.empty((call.rows, call.classes), call.dtype)
    _cast(call, dev.reshape(dev.size), probs.reshape(probs.size))
    return probs


def _device_target_check(call, w64):
    """Range-check device class indices in one small kernel; returns the 'mean' denominator."""
    if call.rows == 0:
        return 0.0
    _, kernels = _numba()
    blocks, threads = _grid_1d(call.rows)
    partial = call.empty((blocks, 2), np.float64)
    want_weight = call.reduction == "mean" and w64 is not None
    weight = call.upload(w64) if want_weight else _dummy(np.float64, 1)
    kernels.reduce_kernels(MAX_THREADS).check_targets[blocks, threads, call.stream](
        call.target, weight, want_weight, call.ignore_index, call.classes, partial)
    result = _to_host(partial, call.stream)
    if result[:, 1].min() < call.rows:
        # Rare: let the host check find the row and word the error exactly as the CPU does.
        host = _to_host(call.target_source, call.stream)
        _checks.as_target(host, call.batch_shape, call.classes, call.ignore_index)
        raise AssertionError("device and host target checks disagree")
    return float(result[:, 0].sum())


def _set_grad_output(call, grad_output):
    """call.scale (with 'mean' folded in) and, for per-row grad_output, call.scale_arr."""
    if is_device_array(grad_output):
        dev = call.device(grad_output, "grad_output")
        if (dev.dtype == np.float64 and dev.ndim > 0 and call.reduction == "none"
                and tuple(dev.shape) == call.batch_shape and dev.is_c_contiguous()):
            call.scale_arr = dev.reshape(call.rows)
            return
        grad_output = _to_host(dev, call.stream)  # anything else: judged on the host
    scale = _checks.as_grad_output(grad_output, call.reduction, call.batch_shape)
    if isinstance(scale, np.ndarray):
        call.scale_arr = call.upload(scale)
    else:
        call.scale = _checks.mean_scaled(scale, call.reduction, call.denominator)


def _set_grad_buffer(call, inplace, out, inputs):
    """inplace / out= as _checks.check_grad_destination has them; `inputs` names the device
    arrays the kernel reads while it writes the gradient."""
    if not isinstance(inplace, (bool, np.bool_)):
        raise TypeError(f"inplace must be True or False, got {inplace!r}")
    if inplace and out is not None:
        raise ValueError("pass either inplace=True or out=, not both")
    if inplace:
        _check_writable(call, call.logits, call.dev, "logits (inplace=True)")
        _check_disjoint("logits (inplace=True)", call.dev, inputs)
        call.grad, call.grad_result = call.x, call.logits
    elif out is not None:
        if not is_device_array(out):
            raise TypeError(f"out must be a CUDA device array like the logits, got {type(out).__name__}")
        dev = call.device(out, "out")
        _check_writable(call, out, dev, "out")
        same = _address(dev) == _address(call.dev) and call.dev.is_c_contiguous()
        if _overlap(dev, call.dev) and not same:
            raise ValueError("out overlaps logits without being the same array; pass a separate buffer or use inplace=True")
        _check_disjoint("out", dev, inputs)
        call.grad, call.grad_result = dev.reshape(call.rows, call.classes), out
    else:
        grad = call.empty(call.shape, call.dtype)
        call.grad, call.grad_result = grad.reshape(call.rows, call.classes), grad


def _check_disjoint(dest_name, dest, inputs):
    for name, value in inputs.items():
        if _overlap(dest, value):
            raise ValueError(f"{dest_name} must not overlap {name}: the gradient would overwrite it while it is read")


_NO_LSE = object()


def _prepare_ce(logits, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap,
                grad_output=None, inplace=False, out=None, want_grad=False, lse=_NO_LSE):
    """Check a cross-entropy call in the reference's order; nothing the caller owns is written.
    lse: the backward's saved log-sum-exp, checked into call.lse_in."""
    cuda, _ = _numba()
    call = _Call(cuda, logits)
    (call.reduction, call.label_smoothing, call.z_loss, call.softcap,
     call.ignore_index) = _checks.check_options(reduction, label_smoothing, z_loss, softcap, ignore_index)
    host_target = _set_target(call, target)
    if is_device_array(weight):
        weight = _to_host(call.device(weight, "weight"), call.stream)  # K values: checked on the host
    w64 = _checks.as_weight(weight, call.classes)
    if call.probs is not None:
        call.denominator = float(call.rows)  # torch: probability targets average over rows
    elif host_target is None:
        call.denominator = _device_target_check(call, w64)
    elif call.reduction == "mean":
        call.denominator = _checks.counted_weight_sum(host_target, w64, call.ignore_index)
    if w64 is not None:
        call.weight = call.upload(w64.astype(call.compute_dtype))
        call.weight_sum = float(w64.sum())
    else:
        call.weight_sum = float(call.classes)
    if want_grad:
        _set_grad_output(call, grad_output)
        if lse is not _NO_LSE:
            call.lse_in = _device_lse(call, lse)
        reads = {"target": call.probs if call.probs is not None else call.target,
                 "weight": call.weight, "grad_output": call.scale_arr, "lse": call.lse_in}
        _set_grad_buffer(call, inplace, out, reads)
    return call


def _device_lse(call, lse):
    if is_device_array(lse):
        dev = call.device(lse, "lse")
        if (dev.dtype in (np.float32, np.float64) and tuple(dev.shape) == call.batch_shape
                and dev.is_c_contiguous()):
            return dev.reshape(call.rows)
        lse = _to_host(dev, call.stream)
    return call.upload(_checks.as_lse(lse, call.batch_shape))


# --------------------------------------------------------------------------- launches


def _launch(call, out_kind, *, want_loss=False, want_lse=False, lse_in=None, out=None):
    """Run the row kernels; returns the per-row (loss, lse) device arrays of the compute
    dtype (a dummy for what was not asked)."""
    _, kernels = _numba()
    rows, K = call.rows, call.classes
    ct = call.compute_dtype
    loss = call.empty(rows, ct) if want_loss else _dummy(ct, 1)
    lse = call.empty(rows, ct) if want_lse else _dummy(ct, 1)
    if rows == 0:
        return loss, lse
    if K == 0:  # nothing to score (_checks.as_rows): loss 0, lse -inf
        if want_loss:
            loss = call.upload(np.zeros(rows, ct))
        if want_lse:
            lse = call.upload(np.full(rows, -np.inf, ct))
        return loss, lse
    kern = kernels.row_kernels(call.dtype.name, MAX_THREADS)
    cap = ct.type(call.softcap)
    inv_cap = ct.type(1.0 / call.softcap if call.softcap else 0.0)
    has_target = call.target is not None
    soft = call.probs is not None
    target = call.target if has_target else _dummy(np.int64, 1)
    probs = call.probs if soft else _dummy(call.dtype, 2)
    has_weight = call.weight is not None
    weight = call.weight if has_weight else _dummy(ct, 1)
    scale_arr = call.scale_arr if call.scale_arr is not None else _dummy(np.float64, 1)
    out = out if out is not None else _dummy(call.dtype, 2)
    lse_given = lse_in is not None
    lse_in = lse_in if lse_given else _dummy(np.float64, 1)
    keep, spc = 1.0 - call.label_smoothing, call.label_smoothing / K

    # Class-index backward needs no statistics; probability targets need sum w q~ anyway.
    needs_stats = not lse_given or soft
    n_chunks, chunk_len, threads, use_cache = _plan(rows, K, call.dtype.itemsize, out_kind, needs_stats)
    partials, yt_buf = _dummy(ct, 3), _dummy(ct, 1)
    n_parts = n_chunks
    if not needs_stats:
        stats_src = kernels.STATS_NONE
    elif n_chunks > 1:
        stats_src = kernels.STATS_PARTIALS
        partials = call.empty((rows, n_chunks, kernels.N_STATS), ct)
        yt_buf = call.empty(rows, ct)
        kern.chunk_stats[rows * n_chunks, threads, call.stream](
            call.x, target, probs, weight, has_weight, soft, want_loss and spc > 0,
            want_loss and has_target, call.ignore_index, keep, spc, cap, inv_cap, n_chunks,
            chunk_len, partials, yt_buf)
        if out_kind == kernels.OUT_NONE:
            n_chunks, chunk_len = 1, K  # one block per row merges; no second pass
    else:
        stats_src = kernels.STATS_ROW

    def rows_args(cached):
        return (call.x, target, probs, weight, scale_arr, lse_in, partials, yt_buf, loss, lse, out,
                stats_src, lse_given, out_kind, n_parts, n_chunks, chunk_len, cached,
                has_target, soft, has_weight, call.scale_arr is not None, want_loss, want_lse,
                call.ignore_index, keep, spc, call.z_loss, call.weight_sum, call.scale, cap, inv_cap)

    smem = K * call.dtype.itemsize if use_cache else 0
    scratch_bytes = kernels.N_STATS * MAX_THREADS * ct.itemsize  # the reduction arrays
    if use_cache and not _allow_dynamic_smem(kern.rows, rows_args(True), smem, scratch_bytes):
        use_cache, smem = False, 0  # no opt-in: two passes over global memory instead
    kern.rows[rows * n_chunks, threads, call.stream, smem](*rows_args(use_cache))
    return loss, lse


def _grid_1d(n, max_blocks=None):
    """(blocks, threads) for a grid-stride loop over n items."""
    threads = min(MAX_THREADS, 256)
    return min(max_blocks or REDUCE_BLOCKS, max(1, _ceil_div(n, threads))), threads


def _cast(call, src, dst):
    _, kernels = _numba()
    blocks, threads = _grid_1d(dst.size)
    kernels.reduce_kernels(MAX_THREADS).cast[blocks, threads, call.stream](src, dst)


def _device_sum(call, values):
    """sum(values) in float64, deterministic: per-block partials added on the host."""
    if values.size == 0:
        return 0.0
    _, kernels = _numba()
    blocks, threads = _grid_1d(values.size)
    partial = call.empty(blocks, np.float64)
    kernels.reduce_kernels(MAX_THREADS).sum_rows[blocks, threads, call.stream](values, partial)
    return float(_to_host(partial, call.stream).sum())


def _reduced_loss(call, loss):
    if call.reduction == "none":
        return loss.reshape(call.batch_shape)
    total = _device_sum(call, loss)
    if call.reduction == "sum":
        return total
    return total / call.denominator if call.denominator != 0.0 else 0.0


# --------------------------------------------------------------------------- public API


def cross_entropy(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, z_loss=0.0, softcap=None):
    """Loss: a float for 'mean'/'sum', a device array of shape logits.shape[:-1] for 'none'."""
    call = _prepare_ce(logits, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap)
    _, kernels = _numba()
    loss, _ = _launch(call, kernels.OUT_NONE, want_loss=True)
    return _reduced_loss(call, loss)


def cross_entropy_forward(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                          label_smoothing=0.0, z_loss=0.0, softcap=None):
    """(loss, lse): lse is a device array of shape logits.shape[:-1]."""
    call = _prepare_ce(logits, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap)
    _, kernels = _numba()
    loss, lse = _launch(call, kernels.OUT_NONE, want_loss=True, want_lse=True)
    return _reduced_loss(call, loss), lse.reshape(call.batch_shape)


def cross_entropy_with_grad(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                            label_smoothing=0.0, z_loss=0.0, softcap=None, grad_output=1.0,
                            inplace=False, out=None):
    """(loss, gradient of grad_output * loss with respect to the logits), one fused pass."""
    call = _prepare_ce(logits, target, weight, ignore_index, reduction, label_smoothing, z_loss,
                       softcap, grad_output, inplace, out, want_grad=True)
    _, kernels = _numba()
    loss, _ = _launch(call, kernels.OUT_GRAD, want_loss=True, out=call.grad)
    return _reduced_loss(call, loss), call.grad_result


def cross_entropy_backward(logits, target, lse, grad_output=1.0, *, weight=None, ignore_index=-100,
                           reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None,
                           inplace=False, out=None):
    """Gradient of grad_output * loss, given the lse that cross_entropy_forward returned."""
    call = _prepare_ce(logits, target, weight, ignore_index, reduction, label_smoothing, z_loss,
                       softcap, grad_output, inplace, out, want_grad=True, lse=lse)
    _, kernels = _numba()
    _launch(call, kernels.OUT_GRAD, lse_in=call.lse_in, out=call.grad)
    return call.grad_result


def _softmax_family(x, out_kind):
    cuda, _ = _numba()
    call = _Call(cuda, x, "x")
    result = call.empty(call.shape, call.dtype)
    _launch(call, out_kind, out=result.reshape(call.rows, call.classes))
    return result


def logsumexp(x):
    """log(sum(exp(x))) over the last axis: a device array of shape x.shape[:-1] (float64
    for float64 x, else float32)."""
    cuda, kernels = _numba()
    call = _Call(cuda, x, "x")
    _, lse = _launch(call, kernels.OUT_NONE, want_lse=True)
    return lse.reshape(call.batch_shape)


def log_softmax(x):
    """log_softmax over the last axis, in x's dtype."""
    _, kernels = _numba()
    return _softmax_family(x, kernels.OUT_LOG_SOFTMAX)


def softmax(x):
    """softmax over the last axis, in x's dtype."""
    _, kernels = _numba()
    return _softmax_family(x, kernels.OUT_SOFTMAX)


# --------------------------------------------------------------------------- binary cross-entropy


def _prepare_bce(logits, target, weight, pos_weight, reduction, grad_output=1.0, inplace=False,
                 out=None, want_grad=False):
    """(call, checked): _checks.check_bce judges stand-ins of the logits and target (np.empty:
    the right shape and dtype, pages never touched) and host copies of the small arguments,
    so the rules and wording are the CPU's; the device arrays are used as they are."""
    cuda, _ = _numba()
    call = _Call(cuda, logits, elementwise=True)
    t_dev = call.device(target, "target") if is_device_array(target) else None
    if t_dev is not None:
        # A floating stand-in in the logits' dtype: check_bce's conversion is then no copy.
        stand_in_dtype = call.dtype if _checks.is_float_array(t_dev) else t_dev.dtype
        target = np.empty(tuple(t_dev.shape), stand_in_dtype)
    host = {name: _to_host(call.device(v, name), call.stream) if is_device_array(v) else v
            for name, v in (("weight", weight), ("pos_weight", pos_weight), ("grad_output", grad_output))}
    checked = _checks.check_bce(np.empty(call.shape, call.dtype), target, reduction=reduction,
                                weight=host["weight"], pos_weight=host["pos_weight"],
                                grad_output=host["grad_output"], want_grad=want_grad)
    call.reduction = reduction
    call.probs = _bce_target(call, t_dev, checked.target)
    ct = call.compute_dtype
    if checked.weight is not None:
        call.weight = call.upload(checked.weight.reshape(-1, call.classes).astype(ct))
    if checked.pos_weight is not None:
        call.pos_weight = call.upload(checked.pos_weight.reshape(-1, call.classes).astype(ct))
    if want_grad:
        if isinstance(checked.grad_scale, np.ndarray):
            call.scale_arr = call.upload(checked.grad_scale.astype(ct))
        else:
            call.scale = checked.grad_scale
        _set_grad_buffer(call, inplace, out, {"target": call.probs, "grad_output": call.scale_arr})
    return call, checked


def _bce_target(call, t_dev, checked_target):
    """The target as (rows, C) of the logits' dtype on the device."""
    if t_dev is None:
        return call.upload(checked_target)
    if t_dev.dtype == call.dtype:
        view = _rows_view(t_dev, call.rows, call.classes)
        if view is not None:
            return view
    elif t_dev.is_c_contiguous() and t_dev.dtype.name != "bfloat16":
        probs = call.empty((call.rows, call.classes), call.dtype)
        _cast(call, t_dev.reshape(t_dev.size), probs.reshape(probs.size))
        return probs
    host = _to_host(t_dev, call.stream)  # strided: through the host
    return call.upload(np.ascontiguousarray(host, dtype=call.dtype).reshape(call.rows, call.classes))


def _run_bce(call, checked, want_grad):
    """Launch; returns what reduce_bce takes: (sum of element losses, element losses or None)."""
    _, kernels = _numba()
    ct = call.compute_dtype
    want_elements = call.reduction == "none"
    elements = call.empty(call.shape, call.dtype) if want_elements else None
    n = call.rows * call.classes
    if n == 0:
        return 0.0, elements
    blocks, threads = _grid_1d(n, ELEMENTWISE_BLOCKS)
    partial = call.empty(blocks, np.float64)
    weight, pos_weight = call.weight, call.pos_weight
    weight_mode = 0 if weight is None else (1 if checked.weight_per_class else 2)
    pos_weight_mode = 0 if pos_weight is None else (1 if checked.pos_weight_per_class else 2)
    kernels.bce_kernels(call.dtype.name, MAX_THREADS).bce[blocks, threads, call.stream](
        call.x, call.probs, weight if weight is not None else _dummy(ct, 2), weight_mode,
        pos_weight if pos_weight is not None else _dummy(ct, 2), pos_weight_mode,
        call.scale_arr if call.scale_arr is not None else _dummy(ct, 2), call.scale_arr is not None,
        call.scale, elements.reshape(call.rows, call.classes) if want_elements else _dummy(call.dtype, 2),
        want_elements, call.grad if want_grad else _dummy(call.dtype, 2), want_grad, partial)
    total = 0.0 if want_elements else float(_to_host(partial, call.stream).sum())
    return total, elements


def binary_cross_entropy_with_logits(logits, target, *, weight=None, pos_weight=None, reduction="mean"):
    """torch's binary_cross_entropy_with_logits: a float for 'mean'/'sum', the element losses
    (a device array of the logits' shape and dtype) for 'none'."""
    call, checked = _prepare_bce(logits, target, weight, pos_weight, reduction)
    return _checks.reduce_bce(checked, *_run_bce(call, checked, want_grad=False))


def binary_cross_entropy_with_logits_with_grad(logits, target, *, weight=None, pos_weight=None,
                                               reduction="mean", grad_output=1.0, inplace=False,
                                               out=None):
    """(loss, gradient of grad_output * loss with respect to the logits), one pass."""
    call, checked = _prepare_bce(logits, target, weight, pos_weight, reduction, grad_output,
                                 inplace, out, want_grad=True)
    return _checks.reduce_bce(checked, *_run_bce(call, checked, want_grad=True)), call.grad_result
