"""Bad input for every public function, views and odd memory layouts, NaN/inf behaviour and a
leak check.

tests/test_validation.py has the first bad-input cases for three of the cross-entropy
functions; this file runs them on cross_entropy_backward too and adds what it lacks, for all
nine public functions. Every rejected call must raise ValueError/TypeError with a message that
names the argument and leave every array it was given byte-for-byte as it was.
"""

import gc
import math
import os
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

import fusedce
from fusedce import reference as ref

from tolerances import assert_grad_close, assert_loss_close
from test_validation import CASES as VALIDATION_CASES

CE_FUNCTIONS = ("cross_entropy", "cross_entropy_forward", "cross_entropy_with_grad", "cross_entropy_backward")
SOFTMAX_FUNCTIONS = ("log_softmax", "softmax", "logsumexp")
BCE_FUNCTIONS = ("binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_with_grad")
ALL_FUNCTIONS = CE_FUNCTIONS + SOFTMAX_FUNCTIONS + BCE_FUNCTIONS
GRAD_FUNCTIONS = ("cross_entropy_with_grad", "cross_entropy_backward", "binary_cross_entropy_with_logits_with_grad")

B, K = 4, 5


# ---------------------------------------------------------------------------- calling


def base_inputs(name, dtype=np.float32, seed=0):
    """Valid keyword arguments for `name` on a (4, 5) problem (reduction 'none' where there is
    one, so that per-row grad_output and the loss shapes are all in play)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, K)).astype(dtype)
    if name in SOFTMAX_FUNCTIONS:
        return {"logits": x}
    if name in BCE_FUNCTIONS:
        kw = {"logits": x, "target": rng.uniform(0, 1, (B, K)).astype(dtype), "reduction": "none"}
        if name.endswith("_with_grad"):
            kw["grad_output"] = rng.standard_normal((B, K))
        return kw
    kw = {"logits": x, "target": np.array([0, 1, 2, 3]), "reduction": "none"}
    if name in ("cross_entropy_with_grad", "cross_entropy_backward"):
        kw["grad_output"] = rng.standard_normal(B)
    if name == "cross_entropy_backward":
        kw["lse"] = ref.logsumexp(x).astype(np.float32)
    return kw


def invoke(name, kw, module=fusedce):
    """Call a public function with the keyword set that base_inputs describes."""
    kw = dict(kw)
    fn = getattr(module, name)
    logits = kw.pop("logits")
    if name in SOFTMAX_FUNCTIONS:
        return fn(logits)
    target = kw.pop("target")
    if name == "cross_entropy_backward":
        return fn(logits, target, kw.pop("lse"), kw.pop("grad_output", 1.0), **kw)
    return fn(logits, target, **kw)


def arg_name(name):
    """What the logits are called in the function's messages."""
    return "x" if name in SOFTMAX_FUNCTIONS else "logits"


def _root(a):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def snapshot(kw):
    """Bytes of every array argument, and of the whole buffer a view looks into."""
    snap = {}
    for key, value in kw.items():
        if isinstance(value, np.ndarray):
            root = _root(value)
            snap[key] = (value, value.tobytes(), root, root.tobytes() if root.dtype != object else None)
    return snap


def assert_unchanged(snap, what="call"):
    for key, (value, data, root, root_data) in snap.items():
        assert value.tobytes() == data, f"{key} was modified by the {what}"
        if root_data is not None:
            assert root.tobytes() == root_data, f"the buffer behind {key} was modified by the {what}"


def readonly(a):
    a = np.array(a, copy=True)
    a.flags.writeable = False
    return a


def big_endian(a):
    return a.astype(a.dtype.newbyteorder(">"))


def overlapping_pair(a, by=1):
    """Two views of a's shape into one new buffer, `by` elements apart: (shifted, holding a)."""
    flat = np.concatenate([a.ravel(), np.zeros(by, a.dtype)])
    return flat[by:].reshape(a.shape), flat[: a.size].reshape(a.shape)


# ---------------------------------------------------------------------------- rejected calls


@dataclass
class Bad:
    """One bad argument: `build(kw, name)` returns the call's keywords with it in place."""

    id: str
    functions: tuple
    build: Callable
    exc: type
    pattern: str  # regular expression the message must contain; {x} is the logits' name
    in_reference: bool = True  # fusedce.reference refuses it too

    def params(self):
        return [pytest.param(fn, self, id=f"{fn}-{self.id}") for fn in self.functions]


def with_(**changes):
    """A builder that replaces these arguments; a callable value is called with the keywords."""
    return lambda kw, name: {**kw, **{k: (v(kw) if callable(v) else v) for k, v in changes.items()}}


def _out_over(key):
    """out= sharing memory with the argument `key` (of the logits' dtype) without being it."""

    def build(kw, name):
        out, arg = overlapping_pair(kw[key])
        return {**kw, key: arg, "out": out}

    return build


def _grad_output_inside_out(kw, name):
    """Per-row grad_output of float64 logits living inside the out= buffer."""
    kw = {**kw, "logits": kw["logits"].astype(np.float64)}
    out = np.zeros_like(kw["logits"])
    go = out.reshape(-1)[3 : 3 + kw["grad_output"].size].reshape(kw["grad_output"].shape)
    go[...] = kw["grad_output"]
    return {**kw, "out": out, "grad_output": go}


def _grad_output_inside_logits(kw, name):
    x = kw["logits"].astype(np.float64)
    go = x.reshape(-1)[-kw["grad_output"].size :].reshape(kw["grad_output"].shape)
    return {**kw, "logits": x, "grad_output": go, "inplace": True}


def _lse_inside_out(kw, name):
    x = kw["logits"].astype(np.float64)
    out = np.zeros_like(x)
    lse = out.reshape(-1)[2 : 2 + B]
    lse[...] = ref.logsumexp(x)
    return {**kw, "logits": x, "lse": lse, "out": out}


def _weight_inside_logits(kw, name):
    x = kw["logits"].astype(np.float64)
    return {**kw, "logits": x, "weight": x[1], "inplace": True}


