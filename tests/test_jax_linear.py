"""fusedce.jax.linear_cross_entropy against the float64 reference (logits = input @ W.T + b in
float64, fusedce.reference's cross-entropy and its gradient chained to input, W and b by hand:
tests/test_linear_cross_entropy.py's helpers), under jit, grad, vmap and scan, x64 on and off,
every dtype; the compiled program holds no (rows, V) array; bad input as the NumPy API."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import fusedce  # noqa: E402
import fusedce.jax as fj  # noqa: E402
from fusedce.jax import _linear  # noqa: E402

from test_jax import x64  # noqa: E402,F401  (the fixture: x64 off and on)
from test_linear_cross_entropy import OPTIONS, REDUCTIONS, bad_cases, check, make, reference  # noqa: E402
from tolerances import assert_grad_close, assert_loss_close  # noqa: E402

ml_dtypes = pytest.importorskip("ml_dtypes")


@pytest.fixture
def with_x64():
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)


@pytest.fixture(params=["keep", "recompute"])
def path(request, monkeypatch):
    """Runs a float32/float64 test with each backward: the kept gradients of the fused forward
    (the default for 'mean'/'sum') and the recomputing backward (half precision, 'none')."""
    monkeypatch.setitem(_linear.KEEP, "float32", request.param == "keep")
    monkeypatch.setitem(_linear.KEEP, "float64", request.param == "keep")
    return request.param


def _options(name, rng, vocab):
    opts = dict(OPTIONS[name])
    if opts.get("weight") == "per-class":
        opts["weight"] = rng.uniform(0.25, 2.0, vocab)
    return opts


def _upstream(reduction, rng, batch):
    """The upstream gradient: per row for 'none', else 0.75."""
    return rng.standard_normal(batch) if reduction == "none" else 0.75


def _value_and_grads(x, w, b, t, reduction, g=1.0, **kw):
    """The loss and the gradients of g . loss to (input, W[, b]) (None for an absent bias) by
    jax.vjp under jax.jit: one compiled program, the differentiated forward's loss."""
    def loss_of(*args):
        return fj.linear_cross_entropy(args[0], args[1], t, linear_bias=args[2] if len(args) > 2 else None,
                                       reduction=reduction, **kw)

    @jax.jit
    def run(*args):
        loss, pull = jax.vjp(loss_of, *args)
        return loss, pull(jnp.broadcast_to(jnp.asarray(g, loss.dtype), loss.shape))

    loss, grads = run(x, w) if b is None else run(x, w, b)
    return (loss, *grads) + ((None,) if b is None else ())


# --------------------------------------------------------------------------- against the reference


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("soft", [False, True], ids=["classes", "probabilities"])
def test_matches_reference_float32(soft, option, reduction):
    """Every option, reduction and target kind under jit, with a per-row upstream gradient for
    'none' and 0.75 for the others; chunks of 8 rows over 37 (a last chunk of 5)."""
    x, w, b, t, rng = make(soft=soft)
    opts = _options(option, rng, w.shape[0])
    g = _upstream(reduction, rng, x.shape[:-1])
    got = _value_and_grads(x, w, b, t, reduction, g, chunk_size=8, **opts)
    assert got[0].dtype == jnp.float32
    check(got, reference(x, w, b, t, g, reduction=reduction, **opts), "float32", g)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("soft", [False, True], ids=["classes", "probabilities"])
def test_both_backward_paths(soft, bias, reduction, path):
    """float32 'mean'/'sum' through the kept gradients and through the recomputing backward,
    every option at once, with and without a bias."""
    x, w, b, t, rng = make(soft=soft)
    b = b if bias else None
    opts = _options("all", rng, w.shape[0])
    g = _upstream(reduction, rng, x.shape[:-1])
    got = _value_and_grads(x, w, b, t, reduction, g, chunk_size=6, **opts)
    check(got, reference(x, w, b, t, g, reduction=reduction, **opts), "float32", g)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("soft", [False, True], ids=["classes", "probabilities"])
