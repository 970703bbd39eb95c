"""fusedce.torch with probability targets, and binary_cross_entropy_with_logits /
BCEWithLogitsLoss, against torch's own functions evaluated in float64 (skipped without torch).

Every option, layout and broadcast shape; gradients to the input and, where torch has them,
to the target; gradcheck; the modules; torch.compile(fullgraph=True).
"""

import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fusedce.torch as ft  # noqa: E402

from tolerances import assert_grad_close, assert_loss_close  # noqa: E402

F = torch.nn.functional
REDUCTIONS = ("none", "mean", "sum")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16}
# half results (the loss in the input's dtype) are rounded once more than the reference
HALF_LOSS_RTOL = {"float16": 1e-3, "bfloat16": 8e-3}


def generator(*key):
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def check(got_loss, got_grads, ref_loss, ref_grads, dtype):
    """The loss and each gradient against the float64 reference, per the dtype's bound."""
    got_loss, ref_loss = got_loss.detach().double().numpy(), ref_loss.detach()
    if dtype in HALF_LOSS_RTOL:
        ref = ref_loss.numpy()
        assert np.all(np.abs(got_loss - ref) <= HALF_LOSS_RTOL[dtype] * np.maximum(np.abs(ref), 1.0))
    else:
        assert_loss_close(got_loss, ref_loss.numpy(), dtype)
    for name, got, ref in zip(("input", "target"), got_grads, ref_grads):
        if ref is None:
            assert got is None, f"{name} has a gradient torch does not give"
        else:
            assert_grad_close(got.double().numpy(), ref.numpy(), dtype, what=f"{name} gradient")


def losses_and_grads(fn, x, t, upstream, **kw):
    """fn's loss and the gradients of upstream . loss to x and (if it requires one) t."""
    x = x.detach().clone().requires_grad_()
    t = t.detach().clone().requires_grad_(t.requires_grad)
    loss = fn(x, t, **kw)
    loss.backward(upstream.to(loss.dtype) if loss.ndim else upstream.to(loss.dtype).reshape(()))
    return loss, (x.grad, t.grad if t.requires_grad else None)


def float64_reference(fn, x, t, upstream, **kw):
    kw = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    return losses_and_grads(fn, x.double(), t.double().requires_grad_(t.requires_grad), upstream, **kw)


# --------------------------------------------------------------------------- probability targets

SOFT_LAYOUTS = {"NC": (9, 31), "C": (13,), "NCd": (4, 11, 3, 2)}


