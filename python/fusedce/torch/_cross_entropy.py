"""``cross_entropy`` / ``CrossEntropyLoss``: torch.nn.functional.cross_entropy on the fused
kernels, as torch custom ops with an autograd formula (see the package docstring for what
backward keeps and why)."""

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
    as_num_items,
    as_tensor,
    check_differentiable_once,
    constant_array,
    gradient_buffer,
    kernel_array,
    loss_dtype,
    loss_tensor,
    scaled_kept_gradient,
)


def _lse_dtype(x):
    """The dtype of the lse the forward keeps: the CPU API returns it in the compute dtype,
    the CUDA backend in float64."""
    return torch.float64 if x.dtype == torch.float64 or x.is_cuda else torch.float32


def _kernel_options(x, weight, ignore_index, reduction, label_smoothing, z_loss, softcap, num_items):
    """The kernels' keywords. num_items >= 0 (given): the kernels sum, _items_factor divides."""
    return dict(weight=constant_array(weight, x), ignore_index=ignore_index,
                reduction="sum" if num_items >= 0 else reduction, label_smoothing=label_smoothing, z_loss=z_loss,
                softcap=softcap or None)


def _items_factor(num_items):
    """1/num_items for the gradient-accumulation convention (0 over no items, as 'mean' over
    nothing), applied inside the fused pass as its grad_output; 1 when num_items is not given
    (-1)."""
    if num_items < 0:
        return 1.0
    return 1.0 / num_items if num_items else 0.0


# --------------------------------------------------------------------------- custom ops
# Both take the logits x as (..., C) and target as (...) class indices or (..., C)
# probabilities; softcap 0.0 means off.


def _cross_entropy_fwd_impl(x: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int,
                            reduction: str, label_smoothing: float, z_loss: float, softcap: float,
                            num_items: float, keep: str, inplace: bool) -> tuple[Tensor, Tensor]:
    """(loss, kept). keep='grad': kept is the gradient of the loss from the fused pass (with
    inplace=True it is written over x and kept is empty: an op's outputs may not alias its
    inputs, and the schema does not declare the write, which is why inplace is eager-only);
    keep='lse': kept is the per-row lse; keep='nothing': the loss alone, kept is empty.
    num_items >= 0: the sum over num_items (see _items_factor); -1: not given."""
    opts = _kernel_options(x, weight, ignore_index, reduction, label_smoothing, z_loss, softcap, num_items)
    factor = _items_factor(num_items)
    logits, labels = kernel_array(x), kernel_array(target)
    kept = x.new_empty(0)
    if keep == "grad":
        grad, where = gradient_buffer(x, inplace)
        loss, _ = fusedce.cross_entropy_with_grad(logits, labels, grad_output=factor, **where, **opts)
        if not inplace:
            kept = grad
    elif keep == "lse":
        loss, lse = fusedce.cross_entropy_forward(logits, labels, **opts)
        kept = as_tensor(lse, x.device)
    else:
        loss = fusedce.cross_entropy(logits, labels, **opts)
    if factor != 1.0:
        loss *= factor
    return loss_tensor(loss, x), kept


_cross_entropy_fwd_op = torch.library.custom_op("fusedce::cross_entropy_fwd", mutates_args=())(_cross_entropy_fwd_impl)


@_cross_entropy_fwd_op.register_fake
def _(x, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap, num_items, keep, inplace):
    loss = x.new_empty(x.shape[:-1] if reduction == "none" else (), dtype=loss_dtype(x))
    if keep == "grad" and not inplace:
        return loss, x.new_empty(x.shape)  # the kernels' gradient is contiguous
    if keep == "lse":
        return loss, x.new_empty(x.shape[:-1], dtype=_lse_dtype(x))
    return loss, x.new_empty(0)


def _gradient_from_lse(x, target, weight, lse, grad_loss, options, inplace):
    """One pass over the logits: the gradient of grad_loss . loss, the incoming gradient (a
    scalar, or one per row with reduction='none') applied inside the kernel, before a
    half-precision gradient is rounded."""
    opts = _kernel_options(x, weight, *options)
    grad, where = gradient_buffer(x, inplace)
    grad_loss = grad_loss.to(torch.float64) * _items_factor(options[-1])
    fusedce.cross_entropy_backward(kernel_array(x), kernel_array(target), kernel_array(lse),
                                   kernel_array(grad_loss.contiguous()), **where, **opts)
    return grad


def _cross_entropy_bwd_impl(x: Tensor, target: Tensor, weight: Tensor | None, lse: Tensor, grad_loss: Tensor,
                            ignore_index: int, reduction: str, label_smoothing: float, z_loss: float,
                            softcap: float, num_items: float) -> Tensor:
    options = (ignore_index, reduction, label_smoothing, z_loss, softcap, num_items)
    return _gradient_from_lse(x, target, weight, lse, grad_loss, options, inplace=False)


_cross_entropy_bwd_op = torch.library.custom_op("fusedce::cross_entropy_bwd", mutates_args=())(_cross_entropy_bwd_impl)
_cross_entropy_bwd = op_call(_cross_entropy_bwd_op, _cross_entropy_bwd_impl)