def _probabilities_are_logits(kw, name):
    x = np.abs(kw["logits"]) / np.abs(kw["logits"]).sum(-1, keepdims=True)
    return {**kw, "logits": x, "target": x, "inplace": True}


CE_AND_BCE = CE_FUNCTIONS + BCE_FUNCTIONS
ONLY_BACKWARD = ("cross_entropy_backward",)
CE_GRAD = ("cross_entropy_with_grad", "cross_entropy_backward")

BAD = [
    # the logits: every dtype that is not float16/bfloat16/float32/float64, and shapes
    *[Bad(f"logits {dt}", ALL_FUNCTIONS, with_(logits=lambda kw, dt=dt: kw["logits"].astype(dt)), TypeError,
          rf"{{x}} must be a floating array .*got dtype {np.dtype(dt)}")
      for dt in ("int64", "int8", "uint16", "bool", "complex64", "complex128", "object", "longdouble")
      if np.dtype(dt) != np.float64],  # longdouble is float64 on some platforms
    Bad("logits str", ALL_FUNCTIONS, with_(logits=np.full((B, K), "1.0")), TypeError, r"{x} must be a floating array .*got dtype <U3"),
    Bad("logits bytes", ALL_FUNCTIONS, with_(logits=np.full((B, K), b"1")), TypeError, r"{x} must be a floating array .*got dtype \|S1"),
    Bad("logits None", ALL_FUNCTIONS, with_(logits=None), TypeError, r"{x} must be a floating array .*got dtype object"),
    Bad("logits ragged", ALL_FUNCTIONS, with_(logits=[[1.0], [2.0, 3.0]]), TypeError,
        r"{x} must be an array of floats, got list"),
    *[Bad(f"{arg} ragged", functions, with_(**{arg: [[1.0], [2.0, 3.0]]}), TypeError, rf"{arg} must be an array, got list")
      for arg, functions in [("target", CE_AND_BCE), ("weight", CE_AND_BCE), ("grad_output", GRAD_FUNCTIONS),
                             ("lse", ONLY_BACKWARD), ("pos_weight", BCE_FUNCTIONS)]],
    Bad("logits 0-d", CE_FUNCTIONS + SOFTMAX_FUNCTIONS, with_(logits=np.float32(1.0)), ValueError,
        r"{x} must have at least 1 dimension"),
    Bad("logits K=0 with counted targets", CE_FUNCTIONS, with_(logits=np.zeros((B, 0), np.float32)), ValueError,
        r"target\[0\] = 0 is out of range: class indices must be in \[0, 0\)"),
    # class targets (test_validation covers shape, range, float and bool on the other three)
    *[Bad(f"target {what}", CE_FUNCTIONS, with_(target=value), TypeError, "target must be an integer array")
      for what, value in [("str", np.array(["0", "1", "2", "3"])), ("object", np.array([0, 1, 2, 3], object)),
                          ("complex", np.array([0, 1, 2, 3], complex)), ("None", None)]],
    Bad("target uint64 2**63", CE_FUNCTIONS, with_(target=np.array([0, 1, 2, 2**63], np.uint64)), ValueError,
        r"target\[3\] = 9223372036854775808 is out of range: class indices must be in \[0, 5\)"),
    Bad("target int8 = K", CE_FUNCTIONS, with_(target=np.array([0, 5, 2, 3], np.int8)), ValueError,
        r"target\[1\] = 5 is out of range"),
    Bad("target -100 with another ignore_index", CE_FUNCTIONS, with_(target=np.array([0, 1, -100, 3]), ignore_index=1),
        ValueError, r"target\[2\] = -100 is out of range: .* or equal ignore_index=1"),
    Bad("probabilities of the wrong shape", CE_FUNCTIONS, with_(target=np.full((B, K - 1), 0.25, np.float32)),
        TypeError, r"target must be an integer array of class indices of shape \(4,\), or probabilities of the logits' shape"),
    *[Bad(f"bce target {what}", BCE_FUNCTIONS, with_(target=value), TypeError, rf"target must be a floating array .*got dtype {dt}")
      for what, value, dt in [("int", np.ones((B, K), np.int64), "int64"), ("bool", np.ones((B, K), bool), "bool"),
                              ("str", np.full((B, K), "1"), "<U1"), ("None", None, "object"),
                              ("complex", np.ones((B, K), complex), "complex128")]],
    Bad("bce target broadcastable", BCE_FUNCTIONS, with_(target=np.full(K, 0.5, np.float32)), ValueError,
        r"target must have the logits' shape \(4, 5\), got \(5,\)"),
    # class weights
    *[Bad(f"weight {what}", CE_FUNCTIONS, with_(weight=value), exc, pattern)
      for what, value, exc, pattern in [
          ("2-d", np.ones((1, K)), ValueError, r"weight must have shape \(5,\) \(one per class\), got \(1, 5\)"),
          ("scalar", 2.0, ValueError, r"weight must have shape \(5,\) \(one per class\), got \(\)"),
          ("object", np.ones(K, object), TypeError, "weight must be a real array of 5 per-class weights, got dtype object"),
          ("bool", np.ones(K, bool), TypeError, "got dtype bool"),
          ("complex", np.ones(K, complex), TypeError, "got dtype complex128"),
          ("+inf", np.array([1, 1, 1, np.inf, 1]), ValueError, r"weight must be finite, got weight\[3\] = inf"),
          ("-inf", np.array([-np.inf, 1, 1, 1, 1]), ValueError, r"weight must be finite, got weight\[0\] = -inf"),
          ("NaN", np.array([1, 1, 1, 1, np.nan]), ValueError, r"weight must be finite, got weight\[4\] = nan"),
      ]],
    *[Bad(f"bce {arg} {what}", BCE_FUNCTIONS, with_(**{arg: value}), exc, pattern)
      for arg in ("weight", "pos_weight")
      for what, value, exc, pattern in [
          ("NaN", np.array([1, 1, np.nan, 1, 1]), ValueError, rf"{arg} must be finite, got {arg}\[2\] = nan"),
          ("inf", np.array([1, 1, 1, 1, np.inf]), ValueError, rf"{arg} must be finite, got {arg}\[4\] = inf"),
          ("object", np.ones(K, object), TypeError, rf"{arg} must be a real array, got dtype object"),
          ("str", np.full(K, "1"), TypeError, rf"{arg} must be a real array, got dtype <U1"),
      ]],
    Bad("bce weight too long", BCE_FUNCTIONS, with_(weight=np.ones(K + 1)), ValueError,
        r"weight of shape \(6,\) does not broadcast to the logits' shape \(4, 5\)"),
    Bad("bce weight larger", BCE_FUNCTIONS, with_(weight=np.ones((2, B, K))), ValueError,
        r"weight of shape \(2, 4, 5\) would broadcast the logits' shape \(4, 5\) larger"),
    Bad("bce pos_weight too long", BCE_FUNCTIONS, with_(pos_weight=np.ones(K + 1)), ValueError,
        r"pos_weight of shape \(6,\) does not broadcast to the logits' shape \(4, 5\)"),
    Bad("bce pos_weight larger", BCE_FUNCTIONS, with_(pos_weight=np.ones((2, B, K))), ValueError,
        r"pos_weight of shape \(2, 4, 5\) would broadcast the logits' shape \(4, 5\) larger"),
    # scalar options
    *[Bad(f"reduction {value!r}", CE_AND_BCE, with_(reduction=value), ValueError,
          r"reduction must be one of 'none', 'mean', 'sum', got " + re.escape(repr(value)))
      for value in (None, "MEAN", "avg", 1)],
    *[Bad(f"{opt} {value!r}", CE_FUNCTIONS, with_(**{opt: value}), exc, pattern)
      for opt, value, exc, pattern in [
          ("label_smoothing", float("nan"), ValueError, r"label_smoothing must be in \[0, 1\], got nan"),
          ("label_smoothing", "0.1", TypeError, "label_smoothing must be a real number, got '0.1'"),
          ("label_smoothing", True, TypeError, "label_smoothing must be a real number, got True"),
          ("z_loss", float("inf"), ValueError, "z_loss must be a finite number >= 0, got inf"),
          ("z_loss", float("nan"), ValueError, "z_loss must be a finite number >= 0, got nan"),
          ("z_loss", None, TypeError, "z_loss must be a real number, got None"),
          ("softcap", -1.0, ValueError, "softcap must be None or a finite number > 0, got -1.0"),
          ("softcap", float("nan"), ValueError, "softcap must be None or a finite number > 0, got nan"),
          ("softcap", float("inf"), ValueError, "softcap must be None or a finite number > 0, got inf"),
          ("softcap", "3", TypeError, "softcap must be a real number, got '3'"),
          ("ignore_index", 2**63, ValueError, "ignore_index must fit in a 64-bit signed integer, got 9223372036854775808"),
          ("ignore_index", -(2**63) - 1, ValueError, "ignore_index must fit in a 64-bit signed integer"),
          ("ignore_index", True, TypeError, "ignore_index must be an integer, got True"),
          ("ignore_index", "1", TypeError, "ignore_index must be an integer, got '1'"),
          ("ignore_index", np.float64(1.0), TypeError, "ignore_index must be an integer, got"),
      ]],
    # grad_output
    *[Bad(f"grad_output {what}", GRAD_FUNCTIONS, with_(grad_output=value), TypeError, "grad_output must be a real")
      for what, value in [("str", "1"), ("None", None), ("complex", 1j), ("bool", True),
                          ("object array", np.ones(B, object))]],
    Bad("grad_output 2-d per row", CE_GRAD, with_(grad_output=np.ones((B, 1))), ValueError,
        r"grad_output must be a scalar or have shape \(4,\) \(one per row\), got \(4, 1\)"),
    Bad("grad_output per row with sum", CE_GRAD, with_(grad_output=np.ones(B), reduction="sum"), ValueError,
        r"grad_output must be a scalar with reduction='sum', got shape \(4,\)"),
    Bad("bce grad_output per row", ("binary_cross_entropy_with_logits_with_grad",), with_(grad_output=np.ones(B)),
        ValueError, r"grad_output must be a scalar or have the logits' shape \(4, 5\), got \(4,\)"),
    Bad("bce grad_output with mean", ("binary_cross_entropy_with_logits_with_grad",), with_(reduction="mean"),
        ValueError, r"grad_output must be a scalar with reduction='mean', got shape \(4, 5\)"),
    # the saved lse of the backward
    *[Bad(f"lse {what}", ONLY_BACKWARD, with_(lse=value), exc, pattern)
      for what, value, exc, pattern in [
          ("None", None, TypeError, "lse must be a floating array, got dtype object"),
          ("int", np.zeros(B, int), TypeError, "lse must be a floating array, got dtype int64"),
          ("complex", np.zeros(B, complex), TypeError, "lse must be a floating array, got dtype complex128"),
          ("2-d", np.zeros((B, 1)), ValueError, r"lse must have shape \(4,\) \(logits.shape\[:-1\]\), got \(4, 1\)"),
          ("scalar", 0.0, ValueError, r"lse must have shape \(4,\) \(logits.shape\[:-1\]\), got \(\)"),
      ]],
    # where the gradient goes
    Bad("inplace read-only", GRAD_FUNCTIONS, with_(logits=lambda kw: readonly(kw["logits"]), inplace=True),
        ValueError, r"logits \(inplace=True\) is read-only"),
    Bad("inplace negative stride", GRAD_FUNCTIONS, with_(logits=lambda kw: kw["logits"][::-1], inplace=True),
        ValueError, r"logits \(inplace=True\) must be C-contiguous to be written in place, got strides \(-\d+, \d+\)"),
    Bad("inplace Fortran order", GRAD_FUNCTIONS, with_(logits=lambda kw: np.asfortranarray(kw["logits"]), inplace=True),
        ValueError, r"logits \(inplace=True\) must be C-contiguous"),
    Bad("inplace big-endian", GRAD_FUNCTIONS, with_(logits=lambda kw: big_endian(kw["logits"]), inplace=True),
        TypeError, r"logits \(inplace=True\) must have dtype float32, got >f4"),
    Bad("inplace list", GRAD_FUNCTIONS, with_(logits=lambda kw: kw["logits"].tolist(), inplace=True),
        TypeError, "inplace=True needs logits to be a NumPy array, got list"),
    *[Bad(f"inplace={value!r}", GRAD_FUNCTIONS, with_(inplace=value), TypeError, "inplace must be True or False")
      for value in (1, "yes", None)],
    Bad("inplace and out", GRAD_FUNCTIONS, with_(inplace=True, out=lambda kw: np.empty_like(kw["logits"])),
        ValueError, "pass either inplace=True or out=, not both"),
    Bad("out read-only", GRAD_FUNCTIONS, with_(out=lambda kw: readonly(np.empty_like(kw["logits"]))),
        ValueError, "out is read-only"),
    Bad("out negative stride", GRAD_FUNCTIONS, with_(out=lambda kw: np.empty_like(kw["logits"])[::-1]),
        ValueError, "out must be C-contiguous"),
    Bad("out shape", GRAD_FUNCTIONS, with_(out=np.empty((B, K + 1), np.float32)), ValueError,
        r"out must have shape \(4, 5\), got \(4, 6\)"),
    Bad("out dtype", GRAD_FUNCTIONS, with_(out=np.empty((B, K), np.float16)), TypeError,
        "out must have dtype float32, got float16"),
    Bad("out big-endian", GRAD_FUNCTIONS, with_(out=np.empty((B, K), ">f4")), TypeError,
        "out must have dtype float32, got >f4"),
    Bad("out list", GRAD_FUNCTIONS, with_(out=[[0.0] * K] * B), TypeError, "out must be a NumPy array, got list"),
    Bad("out overlaps logits", GRAD_FUNCTIONS, _out_over("logits"), ValueError, "out overlaps logits without being the same array"),
    Bad("out overlaps probabilities", CE_GRAD, lambda kw, name: _out_over("target")(
        {**kw, "target": np.full((B, K), 0.2, np.float32)}, name), ValueError, "out must not overlap target"),
    Bad("out overlaps bce target", ("binary_cross_entropy_with_logits_with_grad",), _out_over("target"), ValueError,
        "out must not overlap target"),
    Bad("out holds grad_output", CE_GRAD, _grad_output_inside_out, ValueError, "out must not overlap grad_output"),
    Bad("out overlaps bce grad_output", ("binary_cross_entropy_with_logits_with_grad",),
        lambda kw, name: _out_over("grad_output")({**kw, "logits": kw["logits"].astype(np.float64)}, name),
        ValueError, "out must not overlap grad_output"),
    # the reference computes the whole gradient before it writes out=, so it has no need to refuse this
    Bad("out holds lse", ONLY_BACKWARD, _lse_inside_out, ValueError, "out must not overlap lse", in_reference=False),
    Bad("logits hold grad_output, inplace", CE_GRAD, _grad_output_inside_logits, ValueError,
        r"logits \(inplace=True\) must not overlap grad_output"),
    Bad("logits hold weight, inplace", CE_GRAD, _weight_inside_logits, ValueError,
        r"logits \(inplace=True\) must not overlap weight"),
    Bad("probabilities are the logits, inplace", CE_GRAD, _probabilities_are_logits, ValueError,
        r"logits \(inplace=True\) must not overlap target"),
]


