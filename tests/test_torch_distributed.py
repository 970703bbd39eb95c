"""fusedce.torch.distributed: vocab-parallel cross-entropy (and linear CE) over real processes.

Two layers:
- in process, no process group: every rank's shard work (the C kernels' shard mode, and the
  torch-ops path other devices take) and the merge, fed a hand-stacked "gather", against
  single-process fusedce on the whole logits, over every option, dtype and shard layout;
- spawned worlds of 2, 3 and 4 ranks over gloo on 127.0.0.1 (tests/distributed_worker.py):
  the real collective, counted (torch's CommDebugMode sees every c10d op at the dispatcher:
  one all_gather in the forward, none in the CE backward), each rank's loss and shard
  gradient against one process on the whole vocabulary, the same loss bits on every rank,
  DTensor input, the linear CE, data-parallel counts, and the errors (raised on every rank,
  never a hang).

Tolerances (the issue's): float64 within 1e-10 relative, float32 within 2e-6 relative (the
loss relative to itself, a gradient relative to its largest element).
"""

import os
import socket
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import distributed_worker as worker  # noqa: E402

import fusedce.torch  # noqa: E402
from fusedce.torch.distributed import _collective, _shard_math  # noqa: E402

RTOL = worker.RTOL

# --------------------------------------------------------------------------- in process


def _stacked_gather(x, target, weight, cuts, opts):
    """What the all_gather would return for shards cut at `cuts`, built by hand."""
    rows = x.shape[0]
    vectors, shards = [], []
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        shard = _shard_math.Shard(lo, hi - lo, cuts[-1])
        lse_s, part = _shard_math.partials(x[:, lo:hi].contiguous(), target, weight, shard, opts)
        zero = torch.zeros((), dtype=torch.float64)
        vectors.append(_collective.local_vector(rows, shard, (zero, zero, zero), lse_s, part, 0.0, 0.0, 0.0, "cpu"))
        shards.append(shard)
    return torch.stack(vectors), shards


