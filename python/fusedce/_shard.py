"""Cross-entropy on one vocabulary shard (tensor parallelism), on the C kernels' shard mode
(fusedce.h: class_offset / total_classes).

A rank holds the classes [offset, offset + Vs) of rows of V classes. Two calls per step:
- `partials`: the shard's own lse_s per row and its part of the loss relative to lse_s,
  (1-e) w_t (lse_s - y_t) where it holds the target plus (e/V) sum_{k in shard} w_k (lse_s - y_k):
  the pass-1 statistics, one read of the shard. A caller gathers them from every shard and
  merges them into the row's lse and loss (fusedce.torch.distributed).
- `gradient`: given the row's lse, the row's exact gradient on this shard's classes, one pass.

Arguments are taken as checked (the distributed front end checks them): x (rows, Vs)
C-contiguous, target (rows,) int32/int64 global class indices, weight the whole (V,) vector
as float64 or None, grad_scale a float or a float64 (rows,) array of per-row factors.
"""

from __future__ import annotations

import numpy as np

from . import _checks, _cpu


def _call(x, target, weight, *, offset, total, ignore_index, label_smoothing, z_loss, softcap,
          grad_scale=None, grad=None, lse_in=None):
    return _checks.CECall(
        logits=x, x=x, batch_shape=(x.shape[0],), target=target, weight=weight, ignore_index=ignore_index,
        reduction="none", label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap or 0.0,
        denominator=1.0, grad_scale=grad_scale, grad=grad, grad_result=grad, lse_in=lse_in,
        class_offset=offset, total_classes=total)


def partials(x, target, weight, *, offset, total, ignore_index, label_smoothing, softcap):
    """(lse_s, partial loss): float64 (rows,) each. A shard with no classes has lse_s = -inf
    and partial 0."""
    rows = x.shape[0]
    if x.shape[1] == 0:
        return np.full(rows, -np.inf), np.zeros(rows)
    call = _call(x, target, weight, offset=offset, total=total, ignore_index=ignore_index,
                 label_smoothing=label_smoothing, z_loss=0.0, softcap=softcap)
    loss, lse = _cpu.cross_entropy(call, want_loss=True, want_lse=True)
    return lse, loss


def gradient(x, target, weight, lse, grad_scale, out, *, offset, total, ignore_index, label_smoothing, z_loss,
             softcap):
    """Writes d(sum_r grad_scale_r loss_r)/d x into out (x's shape and dtype; may be x itself),
    lse the rows' whole-vocabulary log-sum-exp (float64 (rows,))."""
    if x.shape[1] == 0 or x.shape[0] == 0:
        return out
    call = _call(x, target, weight, offset=offset, total=total, ignore_index=ignore_index,
                 label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, grad_scale=grad_scale,
                 grad=out, lse_in=lse)
    _cpu.cross_entropy(call, want_loss=False, lse_in=lse)
    return out