@pytest.mark.parametrize("name,bad", [p for bad in BAD for p in bad.params()])
def test_rejected_with_a_message_naming_the_argument(name, bad):
    kw = bad.build(base_inputs(name), name)
    before = snapshot(kw)
    with pytest.raises(bad.exc) as info:
        invoke(name, kw)
    assert re.search(bad.pattern.replace("{x}", arg_name(name)), str(info.value)), (
        f"{name}: message {str(info.value)!r} does not match {bad.pattern!r}")
    assert_unchanged(before, "rejected call")
    if bad.in_reference:  # the reference shares the checks: the same refusal
        kw = bad.build(base_inputs(name), name)
        with pytest.raises(bad.exc):
            invoke(name, kw, ref)


@pytest.mark.parametrize("case", VALIDATION_CASES, ids=[c[0] for c in VALIDATION_CASES])
def test_validation_cases_on_the_backward(case):
    """test_validation's matrix leaves out cross_entropy_backward; the same refusals there."""
    _, build, exc, fragment = case
    x = np.random.default_rng(0).standard_normal((B, K)).astype(np.float32)
    kw = build(x, np.array([0, 1, 2, 3]))
    lse = np.zeros(np.shape(kw["logits"])[:-1], np.float32)
    before = snapshot({**kw, "lse": lse})
    with pytest.raises(exc) as info:
        fusedce.cross_entropy_backward(kw.pop("logits"), kw.pop("target"), lse, **kw)
    assert fragment in str(info.value)
    assert_unchanged(before, "rejected call")


