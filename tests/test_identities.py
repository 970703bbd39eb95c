"""Identities that follow from the derivation, checked on the fused kernels (every ISA)."""

import math

import numpy as np
import pytest

import fusedce
from fusedce import reference as ref


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_loss_is_negative_mean_log_likelihood(isa, dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 300)).astype(dtype)
    t = rng.integers(0, 300, 64)
    logp = ref.log_softmax(x)
    nll = -np.mean(logp[np.arange(64), t])
    assert fusedce.cross_entropy(x, t) == pytest.approx(nll, rel=2e-6)
    assert np.allclose(fusedce.log_softmax(x), logp, atol=2e-6 * 10)


@pytest.mark.parametrize("K", [1, 2, 1000, 131073])
def test_uniform_logits_give_log_k(isa, K):
    x = np.full((3, K), 0.25, np.float32)
    loss = fusedce.cross_entropy(x, np.array([0, K // 2, K - 1]))
    assert loss == pytest.approx(math.log(K), rel=2e-6, abs=1e-7)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_shift_invariance(isa, dtype):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((17, 1000)).astype(dtype)
    t = rng.integers(0, 1000, 17)
    loss, grad = fusedce.cross_entropy_with_grad(x, t, reduction="none")
    shifted = (x + np.asarray(37.5, dtype)).astype(dtype)  # 37.5 is exact in both dtypes
    loss2, grad2 = fusedce.cross_entropy_with_grad(shifted, t, reduction="none")
    # x + 37.5 rounds in float32, so the invariance holds to the rounding of the inputs.
    tol = 1e-12 if dtype == "float64" else 2e-5
    np.testing.assert_allclose(loss2, loss, rtol=tol, atol=tol)
    np.testing.assert_allclose(grad2, grad, atol=tol * np.abs(grad).max())


def test_huge_and_minus_inf_logits_stay_finite(isa):
    x = np.array(
        [[1e4, -1e4, 0.0, 5.0], [-1e4, -1e4, -1e4, -1e4 + 1], [0.0, -np.inf, 3.0, -np.inf], [1e4, 1e4, -np.inf, 0.0]],
        np.float32,
    )
    t = np.array([1, 3, 2, 0])
    loss, grad = fusedce.cross_entropy_with_grad(x, t, reduction="none")
    rloss, rgrad = ref.cross_entropy_with_grad(x, t, reduction="none")
    assert np.isfinite(loss).all() and np.isfinite(grad).all()
    np.testing.assert_allclose(loss, rloss, rtol=2e-6)
    np.testing.assert_allclose(grad, rgrad, atol=2e-6)
    assert loss[0] == pytest.approx(2e4, rel=1e-7)  # the target lies 2e4 below the max
    assert grad[2, 1] == 0.0 and grad[2, 3] == 0.0  # -inf logits: probability exactly 0
    lse = fusedce.logsumexp(x)
    assert np.isfinite(lse).all()


def test_nan_and_plus_inf_make_only_their_row_nan(isa):
    x = np.zeros((3, 40), np.float32)
    x[0, 5] = np.nan
    x[1, 7] = np.inf
    loss, grad = fusedce.cross_entropy_with_grad(x, np.array([1, 2, 3]), reduction="none")
    assert np.isnan(loss[0]) and np.isnan(loss[1]) and loss[2] == pytest.approx(math.log(40), rel=1e-6)
    assert np.isnan(grad[0]).all() and np.isnan(grad[1]).all() and np.isfinite(grad[2]).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_two_class_ce_is_binary_ce(isa, dtype):
    z = np.linspace(-30, 30, 121).astype(dtype)
    x = np.stack([np.zeros_like(z), z], axis=1)
    for label in (0, 1):
        t = np.full(z.shape, label)
        loss = fusedce.cross_entropy(x, t, reduction="none")
        zz = z.astype(np.float64)
        # binary CE of logit z against label: softplus(z) - label * z, computed stably
        bce = np.maximum(zz, 0) + np.log1p(np.exp(-np.abs(zz))) - label * zz
        np.testing.assert_allclose(loss, bce, rtol=2e-6 if dtype == "float32" else 1e-12,
                                   atol=2e-6 * np.log(2))


def test_gradient_descent_on_a_loaded_die_recovers_the_mle(isa):
    """20 throws with counts 2, 5, 2, 4, 2, 5: maximising the likelihood over 6 free logits
    gives the empirical frequencies counts / 20."""
    counts = np.array([2, 5, 2, 4, 2, 5])
    throws = np.repeat(np.arange(6), counts)
    theta = np.zeros((1, 6))
    for _ in range(500):
        logits = np.repeat(theta, throws.size, axis=0)
        _, grad = fusedce.cross_entropy_with_grad(logits, throws)
        theta -= 5.0 * grad.sum(axis=0, keepdims=True)
    p = fusedce.softmax(theta)[0]
    np.testing.assert_allclose(p, [0.10, 0.25, 0.10, 0.20, 0.10, 0.25], atol=1e-9)
    assert fusedce.cross_entropy(np.repeat(theta, 20, axis=0), throws) == pytest.approx(
        -np.sum(counts / 20 * np.log(counts / 20)), rel=1e-12
    )


def test_mean_over_no_counted_rows_is_zero(isa):
    x = np.random.default_rng(3).standard_normal((4, 10)).astype(np.float32)
    t = np.full(4, -100)
    loss, grad = fusedce.cross_entropy_with_grad(x, t)
    assert loss == 0.0 and not grad.any()
    rloss, rgrad = ref.cross_entropy_with_grad(x, t)
    assert rloss == 0.0 and not rgrad.any()
    w = np.zeros(10)
    loss, grad = fusedce.cross_entropy_with_grad(x, np.arange(4), weight=w)
    assert loss == 0.0 and not grad.any()
