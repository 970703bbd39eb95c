"""The one collective of a vocab-parallel forward, and the merge every rank does alone.

Each rank sends one float64 vector: a header (its place in the vocabulary, checksums of its
target and its options, the result of its value checks) and, per row, its shard's lse_s and
loss partial (fusedce.torch.distributed._shard_math). One all_gather gives every rank every
rank's vector; the merge then runs on each rank over the same bytes, shard by shard in rank
order, so every rank gets a bit-identical lse and loss. The checks that read values are
reported through the header instead of raised before the gather: a rank that raised alone
would leave the others waiting in the collective forever; after it, all raise together.
"""

from __future__ import annotations

import zlib

import torch
import torch.distributed as dist

from ._shard_math import Shard

# header fields
STATUS, BAD_ROW, BAD_VALUE, START, SIZE, TOTAL, TARGET_SUM, WEIGHT_SUM, SETTINGS_SUM = range(9)
HEADER = 9
STATUS_OK, STATUS_TARGET = 0.0, 1.0

_MASK52 = (1 << 52) - 1  # checksums travel as float64: exact below 2**53
_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as an int64


def resolve_group(group):
    """(group, rank, world) of a process group this process belongs to; a clear error, and no
    collective, otherwise."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("fusedce.torch.distributed needs an initialised default process group "
                           "(torch.distributed.init_process_group)")
    if group is None:
        group = dist.group.WORLD
    outside = ValueError(f"this process (global rank {dist.get_rank()}) is not a member of the given group; "
                         "call the loss only on the group's ranks")
    if group is dist.GroupMember.NON_GROUP_MEMBER:  # what new_group() gives the ranks it leaves out
        raise outside
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"group must be a torch.distributed.ProcessGroup or None, got {type(group).__name__}")
    rank = dist.get_rank(group)
    if rank < 0:
        raise outside
    return group, rank, dist.get_world_size(group)


def checksum(values):
    """A position-sensitive 52-bit checksum of an integer tensor (int64 arithmetic that wraps,
    so the order of the additions does not matter), as a 0-d float64 tensor on its device;
    no host synchronisation."""
    v = values.reshape(-1).to(torch.int64)
    odd = torch.arange(v.numel(), device=v.device, dtype=torch.int64) * 2 + 1
    h = ((v + 1) * (odd * _GOLDEN)).sum()
    return ((h ^ (h >> 40)) & _MASK52).to(torch.float64)


def float_checksum(values):
    """checksum of a float tensor's float64 bits."""
    return checksum(values.detach().to(torch.float64).contiguous().view(torch.int64))


def settings_checksum(*settings):
    """A checksum of plain Python settings (deterministic across processes, unlike hash())."""
    return float(zlib.crc32(repr(settings).encode()) & _MASK52)


def local_vector(rows, shard, status, lse_s, part, target_sum, weight_sum, settings_sum, device):
    """This rank's contribution: the header, then lse_s and the loss partial per row.
    status: (code, bad row, bad value) as 0-d tensors."""
    vec = torch.empty(HEADER + 2 * rows, dtype=torch.float64, device=device)
    code, bad_row, bad_value = status
    vec[STATUS], vec[BAD_ROW], vec[BAD_VALUE] = code, bad_row, bad_value
    vec[START], vec[SIZE], vec[TOTAL] = shard.start, shard.size, shard.total
    vec[TARGET_SUM], vec[WEIGHT_SUM], vec[SETTINGS_SUM] = target_sum, weight_sum, settings_sum
    vec[HEADER:HEADER + rows] = lse_s
    vec[HEADER + rows:] = part
    return vec


def gather(vec, group, world):
    """The one collective: every rank's vector, in rank order, as (world, len). Into one flat
    tensor (gloo takes only the concatenated form): all_gather_single, the name torch 2.13
    gives all_gather_into_tensor."""
    out = torch.empty(world * vec.numel(), dtype=vec.dtype, device=vec.device)
    gather_into = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather_into(out, vec, group=group)
    return out.view(world, vec.numel())


