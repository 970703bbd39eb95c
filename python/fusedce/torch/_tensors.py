"""Tensors <-> the arrays fusedce's functions take, without copies, and the buffers the
custom ops write their gradients into."""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import _pool

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
HALF_DTYPES = (torch.float16, torch.bfloat16)


def numpy_bfloat16():
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


def kernel_array(tensor):
    """What the fusedce functions take, without a copy: a NumPy view of a CPU tensor; a CUDA
    tensor itself (or, on a non-default stream, its interface naming that stream)."""
    tensor = tensor.detach()
    if tensor.is_cuda:
        stream = torch.cuda.current_stream(tensor.device).cuda_stream
        return _OnTorchStream(tensor, stream) if stream else tensor
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(numpy_bfloat16())
    return tensor.numpy()


def as_tensor(array, device):
    """A kernel result (NumPy array of any float dtype including ml_dtypes' bfloat16, or a
    CUDA device array) as a tensor, without a copy."""
    if isinstance(array, np.ndarray):
        if array.dtype.name == "bfloat16":
            return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(array)
    return torch.as_tensor(array, device=device)  # reads __cuda_array_interface__


def loss_dtype(x):
    """The dtype the custom ops return the loss in: the compute dtype (float32 for half
    logits), so that under autocast the loss is float32 without a second rounding, as
    torch's autocast computes its losses; the public functions round it to the logits'
    dtype otherwise (see as_result_dtype)."""
    return torch.float32 if x.dtype in HALF_DTYPES else x.dtype


def loss_tensor(loss, x):
    """The API's loss (a float for 'mean'/'sum', an array for 'none') as a tensor of
    loss_dtype(x)."""
    if isinstance(loss, float):
        return torch.tensor(loss, dtype=loss_dtype(x), device=x.device)
    return as_tensor(loss, x.device).to(loss_dtype(x))


def as_result_dtype(loss, x):
    """The loss as torch returns it: in the logits' dtype, or float32 for half logits under
    autocast (torch's autocast runs its losses in float32)."""
    if x.dtype in HALF_DTYPES and not torch.is_autocast_enabled(x.device.type):
        return loss.to(x.dtype)
    return loss


def constant_array(tensor, x):
    """A per-class weight (or pos_weight) as the kernels take it: float64 on the CPU, where the
    checks convert to the compute type anyway; the tensor itself on the GPU."""
    if tensor is None:
        return None
    return kernel_array(tensor if x.is_cuda else tensor.detach().to(torch.float64))


def empty_like(x):
    """A fresh contiguous tensor of x's shape and dtype. On the CPU from fusedce's buffer pool
    (fusedce._pool; np.empty for small ones or with the pool off): a block an earlier gradient
    released, already resident, else a fresh one with transparent huge pages requested, which
    torch's allocator does not ask for (with 4 KiB pages the first touch of a fresh
    logits-sized buffer costs several times the kernel: 512 MB, ~400 ms against ~55 ms
    measured here). The tensor keeps the block in use through torch.from_numpy's reference to
    the array. On the GPU torch's caching allocator (not Numba's, which frees lazily)."""
    if x.is_cuda:
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)
    raw = _pool.empty(tuple(x.shape), f"i{x.element_size()}")  # same item size: reinterpreted below
    return torch.from_numpy(raw).view(x.dtype)


def gradient_buffer(x, inplace):
    """(gradient tensor, keyword for the fusedce call): x itself with inplace, else a fresh one."""
    if inplace:
        torch.autograd.graph.increment_version(x)  # an op that saved x for backward must not read it
        return x, dict(inplace=True)
    grad = empty_like(x)
    return grad, dict(out=kernel_array(grad))


def is_one(grad):
    """True when an incoming scalar gradient is known to be exactly 1 without a device sync."""
    return (not torch.compiler.is_compiling() and grad.device.type == "cpu"
            and grad.numel() == 1 and grad.item() == 1.0)


def scaled_kept_gradient(ctx, grad_loss, name):
    """The gradient a fused forward kept (ctx.saved_tensors[0]) times the incoming scalar, in
    place: no second logits-sized buffer. A second backward through the same graph would
    read the scaled gradient, so it raises after one that scaled."""
    if ctx.grad_scaled:
        raise RuntimeError(
            f"fusedce.torch.{name}: backward ran twice through the same graph "
            "(retain_graph=True) after an earlier backward scaled the gradient kept by the "
            "fused forward in place (reduction 'mean'/'sum', an incoming gradient other than 1, "
            "or any on the GPU); compute the loss again for each backward.")
    (grad,) = ctx.saved_tensors
    if not is_one(grad_loss):
        grad.mul_(grad_loss)
        ctx.grad_scaled = True
    return grad


def check_differentiable_once(name):
    """backward's guard: once_differentiable would let a double backward through when the
    incoming gradient is a constant, leaving a gradient that silently does not depend on the
    inputs."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"fusedce.torch.{name} is differentiable once: backward with "
                           "create_graph=True (double backward) is not supported")


def as_num_items(num_items, reduction):
    """num_items (None, a number, or a one-element tensor: read once, a synchronisation for a
    CUDA one) as a float >= 0 or None; it replaces the mean's denominator, so it needs
    reduction='mean'."""
    if num_items is None:
        return None
    if reduction != "mean":
        raise ValueError(f"num_items replaces the mean's denominator: it needs reduction='mean', got {reduction!r}")
    value = num_items
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"num_items must be a number or a one-element tensor, got shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"num_items must be a number or a one-element tensor, got {type(num_items).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"num_items must be a finite number >= 0, got {num_items!r}")
    return value
