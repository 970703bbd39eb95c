"""fusedce.torch.cross_entropy on a DTensor sharded on the class dimension (the layout torch's
loss_parallel expects): the local shard through vocab_parallel_cross_entropy, the loss as a
replicated DTensor (as loss_parallel returns it). No context manager is needed, for the
forward or the backward."""

from __future__ import annotations

from torch import Tensor
from torch.distributed.tensor import DTensor, Replicate, Shard

from ._cross_entropy import vocab_parallel_cross_entropy


def _replicated_local(value, name):
    """A plain tensor, or the local tensor of a DTensor replicated on every mesh dimension."""
    if isinstance(value, DTensor):
        if not all(isinstance(p, Replicate) for p in value.placements):
            raise ValueError(f"{name} as a DTensor must be replicated (placements (Replicate(),)), "
                             f"got {value.placements}")
        return value.to_local()
    return value


def cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing, *, z_loss, softcap, num_items):
    mesh = input.device_mesh
    if mesh.ndim != 1:
        raise ValueError(f"a DTensor input must live on a one-dimensional device mesh (the tensor-parallel "
                         f"group), got a mesh of shape {tuple(mesh.shape)}; for other layouts call "
                         "fusedce.torch.distributed.vocab_parallel_cross_entropy with the local shard")
    if input.ndim == 0:
        raise ValueError("input must have a class dimension: (C,), (N, C) or (N, C, d1, ...), got a 0-d DTensor")
    class_dim = 1 if input.ndim >= 2 else 0
    (placement,) = input.placements
    if not (isinstance(placement, Shard) and placement.dim % input.ndim == class_dim):
        raise ValueError(f"a DTensor input must be sharded on the class dimension (placements (Shard({class_dim}),), "
                         f"torch's loss_parallel layout), got {input.placements}")
    target = _replicated_local(target, "target")
    weight = _replicated_local(weight, "weight")
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch tensor or a replicated DTensor, got {type(target).__name__}")
    vocab = input.shape[class_dim]
    rank = mesh.get_local_rank()
    size, start = Shard.local_shard_size_and_offset(vocab, mesh.size(), rank)
    local = input.to_local()  # differentiable: its gradient comes back as a DTensor of input's placements
    if local.shape[class_dim] != size:
        raise RuntimeError(f"the local shard has {local.shape[class_dim]} classes where torch.chunk's rule gives "
                           f"{size} (rank {rank} of {mesh.size()}, {vocab} classes)")
    x = local.movedim(class_dim, -1) if class_dim != local.ndim - 1 else local
    loss = vocab_parallel_cross_entropy(x, target, group=mesh.get_group(), weight=weight, ignore_index=ignore_index,
                                        reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss,
                                        softcap=softcap, vocab_start=int(start), vocab_size=vocab,
                                        num_items=num_items)
    return DTensor.from_local(loss, mesh, [Replicate()], run_check=False)
