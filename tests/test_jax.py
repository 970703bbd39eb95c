"""fusedce.jax: the XLA custom calls under jit, grad, vmap and scan, against the float64
reference (fusedce.reference) and against the same losses written with optax (whose gradient
JAX's autodiff gives), for every option, dtype and reduction; x64 on and off; bad input."""

import zlib

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import fusedce.jax as fj  # noqa: E402
from fusedce import reference as ref  # noqa: E402
from fusedce.jax import _calls, _vjp  # noqa: E402

from cases import OPTION_NAMES, REDUCTIONS, grad_output_for, make_case, options  # noqa: E402
from test_validation import CASES as VALIDATION_CASES  # noqa: E402
from tolerances import assert_grad_close, assert_loss_close  # noqa: E402

ml_dtypes = pytest.importorskip("ml_dtypes")


def enable_x64(on=True):
    """The x64 context manager: jax.enable_x64 (newer JAX) or jax.experimental.enable_x64."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(on)
    from jax.experimental import enable_x64 as context, disable_x64

    return context() if on else disable_x64()


@pytest.fixture(params=[False, True], ids=["x64off", "x64on"])
def x64(request):
    """Runs the test with jax_enable_x64 off and on (jax.config.update), restored after."""
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", request.param)
    yield request.param
    jax.config.update("jax_enable_x64", before)


@pytest.fixture(params=["grad", "lse"])
def residual(request):
    """Runs a float32 test with each of the two backward strategies (see fusedce.jax._vjp)."""
    before = dict(_vjp.RESIDUAL)
    _vjp.RESIDUAL["float32"] = _vjp.RESIDUAL["float64"] = request.param
    yield request.param
    _vjp.RESIDUAL.update(before)


def _np_dtype(name):
    return ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)


def _ce_grad_ref(x, t, kw, reduction, go):
    return ref.cross_entropy_with_grad(x, t, reduction=reduction, grad_output=go, **kw)[1]


def _upstream(reduction, go):
    """A loss function of the fusedce.jax loss: sum(loss * go) for 'none', loss * 0.75 else."""
    g = grad_output_for(reduction, go)
    return (lambda loss: jnp.sum(loss * jnp.asarray(g, loss.dtype))), g


# ----------------------------------------------------------------------------- an optax oracle


def optax_ce(x, t, *, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, z_loss=0.0,
             softcap=None):
    """The same cross-entropy written with optax and jax.numpy: per row
    optax.softmax_cross_entropy(y, w * smooth_labels(onehot(t))) + z w_t lse(y)^2."""
    optax = pytest.importorskip("optax")
    K = x.shape[-1]
    y = x if softcap is None else softcap * jnp.tanh(x / softcap)
    w = jnp.ones(K, y.dtype) if weight is None else jnp.asarray(weight, y.dtype)
    soft = jnp.issubdtype(jnp.asarray(t).dtype, jnp.floating)
    if soft:
        labels = optax.smooth_labels(t, label_smoothing)
        row = optax.softmax_cross_entropy(y, labels * w) + z_loss * jax.nn.logsumexp(y, axis=-1) ** 2
        denominator = row.size
    else:
        counted = t != ignore_index
        safe = jnp.where(counted, t, 0)
        labels = optax.smooth_labels(jax.nn.one_hot(safe, K, dtype=y.dtype), label_smoothing)
        wt = jnp.where(counted, w[safe], 0.0)
        row = optax.softmax_cross_entropy(y, labels * w) + z_loss * wt * jax.nn.logsumexp(y, axis=-1) ** 2
        row = jnp.where(counted, row, 0.0)
        denominator = jnp.sum(wt)
    if reduction == "none":
        return row
    if reduction == "sum":
        return jnp.sum(row)
    return jnp.where(denominator != 0, jnp.sum(row) / jnp.where(denominator != 0, denominator, 1), 0.0)


def optax_bce(x, t, *, weight=None, pos_weight=None, reduction="mean"):
    """torch's BCE with logits from optax.sigmoid_binary_cross_entropy, pos_weight and weight
    applied to its two log-sigmoid terms."""
    optax = pytest.importorskip("optax")
    if pos_weight is None:
        el = optax.sigmoid_binary_cross_entropy(x, t)
    else:
        el = -(jnp.asarray(pos_weight, x.dtype) * t * jax.nn.log_sigmoid(x) + (1 - t) * jax.nn.log_sigmoid(-x))
    if weight is not None:
        el = el * jnp.asarray(weight, x.dtype)
    return {"none": el, "sum": jnp.sum(el), "mean": jnp.mean(el)}[reduction]


def _close(got, want, rtol):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1.0)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale)


# ----------------------------------------------------------------------------- cross-entropy


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("opt", OPTION_NAMES)
def test_ce_float32_every_option(opt, reduction, residual):
    """Loss and jax.grad under jit against the float64 reference and the optax formula."""
    x, t, kw, go = make_case(24, 37, np.float32, opt)
    loss = jax.jit(lambda a, b: fj.cross_entropy(a, b, reduction=reduction, **kw))(x, t)
    assert_loss_close(loss, ref.cross_entropy(x, t, reduction=reduction, **kw), np.float32)
    assert loss.dtype == jnp.float32
    up, g = _upstream(reduction, go)
    grad = jax.jit(jax.grad(lambda a: up(fj.cross_entropy(a, t, reduction=reduction, **kw))))(x)
    assert grad.dtype == jnp.float32
    assert_grad_close(grad, _ce_grad_ref(x, t, kw, reduction, g), np.float32)
    # optax: the same loss built from its pieces, differentiated by JAX
    _close(loss, optax_ce(jnp.asarray(x), jnp.asarray(t), reduction=reduction, **kw), 2e-5)
    want = jax.grad(lambda a: up(optax_ce(a, jnp.asarray(t), reduction=reduction, **kw)))(jnp.asarray(x))
    _close(grad, want, 2e-5)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("opt", ["plain", "all"])
def test_ce_float64_with_x64(opt, reduction):
    x, t, kw, go = make_case(16, 29, np.float64, opt)
    with enable_x64(True):
        loss = jax.jit(lambda a: fj.cross_entropy(a, t, reduction=reduction, **kw))(x)
        assert loss.dtype == jnp.float64
        assert_loss_close(loss, ref.cross_entropy(x, t, reduction=reduction, **kw), np.float64)
        up, g = _upstream(reduction, go)
        grad = jax.jit(jax.grad(lambda a: up(fj.cross_entropy(a, t, reduction=reduction, **kw))))(x)
        assert grad.dtype == jnp.float64
        assert_grad_close(grad, _ce_grad_ref(x, t, kw, reduction, g), np.float64)
        _close(loss, optax_ce(jnp.asarray(x), jnp.asarray(t), reduction=reduction, **kw), 1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("opt", ["plain", "all"])
def test_ce_half(opt, dtype, reduction, x64):
    """Half logits: float32 loss, gradient in the logits' dtype rounded once from float32."""
    x, t, kw, go = make_case(16, 40, _np_dtype(dtype), opt)
    loss = jax.jit(lambda a: fj.cross_entropy(a, t, reduction=reduction, **kw))(x)
    assert loss.dtype == jnp.float32
    assert_loss_close(loss, ref.cross_entropy(x, t, reduction=reduction, **kw), dtype)
    up, g = _upstream(reduction, go)
    grad = jax.jit(jax.grad(lambda a: up(fj.cross_entropy(a, t, reduction=reduction, **kw))))(x)
    assert grad.dtype == jnp.dtype(dtype)
    assert_grad_close(grad, _ce_grad_ref(x, t, kw, reduction, g), dtype)


