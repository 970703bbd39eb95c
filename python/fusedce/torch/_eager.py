"""Eager calls of fusedce's custom ops without torch's dispatcher.

A torch.library custom op is what torch.compile needs (a schema, a fake implementation, an
autograd formula it can trace), but in eager mode its Python dispatch costs about 70 us a
call: fourteen times F.cross_entropy on 8x10 logits. Outside compilation these calls run the
same implementation directly, the forward op through a torch.autograd.Function with the same
setup_context and backward, so both paths compute the same thing with the same kernels.
"""

from __future__ import annotations

import torch


def op_call(op, impl):
    """op under torch.compile, else impl (op's own function) called directly."""

    def call(*args):
        return op(*args) if torch.compiler.is_compiling() else impl(*args)

    return call


def autograd_op_call(op, impl, setup_context, backward):
    """op (registered with this setup_context and backward) under torch.compile, else an
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
        return op(*args) if torch.compiler.is_compiling() else Eager.apply(*args)

    return call
