"""More than 2^31 elements: every size and offset in the C kernels is 64-bit.

float16 logits of about 4.3 GB, built so that the loss of every row is known in closed form
(zeros with one logit a_r at the target t_r: loss = log(K - 1 + e^a) - a) and different from
its neighbours', so a row read at a wrapped 32-bit offset shows up. Spot rows around the 2^31
boundary are also checked against the float64 reference. Runs on the best ISA only; needs
about 5 GB of memory and 1 minute on 2 cores.
"""

import gc

import numpy as np
import pytest

import fusedce
from fusedce import reference as ref

from tolerances import assert_loss_close

pytestmark = pytest.mark.slow

ELEMENTS_PAST = 2**31  # every test's logits have more elements than this


@pytest.fixture
def best_isa():
    before = fusedce.cpu_info()["active_isa"]
    fusedce.set_isa(fusedce.cpu_info()["detected_isa"])
    yield
    fusedce.set_isa(before)
    gc.collect()


def _row_losses(a, K):
    """Closed form: one logit a at the target, K - 1 zeros."""
    a = a.astype(np.float64)
    return np.log((K - 1) + np.exp(a)) - a


def test_rows_past_2_31_elements(best_isa):
    K = 4096
    B = ELEMENTS_PAST // K + 8
    rows = np.arange(B)
    target = (rows * 7919) % K
    a = ((rows * 2654435761) >> 7) % 11 - 5.0  # integers in [-5, 5]: exact in float16
    x = np.zeros((B, K), np.float16)
    x[rows, target] = a
    assert x.size > ELEMENTS_PAST

    loss = fusedce.cross_entropy(x, target, reduction="none")
    assert_loss_close(loss, _row_losses(a, K), "float16")
    spot = np.r_[0:3, ELEMENTS_PAST // K - 2 : B]  # around the boundary, and the last rows
    assert_loss_close(loss[spot], ref.cross_entropy(x[spot], target[spot], reduction="none"), "float16")

    # the gradient written over the logits: p - onehot, read back at the target of every row
    # and in the first and last column (where those are not the target)
    total, grad = fusedce.cross_entropy_with_grad(x, target, reduction="sum", inplace=True)
    assert grad is x
    assert total == pytest.approx(_row_losses(a, K).sum(), rel=2e-6)
    p_other = 1.0 / ((K - 1) + np.exp(a))
    p_target = np.exp(a) * p_other
    np.testing.assert_allclose(grad[rows, target], p_target - 1.0, atol=1e-3)
    for column in (0, K - 1):
        elsewhere = target != column
        np.testing.assert_allclose(grad[rows[elsewhere], column], p_other[elsewhere], rtol=1e-3)


def test_one_row_past_2_31_classes(best_isa):
    """One row of 2^31 + 67 classes (split over threads, a vector tail at the end): a constant
    row with two bumps past 2^31; loss and lse in closed form, then the in-place gradient must
    have overwritten every element (the constant ones underflow to 0 in float16)."""
    K = ELEMENTS_PAST + 67
    t, bump = K - 5, ELEMENTS_PAST + 1
    x = np.full((1, K), -1.0, np.float16)
    x[0, t], x[0, bump] = 3.0, 2.0
    S = (K - 2) * np.exp(-1.0) + np.exp(3.0) + np.exp(2.0)
    target = np.array([t])

    loss, lse = fusedce.cross_entropy_forward(x, target, reduction="none")
    assert_loss_close(lse, [np.log(S)], "float16", "lse")
    assert_loss_close(loss, [np.log(S) - 3.0], "float16")

    _, grad = fusedce.cross_entropy_with_grad(x, target, reduction="none", inplace=True)
    assert grad[0, t] == pytest.approx(np.exp(3.0) / S - 1.0, abs=1e-3)
    # every other element is p_j = e^-1/S or e^2/S, below float16's smallest subnormal
    assert np.count_nonzero(grad) == 1
