"""The NumPy float64 reference: the oracle every kernel is checked against.

Same names and keyword arguments as the public API, the same checks (shared code), but every
step written out plainly in float64. Results are float64 whatever the input dtype.

Per counted row i with target t (weight w, W = sum(w), smoothing e, K classes, z-loss z):

    y      = softcap * tanh(x / softcap)            (or y = x without softcap)
    lse    = log(sum_k exp(y_k))
    loss_i = (1 - e) w_t (lse - y_t) + (e / K) sum_k w_k (lse - y_k) + z w_t lse^2
    dloss_i/dy_j = c_i p_j - (1 - e) w_t [j == t] - (e / K) w_j,
        with p = softmax(y), c_i = (1 - e) w_t + (e / K) W + 2 z w_t lse
    dloss_i/dx_j = dloss_i/dy_j * (1 - (y_j / softcap)^2)

A class of weight 0 takes no part in the smoothing sum, even against a -inf logit (torch
gives NaN there). Rows whose target is ignore_index have loss 0 and gradient 0. 'mean' divides by the summed
w_t of the counted rows (torch's rule), and is 0 with a zero gradient when that sum is 0.

Probability targets q (a float array of the logits' shape), with q~ = (1 - e) q + e / K:

    loss_i = sum_k w_k q~_k (lse - y_k) + z lse^2
    dloss_i/dy_j = (sum_k w_k q~_k + 2 z lse) p_j - w_j q~_j

and 'mean' divides by the number of rows (torch's rule). A zero q~_k takes no part, even
against a -inf logit (torch gives NaN there).
"""

from __future__ import annotations

import numpy as np

from . import _checks

__all__ = [
    "cross_entropy",
    "cross_entropy_with_grad",
    "cross_entropy_forward",
    "cross_entropy_backward",
    "log_softmax",
    "softmax",
    "logsumexp",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_with_grad",
]


def _capped(x, softcap):
    return softcap * np.tanh(x / softcap) if softcap else x


def _lse(y):
    if y.shape[-1] == 0:
        return np.full(y.shape[:-1], -np.inf)  # log of an empty sum
    m = np.max(y, axis=-1, keepdims=True)
    m = np.where(m == -np.inf, 0.0, m)  # an all -inf row has lse = log(0) = -inf, not NaN
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        return (m + np.log(np.sum(np.exp(y - m), axis=-1, keepdims=True)))[..., 0]


def _forward(call):
    """(per-row weighted loss, per-row lse, capped logits y, what _grad needs), in float64."""
    if call.classes == 0:  # nothing to score (_checks.as_rows)
        rows = call.rows
        return np.zeros(rows), np.full(rows, -np.inf), np.zeros((rows, 0)), None
    x = call.x.astype(np.float64)
    y = _capped(x, call.softcap)
    lse = _lse(y)
    w = np.ones(call.classes) if call.weight is None else call.weight
    e, K = call.label_smoothing, call.classes
    with np.errstate(invalid="ignore", over="ignore"):
        if call.soft:
            # smoothed probabilities; a zero one takes no part, even against a -inf logit
            q = (1.0 - e) * call.target.astype(np.float64) + e / K
            wq = w * q
            loss = wq.sum(axis=-1) * lse - np.where(wq != 0, wq * y, 0.0).sum(axis=-1)
            loss = loss + call.z_loss * lse**2
            return loss, lse, y, (wq,)
        t = call.target
        counted = t != call.ignore_index
        tt = np.where(counted, t, 0)
        rows = np.arange(t.shape[0])
        wt = np.where(counted, w[tt], 0.0)
        loss = np.where(counted, (1.0 - e) * wt * (lse - y[rows, tt]), 0.0)
        if e:
            # a zero-weight class takes no part, even against a -inf logit
            smooth = (e / K) * (w.sum() * lse - np.where(w != 0, y * w, 0.0).sum(axis=-1))
            loss = loss + np.where(counted, smooth, 0.0)
        if call.z_loss:
            loss = loss + np.where(counted, call.z_loss * wt * lse**2, 0.0)
    return loss, lse, y, (counted, tt, rows, w, wt)


def _grad(call, lse, y, parts):
    e, K = call.label_smoothing, call.classes
    if K == 0:
        return np.zeros((call.rows, 0))
    scale = np.broadcast_to(np.asarray(call.grad_scale, dtype=np.float64), (call.rows,))[:, None]
    with np.errstate(invalid="ignore", over="ignore"):
        p = np.exp(y - lse[:, None])
        if call.soft:
            (wq,) = parts
            c = wq.sum(axis=-1) + 2.0 * call.z_loss * lse
            g = c[:, None] * p - wq
        else:
            counted, tt, rows, w, wt = parts
            c = (1.0 - e) * wt + (e / K) * w.sum() + 2.0 * call.z_loss * wt * lse
            g = c[:, None] * p - (e / K) * w[None, :]
            g[rows, tt] -= (1.0 - e) * wt
        g *= scale
        if call.softcap:
            g *= 1.0 - (y / call.softcap) ** 2
    if not call.soft:
        g[~counted] = 0.0
    return g