def test_float64_with_x64(soft, reduction, path, with_x64):
    x, w, b, t, rng = make("float64", soft=soft)
    opts = _options("all", rng, w.shape[0])
    g = _upstream(reduction, rng, x.shape[:-1])
    got = _value_and_grads(x, w, b, t, reduction, g, chunk_size=10, **opts)
    assert got[0].dtype == jnp.float64 and got[1].dtype == jnp.float64
    check(got, reference(x, w, b, t, g, reduction=reduction, **opts), "float64", g)


def test_loss_outside_jit_and_without_grad():
    """The undifferentiated loss (its own path: no gradient computed) eagerly and jitted."""
    x, w, b, t, rng = make()
    for reduction in REDUCTIONS:
        want = reference(x, w, b, t, 1.0, reduction=reduction, z_loss=1e-3)[0]
        def loss(a, c, d):
            return fj.linear_cross_entropy(a, c, t, linear_bias=d, reduction=reduction, z_loss=1e-3, chunk_size=7)

        assert_loss_close(jax.jit(loss)(x, w, b), want, "float32")
        if reduction == "mean":
            assert_loss_close(loss(x, w, b), want, "float32")


@pytest.mark.parametrize("chunk_size", [1, 7, 36, 37, 38, 1000, None])
@pytest.mark.parametrize("targets", ["all-counted", "some-ignored", "probabilities"])
def test_chunk_boundaries(chunk_size, targets):
    """Chunks of one row, N not a multiple of the chunk, one chunk, a chunk larger than N and
    the default budget. With ignored rows the counted ones are compacted and the last chunk
    overlaps the one before: the overlap must add nothing (to the sum, the 'mean' denominator,
    z_loss, the gradients); label smoothing and z_loss make any leak visible. 'mean' takes the
    kept gradients, 'none' the recomputing backward."""
    x, w, b, t, rng = make(ignored=targets == "some-ignored", soft=targets == "probabilities")
    opts = {"label_smoothing": 0.1, "z_loss": 1e-2}
    for reduction in ("mean", "none"):
        g = _upstream(reduction, rng, x.shape[:-1])
        got = _value_and_grads(x, w, b, t, reduction, g, chunk_size=chunk_size, **opts)
        check(got, reference(x, w, b, t, g, reduction=reduction, **opts), "float32", g)


def test_ignored_rows_anywhere():
    """Ignored rows in runs, at the ends and interleaved, a chunk straddling them; per-row
    losses come back in the caller's row order."""
    x, w, b, t, rng = make(batch=(50,), ignored=False)
    t[:7] = -100
    t[20:33] = -100
    t[45::2] = -100
    g = _upstream("none", rng, (50,))
    got = _value_and_grads(x, w, b, t, "none", g, chunk_size=8, z_loss=1e-2)
    check(got, reference(x, w, b, t, g, reduction="none", z_loss=1e-2), "float32", g)
    assert not np.any(np.asarray(got[0])[t == -100])


def test_all_rows_ignored_and_zero_weight(path):
    x, w, b, t, rng = make()
    t[:] = -100
    for reduction in REDUCTIONS:
        loss, gx, gw, gb = _value_and_grads(x, w, b, t, reduction, 1.0, chunk_size=8, z_loss=1e-2,
                                            label_smoothing=0.1)
        assert not np.any(np.asarray(loss)) and not np.any(gx) and not np.any(gw) and not np.any(gb)
    # a 'mean' over counted rows whose class weights are all zero is 0, as in the NumPy API
    x, w, b, t, _ = make()
    weight = np.zeros(w.shape[0])
    loss, gx, gw, gb = _value_and_grads(x, w, b, t, "mean", 1.0, chunk_size=8, weight=weight)
    assert float(loss) == fusedce.linear_cross_entropy(x, w, t, linear_bias=b, weight=weight) == 0.0
    assert not np.any(gx) and not np.any(gw)


def test_empty_batch():
    x, w, b, _, _ = make(batch=(0,))
    loss, gx, gw, gb = _value_and_grads(x, w, b, np.zeros(0, np.int32), "mean")
    assert float(loss) == 0.0 and gx.shape == (0, 16) and not np.any(gw) and not np.any(gb)
    loss = fj.linear_cross_entropy(x, w, np.zeros(0, np.int32), reduction="none")
    assert loss.shape == (0,)


