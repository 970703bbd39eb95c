"""``binary_cross_entropy_with_logits`` / ``BCEWithLogitsLoss``: torch's on the fused kernel
(loss and gradient in one pass), as torch custom ops with an autograd formula."""

from __future__ import annotations

import torch
from torch import Tensor

import fusedce
from fusedce import _checks

from ._eager import autograd_op_call, op_call
from ._tensors import (
    FLOAT_DTYPES,
    HALF_DTYPES,
    as_result_dtype,
    check_differentiable_once,
    constant_array,
    empty_like,
    kernel_array,
    loss_dtype,
    loss_tensor,
    scaled_kept_gradient,
)


def _kernel_options(x, weight, pos_weight, reduction):
    return dict(weight=constant_array(weight, x), pos_weight=constant_array(pos_weight, x), reduction=reduction)


def _bce_fwd_impl(x: Tensor, target: Tensor, weight: Tensor | None, pos_weight: Tensor | None, reduction: str,
                  keep_grad: bool) -> tuple[Tensor, Tensor]:
    """(loss, kept): with keep_grad, kept is the gradient of the loss from the fused pass;
    else it is empty (backward then recomputes from the inputs)."""
    opts = _kernel_options(x, weight, pos_weight, reduction)
    logits, labels = kernel_array(x), kernel_array(target)
    if keep_grad:
        kept = empty_like(x)
        loss, _ = fusedce.binary_cross_entropy_with_logits_with_grad(logits, labels, out=kernel_array(kept), **opts)
    else:
        kept = x.new_empty(0)
        loss = fusedce.binary_cross_entropy_with_logits(logits, labels, **opts)
    return loss_tensor(loss, x), kept


_bce_fwd_op = torch.library.custom_op("fusedce::bce_with_logits_fwd", mutates_args=())(_bce_fwd_impl)


@_bce_fwd_op.register_fake
def _(x, target, weight, pos_weight, reduction, keep_grad):
    loss = x.new_empty(x.shape if reduction == "none" else (), dtype=loss_dtype(x))
    return loss, x.new_empty(x.shape if keep_grad else 0)


def _bce_bwd_impl(x: Tensor, target: Tensor, weight: Tensor | None, pos_weight: Tensor | None, grad_loss: Tensor,
                  reduction: str) -> Tensor:
    """The gradient of grad_loss . loss (a scalar, or per element with 'none') in one pass,
    the incoming gradient applied before a half-precision gradient is rounded."""
    grad = empty_like(x)
    fusedce.binary_cross_entropy_with_logits_with_grad(
        kernel_array(x), kernel_array(target), **_kernel_options(x, weight, pos_weight, reduction),
        grad_output=kernel_array(grad_loss.to(torch.float64).contiguous()), out=kernel_array(grad))
    return grad


_bce_bwd_op = torch.library.custom_op("fusedce::bce_with_logits_bwd", mutates_args=())(_bce_bwd_impl)
_bce_bwd = op_call(_bce_bwd_op, _bce_bwd_impl)


@_bce_bwd_op.register_fake
def _(x, target, weight, pos_weight, grad_loss, reduction):
    return x.new_empty(x.shape)


def _setup_context(ctx, inputs, output):
    x, target, weight, pos_weight, reduction, keep_grad = inputs
    _, kept = output
    ctx.mark_non_differentiable(kept)
    ctx.set_materialize_grads(False)
    ctx.keep_grad, ctx.reduction, ctx.grad_scaled = keep_grad, reduction, False
    if keep_grad:
        ctx.save_for_backward(kept)
    else:
        ctx.save_for_backward(x, target, weight, pos_weight)


