"""Cross-entropy on the GPU backend against the float64 reference: every option, alone and
combined, every layout path (row cached in shared memory, two passes, several blocks per row)."""

import numpy as np
import pytest

from fusedce import _cuda
from fusedce import reference as ref

DTYPES = ["float32", "float64", "float16"]

PATHS = ["cached", "two_pass", "split"]  # conftest.LAYOUT_PATHS

OPTIONS = {
    "default": dict(),
    "sum": dict(reduction="sum"),
    "none": dict(reduction="none"),
    "weight": dict(weight="w"),
    "ignore": dict(ignore="mixed"),
    "ignore_7": dict(ignore="mixed", ignore_index=7),
    "smoothing": dict(label_smoothing=0.1),
    "smoothing_1": dict(label_smoothing=1.0, reduction="sum"),
    "z_loss": dict(z_loss=1e-2),
    "softcap": dict(softcap=2.5),
    "weight_smoothing_ignore": dict(weight="w", label_smoothing=0.2, ignore="mixed"),
    "all_none": dict(weight="w", label_smoothing=0.1, z_loss=1e-3, softcap=4.0, ignore="mixed",
                     reduction="none", grad_output="rows"),
    "all_mean": dict(weight="w", label_smoothing=0.05, z_loss=1e-3, softcap=4.0, ignore="mixed",
                     grad_output=0.5),
    "soft": dict(soft=True),
    "soft_all_none": dict(soft=True, weight="w", label_smoothing=0.1, z_loss=1e-3, softcap=4.0,
                          reduction="none", grad_output="rows"),
    "soft_all_mean": dict(soft=True, weight="w", label_smoothing=0.2, z_loss=1e-2, grad_output=0.5),
}


def probabilities(rng, shape, dtype):
    """Rows of probabilities with some exact zeros."""
    q = rng.uniform(0.0, 1.0, shape) * (rng.uniform(size=shape) > 0.3)
    q[..., 0] += 1e-3  # no all-zero row
    return (q / q.sum(axis=-1, keepdims=True)).astype(dtype)


def make_case(h, rng, shape, dtype, spec):
    """Host arrays and keyword arguments for one option set."""
    spec = dict(spec)
    batch, classes = shape[:-1], shape[-1]
    ignore_index = spec.get("ignore_index", -100)
    x = h.logits(rng, shape, dtype)
    if spec.pop("soft", False):
        t = probabilities(rng, shape, dtype)
        spec.pop("ignore", None)
    else:
        t = h.targets(rng, batch, classes, ignore_every=2 if spec.pop("ignore", None) else 0,
                      ignore_index=ignore_index)
    if spec.get("weight") == "w":
        spec["weight"] = rng.uniform(0.2, 2.0, classes)
    grad_output = spec.pop("grad_output", 1.0)
    if grad_output == "rows":
        grad_output = rng.uniform(-2.0, 2.0, batch)
    return x, t, spec, grad_output


def check_all(h, x, t, opts, grad_output=1.0, dev_grad_output=False):
    """cross_entropy, _with_grad, _forward and _backward(lse) against the reference."""
    dtype = x.dtype
    dx, dt = h.dev(x), h.dev(t)
    x_before = x.copy()
    g_out = h.dev(grad_output) if dev_grad_output else grad_output

    ref_loss, ref_grad = ref.cross_entropy_with_grad(x, t, grad_output=grad_output, **opts)
    h.assert_loss(_cuda.cross_entropy(dx, dt, **opts), ref_loss, dtype)

    loss, grad = _cuda.cross_entropy_with_grad(dx, dt, grad_output=g_out, **opts)
    h.assert_loss(loss, ref_loss, dtype)
    h.assert_array(grad, ref_grad, dtype)

    loss, lse = _cuda.cross_entropy_forward(dx, dt, **opts)
    ref_fwd_loss, ref_lse = ref.cross_entropy_forward(x, t, **opts)
    h.assert_loss(loss, ref_fwd_loss, dtype)
    per_row = np.float64 if dtype == np.float64 else np.float32  # as the CPU backend
    assert h.host(lse).dtype == per_row
    assert opts.get("reduction") != "none" or h.host(loss).dtype == per_row
    h.assert_loss(lse, ref_lse, dtype)
    grad = _cuda.cross_entropy_backward(dx, dt, lse, g_out, **opts)
    h.assert_array(grad, ref_grad, dtype)

    np.testing.assert_array_equal(h.host(dx), x_before)  # inputs never modified


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0, 3), (1, 1), (5, 1), (5, 2), (1, 3), (5, 17), (5, 300), (2, 3, 17)])
def test_shapes(h, rng, dtype, shape):
    x, t, opts, _ = make_case(h, rng, shape, dtype, {})
    check_all(h, x, t, opts)


