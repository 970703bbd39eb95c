"""Property-based tests: random problems against the float64 reference, on every ISA.

Hypothesis draws the shape, the dtype, the options and the kind of values (scale, a share of
+-1e4 entries, a share of -inf entries that never fills a whole row); NumPy draws the values
from a seed that Hypothesis chose. Half-precision problems are compared with the reference run
on the same rounded inputs, so only the kernels' own error is measured.

CI runs a fixed, derandomised set of FUSEDCE_HYPOTHESIS_EXAMPLES examples per property and ISA
(150 when the variable is unset). Setting the variable asks for that many examples from a
random seed, e.g. FUSEDCE_HYPOTHESIS_EXAMPLES=5000 pytest tests/test_properties.py; a failure
prints the @reproduce_failure blob to replay it.
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fusedce
from fusedce import reference as ref

from tolerances import GRAD_RTOL, assert_grad_close, assert_loss_close

try:
    import ml_dtypes

    HALF_DTYPES = ("float16", np.dtype(ml_dtypes.bfloat16))
    finfo = ml_dtypes.finfo  # NumPy's finfo does not know bfloat16
except ImportError:  # bfloat16 needs ml_dtypes
    HALF_DTYPES = ("float16",)
    finfo = np.finfo

DTYPES = ("float32", "float64") + HALF_DTYPES
EXAMPLES_ENV = "FUSEDCE_HYPOTHESIS_EXAMPLES"

PROPERTY_SETTINGS = settings(
    max_examples=int(os.environ.get(EXAMPLES_ENV, "150")),
    derandomize=EXAMPLES_ENV not in os.environ,
    deadline=None,
    database=None,  # nothing written into the tree; failures print a reproduce blob instead
    print_blob=True,
    # the `isa` fixture only selects kernels: it is the same for every example
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Class counts: every vector tail up to 70, and widths around powers of two and beyond.
CLASS_COUNTS = st.one_of(st.integers(1, 70), st.sampled_from([127, 128, 129, 255, 257, 1000, 4099]))
BATCH_SHAPES = st.one_of(st.just(()), st.lists(st.integers(0, 9), min_size=1, max_size=2).map(tuple))


@st.composite
def logits(draw):
    """(logits array, rng) of a drawn dtype and shape; values of a drawn kind."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(BATCH_SHAPES) + (draw(CLASS_COUNTS),)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([0.01, 1.0, 5.0, 40.0]))
    huge_share = draw(st.sampled_from([0.0, 0.0, 0.02, 0.3]))
    neg_inf_share = draw(st.sampled_from([0.0, 0.0, 0.05, 0.6]))
    x = rng.standard_normal(shape) * scale
    x[rng.random(shape) < huge_share] = 1e4
    x[rng.random(shape) < huge_share] = -1e4
    x[rng.random(shape) < neg_inf_share] = -np.inf
    # never a whole row of -inf: that row's result would be NaN (tests/test_hardening.py)
    rows = x.reshape(-1, shape[-1])
    dead = np.isneginf(rows).all(axis=-1)
    rows[dead, rng.integers(0, shape[-1], int(dead.sum()))] = 0.0
    return x.astype(dtype), rng


@st.composite
def ce_options(draw, K, rng, soft):
    opts = {}
    weight = draw(st.sampled_from([None, "uniform", "with zeros"]))
    if weight is not None:
        w = rng.uniform(0.1, 3.0, K)
        if weight == "with zeros":
            w[rng.random(K) < 0.3] = 0.0
        opts["weight"] = w
    if not soft and draw(st.booleans()):
        opts["ignore_index"] = draw(st.sampled_from([-1, 0, K - 1]))
    if draw(st.booleans()):
        opts["label_smoothing"] = draw(st.sampled_from([0.0, 0.05, 0.5, 1.0]))
    if draw(st.booleans()):
        opts["z_loss"] = draw(st.sampled_from([1e-4, 1e-2, 0.5]))
    if draw(st.booleans()):
        opts["softcap"] = draw(st.sampled_from([1.0, 5.0, 30.0]))
    opts["reduction"] = draw(st.sampled_from(["none", "mean", "sum"]))
    return opts