def test_batch_shape_and_single_row():
    x, w, b, t, rng = make(batch=(3, 4, 5), vocab=29)
    g = _upstream("none", rng, (3, 4, 5))
    got = _value_and_grads(x, w, b, t, "none", g, chunk_size=6)
    assert got[0].shape == (3, 4, 5) and got[1].shape == x.shape
    check(got, reference(x, w, b, t, g, reduction="none"), "float32", g)
    x1, t1 = x[0, 0, 0], t[0, 0, 0]  # a single row: input (H,), target ()
    check(_value_and_grads(x1, w, b, t1, "mean"), reference(x1, w, b, t1, 1.0), "float32", 1.0)


def test_only_some_gradients_computed():
    """W under stop_gradient (or not an argnum) costs no grad_W GEMMs: the gradient program
    has fewer dots; and the gradient of x alone matches."""
    x, w, b, t, _ = make()

    def loss(a, c):
        return fj.linear_cross_entropy(a, c, t, chunk_size=8)

    both = str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(x, w))
    x_only = str(jax.make_jaxpr(jax.grad(loss))(x, w))
    assert x_only.count("dot_general") < both.count("dot_general")
    gx = jax.jit(jax.grad(loss))(x, w)
    assert_grad_close(gx, reference(x, w, None, t, 1.0)[1], "float32", row_factor=5.0 * np.abs(gx).max())


def test_large_ignore_index_with_int32_targets(x64):
    """An ignore_index that int32 targets cannot hold: no row is ignored, every row computed."""
    x, w, b, t, _ = make(ignored=False)
    t32 = t.astype(np.int32)
    got = _value_and_grads(x, w, b, t32, "mean", 1.0, chunk_size=8, ignore_index=2**40)
    check(got, reference(x, w, b, t, 1.0, ignore_index=2**40), "float32", 1.0)


# --------------------------------------------------------------------------- dtypes and x64


def test_x64_on_and_off(x64):
    """float32 in, float32 out either way; int64 targets with x64 on."""
    x, w, b, t, rng = make()
    opts = _options("all", rng, w.shape[0])
    got = _value_and_grads(x, w, b, t, "mean", 1.0, chunk_size=8, **opts)
    assert got[0].dtype == jnp.float32 and all(g.dtype == jnp.float32 for g in got[1:])
    check(got, reference(x, w, b, t, 1.0, **opts), "float32", 1.0)


# Half precision. The logits are rounded once to the half type (from a float32 GEMM), so the
# loss differs from the float64 reference's (exact logits) by about a half-ulp of the logits:
# stated here as the gradient tolerance of that type (1e-3 float16, 8e-3 bfloat16) times
# max(|loss|, 1). Gradients: the rule of tests/tolerances.py for that type.
HALF = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
HALF_LOSS_RTOL = {"float16": 1e-3, "bfloat16": 8e-3}


def _as_half(arrays, dtype):
    return [None if a is None else a.astype(HALF[dtype]) for a in arrays]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision(dtype, reduction, x64):
    x, w, b, t, rng = make()
    xh, wh, bh = _as_half((x, w, b), dtype)
    opts = _options("all", rng, w.shape[0])
    g = _upstream(reduction, rng, x.shape[:-1])
    loss, *grads = _value_and_grads(xh, wh, bh, t, reduction, g, chunk_size=8, **opts)
    want_loss, *want = reference(*(a.astype(np.float64) for a in (xh, wh, bh)), t, g, reduction=reduction, **opts)
    assert loss.dtype == jnp.float32
    err = np.abs(np.asarray(loss, np.float64) - want_loss)
    assert np.all(err <= HALF_LOSS_RTOL[dtype] * np.maximum(np.abs(want_loss), 1.0))
    factor = 5.0 * np.max(np.abs(g))
    for name, got, ref in zip(("grad_input", "grad_W", "grad_b"), grads, want):
        assert got.dtype == jnp.dtype(dtype)
        assert_grad_close(got, ref, dtype, what=name, row_factor=factor * np.max(np.abs(ref)))


