"""torch's own test samples run through fusedce.torch: the OpInfo sample inputs of
nn.functional.cross_entropy and nn.functional.binary_cross_entropy_with_logits, and the
ModuleInfo inputs of nn.CrossEntropyLoss and nn.BCEWithLogitsLoss (torch's test suite drives
its own implementations with them). Each sample's loss and gradients (to the input, and to
the target where the sample asks for one) are compared with torch's function evaluated in
float64 on the same values, within fusedce's per-dtype bounds.

Skipped without torch or without expecttest (torch's testing internals import it).
"""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("expecttest")
from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402
from torch.testing._internal.common_modules import module_db  # noqa: E402

import fusedce.torch as ft  # noqa: E402

from tolerances import assert_grad_close, assert_loss_close  # noqa: E402

OPS = {"nn.functional.cross_entropy": ft.cross_entropy,
       "nn.functional.binary_cross_entropy_with_logits": ft.binary_cross_entropy_with_logits}
MODULES = {torch.nn.CrossEntropyLoss: ft.CrossEntropyLoss, torch.nn.BCEWithLogitsLoss: ft.BCEWithLogitsLoss}
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# the loss comes back in the input's dtype: a half loss is rounded once more than the reference
HALF_LOSS_RTOL = {torch.float16: 1e-3, torch.bfloat16: 8e-3}


def _float64(value):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.detach().double().requires_grad_(value.requires_grad)
    return value


def _fresh(value):
    """A leaf copy of a tensor, requiring a gradient where the sample's does."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone().requires_grad_(value.requires_grad)
    return value


def row_factor(theirs_sum, ref, ref_kwargs, expected, upstream):
    """What each row's gradient terms are scaled by before they cancel (tests/tolerances.py):
    5 |upstream| as test_properties.row_factor has it (a float32 p_j is a few ulps off, and
    c p_j - [j == t] cancels where p_t is near 1), over the mean's denominator, read off as
    sum / mean."""
    factor = 5.0 * upstream.abs().max().item()
    if expected.ndim == 0 and theirs_sum is not None:
        total = theirs_sum(*ref, **ref_kwargs).item()
        if expected.item() != 0.0:
            factor *= abs(expected.item() / total) if total else 1.0
    return factor


def compare(ours, theirs, args, kwargs, dtype, theirs_sum=None):
    """Run both on fresh copies of the sample (theirs in float64), backward a fixed upstream
    gradient, and compare the losses and the gradients of every input that asks for one.
    theirs_sum: theirs with reduction='sum' where theirs is a mean (for the gradient bound)."""
    mine = [_fresh(a) for a in args]
    ref = [_float64(a) for a in args]
    ref_kwargs = {k: _float64(v) for k, v in kwargs.items()}
    loss = ours(*mine, **kwargs)
    expected = theirs(*ref, **ref_kwargs)
    assert loss.dtype == args[0].dtype and loss.shape == expected.shape
    upstream = torch.linspace(-1.0, 2.0, expected.numel(), dtype=torch.float64).reshape(expected.shape)
    name = str(dtype).removeprefix("torch.")
    if theirs_sum is not None and expected.isnan() and theirs_sum(*ref, **ref_kwargs).item() == 0.0:
        # the one deliberate difference: a mean over nothing counted is 0 with a zero
        # gradient (torch: NaN)
        assert loss.item() == 0.0
        loss.backward()
        assert not any(a.grad.any() for a in mine if isinstance(a, torch.Tensor) and a.requires_grad)
        return
    got = loss.detach().double().numpy()
    if dtype in HALF_LOSS_RTOL:
        want = expected.detach().numpy()
        assert np.all(np.abs(got - want) <= HALF_LOSS_RTOL[dtype] * np.maximum(np.abs(want), 1.0))
    else:
        assert_loss_close(got, expected.detach().numpy(), name)
    if not any(isinstance(a, torch.Tensor) and a.requires_grad for a in mine):
        return
    factor = row_factor(theirs_sum, ref, ref_kwargs, expected, upstream)
    loss.backward(upstream.to(loss.dtype))
    expected.backward(upstream)
    for i, (a, r) in enumerate(zip(mine, ref)):
        if isinstance(a, torch.Tensor) and a.requires_grad:
            assert_grad_close(a.grad.double().numpy(), r.grad.numpy(), name, what=f"gradient of argument {i}",
                              row_factor=factor)


def op_samples():
    for op in op_db:
        if op.name in OPS:
            for dtype in DTYPES:
                for i, sample in enumerate(op.sample_inputs("cpu", dtype, requires_grad=True)):
                    yield pytest.param(op.name, dtype, sample, id=f"{op.name.split('.')[-1]}-{dtype}-{i}")


@pytest.mark.parametrize("name,dtype,sample", list(op_samples()))
def test_opinfo_samples(name, dtype, sample):
    if dtype == torch.bfloat16:
        pytest.importorskip("ml_dtypes")
    theirs = next(op for op in op_db if op.name == name).op
    reduction = sample.kwargs.get("reduction", "mean")
    theirs_sum = (lambda *a, **k: theirs(*a, **{**k, "reduction": "sum"})) if reduction == "mean" else None
    compare(OPS[name], theirs, [sample.input, *sample.args], sample.kwargs, dtype, theirs_sum)


def module_samples():
    for info in module_db:
        if info.module_cls in MODULES:
            for dtype in DTYPES:
                inputs = info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True, training=True)
                for i, module_input in enumerate(inputs):
                    yield pytest.param(info.module_cls, dtype, module_input,
                                       id=f"{info.module_cls.__name__}-{dtype}-{module_input.desc or i}")


@pytest.mark.parametrize("cls,dtype,module_input", list(module_samples()))
def test_moduleinfo_samples(cls, dtype, module_input):
    if dtype == torch.bfloat16:
        pytest.importorskip("ml_dtypes")
    ctor, forward = module_input.constructor_input, module_input.forward_input
    ours = MODULES[cls](*ctor.args, **ctor.kwargs)
    theirs = cls(*[_float64(a) for a in ctor.args], **{k: _float64(v) for k, v in ctor.kwargs.items()})
    for (k, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        torch.testing.assert_close(a.double(), b, msg=f"buffer {k}")
    summed = copy.deepcopy(theirs)
    summed.reduction = "sum"
    compare(ours, theirs, list(forward.args), forward.kwargs, dtype, summed if theirs.reduction == "mean" else None)
