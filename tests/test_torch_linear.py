"""fusedce.torch.linear_cross_entropy against torch's own F.linear_cross_entropy (its reference
path, options=None) and the unfused F.cross_entropy(F.linear(...)), evaluated in float64
(skipped without torch)."""

import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fusedce.torch as ft  # noqa: E402

from tolerances import assert_grad_close, assert_loss_close  # noqa: E402

F = torch.nn.functional
REDUCTIONS = ("none", "mean", "sum")


def case(dtype=torch.float32, rows=37, hidden=16, vocab=101, ignored=True, soft=False, key=""):
    gen = torch.Generator().manual_seed(zlib.crc32(repr((dtype, rows, hidden, vocab, ignored, soft, key)).encode()))
    x = torch.randn(rows, hidden, generator=gen, dtype=torch.float64)
    w = torch.randn(vocab, hidden, generator=gen, dtype=torch.float64) * 0.5
    b = torch.randn(vocab, generator=gen, dtype=torch.float64)
    if soft:
        t = torch.softmax(torch.randn(rows, vocab, generator=gen, dtype=torch.float64) * 2, -1).to(dtype)
    else:
        t = torch.randint(0, vocab, (rows,), generator=gen)
        if ignored:
            t[::5] = -100
    cw = torch.rand(vocab, generator=gen, dtype=torch.float64) * 1.5 + 0.25
    up = torch.randn(rows, generator=gen, dtype=torch.float64)
    return x.to(dtype), w.to(dtype), b.to(dtype), t, cw, up


def run(fn, x, w, b, t, upstream, bias=True, **kw):
    """fn's loss and the gradients of upstream . loss to (input, weight[, bias])."""
    leaves = [a.detach().clone().requires_grad_() for a in ((x, w, b) if bias else (x, w))]
    loss = fn(leaves[0], leaves[1], t, linear_bias=leaves[2] if bias else None, **kw)
    loss.backward(upstream.to(loss.dtype) if loss.ndim else upstream.to(loss.dtype).reshape(()))
    return loss.detach(), [a.grad for a in leaves]


def torch_reference(x, w, t, *, linear_bias=None, z_loss=0.0, softcap=None, reduction="mean", weight=None, **kw):
    """torch's unfused expression, the extras spelled out in torch ops."""
    logits = F.linear(x, w, linear_bias)
    y = softcap * torch.tanh(logits / softcap) if softcap else logits
    loss = F.cross_entropy(y, t, weight=weight, reduction="none", **kw)
    if z_loss:
        if t.is_floating_point():
            w_t = torch.ones(len(t), dtype=y.dtype)
        else:
            counted = t != kw.get("ignore_index", -100)
            w_t = (weight[t.clamp(min=0)] if weight is not None else torch.ones(len(t), dtype=y.dtype)) * counted
        loss = loss + z_loss * w_t * torch.logsumexp(y, -1) ** 2
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if t.is_floating_point():
        return loss.sum() / len(t)
    counted = t != kw.get("ignore_index", -100)
    return loss.sum() / ((weight[t[counted]] if weight is not None else counted[counted].double()).sum())


def check(got, want, dtype, upstream):
    (loss, grads), (ref_loss, ref_grads) = got, want
    name = str(dtype).removeprefix("torch.")
    assert_loss_close(loss.double().numpy(), ref_loss.numpy(), name)
    factor = 5.0 * upstream.abs().max().item()
    for g, r in zip(grads, ref_grads):
        assert g.dtype == dtype
        assert_grad_close(g.double().numpy(), r.numpy(), name, row_factor=factor * r.abs().max().item())


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_torch_linear_cross_entropy(dtype, bias, weighted, smoothing, reduction):
    x, w, b, t, cw, per_row = case(dtype)
    upstream = per_row if reduction == "none" else torch.tensor(0.75, dtype=torch.float64)
    kw = dict(reduction=reduction, label_smoothing=smoothing)
    want = run(F.linear_cross_entropy, x.double(), w.double(), b.double(), t, upstream, bias,
               weight=cw if weighted else None, ignore_index=-100, **kw)
    got = run(ft.linear_cross_entropy, x, w, b, t, upstream, bias, weight=cw.to(dtype) if weighted else None,
              chunk_size=8, **kw)
    check(got, want, dtype, upstream)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("soft", [False, True], ids=["classes", "probabilities"])
