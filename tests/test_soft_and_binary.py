"""Probability targets for cross_entropy and binary cross-entropy with logits, against the
float64 reference (every ISA) and against torch where installed."""

import numpy as np
import pytest

import fusedce
from fusedce import reference as ref

from cases import REDUCTIONS, grad_output_for
from tolerances import assert_grad_close, assert_loss_close

DTYPES = ("float32", "float64")


def soft_case(B, K, dtype, seed=0):
    rng = np.random.default_rng(seed + B * 7 + K)
    x = (rng.standard_normal((B, K)) * 2).astype(dtype)
    q = rng.random((B, K)) ** 4  # peaked, with some near-zero probabilities
    q /= np.maximum(q.sum(axis=1, keepdims=True), 1e-300)
    if B > 2:
        q[1] = 0.0
        q[1, K // 2] = 1.0  # a one-hot row
    return x, q.astype(dtype), rng.uniform(0.5, 1.5, K), rng.standard_normal(B)


SOFT_OPTIONS = {
    "plain": lambda w: {},
    "smoothing": lambda w: {"label_smoothing": 0.15},
    "weight": lambda w: {"weight": w},
    "all": lambda w: {"weight": w, "label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 4.0},
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opt", SOFT_OPTIONS)
@pytest.mark.parametrize("B,K", [(0, 5), (1, 1), (1, 2), (5, 17), (64, 1000), (3, 131073)])
def test_probability_targets(isa, B, K, opt, dtype):
    x, q, w, go = soft_case(B, K, dtype)
    kw = SOFT_OPTIONS[opt](w)
    x_before, q_before = x.copy(), q.copy()
    for reduction in REDUCTIONS:
        g_out = grad_output_for(reduction, go)
        loss, grad = fusedce.cross_entropy_with_grad(x, q, reduction=reduction, grad_output=g_out, **kw)
        rloss, rgrad = ref.cross_entropy_with_grad(x, q, reduction=reduction, grad_output=g_out, **kw)
        assert_loss_close(loss, rloss, dtype)
        assert_grad_close(grad, rgrad, dtype, row_factor=g_out)
        assert_loss_close(fusedce.cross_entropy(x, q, reduction=reduction, **kw), rloss, dtype)
        fl, lse = fusedce.cross_entropy_forward(x, q, reduction=reduction, **kw)
        assert_loss_close(fl, rloss, dtype)
        g2 = fusedce.cross_entropy_backward(x, q, lse, g_out, reduction=reduction, **kw)
        assert_grad_close(g2, rgrad, dtype, row_factor=g_out)
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(q, q_before)


def test_one_hot_probabilities_equal_class_targets(isa):
    x, _, w, _ = soft_case(40, 30, "float64")
    t = np.random.default_rng(5).integers(0, 30, 40)
    q = np.eye(30)[t]
    for kw in ({}, {"label_smoothing": 0.2}, {"softcap": 3.0, "z_loss": 1e-2}):
        a = fusedce.cross_entropy_with_grad(x, q, reduction="sum", **kw)
        b = fusedce.cross_entropy_with_grad(x, t, reduction="sum", **kw)
        assert a[0] == pytest.approx(b[0], rel=1e-12)
        np.testing.assert_allclose(a[1], b[1], atol=1e-13)


def test_probability_target_rejects_ignore_index():
    x, q, _, _ = soft_case(4, 5, "float32")
    with pytest.raises(ValueError, match="ignore_index does not apply to probability targets"):
        fusedce.cross_entropy(x, q, ignore_index=0)


def bce_case(shape, dtype, seed=0):
    rng = np.random.default_rng(seed + int(np.prod(shape)))
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    t = rng.random(shape).astype(dtype)
    if x.size > 4:
        x.flat[:4] = [1e4, -1e4, 80.0, -80.0]  # extreme logits: finite loss, no overflow
        t.flat[:4] = [0.0, 1.0, 0.3, 1.0]
    return x, t, rng


BCE_OPTIONS = {
    "plain": lambda shape, rng: {},
    "weight_per_class": lambda shape, rng: {"weight": rng.uniform(0.2, 2, shape[-1:])},
    "weight_broadcast": lambda shape, rng: {"weight": rng.uniform(0.2, 2, shape[:-1] + (1,))},
    "pos_weight": lambda shape, rng: {"pos_weight": rng.uniform(0.5, 3, shape[-1:])},
    "both": lambda shape, rng: {"weight": rng.uniform(0.2, 2, shape), "pos_weight": rng.uniform(0.5, 3, shape[-1:])},
    # torch broadcasts pos_weight to the target: (1, C) is per class, (N, C) per element
    "pos_weight_1C": lambda shape, rng: {"pos_weight": rng.uniform(0.5, 3, (1,) * (len(shape) - 1) + shape[-1:])},
    "pos_weight_full": lambda shape, rng: {"pos_weight": rng.uniform(0.5, 3, shape)},
    "pos_weight_rows": lambda shape, rng: {"weight": rng.uniform(0.2, 2, shape[-1:]),
                                           "pos_weight": rng.uniform(0.5, 3, shape[:-1] + (1,))},
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opt", BCE_OPTIONS)
@pytest.mark.parametrize("shape", [(0, 3), (1,), (1, 1), (7, 33), (4, 5, 6), (2, 40000)])
def test_binary_cross_entropy(isa, shape, opt, dtype):
    x, t, rng = bce_case(shape, dtype)
    kw = BCE_OPTIONS[opt](shape, rng)
    go = rng.standard_normal(shape)
    for reduction in REDUCTIONS:
        g_out = go if reduction == "none" else 0.75
        loss, grad = fusedce.binary_cross_entropy_with_logits_with_grad(x, t, reduction=reduction, grad_output=g_out, **kw)
        rloss, rgrad = ref.binary_cross_entropy_with_logits_with_grad(x, t, reduction=reduction, grad_output=g_out, **kw)
        assert np.isfinite(loss).all() and np.isfinite(grad).all()
        assert_loss_close(loss, rloss, dtype)
        assert_grad_close(grad, rgrad, dtype)
        assert_loss_close(fusedce.binary_cross_entropy_with_logits(x, t, reduction=reduction, **kw), rloss, dtype)
    xi = x.copy()
    _, g = fusedce.binary_cross_entropy_with_logits_with_grad(xi, t, inplace=True, **kw)
    assert g is xi
    assert_grad_close(xi, ref.binary_cross_entropy_with_logits_with_grad(x, t, **kw)[1], dtype)


def test_binary_cross_entropy_bad_input():
    x, t, _ = bce_case((4, 5), "float32")
    before = x.copy()
    with pytest.raises(ValueError, match=r"pos_weight of shape \(4,\) does not broadcast"):
        fusedce.binary_cross_entropy_with_logits_with_grad(x, t, pos_weight=np.ones(4), inplace=True)
    with pytest.raises(ValueError, match="does not broadcast"):
        fusedce.binary_cross_entropy_with_logits(x, t, weight=np.ones(3))
    with pytest.raises(TypeError, match="target must be a floating array"):
        fusedce.binary_cross_entropy_with_logits(x, t > 0.5)
    with pytest.raises(ValueError, match="target must have the logits' shape"):
        fusedce.binary_cross_entropy_with_logits(x, t[:2])
    np.testing.assert_array_equal(x, before)


def test_binary_is_two_class_categorical(isa):
    """BCE of logit z with target p equals CE of logits [0, z] with probabilities [1-p, p]."""
    x, t, _ = bce_case((50,), "float64")
    x = np.clip(x, -30, 30)
    bce = fusedce.binary_cross_entropy_with_logits(x, t, reduction="none")
    ce = fusedce.cross_entropy(np.stack([np.zeros_like(x), x], -1), np.stack([1 - t, t], -1), reduction="none")
    np.testing.assert_allclose(bce, ce, rtol=1e-12, atol=1e-13)


torch = pytest.importorskip("torch")


@pytest.mark.parametrize("opt", BCE_OPTIONS)
def test_binary_reference_matches_torch(opt):
    x, t, rng = bce_case((6, 9), "float64")
    kw = BCE_OPTIONS[opt]((6, 9), rng)
    for reduction in REDUCTIONS:
        xt = torch.tensor(x, requires_grad=True)
        tkw = {k: torch.tensor(v) for k, v in kw.items()}
        lt = torch.nn.functional.binary_cross_entropy_with_logits(xt, torch.tensor(t), reduction=reduction, **tkw)
        lt.backward(torch.ones_like(lt))
        rl, rg = ref.binary_cross_entropy_with_logits_with_grad(x, t, reduction=reduction, **kw)
        np.testing.assert_allclose(rl, lt.detach().numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(rg, xt.grad.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("opt", SOFT_OPTIONS)
def test_probability_reference_matches_torch(opt):
    x, q, w, _ = soft_case(6, 11, "float64")
    kw = SOFT_OPTIONS[opt](w)
    if "z_loss" in kw or "softcap" in kw:
        pytest.skip("torch has no z_loss/softcap; covered by the class-target torch tests")
    for reduction in REDUCTIONS:
        xt = torch.tensor(x, requires_grad=True)
        lt = torch.nn.functional.cross_entropy(
            xt, torch.tensor(q), reduction=reduction, label_smoothing=kw.get("label_smoothing", 0.0),
            weight=torch.tensor(kw["weight"]) if "weight" in kw else None)
        lt.backward(torch.ones_like(lt))
        rl, rg = ref.cross_entropy_with_grad(x, q, reduction=reduction, **kw)
        np.testing.assert_allclose(rl, lt.detach().numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(rg, xt.grad.numpy(), rtol=1e-10, atol=1e-14)
