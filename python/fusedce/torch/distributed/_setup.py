"""The checks and the setup both vocab-parallel losses share: the group, the options, this
rank's shard, the target's value check, and the forward's gather-and-merge."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fusedce import _checks

from .._tensors import as_num_items
from . import _collective
from ._shard_math import Options, Shard


@dataclass
class Setup:
    group: object
    rank: int
    world: int
    shard: Shard
    explicit: bool  # vocab_start was given
    opts: Options
    reduction: str
    num_items: float | None
    target: Tensor  # (rows,) int64
    weight: Tensor | None  # (V,) detached
    settings_sum: float

    @property
    def valid_shard(self):
        """Whether this rank's place fits the vocabulary (if not, the gather's check says so)."""
        s = self.shard
        return 0 <= s.start and s.start + s.size <= s.total


def _check_int(value, name):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return value


def setup(shard_size, dtype, device, batch_shape, target, *, group, weight, ignore_index, reduction,
          label_smoothing, z_loss, softcap, vocab_start, vocab_size, num_items):
    """Everything checked that can be checked without reading values (those checks run
    identically on every rank, which call alike); target values are checked in the gather."""
    group, rank, world = _collective.resolve_group(group)
    reduction, label_smoothing, z_loss, softcap, ignore_index = _checks.check_options(
        reduction, label_smoothing, z_loss, softcap, ignore_index)
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch tensor, got {type(target).__name__}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target must hold class indices (an integer tensor; probability targets are not "
                        f"supported by the vocab-parallel loss), got dtype {target.dtype}")
    if tuple(target.shape) != tuple(batch_shape):
        raise ValueError(f"target must have shape {tuple(batch_shape)} (the logits' batch shape), "
                         f"got {tuple(target.shape)}")
    if target.device != device:
        raise ValueError(f"target must be on the logits' device {device}, got {target.device}")
    if weight is not None:
        if not isinstance(weight, Tensor):
            raise TypeError(f"weight must be a torch tensor or None, got {type(weight).__name__}")
        if weight.ndim != 1:
            raise ValueError(f"weight must be the whole vocabulary's class weights (V,), got shape {tuple(weight.shape)}")
        if weight.device != device:
            raise ValueError(f"weight must be on the logits' device {device}, got {weight.device}")
        weight = weight.detach()
    num_items = as_num_items(num_items, reduction)
    explicit = vocab_start is not None
    if explicit:
        start = _check_int(vocab_start, "vocab_start")
        if vocab_size is None and weight is None:
            raise TypeError("vocab_start= needs vocab_size= (the whole vocabulary's size) unless weight (V,) "
                            "gives it")
    else:
        start = rank * shard_size
    if vocab_size is not None:
        total = _check_int(vocab_size, "vocab_size")
    elif weight is not None:
        total = weight.numel()
    else:
        total = world * shard_size
    if weight is not None and weight.numel() != total:
        raise ValueError(f"weight must have shape ({total},) (the whole vocabulary, vocab_size), "
                         f"got {tuple(weight.shape)}")
    opts = Options(ignore_index, label_smoothing, z_loss, softcap or 0.0)
    settings = _collective.settings_checksum(reduction, ignore_index, label_smoothing, z_loss, softcap, num_items,
                                             str(dtype), explicit, tuple(batch_shape))
    return Setup(group=group, rank=rank, world=world, shard=Shard(start, shard_size, total), explicit=explicit,
                 opts=opts, reduction=reduction, num_items=num_items, target=target.reshape(-1).to(torch.int64),
                 weight=weight, settings_sum=settings)


def gather_and_merge(s, local_partials):
    """The forward's collective and merge. local_partials(safe_target) -> (lse_s, part), the
    shard's float64 (rows,) partials for a target whose bad entries are ignore_index.
    Returns (lse, row_loss) float64 (rows,), the same bits on every rank."""
    rows = s.target.numel()
    status, safe_target = _collective.first_bad_target(s.target, s.shard.total, s.opts.ignore_index)
    device = s.target.device
    if s.valid_shard:
        lse_s, part = local_partials(safe_target)
    else:  # reported by the check after the gather
        lse_s = torch.full((rows,), -torch.inf, dtype=torch.float64, device=device)
        part = torch.zeros(rows, dtype=torch.float64, device=device)
    weight_sum = _collective.float_checksum(s.weight) if s.weight is not None else 0.0
    vec = _collective.local_vector(rows, s.shard, status, lse_s.to(device), part.to(device),
                                   _collective.checksum(s.target), weight_sum, s.settings_sum, device)
    gathered = _collective.gather(vec, s.group, s.world)
    shards = _collective.check(gathered, s.explicit)
    return _collective.merge(gathered, s.target, s.weight, shards, s.opts)


def denominator(s):
    """What 'mean' divides by: num_items, else the counted rows' summed target weight (a 0-d
    float64 tensor, computed alike on every rank from the same target)."""
    if s.num_items is not None:
        return torch.tensor(s.num_items, dtype=torch.float64, device=s.target.device)
    counted = s.target != s.opts.ignore_index
    if s.weight is None:
        return counted.sum().to(torch.float64)
    safe = torch.where(counted, s.target, 0)
    return torch.where(counted, s.weight.to(torch.float64)[safe.clamp(0, s.weight.numel() - 1)], 0.0).sum()


def reduce(row_loss, s, den):
    if s.reduction == "none":
        return row_loss
    total = row_loss.sum()
    if s.reduction == "sum":
        return total
    return torch.where(den != 0, total / torch.where(den != 0, den, 1.0), 0.0)


def row_scale(grad_loss, s, den, rows):
    """The per-row gradient factor (float64 (rows,)) from the incoming gradient."""
    g = grad_loss.detach().to(torch.float64)
    if s.reduction == "none":
        return g.reshape(-1).contiguous()
    if s.reduction == "mean":
        g = torch.where(den != 0, g / torch.where(den != 0, den, 1.0), 0.0)
    return g.expand(rows).contiguous()

