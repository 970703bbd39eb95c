"""Cross-entropy beyond one device: vocab-parallel (tensor-parallel) losses over
torch.distributed, and the data-parallel token count.

    from fusedce.torch.distributed import vocab_parallel_cross_entropy
    loss = vocab_parallel_cross_entropy(logits_shard, target, group=tp_group)      # (..., V/world)
    loss = vocab_parallel_linear_cross_entropy(hidden, head_weight_shard, target, group=tp_group)
    n = global_num_items(target, group=dp_group)           # one all_reduce: the global token count
    loss = fusedce.torch.cross_entropy(logits, target, num_items=n)

One collective per forward: an all_gather of each row's partial statistics from every shard
(its lse, and its part of the loss relative to that lse, so nothing cancels), plus checksums
of the target, the class weights and the options, which catch ranks that disagree. Every
rank merges the gathered bytes alone, shard by shard in rank order, into the rows' lse and
loss: the loss is bit-identical on every rank. No collective in the backward of the loss:
each rank's gradient needs only the rows' lse and per-row factors, which it has (the linear
loss all-reduces its input's gradient, as any column-parallel head must).

On the CPU a shard's work is the C kernels' shard mode (fusedce.h, class_offset /
total_classes): the partials in one read of the shard, its exact gradient in one more pass.
On other devices (CUDA tensors over NCCL) the same formulas run as torch ops; the code is
device-agnostic, the gathered statistics are float64 on the logits' device.

A DTensor sharded on the class dimension (the layout torch's loss_parallel expects) given to
fusedce.torch.cross_entropy takes this path. See docs/distributed.md.
"""

from ._collective import resolve_group
from ._cross_entropy import vocab_parallel_cross_entropy
from ._linear import vocab_parallel_linear_cross_entropy
from ._num_items import global_num_items

__all__ = ["vocab_parallel_cross_entropy", "vocab_parallel_linear_cross_entropy", "global_num_items",
           "resolve_group"]