def test_half_gradient_scaled_before_rounding():
    """A loss scale reaches the kernel before the float16 rounding. Unscaled, these gradients
    (about 1e-5) are subnormal in float16 and lose their precision; scaled by 4096 they are
    normal. Rounding first and scaling after would fail the check (shown on the reference)."""
    x, t, _, _ = make_case(64, 2048, np.float16, "plain", scale=0.5)
    scale = 4096.0
    grad = jax.jit(jax.grad(lambda a: fj.cross_entropy(a, t) * scale))(x)
    want = ref.cross_entropy_with_grad(x, t, grad_output=scale)[1]
    assert np.median(np.abs(want)) / scale < 6.1e-5 < np.median(np.abs(want))

    def within_half_ulp(got):  # every element: rounded once to float16 (2**-11 relative)
        err = np.abs(np.asarray(got, np.float64) - want)
        return bool(np.all(err <= 2.0**-11 * np.abs(want) * (1 + 1e-3)))

    assert within_half_ulp(grad)
    assert not within_half_ulp((want / scale).astype(np.float16).astype(np.float64) * scale)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("opt", ["plain", "smoothing+weight", "all"])
def test_ce_probability_targets(opt, reduction, residual):
    """Probability targets: loss and both gradients (logits, targets) against the reference
    and against the optax formula differentiated by JAX."""
    rng = np.random.default_rng(zlib.crc32(opt.encode()))
    B, K = 12, 23
    kw = {k: v for k, v in options(opt, K, rng).items() if k != "ignore_index"}
    x = (rng.standard_normal((B, K)) * 2).astype(np.float32)
    q = rng.dirichlet(np.ones(K), B).astype(np.float32)
    q[3] = 0.0  # a row left out
    go = rng.standard_normal(B)
    loss = jax.jit(lambda a, b: fj.cross_entropy(a, b, reduction=reduction, **kw))(x, q)
    assert_loss_close(loss, ref.cross_entropy(x, q, reduction=reduction, **kw), np.float32)
    up, g = _upstream(reduction, go)
    gx, gq = jax.jit(jax.grad(lambda a, b: up(fj.cross_entropy(a, b, reduction=reduction, **kw)), argnums=(0, 1)))(x, q)
    assert_grad_close(gx, _ce_grad_ref(x, q, kw, reduction, g), np.float32)
    want_x, want_q = jax.grad(lambda a, b: up(optax_ce(a, b, reduction=reduction, **kw)), argnums=(0, 1))(
        jnp.asarray(x), jnp.asarray(q))
    _close(gx, want_x, 2e-5)
    _close(gq, want_q, 2e-5)


