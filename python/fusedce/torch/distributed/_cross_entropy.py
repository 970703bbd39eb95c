"""vocab_parallel_cross_entropy: the cross-entropy of logits sharded by classes over a group,
one all_gather in the forward, no collective in the backward."""

from __future__ import annotations

import torch
from torch import Tensor

from .._tensors import FLOAT_DTYPES, as_result_dtype, check_differentiable_once, loss_dtype
from . import _setup, _shard_math


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """x (rows, Vs) this rank's logits; the loss of the whole rows. Backward: the shard's
    gradient from the merged lse and the per-row factors, which every rank has."""

    @staticmethod
    def forward(ctx, x, s):
        def local_partials(safe_target):
            return _shard_math.partials(x.detach(), safe_target, s.weight, s.shard, s.opts)

        lse, row_loss = _setup.gather_and_merge(s, local_partials)
        den = _setup.denominator(s)
        ctx.save_for_backward(x, lse, den)
        ctx.setup = s
        return _setup.reduce(row_loss, s, den).to(loss_dtype(x))

    @staticmethod
    def backward(ctx, grad_loss):
        check_differentiable_once("distributed.vocab_parallel_cross_entropy")
        x, lse, den = ctx.saved_tensors
        s = ctx.setup
        if grad_loss is None or not ctx.needs_input_grad[0]:
            return None, None
        scale = _setup.row_scale(grad_loss, s, den, x.shape[0])
        return _shard_math.gradient(x.detach(), s.target, s.weight, lse, scale, s.shard, s.opts), None


def vocab_parallel_cross_entropy(logits_shard, target, *, group=None, weight=None, ignore_index=-100,
                                 reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None, vocab_start=None,
                                 vocab_size=None, num_items=None):
    """The cross-entropy of logits whose classes are sharded over the ranks of `group`
    (tensor parallelism), as one process would compute it on the whole logits.

    logits_shard: (..., Vs) this rank's classes, the class dimension last (float16, bfloat16,
    float32 or float64). By default rank r of the group holds the classes [r*Vs, (r+1)*Vs) of a
    vocabulary of world*Vs; for other layouts (unequal shards, another order) every rank passes
    vocab_start= (its first class) and vocab_size= (the whole vocabulary; weight's size
    otherwise). target: (...) global class indices, the same on every rank. weight: the whole
    (V,) class-weight vector (a constant). Options as in fusedce.torch.cross_entropy; num_items
    (reduction 'mean' only) divides the sum by a count the caller knows (gradient accumulation,
    or fusedce.torch.distributed.global_num_items over a data-parallel group) instead of the
    counted rows' weight.

    Every rank returns the same loss, bit for bit; autograd gives each rank the gradient of its
    own shard. One all_gather per forward (each row's lse and loss partial of every shard, and
    checksums that catch ranks whose targets, weights or options differ); no collective in the
    backward.
    """
    if not isinstance(logits_shard, Tensor):
        raise TypeError(f"logits_shard must be a torch tensor, got {type(logits_shard).__name__}")
    if logits_shard.dtype not in FLOAT_DTYPES:
        raise TypeError(f"logits_shard must be float16, bfloat16, float32 or float64, got {logits_shard.dtype}")
    if logits_shard.ndim < 1:
        raise ValueError("logits_shard must have a class dimension (..., Vs), got a 0-d tensor")
    shard_size = logits_shard.shape[-1]
    batch_shape = logits_shard.shape[:-1]
    s = _setup.setup(shard_size, logits_shard.dtype, logits_shard.device, batch_shape, target, group=group,
                     weight=weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
                     z_loss=z_loss, softcap=softcap, vocab_start=vocab_start, vocab_size=vocab_size,
                     num_items=num_items)
    x = logits_shard.reshape(batch_shape.numel(), shard_size)  # explicit rows: a shard may have no classes
    loss = _VocabParallelCrossEntropy.apply(x, s)
    if s.reduction == "none":
        loss = loss.reshape(batch_shape)
    return as_result_dtype(loss, x)