def test_float16_loss_scale_reaches_the_kernel():
    """A loss scale is applied inside the kernel, before the float16 rounding of the chunk's
    gradient. With 'mean' over 256 rows and 4096 classes the unscaled dlogits (about 1e-6) are
    subnormal in float16: they lose their precision or flush to zero, and grad_W, a sum of
    them times x, carries that. Scaled by 4096 they are normal. So grad(loss * 4096) is right
    to float16 precision with no element flushed, and 4096 * grad(loss), rounded before the
    scale, is not (shown by the same function)."""
    rng = np.random.default_rng(2)
    rows, hidden, vocab = 256, 16, 4096
    x = rng.standard_normal((rows, hidden)).astype(np.float16)
    w = (rng.standard_normal((vocab, hidden)) * 0.05).astype(np.float16)
    t = rng.integers(0, vocab, rows)
    scale = 4096.0
    _, want_x, want_w, _ = reference(x.astype(np.float64), w.astype(np.float64), None, t, scale)
    loss = lambda a, c: fj.linear_cross_entropy(a, c, t, chunk_size=64)  # noqa: E731
    gx, gw = jax.jit(jax.grad(lambda a, c: loss(a, c) * scale, argnums=(0, 1)))(x, w)
    _, late_w = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)
    assert gx.dtype == gw.dtype == jnp.float16
    assert_grad_close(gx, want_x, "float16")

    def median_relative_error(got):
        return float(np.median(np.abs(np.asarray(got, np.float64) - want_w) / np.abs(want_w)))

    assert np.all(np.asarray(gw) != 0) and median_relative_error(gw) <= 2.0**-10
    late = np.asarray(late_w, np.float64) * scale
    assert np.any(late == 0) and median_relative_error(late) > 2.0**-8


def test_half_weight_gradient_summed_in_float32():
    """grad_W of float16 input over 256 one-row chunks, every row adding to the same classes:
    summed in float32 and rounded once it is within float16's rounding of the reference; the
    same chunk contributions summed in float16 (emulated on the reference) are not."""
    rng = np.random.default_rng(4)
    rows, hidden, vocab = 256, 8, 16
    x = (1.0 + 0.1 * rng.standard_normal((rows, hidden))).astype(np.float16)
    w = (0.1 * rng.standard_normal((vocab, hidden))).astype(np.float16)
    t = np.zeros(rows, np.int64)
    gw = jax.jit(jax.grad(lambda c: fj.linear_cross_entropy(x, c, t, reduction="sum", chunk_size=1)))(w)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    _, _, want, _ = reference(x64, w64, None, t, 1.0, reduction="sum")
    assert gw.dtype == jnp.float16
    err = np.abs(np.asarray(gw, np.float64) - want)
    assert np.all(err <= 2.0**-11 * np.abs(want) + 1e-3 * 2.0**-11 * np.abs(want).max())
    # the same contributions, each rounded to float16 and summed in float16
    logits = x64 @ w64.T
    p = np.exp(logits - logits.max(1, keepdims=True))
    d = (p / p.sum(1, keepdims=True) - np.eye(vocab)[t]).astype(np.float16)
    half_sum = np.zeros((vocab, hidden), np.float16)
    for r in range(rows):
        half_sum = (half_sum + (d[r, :, None].astype(np.float32) * x[r].astype(np.float32)).astype(np.float16))
    assert np.any(np.abs(half_sum.astype(np.float64) - want) > 2.0**-11 * np.abs(want) + 1e-3 * 2.0**-11 *
                  np.abs(want).max())


# --------------------------------------------------------------------------- transformations


@pytest.mark.parametrize("reduction,path", [("mean", "keep"), ("mean", "recompute"), ("sum", "keep"),
                                            ("none", "recompute")], indirect=["path"])
