"""What each spawned rank of tests/test_torch_distributed.py runs (a module of its own so that
torch.multiprocessing's spawn can import it in the children), and the cases both layers share.

Every rank builds the same whole problem from a seed, computes its shard's loss through
fusedce.torch.distributed, and checks it against one process (fusedce.torch on the whole
logits); the loss bits go back to the parent, which checks that every rank has the same ones.
Collectives are counted with torch's CommDebugMode (every c10d op, at the dispatcher).
"""

from __future__ import annotations

import datetime
import faulthandler
import os
import sys

import torch
import torch.distributed as dist

RTOL = {torch.float64: 1e-10, torch.float32: 2e-6,
        # half: both sides compute in float32 and round once; they may land an ulp apart
        torch.float16: 2e-3, torch.bfloat16: 1.6e-2}

OPTIONS = {
    "plain": {},
    "weight": {"weighted": True},
    "smoothing": {"label_smoothing": 0.2},
    "smoothing 1, weight": {"label_smoothing": 1.0, "weighted": True},
    "z_loss": {"z_loss": 1e-2},
    "softcap": {"softcap": 4.0},
    "all": {"weighted": True, "label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 6.0, "ignore_index": 3},
}


def make_case(seed, rows, vocab, dtype, weighted=False, ignore_index=-100):
    """(logits (rows, vocab), target (rows,), class weights or None), the same in every process.
    One row is shifted by +40 (the sums must be taken relative to the max), every third row
    is ignored, and the targets are drawn over the whole vocabulary."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, vocab, generator=g, dtype=torch.float64) * 3
    if rows > 1:
        x[1] += 40.0
    target = torch.randint(0, vocab, (rows,), generator=g)
    target[::3] = ignore_index
    weight = torch.rand(vocab, generator=g, dtype=torch.float64) * 1.5 + 0.25 if weighted else None
    return x.to(dtype), target, None if weight is None else weight.to(dtype)


def shard_options(kw):
    from fusedce.torch.distributed._shard_math import Options

    return Options(kw.get("ignore_index", -100), kw.get("label_smoothing", 0.0), kw.get("z_loss", 0.0),
                   kw.get("softcap", 0.0))


def torch_options(kw):
    """fusedce.torch.cross_entropy's keywords for an OPTIONS entry (weight aside)."""
    return {k: v for k, v in kw.items() if k != "weighted"}


def assert_close(got, ref, dtype, what, per_element=True):
    """Losses: |got - ref| <= rtol * max(|ref|, 1) per element (a row's loss is lse - y_t: near
    0 it is a small difference of O(1) numbers). Gradients (per_element=False): the largest
    error <= rtol * the largest |ref|."""
    rtol = RTOL.get(dtype, 2e-6)
    got, ref = got.detach().to(torch.float64), ref.detach().to(torch.float64)
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    if ref.numel() == 0:
        return
    err = (got - ref).abs()
    if per_element:
        bad = err > rtol * ref.abs().clamp(min=1.0)
        assert not bool(bad.any()), f"{what} ({dtype}): got {got[bad][:4].tolist()}, want {ref[bad][:4].tolist()}"
    else:
        scale = float(ref.abs().max())
        assert float(err.max()) <= rtol * max(scale, 1e-300), \
            f"{what} ({dtype}): max error {float(err.max()):.3e} > {rtol} * {scale:.3e}"


# --------------------------------------------------------------------------- the ranks' side


class Counted:
    """The c10d collectives run inside the block, by name (CommDebugMode)."""

    def __enter__(self):
        from torch.distributed.tensor.debug import CommDebugMode

        self.mode = CommDebugMode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)
        self.ops = sorted(str(op).split(".")[-1] for op, n in self.mode.get_comm_counts().items() for _ in range(n))
        return False


def _upstream(loss, seed):
    """The incoming gradient: a scalar other than 1, or one per row for reduction='none'."""
    if loss.ndim == 0:
        return torch.tensor(0.7, dtype=loss.dtype)
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(loss.shape, generator=g, dtype=torch.float64) * 2 - 0.5).to(loss.dtype)