def test_z_loss_softcap_and_probability_targets(soft, reduction):
    x, w, b, t, cw, per_row = case(torch.float64, soft=soft, key="extras")
    upstream = per_row if reduction == "none" else torch.tensor(1.5, dtype=torch.float64)
    kw = dict(weight=cw, reduction=reduction, label_smoothing=0.2, z_loss=1e-2, softcap=6.0)
    want = run(torch_reference, x, w, b, t, upstream, **kw)
    got = run(ft.linear_cross_entropy, x, w, b, t, upstream, chunk_size=5, **kw)
    check(got, want, torch.float64, upstream)


@pytest.mark.parametrize("chunk_size", [1, 7, 36, 37, 1000, None])
def test_chunk_boundaries(chunk_size):
    x, w, b, t, _, _ = case(torch.float64, key="chunks")
    one = torch.tensor(1.0, dtype=torch.float64)
    check(run(ft.linear_cross_entropy, x, w, b, t, one, chunk_size=chunk_size),
          run(torch_reference, x, w, b, t, one), torch.float64, one)


def test_all_rows_ignored_and_frozen_weight():
    x, w, b, t, _, _ = case(key="ignored")
    t[:] = -100
    loss, (gx, gw, gb) = run(ft.linear_cross_entropy, x, w, b, t, torch.tensor(1.0))
    assert loss.item() == 0.0 and not gx.any() and not gw.any() and not gb.any()
    # a frozen head: only the input's gradient is computed
    x, w, b, t, _, _ = case(key="frozen")
    xi = x.clone().requires_grad_()
    ft.linear_cross_entropy(xi, w, t, linear_bias=b).backward()
    x64 = x.double().requires_grad_()
    torch_reference(x64, w.double(), t, linear_bias=b.double()).backward()
    assert_grad_close(xi.grad.double().numpy(), x64.grad.numpy(), "float32")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_half_precision_at_least_as_accurate_as_torch(dtype, reduction):
    """Half inputs: the logits are rounded to the dtype as a half linear layer rounds them;
    against the float64 computation on the same inputs our gradients are no worse than
    torch's own unfused half-precision expression (and the upstream gradient, a loss scale
    here, is applied before the half rounding)."""
    if dtype == torch.bfloat16:
        pytest.importorskip("ml_dtypes")
    x, w, b, t, _, per_row = case(dtype, rows=64, hidden=32, vocab=300, key="half")
    upstream = per_row * 1024 if reduction == "none" else torch.tensor(4096.0, dtype=torch.float64)
    exact = run(torch_reference, x.double(), w.double(), b.double(), t, upstream, reduction=reduction)
    ours = run(ft.linear_cross_entropy, x, w, b, t, upstream, reduction=reduction, chunk_size=16)
    theirs = run(torch_reference, x, w, b, t, upstream, reduction=reduction)
    for g_ours, g_theirs, g_exact in zip(ours[1], theirs[1], exact[1]):
        assert g_ours.dtype == dtype
        err_ours = (g_ours.double() - g_exact).abs().max().item()
        err_theirs = (g_theirs.double() - g_exact).abs().max().item()
        # (plus one ulp of the largest element: either may round a sum differently)
        slack = torch.finfo(dtype).eps * g_exact.abs().max().item()
        assert err_ours <= 1.5 * err_theirs + slack, (err_ours, err_theirs)
    rtol = 1e-2 if dtype == torch.float16 else 4e-2
    torch.testing.assert_close(ours[0].double(), exact[0], rtol=rtol, atol=rtol)


def test_tied_embedding_weight_accumulates():
    """A head tied to the input embedding: the weight's gradient is the sum of both uses."""
    gen = torch.Generator().manual_seed(3)
    tokens, targets = torch.randint(0, 50, (24,), generator=gen), torch.randint(0, 50, (24,), generator=gen)
    results = []
    for loss_fn in (ft.linear_cross_entropy, lambda h, w, t: F.cross_entropy(h @ w.T, t)):
        torch.manual_seed(0)
        emb = torch.nn.Embedding(50, 16)
        proj = torch.nn.Linear(16, 16)
        loss = loss_fn(torch.tanh(proj(emb(tokens))), emb.weight, targets)
        loss.backward()
        results.append((loss.detach(), emb.weight.grad.clone(), proj.weight.grad.clone()))
    torch.testing.assert_close(results[0], results[1], rtol=2e-5, atol=1e-6)