@_cross_entropy_bwd_op.register_fake
def _(x, target, weight, lse, grad_loss, ignore_index, reduction, label_smoothing, z_loss, softcap, num_items):
    return x.new_empty(x.shape)


def _setup_context(ctx, inputs, output):
    x, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap, num_items, keep, inplace = inputs
    _, kept = output
    ctx.mark_non_differentiable(kept)
    ctx.set_materialize_grads(False)  # no logits-sized zeros for kept's (absent) gradient
    ctx.keep, ctx.inplace, ctx.grad_scaled = keep, inplace, False
    ctx.options = (ignore_index, reduction, label_smoothing, z_loss, softcap, num_items)
    if keep == "grad":
        ctx.save_for_backward(x if inplace else kept)
    elif keep == "lse":
        ctx.save_for_backward(x, target, weight, kept)


def _target_gradient(x, target, weight, lse, grad_loss, options):
    """d(grad_loss . loss)/d q for probability targets q: (1 - e) w_k (lse - y_k) times the
    row's factor (torch differentiates its loss in the target too; distillation with a
    trainable teacher needs it). Torch ops: a rare path, and compiled graphs see through it."""
    _, reduction, label_smoothing, _, softcap, num_items = options
    compute = lse.dtype if lse.dtype == torch.float64 else torch.float32
    y = x.to(compute)
    if softcap:
        y = softcap * torch.tanh(y / softcap)
    factor = grad_loss.to(compute)
    if num_items >= 0:
        factor = factor * _items_factor(num_items)
    elif reduction == "mean":
        factor = factor / max(x.shape[:-1].numel(), 1)
    if reduction == "none":
        factor = factor.unsqueeze(-1)
    grad = (1.0 - label_smoothing) * (lse.to(compute).unsqueeze(-1) - y) * factor
    if weight is not None:
        grad = grad * weight.to(compute)
    return grad.to(target.dtype)


def _backward(ctx, grad_loss, _grad_kept):
    check_differentiable_once("cross_entropy")
    grad = grad_target = None
    if grad_loss is None:
        pass
    elif ctx.keep == "grad":
        grad = scaled_kept_gradient(ctx, grad_loss, "cross_entropy")
    else:
        x, target, weight, lse = ctx.saved_tensors
        if ctx.needs_input_grad[1]:  # before an inplace gradient overwrites x
            grad_target = _target_gradient(x, target, weight, lse, grad_loss, ctx.options)
        if not ctx.needs_input_grad[0]:
            pass
        elif ctx.inplace:
            grad = _gradient_from_lse(x, target, weight, lse, grad_loss, ctx.options, inplace=True)
        else:
            grad = _cross_entropy_bwd(x, target, weight, lse, grad_loss, *ctx.options)
    return grad, grad_target, None, None, None, None, None, None, None, None, None


_cross_entropy_fwd_op.register_autograd(_backward, setup_context=_setup_context)
_cross_entropy_fwd = autograd_op_call(_cross_entropy_fwd_op, _cross_entropy_fwd_impl, _setup_context, _backward)


# --------------------------------------------------------------------------- public API


def _is_dtensor(x):
    """A torch.distributed.tensor.DTensor (without importing that package for plain tensors)."""
    return type(x).__name__ == "DTensor" and type(x).__module__.startswith("torch.distributed")


def _classes_last(input, target):
    """torch's layouts, (C,) with target (), (N, C) with (N,), (N, C, d1, ...) with
    (N, d1, ...), or probability targets of the input's shape, as the kernels' (..., C) logits
    and (...) or (..., C) targets. Probabilities and logits of different dtypes are both
    taken to the promoted dtype, as torch computes them."""
    if input.ndim == 0:
        raise ValueError("input must have a class dimension: (C,), (N, C) or (N, C, d1, ...), got a 0-d tensor")
    if target.device != input.device:
        raise ValueError(f"target must be on the input's device {input.device}, got {target.device}")
    soft = target.is_floating_point()
    if soft:
        if target.shape != input.shape:
            raise ValueError(f"target of probabilities must have the input's shape {tuple(input.shape)}, "
                             f"got {tuple(target.shape)}")
        if target.dtype != input.dtype:
            common = torch.promote_types(input.dtype, target.dtype)
            input, target = input.to(common), target.to(common)
    elif target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target must hold class indices (an integer tensor) or probabilities (a floating "
                        f"tensor of the input's shape), got dtype {target.dtype}")
    else:
        batch_shape = input.shape[:1] + input.shape[2:] if input.ndim > 1 else torch.Size()
        if target.shape != batch_shape:
            raise ValueError(f"target must have shape {tuple(batch_shape)} for input of shape "
                             f"{tuple(input.shape)}, got {tuple(target.shape)}")
    if input.ndim > 2:
        input = input.movedim(1, -1).contiguous()
        if soft:
            target = target.movedim(1, -1).contiguous()
    return input, target