def test_an_out_of_range_target_in_a_long_batch_is_found_before_any_write():
    """The range check sees every row before the kernel writes the first gradient row."""
    x = np.random.default_rng(1).standard_normal((1000, 7)).astype(np.float32)
    t = np.arange(1000) % 7
    t[-1] = 7
    before = x.copy()
    with pytest.raises(ValueError, match=r"target\[999\] = 7 is out of range"):
        fusedce.cross_entropy_with_grad(x, t, inplace=True)
    assert x.tobytes() == before.tobytes()


# ---------------------------------------------------------------------------- accepted layouts


def _kinds(name, kw):
    """How each array argument lines up with the logits: 'full' (the logits' shape), 'rows'
    (one per row) or 'classes' (one per class)."""
    kinds = {}
    for key, value in kw.items():
        if not isinstance(value, np.ndarray):
            continue
        if value.shape == kw["logits"].shape:
            kinds[key] = "full"
        elif key in ("weight", "pos_weight"):
            kinds[key] = "classes"
        else:
            kinds[key] = "rows"
    return kinds


def _zero_stride(a, kind):
    """A broadcast (stride 0, read-only) array of a's shape holding a's first row/element."""
    return np.broadcast_to(a[:1] if kind != "full" else a[:1, :], a.shape)


# name -> what each kind of argument becomes; the call on the views must equal the call on
# contiguous native copies of the same views, bit for bit, and leave the views unchanged.
LAYOUTS = {
    "rows reversed": {"full": lambda a: a[::-1], "rows": lambda a: a[::-1]},
    "every other row": {"full": lambda a: a[::2], "rows": lambda a: a[::2]},
    "classes reversed": {"full": lambda a: a[:, ::-1], "classes": lambda a: a[::-1]},
    "every third class": {"full": lambda a: a[:, ::3], "classes": lambda a: a[::3]},
    "both reversed": {"full": lambda a: a[::-1, ::-1], "rows": lambda a: a[::-1], "classes": lambda a: a[::-1]},
    "Fortran order": {"full": np.asfortranarray},
    "3-d, sliced": {"full": lambda a: a.reshape(2, -1, a.shape[-1])[:, ::2],
                    "rows": lambda a: a.reshape(2, -1)[:, ::2]},
    "read-only": {"full": readonly, "rows": readonly, "classes": readonly},
    "big-endian": {"full": big_endian, "rows": big_endian, "classes": big_endian},
    "zero strides": {"full": lambda a: _zero_stride(a, "full"), "rows": lambda a: _zero_stride(a, "rows"),
                     "classes": lambda a: _zero_stride(a, "classes")},
}