@pytest.mark.parametrize("impl", ["kernels", "torch ops"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("option", sorted(worker.OPTIONS))
@pytest.mark.parametrize("cuts", [(0, 20, 40), (0, 7, 7, 30, 40), (0, 1, 2, 3, 40), (0, 39, 40)],
                         ids=["2 equal", "uneven, one empty", "tiny shards", "one class alone"])
def test_shards_merge_to_the_whole_rows(monkeypatch, impl, dtype, option, cuts):
    monkeypatch.setattr(_shard_math, "TORCH_OPS", impl == "torch ops")
    kw = worker.OPTIONS[option]
    x, target, weight = worker.make_case(seed=len(cuts) * 7 + len(option), rows=13, vocab=cuts[-1], dtype=dtype,
                                         weighted=kw.get("weighted", False), ignore_index=kw.get("ignore_index", -100))
    opts = worker.shard_options(kw)
    gathered, shards = _stacked_gather(x, target, weight, cuts, opts)
    lse, row_loss = _collective.merge(gathered, target, weight, shards, opts)
    full = x.clone().requires_grad_()
    ref = fusedce.torch.cross_entropy(full, target, weight, reduction="none", **worker.torch_options(kw))
    scale = torch.linspace(-1.5, 2.0, x.shape[0], dtype=torch.float64)
    (ref * scale.to(ref.dtype)).sum().backward()
    worker.assert_close(row_loss, ref, dtype, "per-row loss")
    grads = [_shard_math.gradient(x[:, s.start:s.start + s.size].contiguous(), target, weight, lse, scale, s, opts)
             for s in shards]
    worker.assert_close(torch.cat(grads, dim=1), full.grad, dtype, "gradient", per_element=False)


@pytest.mark.parametrize("impl", ["kernels", "torch ops"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_shards(monkeypatch, impl, dtype):
    """float16/bfloat16 shards: computed in float32, the gradient rounded once, as one process."""
    if dtype == torch.bfloat16:
        pytest.importorskip("ml_dtypes")
    monkeypatch.setattr(_shard_math, "TORCH_OPS", impl == "torch ops")
    kw = worker.OPTIONS["all"]
    x, target, weight = worker.make_case(seed=8, rows=11, vocab=30, dtype=dtype, weighted=True, ignore_index=3)
    opts = worker.shard_options(kw)
    cuts = (0, 9, 21, 30)
    gathered, shards = _stacked_gather(x, target, weight, cuts, opts)
    lse, row_loss = _collective.merge(gathered, target, weight, shards, opts)
    full = x.clone().requires_grad_()
    fusedce.torch.cross_entropy(full, target, weight, reduction="sum", **worker.torch_options(kw)).backward()
    ref = fusedce.torch.cross_entropy(x.float(), target, weight.float(), reduction="none", **worker.torch_options(kw))
    worker.assert_close(row_loss, ref, torch.float32 if impl == "kernels" else dtype, "per-row loss")
    ones = torch.ones(x.shape[0], dtype=torch.float64)
    grads = [_shard_math.gradient(x[:, s.start:s.start + s.size].contiguous(), target, weight, lse, ones, s, opts)
             for s in shards]
    assert grads[0].dtype == dtype
    worker.assert_close(torch.cat(grads, dim=1), full.grad, dtype, "gradient", per_element=False)


@pytest.mark.parametrize("impl", ["kernels", "torch ops"])
def test_shards_with_minus_inf_logits_and_all_rows_ignored(monkeypatch, impl):
    """A shard whose logits are all -inf (a padded vocabulary), and a batch of ignored rows."""
    monkeypatch.setattr(_shard_math, "TORCH_OPS", impl == "torch ops")
    x, target, _ = worker.make_case(seed=3, rows=6, vocab=30, dtype=torch.float64)
    x[:, 20:] = -torch.inf
    target = target.clamp(max=19)
    opts = _shard_math.Options(-100, 0.0, 1e-3, 0.0)
    gathered, shards = _stacked_gather(x, target, None, (0, 10, 20, 30), opts)
    lse, row_loss = _collective.merge(gathered, target, None, shards, opts)
    ref = fusedce.torch.cross_entropy(x, target, reduction="none", z_loss=1e-3)
    worker.assert_close(row_loss, ref, torch.float64, "loss with a -inf shard")
    grad = _shard_math.gradient(x[:, 20:].contiguous(), target, None, lse, torch.ones(6, dtype=torch.float64),
                                shards[2], opts)
    assert torch.equal(grad, torch.zeros_like(grad))

    ignored = torch.full_like(target, -100)
    gathered, shards = _stacked_gather(x, ignored, None, (0, 10, 20, 30), opts)
    _, row_loss = _collective.merge(gathered, ignored, None, shards, opts)
    assert torch.equal(row_loss, torch.zeros_like(row_loss))


def test_checksums_see_a_changed_entry_and_ignore_summation_order():
    t = torch.arange(1000) % 37
    base = _collective.checksum(t)
    for i in (0, 500, 999):
        changed = t.clone()
        changed[i] += 1
        assert _collective.checksum(changed) != base
    swapped = t.clone()
    swapped[[3, 4]] = swapped[[4, 3]]
    assert _collective.checksum(swapped) != base
    assert _collective.checksum(t.to(torch.int32)) == base
    assert float(base) == int(base) and 0 <= float(base) < 2**52  # exact in float64


def test_outside_a_process_group_the_error_says_so():
    if dist.is_initialized():
        pytest.skip("a default process group exists in this process")
    with pytest.raises(RuntimeError, match="init_process_group"):
        fusedce.torch.distributed.vocab_parallel_cross_entropy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("num_items", [7, 7.5, 0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_num_items_divides_the_sum(num_items, dtype):
    """num_items in the single-process functions: the sum over num_items, its gradient scaled
    inside the fused pass (0 over 0, as 'mean' over nothing)."""
    if dtype == torch.bfloat16:
        pytest.importorskip("ml_dtypes")
    x, target, weight = worker.make_case(seed=5, rows=9, vocab=17, dtype=dtype, weighted=True)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    got = fusedce.torch.cross_entropy(a, target, weight, label_smoothing=0.1, num_items=num_items)
    total = fusedce.torch.cross_entropy(b, target, weight, label_smoothing=0.1, reduction="sum")
    want = total / num_items if num_items else total * 0.0
    want.backward()
    got.backward()
    tol = 8e-3 if dtype == torch.bfloat16 else 1e-6  # bfloat16: want is rounded twice (the sum, then /)
    torch.testing.assert_close(got, want.to(got.dtype), rtol=tol, atol=0)
    torch.testing.assert_close(a.grad, b.grad, rtol=tol * 10, atol=tol / 10)

    h = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(17, 5, dtype=torch.float64, requires_grad=True)
    got = fusedce.torch.linear_cross_entropy(h, w, target, num_items=torch.tensor(float(num_items)))
    ref = fusedce.torch.cross_entropy(h @ w.T, target, reduction="sum") / (num_items or float("inf"))
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)


def test_num_items_is_checked():
    x, target, _ = worker.make_case(seed=1, rows=3, vocab=4, dtype=torch.float64)
    with pytest.raises(ValueError, match="reduction='mean'"):
        fusedce.torch.cross_entropy(x, target, reduction="sum", num_items=3)
    with pytest.raises(ValueError, match=">= 0"):
        fusedce.torch.cross_entropy(x, target, num_items=-1)
    with pytest.raises(TypeError, match="num_items"):
        fusedce.torch.cross_entropy(x, target, num_items="3")
    with pytest.raises(ValueError, match="one-element"):
        fusedce.torch.linear_cross_entropy(x, torch.ones(4, 4, dtype=torch.float64), target,
                                           num_items=torch.ones(2))


# --------------------------------------------------------------------------- spawned worlds


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_world(world, tmp_path, fn=worker.main, *args):
    """Each rank runs `fn` (worker.main: the battery); the ranks' results come back through files.

    A rank saves its file only after every check of the battery passed on it. A rank killed by a
    signal once every rank has saved died in torch's gloo teardown, after all that this test
    checks: that is a warning (the files are still compared), anything else a failure."""
    import torch.multiprocessing as mp

    paths = [worker.result_path(tmp_path, r) for r in range(world)]
    try:
        mp.spawn(fn, args=(world, _free_port(), str(tmp_path), *args), nprocs=world, join=True)
    except mp.ProcessExitedException as e:
        if e.signal_name is None or not all(os.path.exists(p) for p in paths):
            raise
        warnings.warn(f"rank {e.error_index} of {world} was killed by {e.signal_name} in torch's teardown, "
                      "after every rank had passed and saved its results")
    return [torch.load(p) for p in paths]


def test_a_rank_killed_after_every_rank_saved_warns_and_before_fails(tmp_path):
    import torch.multiprocessing as mp

    after, before = tmp_path / "after", tmp_path / "before"
    after.mkdir()
    before.mkdir()
    with pytest.warns(UserWarning, match="SIGABRT in torch's teardown"):
        results = _run_world(3, after, worker.abort_in_teardown, False)
    assert [r["rank"] for r in results] == [0, 1, 2]
    # the ranks left waiting may also fail on the dead peer; whichever spawn reports, it raises
    with pytest.raises((mp.ProcessExitedException, mp.ProcessRaisedException)):
        _run_world(3, before, worker.abort_in_teardown, True)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_world(world, tmp_path):
    results = _run_world(world, tmp_path)
    names = results[0]["losses"].keys()
    assert len(names) > 20
    for r in range(1, world):
        assert results[r]["losses"].keys() == names
        for name in names:  # bit-identical on every rank
            assert torch.equal(results[r]["losses"][name], results[0]["losses"][name]), (name, r)
    for r in range(world):
        assert results[r]["errors"] == results[0]["errors"]  # every rank raised, alike
    assert len(results[0]["errors"]) >= 5