def soft_case(layout, dtype, key=""):
    gen = generator(layout, dtype, key)
    shape = SOFT_LAYOUTS[layout]
    class_axis = 0 if len(shape) == 1 else 1
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3).to(DTYPES[dtype])
    q = torch.softmax(torch.randn(shape, generator=gen, dtype=torch.float64) * 2, class_axis)
    q = q.to(DTYPES[dtype])
    weight = torch.rand(shape[class_axis], generator=gen, dtype=torch.float64) * 1.5 + 0.25
    upstream = torch.randn(shape[:class_axis] + shape[class_axis + 1:], generator=gen, dtype=torch.float64)
    return x, q, weight, upstream


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.15])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("target_grad", [False, True], ids=["target-constant", "target-trained"])
@pytest.mark.parametrize("layout", SOFT_LAYOUTS)
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_probability_targets_match_torch(dtype, layout, target_grad, weighted, label_smoothing, reduction):
    if dtype == "bfloat16":
        pytest.importorskip("ml_dtypes")
    x, q, weight, per_row = soft_case(layout, dtype)
    q.requires_grad_(target_grad)
    upstream = per_row if reduction == "none" else torch.tensor(0.75, dtype=torch.float64)
    kw = dict(weight=weight if weighted else None, reduction=reduction, label_smoothing=label_smoothing)
    ref = float64_reference(F.cross_entropy, x, q, upstream, **kw)
    if weighted:
        kw["weight"] = weight.to(x.dtype)
    got = losses_and_grads(ft.cross_entropy, x, q, upstream, **kw)
    assert got[0].dtype == x.dtype
    check(*got, *ref, dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_probability_targets_with_z_loss_and_softcap(reduction):
    """The extras, spelled out in torch ops for the oracle."""
    x, q, weight, per_row = soft_case("NCd", "float64", "extras")
    q.requires_grad_()
    upstream = per_row if reduction == "none" else torch.tensor(1.5, dtype=torch.float64)
    z, cap = 1e-2, 4.0

    def torch_loss(x, q, **kw):
        y = cap * torch.tanh(x / cap)
        loss = F.cross_entropy(y, q, weight=weight, label_smoothing=0.1, reduction="none")
        loss = loss + z * torch.logsumexp(y, dim=1) ** 2
        return loss if reduction == "none" else loss.sum() if reduction == "sum" else loss.mean()

    ref = losses_and_grads(torch_loss, x, q, upstream)
    got = losses_and_grads(ft.cross_entropy, x, q, upstream, weight=weight, label_smoothing=0.1,
                           reduction=reduction, z_loss=z, softcap=cap)
    check(*got, *ref, "float64")


def test_probability_targets_gradcheck():
    x, q, weight, _ = soft_case("NCd", "float64", "gradcheck")
    for reduction in REDUCTIONS:
        def loss_of(x, q):
            return ft.cross_entropy(x, q, weight, reduction=reduction, label_smoothing=0.1, z_loss=1e-2, softcap=5.0)

        assert torch.autograd.gradcheck(loss_of, (x.requires_grad_(), q.requires_grad_()))


def test_probability_targets_of_another_dtype_are_promoted_as_torch_does():
    x, q, _, _ = soft_case("NC", "float16", "promote")
    q32 = q.float()
    ours = ft.cross_entropy(x, q32)
    theirs = F.cross_entropy(x, q32)
    assert ours.dtype == theirs.dtype == torch.float32
    # against float64 (torch's own rounds its log_softmax to float16 first)
    exact = F.cross_entropy(x.double(), q32.double())
    assert_loss_close(ours.double().numpy(), exact.numpy(), "float32")


def test_probability_targets_module_and_inplace_backward():
    x, q, weight, _ = soft_case("NC", "float32", "module")
    weight = weight.float()
    ours = ft.CrossEntropyLoss(weight, label_smoothing=0.05, inplace_backward=True)
    theirs = torch.nn.CrossEntropyLoss(weight.double(), label_smoothing=0.05)
    logits = x.detach().clone().requires_grad_()
    ours(logits * 1.0, q).backward()  # inplace_backward on an intermediate
    x64 = x.double().requires_grad_()
    theirs(x64, q.double()).backward()
    assert_grad_close(logits.grad.numpy(), x64.grad.numpy(), "float32")


# --------------------------------------------------------------------------- binary cross-entropy

BCE_SHAPES = [(), (5,), (6, 5), (3, 4, 5)]


def bce_case(shape, dtype, key=""):
    gen = generator(shape, dtype, key)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 4).to(DTYPES[dtype])
    t = torch.rand(shape, generator=gen, dtype=torch.float64).to(DTYPES[dtype])
    t.view(-1)[::3] = (t.view(-1)[::3] > 0.5).to(t.dtype)  # some hard labels too
    upstream = torch.randn(shape, generator=gen, dtype=torch.float64)
    return x, t, upstream, gen


def broadcast_options(shape, gen):
    """weight and pos_weight shapes torch accepts for a target of `shape` (broadcast to it)."""
    classes = shape[-1] if shape else 1
    lead = shape[:-1]

    def rand(*s):
        return torch.rand(s, generator=gen, dtype=torch.float64) * 2 + 0.25

    options = {"plain": {}, "weight ()": {"weight": rand()}, "pos_weight ()": {"pos_weight": rand()}}
    if shape:
        options.update({
            "weight (1,)": {"weight": rand(1)},
            "weight (C,)": {"weight": rand(classes)},
            "pos_weight (C,)": {"pos_weight": rand(classes)},
            "weight full": {"weight": rand(*shape)},
            "pos_weight (1.., C)": {"pos_weight": rand(*((1,) * len(lead) + (classes,)))},
            "pos_weight full": {"pos_weight": rand(*shape)},
            "both": {"weight": rand(*shape), "pos_weight": rand(classes)},
        })
    if lead:
        options["pos_weight (N.., 1)"] = {"pos_weight": rand(*(lead + (1,)))}
        options["weight (N.., 1) + pos_weight (1, C)"] = {"weight": rand(*(lead + (1,))),
                                                           "pos_weight": rand(*((1,) * len(lead) + (classes,)))}
    return options