def test_ce_batch_shape_and_int_dtypes():
    """Logits (2, 3, K) with int8 targets; a 1-d call (one row) with an int64 target."""
    x, t, kw, go = make_case(6, 11, np.float32, "weight", batch_shape=(2, 3))
    t8 = t.astype(np.int8)
    loss = fj.cross_entropy(x, t8, reduction="none", **kw)
    assert loss.shape == (2, 3)
    assert_loss_close(loss, ref.cross_entropy(x, t, reduction="none", **kw), np.float32)
    grad = jax.grad(lambda a: jnp.sum(fj.cross_entropy(a, t8, reduction="none", **kw) * go))(x)
    assert_grad_close(grad, _ce_grad_ref(x, t, kw, "none", go), np.float32)
    assert_loss_close(fj.cross_entropy(x[0, 0], np.int64(4)), ref.cross_entropy(x[0, 0], 4), np.float32)


def test_ce_all_rows_ignored_is_zero():
    x, t, _, _ = make_case(5, 7, np.float32)
    t[:] = -100
    loss, grad = jax.jit(jax.value_and_grad(fj.cross_entropy))(x, t)
    assert float(loss) == 0.0 and not np.any(np.asarray(grad))


def test_target_gradient_only_when_asked():
    """A probability target that is not differentiated adds nothing to the backward: the
    gradient program is the same as for a constant target."""
    x, _, _, _ = make_case(8, 9, np.float32)
    q = np.full((8, 9), 1 / 9, np.float32)
    with_target = str(jax.make_jaxpr(jax.grad(fj.cross_entropy, argnums=(0, 1)))(x, q))
    logits_only = str(jax.make_jaxpr(jax.grad(fj.cross_entropy))(x, q))
    assert "tanh" not in logits_only and logits_only.count("sub") < with_target.count("sub")