def check(gathered, explicit):
    """Every rank's Shard, in rank order, after the checks every rank makes alike (so all
    raise together). explicit: this rank was given vocab_start (else equal shards)."""
    header = gathered[:, :HEADER].cpu().tolist()
    if len({h[SETTINGS_SUM] for h in header}) > 1:
        raise ValueError("the loss's options differ between the ranks of the group (reduction, ignore_index, "
                         "label_smoothing, z_loss, softcap, num_items, dtype, batch shape, or vocab_start given or not): "
                         "every rank must call it alike")
    if len({h[WEIGHT_SUM] for h in header}) > 1:
        raise ValueError("weight (the class weights) differs between the ranks of the group: every rank must "
                         "pass the same whole (V,) vector, or None")
    if len({h[TARGET_SUM] for h in header}) > 1:
        raise ValueError("target differs between the ranks of the group (its checksums differ): every rank of "
                         "a vocab-parallel group must pass the same target (global class indices)")
    for r, h in enumerate(header):
        if h[STATUS] == STATUS_TARGET:
            raise ValueError(f"target[{int(h[BAD_ROW])}] = {int(h[BAD_VALUE])} is out of range (found by rank {r} "
                             f"of the group): class indices must be in [0, {int(h[TOTAL])}) (the whole vocabulary) "
                             "or equal ignore_index")
    sizes = [int(h[SIZE]) for h in header]
    if not explicit and len(set(sizes)) > 1:
        raise ValueError(f"the ranks' shards have different sizes {sizes}: equal shards in rank order are assumed "
                         "unless every rank passes vocab_start= (its first class) and vocab_size= (the whole "
                         "vocabulary)")
    shards = [Shard(int(h[START]), int(h[SIZE]), int(h[TOTAL])) for h in header]
    end = 0  # the non-empty shards, by their first class, must follow one another from 0 to V
    for start, size in sorted((s.start, s.size) for s in shards if s.size):
        if start != end:
            end = -1
            break
        end = start + size
    if len({s.total for s in shards}) > 1 or end != shards[0].total:
        raise ValueError("the ranks' shards do not cover the vocabulary exactly once: (vocab_start, size, "
                         f"vocab_size) per rank = {[(s.start, s.size, s.total) for s in shards]}")
    return shards


def merge(gathered, target, weight, shards, opts):
    """(lse, loss): float64 (rows,) per row, from every rank's partials, shard by shard in rank
    order. loss = sum_s partial_s + (e/V) sum_s W_s (lse - lse_s) + (1-e) w_t (lse - lse_owner)
    + z w_t lse^2 on counted rows (0 on ignored ones): every term >= 0, nothing cancels."""
    rows = target.numel()
    lse_s = gathered[:, HEADER:HEADER + rows]
    part = gathered[:, HEADER + rows:]
    e, z, V = opts.label_smoothing, opts.z_loss, shards[0].total
    m = lse_s.amax(dim=0)
    ref = torch.where(torch.isfinite(m), m, 0.0)
    total = torch.zeros_like(ref)
    for s in range(len(shards)):
        total = total + torch.exp(lse_s[s] - ref)
    lse = ref + torch.log(total)  # -inf where every shard is empty or all -inf

    counted = target != opts.ignore_index
    safe = torch.where(counted, target, 0)
    w64 = None if weight is None else weight.detach().to(torch.float64)
    w_t = w64[safe] if w64 is not None else torch.ones_like(lse)
    loss = torch.zeros_like(lse)
    owner_lse = torch.zeros_like(lse)
    for s, shard in enumerate(shards):
        loss = loss + part[s]
        if e > 0 and shard.size:
            W_s = float(shard.size) if w64 is None else float(w64[shard.start:shard.start + shard.size].sum())
            if W_s != 0.0:
                loss = loss + (e / V) * W_s * (lse - lse_s[s])
        owns = (safe >= shard.start) & (safe < shard.start + shard.size)
        owner_lse = torch.where(owns, lse_s[s], owner_lse)
    if e < 1:
        loss = loss + (1.0 - e) * w_t * (lse - owner_lse)
    if z:
        loss = loss + z * w_t * lse * lse
    return lse, torch.where(counted, loss, 0.0)


def first_bad_target(target, vocab, ignore_index):
    """(status, bad row, bad value) as 0-d float64 tensors, and the target with bad entries
    replaced by ignore_index (so the shard's work runs; the error is raised after the gather).
    No host synchronisation."""
    bad = (target != ignore_index) & ((target < 0) | (target >= vocab))
    rows = target.numel()
    where = torch.where(bad, torch.arange(rows, device=target.device), rows).min() if rows else \
        torch.zeros((), dtype=torch.int64, device=target.device)
    found = where < rows
    value = target[where.clamp(max=max(rows - 1, 0))] if rows else where
    status = torch.where(found, STATUS_TARGET, STATUS_OK).to(torch.float64)
    # the value as float64: exact for any index a vocabulary could hold
    value = torch.where(found, value, 0).to(torch.float64)
    return (status, where.to(torch.float64), value), torch.where(bad, ignore_index, target)
