"""The float64 reference against torch.nn.functional.cross_entropy (skipped without torch)."""

import numpy as np
import pytest

from fusedce import reference as ref

from cases import OPTION_NAMES, REDUCTIONS, grad_output_for, make_case

torch = pytest.importorskip("torch")
F = torch.nn.functional


def torch_loss_and_grad(x, t, reduction, grad_output, opts):
    """torch's loss and d(grad_output * loss)/dx, in float64; softcap and z_loss spelled out
    in torch ops since torch's cross_entropy has neither."""
    xt = torch.tensor(np.asarray(x, np.float64), requires_grad=True)
    y = xt
    if opts.get("softcap"):
        y = opts["softcap"] * torch.tanh(xt / opts["softcap"])
    weight = torch.tensor(opts["weight"]) if opts.get("weight") is not None else None
    ignore = opts.get("ignore_index", -100)
    tt = torch.tensor(t)
    loss_rows = F.cross_entropy(y, tt, weight=weight, ignore_index=ignore, reduction="none",
                                label_smoothing=opts.get("label_smoothing", 0.0))
    if opts.get("z_loss"):
        counted = tt != ignore
        w_t = weight[tt.clamp(min=0)] if weight is not None else torch.ones_like(loss_rows)
        loss_rows = loss_rows + torch.where(counted, opts["z_loss"] * w_t * torch.logsumexp(y, -1) ** 2, 0.0)
    if reduction == "none":
        loss = loss_rows
    elif reduction == "sum":
        loss = loss_rows.sum()
    else:
        loss = F.cross_entropy(y, tt, weight=weight, ignore_index=ignore, reduction="mean",
                               label_smoothing=opts.get("label_smoothing", 0.0))
        if opts.get("z_loss"):
            counted = tt != ignore
            w_t = weight[tt.clamp(min=0)] if weight is not None else torch.ones(len(t), dtype=torch.float64)
            denom = torch.where(counted, w_t, 0.0).sum()
            loss = loss + (torch.where(counted, opts["z_loss"] * w_t * torch.logsumexp(y, -1) ** 2, 0.0)).sum() / denom
    loss.backward(torch.as_tensor(grad_output, dtype=torch.float64) if reduction == "none" else torch.tensor(grad_output, dtype=torch.float64))
    return loss.detach().numpy(), xt.grad.numpy()


@pytest.mark.parametrize("opt", OPTION_NAMES)
@pytest.mark.parametrize("B,K", [(1, 1), (5, 2), (257, 17), (9, 1000)])
def test_reference_matches_torch(B, K, opt):
    x, t, kw, go = make_case(B, K, "float64", opt)
    for reduction in REDUCTIONS:
        g_out = grad_output_for(reduction, go)
        rloss, rgrad = ref.cross_entropy_with_grad(x, t, reduction=reduction, grad_output=g_out, **kw)
        tloss, tgrad = torch_loss_and_grad(x, t, reduction, g_out, kw)
        if reduction == "mean" and not np.any(t != kw.get("ignore_index", -100)):
            assert rloss == 0.0 and not rgrad.any()  # deliberate: torch gives NaN here
            continue
        np.testing.assert_allclose(rloss, tloss, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(rgrad, tgrad, rtol=1e-10, atol=1e-12)


def test_mean_over_zero_counted_rows_differs_from_torch_on_purpose():
    x = np.zeros((3, 4))
    t = np.full(3, -100)
    assert ref.cross_entropy(x, t) == 0.0
    assert np.isnan(F.cross_entropy(torch.tensor(x), torch.tensor(t)).item())
