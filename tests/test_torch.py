"""fusedce.torch against torch.nn.functional.cross_entropy (skipped without torch).

The reference is torch's own loss evaluated in float64 on the same input values (z_loss and
softcap spelled out in torch ops), so the tolerances measure fusedce's error alone.
"""

import sys
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fusedce.torch as ft  # noqa: E402

from tolerances import assert_grad_close, assert_loss_close  # noqa: E402

F = torch.nn.functional

REDUCTIONS = ("none", "mean", "sum")
# Logits shape per layout; the class axis is 1 (0 for the unbatched (C,) layout).
LAYOUTS = {"NC": (37, 29), "C": (13,), "NCd": (5, 11, 3, 4)}
# The loss comes back in the logits' dtype, as torch's does: half results are rounded once more.
HALF_LOSS_RTOL = {"float16": 1e-3, "bfloat16": 8e-3}
TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                "float64": torch.float64}


def make_inputs(layout, dtype, ignore_index=None, seed_text=""):
    """(logits leaf requiring grad, target, weight, per-element upstream gradient); with an
    ignore_index about a quarter of the rows are ignored, never all of them."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"{layout}-{dtype}-{ignore_index}-{seed_text}".encode()))
    shape = LAYOUTS[layout]
    classes = shape[0] if len(shape) == 1 else shape[1]
    batch_shape = shape[:1] + shape[2:] if len(shape) > 1 else ()
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3).to(TORCH_DTYPES[dtype])
    target = torch.randint(0, classes, batch_shape, generator=gen)
    if ignore_index is not None and target.ndim:
        ignored = torch.rand(batch_shape, generator=gen) < 0.25
        ignored.view(-1)[0] = False
        target[ignored] = ignore_index
    weight = torch.rand(classes, generator=gen, dtype=torch.float64) * 1.75 + 0.25
    upstream = torch.randn(batch_shape, generator=gen, dtype=torch.float64)
    return x.requires_grad_(), target, weight, upstream


def reference(x, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
              z_loss=0.0, softcap=None, upstream=None):
    """torch's loss (float64) and d(upstream . loss)/dx; upstream None means 1."""
    x64 = x.detach().to(torch.float64).requires_grad_()
    y = softcap * torch.tanh(x64 / softcap) if softcap else x64
    opts = dict(weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing)
    loss = F.cross_entropy(y, target, reduction=reduction, **opts)
    if z_loss:
        counted = target != ignore_index
        w_t = weight[torch.where(counted, target, 0)] if weight is not None else torch.ones(target.shape, dtype=torch.float64)
        w_t = torch.where(counted, w_t, 0.0)
        z_rows = z_loss * w_t * torch.logsumexp(y, dim=0 if x.ndim == 1 else 1) ** 2
        if reduction == "none":
            loss = loss + z_rows
        elif reduction == "sum":
            loss = loss + z_rows.sum()
        else:
            loss = loss + z_rows.sum() / w_t.sum()
    loss.backward(torch.ones_like(loss) if upstream is None else upstream)
    return loss.detach(), x64.grad


def fused_loss_and_grad(x, target, weight=None, reduction="mean", upstream=None, **kw):
    """fusedce.torch's loss and x.grad after backward(upstream)."""
    x.grad = None
    w = None if weight is None else weight.to(x.dtype)
    loss = ft.cross_entropy(x, target, w, reduction=reduction, **kw)
    assert loss.dtype == x.dtype
    loss.backward(torch.ones_like(loss) if upstream is None else upstream.to(loss.dtype))
    return loss.detach(), x.grad


def upstream_for(reduction, per_row):
    return per_row if reduction == "none" else torch.tensor(0.75, dtype=torch.float64)


def assert_matches_reference(x, target, weight, reduction, upstream, dtype, loss_rtol=None, **kw):
    ref_loss, ref_grad = reference(x, target, weight, reduction=reduction, upstream=upstream, **kw)
    loss, grad = fused_loss_and_grad(x, target, weight, reduction, upstream, **kw)
    got_loss = loss.to(torch.float64).numpy()
    if loss_rtol is None:
        assert_loss_close(got_loss, ref_loss.numpy(), dtype)
    else:
        assert np.all(np.abs(got_loss - ref_loss.numpy()) <= loss_rtol * np.maximum(np.abs(ref_loss.numpy()), 1.0))
    assert_grad_close(grad.to(torch.float64).numpy(), ref_grad.numpy(), dtype)


