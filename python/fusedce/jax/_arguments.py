"""Trace-time argument checks for fusedce.jax, with the NumPy API's messages.

Under jax.jit the arrays are tracers: only shapes and dtypes are known. So the NumPy API's own
checks (fusedce._checks) are run on zero-strided NumPy stand-ins of the same shape and dtype
(no memory, no copy), which reproduces every shape and dtype message exactly. Values are
checked here only when they are concrete (a weight or target given as a constant or outside
jit); otherwise the XLA handler checks them when the program runs (csrc/jax_ffi.c).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks, _linear

REDUCTION_CODES = {"none": 0, "mean": 1, "sum": 2}


def is_traced(a) -> bool:
    return isinstance(a, jax.core.Tracer)


def stand_in(a):
    """A NumPy array of a's shape and dtype that takes no memory (all zeros)."""
    return np.broadcast_to(np.zeros((), dtype=a.dtype), tuple(a.shape))


def host_or_stand_in(a):
    """a's values on the host when they are known now (small arrays only), else a stand-in."""
    return stand_in(a) if is_traced(a) else np.asarray(a)


def as_jax(value, name, what="an array"):
    """value as a JAX array (itself if it is one); what cannot be converted is a TypeError
    naming the argument, as in the NumPy API."""
    if isinstance(value, jax.Array):
        return value
    try:
        arr = _checks.as_array(value, name, what)
        return jnp.asarray(arr) if arr.dtype.kind in "iufb" or _checks.dtype_name(arr.dtype) == "bfloat16" else arr
    except TypeError:
        raise
    except Exception as exc:
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}") from exc


def compute_dtype(dtype):
    """What the kernels compute in: float64 for float64 logits, float32 for the rest."""
    return jnp.float64 if np.dtype(dtype) == np.float64 else jnp.float32


def as_logits(logits, name="logits"):
    """The logits as a JAX array of a supported dtype with K >= 1 classes (a nested list of
    Python ints becomes JAX's default float dtype, as the NumPy API makes it float64)."""
    if isinstance(logits, (list, tuple)):
        probe = _checks.as_array(logits, name, "an array of floats")
        if probe.dtype.kind in "iu":
            logits = probe.astype(np.float64)
    x = as_jax(logits, name, "an array of floats")
    if not isinstance(x, jax.Array):  # an object or string array: the NumPy API's TypeError
        _checks.check_logits_dtype(x, name)
    _checks.as_logits(stand_in(x), name)
    return x


@dataclass(frozen=True)
class CEOptions:
    """The static part of one cross-entropy call (hashable: a custom_vjp nondiff argument)."""

    reduction: str
    ignore_index: int
    label_smoothing: float
    z_loss: float
    softcap: float  # 0.0 = off
    soft: bool  # probability targets
    batch_rank: int  # logits.ndim - 1 as called (vmap adds leading dims to the operands)

    @property
    def reduction_code(self):
        return REDUCTION_CODES[self.reduction]


def check_ce(logits, target, weight, *, reduction, ignore_index, label_smoothing, z_loss, softcap):
    """(CEOptions, logits, target, weight) ready for the custom call: target int32/int64 or
    probabilities in the logits' dtype, weight in the compute dtype or None."""
    x = as_logits(logits)
    reduction, label_smoothing, z_loss, softcap, ignore_index = _checks.check_options(
        reduction, label_smoothing, z_loss, softcap, ignore_index)
    K = x.shape[-1]
    batch_shape = x.shape[:-1]
    t = as_jax(target, "target")
    if not isinstance(t, jax.Array) and not _checks.is_float_array(t):
        _checks.as_target(t, batch_shape, K, ignore_index)  # the NumPy API's dtype message
    soft = _checks.is_float_array(t) and t.shape == x.shape
    if soft:
        # only ignore_index is judged: an empty probe with the logits' class count
        _checks.check_ignore_index_unused(ignore_index)
        t = t.astype(x.dtype)
    else:
        t = class_indices(t, batch_shape, K, ignore_index)
    w = class_weight(weight, K, x.dtype)
    opts = CEOptions(reduction, ignore_index, label_smoothing, z_loss, softcap, soft, len(batch_shape))
    return opts, x, t, w


def class_indices(t, batch_shape, K, ignore_index):
    """Class-index targets, judged as the NumPy API judges them (values only when known now),
    as int32/int64 for the custom call."""
    probe = host_or_stand_in(t)
    if is_traced(t) and probe.dtype.kind in "iu":
        # values unknown until run time (the custom call checks them): a probe of ignored
        # rows, so that only shape and dtype are judged now, whatever K is (even 0)
        probe = np.broadcast_to(np.int64(ignore_index), probe.shape)
    _checks.as_target(probe, batch_shape, K, ignore_index)
    if t.dtype not in (jnp.int32, jnp.int64):
        t = t.astype(jnp.int64 if jax.config.jax_enable_x64 else jnp.int32)
    return t


def class_weight(weight, K, logits_dtype):
    """The per-class weights (K,) in the compute dtype, or None."""
    if weight is None:
        return None
    w = as_jax(weight, "weight")
    if not isinstance(w, jax.Array):
        _checks.as_weight(w, K)  # the NumPy API's dtype message
    _checks.as_weight(host_or_stand_in(w), K)
    return w.astype(compute_dtype(logits_dtype))


