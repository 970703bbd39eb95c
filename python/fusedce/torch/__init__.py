"""PyTorch drop-ins on fusedce's fused kernels, with autograd and torch.compile.

    import fusedce.torch
    loss = fusedce.torch.cross_entropy(logits, target)             # as F.cross_entropy
    criterion = fusedce.torch.CrossEntropyLoss(ignore_index=-1)    # as nn.CrossEntropyLoss
    loss = fusedce.torch.binary_cross_entropy_with_logits(x, t)    # as F.binary_cross_entropy_with_logits
    criterion = fusedce.torch.BCEWithLogitsLoss(pos_weight=pw)     # as nn.BCEWithLogitsLoss

Tensor parallelism (logits or an LM head sharded by classes over a torch.distributed group,
DTensor included) and data-parallel token counts: ``fusedce.torch.distributed``.

Same arguments and results as torch's (class indices or probability targets), plus
``z_loss``, ``softcap`` and ``inplace_backward`` for the cross-entropy. One deliberate
difference: 'mean' over nothing counted (no counted rows, or no elements) is 0 with a zero
gradient (torch gives NaN).

CPU tensors reach the C kernels as zero-copy NumPy views; CUDA tensors go to the Numba CUDA
backend through ``__cuda_array_interface__`` (bfloat16 is CPU-only, and needs ml_dtypes).

What backward keeps, and memory ("a buffer" = one logits-sized array):
- float32/float64 logits, reduction 'mean'/'sum': the forward computes loss and gradient in
  one fused pass and keeps only the gradient (the logits may be freed after the forward).
  backward multiplies it in place by the incoming scalar, skipped when that is 1
  (``loss.backward()`` on the CPU). At most one extra buffer. Because of the in-place
  scaling, a second backward through the same graph (``retain_graph=True``) raises after one
  that scaled (by other than 1, or any on the GPU).
- float16/bfloat16 logits, reduction 'none', or a target that needs a gradient: the forward
  computes the loss and the per-row log-sum-exp (BCE: the loss alone) and keeps the inputs;
  backward computes the gradient in one pass with the real incoming gradient applied in
  float32 before the one rounding, so a loss scale (GradScaler) reaches every half-precision
  gradient element before it could underflow. One extra buffer, allocated in backward.
- ``inplace_backward=True`` (cross-entropy): the gradient is written over the logits'
  storage (in the forward for the fused pass, else in backward): no extra buffer. Only for
  logits nothing else needs afterwards (typically the LM head's output); autograd's version
  counter is bumped, so an op that saved the logits for its own backward raises instead of
  reading the gradient. Ignored under torch.compile (a compiled graph cannot express an op
  with a derivative that writes over its input) and when no gradient is computed.
- Inputs (N, C, d1, ...) are permuted to put the classes last, a copy that cannot be avoided
  (the kernels read rows of contiguous classes); ``inplace_backward`` then overwrites that copy.
- Without a gradient (``torch.no_grad()``, or inputs that do not require one) only the loss is
  computed and nothing is kept.

torch.compile: the kernels are custom ops (``fusedce::cross_entropy_fwd``/``_bwd``,
``fusedce::bce_with_logits_fwd``/``_bwd``; opaque to the compiler, with fake implementations
and an autograd formula), so graphs need not break; untraced eager calls skip the
dispatcher (_eager.py). Double backward raises (the gradient is not itself differentiated).
"""

from ._bce import BCEWithLogitsLoss, binary_cross_entropy_with_logits
from ._cross_entropy import CrossEntropyLoss, cross_entropy
from ._linear import LinearCrossEntropyLoss, linear_cross_entropy

__all__ = ["cross_entropy", "CrossEntropyLoss", "binary_cross_entropy_with_logits", "BCEWithLogitsLoss",
           "linear_cross_entropy", "LinearCrossEntropyLoss"]