class Battery:
    def __init__(self, rank, world):
        self.rank, self.world = rank, world
        self.losses, self.errors = {}, []

    # -- the vocab-parallel CE on shards [starts[r], starts[r] + sizes[r]) against one process
    def vocab_parallel(self, name, x, target, weight, kw, reduction="mean", sizes=None, starts=None, group=None,
                       ranks=None, num_items=None):
        from fusedce.torch.distributed import vocab_parallel_cross_entropy

        ranks = list(range(self.world)) if ranks is None else ranks
        me = ranks.index(self.rank)
        vocab = x.shape[-1]
        explicit = sizes is not None
        if not explicit:
            sizes = [vocab // len(ranks)] * len(ranks)
            starts = [i * sizes[0] for i in range(len(ranks))]
        lo, hi = starts[me], starts[me] + sizes[me]
        shard = x[..., lo:hi].clone().requires_grad_()
        extra = dict(vocab_start=lo, vocab_size=vocab) if explicit else {}
        with Counted() as fwd:
            loss = vocab_parallel_cross_entropy(shard, target, group=group, weight=weight, reduction=reduction,
                                                num_items=num_items, **torch_options(kw), **extra)
        assert fwd.ops == ["_allgather_base_"], f"{name}: forward collectives {fwd.ops}"
        up = _upstream(loss, len(name))
        with Counted() as bwd:
            loss.backward(up)
        assert bwd.ops == [], f"{name}: backward collectives {bwd.ops}"
        import fusedce.torch

        full = x.clone().requires_grad_()
        torch_layout = full.movedim(-1, 1) if x.ndim > 2 else full  # torch's (N, C, d1, ...)
        ref = fusedce.torch.cross_entropy(torch_layout, target, weight, reduction=reduction, num_items=num_items,
                                          **torch_options(kw))
        ref.backward(up)
        assert loss.dtype == ref.dtype, f"{name}: loss dtype {loss.dtype}, one process {ref.dtype}"
        assert_close(loss, ref, x.dtype, f"{name}: loss")
        assert_close(shard.grad, full.grad[..., lo:hi], x.dtype, f"{name}: shard gradient", per_element=False)
        self.losses[name] = loss.detach().clone()

    def expect_error(self, label, match, fn):
        """fn must raise ValueError mentioning `match` on this rank (and, the parent checks, on
        every rank); the group must still work afterwards."""
        try:
            fn()
        except ValueError as e:
            assert match in str(e), f"{label}: {e}"
            self.errors.append(label)
        else:
            raise AssertionError(f"{label}: no error")
        probe = torch.ones(1)
        dist.all_reduce(probe)
        assert float(probe) == self.world, f"{label}: the group is unusable afterwards"

    # -- the checks
    def options_and_dtypes(self):
        V = 5 * self.world
        for dtype in (torch.float64, torch.float32):
            for opt, kw in OPTIONS.items():
                for reduction in ("mean", "sum", "none"):
                    x, t, w = make_case(11, 10, V, dtype, kw.get("weighted", False), kw.get("ignore_index", -100))
                    self.vocab_parallel(f"{dtype} {opt} {reduction}", x, t, w, kw, reduction)

    def layouts(self):
        world, kw = self.world, OPTIONS["all"]
        for dtype in (torch.float64, torch.float32):
            # unequal shards in reverse rank order, one of them empty when there are 4 ranks
            sizes = [0 if (world == 4 and r == 1) else r + 2 for r in range(world)]
            starts = [sum(sizes[r + 1:]) for r in range(world)]
            x, t, w = make_case(12, 9, sum(sizes), dtype, True, 3)
            for reduction in ("mean", "none"):
                self.vocab_parallel(f"{dtype} unequal {reduction}", x, t, w, kw, reduction, sizes, starts)
            # (rows, d, V) logits with targets (rows, d)
            x, t, w = make_case(13, 12, 4 * world, dtype, True, 3)
            self.vocab_parallel(f"{dtype} 3-d", x.reshape(4, 3, -1), t.reshape(4, 3), w, kw, "none")
            # every target in rank 0's shard: the other ranks own none
            x, t, _ = make_case(14, 8, 3 * world, dtype)
            t = torch.where(t == -100, t, t % 3)
            self.vocab_parallel(f"{dtype} targets on rank 0", x, t, None, OPTIONS["smoothing"])
            # every row ignored: loss 0, gradient 0
            t = torch.full_like(t, -100)
            for reduction in ("mean", "none"):
                self.vocab_parallel(f"{dtype} all ignored {reduction}", x, t, None, OPTIONS["z_loss"], reduction)
            # num_items: the sum over a count the caller knows
            x, t, w = make_case(15, 7, 2 * world, dtype, True)
            self.vocab_parallel(f"{dtype} num_items", x, t, w, OPTIONS["weight"], num_items=11)
        x, t, w = make_case(16, 9, 3 * world, torch.float16, True, 3)
        self.vocab_parallel("float16 all", x, t, w, OPTIONS["all"])

    def torch_ops_path(self):
        """The path CUDA tensors take (torch ops for the shard's work), here on the CPU."""
        from fusedce.torch.distributed import _shard_math

        _shard_math.TORCH_OPS = True
        try:
            for dtype in (torch.float64, torch.float32):
                x, t, w = make_case(16, 10, 6 * self.world, dtype, True, 3)
                for reduction in ("mean", "none"):
                    self.vocab_parallel(f"{dtype} torch ops {reduction}", x, t, w, OPTIONS["all"], reduction)
        finally:
            _shard_math.TORCH_OPS = False

    def linear(self):
        import fusedce.torch
        from fusedce.torch.distributed import vocab_parallel_linear_cross_entropy

        world, rank = self.world, self.rank
        for dtype in (torch.float64, torch.float32):
            for label, sizes in (("equal", None), ("unequal", [3 + r for r in range(world)])):
                V = 4 * world if sizes is None else sum(sizes)
                starts = None if sizes is None else [sum(sizes[:r]) for r in range(world)]
                lo = rank * (V // world) if sizes is None else starts[rank]
                hi = lo + (V // world if sizes is None else sizes[rank])
                x, t, w = make_case(17, 11, V, torch.float64, True, 3)
                g = torch.Generator().manual_seed(18)
                hidden = torch.randn(11, 6, generator=g, dtype=torch.float64).to(dtype)
                head = (torch.randn(V, 6, generator=g, dtype=torch.float64) / 2).to(dtype)
                bias = torch.randn(V, generator=g, dtype=torch.float64).to(dtype)
                kw = dict(weight=w.to(dtype), ignore_index=3, label_smoothing=0.1, z_loss=1e-3, softcap=6.0)
                h = hidden.clone().requires_grad_()
                wsh = head[lo:hi].clone().requires_grad_()
                bsh = bias[lo:hi].clone().requires_grad_()
                extra = {} if sizes is None else dict(vocab_start=lo, vocab_size=V)
                with Counted() as fwd:
                    loss = vocab_parallel_linear_cross_entropy(h, wsh, t, linear_bias_shard=bsh, chunk_size=4,
                                                               **kw, **extra)
                assert fwd.ops == ["_allgather_base_"], f"linear forward collectives {fwd.ops}"
                with Counted() as bwd:
                    loss.backward(torch.tensor(0.7, dtype=loss.dtype))
                assert bwd.ops == ["allreduce_"], f"linear backward collectives {bwd.ops}"
                hf, wf, bf = (a.clone().requires_grad_() for a in (hidden, head, bias))
                ref = fusedce.torch.linear_cross_entropy(hf, wf, t, linear_bias=bf, **kw)
                ref.backward(torch.tensor(0.7, dtype=ref.dtype))
                name = f"{dtype} linear {label}"
                assert_close(loss, ref, dtype, f"{name}: loss")
                assert_close(h.grad, hf.grad, dtype, f"{name}: input gradient (summed)", per_element=False)
                assert_close(wsh.grad, wf.grad[lo:hi], dtype, f"{name}: weight shard gradient", per_element=False)
                assert_close(bsh.grad, bf.grad[lo:hi], dtype, f"{name}: bias shard gradient", per_element=False)
                self.losses[name] = loss.detach().clone()

    def dtensor(self):
        import torch.nn.functional as F
        from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor, init_device_mesh
        from torch.distributed.tensor.parallel import loss_parallel

        import fusedce.torch

        mesh = init_device_mesh("cpu", (self.world,))
        V = 4 * self.world + 1  # uneven: torch.chunk's rule
        for dtype in (torch.float64, torch.float32):
            x, t, w = make_case(19, 10, V, dtype, True)
            for shape, tshape, kw in (((10, V), (10,), dict(label_smoothing=0.1, z_loss=1e-3)),
                                      ((5, V, 2), (5, 2), dict(softcap=5.0))):
                logits = x if len(shape) == 2 else x.reshape(5, 2, V).movedim(2, 1).contiguous()
                target = t.reshape(tshape)
                d = distribute_tensor(logits, mesh, [Shard(1)]).detach().requires_grad_()
                with Counted() as fwd:
                    loss = fusedce.torch.cross_entropy(d, target, w, **kw)
                assert fwd.ops == ["_allgather_base_"], f"DTensor forward collectives {fwd.ops}"
                assert isinstance(loss, DTensor) and loss.placements == (Replicate(),)
                with Counted() as bwd:
                    loss.backward()
                assert bwd.ops == [], f"DTensor backward collectives {bwd.ops}"
                full = logits.clone().requires_grad_()
                ref = fusedce.torch.cross_entropy(full, target, w, **kw)
                ref.backward()
                name = f"{dtype} DTensor {len(shape)}-d"
                assert_close(loss.to_local(), ref, dtype, f"{name}: loss")
                assert isinstance(d.grad, DTensor) and d.grad.placements == (Shard(1),)
                assert_close(d.grad.full_tensor(), full.grad, dtype, f"{name}: gradient", per_element=False)
                self.losses[name] = loss.to_local().detach().clone()
            if dtype == torch.float64:  # torch's own loss_parallel as an independent oracle
                d = distribute_tensor(x, mesh, [Shard(1)]).detach().requires_grad_()
                with loss_parallel():
                    theirs = F.cross_entropy(d, t, w)
                ours = fusedce.torch.cross_entropy(d, t, w)
                assert_close(ours.to_local(), theirs.to_local(), dtype, "DTensor vs loss_parallel")

    def data_parallel(self):
        """Each rank its own batch; global_num_items counts every rank's tokens (one
        all_reduce); each rank's loss is its sum over that count, so the losses add up to the
        mean over the union, as one process computes it."""
        import fusedce.torch
        from fusedce.torch.distributed import global_num_items

        batches = [make_case(20 + r, 6 + r, 9, torch.float64) for r in range(self.world)]
        w = make_case(30, 1, 9, torch.float64, weighted=True)[2]  # the class weights: the same everywhere
        x, t, _ = batches[self.rank]
        with Counted() as c:
            n = global_num_items(t, t[:2], weight=w)  # a step of two micro-batches
        assert c.ops == ["allreduce_"], f"global_num_items collectives {c.ops}"
        want = sum(float(w[b[1][b[1] != -100]].sum()) + float(w[b[1][:2][b[1][:2] != -100]].sum()) for b in batches)
        assert abs(n - want) <= 1e-12 * want
        whole_x = torch.cat([b[0] for b in batches])
        whole_t = torch.cat([b[1] for b in batches])
        n = global_num_items(t, weight=w)
        mean = float(fusedce.torch.cross_entropy(whole_x, whole_t, w))
        mine = fusedce.torch.cross_entropy(x, t, w, num_items=n)
        total = mine.detach().clone()
        dist.all_reduce(total)
        assert abs(float(total) - mean) <= 1e-12 * abs(mean), (float(total), mean)
        h = torch.randn(x.shape[0], 4, dtype=torch.float64)
        head = torch.randn(9, 4, dtype=torch.float64)
        lin = fusedce.torch.linear_cross_entropy(h, head, t, weight=w, num_items=n)
        plain = fusedce.torch.cross_entropy(h @ head.T, t, w, reduction="sum") / n
        assert abs(float(lin) - float(plain)) <= 1e-12 * abs(float(plain))

    def groups(self):
        """A subgroup of ranks 0 and 1 works as a world of its own; a rank outside it is told."""
        sub = dist.new_group([0, 1])  # every rank takes part in making it
        x, t, w = make_case(21, 6, 8, torch.float64, True)
        if self.rank in (0, 1):
            self.vocab_parallel("subgroup", x, t, w, OPTIONS["weight"], group=sub, ranks=[0, 1])
            self.losses.pop("subgroup")  # only two ranks have it: left out of the every-rank comparison
        else:
            from fusedce.torch.distributed import vocab_parallel_cross_entropy

            try:
                vocab_parallel_cross_entropy(x[:, :4], t, group=sub, weight=w)
            except ValueError as e:
                assert "not a member" in str(e), e
            else:
                raise AssertionError("a rank outside the group was not refused")
        dist.barrier()

    def bad_input(self):
        from fusedce.torch.distributed import vocab_parallel_cross_entropy as vp

        rank, world = self.rank, self.world
        x, t, w = make_case(22, 6, 4 * world, torch.float64, True)
        mine = x[:, rank * 4:(rank + 1) * 4]
        self.expect_error("targets differ", "target differs", lambda: vp(mine, (t + rank) % (4 * world)))
        bad = t.clone()
        bad[4] = 4 * world
        self.expect_error("target out of range", "out of range", lambda: vp(mine, bad))
        self.expect_error("options differ", "options differ", lambda: vp(mine, t, label_smoothing=0.1 * rank))
        self.expect_error("weights differ", "weight", lambda: vp(mine, t, weight=w + rank))
        sizes = [5 if r == 0 else 4 for r in range(world)]
        xs = torch.zeros(6, sizes[rank], dtype=torch.float64)
        self.expect_error("unequal sizes without offsets", "different sizes", lambda: vp(xs, t.clamp(max=3)))
        self.expect_error("overlapping shards", "cover the vocabulary",
                          lambda: vp(mine, t, vocab_start=0, vocab_size=4 * world))


def _join(rank, world, port):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    # a stuck collective fails the test instead of hanging it
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))


def result_path(outdir, rank):
    """Where rank `rank` leaves its results for the parent."""
    return os.path.join(outdir, f"rank{rank}.pt")


def _save(result, outdir, rank):
    path = result_path(outdir, rank)
    torch.save(result, path + ".part")
    os.replace(path + ".part", path)  # whole or absent, even if the rank is killed while saving


def _leave():
    """Exit without the interpreter's finalization: once in a CI run a rank whose work was done
    aborted there (std::terminate in torch's C++ teardown) and failed the test."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(rank, world, port, outdir):
    faulthandler.enable()  # a rank killed by a signal prints its Python stack to the test's stderr
    _join(rank, world, port)
    battery = Battery(rank, world)
    try:
        battery.options_and_dtypes()
        battery.layouts()
        battery.torch_ops_path()
        battery.linear()
        battery.dtensor()
        battery.data_parallel()
        battery.groups()
        battery.bad_input()
        _save({"losses": battery.losses, "errors": battery.errors}, outdir, rank)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    _leave()


def abort_in_teardown(rank, world, port, outdir, before_saving):
    """The harness's own check: rank 1 aborts after (or before) every rank saved its result."""
    _join(rank, world, port)
    if rank == 1 and before_saving:
        os.abort()
    _save({"rank": rank}, outdir, rank)
    dist.barrier()
    dist.destroy_process_group()
    if rank == 1:
        os.abort()
    _leave()