# ----------------------------------------------------------------------------- x64 and transformations


def test_x64_on_and_off(x64):
    """Float32 logits give float32 results either way; int64 targets work with x64 on."""
    x, t, kw, _ = make_case(10, 13, np.float32, "all")
    loss, grad = jax.jit(jax.value_and_grad(lambda a, b: fj.cross_entropy(a, b, **kw)))(x, t)
    assert loss.dtype == jnp.float32 and grad.dtype == jnp.float32
    assert jnp.asarray(t).dtype == (jnp.int64 if x64 else jnp.int32)
    assert_loss_close(loss, ref.cross_entropy(x, t, **kw), np.float32)
    assert_grad_close(grad, _ce_grad_ref(x, t, kw, "mean", 1.0), np.float32)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_vmap(reduction, residual):
    """vmap over a leading axis (each instance its own mean), with a per-instance weight,
    and vmap of jax.grad; nested vmap."""
    V, B, K = 3, 8, 17
    rng = np.random.default_rng(7)
    x = rng.standard_normal((V, B, K)).astype(np.float32)
    t = rng.integers(0, K, (V, B))
    t[:, 2] = -100
    w = rng.uniform(0.5, 2.0, (V, K))
    f = jax.jit(jax.vmap(lambda a, b, c: fj.cross_entropy(a, b, weight=c, reduction=reduction)))
    loss = f(x, t, w)
    for v in range(V):
        assert_loss_close(loss[v], ref.cross_entropy(x[v], t[v], weight=w[v], reduction=reduction), np.float32)
    up = (lambda l: jnp.sum(l * 0.5))
    grads = jax.jit(jax.vmap(jax.grad(lambda a, b, c: up(fj.cross_entropy(a, b, weight=c, reduction=reduction)))))(x, t, w)
    for v in range(V):
        g = np.full(B, 0.5) if reduction == "none" else 0.5
        assert_grad_close(grads[v], _ce_grad_ref(x[v], t[v], {"weight": w[v]}, reduction, g), np.float32)
    # unbatched weight, nested vmap over (2, 3) instances of (4, K)
    x4 = rng.standard_normal((2, 3, 4, K)).astype(np.float32)
    t4 = rng.integers(0, K, (2, 3, 4))
    nested = jax.vmap(jax.vmap(lambda a, b: fj.cross_entropy(a, b, weight=w[0], reduction=reduction)))(x4, t4)
    for i in range(2):
        for j in range(3):
            assert_loss_close(nested[i, j], ref.cross_entropy(x4[i, j], t4[i, j], weight=w[0], reduction=reduction),
                              np.float32)


def test_vmap_logits_unbatched():
    """Only the targets are batched: broadcast_all gives every instance the same logits."""
    x, _, _, _ = make_case(6, 9, np.float32)
    ts = np.random.default_rng(1).integers(0, 9, (4, 6))
    loss = jax.vmap(lambda b: fj.cross_entropy(x, b))(ts)
    for v in range(4):
        assert_loss_close(loss[v], ref.cross_entropy(x, ts[v]), np.float32)


def test_scan():
    """Inside jax.lax.scan: a loss accumulated over chunks, and its gradient."""
    C, B, K = 4, 6, 19
    rng = np.random.default_rng(3)
    x = rng.standard_normal((C, B, K)).astype(np.float32)
    t = rng.integers(0, K, (C, B))

    def total(xs):
        def step(carry, chunk):
            a, b = chunk
            return carry + fj.cross_entropy(a, b, reduction="sum", label_smoothing=0.1), None

        return jax.lax.scan(step, jnp.float32(0), (xs, jnp.asarray(t)))[0]

    loss, grad = jax.jit(jax.value_and_grad(total))(x)
    want = ref.cross_entropy(x.reshape(-1, K), t.reshape(-1), reduction="sum", label_smoothing=0.1)
    assert_loss_close(loss, want, np.float32)
    want_g = ref.cross_entropy_with_grad(x.reshape(-1, K), t.reshape(-1), reduction="sum", label_smoothing=0.1)[1]
    assert_grad_close(grad.reshape(-1, K), want_g, np.float32)