def test_training_an_lm_head_matches_torch():
    """A small LM head trained 50 steps with SGD ends where torch's unfused loss ends."""
    gen = torch.Generator().manual_seed(11)
    features = torch.randn(256, 24, generator=gen)
    labels = (features[:, :12].argmax(1) * 7 + torch.randint(0, 3, (256,), generator=gen)) % 97
    labels[::9] = -100

    def train(loss_fn):
        torch.manual_seed(0)
        trunk = torch.nn.Sequential(torch.nn.Linear(24, 32), torch.nn.GELU())
        head = torch.nn.Linear(32, 97)
        optimizer = torch.optim.SGD([*trunk.parameters(), *head.parameters()], lr=0.5)
        losses = []
        for _ in range(50):
            optimizer.zero_grad()
            loss = loss_fn(trunk(features), head.weight, labels, head.bias)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses

    ours = train(lambda h, w, t, b: ft.linear_cross_entropy(h, w, t, linear_bias=b, label_smoothing=0.05, chunk_size=64))
    theirs = train(lambda h, w, t, b: F.cross_entropy(F.linear(h, w, b), t, label_smoothing=0.05))
    assert ours[-1] < 0.6 * ours[0]
    assert abs(ours[-1] - theirs[-1]) <= 1e-4, (ours[-1], theirs[-1])


def test_module_and_options_argument():
    x, w, b, t, cw, _ = case(key="module")
    module = ft.LinearCrossEntropyLoss(cw.float(), label_smoothing=0.1, chunk_size=4)
    assert torch.equal(module.state_dict()["weight"], cw.float())
    got = module(x, w, t, b)
    want = torch_reference(x.double(), w.double(), t, linear_bias=b.double(), weight=cw, label_smoothing=0.1)
    assert_loss_close(got.double().numpy(), want.numpy(), "float32")
    options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=5)
    torch.testing.assert_close(ft.linear_cross_entropy(x, w, t, linear_bias=b, options=options),
                               F.linear_cross_entropy(x, w, t, linear_bias=b, options=options), rtol=2e-6, atol=2e-6)
    assert "chunk_size=4" in repr(module)


def test_retain_graph_after_scaled_backward_raises():
    x, w, b, t, _, _ = case(key="retain")
    xi = x.clone().requires_grad_()
    loss = ft.linear_cross_entropy(xi, w, t)
    loss.backward(torch.tensor(0.5), retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_graph"):
        loss.backward(torch.tensor(0.5))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_compile_fullgraph(reduction):
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(7)
    features, labels = torch.randn(32, 12, generator=gen), torch.randint(0, 40, (32,), generator=gen)
    labels[::5] = -100
    upstream = torch.tensor(0.5) if reduction == "mean" else torch.rand(32, generator=gen)

    def forward(trunk, head, features, labels):
        return ft.linear_cross_entropy(trunk(features), head.weight, labels, linear_bias=head.bias,
                                       reduction=reduction, z_loss=1e-3, chunk_size=8)

    results = []
    for step in (forward, torch.compile(forward, fullgraph=True, backend="aot_eager")):
        torch.manual_seed(0)
        trunk, head = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh()), torch.nn.Linear(16, 40)
        loss = step(trunk, head, features, labels)
        loss.backward(upstream)
        results.append((loss.detach(), [p.grad for p in [*trunk.parameters(), *head.parameters()]]))
    torch.testing.assert_close(results[1], results[0], rtol=1e-6, atol=1e-7)


def test_bad_inputs_raise_clear_errors():
    x, w, b, t, cw, _ = case(key="bad")
    with pytest.raises(ValueError, match=r"input's last dimension must be linear_weight's H = 15"):
        ft.linear_cross_entropy(x, w[:, :15], t)
    with pytest.raises(ValueError, match=r"linear_bias must have shape \(101,\)"):
        ft.linear_cross_entropy(x, w, t, linear_bias=b[:3])
    with pytest.raises(ValueError, match=r"weight must have shape \(101,\) \(one per class of linear_weight"):
        ft.linear_cross_entropy(x, w, t, weight=torch.ones(16))
    with pytest.raises(TypeError, match="input and linear_weight must have the same dtype"):
        ft.linear_cross_entropy(x, w.double(), t)
    with pytest.raises(ValueError, match=r"target\[3\] = 101 is out of range"):
        bad = t.clone()
        bad[3] = 101
        ft.linear_cross_entropy(x, w, bad)
    with pytest.raises(ValueError, match="probability target that requires a gradient"):
        ft.linear_cross_entropy(x, w, torch.rand(37, 101, requires_grad=True))
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        ft.linear_cross_entropy(x, w, t, chunk_size=0)
