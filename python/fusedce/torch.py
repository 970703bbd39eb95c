"""PyTorch drop-in for ``torch.nn.functional.cross_entropy`` on fusedce's fused kernels.

    import fusedce.torch
    loss = fusedce.torch.cross_entropy(logits, target)             # as F.cross_entropy
    criterion = fusedce.torch.CrossEntropyLoss(ignore_index=-1)    # as nn.CrossEntropyLoss

Same arguments and results as torch's (class indices only: probability targets raise), plus
``z_loss``, ``softcap`` and ``inplace_backward``. One deliberate difference: 'mean' over zero
counted rows is 0 with a zero gradient (torch gives NaN).

CPU tensors reach the C kernels as zero-copy NumPy views; CUDA tensors go to the Numba CUDA
backend through ``__cuda_array_interface__`` (bfloat16 is CPU-only, and needs ml_dtypes).

What backward keeps, and memory ("a buffer" = one logits-sized array):
- reduction 'mean'/'sum': the forward computes loss and gradient in one fused pass and keeps
  only the gradient (the logits may be freed after the forward). backward multiplies it in
  place by the incoming scalar, skipped when that is 1 (``loss.backward()`` on the CPU).
  At most one extra buffer. Because of the in-place scaling, a second backward through the
  same graph (``retain_graph=True``) raises after one that scaled (by other than 1, or any
  on the GPU).
- reduction 'none': the forward computes loss and the per-row log-sum-exp and keeps the logits
  and the lse; backward computes the gradient for the per-row incoming gradients in one pass.
  One extra buffer, allocated in backward.
- ``inplace_backward=True``: the gradient is written over the logits' storage (in the forward
  for 'mean'/'sum', in backward for 'none'): no extra buffer. Only for logits nothing else
  needs afterwards (typically the LM head's output); autograd's version counter is bumped, so
  an op that saved the logits for its own backward raises instead of reading the gradient.
  Ignored under torch.compile (a compiled graph cannot express an op with a derivative that
  writes over its input) and when no gradient is computed.
- Inputs (N, C, d1, ...) are permuted to put the classes last, a copy that cannot be avoided
  (the kernels read rows of contiguous classes); ``inplace_backward`` then overwrites that copy.
- Without a gradient (``torch.no_grad()``, or logits that do not require one) only the loss is
  computed and nothing is kept.

torch.compile: the kernels are the custom ops ``fusedce::cross_entropy_fwd`` and
``fusedce::cross_entropy_bwd`` (opaque to the compiler, with fake implementations and an
autograd formula), so graphs need not break. Double backward raises (the gradient is not
itself differentiated).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

import fusedce
from fusedce import _checks

__all__ = ["cross_entropy", "CrossEntropyLoss"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# --------------------------------------------------------------------------- tensors <-> arrays


def _numpy_bfloat16():
    try:
        import ml_dtypes
    except ImportError:
        raise TypeError("bfloat16 tensors on the CPU need the ml_dtypes package "
                        "(pip install ml_dtypes, or fusedce[half])") from None
    return ml_dtypes.bfloat16


class _OnTorchStream:
    """A CUDA tensor's array interface naming torch's current stream (torch's own names none),
    so that the Numba kernels are queued after the work torch queued there."""

    def __init__(self, tensor, stream):
        self._tensor = tensor  # keeps the memory alive
        self.__cuda_array_interface__ = dict(tensor.__cuda_array_interface__, stream=stream, version=3)


def _kernel_array(tensor):
    """What the fusedce functions take, without a copy: a NumPy view of a CPU tensor; a CUDA
    tensor itself (or, on a non-default stream, its interface naming that stream)."""
    tensor = tensor.detach()
    if tensor.is_cuda:
        stream = torch.cuda.current_stream(tensor.device).cuda_stream
        return _OnTorchStream(tensor, stream) if stream else tensor
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(_numpy_bfloat16())
    return tensor.numpy()


def _as_tensor(array, device):
    """A per-row kernel result (float32/float64 NumPy or CUDA device array) as a tensor,
    without a copy."""
    if isinstance(array, np.ndarray):
        return torch.from_numpy(array)
    return torch.as_tensor(array, device=device)  # reads __cuda_array_interface__


def _loss_tensor(loss, x):
    """The loss in the logits' dtype, as torch returns it. The API gives a float for
    'mean'/'sum' and a float32/float64 array per row for 'none'."""
    if isinstance(loss, float):
        return torch.tensor(loss, dtype=x.dtype, device=x.device)
    return _as_tensor(loss, x.device).to(x.dtype)


def _lse_dtype(x):
    """The dtype of the lse the forward keeps: the CPU API returns it in the compute dtype,
    the CUDA backend in float64."""
    return torch.float64 if x.dtype == torch.float64 or x.is_cuda else torch.float32


def _kernel_options(x, weight, ignore_index, reduction, label_smoothing, z_loss, softcap):
    if weight is not None:
        weight = _kernel_array(weight if x.is_cuda else weight.to(torch.float64))
    return dict(weight=weight, ignore_index=ignore_index, reduction=reduction,
                label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap or None)


def _empty_like(x):
    """A fresh contiguous tensor of x's shape and dtype. On the CPU NumPy allocates it: NumPy
    asks for transparent huge pages and torch's allocator does not, and with 4 KiB pages the
    first touch of a fresh logits-sized buffer costs several times the kernel (512 MB: ~400 ms
    against ~55 ms measured here). On the GPU torch's caching allocator (not Numba's, which
    frees lazily)."""
    if x.is_cuda:
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)
    raw = np.empty(x.shape, f"i{x.element_size()}")  # same item size: reinterpreted below
    return torch.from_numpy(raw).view(x.dtype)


def _gradient_buffer(x, inplace):
    """(gradient tensor, keyword for the fusedce call): x itself with inplace, else a fresh one."""
    if inplace:
        torch.autograd.graph.increment_version(x)  # an op that saved x for backward must not read it
        return x, dict(inplace=True)
    grad = _empty_like(x)
    return grad, dict(out=_kernel_array(grad))


# --------------------------------------------------------------------------- custom ops
# Both take the logits x as (..., C) and target as (...); softcap 0.0 means off.


@torch.library.custom_op("fusedce::cross_entropy_fwd", mutates_args=())
def _cross_entropy_fwd(x: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int,
                       reduction: str, label_smoothing: float, z_loss: float, softcap: float,
                       keep: str, inplace: bool) -> tuple[Tensor, Tensor]:
    """(loss, kept). keep='grad': kept is the gradient of the loss from the fused pass (with
    inplace=True it is written over x and kept is empty: an op's outputs may not alias its
    inputs, and the schema does not declare the write, which is why inplace is eager-only);
    keep='lse': kept is the per-row lse; keep='nothing': the loss alone, kept is empty."""
    opts = _kernel_options(x, weight, ignore_index, reduction, label_smoothing, z_loss, softcap)
    logits, labels = _kernel_array(x), _kernel_array(target)
    kept = x.new_empty(0)
    if keep == "grad":
        grad, where = _gradient_buffer(x, inplace)
        loss, _ = fusedce.cross_entropy_with_grad(logits, labels, **where, **opts)
        if not inplace:
            kept = grad
    elif keep == "lse":
        loss, lse = fusedce.cross_entropy_forward(logits, labels, **opts)
        kept = _as_tensor(lse, x.device)
    else:
        loss = fusedce.cross_entropy(logits, labels, **opts)
    return _loss_tensor(loss, x), kept


@_cross_entropy_fwd.register_fake
def _(x, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap, keep, inplace):
    loss = x.new_empty(x.shape[:-1] if reduction == "none" else ())
    if keep == "grad" and not inplace:
        return loss, x.new_empty(x.shape)  # the kernels' gradient is contiguous
    if keep == "lse":
        return loss, x.new_empty(x.shape[:-1], dtype=_lse_dtype(x))
    return loss, x.new_empty(0)


def _gradient_from_lse(x, target, weight, lse, grad_loss, options, inplace):
    """One pass over the logits: the gradient of sum(grad_loss * loss) for reduction='none'."""
    opts = _kernel_options(x, weight, *options)
    grad, where = _gradient_buffer(x, inplace)
    fusedce.cross_entropy_backward(_kernel_array(x), _kernel_array(target), _kernel_array(lse),
                                   _kernel_array(grad_loss.to(torch.float64).contiguous()), **where, **opts)
    return grad


@torch.library.custom_op("fusedce::cross_entropy_bwd", mutates_args=())
def _cross_entropy_bwd(x: Tensor, target: Tensor, weight: Tensor | None, lse: Tensor, grad_loss: Tensor,
                       ignore_index: int, reduction: str, label_smoothing: float, z_loss: float,
                       softcap: float) -> Tensor:
    options = (ignore_index, reduction, label_smoothing, z_loss, softcap)
    return _gradient_from_lse(x, target, weight, lse, grad_loss, options, inplace=False)


@_cross_entropy_bwd.register_fake
def _(x, target, weight, lse, grad_loss, ignore_index, reduction, label_smoothing, z_loss, softcap):
    return x.new_empty(x.shape)


def _setup_context(ctx, inputs, output):
    x, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap, keep, inplace = inputs
    _, kept = output
    ctx.mark_non_differentiable(kept)
    ctx.set_materialize_grads(False)  # no logits-sized zeros for kept's (absent) gradient
    ctx.keep, ctx.inplace, ctx.grad_scaled = keep, inplace, False
    ctx.options = (ignore_index, reduction, label_smoothing, z_loss, softcap)
    if keep == "grad":
        ctx.save_for_backward(x if inplace else kept)
    elif keep == "lse":
        ctx.save_for_backward(x, target, weight, kept)


def _is_one(grad_loss):
    """True when the incoming gradient is known to be exactly 1 without a device sync."""
    return (not torch.compiler.is_compiling() and grad_loss.device.type == "cpu"
            and grad_loss.item() == 1.0)


def _scaled_gradient(ctx, grad_loss):
    """The gradient kept by the fused forward, times the incoming scalar, in place."""
    if ctx.grad_scaled:
        raise RuntimeError(
            "fusedce.torch.cross_entropy: backward ran twice through the same graph "
            "(retain_graph=True) after an earlier backward scaled the gradient kept by the "
            "fused forward in place (reduction 'mean'/'sum', an incoming gradient other than 1, "
            "or any on the GPU); compute the loss again for each backward.")
    (grad,) = ctx.saved_tensors
    if not _is_one(grad_loss):
        grad.mul_(grad_loss)
        ctx.grad_scaled = True
    return grad


def _backward(ctx, grad_loss, _grad_kept):
    if torch.is_grad_enabled():
        # once_differentiable would let this through when the incoming gradient is a constant,
        # leaving a gradient that silently does not depend on the logits.
        raise RuntimeError("fusedce.torch.cross_entropy is differentiable once: backward with "
                           "create_graph=True (double backward) is not supported")
    if grad_loss is None:
        grad = None
    elif ctx.keep == "grad":
        grad = _scaled_gradient(ctx, grad_loss)
    else:
        x, target, weight, lse = ctx.saved_tensors
        if ctx.inplace:
            grad = _gradient_from_lse(x, target, weight, lse, grad_loss, ctx.options, inplace=True)
        else:
            grad = _cross_entropy_bwd(x, target, weight, lse, grad_loss, *ctx.options)
    return grad, None, None, None, None, None, None, None, None, None


_cross_entropy_fwd.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- public API


def _classes_last(input, target):
    """torch's layouts, (C,) with target (), (N, C) with (N,), (N, C, d1, ...) with
    (N, d1, ...), as the kernels' (..., C) logits and (...) targets."""
    if input.ndim == 0:
        raise ValueError("input must have a class dimension: (C,), (N, C) or (N, C, d1, ...), got a 0-d tensor")
    if target.is_floating_point() or target.is_complex():
        raise TypeError(f"target must hold class indices (an integer tensor), got dtype {target.dtype} "
                        "(probability targets are not supported)")
    batch_shape = input.shape[:1] + input.shape[2:] if input.ndim > 1 else torch.Size()
    if target.shape != batch_shape:
        raise ValueError(f"target must have shape {tuple(batch_shape)} for input of shape "
                         f"{tuple(input.shape)}, got {tuple(target.shape)}")
    if target.device != input.device:
        raise ValueError(f"target must be on the input's device {input.device}, got {target.device}")
    if input.ndim > 2:
        input = input.movedim(1, -1).contiguous()
    return input, target


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                  *, z_loss=0.0, softcap=None, inplace_backward=False):
    """torch.nn.functional.cross_entropy on the fused kernels (see the module docstring).

    input: (C,), (N, C) or (N, C, d1, ...) float16/bfloat16/float32/float64 logits.
    target: class indices of shape (), (N,) or (N, d1, ...); ignore_index rows count for nothing.
    weight: per-class weights (C,) on the input's device (a constant: no gradient).
    z_loss: adds z_loss * lse**2 per counted row, weighted like the cross-entropy term.
    softcap: logits -> softcap * tanh(logits / softcap) before the softmax.
    inplace_backward: write the gradient over the logits' storage (they must not be needed
    afterwards): no logits-sized buffer is allocated.
    """
    if not isinstance(input, Tensor) or not isinstance(target, Tensor):
        raise TypeError(f"input and target must be torch tensors, got {type(input).__name__} "
                        f"and {type(target).__name__}")
    if input.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"input must be float16, bfloat16, float32 or float64, got {input.dtype}")
    reduction, label_smoothing, z_loss, softcap, ignore_index = _checks.check_options(
        reduction, label_smoothing, z_loss, softcap, ignore_index)
    if weight is not None:
        if not isinstance(weight, Tensor):
            raise TypeError(f"weight must be a torch tensor or None, got {type(weight).__name__}")
        if weight.device != input.device:
            raise ValueError(f"weight must be on the input's device {input.device}, got {weight.device}")
        weight = weight.detach()
    x, target = _classes_last(input, target)
    if torch.is_grad_enabled() and x.requires_grad:
        keep = "lse" if reduction == "none" else "grad"
    else:
        keep = "nothing"
    inplace = bool(inplace_backward) and not torch.compiler.is_compiling()
    if inplace and keep != "nothing":
        x = x.contiguous()  # the kernels write rows in place; a no-op for contiguous logits
    loss, _ = _cross_entropy_fwd(x, target, weight, ignore_index, reduction, label_smoothing, z_loss,
                                 softcap, keep, inplace)
    return loss


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