def test_lowered_program_is_a_custom_call():
    """The jitted loss and gradient lower to fusedce's custom calls: no host callback."""
    x, t, _, _ = make_case(4, 5, np.float32)
    for f in (fj.cross_entropy, jax.value_and_grad(fj.cross_entropy)):
        text = jax.jit(f).lower(x, t).as_text()
        assert "stablehlo.custom_call @fusedce_ce" in text
        assert "callback" not in text.lower()
    for name in ("softmax", "log_softmax", "logsumexp"):
        text = jax.jit(jax.grad(lambda a: jnp.sum(getattr(fj, name)(a)))).lower(x).as_text()
        assert "custom_call @fusedce_softmax" in text and "callback" not in text.lower()
    text = jax.jit(jax.grad(fj.binary_cross_entropy_with_logits)).lower(x, x).as_text()
    assert "custom_call @fusedce_bce" in text and "callback" not in text.lower()


def _logits_copies(compiled, shape):
    text = compiled.as_text()
    dims = ",".join(str(d) for d in shape)
    return [line for line in text.splitlines() if " copy(" in line and f"[{dims}]" in line]


@pytest.mark.parametrize("residual_kind", ["grad", "lse"])
def test_gradient_written_over_dead_logits(residual_kind, monkeypatch):
    """Where the logits die in the loss (computed in the step, or donated), the compiled
    program writes the gradient over them: no copy of the logits, no second buffer."""
    monkeypatch.setitem(_vjp.RESIDUAL, "float32", residual_kind)
    h, W, t = jnp.ones((64, 16)), jnp.ones((16, 1000)), jnp.zeros(64, jnp.int32)
    step = jax.jit(jax.value_and_grad(lambda w, a, b: fj.cross_entropy(a @ w, b))).lower(W, h, t).compile()
    assert not _logits_copies(step, (64, 1000))
    donated = jax.jit(jax.value_and_grad(fj.cross_entropy), donate_argnums=0).lower(jnp.ones((64, 1000)), t).compile()
    assert not _logits_copies(donated, (64, 1000))
    kept = jax.jit(jax.value_and_grad(fj.cross_entropy)).lower(jnp.ones((64, 1000)), t).compile()
    assert len(_logits_copies(kept, (64, 1000))) == 1  # a kept argument is copied, never overwritten


# ----------------------------------------------------------------------------- binary cross-entropy


def _bce_case(dtype=np.float32):
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((6, 5)) * 3).astype(dtype)
    y = (rng.random((6, 5)) < 0.4).astype(dtype)
    return rng, x, y


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("opt", ["plain", "weight", "weight_full", "pos_weight", "both", "pos_weight_1C",
                                 "pos_weight_full", "pos_weight_rows"])
