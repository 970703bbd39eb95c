"""vocab_parallel_linear_cross_entropy: a column-parallel LM head and its loss without the
logits, on the single-process linear CE's chunk loop (fusedce._linear.run with TorchOps) with
a vocabulary shard's step in place of the fused kernel.

Forward: the loop with one GEMM per chunk, the shard's partials per row; then the one
all_gather and the merge. Backward: the loop again (the chunk's logits recomputed, the exact
shard gradient from the merged lse written over them, the two gradient GEMMs), then one
all_reduce of the input's gradient (every rank's shard contributes to it). Four GEMMs in all:
the fused single-process trick of computing the gradients in the forward needs the row's lse
before the gradient, i.e. a collective per chunk.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from fusedce import _linear

from .._linear import TorchOps, _call
from .._tensors import FLOAT_DTYPES, as_result_dtype, check_differentiable_once, loss_dtype
from . import _setup, _shard_math


class _ShardChunkCE:
    """run()'s step for a vocabulary shard. Without lse (the forward): the chunk's partials,
    kept here by row. With lse (the backward): the exact gradient written over the logits."""

    def __init__(self, s, rows, device, lse=None):
        self.s, self.lse = s, lse
        self.lse_s = torch.full((rows,), -torch.inf, dtype=torch.float64, device=device)
        self.part = torch.zeros(rows, dtype=torch.float64, device=device)

    def _rows(self, picked):
        return torch.from_numpy(picked).to(self.part.device) if isinstance(picked, np.ndarray) else picked

    def loss(self, call, ops, logits, target, picked):
        lse_s, part = _shard_math.partials(logits, target, self.s.weight, self.s.shard, self.s.opts)
        rows = self._rows(picked)
        self.lse_s[rows] = lse_s.to(self.part.device)
        self.part[rows] = part.to(self.part.device)
        return np.zeros(logits.shape[0])  # run()'s row losses are not used: the merge makes them

    def loss_and_grad(self, call, ops, logits, target, picked, scale):
        _shard_math.gradient(logits, target, self.s.weight, self.lse[self._rows(picked)], scale, self.s.shard,
                             self.s.opts, out=logits)
        return np.zeros(logits.shape[0])


def _loop_call(x, w, target, bias, s, chunk_size):
    o = s.opts
    return _call(x, w, target, bias, None, o.ignore_index, "none", o.label_smoothing, o.z_loss, o.softcap,
                 chunk_size)


class _VocabParallelLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, bias, s, chunk_size):
        xd, wd, bd = x.detach(), w.detach(), None if bias is None else bias.detach()

        def local_partials(safe_target):
            step = _ShardChunkCE(s, x.shape[0], x.device)
            _linear.run(_loop_call(xd, wd, safe_target, bd, s, chunk_size), TorchOps(xd), chunk_ce=step)
            return step.lse_s, step.part

        lse, row_loss = _setup.gather_and_merge(s, local_partials)
        den = _setup.denominator(s)
        ctx.save_for_backward(x, w, bias, lse, den)
        ctx.setup, ctx.chunk_size = s, chunk_size
        return _setup.reduce(row_loss, s, den).to(loss_dtype(x))

    @staticmethod
    def backward(ctx, grad_loss):
        check_differentiable_once("distributed.vocab_parallel_linear_cross_entropy")
        x, w, bias, lse, den = ctx.saved_tensors
        s = ctx.setup
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        if grad_loss is None or not any(need):
            return None, None, None, None, None
        scale = _setup.row_scale(grad_loss, s, den, x.shape[0])
        step = _ShardChunkCE(s, x.shape[0], x.device, lse=lse)
        _, gx, gw, gb = _linear.run(_loop_call(x.detach(), w.detach(), s.target, None if bias is None else bias.detach(),
                                               s, ctx.chunk_size),
                                    TorchOps(x, need), grad_scale=scale, chunk_ce=step)
        if need[0]:
            # the input feeds every rank's shard: its gradient is the sum of theirs
            dist.all_reduce(gx, op=dist.ReduceOp.SUM, group=s.group)
        return (gx if need[0] else None, gw if need[1] else None, gb if need[2] else None, None, None)


def vocab_parallel_linear_cross_entropy(input, linear_weight_shard, target, *, group=None, linear_bias_shard=None,
                                        weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                                        z_loss=0.0, softcap=None, vocab_start=None, vocab_size=None, num_items=None,
                                        chunk_size=None):
    """cross_entropy(input @ W.T + b, target) where the head's weight W (V, H) and bias b are
    sharded by classes over the ranks of `group` (a column-parallel LM head), without the
    logits: chunks of rows as fusedce.torch.linear_cross_entropy.

    input (..., H), the same on every rank; linear_weight_shard (Vs, H) and linear_bias_shard
    (Vs,) this rank's classes (rank r: [r*Vs, (r+1)*Vs) unless vocab_start=/vocab_size= say
    otherwise); target (...) global class indices, the same on every rank; weight the whole
    (V,) class-weight vector. Options as vocab_parallel_cross_entropy; chunk_size: rows per
    chunk (default: a 64 MiB logits buffer). Autograd: each rank gets its shard's weight and
    bias gradients, and the input's gradient summed over the group (one all_reduce in the
    backward); one all_gather in the forward.
    """
    for name, t in (("input", input), ("linear_weight_shard", linear_weight_shard)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch tensor, got {type(t).__name__}")
    if linear_bias_shard is not None and not isinstance(linear_bias_shard, Tensor):
        raise TypeError(f"linear_bias_shard must be a torch tensor or None, got {type(linear_bias_shard).__name__}")
    if input.dtype not in FLOAT_DTYPES:
        raise TypeError(f"input must be float16, bfloat16, float32 or float64, got {input.dtype}")
    _linear.check_shapes(tuple(input.shape), str(input.dtype), tuple(linear_weight_shard.shape),
                         str(linear_weight_shard.dtype),
                         None if linear_bias_shard is None else (tuple(linear_bias_shard.shape),
                                                                 str(linear_bias_shard.dtype)), None)
    for name, t in (("linear_weight_shard", linear_weight_shard), ("linear_bias_shard", linear_bias_shard)):
        if t is not None and t.device != input.device:
            raise ValueError(f"{name} must be on the input's device {input.device}, got {t.device}")
    chunk_size = _linear.check_chunk_size(chunk_size) or 0
    shard_size, hidden = linear_weight_shard.shape
    batch_shape = input.shape[:-1]
    s = _setup.setup(shard_size, input.dtype, input.device, batch_shape, target, group=group, weight=weight,
                     ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss,
                     softcap=softcap, vocab_start=vocab_start, vocab_size=vocab_size, num_items=num_items)
    x = input.reshape(-1, hidden).contiguous()
    loss = _VocabParallelLinearCrossEntropy.apply(x, linear_weight_shard.contiguous(), linear_bias_shard, s,
                                                  chunk_size)
    if s.reduction == "none":
        loss = loss.reshape(batch_shape)
    return as_result_dtype(loss, x)