def _target_gradient(x, weight, pos_weight, grad_loss, reduction, dtype):
    """d(grad_loss . loss)/dt = w (pw softplus(-x) - softplus(x)) times the element's factor, in
    torch ops: a rare path (a target that is itself trained)."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.to(compute)
    neg = torch.nn.functional.softplus(-x)
    if pos_weight is not None:
        neg = neg * pos_weight.to(compute)
    grad = (neg - torch.nn.functional.softplus(x)) * grad_loss.to(compute)
    if weight is not None:
        grad = grad * weight.to(compute)
    if reduction == "mean":
        grad = grad / max(x.numel(), 1)
    return grad.to(dtype)


def _backward(ctx, grad_loss, _grad_kept):
    check_differentiable_once("binary_cross_entropy_with_logits")
    grad = grad_target = None
    if grad_loss is None:
        pass
    elif ctx.keep_grad:
        grad = scaled_kept_gradient(ctx, grad_loss, "binary_cross_entropy_with_logits")
    else:
        x, target, weight, pos_weight = ctx.saved_tensors
        if ctx.needs_input_grad[1]:
            grad_target = _target_gradient(x, weight, pos_weight, grad_loss, ctx.reduction, target.dtype)
        if ctx.needs_input_grad[0]:
            grad = _bce_bwd(x, target, weight, pos_weight, grad_loss, ctx.reduction)
    return grad, grad_target, None, None, None, None


_bce_fwd_op.register_autograd(_backward, setup_context=_setup_context)
_bce_fwd = autograd_op_call(_bce_fwd_op, _bce_fwd_impl, _setup_context, _backward)


def _constant(value, name, x):
    """weight / pos_weight: a tensor on the input's device, taken as a constant. torch raises
    when either requires a gradient (its formula has none); so does this."""
    if value is None:
        return None
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch tensor or None, got {type(value).__name__}")
    if value.device != x.device:
        raise ValueError(f"{name} must be on the input's device {x.device}, got {value.device}")
    if value.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"{name} must not require a gradient: binary_cross_entropy_with_logits is "
                         f"not differentiable with respect to {name} (as in torch)")
    return value.detach()


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None, reduce=None,
                                     reduction="mean", pos_weight=None):
    """torch.nn.functional.binary_cross_entropy_with_logits on the fused kernel.

    input, target: any shape, the same (target: probabilities, differentiable as in torch).
    weight: broadcast to the input's shape; pos_weight: broadcast to the target's shape (one
    per class along the last dimension, or any shape that broadcasts); both constants.
    The loss comes back in the input's dtype (the promoted dtype of input and target).
    """
    if size_average is not None or reduce is not None:
        raise TypeError("size_average and reduce are deprecated in torch and not supported here; "
                        "use reduction='none' | 'mean' | 'sum'")
    if not isinstance(input, Tensor) or not isinstance(target, Tensor):
        raise TypeError(f"input and target must be torch tensors, got {type(input).__name__} "
                        f"and {type(target).__name__}")
    if input.dtype not in FLOAT_DTYPES:
        raise TypeError(f"input must be float16, bfloat16, float32 or float64, got {input.dtype}")
    if not target.is_floating_point():
        raise TypeError(f"target must be a floating tensor of probabilities, got dtype {target.dtype}")
    if target.shape != input.shape:
        raise ValueError(f"target must have the input's shape {tuple(input.shape)}, got {tuple(target.shape)}")
    if target.device != input.device:
        raise ValueError(f"target must be on the input's device {input.device}, got {target.device}")
    if not isinstance(reduction, str) or reduction not in _checks.REDUCTIONS:
        raise ValueError(f"reduction must be one of 'none', 'mean', 'sum', got {reduction!r}")
    weight = _constant(weight, "weight", input)
    pos_weight = _constant(pos_weight, "pos_weight", input)
    if target.dtype != input.dtype:
        common = torch.promote_types(input.dtype, target.dtype)
        input, target = input.to(common), target.to(common)
    x, target = input.contiguous(), target.contiguous()
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or target.requires_grad)
    # The fused pass keeps its gradient only where scaling it later loses nothing (see
    # _cross_entropy._keep): float32/float64, a scalar upstream gradient, the target constant.
    keep_grad = (needs_grad and reduction != "none" and x.dtype not in HALF_DTYPES
                 and x.requires_grad and not target.requires_grad)
    loss, _ = _bce_fwd(x, target, weight, pos_weight, reduction, keep_grad)
    return as_result_dtype(loss, x)


class BCEWithLogitsLoss(torch.nn.Module):
    """torch.nn.BCEWithLogitsLoss on the fused kernel; ``weight`` and ``pos_weight`` are
    buffers, as in torch."""

    def __init__(self, weight=None, size_average=None, reduce=None, reduction="mean", pos_weight=None):
        super().__init__()
        if size_average is not None or reduce is not None:
            raise TypeError("size_average and reduce are deprecated in torch and not supported here; "
                            "use reduction='none' | 'mean' | 'sum'")
        if not isinstance(reduction, str) or reduction not in _checks.REDUCTIONS:
            raise ValueError(f"reduction must be one of 'none', 'mean', 'sum', got {reduction!r}")
        self.reduction = reduction
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, input, target):
        return binary_cross_entropy_with_logits(input, target, self.weight, reduction=self.reduction,
                                                pos_weight=self.pos_weight)

    def extra_repr(self):
        return f"reduction={self.reduction!r}"