def bce_cases():
    for shape in BCE_SHAPES:
        for name in broadcast_options(shape, torch.Generator()):
            yield pytest.param(shape, name, id=f"{shape}-{name}")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("target_grad", [False, True], ids=["target-constant", "target-trained"])
@pytest.mark.parametrize("shape,option", list(bce_cases()))
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_bce_matches_torch(dtype, shape, option, target_grad, reduction):
    x, t, per_element, gen = bce_case(shape, dtype, option)
    kw = broadcast_options(shape, gen)[option]
    t.requires_grad_(target_grad)
    upstream = per_element if reduction == "none" else torch.tensor(0.75, dtype=torch.float64)
    ref = float64_reference(F.binary_cross_entropy_with_logits, x, t, upstream, reduction=reduction, **kw)
    got = losses_and_grads(ft.binary_cross_entropy_with_logits, x, t, upstream, reduction=reduction,
                           **{k: v.to(x.dtype) for k, v in kw.items()})
    assert got[0].dtype == x.dtype and got[0].shape == ref[0].shape
    check(*got, *ref, dtype)


def test_bce_bfloat16():
    pytest.importorskip("ml_dtypes")
    x, t, per_element, gen = bce_case((6, 5), "bfloat16")
    kw = {"pos_weight": torch.rand(5, generator=gen, dtype=torch.float64) + 0.5}
    for reduction in REDUCTIONS:
        upstream = per_element if reduction == "none" else torch.tensor(2.0, dtype=torch.float64)
        ref = float64_reference(F.binary_cross_entropy_with_logits, x, t, upstream, reduction=reduction, **kw)
        got = losses_and_grads(ft.binary_cross_entropy_with_logits, x, t, upstream, reduction=reduction,
                               pos_weight=kw["pos_weight"].bfloat16())
        check(*got, *ref, "bfloat16")


def test_bce_gradcheck():
    x, t, _, gen = bce_case((4, 5), "float64", "gradcheck")
    weight, pos_weight = torch.rand(4, 1, generator=gen, dtype=torch.float64), torch.rand(5, dtype=torch.float64) + 1
    for reduction in REDUCTIONS:
        def loss_of(x, t):
            return ft.binary_cross_entropy_with_logits(x, t, weight, reduction=reduction, pos_weight=pos_weight)

        assert torch.autograd.gradcheck(loss_of, (x.requires_grad_(), t.requires_grad_()))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_module_matches_torch_module(reduction):
    x, t, per_element, gen = bce_case((6, 5), "float32", "module")
    weight, pos_weight = torch.rand(5, generator=gen), torch.rand(1, 5, generator=gen) + 0.5
    ours = ft.BCEWithLogitsLoss(weight, reduction=reduction, pos_weight=pos_weight)
    theirs = torch.nn.BCEWithLogitsLoss(weight, reduction=reduction, pos_weight=pos_weight)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    upstream = per_element if reduction == "none" else torch.tensor(1.0, dtype=torch.float64)
    got = losses_and_grads(ours, x, t, upstream)
    ref = losses_and_grads(theirs.double(), x.double(), t.double(), upstream)
    check(*got, *ref, "float32")
    assert "reduction" in repr(ours)


