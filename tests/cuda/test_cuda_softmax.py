"""softmax, log_softmax and logsumexp on the GPU backend against the float64 reference."""

import numpy as np
import pytest

from fusedce import _cuda
from fusedce import reference as ref


def check_family(h, x):
    dx = h.dev(x)
    h.assert_array(_cuda.softmax(dx), ref.softmax(x), x.dtype)
    h.assert_array(_cuda.log_softmax(dx), ref.log_softmax(x), x.dtype)
    lse = _cuda.logsumexp(dx)
    assert h.host(lse).dtype == (np.float64 if x.dtype == np.float64 else np.float32)
    h.assert_loss(lse, ref.logsumexp(x), x.dtype)
    np.testing.assert_array_equal(h.host(dx), x)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("shape", [(0, 3), (1,), (5, 1), (1, 3), (5, 17), (2, 3, 300)])
def test_family(h, rng, dtype, shape):
    check_family(h, h.logits(rng, shape, dtype))


@pytest.mark.parametrize("path", ["two_pass", "split"])
def test_family_layout_paths(h, rng, path):
    h.use_path(path)
    check_family(h, h.logits(rng, (2, 300), "float32"))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_family_special_values(h):
    x = np.zeros((5, 9))
    x[0, ::2] = -np.inf  # -inf has probability 0, no NaN
    x[1, :] = -np.inf  # a row of only -inf: NaN (as the reference)
    x[2, 4] = np.nan  # NaN poisons only its row
    x[3, 1] = np.inf  # +inf: NaN (as the reference)
    x[4, :] = np.arange(9) * 1e4  # huge spread: no overflow
    check_family(h, x)
