"""The data-parallel token count: what reduction='mean' divides by when the mean is over every
counted token of a data-parallel group (and of every micro-batch of a step)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from fusedce import _checks

from . import _collective


def global_num_items(*targets, group=None, ignore_index=-100, weight=None):
    """The number of counted tokens (target != ignore_index) in `targets` (one tensor, or the
    step's micro-batches) summed over the ranks of `group`, by one all_reduce; with class
    weights their summed target weight, as 'mean' divides by. Returns a Python float, for
    num_items= of fusedce.torch.cross_entropy / linear_cross_entropy and the vocab-parallel
    losses: each rank's loss is then its own sum over the global count, and the ranks' losses
    (or gradients) add up to the global mean. Under DistributedDataParallel, which averages the
    gradients over the ranks, multiply the loss by the group's size to keep that mean."""
    group, _, _ = _collective.resolve_group(group)
    _checks.check_options("mean", 0.0, 0.0, None, ignore_index)
    if not targets:
        raise TypeError("global_num_items needs at least one target tensor")
    device = None
    total = None
    for t in targets:
        if not isinstance(t, Tensor) or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"targets must be integer tensors of class indices, got "
                            f"{t.dtype if isinstance(t, Tensor) else type(t).__name__}")
        device = device or t.device
        counted = t.reshape(-1) != ignore_index
        if weight is None:
            part = counted.sum().to(torch.float64)
        else:
            safe = torch.where(counted, t.reshape(-1), 0).clamp(0, weight.numel() - 1)
            part = torch.where(counted, weight.detach().to(torch.float64)[safe], 0.0).sum()
        total = part if total is None else total + part
    total = total.to(device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return float(total)
