"""The public functions: check the arguments, pick the backend from the array, run it.

NumPy (and anything np.asarray takes) goes to the C kernels; CUDA arrays (Numba device
arrays, anything with __cuda_array_interface__ or a CUDA DLPack device) go to the Numba CUDA
kernels without a copy through the host.
"""

from __future__ import annotations

import numpy as np

from . import _checks, _cpu, _pool

def is_cuda_array(obj) -> bool:
    """True for arrays that live on a CUDA device (see _cuda.is_device_array); never imports Numba."""
    from ._cuda import is_device_array

    return is_device_array(obj)


def _cuda():
    from . import _cuda as backend

    return backend


def _out_dtype(x):
    """Per-row results (loss with reduction='none', lse): float64 for float64 logits, else float32."""
    return _cpu.compute_dtype(x.dtype)


def _ce_opts(weight, ignore_index, reduction, label_smoothing, z_loss, softcap):
    return dict(weight=weight, ignore_index=ignore_index, reduction=reduction,
                label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)


def cross_entropy(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, z_loss=0.0, softcap=None):
    """Cross-entropy loss of logits (..., K) against integer class indices target (...).

    Returns a float for reduction 'mean'/'sum', an array of shape logits.shape[:-1] for 'none'
    (float64 for float64 logits, float32 otherwise)."""
    opts = _ce_opts(weight, ignore_index, reduction, label_smoothing, z_loss, softcap)
    if is_cuda_array(logits):
        return _cuda().cross_entropy(logits, target, **opts)
    call = _checks.check_ce(logits, target, **opts)
    loss, _ = _cpu.cross_entropy(call, want_loss=True)
    return _checks.reduce_loss(call, loss, _out_dtype(call.x))


def cross_entropy_forward(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                          label_smoothing=0.0, z_loss=0.0, softcap=None):
    """(loss, lse): the loss as cross_entropy returns it, and the per-row log-sum-exp (of the
    softcapped logits) that cross_entropy_backward takes."""
    opts = _ce_opts(weight, ignore_index, reduction, label_smoothing, z_loss, softcap)
    if is_cuda_array(logits):
        return _cuda().cross_entropy_forward(logits, target, **opts)
    call = _checks.check_ce(logits, target, **opts)
    loss, lse = _cpu.cross_entropy(call, want_loss=True, want_lse=True)
    dtype = _out_dtype(call.x)
    return _checks.reduce_loss(call, loss, dtype), _pool.astype(lse.reshape(call.batch_shape), dtype)


def cross_entropy_with_grad(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                            label_smoothing=0.0, z_loss=0.0, softcap=None, grad_output=1.0,
                            inplace=False, out=None):
    """(loss, grad) in one fused pass: grad is d(grad_output * loss)/d logits, the logits' shape
    and dtype. grad_output is a scalar, or per row with reduction='none'. inplace=True writes
    the gradient over the logits (and returns them); out= writes it into a given array."""
    opts = _ce_opts(weight, ignore_index, reduction, label_smoothing, z_loss, softcap)
    if is_cuda_array(logits):
        return _cuda().cross_entropy_with_grad(logits, target, **opts, grad_output=grad_output,
                                               inplace=inplace, out=out)
    call = _checks.check_ce(logits, target, **opts, grad_output=grad_output, inplace=inplace, out=out,
                            want_grad=True)
    loss, _ = _cpu.cross_entropy(call, want_loss=True)
    return _checks.reduce_loss(call, loss, _out_dtype(call.x)), _grad_result(call)


def cross_entropy_backward(logits, target, lse, grad_output=1.0, *, weight=None, ignore_index=-100,
                           reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None,
                           inplace=False, out=None):
    """The gradient given the lse from cross_entropy_forward: one pass over the logits."""
    opts = _ce_opts(weight, ignore_index, reduction, label_smoothing, z_loss, softcap)
    if is_cuda_array(logits):
        return _cuda().cross_entropy_backward(logits, target, lse, grad_output, **opts, inplace=inplace, out=out)
    call = _checks.check_ce(logits, target, **opts, grad_output=grad_output, inplace=inplace, out=out,
                            want_grad=True, lse=lse)
    _cpu.cross_entropy(call, want_loss=False, lse_in=call.lse_in)
    return _grad_result(call)


def _grad_result(call):
    return call.grad_result if call.grad_result is not None else call.grad.reshape(call.logits.shape)


def _softmax_family(mode, x):
    if is_cuda_array(x):
        return getattr(_cuda(), mode)(x)
    arr = _checks.as_logits(x, "x")
    x2d = _checks.as_rows(arr)
    out, lse = _cpu.softmax_family(mode, x2d)
    if out is None:
        return _pool.astype(lse.reshape(arr.shape[:-1]), _out_dtype(arr))
    return out.reshape(arr.shape)


def logsumexp(x):
    """log(sum(exp(x))) over the last axis (float64 for float64 input, else float32)."""
    return _softmax_family("logsumexp", x)


def softmax(x):
    """softmax over the last axis, in x's dtype."""
    return _softmax_family("softmax", x)


def log_softmax(x):
    """log_softmax over the last axis, in x's dtype."""
    return _softmax_family("log_softmax", x)


def binary_cross_entropy_with_logits(logits, target, *, weight=None, pos_weight=None, reduction="mean"):
    """torch.nn.functional.binary_cross_entropy_with_logits, fused: any shape, target of the
    same shape (probabilities; values outside [0, 1] are computed as given, like torch),
    weight broadcast to the logits' shape, pos_weight one per class (the last axis).
    Returns a float for 'mean'/'sum', an array of the logits' shape and dtype for 'none'."""
    opts = dict(weight=weight, pos_weight=pos_weight, reduction=reduction)
    if is_cuda_array(logits):
        return _cuda().binary_cross_entropy_with_logits(logits, target, **opts)
    call = _checks.check_bce(logits, target, **opts)
    total, elements = _cpu.binary_cross_entropy(call, want_elements=reduction == "none")
    return _checks.reduce_bce(call, total, elements)


def binary_cross_entropy_with_logits_with_grad(logits, target, *, weight=None, pos_weight=None, reduction="mean",
                                               grad_output=1.0, inplace=False, out=None):
    """(loss, grad) in one pass: grad = grad_output * w * ((1 + (pos_weight - 1) t) sigmoid(x) - pos_weight t),
    over the logits' size for 'mean'. grad_output: a scalar, or the logits' shape with 'none'."""
    opts = dict(weight=weight, pos_weight=pos_weight, reduction=reduction)
    if is_cuda_array(logits):
        return _cuda().binary_cross_entropy_with_logits_with_grad(
            logits, target, **opts, grad_output=grad_output, inplace=inplace, out=out)
    call = _checks.check_bce(logits, target, **opts, grad_output=grad_output, inplace=inplace, out=out,
                             want_grad=True)
    total, elements = _cpu.binary_cross_entropy(call, want_elements=reduction == "none")
    return _checks.reduce_bce(call, total, elements), _grad_result(call)
