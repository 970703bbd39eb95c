"""The steps of docs/derivation.md, each as a check on fusedce."""

import numpy as np
import pytest

import fusedce

COUNTS = np.array([2, 5, 2, 4, 2, 5])  # a die thrown 20 times


def test_die_likelihood_is_maximised_at_the_frequencies():
    throws = np.repeat(np.arange(6), COUNTS)
    freq = COUNTS / COUNTS.sum()
    rng = np.random.default_rng(0)

    def loss_of(p):  # the mean cross-entropy of a die with probabilities p over the throws
        logits = np.tile(np.log(p), (throws.size, 1))
        return fusedce.cross_entropy(logits, throws)

    best = loss_of(freq)
    # ... equals the negative log-likelihood per throw, computed straight from the record
    assert best == pytest.approx(-np.mean(np.log(freq[throws])), rel=1e-12)
    for _ in range(200):
        other = np.clip(freq + rng.normal(0, 0.02, 6), 1e-3, None)
        other /= other.sum()
        assert loss_of(other) >= best - 1e-15


def test_gradient_is_softmax_minus_target():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((5, 8))
    t = rng.integers(0, 8, 5)
    _, grad = fusedce.cross_entropy_with_grad(z, t, reduction="sum")
    np.testing.assert_allclose(grad, fusedce.softmax(z) - np.eye(8)[t], atol=1e-14)
    # central finite differences of the loss
    h = 1e-6
    fd = np.zeros_like(z)
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            zp, zm = z.copy(), z.copy()
            zp[i, j] += h
            zm[i, j] -= h
            fd[i, j] = (fusedce.cross_entropy(zp, t, reduction="sum") - fusedce.cross_entropy(zm, t, reduction="sum")) / (2 * h)
    np.testing.assert_allclose(grad, fd, atol=1e-8)


def test_coin_likelihood_is_maximised_at_the_frequency():
    heads, n = 7, 20
    tosses = np.r_[np.ones(heads), np.zeros(n - heads)]
    xs = np.linspace(-3, 3, 6001)
    losses = [fusedce.binary_cross_entropy_with_logits(np.full(n, x), tosses) for x in xs]
    best = xs[int(np.argmin(losses))]
    assert 1 / (1 + np.exp(-best)) == pytest.approx(heads / n, abs=1e-3)


def test_binary_gradient_is_sigmoid_minus_target():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(30) * 3
    t = rng.random(30)
    _, grad = fusedce.binary_cross_entropy_with_logits_with_grad(x, t, reduction="sum")
    np.testing.assert_allclose(grad, 1 / (1 + np.exp(-x)) - t, atol=1e-14)
    h = 1e-6
    fd = np.array([
        (fusedce.binary_cross_entropy_with_logits(x + h * e, t, reduction="sum")
         - fusedce.binary_cross_entropy_with_logits(x - h * e, t, reduction="sum")) / (2 * h)
        for e in np.eye(30)
    ])
    np.testing.assert_allclose(grad, fd, atol=1e-7)
