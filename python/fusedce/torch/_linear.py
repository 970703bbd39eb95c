"""``linear_cross_entropy`` / ``LinearCrossEntropyLoss``: torch.nn.functional.linear_cross_entropy
on fusedce's chunked loop (fusedce._linear): torch's BLAS (or cuBLAS) for the three GEMMs, the
fused kernel on each chunk's logits, never the whole logits tensor.

What the forward keeps:
- float32/float64, reduction 'mean'/'sum', a constant target: the loop runs once, in the
  forward, and keeps the three gradients (of the loss, before the upstream gradient);
  backward multiplies them by the incoming scalar in place. Three GEMMs in all.
- float16/bfloat16, reduction 'none', or anything else: the forward computes the loss alone
  (one GEMM per chunk) and keeps the inputs; backward runs the loop again with the real
  upstream gradient applied inside the kernel, before any half-precision rounding, and
  per-row gradients for 'none' exact. Four GEMMs in all. The gradient of a half-precision
  weight is accumulated over the chunks in float32 and rounded once at the end.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fusedce import _checks, _linear

from ._eager import autograd_op_call, op_call
from ._tensors import (
    FLOAT_DTYPES,
    HALF_DTYPES,
    as_result_dtype,
    check_differentiable_once,
    as_num_items,
    constant_array,
    is_one,
    kernel_array,
    loss_dtype,
)


class TorchOps:
    """fusedce._linear's ChunkOps on torch tensors (any device): torch.matmul / addmm for the
    GEMMs. `need` says which of (input, weight, bias) gradients to compute."""

    def __init__(self, x, need=(True, True, True)):
        self.dtype, self.device = x.dtype, x.device
        self.accumulate = torch.float64 if x.dtype == torch.float64 else torch.float32
        self.need = need

    def shape(self, a):
        return tuple(a.shape)

    kernel_array = staticmethod(kernel_array)

    def to_host(self, a):
        if isinstance(a, np.ndarray):
            return a
        return torch.as_tensor(a, device=self.device).cpu().numpy()  # a CUDA loss per chunk

    def take(self, a, picked):
        if isinstance(picked, np.ndarray):
            picked = torch.from_numpy(picked).to(a.device)
        return a[picked]

    def logits_buffer(self, rows, vocab):
        return torch.empty((rows, vocab), dtype=self.dtype, device=self.device)

    def linear(self, x_c, w, bias, out):
        if bias is None:
            torch.matmul(x_c, w.T, out=out)
        else:
            torch.addmm(bias, x_c, w.T, out=out)

    def zero_grads(self, call, want_grad):
        if not want_grad:
            return None
        vocab, hidden = call.w.shape
        need_x, need_w, need_b = self.need
        # the weight's gradient sums over every chunk: float32 for half precision
        w_dtype = self.accumulate if self.dtype in HALF_DTYPES else self.dtype
        return (torch.zeros((call.x.shape[0], hidden), dtype=self.dtype, device=self.device) if need_x else None,
                torch.zeros((vocab, hidden), dtype=w_dtype, device=self.device) if need_w else None,
                torch.zeros(vocab, dtype=self.accumulate, device=self.device)
                if need_b and call.bias is not None else None)

    def backward_gemms(self, grads, dlogits, x_c, w, picked, runs):
        grad_x, grad_w, grad_b = grads
        vocab = w.shape[0]
        runs = [(0, vocab)] if runs is None else runs
        if grad_x is not None:
            if runs == [(0, vocab)] and isinstance(picked, slice):
                torch.matmul(dlogits, w, out=grad_x[picked])
            else:
                part = torch.zeros((dlogits.shape[0], w.shape[1]), dtype=grad_x.dtype, device=self.device)
                for a, b in runs:
                    part.addmm_(dlogits[:, a:b], w[a:b])
                grad_x[self._index(picked)] = part
        for a, b in runs:
            d = dlogits[:, a:b]
            if grad_w is not None:
                if grad_w.dtype == d.dtype:
                    grad_w[a:b].addmm_(d.T, x_c)
                else:  # half inputs, float32 sums: the chunk's factors upcast (chunk-sized)
                    grad_w[a:b].addmm_(d.T.to(grad_w.dtype), x_c.to(grad_w.dtype))
            if grad_b is not None:
                grad_b[a:b] += d.sum(dim=0, dtype=grad_b.dtype)

    def _index(self, picked):
        return torch.from_numpy(picked).to(self.device) if isinstance(picked, np.ndarray) else picked

    def block_max_abs(self, dlogits, scale, block):
        magnitude = dlogits.abs().to(self.accumulate)
        if isinstance(scale, (np.ndarray, Tensor)) and np.ndim(scale):
            factor = torch.as_tensor(scale, device=self.device).abs().to(self.accumulate)
            magnitude /= torch.where(factor == 0, 1.0, factor)[:, None]
        elif scale:
            magnitude /= abs(float(scale))
        starts = range(0, dlogits.shape[1], block)
        return np.array([magnitude[:, a:a + block].max().item() if dlogits.shape[0] else 0.0 for a in starts])

    def finish_grads(self, grads):
        return tuple(None if g is None else g.to(self.dtype) for g in grads)


def _call(x, w, target, bias, weight, ignore_index, reduction, label_smoothing, z_loss, softcap, chunk_size,
          grad_filter=0.0, num_items=-1.0):
    """The LinearCall of checked tensors (x (N, H), target (N,) or (N, V)); num_items >= 0
    replaces the mean's denominator."""
    vocab = w.shape[0]
    soft = target.is_floating_point()
    counted = None
    denominator = 1.0
    if not soft:
        mask = target != ignore_index
        if reduction == "mean":
            w_t = weight[target[mask]].to(torch.float64) if weight is not None else None
            denominator = float(w_t.sum()) if w_t is not None else float(mask.sum())
        if not bool(mask.all()):
            counted = mask.nonzero().flatten().cpu().numpy()
    elif reduction == "mean":
        denominator = float(x.shape[0])
    if reduction == "mean" and num_items >= 0:
        denominator = num_items
    return _linear.LinearCall(
        x=x, w=w, bias=bias, target=target, weight=constant_array(weight, x), batch_shape=(x.shape[0],),
        counted=counted, options=dict(ignore_index=ignore_index, label_smoothing=label_smoothing,
                                      z_loss=z_loss, softcap=softcap or None),
        reduction=reduction, denominator=denominator,
        # half precision: the budget counts the chunk's float32 copy for the weight's gradient
        chunk_rows=_linear.chunk_rows_for(chunk_size or None, vocab, max(x.element_size(), 4), x.shape[0]),
        grad_filter=grad_filter)


