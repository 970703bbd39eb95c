"""Argument checking shared by every backend and by the NumPy reference.

Everything here runs before any kernel writes, so a rejected call leaves every array as it
was. The result of a check is a :class:`CECall`: the arguments in the one normalised form the
backends take (2-D contiguous logits, 1-D targets, per-row gradient scale).
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass

import numpy as np

from . import _pool

REDUCTIONS = ("none", "mean", "sum")

#: logits dtypes by name; bfloat16 is the ml_dtypes dtype, recognised by name so that
#: importing fusedce never needs ml_dtypes.
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def dtype_name(dtype) -> str:
    return _name_of(np.dtype(dtype))


@functools.lru_cache(maxsize=256)
def _name_of(dtype):
    # NumPy computes dtype.name in Python on every access (several microseconds); a call
    # asks for it about five times
    return dtype.name


def check_logits_dtype(arr, name="logits"):
    if dtype_name(arr.dtype) not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating array (float16, bfloat16, float32 or float64), "
            f"got dtype {arr.dtype}"
        )


def native_order(arr):
    """arr in the machine's byte order (a copy only when it is not): the kernels read raw bytes."""
    return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))


def as_array(value, name, what="an array"):
    """value as an ndarray (itself if it is one); what NumPy cannot convert (a ragged nested
    list, say) is a TypeError naming the argument rather than NumPy's own message."""
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}") from exc


def as_logits(logits, name="logits"):
    """The logits as an ndarray of a supported dtype with at least one axis (in native byte
    order: a byte-swapped array is copied). K = 0 classes is allowed: see rows_of."""
    arr = as_array(logits, name, "an array of floats")
    if arr is not logits:
        if arr.dtype.kind in "iu" and arr.dtype != np.bool_:
            # A nested Python list of ints is a natural way to write small logits.
            if not isinstance(logits, (list, tuple)):
                check_logits_dtype(arr, name)
            arr = arr.astype(np.float64)
    check_logits_dtype(arr, name)
    arr = native_order(arr)
    if arr.ndim < 1:
        raise ValueError(f"{name} must have at least 1 dimension (..., K), got a 0-d array")
    return arr


def as_rows(arr):
    """arr (..., K) as a C-contiguous (rows, K) array; the rows given explicitly, since
    reshape(-1, 0) cannot infer them. With K = 0 there is nothing to score: every row's lse
    is log(0) = -inf and its loss an empty sum, 0 (z_loss and label_smoothing have no class
    to act on); class targets must then all be ignore_index."""
    return np.ascontiguousarray(arr).reshape(math.prod(arr.shape[:-1]), arr.shape[-1])


