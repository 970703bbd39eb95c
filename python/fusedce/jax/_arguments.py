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

from .. import _checks

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
        probe = host_or_stand_in(t)
        if is_traced(t) and probe.dtype.kind in "iu":
            # values unknown until run time (the custom call checks them): a probe of ignored
            # rows, so that only shape and dtype are judged now, whatever K is (even 0)
            probe = np.broadcast_to(np.int64(ignore_index), probe.shape)
        _checks.as_target(probe, batch_shape, K, ignore_index)
        if t.dtype not in (jnp.int32, jnp.int64):
            t = t.astype(jnp.int64 if jax.config.jax_enable_x64 else jnp.int32)
    w = None
    if weight is not None:
        w = as_jax(weight, "weight")
        if not isinstance(w, jax.Array):
            _checks.as_weight(w, K)  # the NumPy API's dtype message
        _checks.as_weight(host_or_stand_in(w), K)
        w = w.astype(compute_dtype(x.dtype))
    opts = CEOptions(reduction, ignore_index, label_smoothing, z_loss, softcap, soft, len(batch_shape))
    return opts, x, t, w


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


def rows_of(shape):
    return math.prod(shape)