def _wide_inputs(name, dtype):
    """A (12, 9) problem with weights, so that every layout has rows and classes to take."""
    rng = np.random.default_rng(7)
    kw = base_inputs(name, dtype)
    shape = (12, 9)
    kw["logits"] = (rng.standard_normal(shape) * 3).astype(dtype)
    if name in BCE_FUNCTIONS:
        kw["target"] = rng.uniform(0, 1, shape).astype(dtype)
        kw["weight"] = rng.uniform(0.5, 2, shape[-1])
        kw["pos_weight"] = rng.uniform(0.5, 2, shape[-1])
        if "grad_output" in kw:
            kw["grad_output"] = rng.standard_normal(shape)
    elif name in CE_FUNCTIONS:
        kw["target"] = rng.integers(0, 3, shape[0])  # < 3: still classes after every third class
        kw["weight"] = rng.uniform(0.5, 2, shape[-1])
        kw["label_smoothing"] = 0.1
        if "grad_output" in kw:
            kw["grad_output"] = rng.standard_normal(shape[0])
        if "lse" in kw:
            kw["lse"] = ref.logsumexp(kw["logits"])
    return kw


def _as_plain(value):
    if not isinstance(value, np.ndarray):
        return value
    return np.ascontiguousarray(value).astype(value.dtype.newbyteorder("="))


def _results(out):
    return [np.asarray(r) for r in (out if isinstance(out, tuple) else (out,))]


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", ALL_FUNCTIONS)
def test_views_are_accepted_and_equal_contiguous_copies(name, layout, dtype):
    kw = _wide_inputs(name, dtype)
    kinds = _kinds(name, kw)
    viewed = {k: (LAYOUTS[layout].get(kinds[k], lambda a: a)(v) if k in kinds else v) for k, v in kw.items()}
    if name == "cross_entropy_backward" and "rows" not in LAYOUTS[layout]:
        viewed["lse"] = ref.logsumexp(viewed["logits"])  # the lse of the viewed classes
    before = snapshot(viewed)
    got = _results(invoke(name, viewed))
    want = _results(invoke(name, {k: _as_plain(v) for k, v in viewed.items()}))
    assert_unchanged(before)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w, err_msg=f"{name} on {layout} views differs from contiguous copies")


@pytest.mark.parametrize("name", GRAD_FUNCTIONS)
def test_out_may_be_the_logits_themselves(name):
    kw = base_inputs(name)
    want = _results(invoke(name, kw))[-1]
    x = kw["logits"].copy()
    grad = _results(invoke(name, {**kw, "logits": x, "out": x}))[-1]
    np.testing.assert_array_equal(grad, want)
    np.testing.assert_array_equal(x, want)


@pytest.mark.parametrize("name", ALL_FUNCTIONS)
def test_lists_of_floats_are_accepted(name):
    kw = base_inputs(name, np.float64)
    as_lists = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    for g, w in zip(_results(invoke(name, as_lists)), _results(invoke(name, kw))):
        np.testing.assert_array_equal(g, w)


# ---------------------------------------------------------------------------- degenerate sizes


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("name", CE_FUNCTIONS + BCE_FUNCTIONS)
def test_empty_batch(name, reduction):
    """No rows: 'mean' and 'sum' are 0.0 (not NaN), 'none' and the gradient are empty."""
    shape = (0, 7)
    x = np.zeros(shape, np.float32)
    if name in BCE_FUNCTIONS:
        kw = {"logits": x, "target": np.zeros(shape, np.float32), "reduction": reduction}
    else:
        kw = {"logits": x, "target": np.zeros(0, np.int64), "reduction": reduction, "lse": np.zeros(0)}
        if name != "cross_entropy_backward":
            kw.pop("lse")
    if name in GRAD_FUNCTIONS and reduction == "none":
        kw["grad_output"] = np.zeros(shape if name in BCE_FUNCTIONS else (0,))
    results = _results(invoke(name, kw))
    for got, want in zip(results, _results(invoke(name, kw, ref))):
        assert got.shape == want.shape
        if got.ndim == 0:
            assert got == 0.0
    if name in GRAD_FUNCTIONS:
        assert results[-1].shape == shape and results[-1].dtype == np.float32


@pytest.mark.parametrize("name", SOFTMAX_FUNCTIONS)
def test_empty_batch_softmax_family(name):
    for shape in [(0, 7), (3, 0, 7)]:
        got = invoke(name, {"logits": np.zeros(shape, np.float32)})
        assert got.shape == (shape if name != "logsumexp" else shape[:-1]) and got.dtype == np.float32