def _keep(x, target, reduction):
    """What the forward keeps for backward. The fused pass (loss and gradient at once, the
    gradient kept) is right only where the gradient can be scaled afterwards without loss:
    float32/float64 logits with a scalar upstream gradient. A float16 gradient computed as if
    the upstream gradient were 1 underflows before a loss scale (GradScaler's 2^16, say) can
    save it, and a bfloat16 one is rounded twice; so half precision keeps the lse and the
    backward pass applies the real upstream gradient in float32 before the one rounding. That
    backward reads the logits again but never reads and rewrites a kept gradient: 6 bytes per
    element in all against 8 for fused-then-scaled. A target that needs a gradient needs the
    lse too."""
    x_grad = x.requires_grad
    if not torch.is_grad_enabled() or not (x_grad or target.requires_grad):
        return "nothing"
    if reduction == "none" or x.dtype in HALF_DTYPES or target.requires_grad or not x_grad:
        return "lse"
    return "grad"


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                  *, z_loss=0.0, softcap=None, inplace_backward=False, num_items=None):
    """torch.nn.functional.cross_entropy on the fused kernels (see the package docstring).

    input: (C,), (N, C) or (N, C, d1, ...) float16/bfloat16/float32/float64 logits.
    target: class indices of shape (), (N,) or (N, d1, ...) (ignore_index rows count for
    nothing), or probabilities of the input's shape (differentiable, as in torch).
    weight: per-class weights (C,) on the input's device (a constant: no gradient).
    z_loss: adds z_loss * lse**2 per counted row, weighted like the cross-entropy term.
    softcap: logits -> softcap * tanh(logits / softcap) before the softmax.
    inplace_backward: write the gradient over the logits' storage (they must not be needed
    afterwards): no logits-sized buffer is allocated.
    num_items: with reduction 'mean', divide the sum by this count (a number, or a one-element
    tensor: read once, a synchronisation for a CUDA one) instead of the counted rows' weight:
    the gradient-accumulation convention, where the count covers every micro-batch of a step
    (and every data-parallel rank: fusedce.torch.distributed.global_num_items). Applied inside
    the fused pass, like the mean's own denominator.
    A DTensor input sharded on the class dimension (torch's loss_parallel layout) takes
    fusedce.torch.distributed's vocab-parallel path and returns a replicated DTensor.
    """
    if _is_dtensor(input):
        from .distributed._dtensor import cross_entropy as dtensor_cross_entropy

        return dtensor_cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing,
                                     z_loss=z_loss, softcap=softcap, num_items=num_items)
    if not isinstance(input, Tensor) or not isinstance(target, Tensor):
        raise TypeError(f"input and target must be torch tensors, got {type(input).__name__} "
                        f"and {type(target).__name__}")
    if input.dtype not in FLOAT_DTYPES:
        raise TypeError(f"input must be float16, bfloat16, float32 or float64, got {input.dtype}")
    reduction, label_smoothing, z_loss, softcap, ignore_index = _checks.check_options(
        reduction, label_smoothing, z_loss, softcap, ignore_index)
    num_items = as_num_items(num_items, reduction)
    if weight is not None:
        if not isinstance(weight, Tensor):
            raise TypeError(f"weight must be a torch tensor or None, got {type(weight).__name__}")
        if weight.device != input.device:
            raise ValueError(f"weight must be on the input's device {input.device}, got {weight.device}")
        weight = weight.detach()
    x, target = _classes_last(input, target)
    keep = _keep(x, target, reduction)
    inplace = bool(inplace_backward) and not torch.compiler.is_compiling() and x.requires_grad
    if inplace and keep != "nothing":
        x = x.contiguous()  # the kernels write rows in place; a no-op for contiguous logits
    loss, _ = _cross_entropy_fwd(x, target, weight, ignore_index, reduction, label_smoothing, z_loss,
                                 softcap, -1.0 if num_items is None else num_items, keep, inplace)
    return as_result_dtype(loss, x)


class CrossEntropyLoss(torch.nn.Module):
    """torch.nn.CrossEntropyLoss on the fused kernels; ``weight`` is a buffer, as in torch.
    The deprecated size_average/reduce arguments are refused: use reduction."""

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
                 label_smoothing=0.0, *, z_loss=0.0, softcap=None, inplace_backward=False):
        super().__init__()
        if size_average is not None or reduce is not None:
            raise TypeError("size_average and reduce are deprecated in torch and not supported here; "
                            "use reduction='none' | 'mean' | 'sum'")
        _checks.check_options(reduction, label_smoothing, z_loss, softcap, ignore_index)  # fail here, not on first use
        self.ignore_index, self.reduction, self.label_smoothing = ignore_index, reduction, label_smoothing
        self.z_loss, self.softcap, self.inplace_backward = z_loss, softcap, bool(inplace_backward)
        self.register_buffer("weight", weight)

    def forward(self, input, target):
        return cross_entropy(input, target, self.weight, self.ignore_index, self.reduction,
                             self.label_smoothing, z_loss=self.z_loss, softcap=self.softcap,
                             inplace_backward=self.inplace_backward)

    def extra_repr(self):
        return (f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, softcap={self.softcap}, "
                f"inplace_backward={self.inplace_backward}")