@dataclass(frozen=True)
class BCEOptions:
    reduction: str
    batch_rank: int  # logits.ndim as called
    weight_per_class: bool
    pos_weight_per_class: bool

    @property
    def reduction_code(self):
        return REDUCTION_CODES[self.reduction]


def _bce_real(value, name):
    a = as_jax(value, name)
    if not _checks.is_float_array(a) and a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be a real array, got dtype {a.dtype}")
    return a


def check_bce(logits, target, weight, pos_weight, *, reduction):
    """(BCEOptions, logits, target, weight, pos_weight): the NumPy API's rules
    (fusedce._checks.check_bce) on shapes and dtypes; weight and pos_weight each per class (C,)
    or of the logits' shape, in the compute dtype."""
    x = as_jax(logits, "logits", "an array of floats")
    _checks.check_logits_dtype(x)
    if not isinstance(reduction, str) or reduction not in _checks.REDUCTIONS:
        raise ValueError(f"reduction must be one of 'none', 'mean', 'sum', got {reduction!r}")
    t = as_jax(target, "target")
    if not _checks.is_float_array(t):
        raise TypeError(f"target must be a floating array of probabilities in [0, 1], got dtype {t.dtype}")
    if t.shape != x.shape:
        raise ValueError(f"target must have the logits' shape {x.shape}, got {t.shape}")
    cd = compute_dtype(x.dtype)
    classes = x.shape[-1] if x.ndim else 1
    broadcast = {}
    for name, value in (("weight", weight), ("pos_weight", pos_weight)):
        if value is None:
            broadcast[name] = (None, True)
            continue
        a = _bce_real(value, name)
        if not is_traced(a):
            _checks.check_finite(np.asarray(a), name)
        per_class = _checks.bce_broadcast_is_per_class(a.shape, name, x.shape)
        if per_class:
            a = a.reshape(a.shape[-1:])
        broadcast[name] = (jnp.broadcast_to(a.astype(cd), (classes,) if per_class else x.shape), per_class)
    (w, w_per_class), (pw, pw_per_class) = broadcast["weight"], broadcast["pos_weight"]
    opts = BCEOptions(reduction, x.ndim, w_per_class, pw_per_class)
    return opts, x, t.astype(x.dtype), w, pw


@dataclass(frozen=True)
class LinearOptions:
    """The static part of one linear_cross_entropy call: the cross-entropy options of each
    chunk's custom call (reduction 'none' for 'none', else 'sum': 'mean' divides at the end),
    the reduction as called and the rows per chunk."""

    ce: CEOptions
    reduction: str
    chunk_rows: int


def check_linear(input, linear_weight, target, linear_bias, weight, *, ignore_index, reduction, label_smoothing,
                 z_loss, softcap, chunk_size):
    """(LinearOptions, x (N, H), w (V, H), b (V,) or None, target (N,) or (N, V), class weight or
    None, batch shape), with the NumPy API's rules (fusedce._linear.check_call) and messages;
    half precision allowed as everywhere in fusedce.jax."""
    arrays = []
    for name, a in (("input", input), ("linear_weight", linear_weight), ("linear_bias", linear_bias)):
        if a is None:
            arrays.append(None)
            continue
        a = as_jax(a, name, "an array of floats")
        _checks.check_logits_dtype(a, name)
        arrays.append(a)
    x, w, b = arrays
    weight = None if weight is None else as_jax(weight, "weight")
    weight_shape = None if weight is None else tuple(weight.shape)
    hidden, vocab = _linear.check_shapes(
        tuple(x.shape), _checks.dtype_name(x.dtype), tuple(w.shape), _checks.dtype_name(w.dtype),
        None if b is None else (tuple(b.shape), _checks.dtype_name(b.dtype)), weight_shape)
    reduction, label_smoothing, z_loss, softcap, ignore_index = _checks.check_options(
        reduction, label_smoothing, z_loss, softcap, ignore_index)
    chunk_size = _linear.check_chunk_size(chunk_size)
    batch_shape = tuple(x.shape[:-1])
    t = as_jax(target, "target")
    soft = _checks.is_float_array(t)
    if soft:
        if tuple(t.shape) != batch_shape + (vocab,):
            raise ValueError(f"target of probabilities must have shape {batch_shape + (vocab,)} (the logits' "
                             f"shape: input's batch shape and V), got {tuple(t.shape)}")
        _checks.check_ignore_index_unused(ignore_index)
        t = jnp.asarray(t).astype(x.dtype).reshape(-1, vocab)
    else:
        t = class_indices(t, batch_shape, vocab, ignore_index).reshape(-1)
    cw = class_weight(weight, vocab, x.dtype)
    rows = rows_of(batch_shape)
    ce = CEOptions("none" if reduction == "none" else "sum", ignore_index, label_smoothing, z_loss, softcap, soft,
                   batch_rank=1)
    chunk_rows = _linear.chunk_rows_for(chunk_size, vocab, np.dtype(x.dtype).itemsize, rows)
    if chunk_size is None and rows:
        # the budget's number of chunks, of equal rows where they divide: no smaller last chunk
        # (a second copy of the chunk's buffers in the compiled program) when N allows
        chunk_rows = -(-rows // -(-rows // chunk_rows))
    opts = LinearOptions(ce, reduction, chunk_rows)
    return opts, x.reshape(rows, hidden), w, b, t, cw, batch_shape


def rows_of(shape):
    return math.prod(shape)
