"""Vocab-parallel cross-entropy over torch.distributed: time per forward+backward and the
collectives each implementation makes, on one machine (gloo, one process per rank).

    python bench/bench_distributed.py                          # world 2, 4096 rows, 64000 classes, float32
    python bench/bench_distributed.py --world 2 --rows 4096 --vocab 64000 --rounds 9

Rows (each rank holds rows x vocab/world logits; target the same on every rank):
  fusedce            fusedce.torch.distributed.vocab_parallel_cross_entropy: one all_gather of each
                     row's shard lse and loss partial; the backward from the merged lse, no collective
  fusedce DTensor    the same through fusedce.torch.cross_entropy on a DTensor sharded on classes
  loss_parallel      torch's own: F.cross_entropy on the DTensor under
                     torch.distributed.tensor.parallel.loss_parallel (forward and backward inside it)
  three all-reduces  the textbook (Megatron-style) vocab-parallel CE written here as a comparator:
                     all_reduce(MAX) of the row max, all_reduce(SUM) of the target logit (owned by
                     one rank), all_reduce(SUM) of the sum of exp; the softmax kept for the backward
Collectives are counted with torch's CommDebugMode (every c10d op, at the dispatcher) in a
separate run of each row's forward and backward. Each round runs every row once in turn
(machine noise hits all alike), between barriers; the table gives the median and best over
rounds of rank 0's time (forward, backward, the loss summed into a scalar). The ranks share
this machine's cores (torch and fusedce on one thread each): the figures are indicative.
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F


class ThreeAllReduces(torch.autograd.Function):
    """Cross-entropy of class-sharded logits with three all-reduces in the forward (the row max,
    the target's logit, the sum of exp) and none in the backward (the softmax is kept)."""

    @staticmethod
    def forward(ctx, shard, target, start, group):
        m = shard.max(dim=1).values
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
        z = shard - m[:, None]
        local = target - start
        owned = (local >= 0) & (local < shard.shape[1])
        picked = z.gather(1, local.clamp(0, shard.shape[1] - 1)[:, None])[:, 0] * owned
        dist.all_reduce(picked, group=group)
        e = z.exp_()
        s = e.sum(dim=1)
        dist.all_reduce(s, group=group)
        e /= s[:, None]  # softmax, kept
        ctx.save_for_backward(e, local, owned)
        return (s.log() - picked).mean()

    @staticmethod
    def backward(ctx, grad):
        p, local, owned = ctx.saved_tensors
        g = p.clone()
        rows = torch.arange(p.shape[0])[owned]
        g[rows, local[owned]] -= 1.0
        return g * (grad / p.shape[0]), None, None, None


def _rows(rank, world, shard, target, mesh):
    from torch.distributed.tensor import Shard, distribute_tensor
    from torch.distributed.tensor.parallel import loss_parallel

    import fusedce.torch
    from fusedce.torch.distributed import vocab_parallel_cross_entropy

    start = rank * shard.shape[1]
    full_shape = (shard.shape[0], shard.shape[1] * world)

    def dtensor():
        from torch.distributed.tensor import DTensor

        return DTensor.from_local(shard, mesh, [Shard(1)], run_check=False, shape=full_shape,
                                  stride=(full_shape[1], 1)).detach().requires_grad_()

    def fusedce_plain():
        x = shard.detach().requires_grad_()
        return x, lambda: vocab_parallel_cross_entropy(x, target)

    def fusedce_dtensor():
        d = dtensor()
        return d, lambda: fusedce.torch.cross_entropy(d, target)

    def torch_loss_parallel():
        d = dtensor()

        class Run:
            def __call__(self):
                self.ctx = loss_parallel()
                self.ctx.__enter__()
                return F.cross_entropy(d, target)
        return d, Run()

    def three():
        x = shard.detach().requires_grad_()
        return x, lambda: ThreeAllReduces.apply(x, target, start, None)

    return [("fusedce", fusedce_plain), ("fusedce DTensor", fusedce_dtensor),
            ("loss_parallel", torch_loss_parallel), ("three all-reduces", three)]


def _step(make):
    x, fn = make()
    loss = fn()
    loss.backward()
    ctx = getattr(fn, "ctx", None)
    if ctx is not None:
        ctx.__exit__(None, None, None)
    return loss


def _count(make):
    from torch.distributed.tensor.debug import CommDebugMode

    x, fn = make()
    with CommDebugMode() as fwd:
        loss = fn()
    with CommDebugMode() as bwd:
        loss.backward()
    ctx = getattr(fn, "ctx", None)
    if ctx is not None:
        ctx.__exit__(None, None, None)

    def names(mode):
        return ", ".join(f"{n}x {str(op).split('.')[-1]}" for op, n in mode.get_comm_counts().items()) or "none"
    return fwd.get_total_counts(), bwd.get_total_counts(), names(fwd), names(bwd)


def worker(rank, world, port, args, out):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    import fusedce

    fusedce.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=600))
    from torch.distributed.tensor import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    vs = args.vocab // world
    g = torch.Generator().manual_seed(rank)
    shard = torch.randn(args.rows, vs, generator=g, dtype=getattr(torch, args.dtype)) * 2
    target = torch.randint(0, args.vocab, (args.rows,), generator=torch.Generator().manual_seed(99))
    rows = _rows(rank, world, shard, target, mesh)
    losses = {}
    counts = {name: _count(make) for name, make in rows}
    times = {name: [] for name, _ in rows}
    for name, make in rows:  # warm-up (and the losses, which must agree)
        loss = _step(make)
        losses[name] = float((loss.to_local() if hasattr(loss, "to_local") else loss).detach())
    for _ in range(args.rounds):
        for name, make in rows:
            dist.barrier()
            t0 = time.perf_counter()
            _step(make)
            dist.barrier()
            times[name].append(time.perf_counter() - t0)
    if rank == 0:
        out.put((counts, times, losses))
    dist.barrier()
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=64000, help="classes in total (a multiple of --world)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--rounds", type=int, default=9)
    args = p.parse_args()
    if args.vocab % args.world:
        p.error("--vocab must be a multiple of --world")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    mp.spawn(worker, args=(args.world, port, args, out), nprocs=args.world, join=True)
    counts, times, losses = out.get()
    print(f"world {args.world} (gloo, 127.0.0.1), {args.rows} rows x {args.vocab} classes ({args.vocab // args.world} "
          f"per rank), {args.dtype}; forward+backward, {args.rounds} interleaved rounds, rank 0's time")
    base = statistics.median(times["fusedce"])
    print(f"{'':20s} {'median ms':>10s} {'best ms':>9s} {'vs fusedce':>10s}  {'loss':>10s}  collectives forward | backward")
    for name, t in times.items():
        med = statistics.median(t)
        nf, nb, fwd, bwd = counts[name]
        print(f"{name:20s} {med * 1e3:10.1f} {min(t) * 1e3:9.1f} {med / base:9.2f}x  {losses[name]:10.6f}  "
              f"{nf} ({fwd}) | {nb} ({bwd})")


if __name__ == "__main__":
    main()