@pytest.mark.parametrize("shape", [(3, 0), (0,), (2, 0, 4)], ids=str)
@pytest.mark.parametrize("name", BCE_FUNCTIONS)
def test_binary_cross_entropy_of_no_elements(name, shape):
    """Elementwise like torch: any empty shape, K = 0 included; 'mean' of nothing is 0."""
    x = np.zeros(shape, np.float32)
    kw = {"logits": x, "target": np.zeros(shape, np.float32), "pos_weight": np.ones(shape[-1])}
    for reduction in ("none", "mean", "sum"):
        got = _results(invoke(name, {**kw, "reduction": reduction}))
        assert got[0].shape == (shape if reduction == "none" else ())
        if reduction != "none":
            assert got[0] == 0.0
        if name in GRAD_FUNCTIONS:
            assert got[-1].shape == shape


@pytest.mark.parametrize("name", BCE_FUNCTIONS)
def test_binary_cross_entropy_of_a_scalar(name):
    x, t = np.float32(0.7), np.float32(1.0)
    got = _results(invoke(name, {"logits": x, "target": t, "reduction": "none"}))
    want = _results(invoke(name, {"logits": x, "target": t, "reduction": "none"}, ref))
    for g, w in zip(got, want):
        assert g.shape == ()
        assert_loss_close(g, w, "float32")


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_one_class(isa, dtype):
    """K = 1: the only class has probability 1, so the loss is 0 and the gradient 0, whatever
    the logit (but z-loss still sees lse = y); softmax is 1, log_softmax 0, logsumexp the logit."""
    x = np.array([[-3.0], [0.0], [2.5], [1e4 if dtype != "float16" else 6e4]], dtype)
    t = np.zeros(4, np.int64)
    loss, grad = fusedce.cross_entropy_with_grad(x, t, reduction="none")
    assert not loss.any() and not grad.any()
    loss, lse = fusedce.cross_entropy_forward(x, t, reduction="none")
    assert not loss.any()
    np.testing.assert_array_equal(lse, x[:, 0].astype(lse.dtype))
    assert not fusedce.cross_entropy_backward(x, t, lse, np.ones(4), reduction="none").any()
    np.testing.assert_array_equal(fusedce.softmax(x), np.ones_like(x))
    np.testing.assert_array_equal(fusedce.log_softmax(x), np.zeros_like(x))
    np.testing.assert_array_equal(fusedce.logsumexp(x), x[:, 0].astype(lse.dtype))
    zloss, zgrad = fusedce.cross_entropy_with_grad(x[:3], t[:3], z_loss=0.1, reduction="none")
    rloss, rgrad = ref.cross_entropy_with_grad(x[:3], t[:3], z_loss=0.1, reduction="none")
    assert_loss_close(zloss, rloss, dtype)
    assert_grad_close(zgrad, rgrad, dtype)


# ---------------------------------------------------------------------------- NaN and inf

INF, NAN = np.inf, np.nan
# the float64 reference meets the same NaN/inf on purpose
quiet_nan = pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning", "ignore:divide by zero:RuntimeWarning")