def test_bce(opt, reduction, residual):
    rng, x, y = _bce_case()
    kw = {"plain": {}, "weight": {"weight": rng.uniform(0.5, 2, 5)},
          "weight_full": {"weight": rng.uniform(0.5, 2, (6, 1))},
          "pos_weight": {"pos_weight": rng.uniform(0.5, 3, 5)},
          "both": {"weight": rng.uniform(0.5, 2, 5), "pos_weight": rng.uniform(0.5, 3, 5)},
          # pos_weight broadcast to the target as torch broadcasts it
          "pos_weight_1C": {"pos_weight": rng.uniform(0.5, 3, (1, 5))},
          "pos_weight_full": {"weight": rng.uniform(0.5, 2, (1, 5)), "pos_weight": rng.uniform(0.5, 3, (6, 5))},
          "pos_weight_rows": {"pos_weight": rng.uniform(0.5, 3, (6, 1))}}[opt]
    loss = jax.jit(lambda a, b: fj.binary_cross_entropy_with_logits(a, b, reduction=reduction, **kw))(x, y)
    assert_loss_close(loss, ref.binary_cross_entropy_with_logits(x, y, reduction=reduction, **kw), np.float32)
    go = rng.standard_normal(x.shape)
    g = go if reduction == "none" else 0.75
    up = (lambda l: jnp.sum(l * jnp.asarray(g, l.dtype)))
    gx, gy = jax.jit(jax.grad(lambda a, b: up(fj.binary_cross_entropy_with_logits(a, b, reduction=reduction, **kw)),
                              argnums=(0, 1)))(x, y)
    want = ref.binary_cross_entropy_with_logits_with_grad(x, y, reduction=reduction, grad_output=g, **kw)[1]
    assert_grad_close(gx, want, np.float32)
    wx, wy = jax.grad(lambda a, b: up(optax_bce(a, b, reduction=reduction, **kw)), argnums=(0, 1))(
        jnp.asarray(x), jnp.asarray(y))
    _close(loss, optax_bce(jnp.asarray(x), jnp.asarray(y), reduction=reduction, **kw), 2e-5)
    _close(gx, wx, 2e-5)
    _close(gy, wy, 2e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_bce_dtypes(dtype):
    _, x, y = _bce_case(_np_dtype(dtype))
    with enable_x64(dtype == "float64"):
        loss, grad = jax.jit(jax.value_and_grad(lambda a: fj.binary_cross_entropy_with_logits(a, y) * 8.0))(x)
        assert grad.dtype == jnp.dtype(dtype)
        ref_loss, ref_grad = ref.binary_cross_entropy_with_logits_with_grad(x, y, grad_output=8.0)
        assert_loss_close(loss, ref_loss * 8.0, dtype)
        assert_grad_close(grad, ref_grad, dtype)
        none = fj.binary_cross_entropy_with_logits(x, y, reduction="none")
        assert none.dtype == jnp.dtype(dtype)


def test_bce_vmap_per_element_pos_weight():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 4, 6)).astype(np.float32)
    y = (rng.random((3, 4, 6)) < 0.5).astype(np.float32)
    pw = rng.uniform(0.5, 3, (3, 4, 1))
    grads = jax.vmap(jax.grad(lambda a, b, p: fj.binary_cross_entropy_with_logits(a, b, pos_weight=p)))(x, y, pw)
    for v in range(3):
        want_g = ref.binary_cross_entropy_with_logits_with_grad(x[v], y[v], pos_weight=pw[v])[1]
        assert_grad_close(grads[v], want_g, np.float32)


def test_bce_vmap_per_instance_pos_weight():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4, 6)).astype(np.float32)
    y = (rng.random((3, 4, 6)) < 0.5).astype(np.float32)
    pw = rng.uniform(0.5, 3, (3, 6))
    loss = jax.vmap(lambda a, b, p: fj.binary_cross_entropy_with_logits(a, b, pos_weight=p))(x, y, pw)
    grads = jax.vmap(jax.grad(lambda a, b, p: fj.binary_cross_entropy_with_logits(a, b, pos_weight=p)))(x, y, pw)
    for v in range(3):
        want, want_g = ref.binary_cross_entropy_with_logits_with_grad(x[v], y[v], pos_weight=pw[v])
        assert_loss_close(loss[v], want, np.float32)
        assert_grad_close(grads[v], want_g, np.float32)


def test_bce_zero_d():
    loss = fj.binary_cross_entropy_with_logits(np.float32(0.3), np.float32(1.0))
    assert_loss_close(loss, ref.binary_cross_entropy_with_logits(np.float32(0.3), np.float32(1.0)), np.float32)