def _finish_grad(call, g):
    """Write the float64 gradient where the caller asked (inplace/out) or return it."""
    if call.grad_result is not None:
        call.grad[...] = g  # inplace or out=: rounded to the caller's dtype
        return call.grad_result
    return g.reshape(call.logits.shape)


def _ce_call(logits, target, opts, **extra):
    return _checks.check_ce(logits, target, **opts, **extra)


def cross_entropy(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, z_loss=0.0, softcap=None):
    """Loss: a float for 'mean'/'sum', a float64 array of shape logits.shape[:-1] for 'none'."""
    call = _ce_call(logits, target, dict(weight=weight, ignore_index=ignore_index, reduction=reduction,
                                         label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap))
    loss, _, _, _ = _forward(call)
    return _checks.reduce_loss(call, loss, np.float64)


def cross_entropy_forward(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                          label_smoothing=0.0, z_loss=0.0, softcap=None):
    """(loss, lse): lse has shape logits.shape[:-1] and is what cross_entropy_backward takes."""
    call = _ce_call(logits, target, dict(weight=weight, ignore_index=ignore_index, reduction=reduction,
                                         label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap))
    loss, lse, _, _ = _forward(call)
    return _checks.reduce_loss(call, loss, np.float64), lse.reshape(call.batch_shape)


def cross_entropy_with_grad(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                            label_smoothing=0.0, z_loss=0.0, softcap=None, grad_output=1.0,
                            inplace=False, out=None):
    """(loss, gradient of grad_output * loss with respect to the logits)."""
    call = _ce_call(logits, target, dict(weight=weight, ignore_index=ignore_index, reduction=reduction,
                                         label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap),
                    grad_output=grad_output, inplace=inplace, out=out, want_grad=True)
    loss, lse, y, parts = _forward(call)
    g = _grad(call, lse, y, parts)
    return _checks.reduce_loss(call, loss, np.float64), _finish_grad(call, g)


def cross_entropy_backward(logits, target, lse, grad_output=1.0, *, weight=None, ignore_index=-100,
                           reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None,
                           inplace=False, out=None):
    """Gradient of grad_output * loss, given the lse that cross_entropy_forward returned."""
    call = _ce_call(logits, target, dict(weight=weight, ignore_index=ignore_index, reduction=reduction,
                                         label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap),
                    grad_output=grad_output, inplace=inplace, out=out, want_grad=True)
    lse = _checks.as_lse(lse, call.batch_shape)
    _, _, y, parts = _forward(call)
    g = _grad(call, lse, y, parts)
    return _finish_grad(call, g)


def logsumexp(x):
    """log(sum(exp(x))) over the last axis, float64."""
    arr = _checks.as_logits(x, "x")
    return _lse(arr.astype(np.float64))


def log_softmax(x):
    arr = _checks.as_logits(x, "x").astype(np.float64)
    with np.errstate(invalid="ignore"):
        return arr - _lse(arr)[..., None]


def softmax(x):
    arr = _checks.as_logits(x, "x").astype(np.float64)
    with np.errstate(invalid="ignore"):
        return np.exp(arr - _lse(arr)[..., None])


def _bce(call):
    """Element losses and d loss / d x (unscaled), float64, in the stable forms
    l = w [(1 - t) softplus(x) + pw t softplus(-x)]  (= -w [pw t log s + (1 - t) log(1 - s)])
    dl/dx = w [(1 + (pw - 1) t) s - pw t],  s = sigmoid(x)."""
    x = call.x.astype(np.float64)
    t = call.target.astype(np.float64)
    w = 1.0 if call.weight is None else call.weight
    pw = 1.0 if call.pos_weight is None else call.pos_weight
    e = np.exp(-np.abs(x))
    softplus_pos = np.maximum(x, 0.0) + np.log1p(e)
    softplus_neg = np.maximum(-x, 0.0) + np.log1p(e)
    sig = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return w * ((1.0 - t) * softplus_pos + pw * t * softplus_neg), w * ((1.0 + (pw - 1.0) * t) * sig - pw * t)


def binary_cross_entropy_with_logits(logits, target, *, weight=None, pos_weight=None, reduction="mean"):
    """torch.nn.functional.binary_cross_entropy_with_logits in float64; 'mean' of nothing is 0."""
    call = _checks.check_bce(logits, target, weight=weight, pos_weight=pos_weight, reduction=reduction)
    loss, _ = _bce(call)
    return _checks.reduce_bce(call, float(loss.sum()), loss.reshape(call.logits.shape))


def binary_cross_entropy_with_logits_with_grad(logits, target, *, weight=None, pos_weight=None, reduction="mean",
                                               grad_output=1.0, inplace=False, out=None):
    """(loss, gradient of grad_output * loss with respect to the logits)."""
    call = _checks.check_bce(logits, target, weight=weight, pos_weight=pos_weight, reduction=reduction,
                             grad_output=grad_output, inplace=inplace, out=out, want_grad=True)
    loss, g = _bce(call)
    g = g * call.grad_scale
    return _checks.reduce_bce(call, float(loss.sum()), loss.reshape(call.logits.shape)), _finish_grad(call, g)