def _as_int(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    return int(value)


def as_real(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    return float(value)


def check_options(reduction, label_smoothing, z_loss, softcap, ignore_index):
    """The scalar options; returns them normalised (softcap None becomes 0.0 = off)."""
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of 'none', 'mean', 'sum', got {reduction!r}")
    ignore_index = _as_int(ignore_index, "ignore_index")
    if not -(2**63) <= ignore_index < 2**63:
        raise ValueError(f"ignore_index must fit in a 64-bit signed integer, got {ignore_index}")
    label_smoothing = as_real(label_smoothing, "label_smoothing")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    z_loss = as_real(z_loss, "z_loss")
    if not (math.isfinite(z_loss) and z_loss >= 0.0):
        raise ValueError(f"z_loss must be a finite number >= 0, got {z_loss}")
    if softcap is None:
        softcap = 0.0
    else:
        softcap = as_real(softcap, "softcap")
        if not (math.isfinite(softcap) and softcap > 0.0):
            raise ValueError(f"softcap must be None or a finite number > 0, got {softcap}")
    return reduction, label_smoothing, z_loss, softcap, ignore_index


def as_target(target, batch_shape, num_classes, ignore_index):
    """Integer class indices of shape ``batch_shape``, flattened to int32/int64, range-checked."""
    t = as_array(target, "target")
    if is_float_array(t):
        raise TypeError(
            f"target must be an integer array of class indices of shape {tuple(batch_shape)}, "
            f"or probabilities of the logits' shape; got dtype {t.dtype} and shape {t.shape}"
        )
    if t.dtype.kind not in "iu":
        raise TypeError(f"target must be an integer array of class indices, got dtype {t.dtype}")
    if t.shape != tuple(batch_shape):
        raise ValueError(
            f"target must have shape {tuple(batch_shape)} (logits.shape[:-1]), got {t.shape}"
        )
    flat = t.reshape(-1)
    if flat.size and not _targets_in_range(flat, num_classes, ignore_index):
        counted = flat != ignore_index
        bad = counted & ((flat < 0) | (flat >= num_classes))
        if bad.any():
            first = int(np.argmax(bad))
            row = np.unravel_index(first, t.shape) if t.ndim else ()
            where = "target" + (f"[{', '.join(str(int(i)) for i in row)}]" if t.ndim else "")
            raise ValueError(
                f"{where} = {int(flat[first])} is out of range: class indices must be in "
                f"[0, {num_classes}) or equal ignore_index={ignore_index}"
            )
    if flat.dtype not in (np.int32, np.int64):
        flat = flat.astype(np.int64)
    return np.ascontiguousarray(flat)


def _targets_in_range(flat, num_classes, ignore_index):
    """Whether every class index is in [0, num_classes) or ignore_index, with one or two
    temporary arrays where the full test below takes five (at 671k rows of 100 classes they
    cost 1 ms, 5 % of a forward): seen as unsigned, a negative index is out of range too, and
    the out-of-range ones are all ignored rows exactly when there are as many of them as
    ignored rows (ignore_index itself out of range)."""
    unsigned = flat.view(np.dtype(flat.dtype.str.replace("i", "u")))  # byte order kept
    out_of_range = np.count_nonzero(unsigned >= num_classes)
    if out_of_range == 0:
        return True
    if 0 <= ignore_index < num_classes:
        return False
    return out_of_range == np.count_nonzero(flat == ignore_index)


def is_float_array(a) -> bool:
    return a.dtype.kind == "f" or dtype_name(a.dtype) == "bfloat16"


def check_ignore_index_unused(ignore_index):
    """Probability targets have no ignore_index: one given is a mistake, said so."""
    if ignore_index != -100:
        raise ValueError(
            f"ignore_index does not apply to probability targets (got ignore_index={ignore_index}); "
            "give a row all-zero probabilities to leave it out of the sum"
        )


def as_probability_target(t, logits, ignore_index):
    """Probability targets (the logits' shape) as a (B, K) array of the logits' dtype."""
    check_ignore_index_unused(ignore_index)
    return as_rows(np.asarray(t, dtype=logits.dtype))


def as_weight(weight, num_classes):
    if weight is None:
        return None
    w = as_array(weight, "weight")
    if w.dtype.kind not in "iuf" and dtype_name(w.dtype) != "bfloat16":
        raise TypeError(f"weight must be a real array of {num_classes} per-class weights, got dtype {w.dtype}")
    if w.shape != (num_classes,):
        raise ValueError(f"weight must have shape ({num_classes},) (one per class), got {w.shape}")
    w = np.ascontiguousarray(w, dtype=np.float64)
    check_finite(w, "weight")
    return w


def check_finite(a, name):
    """A NaN or infinite weight would make every loss it touches NaN: refuse it, naming where."""
    finite = np.isfinite(a)
    if not finite.all():
        where = np.unravel_index(int(np.argmax(~finite)), a.shape)
        index = f"[{', '.join(str(int(i)) for i in where)}]" if a.ndim else ""
        raise ValueError(f"{name} must be finite, got {name}{index} = {a[where]}")


def as_grad_output(grad_output, reduction, batch_shape):
    """A float, or with reduction='none' a float64 array of one scale per row."""
    if isinstance(grad_output, numbers.Real) and not isinstance(grad_output, (bool, np.bool_)):
        return float(grad_output)
    g = as_array(grad_output, "grad_output")
    if g.dtype.kind not in "iuf" and dtype_name(g.dtype) != "bfloat16":
        raise TypeError(f"grad_output must be a real scalar or array, got dtype {g.dtype}")
    if g.ndim == 0:
        return float(g)
    if reduction != "none":
        raise ValueError(
            f"grad_output must be a scalar with reduction={reduction!r}, got shape {g.shape}"
        )
    if g.shape != tuple(batch_shape):
        raise ValueError(
            f"grad_output must be a scalar or have shape {tuple(batch_shape)} "
            f"(one per row), got {g.shape}"
        )
    return np.ascontiguousarray(g, dtype=np.float64).reshape(-1)


def check_writable_target(arr, name, shape, dtype):
    """``out=`` style arrays and ``inplace=True`` logits: written by the kernel directly."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(arr).__name__}")
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {arr.shape}")
    if arr.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {arr.dtype}")
    if not arr.flags.writeable:
        raise ValueError(f"{name} is read-only; the gradient cannot be written into it")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous to be written in place, got strides {arr.strides}")


@dataclass
class CECall:
    """One cross-entropy call in the form every backend takes."""

    logits: np.ndarray  # the caller's array, as given (inplace writes here)
    x: np.ndarray  # (B, K) C-contiguous view or copy of the logits
    batch_shape: tuple
    target: np.ndarray  # (B,) int32 or int64 class indices, or (B, K) probabilities
    weight: np.ndarray | None  # (K,) float64
    ignore_index: int
    reduction: str
    label_smoothing: float
    z_loss: float
    softcap: float  # 0.0 = off
    denominator: float  # what 'mean' divides by: the summed weight of the counted rows
    grad_scale: float | np.ndarray | None  # per-row factor on the gradient (None: no gradient)
    grad: np.ndarray | None  # where the gradient goes (B, K), may be x itself (inplace)
    grad_result: np.ndarray | None  # the caller's array to return as the gradient (inplace/out)
    lse_in: np.ndarray | None = None  # (B,) float64 saved log-sum-exp (backward given lse)
    # a vocabulary shard (fusedce._shard): x holds the classes [class_offset, class_offset + K)
    # of rows of total_classes; 0: whole rows
    class_offset: int = 0
    total_classes: int = 0

    @property
    def soft(self):
        """Probability targets rather than class indices."""
        return self.target.ndim == 2

    @property
    def rows(self):
        return self.x.shape[0]

    @property
    def classes(self):
        return self.x.shape[1]


#: check_ce's lse when the call is not a backward (None is a bad lse, not a missing one)
NO_LSE = object()


def counted_weight_sum(target, weight, ignore_index):
    """Summed weight of the rows that count (not ignore_index): the 'mean' denominator."""
    counted = target != ignore_index
    if weight is None:
        return float(np.count_nonzero(counted))
    return float(weight[target[counted]].sum())


def check_ce(
    logits,
    target,
    *,
    weight,
    ignore_index,
    reduction,
    label_smoothing,
    z_loss,
    softcap,
    grad_output=None,
    inplace=False,
    out=None,
    want_grad=False,
    lse=NO_LSE,
):
    """Check a cross-entropy call; nothing is written here. lse: the backward's saved
    log-sum-exp, checked here (shape, and no overlap with the gradient) into call.lse_in."""
    arr = as_logits(logits)
    reduction, label_smoothing, z_loss, softcap, ignore_index = check_options(
        reduction, label_smoothing, z_loss, softcap, ignore_index
    )
    num_classes = arr.shape[-1]
    batch_shape = arr.shape[:-1]
    t_arr = as_array(target, "target")
    if is_float_array(t_arr) and t_arr.shape == arr.shape:
        t = as_probability_target(t_arr, arr, ignore_index)
    else:
        t = as_target(t_arr, batch_shape, num_classes, ignore_index)
    w = as_weight(weight, num_classes)
    grad_scale = lse64 = None
    if want_grad:
        grad_scale = as_grad_output(grad_output, reduction, batch_shape)
        lse64 = None if lse is NO_LSE else as_lse(lse, batch_shape)
        check_grad_destination(logits, arr, inplace, out,
                               {"target": t, "weight": w, "grad_output": grad_scale, "lse": lse64})
    x = as_rows(arr)
    denominator = 1.0
    if reduction == "mean":
        # torch: class targets divide by the counted rows' summed target weight, probability
        # targets by the number of rows.
        denominator = float(x.shape[0]) if t.ndim == 2 else counted_weight_sum(t, w, ignore_index)
    grad = grad_result = None
    if want_grad:
        grad_scale = mean_scaled(grad_scale, reduction, denominator)
        grad, grad_result = grad_destination(arr, x, inplace, out)
    return CECall(
        logits=arr,
        x=x,
        batch_shape=batch_shape,
        target=t,
        weight=w,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        denominator=denominator,
        grad_scale=grad_scale,
        grad=grad,
        grad_result=grad_result,
        lse_in=lse64,
    )


def check_grad_destination(logits, arr, inplace, out, inputs):
    """inplace=True / out= for a gradient of arr's shape and dtype. `inputs` names the arrays
    the kernel reads (as it will read them, after conversion) while it writes the gradient."""
    if not isinstance(inplace, (bool, np.bool_)):
        raise TypeError(f"inplace must be True or False, got {inplace!r}")
    if inplace and out is not None:
        raise ValueError("pass either inplace=True or out=, not both")
    if inplace:
        if not isinstance(logits, np.ndarray):
            raise TypeError(f"inplace=True needs logits to be a NumPy array, got {type(logits).__name__}")
        # the caller's array, not arr: a byte-swapped one was copied and cannot be written in place
        check_writable_target(logits, "logits (inplace=True)", arr.shape, arr.dtype)
        check_disjoint("logits (inplace=True)", arr, inputs)
    if out is not None:
        check_writable_target(out, "out", arr.shape, arr.dtype)
        same = out.__array_interface__["data"][0] == arr.__array_interface__["data"][0]
        if np.may_share_memory(out, arr) and not (same and arr.flags.c_contiguous):
            raise ValueError("out overlaps logits without being the same array; pass a separate buffer or use inplace=True")
        check_disjoint("out", out, inputs)


def check_disjoint(dest_name, dest, inputs):
    """The gradient must not overwrite an input the kernel still has to read."""
    for name, value in inputs.items():
        if isinstance(value, np.ndarray) and np.may_share_memory(dest, value):
            raise ValueError(f"{dest_name} must not overlap {name}: the gradient would overwrite it while it is read")


def grad_destination(arr, x, inplace, out):
    """(where the kernel writes the gradient, the caller's array to return or None)."""
    if inplace:
        return x, arr
    if out is not None:
        return out.reshape(x.shape), out
    return _pool.empty_like(x), None


def mean_scaled(grad_scale, reduction, denominator):
    """The gradient factor: grad_output, over the denominator for 'mean'. A 'mean' over zero
    weight is 0 with a zero gradient (torch: NaN)."""
    if reduction != "mean":
        return grad_scale
    return grad_scale / denominator if denominator != 0.0 else 0.0


def as_lse(lse, batch_shape):
    """The per-row log-sum-exp that cross_entropy_forward returned, as float64 (B,)."""
    a = as_array(lse, "lse")
    if a.dtype.kind != "f" and dtype_name(a.dtype) != "bfloat16":
        raise TypeError(f"lse must be a floating array, got dtype {a.dtype}")
    if a.shape != tuple(batch_shape):
        raise ValueError(f"lse must have shape {tuple(batch_shape)} (logits.shape[:-1]), got {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float64).reshape(-1)


def reduce_loss(call: CECall, row_loss: np.ndarray, out_dtype):
    """Per-row (weighted) losses in float64 -> what the caller gets for the reduction."""
    if call.reduction == "none":
        return _pool.astype(row_loss.reshape(call.batch_shape), out_dtype)
    total = float(np.sum(row_loss, dtype=np.float64))
    if call.reduction == "sum":
        return total
    return total / call.denominator if call.denominator != 0.0 else 0.0


@dataclass
class BCECall:
    """One binary cross-entropy call: everything viewed as (rows, C), C the last axis."""

    logits: np.ndarray
    x: np.ndarray  # (rows, C) C-contiguous
    target: np.ndarray  # (rows, C), the logits' dtype
    weight: np.ndarray | None  # (C,) per class, or (rows, C); float64
    pos_weight: np.ndarray | None  # (C,) per class, or (rows, C); float64
    reduction: str
    grad_scale: float | np.ndarray | None  # scalar, or (rows, C) float64 with reduction='none'
    grad: np.ndarray | None
    grad_result: np.ndarray | None

    @property
    def weight_per_class(self):
        return self.weight is not None and self.weight.ndim == 1

    @property
    def pos_weight_per_class(self):
        return self.pos_weight is not None and self.pos_weight.ndim == 1


def _bce_float_array(value, name):
    a = as_array(value, name)
    if not is_float_array(a) and a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be a real array, got dtype {a.dtype}")
    return a


def bce_broadcast_is_per_class(value_shape, name, shape):
    """The broadcasting rule for BCE's weight / pos_weight (torch's): value_shape must broadcast
    to the logits' shape without making it larger. True when it varies along the last axis
    only (one per class, or one value), which the kernels take as a (C,) vector."""
    try:
        full = np.broadcast_shapes(tuple(value_shape), tuple(shape))
    except ValueError:
        raise ValueError(f"{name} of shape {tuple(value_shape)} does not broadcast to the logits' shape "
                         f"{tuple(shape)}") from None
    if full != tuple(shape):
        raise ValueError(f"{name} of shape {tuple(value_shape)} would broadcast the logits' shape "
                         f"{tuple(shape)} larger")
    return all(n == 1 for n in tuple(value_shape)[:-1])


def _bce_broadcast(value, name, shape, rows, classes):
    """weight / pos_weight broadcast to the logits' shape: a (C,) float64 vector when it is per
    class, else materialised to (rows, C)."""
    if value is None:
        return None
    a = _bce_float_array(value, name)
    check_finite(a, name)
    per_class = bce_broadcast_is_per_class(a.shape, name, shape)
    a = a.astype(np.float64)
    if per_class:
        return np.ascontiguousarray(np.broadcast_to(a.reshape(a.shape[-1:]), (classes,)))
    return np.ascontiguousarray(np.broadcast_to(a, shape)).reshape(rows, classes)


def check_bce(logits, target, *, weight, pos_weight, reduction, grad_output=None, inplace=False, out=None,
              want_grad=False):
    """Check a binary cross-entropy call (torch's binary_cross_entropy_with_logits rules)."""
    arr = as_array(logits, "logits", "an array of floats")
    check_logits_dtype(arr)
    arr = native_order(arr)
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of 'none', 'mean', 'sum', got {reduction!r}")
    t = as_array(target, "target")
    if not is_float_array(t):
        raise TypeError(f"target must be a floating array of probabilities in [0, 1], got dtype {t.dtype}")
    if t.shape != arr.shape:
        raise ValueError(f"target must have the logits' shape {arr.shape}, got {t.shape}")
    classes = arr.shape[-1] if arr.ndim else 1
    rows = math.prod(arr.shape[:-1])  # explicit: reshape(-1, 0) cannot infer the rows when classes = 0
    w = _bce_broadcast(weight, "weight", arr.shape, rows, classes)
    pw = _bce_broadcast(pos_weight, "pos_weight", arr.shape, rows, classes)
    x = np.ascontiguousarray(arr).reshape(rows, classes)
    t = np.ascontiguousarray(t, dtype=arr.dtype).reshape(rows, classes)
    grad_scale = grad = grad_result = None
    if want_grad:
        grad_scale = _bce_grad_output(grad_output, reduction, arr.shape, rows)
        check_grad_destination(logits, arr, inplace, out, {"target": t, "grad_output": grad_scale})
        grad_scale = mean_scaled(grad_scale, reduction, float(arr.size))
        grad, grad_result = grad_destination(arr, x, inplace, out)
    return BCECall(
        logits=arr,
        x=x,
        target=t,
        weight=w,
        pos_weight=pw,
        reduction=reduction,
        grad_scale=grad_scale,
        grad=grad,
        grad_result=grad_result,
    )


def _bce_grad_output(grad_output, reduction, shape, rows):
    """A float, or with reduction='none' one factor per element as float64 (rows, C)."""
    if isinstance(grad_output, numbers.Real) and not isinstance(grad_output, (bool, np.bool_)):
        return float(grad_output)
    g = _bce_float_array(grad_output, "grad_output")
    if g.ndim == 0:
        return float(g)
    if reduction != "none":
        raise ValueError(f"grad_output must be a scalar with reduction={reduction!r}, got shape {g.shape}")
    if g.shape != tuple(shape):
        raise ValueError(f"grad_output must be a scalar or have the logits' shape {tuple(shape)}, got {g.shape}")
    return np.ascontiguousarray(g, dtype=np.float64).reshape(rows, shape[-1] if len(shape) else 1)


def reduce_bce(call: BCECall, total: float, element_loss):
    if call.reduction == "none":
        return element_loss
    if call.reduction == "sum":
        return total
    return total / call.logits.size if call.logits.size else 0.0