def test_bce_bad_inputs_raise_clear_errors():
    x = torch.randn(4, 5, requires_grad=True)
    t = torch.rand(4, 5)
    with pytest.raises(ValueError, match=r"target must have the input's shape \(4, 5\), got \(5,\)"):
        ft.binary_cross_entropy_with_logits(x, t[0])
    with pytest.raises(TypeError, match="target must be a floating tensor"):
        ft.binary_cross_entropy_with_logits(x, t > 0.5)
    with pytest.raises(ValueError, match=r"pos_weight of shape \(4,\) does not broadcast to the logits' shape \(4, 5\)"):
        ft.binary_cross_entropy_with_logits(x, t, pos_weight=torch.ones(4))
    with pytest.raises(ValueError, match=r"weight of shape \(2, 4, 5\) would broadcast"):
        ft.binary_cross_entropy_with_logits(x, t, torch.ones(2, 4, 5))
    with pytest.raises(ValueError, match="pos_weight must not require a gradient"):
        ft.binary_cross_entropy_with_logits(x, t, pos_weight=torch.ones(5, requires_grad=True))
    with pytest.raises(TypeError, match="deprecated"):
        ft.BCEWithLogitsLoss(size_average=False)
    with pytest.raises(ValueError, match="reduction must be one of"):
        ft.binary_cross_entropy_with_logits(x, t, reduction="avg")


# --------------------------------------------------------------------------- no classes, compile


def test_no_classes():
    """K = 0 (see _checks.as_rows): the loss of every row is 0 and the gradient is empty where
    torch gives NaN or an empty result; class targets must all be ignored, as in torch."""
    x = torch.randn(3, 0, requires_grad=True)
    for target in (torch.full((3,), -100), torch.rand(3, 0)):
        for reduction in REDUCTIONS:
            x.grad = None
            loss = ft.cross_entropy(x, target, reduction=reduction)
            loss.sum().backward()
            assert not loss.detach().any() and x.grad.shape == (3, 0)
    with pytest.raises(ValueError, match=r"target\[0\] = 0 is out of range"):
        ft.cross_entropy(x, torch.zeros(3, dtype=torch.long))
    assert ft.binary_cross_entropy_with_logits(x, torch.rand(3, 0)).item() == 0.0


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_compile_fullgraph(reduction):
    """Probability targets and BCE in one compiled graph, against eager (aot_eager: see
    test_torch.py)."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(11)
    features = torch.randn(16, 12, generator=gen)
    teacher = torch.softmax(torch.randn(16, 9, generator=gen), -1)
    labels = (torch.rand(16, 9, generator=gen) < 0.3).float()
    pos_weight = torch.rand(9, generator=gen) + 0.5

    def forward(model, features):
        logits = model(features)
        distill = ft.cross_entropy(logits, teacher, reduction=reduction, label_smoothing=0.1)
        multi = ft.binary_cross_entropy_with_logits(logits, labels, reduction=reduction, pos_weight=pos_weight)
        return (distill.sum() + multi.sum()) * 3.0

    results = []
    for run in (forward, torch.compile(forward, fullgraph=True, backend="aot_eager")):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 9))
        loss = run(model, features)
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    torch.testing.assert_close(results[1], results[0], rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- CUDA (a GPU only)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cuda_probability_targets_and_bce(reduction):
    pytest.importorskip("numba.cuda")
    x, q, weight, per_row = soft_case("NCd", "float32", "cuda")
    upstream = per_row if reduction == "none" else torch.tensor(0.5, dtype=torch.float64)
    ref = float64_reference(F.cross_entropy, x, q, upstream, weight=weight, reduction=reduction)
    got = losses_and_grads(ft.cross_entropy, x.cuda(), q.cuda(), upstream.cuda(), weight=weight.float().cuda(),
                           reduction=reduction)
    check(got[0].cpu(), [g.cpu() if g is not None else None for g in got[1]], *ref, "float32")
    xb, t, per_element, gen = bce_case((6, 5), "float16", "cuda")
    upstream = per_element if reduction == "none" else torch.tensor(4096.0, dtype=torch.float64)
    ref = float64_reference(F.binary_cross_entropy_with_logits, xb, t, upstream, reduction=reduction)
    got = losses_and_grads(ft.binary_cross_entropy_with_logits, xb.cuda(), t.cuda(), upstream.cuda(),
                           reduction=reduction)
    check(got[0].cpu(), [g.cpu() if g is not None else None for g in got[1]], *ref, "float16")
