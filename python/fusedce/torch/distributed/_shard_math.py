"""What one rank computes on its shard of the vocabulary, without any collective.

- `partials`: per row, the shard's own lse_s and its part of the loss relative to lse_s
  ((1-e) w_t (lse_s - y_t) where it holds the target, plus (e/V) sum_{k in shard} w_k (lse_s - y_k)).
- `gradient`: given the rows' whole-vocabulary lse, the exact gradient on the shard's classes.

On the CPU both are the C kernels' shard mode (fusedce._shard: one read of the shard for the
partials, one read and one write for the gradient). Elsewhere (CUDA tensors: the Numba kernels
have no shard mode) they are torch ops written from the same formulas, device-agnostic; the
tests run them on the CPU too (TORCH_OPS forces them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fusedce import _shard

from .._tensors import empty_like, kernel_array

#: tests set this to run the torch-ops path on CPU tensors
TORCH_OPS = False


@dataclass(frozen=True)
class Options:
    """The loss options, checked."""

    ignore_index: int
    label_smoothing: float
    z_loss: float
    softcap: float  # 0.0: off


@dataclass(frozen=True)
class Shard:
    """This rank's classes [start, start + size) of a vocabulary of `total`."""

    start: int
    size: int
    total: int


def _use_kernels(x):
    return x.device.type == "cpu" and not TORCH_OPS


def _weight64(weight):
    """The whole (V,) class-weight vector as the C kernels take it (float64 on the CPU)."""
    return None if weight is None else kernel_array(weight.detach().to(torch.float64).contiguous())


def partials(x, target, weight, shard, opts):
    """(lse_s, partial): float64 (rows,) tensors on x's device. x (rows, size) logits,
    target (rows,) global class indices (checked), weight the whole (V,) vector or None."""
    if _use_kernels(x):
        lse_s, part = _shard.partials(kernel_array(x.contiguous()), kernel_array(target.contiguous()),
                                      _weight64(weight), offset=shard.start, total=shard.total,
                                      ignore_index=opts.ignore_index, label_smoothing=opts.label_smoothing,
                                      softcap=opts.softcap)
        return torch.from_numpy(lse_s), torch.from_numpy(part)
    return _partials_torch(x, target, weight, shard, opts)


def gradient(x, target, weight, lse, scale, shard, opts, out=None):
    """d(sum_r scale_r loss_r)/dx: x's shape and dtype, into `out` when given (contiguous; may
    be x itself). lse: float64 (rows,) whole-row lse; scale: float64 (rows,) per-row factors."""
    if _use_kernels(x):
        x = x.contiguous()
        out = empty_like(x) if out is None else out  # the buffer pool: resident pages (see _tensors)
        _shard.gradient(kernel_array(x), kernel_array(target.contiguous()), _weight64(weight),
                        kernel_array(lse.contiguous()), kernel_array(scale.contiguous()), kernel_array(out),
                        offset=shard.start, total=shard.total, ignore_index=opts.ignore_index,
                        label_smoothing=opts.label_smoothing, z_loss=opts.z_loss, softcap=opts.softcap)
        return out
    grad = _gradient_torch(x, target, weight, lse, scale, shard, opts)
    return grad if out is None else out.copy_(grad)


# --------------------------------------------------------------------------- torch ops


def _compute_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _capped(x, opts):
    y = x.to(_compute_dtype(x))
    return opts.softcap * torch.tanh(y / opts.softcap) if opts.softcap else y


def _target_parts(target, weight, shard, opts):
    """counted, owned (rows,) masks, the local target index (clamped), w_t (float64, 1 where
    not counted)."""
    counted = target != opts.ignore_index
    safe = torch.where(counted, target, 0)
    owned = counted & (safe >= shard.start) & (safe < shard.start + shard.size)
    local = (safe - shard.start).clamp(0, max(shard.size - 1, 0))
    w_t = weight.to(torch.float64)[safe] if weight is not None else torch.ones_like(safe, dtype=torch.float64)
    return counted, owned, local, w_t


def _shard_weight(weight, shard, y):
    if weight is None:
        return torch.ones(shard.size, dtype=y.dtype, device=y.device)
    return weight[shard.start:shard.start + shard.size].to(y.dtype)


def _partials_torch(x, target, weight, shard, opts):
    rows = x.shape[0]
    if shard.size == 0:
        return (torch.full((rows,), -torch.inf, dtype=torch.float64, device=x.device),
                torch.zeros(rows, dtype=torch.float64, device=x.device))
    y = _capped(x, opts)
    m = y.amax(dim=1)
    ref = torch.where(torch.isfinite(m), m, 0.0)  # sums relative to the max: nothing cancels
    rel = y - ref[:, None]
    lse_s = ref.to(torch.float64) + torch.log(torch.exp(rel).sum(dim=1).to(torch.float64))
    counted, owned, local, w_t = _target_parts(target, weight, shard, opts)
    e, V = opts.label_smoothing, shard.total
    part = torch.zeros(rows, dtype=torch.float64, device=x.device)
    if e < 1:
        y_t = y.gather(1, local[:, None])[:, 0].to(torch.float64)
        part = torch.where(owned, (1.0 - e) * w_t * (lse_s - y_t), part)
    if e > 0:
        ws = _shard_weight(weight, shard, y)
        rel_w = rel.masked_fill(ws == 0, 0.0) if weight is not None else rel  # a zero weight takes no part
        wsum = (rel_w @ ws).to(torch.float64)  # sum w_k (y_k - ref)
        W_s = ws.to(torch.float64).sum()
        smooth = (e / V) * (W_s * (lse_s - ref.to(torch.float64)) - wsum)
        part = part + torch.where(counted, smooth, 0.0)
    return lse_s, part


def _gradient_torch(x, target, weight, lse, scale, shard, opts):
    if shard.size == 0 or x.shape[0] == 0:
        return torch.zeros_like(x)
    y = _capped(x, opts)
    counted, owned, local, w_t = _target_parts(target, weight, shard, opts)
    e, z, V = opts.label_smoothing, opts.z_loss, shard.total
    W = weight.to(torch.float64).sum() if weight is not None else float(V)  # a tensor: no host sync
    scale = torch.where(counted, scale, 0.0)
    lse_ok = torch.where(counted, lse, 0.0)
    # p_j = exp(y_j - lse) = exp(y_j - shift) exp(shift - lse), the second factor in float64
    shift = torch.where(torch.isfinite(lse_ok), lse_ok, 0.0).to(y.dtype)
    c = (1.0 - e) * w_t + (e / V) * W + 2.0 * z * w_t * lse_ok
    a = (scale * c * torch.exp(shift.to(torch.float64) - lse_ok)).to(y.dtype)
    g = a[:, None] * torch.exp(y - shift[:, None])
    if e > 0:
        g = g - (scale * (e / V)).to(y.dtype)[:, None] * _shard_weight(weight, shard, y)[None, :]
    extra = torch.where(owned, scale * (1.0 - e) * w_t, 0.0).to(y.dtype)
    g = g.scatter_add(1, local[:, None], -extra[:, None])
    if opts.softcap:
        g = g * (1.0 - (y / opts.softcap) ** 2)
    g = torch.where(counted[:, None], g, 0.0)
    return g.to(x.dtype)
