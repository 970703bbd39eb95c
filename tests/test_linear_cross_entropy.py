"""fusedce.linear_cross_entropy(_with_grad) against the float64 reference: logits = input @ W.T
+ b in float64, then fusedce.reference's cross-entropy and its gradient, chained to input, W
and b by hand (grad_input = dlogits @ W, grad_W = dlogits.T @ input, grad_b = sum of dlogits)."""

import numpy as np
import pytest

import fusedce
from fusedce import _linear
from fusedce import reference as ref
from tolerances import assert_grad_close, assert_loss_close

REDUCTIONS = ("none", "mean", "sum")


def make(dtype="float32", batch=(37,), hidden=16, vocab=101, ignored=True, soft=False, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(batch + (hidden,)).astype(dtype)
    w = (rng.standard_normal((vocab, hidden)) * 0.5).astype(dtype)
    b = rng.standard_normal(vocab).astype(dtype)
    if soft:
        t = rng.dirichlet(np.ones(vocab), batch).astype(dtype)
    else:
        t = rng.integers(0, vocab, batch)
        if ignored:
            t.reshape(-1)[::5] = -100
    return x, w, b, t, rng


def reference(x, w, b, t, grad_output, **opts):
    """(loss, grad_input, grad_W, grad_b) in float64."""
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    logits = x64 @ w64.T + (0.0 if b is None else b.astype(np.float64))
    loss, dlogits = ref.cross_entropy_with_grad(logits, t, grad_output=grad_output, **opts)
    d2 = dlogits.reshape(-1, w.shape[0])
    return (loss, (d2 @ w64).reshape(x.shape), d2.T @ x64.reshape(-1, x.shape[-1]),
            None if b is None else d2.sum(axis=0))


def check(got, want, dtype, grad_output):
    loss, *grads = got
    ref_loss, *ref_grads = want
    assert_loss_close(loss, ref_loss, dtype)
    # every gradient element is a sum over up to V (or N) terms of a cancelling softmax gradient:
    # the per-row factor floor of tests/tolerances.py, times the largest |factor|
    factor = 5.0 * np.max(np.abs(grad_output))
    for name, g, r in zip(("grad_input", "grad_W", "grad_b"), grads, ref_grads):
        if r is None:
            assert g is None, f"{name} given without a bias"
        else:
            assert g.dtype == np.dtype(dtype) and g.shape == r.shape
            assert_grad_close(g, r, dtype, what=name, row_factor=factor * np.max(np.abs(r)))


OPTIONS = {
    "plain": {},
    "weight": {"weight": "per-class"},
    "smoothing": {"label_smoothing": 0.1},
    "z_loss+softcap": {"z_loss": 1e-3, "softcap": 4.0},
    "all": {"weight": "per-class", "label_smoothing": 0.2, "z_loss": 1e-2, "softcap": 6.0},
}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("soft", [False, True], ids=["classes", "probabilities"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matches_reference(dtype, soft, bias, option, reduction):
    x, w, b, t, rng = make(dtype, soft=soft)
    opts = dict(OPTIONS[option])
    if opts.get("weight") == "per-class":
        opts["weight"] = rng.uniform(0.25, 2.0, w.shape[0])
    b = b if bias else None
    go = rng.standard_normal(x.shape[:-1]) if reduction == "none" else 0.75
    got = fusedce.linear_cross_entropy_with_grad(x, w, t, linear_bias=b, reduction=reduction, grad_output=go,
                                                 chunk_size=8, **opts)
    want = reference(x, w, b, t, go, reduction=reduction, **opts)
    check(got, want, dtype, go)
    assert_loss_close(fusedce.linear_cross_entropy(x, w, t, linear_bias=b, reduction=reduction, chunk_size=8, **opts),
                      want[0], dtype)


@pytest.mark.parametrize("chunk_size", [1, 7, 36, 37, 38, 1000, None])
@pytest.mark.parametrize("ignored", [False, True], ids=["all-counted", "some-ignored"])
def test_chunk_boundaries(chunk_size, ignored):
    """Chunks of one row, N not a multiple of the chunk, one chunk, a chunk larger than N,
    and the default budget; ignored rows are dropped before the GEMMs in every case."""
    x, w, b, t, _ = make(ignored=ignored)
    got = fusedce.linear_cross_entropy_with_grad(x, w, t, linear_bias=b, chunk_size=chunk_size)
    check(got, reference(x, w, b, t, 1.0), "float32", 1.0)


def test_batch_shape_and_target_layouts():
    x, w, b, t, rng = make(batch=(3, 4, 5), vocab=29)
    go = rng.standard_normal((3, 4, 5))
    got = fusedce.linear_cross_entropy_with_grad(x, w, t, linear_bias=b, reduction="none", grad_output=go,
                                                 chunk_size=6)
    assert got[0].shape == (3, 4, 5) and got[1].shape == x.shape
    check(got, reference(x, w, b, t, go, reduction="none"), "float32", go)
    x1, t1 = x[0, 0, 0], t[0, 0, 0]  # a single row: input (H,), target ()
    check(fusedce.linear_cross_entropy_with_grad(x1, w, t1, linear_bias=b),
          reference(x1, w, b, t1, 1.0), "float32", 1.0)


def test_all_rows_ignored():
    x, w, b, t, _ = make()
    t[:] = -100
    for reduction in REDUCTIONS:
        loss, gx, gw, gb = fusedce.linear_cross_entropy_with_grad(x, w, t, linear_bias=b, reduction=reduction)
        assert not np.any(loss) and not gx.any() and not gw.any() and not gb.any()


def test_empty_batch():
    x, w, b, _, _ = make(batch=(0,))
    loss, gx, gw, gb = fusedce.linear_cross_entropy_with_grad(x, w, np.zeros(0, np.int64), linear_bias=b)
    assert loss == 0.0 and gx.shape == (0, 16) and not gw.any() and not gb.any()


def test_without_scipy_the_same(monkeypatch):
    """NumPy alone accumulates grad_W through a temporary instead of BLAS's beta = 1."""
    x, w, b, t, _ = make()
    with_scipy = fusedce.linear_cross_entropy_with_grad(x, w, t, linear_bias=b, chunk_size=8)
    monkeypatch.setattr(_linear, "_accumulating_gemm", lambda dtype: None)
    without = fusedce.linear_cross_entropy_with_grad(x, w, t, linear_bias=b, chunk_size=8)
    check(without, reference(x, w, b, t, 1.0), "float32", 1.0)
    for a, c in zip(with_scipy[1:], without[1:]):
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-7)


def test_inputs_are_never_changed():
    x, w, b, t, rng = make(soft=True)
    before = [a.copy() for a in (x, w, b, t)]
    weight = rng.uniform(0.5, 2, w.shape[0])
    fusedce.linear_cross_entropy_with_grad(x, w, t, linear_bias=b, weight=weight, chunk_size=5)
    for a, c in zip((x, w, b, t), before):
        np.testing.assert_array_equal(a, c)


def peaked_case(hidden, sharpness, seed=5):
    """Rows whose targets lie in the first block of classes, the logits peaked on them (a
    trained-like distribution: the other blocks' softmax is small)."""
    rng = np.random.default_rng(seed)
    vocab, rows = 4 * _linear.FILTER_BLOCK, 64
    w = rng.standard_normal((vocab, hidden)).astype(np.float32)
    t = rng.integers(0, 256, rows)
    x = (w[t] * sharpness + 0.1 * rng.standard_normal((rows, hidden))).astype(np.float32)
    return x, w, t


def test_grad_filter_skips_blocks(monkeypatch):
    """On a peaked distribution the backward GEMMs run over the first block only."""
    x, w, t = peaked_case(hidden=128, sharpness=0.25)
    columns = []
    accumulate = _linear.NumpyOps._accumulate
    monkeypatch.setattr(_linear.NumpyOps, "_accumulate",
                        lambda self, gw, d, xc: (columns.append(d.shape[1]), accumulate(self, gw, d, xc)))
    exact = fusedce.linear_cross_entropy_with_grad(x, w, t)
    assert sum(columns) == w.shape[0]
    columns.clear()
    filtered = fusedce.linear_cross_entropy_with_grad(x, w, t, grad_filter=2e-6)
    assert sum(columns) == _linear.FILTER_BLOCK
    assert filtered[0] == exact[0]  # (its error bound: test_grad_filter_error_bound)


def test_grad_filter_error_bound():
    """Every dropped gradient element is below the threshold times the upstream factor, which
    bounds each gradient element's error by threshold * factor * sum |W_j| (grad_input) or
    |x| summed over rows (grad_W); a tiny threshold drops nothing."""
    x, w, t = peaked_case(hidden=64, sharpness=0.5)  # blocks 1 and 2 stay below 1e-3
    exact = fusedce.linear_cross_entropy_with_grad(x, w, t, reduction="sum", grad_output=2.0)
    threshold = 1e-3
    filtered = fusedce.linear_cross_entropy_with_grad(x, w, t, reduction="sum", grad_output=2.0,
                                                      grad_filter=threshold)
    assert filtered[0] == exact[0]
    assert np.abs(filtered[2] - exact[2]).max() > 0  # something was dropped
    slack = 1e-6 * np.abs(exact[1]).max()
    assert np.all(np.abs(filtered[1] - exact[1]) <= 2.0 * threshold * np.abs(w).sum(axis=0)[None, :] + slack)
    slack = 1e-6 * np.abs(exact[2]).max()
    assert np.all(np.abs(filtered[2] - exact[2]) <= 2.0 * threshold * np.abs(x).sum(axis=0)[None, :] + slack)
    tiny = fusedce.linear_cross_entropy_with_grad(x, w, t, reduction="sum", grad_output=2.0, grad_filter=1e-30)
    for a, c in zip(tiny[1:3], exact[1:3]):
        np.testing.assert_array_equal(a, c)


# --------------------------------------------------------------------------- bad input


def bad_cases():
    x, w, b, t, _ = make()
    return [
        (dict(linear_weight=w[:, :15]), ValueError, r"input's last dimension must be linear_weight's H = 15"),
        (dict(linear_weight=w[0]), ValueError, r"linear_weight must have shape \(V, H\)"),
        (dict(linear_bias=b[:100]), ValueError, r"linear_bias must have shape \(101,\)"),
        (dict(linear_bias=b.astype(np.float64)), TypeError, "linear_bias must have the input's dtype float32"),
        (dict(linear_weight=w.astype(np.float64)), TypeError, "input and linear_weight must have the same dtype"),
        (dict(input=x.astype(np.float16), linear_weight=w.astype(np.float16)), TypeError,
         "input must be a float32 or float64 array"),
        (dict(weight=np.ones(16)), ValueError, r"weight must have shape \(101,\) \(one per class of linear_weight"),
        (dict(target=np.where(t == 3, 101, t)), ValueError, r"target\[\d+\] = 101 is out of range"),
        (dict(target=t[:5]), ValueError, r"target must have shape \(37,\)"),
        (dict(target=np.ones((37, 100), np.float32)), ValueError, r"target of probabilities must have shape \(37, 101\)"),
        (dict(chunk_size=0), ValueError, "chunk_size must be a positive integer"),
        (dict(chunk_size=2.5), TypeError, "chunk_size must be a positive integer"),
        (dict(reduction="avg"), ValueError, "reduction must be one of"),
        (dict(grad_filter=-1.0), ValueError, "grad_filter must be None or a finite number >= 0"),
    ]


@pytest.mark.parametrize("change,exc,pattern", bad_cases())
def test_bad_input(change, exc, pattern):
    x, w, b, t, _ = make()
    args = dict(input=x, linear_weight=w, target=t, linear_bias=b)
    args.update(change)
    grad_filter = args.pop("grad_filter", None)
    with pytest.raises(exc, match=pattern):
        fusedce.linear_cross_entropy_with_grad(**args, grad_filter=grad_filter)
    if grad_filter is None:
        with pytest.raises(exc, match=pattern):
            fusedce.linear_cross_entropy(**args)