@pytest.mark.parametrize("name", list(OPTIONS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_options(h, rng, dtype, name):
    x, t, opts, grad_output = make_case(h, rng, (5, 17), dtype, OPTIONS[name])
    check_all(h, x, t, opts, grad_output)


@pytest.mark.parametrize("name", ["weight_smoothing_ignore", "all_none", "all_mean", "soft_all_none"])
def test_options_float16(h, rng, name):
    x, t, opts, grad_output = make_case(h, rng, (5, 17), "float16", OPTIONS[name])
    check_all(h, x, t, opts, grad_output)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("rows", [1, 5])
def test_layout_paths(h, rng, path, dtype, rows):
    h.use_path(path)
    _, kernels = _cuda._numba()
    n_chunks, _, _, cached = _cuda._plan(rows, 300, np.dtype(dtype).itemsize, kernels.OUT_GRAD)
    assert (n_chunks > 1) == (path == "split") and cached == (path == "cached")
    x, t, opts, grad_output = make_case(h, rng, (rows, 300), dtype, OPTIONS["all_none"])
    check_all(h, x, t, opts, grad_output, dev_grad_output=True)


@pytest.mark.parametrize("path", PATHS)
def test_probability_targets_layout_paths(h, rng, path):
    h.use_path(path)
    x, q, opts, grad_output = make_case(h, rng, (3, 300), "float32", OPTIONS["soft_all_none"])
    check_all(h, x, q, opts, grad_output)


def test_probability_targets_dtypes(h, rng):
    """Probabilities are taken in the logits' dtype (the reference rounds them to it), on the
    device through a cast kernel, on the host through _checks."""
    x = h.logits(rng, (2, 3, 17), "float16")
    q = probabilities(rng, (2, 3, 17), np.float64)
    opts = dict(label_smoothing=0.1, reduction="sum")
    for target in (h.dev(q), q, h.dev(q.astype(np.float32))):
        ref_loss, ref_grad = ref.cross_entropy_with_grad(x, h.host(target), **opts)
        loss, grad = _cuda.cross_entropy_with_grad(h.dev(x), target, **opts)
        h.assert_loss(loss, ref_loss, x.dtype)
        h.assert_array(grad, ref_grad, x.dtype)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_probability_targets_zero_against_minus_inf(h):
    x = np.array([[0.0, -np.inf, 1.0, 2.0], [-np.inf, -np.inf, 0.0, 0.0]])
    q = np.array([[0.5, 0.0, 0.5, 0.0], [0.0, 0.0, 0.25, 0.75]])
    ref_loss, ref_grad = ref.cross_entropy_with_grad(x, q, reduction="none")
    loss, grad = _cuda.cross_entropy_with_grad(h.dev(x), h.dev(q), reduction="none")
    assert np.isfinite(ref_loss).all()
    h.assert_loss(loss, ref_loss, x.dtype)
    h.assert_array(grad, ref_grad, x.dtype)


@pytest.mark.parametrize("path", PATHS)
def test_inplace_and_out(h, rng, path):
    h.use_path(path)
    x, t, opts, _ = make_case(h, rng, (5, 300), "float32", OPTIONS["all_mean"])
    ref_loss, ref_grad = ref.cross_entropy_with_grad(x, t, grad_output=0.5, **opts)
    dt = h.dev(t)

    dx = h.dev(x)
    loss, grad = _cuda.cross_entropy_with_grad(dx, dt, grad_output=0.5, inplace=True, **opts)
    assert grad is dx
    h.assert_loss(loss, ref_loss, x.dtype)
    h.assert_array(dx, ref_grad, x.dtype)

    dx, out = h.dev(x), h.cuda.device_array(x.shape, x.dtype)
    loss, grad = _cuda.cross_entropy_with_grad(dx, dt, grad_output=0.5, out=out, **opts)
    assert grad is out
    h.assert_array(out, ref_grad, x.dtype)
    np.testing.assert_array_equal(h.host(dx), x)

    _, lse = _cuda.cross_entropy_forward(dx, dt, **opts)
    grad = _cuda.cross_entropy_backward(dx, dt, lse, 0.5, inplace=True, **opts)
    assert grad is dx
    h.assert_array(dx, ref_grad, x.dtype)


def test_host_arguments(h, rng):
    """Host target, weight, grad_output and lse with device logits."""
    x, t, opts, grad_output = make_case(h, rng, (2, 3, 17), "float32", OPTIONS["all_none"])
    ref_loss, ref_grad = ref.cross_entropy_with_grad(x, t, grad_output=grad_output, **opts)
    loss, grad = _cuda.cross_entropy_with_grad(h.dev(x), t.tolist(), grad_output=grad_output, **opts)
    h.assert_loss(loss, ref_loss, x.dtype)
    h.assert_array(grad, ref_grad, x.dtype)
    _, ref_lse = ref.cross_entropy_forward(x, t, **opts)
    grad = _cuda.cross_entropy_backward(h.dev(x), t.astype(np.int16), ref_lse, grad_output, **opts)
    h.assert_array(grad, ref_grad, x.dtype)


def test_device_weight_and_int32_target(h, rng):
    x, t, opts, _ = make_case(h, rng, (5, 17), "float64", OPTIONS["weight_smoothing_ignore"])
    ref_loss, ref_grad = ref.cross_entropy_with_grad(x, t, **opts)
    opts["weight"] = h.dev(opts["weight"])
    loss, grad = _cuda.cross_entropy_with_grad(h.dev(x), h.dev(t.astype(np.int32)), **opts)
    h.assert_loss(loss, ref_loss, x.dtype)
    h.assert_array(grad, ref_grad, x.dtype)


def test_strided_2d_logits(h, rng):
    x = h.logits(rng, (5, 40), "float32")
    t = h.targets(rng, (5,), 20)
    strided = h.dev(x)[:, ::2]  # a 2-D view the kernels read by stride
    loss, grad = _cuda.cross_entropy_with_grad(strided, h.dev(t), reduction="sum")
    ref_loss, ref_grad = ref.cross_entropy_with_grad(x[:, ::2], t, reduction="sum")
    h.assert_loss(loss, ref_loss, x.dtype)
    h.assert_array(grad, ref_grad, x.dtype)


def test_mean_over_no_counted_rows_is_zero(h, rng):
    x = h.logits(rng, (3, 17), "float32")
    t = np.full(3, -100)
    loss, grad = _cuda.cross_entropy_with_grad(h.dev(x), h.dev(t))
    assert loss == 0.0
    assert not h.host(grad).any()
    w = np.zeros(17)
    t = np.array([1, 2, -100])
    loss, grad = _cuda.cross_entropy_with_grad(h.dev(x), h.dev(t), weight=w)
    assert loss == 0.0
    assert not h.host(grad).any()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("path", ["cached", "split"])
def test_special_values(h, path):
    """-inf logits have probability 0; NaN poisons its row only; ignored rows stay 0."""
    h.use_path(path)
    x = np.linspace(-3.0, 3.0, 5 * 100).reshape(5, 100)
    x[0, ::3] = -np.inf  # row 0: some -inf
    x[1, 7] = np.nan  # row 1: NaN, counted
    x[2, 5] = np.nan  # row 2: NaN, ignored
    x[3, :] = 1e30  # row 3: huge but finite, no overflow
    t = np.array([1, 3, -100, 4, 99])
    for opts in (dict(reduction="none"), dict(reduction="none", label_smoothing=0.1, softcap=5.0)):
        ref_loss, ref_grad = ref.cross_entropy_with_grad(x, t, **opts)
        loss, grad = _cuda.cross_entropy_with_grad(h.dev(x), h.dev(t), **opts)
        h.assert_loss(loss, ref_loss, x.dtype)
        h.assert_array(grad, ref_grad, x.dtype)
    assert np.isnan(ref_loss[1]) and ref_loss[2] == 0.0
