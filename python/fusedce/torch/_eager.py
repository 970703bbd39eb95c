"""Eager calls of fusedce's custom ops without torch's dispatcher.

A torch.library custom op is what torch's tracers need (a schema, a fake implementation, an
autograd formula they can trace), but in eager mode its Python dispatch costs about 50 us a
call, ten times F.cross_entropy's whole call on 8x10 logits. A call on plain tensors with
nothing tracing it runs the same implementation directly instead, the forward op through a
torch.autograd.Function with the same setup_context and backward: the same kernels, the same
formula. Anything else (torch.compile and export, make_fx and other dispatch modes, functorch
transforms, tensor subclasses such as fake tensors) goes through the op, which the tracer
records; run directly, the kernels would hand it a result it could only keep as a constant.
"""

from __future__ import annotations

import torch

try:  # private, so looked up once; without them every call takes the op
    from torch.utils._python_dispatch import _get_current_dispatch_mode
    from torch._C import _are_functorch_transforms_active
except ImportError:  # pragma: no cover - a torch without them
    _get_current_dispatch_mode = _are_functorch_transforms_active = None

_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _direct(args):
    """Whether a call with these arguments may skip the op: plain tensors, nothing tracing."""
    if _get_current_dispatch_mode is None or torch.compiler.is_compiling():
        return False
    if _get_current_dispatch_mode() is not None or _are_functorch_transforms_active():
        return False
    return all(type(a) in _PLAIN for a in args if isinstance(a, torch.Tensor))


def op_call(op, impl):
    """op, or impl (op's own function) called directly where _direct allows."""

    def call(*args):
        return impl(*args) if _direct(args) else op(*args)

    return call


def autograd_op_call(op, impl, setup_context, backward):
    """op (registered with this setup_context and backward), or where _direct allows an
    autograd.Function around impl with the same formula."""

    # forward takes ctx (the older form): with a separate setup_context, Function.apply binds
    # the arguments to forward's signature through inspect on every call (about 10 us)
    class Eager(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            output = impl(*args)
            setup_context(ctx, args, output)
            return output

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    Eager.__name__ = Eager.__qualname__ = f"Eager{impl.__name__}"

    def call(*args):
        return Eager.apply(*args) if _direct(args) else op(*args)

    return call