def _loss_tensor(loss, x):
    if isinstance(loss, float):
        return torch.tensor(loss, dtype=loss_dtype(x), device=x.device)
    return torch.from_numpy(loss).to(device=x.device, dtype=loss_dtype(x))


def _absent(x):
    return x.new_empty(0)


# --------------------------------------------------------------------------- custom ops


def _fwd_impl(x: Tensor, w: Tensor, target: Tensor, bias: Tensor | None, weight: Tensor | None, batch_shape: list[int],
              ignore_index: int,
              reduction: str, label_smoothing: float, z_loss: float, softcap: float, chunk_size: int,
              grad_filter: float, num_items: float, keep: list[bool]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss, grad_x, grad_w, grad_b). keep: which gradients the fused forward computes and
    keeps (those of the loss itself: backward scales them); none kept: the loss alone, the
    gradients empty. target: (N,) class indices or (N, V) probabilities."""
    _check_values(target, weight, batch_shape, w.shape[0], ignore_index)
    call = _call(x, w, target, bias, weight, ignore_index, reduction, label_smoothing, z_loss, softcap,
                 chunk_size, grad_filter, num_items)
    want = any(keep)
    loss, *grads = _linear.run(call, TorchOps(x, tuple(keep)), grad_scale=1.0 if want else None)
    return (_loss_tensor(loss, x), *[g if g is not None else _absent(x) for g in grads])


_fwd_op = torch.library.custom_op("fusedce::linear_cross_entropy_fwd", mutates_args=())(_fwd_impl)


@_fwd_op.register_fake
def _(x, w, target, bias, weight, batch_shape, ignore_index, reduction, label_smoothing, z_loss, softcap, chunk_size,
      grad_filter, num_items, keep):
    loss = x.new_empty(x.shape[:1] if reduction == "none" else (), dtype=loss_dtype(x))
    shapes = (x.shape, w.shape, w.shape[:1] if bias is not None else (0,))
    return (loss, *[x.new_empty(s if k else (0,)) for s, k in zip(shapes, keep)])


def _bwd_impl(x: Tensor, w: Tensor, target: Tensor, bias: Tensor | None, weight: Tensor | None, grad_loss: Tensor,
              ignore_index: int, reduction: str, label_smoothing: float, z_loss: float, softcap: float,
              chunk_size: int, grad_filter: float, num_items: float, need: list[bool]) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients of grad_loss . loss: the loop again, the upstream gradient (scalar, or
    per row for 'none') applied in the kernel before a half-precision gradient is rounded."""
    call = _call(x, w, target, bias, weight, ignore_index, reduction, label_smoothing, z_loss, softcap,
                 chunk_size, grad_filter, num_items)
    scale = grad_loss.detach().to(torch.float64)
    if reduction != "none":
        scale = float(scale)
    else:  # per row: a NumPy view on the CPU, the tensor itself on the GPU (sliced per chunk)
        scale = scale.contiguous() if scale.is_cuda else scale.numpy()
    _, *grads = _linear.run(call, TorchOps(x, tuple(need)), grad_scale=scale)
    return tuple(g if g is not None else _absent(x) for g in grads)


