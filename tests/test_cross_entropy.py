"""Every cross-entropy entry point and option against the float64 reference, on every ISA."""

import functools

import numpy as np
import pytest

import fusedce
from fusedce import reference as ref

from cases import OPTION_NAMES, REDUCTIONS, grad_output_for, make_case
from tolerances import assert_grad_close, assert_loss_close

SMALL_K = (1, 2, 3, 7, 16, 17, 1000)
BATCHES = (0, 1, 5, 257)
DTYPES = ("float32", "float64")


@functools.lru_cache(maxsize=32)
def reference_with_grad(B, K, dtype, opt, reduction):
    x, t, kw, go = make_case(B, K, dtype, opt)
    return ref.cross_entropy_with_grad(x, t, reduction=reduction, grad_output=grad_output_for(reduction, go), **kw)


def check_with_grad(B, K, dtype, opt, reductions=REDUCTIONS):
    x, t, kw, go = make_case(B, K, dtype, opt)
    x_before = x.copy()
    for reduction in reductions:
        loss, grad = fusedce.cross_entropy_with_grad(
            x, t, reduction=reduction, grad_output=grad_output_for(reduction, go), **kw
        )
        rloss, rgrad = reference_with_grad(B, K, dtype, opt, reduction)
        assert grad.dtype == x.dtype and grad.shape == x.shape
        if reduction == "none":
            assert loss.dtype == np.dtype(dtype) and loss.shape == (B,)
        else:
            assert isinstance(loss, float)
        assert_loss_close(loss, rloss, dtype, f"loss[{reduction}]")
        assert_grad_close(grad, rgrad, dtype, f"grad[{reduction}]", row_factor=grad_output_for(reduction, go))
    np.testing.assert_array_equal(x, x_before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opt", OPTION_NAMES)
@pytest.mark.parametrize("K", SMALL_K)
@pytest.mark.parametrize("B", BATCHES)
def test_with_grad_small(isa, B, K, opt, dtype):
    check_with_grad(B, K, dtype, opt)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opt", OPTION_NAMES)
@pytest.mark.parametrize("B,K", [(1, 32000), (5, 32000), (1, 131073), (5, 131073)])
def test_with_grad_large_k(isa, threads, B, K, opt, dtype):
    check_with_grad(B, K, dtype, opt)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opt", ["plain", "all"])
def test_with_grad_many_rows(isa, threads, opt, dtype):
    check_with_grad(257, 32000, dtype, opt)


@pytest.mark.slow
def test_with_grad_many_huge_rows(isa):
    check_with_grad(257, 131073, "float32", "all", reductions=("mean",))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opt", OPTION_NAMES)
@pytest.mark.parametrize("B,K", [(5, 7), (257, 17), (5, 1000), (3, 131073)])
def test_forward_backward_split(isa, B, K, opt, dtype):
    """forward -> (loss, lse), backward(lse) -> grad, and cross_entropy alone, all agree."""
    x, t, kw, go = make_case(B, K, dtype, opt)
    for reduction in REDUCTIONS:
        g_out = grad_output_for(reduction, go)
        loss, lse = fusedce.cross_entropy_forward(x, t, reduction=reduction, **kw)
        rloss, rlse = ref.cross_entropy_forward(x, t, reduction=reduction, **kw)
        assert_loss_close(loss, rloss, dtype)
        assert_loss_close(lse, rlse, dtype, "lse")
        assert lse.dtype == np.dtype(dtype)
        assert_loss_close(fusedce.cross_entropy(x, t, reduction=reduction, **kw), rloss, dtype)
        grad = fusedce.cross_entropy_backward(x, t, lse, g_out, reduction=reduction, **kw)
        rgrad = ref.cross_entropy_backward(x, t, rlse, g_out, reduction=reduction, **kw)
        assert_grad_close(grad, rgrad, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [1, 3, 17, 1000, 40000])
def test_inplace_and_out(isa, K, dtype):
    x, t, kw, go = make_case(9, K, dtype, "all")
    rloss, rgrad = ref.cross_entropy_with_grad(x, t, reduction="none", grad_output=go, **kw)
    buf = np.empty_like(x)
    loss, grad = fusedce.cross_entropy_with_grad(x, t, reduction="none", grad_output=go, out=buf, **kw)
    assert grad is buf
    assert_grad_close(buf, rgrad, dtype)
    xi = x.copy()
    loss, grad = fusedce.cross_entropy_with_grad(xi, t, reduction="none", grad_output=go, inplace=True, **kw)
    assert grad is xi
    assert_loss_close(loss, rloss, dtype)
    assert_grad_close(xi, rgrad, dtype)
    xb = x.copy()
    _, lse = fusedce.cross_entropy_forward(xb, t, reduction="none", **kw)
    g2 = fusedce.cross_entropy_backward(xb, t, lse, go, reduction="none", inplace=True, **kw)
    assert g2 is xb
    assert_grad_close(xb, rgrad, dtype)


VIEWS = {
    "contiguous": lambda a: a,
    "transposed": lambda a: a.swapaxes(0, 1),
    "reversed": lambda a: a[:, ::-1],
    "strided": lambda a: a[::2],
}


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_shapes_and_non_contiguous(isa, dtype, view):
    """(2, 3, 4, K) logits and views of them (negative strides too): accepted and correct."""
    x, t, kw, go = make_case(24, 50, dtype, "all", batch_shape=(2, 3, 4))
    f = VIEWS[view]
    xv, tv, gv = f(x), f(t), f(go)
    x_class_strided = np.asfortranarray(xv)  # class axis not unit-stride either
    for arr in (xv, x_class_strided):
        loss, grad = fusedce.cross_entropy_with_grad(arr, tv, reduction="none", grad_output=gv, **kw)
        rloss, rgrad = ref.cross_entropy_with_grad(arr, tv, reduction="none", grad_output=gv, **kw)
        assert loss.shape == arr.shape[:-1] and grad.shape == arr.shape
        assert_loss_close(loss, rloss, dtype)
        assert_grad_close(grad, rgrad, dtype)


@pytest.mark.parametrize("tdtype", [np.int8, np.uint8, np.int16, np.int32, np.int64, np.uint64])
def test_any_integer_target_dtype(tdtype):
    x, t, kw, _ = make_case(6, 100, "float32", "plain")
    t = np.abs(t) % 100
    loss = fusedce.cross_entropy(x, t.astype(tdtype))
    assert_loss_close(loss, ref.cross_entropy(x, t), "float32")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [1, 2, 17, 1000, 131073])
