"""Bad input: a clear ValueError/TypeError naming the argument, and nothing written."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fusedce
from fusedce import reference

IMPLS = {"fused": fusedce, "reference": reference}


def _inputs():
    rng = np.random.default_rng(0)
    return rng.standard_normal((4, 5)).astype(np.float32), np.array([0, 1, 2, 3])


CASES = [
    # (description, kwargs builder, exception, message fragment)
    ("0-d logits", lambda x, t: dict(logits=np.float32(1.0), target=0), ValueError, "logits must have at least 1 dimension"),
    ("K = 0, counted targets", lambda x, t: dict(logits=np.zeros((4, 0), np.float32), target=t), ValueError,
     "target[0] = 0 is out of range: class indices must be in [0, 0)"),
    ("target shape", lambda x, t: dict(logits=x, target=t[:3]), ValueError, "target must have shape (4,)"),
    ("target 2-d", lambda x, t: dict(logits=x, target=t[:, None]), ValueError, "target must have shape (4,)"),
    ("target too big", lambda x, t: dict(logits=x, target=np.array([0, 1, 5, 3])), ValueError, "target[2] = 5 is out of range"),
    ("target negative", lambda x, t: dict(logits=x, target=np.array([0, -1, 2, 3])), ValueError, "target[1] = -1 is out of range"),
    ("float target", lambda x, t: dict(logits=x, target=t.astype(np.float32)), TypeError, "target must be an integer array"),
    ("bool target", lambda x, t: dict(logits=x, target=t > 1), TypeError, "target must be an integer array"),
    ("int logits", lambda x, t: dict(logits=np.ones((4, 5), np.int64), target=t), TypeError, "logits must be a floating array"),
    ("bool logits", lambda x, t: dict(logits=x > 0, target=t), TypeError, "got dtype bool"),
    ("complex logits", lambda x, t: dict(logits=x.astype(np.complex64), target=t), TypeError, "got dtype complex64"),
    ("object logits", lambda x, t: dict(logits=x.astype(object), target=t), TypeError, "got dtype object"),
    ("weight length", lambda x, t: dict(logits=x, target=t, weight=np.ones(4)), ValueError, "weight must have shape (5,)"),
    ("weight NaN", lambda x, t: dict(logits=x, target=t, weight=np.array([1, 1, np.nan, 1, 1])), ValueError, "weight must be finite"),
    ("smoothing > 1", lambda x, t: dict(logits=x, target=t, label_smoothing=1.5), ValueError, "label_smoothing must be in [0, 1]"),
    ("smoothing < 0", lambda x, t: dict(logits=x, target=t, label_smoothing=-0.1), ValueError, "label_smoothing must be in [0, 1]"),
    ("reduction", lambda x, t: dict(logits=x, target=t, reduction="avg"), ValueError, "reduction must be one of"),
    ("z_loss", lambda x, t: dict(logits=x, target=t, z_loss=-1.0), ValueError, "z_loss must be"),
    ("softcap", lambda x, t: dict(logits=x, target=t, softcap=0.0), ValueError, "softcap must be None or"),
    ("ignore_index", lambda x, t: dict(logits=x, target=t, ignore_index=1.5), TypeError, "ignore_index must be an integer"),
]

GRAD_CASES = [
    ("grad_output shape", lambda x, t: dict(logits=x, target=t, reduction="none", grad_output=np.ones(3)), ValueError,
     "grad_output must be a scalar or have shape (4,)"),
    ("grad_output with mean", lambda x, t: dict(logits=x, target=t, grad_output=np.ones(4)), ValueError,
     "grad_output must be a scalar with reduction='mean'"),
    ("inplace read-only", lambda x, t: dict(logits=_readonly(x), target=t, inplace=True), ValueError, "read-only"),
    ("inplace non-contiguous", lambda x, t: dict(logits=x[:, ::2], target=t % 3, inplace=True), ValueError, "C-contiguous"),
    ("inplace list", lambda x, t: dict(logits=x.tolist(), target=t, inplace=True), TypeError, "NumPy array"),
    ("out shape", lambda x, t: dict(logits=x, target=t, out=np.empty((4, 4), np.float32)), ValueError, "out must have shape (4, 5)"),
    ("out dtype", lambda x, t: dict(logits=x, target=t, out=np.empty((4, 5), np.float64)), TypeError, "out must have dtype float32"),
    ("out overlaps", lambda x, t: dict(logits=x[:3], target=t[:3], out=_overlapping(x)), ValueError, "out overlaps logits"),
    ("inplace and out", lambda x, t: dict(logits=x, target=t, inplace=True, out=np.empty_like(x)), ValueError, "either inplace=True or out="),
]


def _readonly(x):
    x.flags.writeable = False
    return x


def _overlapping(x):
    """A (4, 5) view of x's memory shifted by one element: overlaps x without being x."""
    return np.lib.stride_tricks.as_strided(x.ravel()[1:], shape=(x.shape[0] - 1, x.shape[1]), strides=x.strides)