def _special_rows(K_, dtype):
    """Rows with NaN, +inf and -inf at the start, in the middle and in the vector tail, and
    the class target of each row. Returns (logits, target, expected per-row loss kind)."""
    rng = np.random.default_rng(K_)
    x = rng.standard_normal((12, K_)).astype(dtype)
    t = rng.integers(0, K_, 12)
    kinds = []

    def row(r, kind, **at):
        for pos, value in at.items():
            x[r, {"first": 0, "middle": K_ // 2, "last": K_ - 1}[pos]] = value
        kinds.append(kind)

    row(0, "finite")
    row(1, "nan", first=NAN)
    row(2, "nan", last=NAN)
    row(3, "nan", middle=INF)
    row(4, "nan", last=INF)
    row(5, "finite", first=-INF, last=-INF)  # -inf away from the target: probability 0
    t[5] = K_ // 2
    x[6, :] = -INF  # nothing left: lse = -inf and the loss is NaN
    kinds.append("nan")
    row(7, "inf", middle=-INF)  # the target itself at -inf: probability 0, loss +inf
    t[7] = K_ // 2
    row(8, "nan", first=INF, last=-INF)
    row(9, "nan", first=-INF, middle=NAN)
    row(10, "ignored", first=NAN, last=INF)  # ignored rows stay 0 whatever they hold
    t[10] = -100
    x[11, :] = rng.choice([-1e4, 1e4, 0.0], K_)  # huge but finite: finite
    kinds.append("finite")
    return x, t, kinds


@quiet_nan
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("K_", [7, 37, 4099])
def test_nan_and_inf_logits_in_cross_entropy(isa, K_, dtype):
    """The documented rules, row by row: a NaN or +inf logit makes that row's loss and whole
    gradient row NaN; -inf is probability 0 (the loss is +inf if it is the target's); an
    all -inf row is NaN; ignored rows are 0; other rows are untouched by their neighbours."""
    x, t, kinds = _special_rows(K_, dtype)
    kinds = np.array(kinds)
    x_before = x.copy()
    loss, grad = fusedce.cross_entropy_with_grad(x, t, reduction="none")
    assert x.tobytes() == x_before.tobytes()
    assert np.isnan(loss[kinds == "nan"]).all()
    assert np.isnan(grad[kinds == "nan"]).all()
    assert (loss[kinds == "inf"] == np.inf).all()
    assert np.isfinite(loss[kinds == "finite"]).all()
    assert np.isfinite(grad[kinds != "nan"]).all()
    assert loss[kinds == "ignored"][0] == 0.0 and not grad[kinds == "ignored"].any()
    assert grad[5, 0] == 0.0 and grad[5, -1] == 0.0  # exactly 0 where the logit is -inf
    assert grad[7, t[7]] == pytest.approx(-1.0, abs=1e-3)  # p_t = 0: d loss / d y_t = -1
    rloss, rgrad = ref.cross_entropy_with_grad(x, t, reduction="none")
    assert_loss_close(loss, rloss, dtype)
    assert_grad_close(grad, rgrad, dtype)
    # a reduction carries the NaN into the total but not into the other rows' gradients
    total, grad_mean = fusedce.cross_entropy_with_grad(x, t, reduction="mean")
    assert math.isnan(total)
    np.testing.assert_array_equal(np.isnan(grad_mean).any(-1), kinds == "nan")
    # the split forward/backward follows the same rules
    floss, lse = fusedce.cross_entropy_forward(x, t, reduction="none")
    np.testing.assert_array_equal(np.isnan(floss), np.isnan(loss))
    bgrad = fusedce.cross_entropy_backward(x, t, lse, np.ones(len(t)), reduction="none")
    np.testing.assert_array_equal(np.isnan(bgrad), np.isnan(grad))


@quiet_nan
@pytest.mark.parametrize("opts", [{"label_smoothing": 0.2}, {"softcap": 5.0}, {"z_loss": 1e-3, "weight": "w"}],
                         ids=["smoothing", "softcap", "z_loss+weight"])
def test_nan_and_inf_logits_with_options(isa, opts):
    """With smoothing every class gets target mass, so any -inf logit makes the loss +inf;
    softcap maps +-inf to +-cap (finite rows); NaN stays NaN. Matches the reference."""
    x, t, kinds = _special_rows(37, "float32")
    opts = {k: (np.linspace(0.5, 2, 37) if v == "w" else v) for k, v in opts.items()}
    loss, grad = fusedce.cross_entropy_with_grad(x, t, reduction="none", **opts)
    rloss, rgrad = ref.cross_entropy_with_grad(x, t, reduction="none", **opts)
    assert_loss_close(loss, rloss, "float32")
    assert_grad_close(grad, rgrad, "float32")
    if "softcap" in opts:
        assert np.isfinite(loss[[3, 4, 6, 7, 8]]).all()
    if "label_smoothing" in opts:
        assert loss[5] == np.inf and np.isfinite(grad[5]).all()


@quiet_nan
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_nan_and_inf_in_probability_targets_and_logits(isa, dtype):
    x, _, kinds = _special_rows(37, dtype)
    rng = np.random.default_rng(5)
    q = rng.uniform(0, 1, x.shape)
    q[:, ::3] = 0.0  # zero probability against -inf logits takes no part
    q = (q / q.sum(-1, keepdims=True)).astype(dtype)
    loss, grad = fusedce.cross_entropy_with_grad(x, q, reduction="none")
    rloss, rgrad = ref.cross_entropy_with_grad(x, q, reduction="none")
    assert_loss_close(loss, rloss, dtype)
    assert_grad_close(grad, rgrad, dtype)
    q[0, 1] = np.nan  # a NaN probability: only its row
    loss = fusedce.cross_entropy(x, q, reduction="none")
    assert np.isnan(loss[0]) and np.isfinite(loss[11])


@quiet_nan
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("name", SOFTMAX_FUNCTIONS)
def test_nan_and_inf_logits_in_the_softmax_family(isa, name, dtype):
    """NaN or +inf anywhere in a row: the row is NaN (logsumexp too); -inf: softmax 0,
    log_softmax -inf; all -inf: logsumexp -inf, softmax and log_softmax NaN."""
    x, _, kinds = _special_rows(37, dtype)
    kinds[10] = "nan"  # no target here: the 'ignored' row holds NaN and +inf
    got = invoke(name, {"logits": x})
    want = invoke(name, {"logits": x}, ref)
    nan_rows = np.array([k == "nan" for k in kinds])
    nan_rows[6] = name != "logsumexp"  # the all -inf row
    assert np.isnan(got[nan_rows]).all()
    assert not np.isnan(got[~nan_rows]).any()
    if name == "logsumexp":
        assert got[6] == -np.inf
        assert_loss_close(got, want, dtype)
        return
    assert got[5, 0] == (0.0 if name == "softmax" else -np.inf)
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    finite = np.isfinite(want)
    assert_grad_close(np.where(finite, got, 0), np.where(finite, want, 0), dtype, what=name)


@quiet_nan
@pytest.mark.parametrize("dtype", ["float32", "float64"])  # float16 stores 'none' losses in float16
def test_nan_and_inf_logits_in_binary_cross_entropy(isa, dtype):
    """Elementwise: a NaN logit makes its element's loss and gradient NaN and nothing else;
    +-inf logits give what the formula gives (the reference's pattern: +inf loss for a
    confident wrong answer, NaN where it needs 0 * inf, like torch)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 37)).astype(dtype)
    x[0, 3], x[1, 36], x[2, 0], x[3, 17] = NAN, INF, -INF, NAN
    t = rng.uniform(0, 1, x.shape).astype(dtype)
    t[1, 36], t[2, 0] = 0.0, 1.0
    loss, grad = fusedce.binary_cross_entropy_with_logits_with_grad(x, t, reduction="none")
    rloss, rgrad = ref.binary_cross_entropy_with_logits_with_grad(x, t, reduction="none")
    expected_nan = np.zeros(x.shape, bool)
    expected_nan[0, 3] = expected_nan[3, 17] = True
    np.testing.assert_array_equal(np.isnan(loss), expected_nan)
    assert loss[1, 36] == np.inf and loss[2, 0] == np.inf
    assert grad[1, 36] == 1.0 and grad[2, 0] == -1.0
    assert_loss_close(loss, rloss, dtype)
    assert_grad_close(grad, rgrad, dtype)


# ---------------------------------------------------------------------------- weights


def test_negative_and_zero_weights_are_computed_as_given_like_torch():
    """Negative class weights are accepted and enter every formula as they are (torch does the
    same): the loss can be negative, and 'mean' divides by the signed sum of w[target]. Only a
    'mean' whose denominator is exactly 0 differs from torch: 0, not inf/NaN."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    x = rng.standard_normal((9, 6))
    t = rng.integers(0, 6, 9)
    w = np.array([1.0, -0.5, 2.0, 0.0, -3.0, 0.25])
    for opts in ({}, {"label_smoothing": 0.3}):
        for reduction in ("none", "mean", "sum"):
            loss, grad = fusedce.cross_entropy_with_grad(x, t, weight=w, reduction=reduction, **opts)
            xt = torch.tensor(x, requires_grad=True)
            lt = torch.nn.functional.cross_entropy(xt, torch.tensor(t), weight=torch.tensor(w), reduction=reduction, **opts)
            lt.backward(torch.ones_like(lt))
            np.testing.assert_allclose(loss, lt.detach().numpy(), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-12, atol=1e-12)
    # weights whose targets sum to exactly zero: 'mean' is 0 with a zero gradient
    w0 = np.array([1.0, -1.0, 1.0, 1.0, 1.0, 1.0])
    loss, grad = fusedce.cross_entropy_with_grad(x[:2], np.array([0, 1]), weight=w0)
    assert loss == 0.0 and not grad.any()


def test_negative_binary_weights_are_computed_as_given():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((4, 6))
    t = rng.uniform(0, 1, (4, 6))
    kw = {"weight": np.linspace(-1, 1, 6), "pos_weight": np.linspace(-2, 0.5, 6)}
    loss, grad = fusedce.binary_cross_entropy_with_logits_with_grad(x, t, reduction="none", **kw)
    rloss, rgrad = ref.binary_cross_entropy_with_logits_with_grad(x, t, reduction="none", **kw)
    np.testing.assert_allclose(loss, rloss, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grad, rgrad, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------- leaks


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc/self/statm")
def test_many_calls_keep_memory_flat():
    """100,000 calls over every function on tiny inputs: the resident set stays flat (a leak
    of even 100 bytes a call would show as 10 MB)."""
    calls = [(name, base_inputs(name)) for name in ALL_FUNCTIONS]
    calls += [("cross_entropy_with_grad", {**base_inputs("cross_entropy_with_grad"), "weight": np.ones(K),
                                           "label_smoothing": 0.1, "softcap": 3.0, "z_loss": 1e-3}),
              ("cross_entropy_with_grad", {**base_inputs("cross_entropy_with_grad"),
                                           "target": np.full((B, K), 0.2, np.float32)})]
    inplace = {**base_inputs("cross_entropy_with_grad"), "inplace": True}
    errors = {**base_inputs("cross_entropy"), "target": np.array([0, 1, 2, 9])}

    def run(n):
        for i in range(n):
            name, kw = calls[i % len(calls)]
            invoke(name, kw)
            if i % 50 == 0:
                invoke("cross_entropy_with_grad", inplace)
                with pytest.raises(ValueError):
                    invoke("cross_entropy", errors)

    run(5_000)  # warm-up: caches, arenas and cffi's type cache reach their size
    gc.collect()
    before = _rss_bytes()
    run(100_000)
    gc.collect()
    growth = _rss_bytes() - before
    assert growth < 8 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MB over 100,000 calls"


# ---------------------------------------------------------------------------- weighted sums
# Probability targets and label smoothing need sum_k w_k q~_k (lse - y_k). The kernels take
# their weighted sums relative to the row max (csrc/kernels.h), so the loss keeps its float32
# bound at any logit magnitude, also when a row is split over threads and its segments' sums
# are moved to the common max.


@pytest.mark.parametrize("shape", [(16, 1000), (1, 40000)])  # (1, 40000): split over threads
@pytest.mark.parametrize("target_kind", ["probabilities", "smoothing", "weighted smoothing"])
def test_probability_and_smoothing_losses_at_large_logits(isa, threads, target_kind, shape):
    """Logits around 1e4 (the README's 'any finite logits are safe'): the loss is within the
    float32 bound of the reference computed from the same float32 logits."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) + 1e4).astype(np.float32)
    opts = {"weight": rng.uniform(0.5, 2.0, shape[1])} if target_kind == "weighted smoothing" else {}
    if target_kind == "probabilities":
        q = rng.uniform(0, 1, x.shape)
        target = (q / q.sum(-1, keepdims=True)).astype(np.float32)
    else:
        target, opts["label_smoothing"] = rng.integers(0, shape[1], shape[0]), 0.1
    loss = fusedce.cross_entropy(x, target, reduction="none", **opts)
    assert_loss_close(loss, ref.cross_entropy(x, target, reduction="none", **opts), "float32")


@quiet_nan
@pytest.mark.parametrize("soft", [True, False])
def test_zero_weight_against_minus_inf_with_smoothing(isa, soft):
    """A class of weight 0 takes no part, even at a -inf logit (the reference's rule:
    w_k q~_k = 0 is left out)."""
    x = np.array([[0.5, 1.0, -np.inf, 0.2, 0.0, -1.0]], np.float32)
    target = np.full((1, 6), 1 / 6, np.float32) if soft else np.array([1])
    w = np.array([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    loss = fusedce.cross_entropy(x, target, weight=w, label_smoothing=0.1)
    assert np.isfinite(loss)
    assert loss == pytest.approx(ref.cross_entropy(x, target, weight=w, label_smoothing=0.1), rel=2e-6)


# ---------------------------------------------------------------------------- softcap


@pytest.mark.parametrize("inplace", [False, True])
def test_softcap_gradient_where_tanh_saturates(isa, inplace):
    """Every logit beyond 3 * softcap: the gradient is small and must still be within 2e-6 of
    its largest magnitude (1 - tanh^2 is computed as 4e/(1 + e)^2, e = exp(-2|x/softcap|), in
    the kernels and, for the target's element, in the driver)."""
    rng = np.random.default_rng(3)
    x = (15.0 + rng.uniform(0, 5, (16, 50))).astype(np.float32)
    t = rng.integers(0, 50, 16)
    _, rgrad = ref.cross_entropy_with_grad(x, t, softcap=5.0, reduction="sum")
    _, grad = fusedce.cross_entropy_with_grad(x, t, softcap=5.0, reduction="sum", inplace=inplace)
    assert_grad_close(grad, rgrad, "float32")