@st.composite
def ce_problems(draw):
    """(logits, target, options, grad_output): class indices or probabilities."""
    x, rng = draw(logits())
    K, batch = x.shape[-1], x.shape[:-1]
    soft = draw(st.booleans())
    opts = draw(ce_options(K, rng, soft))
    if soft:
        q = rng.random(x.shape) * (rng.random(x.shape) < 0.7)  # some probabilities exactly 0
        target = (q / np.maximum(q.sum(-1, keepdims=True), 1e-12)).astype(x.dtype)
    else:
        target = rng.integers(0, K, batch)
        ignored = rng.random(batch) < 0.2
        target[ignored] = opts.get("ignore_index", -100)
        # any integer dtype that holds every value (-100 and other negative ignore_index included)
        fits = [t for t in (np.int64, np.int32, np.int16, np.uint8)
                if np.can_cast(np.min_scalar_type(target.min(initial=0)), t)
                and np.can_cast(np.min_scalar_type(target.max(initial=0)), t)]
        target = target.astype(draw(st.sampled_from(fits)))
    if opts["reduction"] == "none" and draw(st.booleans()):
        grad_output = rng.standard_normal(batch)
    else:
        grad_output = draw(st.sampled_from([1.0, -0.5, 0.0, 3.0]))
    return x, target, opts, grad_output


def row_factor(grad_output, opts):
    """assert_grad_close's floor for rows whose gradient cancels to about 0 (probability
    targets with K = 1, or equal to the softmax): the two terms c p_j and w_j q~_j, each up to
    w |grad_output|, round apart by up to 2 eps32 of that in float32. The floor is
    GRAD_RTOL * 0.05 * row_factor = 1e-7 row_factor, so row_factor = 5 w |grad_output|."""
    return 5.0 * np.abs(grad_output) * float(np.max(opts.get("weight", 1.0), initial=1.0))


def name_of(dtype):
    return np.dtype(dtype).name


def assert_same_nonfinite(got, want, what):
    """NaN where the reference has NaN, and the same infinities."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaNs differ")
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want), err_msg=f"{what}: +inf differs")
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want), err_msg=f"{what}: -inf differs")


def assert_storage_close(got, want, dtype, what):
    """Arrays stored in the input's dtype (softmax, BCE element losses): the reference rounded
    to that dtype has the same NaNs and infinities (a float16 loss of 1e5 is inf), and the
    finite ones are within the gradient rule, the dtype's tolerance of the largest magnitude,
    or the dtype's smallest normal number (a float16 loss of 1e-11 is stored as 0)."""
    want = np.asarray(want, np.float64)
    assert_same_nonfinite(got, want.astype(dtype), what)
    finite = np.isfinite(want.astype(dtype))
    if not finite.any():
        return
    err = np.max(np.abs(np.asarray(got, np.float64)[finite] - want[finite]))
    bound = GRAD_RTOL[name_of(dtype)] * np.max(np.abs(want[finite])) + float(finfo(dtype).smallest_normal)
    assert err <= bound, f"{what} ({name_of(dtype)}): max error {err:.3e} > {bound:.3e}"


def snapshot(*arrays):
    return [(a, a.tobytes()) for a in arrays if isinstance(a, np.ndarray)]


def assert_unchanged(snap):
    for a, data in snap:
        assert a.tobytes() == data, "an input was modified"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@PROPERTY_SETTINGS
@given(problem=ce_problems())
def test_loss_and_gradient_match_the_reference(isa, problem):
    x, target, opts, grad_output = problem
    dtype = name_of(x.dtype)
    before = snapshot(x, target, grad_output, opts.get("weight"))
    loss, grad = fusedce.cross_entropy_with_grad(x, target, grad_output=grad_output, **opts)
    rloss, rgrad = ref.cross_entropy_with_grad(x, target, grad_output=grad_output, **opts)
    assert_unchanged(before)
    assert grad.dtype == x.dtype and grad.shape == x.shape
    assert_loss_close(loss, rloss, dtype)
    assert_grad_close(grad, rgrad, dtype, row_factor=row_factor(grad_output, opts))
    # the same gradient written over the logits, and into a given buffer
    inplace = x.copy()
    _, grad_inplace = fusedce.cross_entropy_with_grad(inplace, target, grad_output=grad_output, inplace=True, **opts)
    assert grad_inplace is inplace
    np.testing.assert_array_equal(inplace, grad)
    out = np.full_like(x, np.nan)
    fusedce.cross_entropy_with_grad(x, target, grad_output=grad_output, out=out, **opts)
    np.testing.assert_array_equal(out, grad)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@PROPERTY_SETTINGS