_bwd_op = torch.library.custom_op("fusedce::linear_cross_entropy_bwd", mutates_args=())(_bwd_impl)
_bwd = op_call(_bwd_op, _bwd_impl)


@_bwd_op.register_fake
def _(x, w, target, bias, weight, grad_loss, ignore_index, reduction, label_smoothing, z_loss, softcap,
      chunk_size, grad_filter, num_items, need):
    shapes = (x.shape, w.shape, w.shape[:1] if bias is not None else (0,))
    return tuple(x.new_empty(s if n else (0,)) for s, n in zip(shapes, need))


def _setup_context(ctx, inputs, output):
    x, w, target, bias, weight, _, *options, keep = inputs
    _, *kept = output
    ctx.mark_non_differentiable(*kept)
    ctx.set_materialize_grads(False)
    ctx.fused, ctx.scaled, ctx.options, ctx.has_bias = any(keep), False, options, bias is not None
    if ctx.fused:
        ctx.save_for_backward(*kept)
    else:
        ctx.save_for_backward(x, w, target, bias, weight)


def _backward(ctx, grad_loss, *_):
    check_differentiable_once("linear_cross_entropy")
    if grad_loss is None:
        return (None,) * 15
    need = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[3]]
    if ctx.fused:
        if ctx.scaled:
            raise RuntimeError("fusedce.torch.linear_cross_entropy: backward ran twice through the same graph "
                               "(retain_graph=True) after an earlier backward scaled the kept gradients in "
                               "place; compute the loss again for each backward.")
        grads = ctx.saved_tensors
        if not is_one(grad_loss):
            for g in grads:
                g.mul_(grad_loss)
            ctx.scaled = True
    else:
        x, w, target, bias, weight = ctx.saved_tensors
        grads = _bwd(x, w, target, bias, weight, grad_loss, *ctx.options, need)
    gx, gw, gb = (g if n else None for g, n in zip(grads, need))
    return gx, gw, None, gb, None, None, None, None, None, None, None, None, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)
_fwd = autograd_op_call(_fwd_op, _fwd_impl, _setup_context, _backward)


# --------------------------------------------------------------------------- public API