# ----------------------------------------------------------------------------- softmax family


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_softmax_family(name, dtype, residual):
    """Values against the reference; jax.grad against jax.nn's own function (float64 oracle)."""
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((3, 5, 33)) * 3).astype(_np_dtype(dtype))
    w = rng.standard_normal(x.shape[:-1] if name == "logsumexp" else x.shape)
    with enable_x64(True):
        fn = getattr(fj, name)
        out = jax.jit(fn)(x)
        want = getattr(ref, name)(x)
        assert out.dtype == (jnp.dtype(dtype) if name != "logsumexp" else
                             (jnp.float64 if dtype == "float64" else jnp.float32))
        if name == "softmax" or (name == "log_softmax" and dtype in ("float16", "bfloat16")):
            assert_grad_close(out, want, dtype, name)  # rounded to the half type: its half-ulp
        else:
            assert_loss_close(out, want, dtype, name)
        grad = jax.jit(jax.grad(lambda a: jnp.sum(fn(a).astype(jnp.float64) * w)))(x)
        assert grad.dtype == jnp.dtype(dtype)
        nn = {"softmax": jax.nn.softmax, "log_softmax": jax.nn.log_softmax,
              "logsumexp": lambda a: jax.nn.logsumexp(a, axis=-1)}[name]
        oracle = jax.grad(lambda a: jnp.sum(nn(a) * w))(jnp.asarray(x, jnp.float64))
        assert_grad_close(grad, oracle, dtype)


def test_softmax_family_vmap_and_x64_off():
    x = np.random.default_rng(4).standard_normal((2, 4, 9)).astype(np.float32)
    for name in ("softmax", "log_softmax", "logsumexp"):
        out = jax.vmap(getattr(fj, name))(x)
        assert_loss_close(out, getattr(ref, name)(x), np.float32)


# ----------------------------------------------------------------------------- bad input


def _validation(desc):
    return next(case for case in VALIDATION_CASES if case[0] == desc)


@pytest.mark.parametrize("case", VALIDATION_CASES, ids=[c[0] for c in VALIDATION_CASES])
def test_bad_input_same_message_as_numpy(case):
    """Every bad call of the NumPy API's validation table is refused by fusedce.jax with the
    same exception type and message (values given concretely are checked at trace time)."""
    desc, build, exc, fragment = case
    x, t = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32), np.array([0, 1, 2, 3])
    kw = build(x, t)
    with pytest.raises(exc, match=__import__("re").escape(fragment)):
        fj.cross_entropy(kw.pop("logits"), kw.pop("target"), **kw)


@pytest.mark.parametrize("desc", ["target shape", "target 2-d", "float target", "bool target", "int logits",
                                  "bool logits", "complex logits", "weight length", "smoothing > 1", "reduction",
                                  "softcap", "ignore_index"])
def test_bad_input_rejected_at_trace_time(desc):
    """Shape, dtype and option errors are raised while jax.jit traces, before anything runs."""
    _, build, exc, fragment = _validation(desc)
    x, t = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32), np.array([0, 1, 2, 3])
    kw = build(x, t)
    logits, target = kw.pop("logits"), kw.pop("target")
    with pytest.raises(exc, match=__import__("re").escape(fragment)):
        jax.jit(lambda a, b: fj.cross_entropy(a, b, **kw)).trace(logits, target)


@pytest.mark.parametrize("desc,target,weight,fragment", [
    ("target too big", [0, 1, 5, 3], None, "target[2] = 5 is out of range: class indices must be in [0, 5)"),
    ("target negative", [0, -1, 2, 3], None, "target[1] = -1 is out of range"),
    ("weight NaN", [0, 1, 2, 3], [1, 1, np.nan, 1, 1], "weight must be finite, got weight[2] = nan"),
])
def test_bad_values_under_jit_fail_at_run_time(desc, target, weight, fragment):
    """Values known only when the program runs are checked by the custom call: a
    JaxRuntimeError with the NumPy API's message (for the loss and for the gradient)."""
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    w = None if weight is None else jnp.asarray(weight, jnp.float32)
    f = jax.jit(lambda a, b, c: fj.cross_entropy(a, b, weight=c))
    g = jax.jit(jax.grad(lambda a, b, c: fj.cross_entropy(a, b, weight=c)))
    for fn in (f, g):
        with pytest.raises(jax.errors.JaxRuntimeError, match=__import__("re").escape(fragment)):
            jax.block_until_ready(fn(x, jnp.asarray(target), w))