@given(problem=ce_problems())
def test_forward_and_backward_match_the_reference(isa, problem):
    x, target, opts, grad_output = problem
    dtype = name_of(x.dtype)
    loss, lse = fusedce.cross_entropy_forward(x, target, **opts)
    rloss, rlse = ref.cross_entropy_forward(x, target, **opts)
    assert_loss_close(loss, rloss, dtype)
    assert_loss_close(lse, rlse, dtype, "lse")
    # the loss alone is the forward's loss, bit for bit
    np.testing.assert_array_equal(fusedce.cross_entropy(x, target, **opts), loss)
    # The backward given the reference's float64 lse: the float32 lse the forward returns for
    # float32/half logits carries eps32 |lse| into every p_j, an error of the input, not of
    # the kernel (the chain forward -> backward is tests/test_cross_entropy.py's). Softcapped
    # float32 logits against a float64 lse differ the same way by eps32 * softcap: that case
    # is left to the fused-gradient property above.
    if opts.get("softcap") and dtype != "float64":
        return
    grad = fusedce.cross_entropy_backward(x, target, rlse, grad_output, **opts)
    rgrad = ref.cross_entropy_backward(x, target, rlse, grad_output, **opts)
    assert_grad_close(grad, rgrad, dtype, row_factor=row_factor(grad_output, opts))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@PROPERTY_SETTINGS
@given(problem=logits(), name=st.sampled_from(["softmax", "log_softmax", "logsumexp"]))
def test_softmax_family_matches_the_reference(isa, problem, name):
    x, _ = problem
    before = snapshot(x)
    got = getattr(fusedce, name)(x)
    want = getattr(ref, name)(x)
    assert_unchanged(before)
    assert got.shape == want.shape
    if name == "logsumexp":
        assert_loss_close(got, want, name_of(x.dtype), name)
    else:
        assert got.dtype == x.dtype
        assert_storage_close(got, want, name_of(x.dtype), name)


@st.composite
def bce_problems(draw):
    x, rng = draw(logits())
    x = np.where(np.isneginf(x), -30.0, x).astype(x.dtype)  # -inf is an inf loss or NaN here
    C = x.shape[-1]
    target = rng.uniform(0, 1, x.shape)
    target[rng.random(x.shape) < 0.3] = draw(st.sampled_from([0.0, 1.0]))
    opts = {"reduction": draw(st.sampled_from(["none", "mean", "sum"]))}
    weight = draw(st.sampled_from([None, "per class", "per element", "scalar"]))
    if weight == "per class":
        opts["weight"] = rng.uniform(0, 2, C)
    elif weight == "per element":
        opts["weight"] = rng.uniform(0, 2, x.shape)
    elif weight == "scalar":
        opts["weight"] = 0.5
    if draw(st.booleans()):
        opts["pos_weight"] = rng.uniform(0.2, 5, C)
    if opts["reduction"] == "none" and draw(st.booleans()):
        grad_output = rng.standard_normal(x.shape)
    else:
        grad_output = draw(st.sampled_from([1.0, -2.0]))
    return x, target.astype(x.dtype), opts, grad_output


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@PROPERTY_SETTINGS
@given(problem=bce_problems())
def test_binary_cross_entropy_matches_the_reference(isa, problem):
    x, target, opts, grad_output = problem
    dtype = name_of(x.dtype)
    before = snapshot(x, target, grad_output, opts.get("weight"), opts.get("pos_weight"))
    loss, grad = fusedce.binary_cross_entropy_with_logits_with_grad(x, target, grad_output=grad_output, **opts)
    rloss, rgrad = ref.binary_cross_entropy_with_logits_with_grad(x, target, grad_output=grad_output, **opts)
    assert_unchanged(before)
    if opts["reduction"] == "none":  # element losses are stored in the logits' dtype
        assert loss.dtype == x.dtype
        assert_storage_close(loss, rloss, dtype, "element loss")
    else:
        assert_loss_close(loss, rloss, dtype)
        assert loss == fusedce.binary_cross_entropy_with_logits(x, target, **opts)
    # the terms that cancel: up to w max(1, pos_weight) |grad_output| (see row_factor)
    largest = float(np.max(opts.get("weight", 1.0), initial=1.0) * np.max(opts.get("pos_weight", 1.0), initial=1.0))
    assert_grad_close(grad, rgrad, dtype, row_factor=5.0 * largest * np.abs(grad_output))