def _check(input, linear_weight, target, linear_bias, weight):
    for name, t in (("input", input), ("linear_weight", linear_weight), ("target", target)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch tensor, got {type(t).__name__}")
    for name, t in (("linear_bias", linear_bias), ("weight", weight)):
        if t is not None and not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch tensor or None, got {type(t).__name__}")
    if input.dtype not in FLOAT_DTYPES:
        raise TypeError(f"input must be float16, bfloat16, float32 or float64, got {input.dtype}")
    for name, t in (("linear_weight", linear_weight), ("target", target), ("linear_bias", linear_bias),
                    ("weight", weight)):
        if t is not None and t.device != input.device:
            raise ValueError(f"{name} must be on the input's device {input.device}, got {t.device}")
    _linear.check_shapes(tuple(input.shape), str(input.dtype), tuple(linear_weight.shape), str(linear_weight.dtype),
                         None if linear_bias is None else (tuple(linear_bias.shape), str(linear_bias.dtype)),
                         None if weight is None else tuple(weight.shape))


def _flat_target(target, batch_shape, vocab, ignore_index):
    """target as (N,) class indices (range-checked) or (N, V) probabilities."""
    if target.is_floating_point():
        if tuple(target.shape) != tuple(batch_shape) + (vocab,):
            raise ValueError(f"target of probabilities must have shape {tuple(batch_shape) + (vocab,)}, "
                             f"got {tuple(target.shape)}")
        _checks.check_ignore_index_unused(ignore_index)
        if target.requires_grad and torch.is_grad_enabled():
            raise ValueError("linear_cross_entropy: a probability target that requires a gradient is not "
                             "supported (its gradient is logits-sized, which this function exists to avoid); "
                             "detach the target")
        return target.detach().reshape(-1, vocab)
    if target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target must hold class indices (an integer tensor) or probabilities, got {target.dtype}")
    if tuple(target.shape) != tuple(batch_shape):
        raise ValueError(f"target must have shape {tuple(batch_shape)} (the input's batch shape), "
                         f"got {tuple(target.shape)}")
    return target.reshape(-1)


def _check_values(target, weight, batch_shape, vocab, ignore_index):
    """The checks that read values (inside the custom op, before any work: a compiled graph
    cannot branch on data): class indices in range, finite class weights."""
    if weight is not None:
        _checks.check_finite(weight.to(torch.float64).cpu().numpy(), "weight")
    if target.is_floating_point():
        return
    bad = (target != ignore_index) & ((target < 0) | (target >= vocab))
    if bool(bad.any()):
        first = int(bad.nonzero()[0])
        where = np.unravel_index(first, tuple(batch_shape)) if len(batch_shape) else ()
        index = f"[{', '.join(str(int(i)) for i in where)}]" if len(batch_shape) else ""
        raise ValueError(f"target{index} = {int(target[first])} is out of range: class indices must be in "
                         f"[0, {vocab}) or equal ignore_index={ignore_index}")


def linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, weight=None, reduction="mean",
                         ignore_index=-100, label_smoothing=0.0, z_loss=0.0, softcap=None, chunk_size=None,
                         grad_filter=None, options=None, num_items=None):
    """torch.nn.functional.linear_cross_entropy without the logits: cross_entropy of
    input @ linear_weight.T + linear_bias, a chunk of rows at a time.

    input (..., H) (torch: (H,) or (N, H)); linear_weight (V, H); linear_bias (V,); target class
    indices (...) or probabilities (..., V); weight: class weights (V,), constants. Autograd to
    input, linear_weight and linear_bias (a weight tied to an embedding accumulates both).
    z_loss, softcap as in cross_entropy. chunk_size: rows per chunk (default: a 64 MiB logits
    buffer). grad_filter (opt-in): skip the backward GEMMs over blocks of 1024 classes whose
    gradient is below it (see fusedce.linear_cross_entropy_with_grad). options: torch's
    LinearCrossEntropyOptions, accepted for drop-in use; its batch_chunk_size becomes chunk_size
    when that is not given (the rest concerns torch's own implementation). num_items: with
    reduction 'mean', the sum over this count instead of the counted rows' weight (as in
    fusedce.torch.cross_entropy).
    """
    _check(input, linear_weight, target, linear_bias, weight)
    if ignore_index is None:  # torch's default here, which it maps to -100
        ignore_index = -100
    reduction, label_smoothing, z_loss, softcap, ignore_index = _checks.check_options(
        reduction, label_smoothing, z_loss, softcap, ignore_index)
    if chunk_size is None and options is not None:
        chunk_size = getattr(options, "batch_chunk_size", None)
    chunk_size = _linear.check_chunk_size(chunk_size) or 0
    grad_filter = _linear.check_grad_filter(grad_filter)
    num_items = as_num_items(num_items, reduction)
    batch_shape = input.shape[:-1]
    vocab, hidden = linear_weight.shape
    flat_target = _flat_target(target, batch_shape, vocab, ignore_index)
    if weight is not None:
        weight = weight.detach()
    x = input.reshape(-1, hidden).contiguous()
    w = linear_weight.contiguous()
    need = [x.requires_grad, w.requires_grad, linear_bias is not None and linear_bias.requires_grad]
    if not torch.is_grad_enabled():
        need = [False] * 3
    fused = (any(need) and x.dtype not in HALF_DTYPES and reduction != "none")
    keep = need if fused else [False] * 3
    loss, *_ = _fwd(x, w, flat_target, linear_bias, weight, list(batch_shape), ignore_index, reduction,
                    label_smoothing, z_loss, softcap, chunk_size, grad_filter,
                    -1.0 if num_items is None else num_items, keep)
    if reduction == "none":
        loss = loss.reshape(batch_shape)
    return as_result_dtype(loss, x)


class LinearCrossEntropyLoss(torch.nn.Module):
    """The loss of a language-model head from its hidden states: forward(input, linear_weight,
    target[, linear_bias]) = linear_cross_entropy(...) with this module's options (``weight``, the
    class weights, is a buffer as in CrossEntropyLoss)."""

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, *, z_loss=0.0,
                 softcap=None, chunk_size=None, grad_filter=None):
        super().__init__()
        _checks.check_options(reduction, label_smoothing, z_loss, softcap, ignore_index)
        _linear.check_chunk_size(chunk_size)
        _linear.check_grad_filter(grad_filter)
        self.ignore_index, self.reduction, self.label_smoothing = ignore_index, reduction, label_smoothing
        self.z_loss, self.softcap, self.chunk_size, self.grad_filter = z_loss, softcap, chunk_size, grad_filter
        self.register_buffer("weight", weight)

    def forward(self, input, linear_weight, target, linear_bias=None):
        return linear_cross_entropy(input, linear_weight, target, linear_bias=linear_bias, weight=self.weight,
                                    reduction=self.reduction, ignore_index=self.ignore_index,
                                    label_smoothing=self.label_smoothing, z_loss=self.z_loss, softcap=self.softcap,
                                    chunk_size=self.chunk_size, grad_filter=self.grad_filter)

    def extra_repr(self):
        return (f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, softcap={self.softcap}, "
                f"chunk_size={self.chunk_size}")