def test_bce_bad_input():
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"target must have the logits' shape \(3, 4\)"):
        jax.jit(lambda a: fj.binary_cross_entropy_with_logits(a, jnp.zeros((3, 3)))).trace(x)
    with pytest.raises(TypeError, match="target must be a floating array"):
        fj.binary_cross_entropy_with_logits(x, np.zeros((3, 4), np.int32))
    with pytest.raises(ValueError, match=r"pos_weight of shape \(3,\) does not broadcast to the logits. shape"):
        fj.binary_cross_entropy_with_logits(x, x, pos_weight=np.ones(3))
    with pytest.raises(ValueError, match="weight of shape"):
        fj.binary_cross_entropy_with_logits(x, x, weight=np.ones((2, 4)))
    with pytest.raises(ValueError, match="pos_weight must be finite"):
        fj.binary_cross_entropy_with_logits(x, x, pos_weight=np.array([1, np.inf, 1, 1]))
    with pytest.raises(jax.errors.JaxRuntimeError, match="pos_weight must be finite"):
        jax.jit(lambda p: fj.binary_cross_entropy_with_logits(x, x, pos_weight=p))(jnp.array([1, np.nan, 1, 1.0]))
    with pytest.raises(ValueError, match="reduction must be one of"):
        fj.binary_cross_entropy_with_logits(x, x, reduction="avg")


def test_weight_gradient_not_implemented():
    x, t, kw, _ = make_case(4, 6, np.float32, "weight")
    with pytest.raises(NotImplementedError, match=r"stop_gradient\(weight\)"):
        jax.grad(lambda w: fj.cross_entropy(x, t, weight=w))(jnp.asarray(kw["weight"], jnp.float32))
    with pytest.raises(NotImplementedError, match=r"stop_gradient\(pos_weight\)"):
        jax.grad(lambda p: fj.binary_cross_entropy_with_logits(x, x, pos_weight=p))(jnp.ones(6))


# ----------------------------------------------------------------------------- the FFI plumbing


def test_api_version_and_other_platform_handler():
    """The handlers declare XLA FFI API 0.1 (accepted by this jaxlib: they registered), and
    the handler registered for GPU platforms fails with fusedce's message when run."""
    assert _calls.api_version() == (0, 1)
    jax.ffi.register_ffi_target("fusedce_test_unsupported", _calls._capsule("fusedce_xla_unsupported"), platform="cpu")
    call = jax.ffi.ffi_call("fusedce_test_unsupported", jax.ShapeDtypeStruct((2,), jnp.float32))
    with pytest.raises(jax.errors.JaxRuntimeError, match="fusedce.jax has no kernels for this device under jax.jit"):
        jax.block_until_ready(jax.jit(call)(jnp.ones(2)))


def test_no_gpu_arrays_here_take_the_custom_call():
    """CPU arrays and tracers never take the DLPack (GPU) route."""
    x = jnp.ones((2, 3))
    assert not fj._on_gpu(x, None, np.ones(3))
    jax.jit(lambda a: (fj._on_gpu(a) and pytest.fail("tracer routed to the GPU path")) or a)(x)


def test_no_classes():
    """K = 0 as the NumPy API has it (fusedce._checks.as_rows): lse -inf, loss 0, empty gradient."""
    x = jnp.zeros((3, 0), jnp.float32)
    for target in (jnp.full(3, -100), jnp.zeros((3, 0), jnp.float32)):
        for reduction in ("none", "mean", "sum"):
            loss, grad = jax.value_and_grad(lambda a: jnp.sum(fj.cross_entropy(a, target, reduction=reduction)))(x)
            assert loss == 0.0 and grad.shape == (3, 0)
    np.testing.assert_array_equal(fj.logsumexp(x), np.full(3, -np.inf))
    assert fj.softmax(x).shape == fj.log_softmax(x).shape == (3, 0)
    with pytest.raises(ValueError, match=r"target\[1\] = 0 is out of range"):  # a concrete target: at trace time
        fj.cross_entropy(x, jnp.array([-100, 0, -100]))
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"target\[1\] = 0 is out of range"):  # under jit: at run time
        jax.jit(fj.cross_entropy)(x, jnp.array([-100, 0, -100])).block_until_ready()