def test_vmap(reduction, path):
    """vmap over a batch of (input, target), W shared and W per instance, and of the gradient:
    each instance its own mean."""
    n, rows, hidden, vocab = 3, 11, 8, 23
    rng = np.random.default_rng(9)
    xs = rng.standard_normal((n, rows, hidden)).astype(np.float32)
    ws = (rng.standard_normal((n, vocab, hidden)) * 0.5).astype(np.float32)
    ts = rng.integers(0, vocab, (n, rows))
    ts[0, ::3] = -100
    ts[1, :] = -100
    g = 0.5

    def loss(a, c, b):
        return fj.linear_cross_entropy(a, c, b, reduction=reduction, chunk_size=4, z_loss=1e-2)

    def up(a, c, b):
        return jnp.sum(loss(a, c, b) * g)

    shared = jax.jit(jax.vmap(loss, in_axes=(0, None, 0)))(xs, ws[0], ts)
    own = jax.jit(jax.vmap(loss))(xs, ws, ts)
    grads = jax.jit(jax.vmap(jax.grad(up, argnums=(0, 1))))(xs, ws, ts)
    for i in range(n):
        go = np.full(rows, g) if reduction == "none" else g
        want_shared = reference(xs[i], ws[0], None, ts[i], go, reduction=reduction, z_loss=1e-2)
        want = reference(xs[i], ws[i], None, ts[i], go, reduction=reduction, z_loss=1e-2)
        assert_loss_close(shared[i], want_shared[0], "float32")
        check((own[i], grads[0][i], grads[1][i], None), want, "float32", go)


def test_scan_gradient_accumulation():
    """Inside lax.scan: the loss of microbatches summed, its gradient to W accumulated."""
    steps, rows, hidden, vocab = 4, 9, 8, 31
    rng = np.random.default_rng(10)
    xs = rng.standard_normal((steps, rows, hidden)).astype(np.float32)
    ts = rng.integers(0, vocab, (steps, rows))
    ts[:, ::4] = -100
    w = (rng.standard_normal((vocab, hidden)) * 0.5).astype(np.float32)

    def total(c):
        def step(carry, batch):
            a, b = batch
            return carry + fj.linear_cross_entropy(a, c, b, reduction="sum", chunk_size=4, label_smoothing=0.1), None

        return jax.lax.scan(step, jnp.float32(0), (xs, ts))[0]

    loss, gw = jax.jit(jax.value_and_grad(total))(w)
    want = reference(xs.reshape(-1, hidden), w, None, ts.reshape(-1), 1.0, reduction="sum", label_smoothing=0.1)
    assert_loss_close(loss, want[0], "float32")
    assert_grad_close(gw, want[2], "float32", row_factor=5.0 * np.abs(want[2]).max())


def test_traced_loss_scale_on_the_kept_gradients(path):
    """grad of loss * s with s a traced argument: the kept gradients are scaled by it."""
    x, w, b, t, _ = make()
    fn = jax.jit(jax.grad(lambda a, c, s: fj.linear_cross_entropy(a, c, t, chunk_size=8) * s, argnums=(0, 1)))
    gx, gw = fn(x, w, jnp.float32(3.0))
    want = reference(x, w, None, t, 3.0)
    check((want[0], gx, gw, None), want, "float32", 3.0)


# --------------------------------------------------------------------------- the compiled program


def test_no_logits_sized_array_in_the_program():
    """Rows 512 x V 1000 in chunks of 64: neither the jaxpr, the lowered StableHLO nor the
    compiled HLO of the loss and its gradients holds a (512, 1000) array (the chunk's (64,
    1000) is there); the CE is fusedce's custom call, no host callback; XLA's temporary
    memory is below one logits array (optax's unfused program needs more)."""
    optax = pytest.importorskip("optax")
    rows, hidden, vocab = 512, 32, 1000
    x = jax.ShapeDtypeStruct((rows, hidden), jnp.float32)
    w = jax.ShapeDtypeStruct((vocab, hidden), jnp.float32)
    t = jax.ShapeDtypeStruct((rows,), jnp.int32)
    fused = jax.value_and_grad(lambda a, c, b: fj.linear_cross_entropy(a, c, b, chunk_size=64), argnums=(0, 1))
    unfused = jax.value_and_grad(
        lambda a, c, b: optax.softmax_cross_entropy_with_integer_labels(a @ c.T, b).mean(), argnums=(0, 1))
    logits_bytes = rows * vocab * 4
    loss_only = lambda a, c, b: fj.linear_cross_entropy(a, c, b, chunk_size=64)  # noqa: E731
    per_row = jax.grad(lambda a, c, b: jnp.sum(fj.linear_cross_entropy(a, c, b, chunk_size=64, reduction="none")))
    for fn in (fused, loss_only, per_row):
        jaxpr = str(jax.make_jaxpr(fn)(x, w, t))
        lowered = jax.jit(fn).lower(x, w, t)
        compiled = lowered.compile()
        assert "512,1000" not in jaxpr.replace(" ", "") and "64,1000" in jaxpr.replace(" ", "")
        assert "512x1000" not in lowered.as_text() and "custom_call @fusedce_ce" in lowered.as_text()
        assert "callback" not in lowered.as_text().lower()
        assert "[512,1000]" not in compiled.as_text() and "[64,1000]" in compiled.as_text()
        assert compiled.memory_analysis().temp_size_in_bytes < logits_bytes
    baseline = jax.jit(unfused).lower(x, w, t).compile()
    assert "[512,1000]" in baseline.as_text() and baseline.memory_analysis().temp_size_in_bytes > logits_bytes