def _snapshot(kw):
    return {k: np.array(v, copy=True) for k, v in kw.items() if isinstance(v, np.ndarray)}


def _assert_unchanged(kw, before):
    for k, v in before.items():
        np.testing.assert_array_equal(kw[k], v, err_msg=f"{k} was modified by a rejected call")


def _call(fn, kw):
    args = dict(kw)
    return fn(args.pop("logits"), args.pop("target"), **args)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_rejected_everywhere(impl, case):
    _, build, exc, fragment = case
    mod = IMPLS[impl]
    for fn in ("cross_entropy", "cross_entropy_forward", "cross_entropy_with_grad"):
        kw = build(*_inputs())
        before = _snapshot(kw)
        with pytest.raises(exc) as info:
            _call(getattr(mod, fn), kw)
        assert fragment in str(info.value), f"{fn}: {info.value!r} lacks {fragment!r}"
        _assert_unchanged(kw, before)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_rejected_gradient_calls(impl, case):
    _, build, exc, fragment = case
    x, t = _inputs()
    base_before = x.copy()
    kw = build(x, t)
    before = _snapshot(kw)
    with pytest.raises(exc) as info:
        _call(IMPLS[impl].cross_entropy_with_grad, kw)
    assert fragment in str(info.value), f"{info.value!r} lacks {fragment!r}"
    _assert_unchanged(kw, before)
    np.testing.assert_array_equal(x, base_before)


def test_out_of_range_target_changes_nothing_inplace():
    x, _ = _inputs()
    before = x.copy()
    with pytest.raises(ValueError, match=r"target\[3\] = 9 is out of range: class indices must be in \[0, 5\)"):
        fusedce.cross_entropy_with_grad(x, np.array([0, 1, 2, 9]), inplace=True)
    np.testing.assert_array_equal(x, before)


def test_out_of_range_target_names_multi_dim_position():
    x = np.zeros((2, 3, 5), np.float32)
    t = np.zeros((2, 3), np.int64)
    t[1, 2] = 7
    with pytest.raises(ValueError, match=r"target\[1, 2\] = 7"):
        fusedce.cross_entropy(x, t)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), num_classes=st.integers(1, 12),
       dtype=st.sampled_from(["<i4", ">i8", "<i8", "|i1", "<u2", ">u4", "|u1"]),
       ignore_index=st.sampled_from([-100, -1, 0, 3, 12, 2**40]))
def test_target_range_check_matches_the_plain_test(data, num_classes, dtype, ignore_index):
    """The check of class indices (unsigned view, counted ignored rows) against the plain
    elementwise test: valid targets pass, and the first bad one is named."""
    info = np.iinfo(np.dtype(dtype))
    values = data.draw(st.lists(st.integers(max(info.min, -130), min(info.max, 140)), min_size=1, max_size=9))
    if ignore_index != 2**40 and info.min <= ignore_index <= info.max and data.draw(st.booleans()):
        values[data.draw(st.integers(0, len(values) - 1))] = ignore_index
    t = np.array(values, dtype=dtype)
    bad = (t != ignore_index) & ((t < 0) | (t >= num_classes))
    x = np.zeros((len(values), num_classes), np.float32)
    if bad.any():
        first = int(np.argmax(bad))
        with pytest.raises(ValueError, match=rf"target\[{first}\] = {int(t[first])} is out of range"):
            fusedce.cross_entropy(x, t, ignore_index=ignore_index, reduction="sum")
    else:
        loss = fusedce.cross_entropy(x, t, ignore_index=ignore_index, reduction="sum")
        assert loss == pytest.approx(np.count_nonzero(~bad & (t != ignore_index)) * np.log(num_classes), rel=1e-6)


def test_backward_lse_shape():
    x, t = _inputs()
    with pytest.raises(ValueError, match=r"lse must have shape \(4,\)"):
        fusedce.cross_entropy_backward(x, t, np.zeros(3))


def test_set_isa_rejects_unknown():
    with pytest.raises(ValueError, match="isa must be one of"):
        fusedce.set_isa("sse9")