def test_softmax_family(isa, K, dtype):
    x, _, _, _ = make_case(5, K, dtype)
    x[0, : min(K, 3)] = -np.inf if K > 1 else x[0, 0]
    out = fusedce.log_softmax(x)
    assert out.dtype == x.dtype
    assert_loss_close(out, ref.log_softmax(x), dtype, "log_softmax")
    s = fusedce.softmax(x)
    assert s.dtype == x.dtype
    assert_grad_close(s, ref.softmax(x), dtype, "softmax")
    assert_loss_close(fusedce.logsumexp(x), ref.logsumexp(x), dtype, "logsumexp")
    assert fusedce.logsumexp(x[0]).shape == ()


@pytest.mark.parametrize("module", [fusedce, ref], ids=["fusedce", "reference"])
def test_no_classes(module):
    """K = 0: nothing to score. Every row's lse is log(0) = -inf and its loss an empty sum, 0
    (z_loss and smoothing have no class to act on); the gradient and softmax are empty. Class
    targets must all be ignored; any other is out of range, as in torch."""
    x = np.zeros((3, 0), np.float32)
    ignored, probs = np.full(3, -100), np.zeros((3, 0), np.float32)
    opts = dict(label_smoothing=0.1, z_loss=0.01, softcap=5.0)
    for target in (ignored, probs):
        for reduction in ("none", "mean", "sum"):
            loss, grad = module.cross_entropy_with_grad(x, target, reduction=reduction, **opts)
            np.testing.assert_array_equal(loss, np.zeros(3) if reduction == "none" else 0.0)
            assert grad.shape == (3, 0)
        loss, lse = module.cross_entropy_forward(x, target, reduction="none", **opts)
        np.testing.assert_array_equal(lse, np.full(3, -np.inf))
        assert module.cross_entropy_backward(x, target, lse, np.ones(3), reduction="none").shape == (3, 0)
    np.testing.assert_array_equal(module.logsumexp(x), np.full(3, -np.inf))
    assert module.softmax(x).shape == module.log_softmax(x).shape == (3, 0)
    loss, grad = module.binary_cross_entropy_with_logits_with_grad(x, probs)
    assert loss == 0.0 and grad.shape == (3, 0)
    with pytest.raises(ValueError, match=r"target\[1\] = 0 is out of range: class indices must be in \[0, 0\)"):
        module.cross_entropy(x, np.array([-100, 0, -100]))