# --------------------------------------------------------------------------- bad input


def _jax_cases():
    """The NumPy API's bad-input cases that apply here (half precision is allowed in JAX;
    grad_filter is not an option of this function)."""
    return [c for c in bad_cases() if "grad_filter" not in c[0] and "float32 or float64" not in c[2]]


@pytest.mark.parametrize("change,exc,pattern", _jax_cases())
def test_bad_input_same_message_as_numpy(change, exc, pattern, with_x64):
    """With x64 on (off, JAX turns the float64 arrays of the dtype cases into float32)."""
    x, w, b, t, _ = make()
    args = dict(input=x, linear_weight=w, target=t, linear_bias=b)
    args.update(change)
    with pytest.raises(exc, match=pattern) as numpy_error:
        fusedce.linear_cross_entropy(**args)
    with pytest.raises(exc) as jax_error:
        fj.linear_cross_entropy(**args)
    assert str(jax_error.value) == str(numpy_error.value)


@pytest.mark.parametrize("change,exc,pattern", [c for c in _jax_cases() if "chunk_size" not in c[0]
                                                and "reduction" not in c[0] and "out of range" not in c[2]])
def test_bad_input_rejected_at_trace_time(change, exc, pattern, with_x64):
    """Under jax.jit, with every array traced: shapes and dtypes are judged at trace time."""
    x, w, b, t, _ = make()
    args = dict(input=x, linear_weight=w, target=t, linear_bias=b)
    args.update(change)
    names = [k for k, v in args.items() if v is not None]
    with pytest.raises(exc, match=pattern):
        jax.jit(lambda *a: fj.linear_cross_entropy(**dict(zip(names, a)))).lower(*[args[k] for k in names])


def test_bad_values_under_jit_fail_at_run_time():
    x, w, b, t, _ = make()
    bad = np.where(t == 3, 101, t)
    with pytest.raises(jax.errors.JaxRuntimeError, match="= 101 is out of range: class indices must be in "
                                                         r"\[0, 101\) or equal ignore_index=-100"):
        jax.block_until_ready(jax.jit(lambda a, c, tt: fj.linear_cross_entropy(a, c, tt, chunk_size=8))(x, w, bad))
    weight = np.ones(101)
    weight[7] = np.nan
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"weight must be finite, got weight\[7\] = nan"):
        jax.block_until_ready(jax.jit(lambda a, c, cw: fj.linear_cross_entropy(a, c, t, weight=cw))(x, w, weight))


def test_other_errors():
    x, w, b, t, rng = make()
    with pytest.raises(TypeError, match="input must be a floating array"):
        fj.linear_cross_entropy(x.astype(np.int32), w, t)
    with pytest.raises(TypeError, match="linear_bias must be a floating array"):
        fj.linear_cross_entropy(x, w, t, linear_bias=np.arange(101))
    with pytest.raises(ValueError, match="ignore_index does not apply to probability targets"):
        fj.linear_cross_entropy(x, w, make(soft=True)[3], ignore_index=0)
    weight = rng.uniform(0.5, 2, 101)
    with pytest.raises(NotImplementedError, match="gradient with respect to weight is not implemented"):
        jax.grad(lambda cw: fj.linear_cross_entropy(x, w, t, weight=cw))(weight)
    q = make(soft=True)[3]
    with pytest.raises(NotImplementedError, match="gradient with respect to target is not implemented"):
        jax.grad(lambda tt: fj.linear_cross_entropy(x, w, tt))(q)