# --------------------------------------------------------------------------- against torch


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("ignored", [False, True], ids=["all-counted", "ignored-rows"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matches_torch(dtype, layout, weighted, ignored, label_smoothing, reduction):
    ignore_index = -100 if ignored else -1
    x, target, weight, per_row = make_inputs(layout, dtype, ignore_index if ignored else None)
    assert_matches_reference(x, target, weight if weighted else None, reduction, upstream_for(reduction, per_row),
                             dtype, ignore_index=ignore_index, label_smoothing=label_smoothing)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("with_options", [False, True], ids=["alone", "weight+ignore+smoothing"])
@pytest.mark.parametrize("z_loss,softcap", [(1e-2, None), (0.0, 3.0), (1e-3, 5.0)])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_z_loss_and_softcap(dtype, layout, z_loss, softcap, with_options, reduction):
    x, target, weight, per_row = make_inputs(layout, dtype, -100 if with_options else None, "extras")
    opts = dict(label_smoothing=0.2) if with_options else {}
    assert_matches_reference(x, target, weight if with_options else None, reduction,
                             upstream_for(reduction, per_row), dtype, z_loss=z_loss, softcap=softcap, **opts)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("layout", ["NC", "NCd"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision(dtype, layout, reduction):
    pytest.importorskip("ml_dtypes")
    x, target, weight, per_row = make_inputs(layout, dtype, -100)
    assert_matches_reference(x, target, weight, reduction, upstream_for(reduction, per_row), dtype,
                             loss_rtol=HALF_LOSS_RTOL[dtype], label_smoothing=0.1)


def test_ignore_index_may_be_a_class():
    x, target, _, _ = make_inputs("NC", "float32")
    assert (target == 3).any()
    assert_matches_reference(x, target, None, "mean", None, "float32", ignore_index=3)


def test_mean_over_no_counted_rows_is_zero():
    """The one deliberate difference from torch, which gives NaN."""
    x = torch.randn(4, 5, requires_grad=True)
    loss = ft.cross_entropy(x, torch.full((4,), -100))
    loss.backward()
    assert loss.item() == 0.0 and not x.grad.any()


def test_loss_only_computed_without_grad():
    x, target, weight, _ = make_inputs("NCd", "float32")
    ref_loss, _ = reference(x, target, weight)
    with torch.no_grad():
        loss = ft.cross_entropy(x, target, weight.float())
    assert loss.grad_fn is None and not loss.requires_grad
    assert_loss_close(loss.numpy(), ref_loss.numpy(), "float32")
    frozen = x.detach()
    loss = ft.cross_entropy(frozen, target, weight.float(), reduction="none")
    assert loss.grad_fn is None
    assert_loss_close(loss.numpy(), reference(x, target, weight, reduction="none")[0].numpy(), "float32")


# --------------------------------------------------------------------------- autograd


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradcheck(layout, reduction):
    x, target, weight, _ = make_inputs(layout, "float64", -100, "gradcheck")

    def loss_of(logits):
        return ft.cross_entropy(logits, target, weight, reduction=reduction, label_smoothing=0.1,
                                z_loss=1e-2, softcap=4.0)

    assert torch.autograd.gradcheck(loss_of, (x,))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_double_backward_raises(reduction):
    x, target, _, _ = make_inputs("NC", "float64")
    loss = ft.cross_entropy(x, target, reduction=reduction).sum()
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, x, create_graph=True)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_retain_graph_with_unit_upstream(reduction):
    """loss.backward() twice (retain_graph) accumulates twice the gradient, as torch does."""
    x, target, _, _ = make_inputs("NC", "float32")
    loss = ft.cross_entropy(x, target, reduction=reduction).sum()
    loss.backward(retain_graph=True)
    once = x.grad.clone()
    loss.backward()
    torch.testing.assert_close(x.grad, 2 * once)


def test_retain_graph_after_scaled_backward_raises():
    x, target, _, _ = make_inputs("NC", "float32")
    loss = ft.cross_entropy(x, target)
    loss.backward(torch.tensor(0.5), retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_graph"):
        loss.backward(torch.tensor(0.5))


def test_weight_is_a_constant():
    x, target, weight, _ = make_inputs("NC", "float32")
    weight = weight.float().requires_grad_()
    ft.cross_entropy(x, target, weight).backward()
    assert weight.grad is None and x.grad is not None


# --------------------------------------------------------------------------- inplace_backward


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_inplace_backward_writes_the_gradient_over_the_logits(reduction):
    x, target, weight, per_row = make_inputs("NC", "float32", -100)
    upstream = upstream_for(reduction, per_row)
    _, ref_grad = reference(x, target, weight, reduction=reduction, upstream=upstream)
    logits = x.detach().clone().requires_grad_()
    loss = ft.cross_entropy(logits, target, weight.float(), reduction=reduction, inplace_backward=True)
    loss.backward(upstream.to(loss.dtype))
    assert_grad_close(logits.grad.numpy(), ref_grad.numpy(), "float32")
    assert_grad_close(logits.detach().numpy(), ref_grad.numpy(), "float32", what="logits' storage")


def test_inplace_backward_on_an_intermediate():
    """The usual case: the logits come out of a layer whose backward does not need them."""
    torch.manual_seed(0)
    hidden = torch.randn(16, 8, requires_grad=True)
    head = torch.randn(8, 50, requires_grad=True)
    target = torch.randint(0, 50, (16,))
    F.cross_entropy(hidden @ head, target).backward()
    expected = hidden.grad.clone(), head.grad.clone()
    hidden.grad = head.grad = None
    ft.cross_entropy(hidden @ head, target, inplace_backward=True).backward()
    torch.testing.assert_close((hidden.grad, head.grad), expected)


def test_inplace_backward_refuses_logits_saved_by_another_op():
    """tanh saves its output for backward; overwriting it must fail loudly, not corrupt."""
    z = torch.randn(6, 7, requires_grad=True)
    loss = ft.cross_entropy(torch.tanh(z), torch.randint(0, 7, (6,)), inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_inplace_backward_with_spatial_layout_leaves_the_input():
    x, target, _, _ = make_inputs("NCd", "float32")
    before = x.detach().clone()
    _, ref_grad = reference(x, target)
    _, grad = fused_loss_and_grad(x, target, inplace_backward=True)
    assert_grad_close(grad.numpy(), ref_grad.numpy(), "float32")
    assert torch.equal(x.detach(), before)  # the permuted copy took the gradient


def test_inplace_backward_without_grad_leaves_the_input():
    x, target, _, _ = make_inputs("NC", "float32")
    frozen = x.detach().clone()
    ft.cross_entropy(frozen, target, inplace_backward=True)
    assert torch.equal(frozen, x.detach())


# --------------------------------------------------------------------------- module, errors


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_module_matches_torch_module(reduction):
    x, target, weight, per_row = make_inputs("NCd", "float32", 7)
    weight = weight.float()
    ours = ft.CrossEntropyLoss(weight, ignore_index=7, reduction=reduction, label_smoothing=0.05)
    theirs = torch.nn.CrossEntropyLoss(weight, ignore_index=7, reduction=reduction, label_smoothing=0.05)
    assert torch.equal(ours.state_dict()["weight"], theirs.state_dict()["weight"])
    upstream = upstream_for(reduction, per_row).float()
    ours(x, target).backward(upstream)
    got = x.grad.clone()
    x.grad = None
    ref_loss = theirs.double()(x.double(), target)
    ref_loss.backward(upstream.double())
    torch.testing.assert_close(ours(x, target), ref_loss.float(), rtol=2e-6, atol=2e-6)
    assert_grad_close(got.numpy(), x.grad.numpy(), "float32")
    assert "reduction" in repr(ours)


def test_module_refuses_deprecated_and_bad_arguments():
    with pytest.raises(TypeError, match="deprecated"):
        ft.CrossEntropyLoss(size_average=True)
    with pytest.raises(ValueError, match="reduction"):
        ft.CrossEntropyLoss(reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        ft.CrossEntropyLoss(label_smoothing=1.5)


def test_bad_inputs_raise_clear_errors():
    x = torch.randn(4, 5, 3, requires_grad=True)
    target = torch.randint(0, 5, (4, 3))
    with pytest.raises(ValueError, match=r"target must have shape \(4, 3\)"):
        ft.cross_entropy(x, target[:, 0])
    with pytest.raises(ValueError, match=r"target of probabilities must have the input's shape \(4, 5, 3\)"):
        ft.cross_entropy(x, torch.rand(4, 5))
    with pytest.raises(TypeError, match="class indices .* or probabilities"):
        ft.cross_entropy(x, target > 2)
    with pytest.raises(ValueError, match="ignore_index does not apply to probability targets"):
        ft.cross_entropy(x, torch.rand(4, 5, 3), ignore_index=1)
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
        ft.cross_entropy(torch.ones(4, 5, dtype=torch.int64), target[:, 0])
    bad = target.clone()
    bad[2, 1] = 5
    with pytest.raises(ValueError, match=r"target\[2, 1\] = 5 is out of range"):
        ft.cross_entropy(x, bad)
    with pytest.raises(ValueError, match="weight must have shape"):
        ft.cross_entropy(x, target, torch.ones(4))


def test_bfloat16_without_ml_dtypes(monkeypatch):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # makes `import ml_dtypes` fail
    x = torch.randn(3, 4, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="ml_dtypes"):
        ft.cross_entropy(x, torch.tensor([0, 1, 2]))


# --------------------------------------------------------------------------- training, compile


def train(loss_fn, steps=50, dtype=torch.float32):
    """A two-layer MLP on a fixed synthetic set, SGD from a fixed seed; returns the losses."""
    gen = torch.Generator().manual_seed(1234)
    features = torch.randn(256, 20, generator=gen, dtype=dtype)
    labels = (features[:, :10].argmax(1) + torch.randint(0, 2, (256,), generator=gen)) % 10
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).to(dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(model(features), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_training_matches_torch():
    ours = train(ft.cross_entropy)
    theirs = train(F.cross_entropy)
    assert ours[-1] < 0.75 * ours[0]  # it learns
    assert abs(ours[-1] - theirs[-1]) <= 1e-5, (ours[-1], theirs[-1])


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_compile_fullgraph(reduction):
    """The forward compiled as one graph (the custom ops opaque in it); backward through the
    graph AOT autograd derived, against the same model run eagerly. aot_eager, not inductor:
    inductor's C++ compile takes 15-25 s here, and the custom ops are opaque to it anyway."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(7)
    features, labels = torch.randn(32, 12, generator=gen), torch.randint(0, 9, (32,), generator=gen)
    labels[::5] = -100
    upstream = torch.tensor(0.5) if reduction == "mean" else torch.rand(32, generator=gen)

    def forward(model, features, labels):
        return ft.cross_entropy(model(features), labels, reduction=reduction, label_smoothing=0.1,
                                z_loss=1e-3, softcap=6.0, inplace_backward=True)

    results = []
    for run in (forward, torch.compile(forward, fullgraph=True, backend="aot_eager")):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 9))
        loss = run(model, features, labels)
        loss.backward(upstream)
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    torch.testing.assert_close(results[1], results[0], rtol=1e-6, atol=1e-7)


def test_torch_compile_without_grad():
    torch._dynamo.reset()
    x, target, weight, _ = make_inputs("NCd", "float32", -100)
    compiled = torch.compile(lambda x, t: ft.cross_entropy(x * 2, t, weight.float()), fullgraph=True,
                             backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, target), ft.cross_entropy(x * 2, target, weight.float()))


def test_tracers_record_the_custom_ops():
    """make_fx (a dispatch mode, not torch.compile) records each custom op, not its result as a
    constant: eager calls skip the op (fusedce/torch/_eager.py) only when nothing traces them.
    The traced graph, run on other inputs, gives what the function gives."""
    from torch.fx.experimental.proxy_tensor import make_fx

    gen = torch.Generator().manual_seed(7)
    t = torch.randint(0, 10, (8,), generator=gen)
    q = torch.rand(8, 10, generator=gen)
    w = torch.randn(10, 16, generator=gen)
    cases = {
        "fusedce.cross_entropy_fwd": (lambda x: ft.cross_entropy(x, t), (8, 10)),
        "fusedce.bce_with_logits_fwd": (lambda x: ft.binary_cross_entropy_with_logits(x, q), (8, 10)),
        "fusedce.linear_cross_entropy_fwd": (lambda h: ft.linear_cross_entropy(h, w, t), (8, 16)),
    }
    for op, (fn, shape) in cases.items():
        graph = make_fx(fn)(torch.randn(shape, generator=gen))
        assert op in graph.code, f"{op} is not in the traced graph:\n{graph.code}"
        other = torch.randn(shape, generator=gen)
        torch.testing.assert_close(graph(other), fn(other))


# --------------------------------------------------------------------------- CUDA (a GPU only)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("inplace_backward", [False, True])
def test_cuda_matches_torch(reduction, inplace_backward):
    pytest.importorskip("numba.cuda")
    x, target, weight, per_row = make_inputs("NCd", "float32", -100)
    upstream = upstream_for(reduction, per_row)
    ref_loss, ref_grad = reference(x, target, weight, reduction=reduction, label_smoothing=0.1, upstream=upstream)
    xc = x.detach().cuda().requires_grad_()
    loss = ft.cross_entropy(xc, target.cuda(), weight.float().cuda(), reduction=reduction,
                            label_smoothing=0.1, inplace_backward=inplace_backward)
    assert loss.is_cuda and loss.dtype == torch.float32
    loss.backward(upstream.float().cuda())
    assert_loss_close(loss.detach().cpu().double().numpy(), ref_loss.numpy(), "float32")
    assert_grad_close(xc.grad.cpu().double().numpy(), ref_grad.numpy(), "float32")


@cuda
def test_cuda_on_a_side_stream():
    pytest.importorskip("numba.cuda")
    x, target, _, _ = make_inputs("NC", "float32")
    _, ref_grad = reference(x, target)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        xc = (x.detach().cuda() * 1.0).requires_grad_()
        ft.cross_entropy(xc, target.cuda()).backward()
        grad = xc.grad.cpu()
    assert_grad_close(grad.double().numpy(), ref_grad.numpy(), "float32")

