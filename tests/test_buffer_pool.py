"""The buffer pool large results come from (csrc/buffer_pool.c, fusedce/_pool.py).

A pooled block must stay in use while anything can reach it (the result, a view, a torch
tensor made from it, in any order of deletion), be handed out again only after that, stay
within its byte bound, give its memory back when turned off (seen in the process's resident
set), work from many threads and in a child after fork, and not leak over 100,000 calls.
Values are checked against the float64 reference; a block handed out twice would show as a
kept result whose values changed.
"""

import copy
import gc
import itertools
import os
import pickle
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

import fusedce
from fusedce import _pool
from fusedce import reference as ref
from parallel_runs import run_concurrently, wait_for_child
from tolerances import assert_grad_close, assert_loss_close

MIB = 2**20
# (B, K) float32: a 2 MiB gradient, over the pool's 128 KiB threshold.
B, K = 256, 2048


def pool_info():
    return fusedce.cpu_info()["buffer_pool"]


def from_pool(a):
    """True when a's memory is a pool block: NumPy's base chain ends at the cffi buffer."""
    while isinstance(a, np.ndarray):
        a = a.base
    return type(a).__module__ == "_cffi_backend" and type(a).__name__ == "buffer"


def problem(seed, batch=B, classes=K):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, classes)) * 3).astype(np.float32), rng.integers(0, classes, batch)


def expected_grad(seed):
    x, t = problem(seed)
    return ref.cross_entropy_with_grad(x, t)[1]


def churn(n=4):
    """Calls whose results would take any block the pool wrongly thinks free."""
    for seed in range(100, 100 + n):
        x, t = problem(seed)
        _, g = fusedce.cross_entropy_with_grad(x, t)
        g.fill(np.nan)  # a wrongly shared block would now hold NaN
        del g


@pytest.fixture(autouse=True)
def fresh_pool():
    """Each test starts from an empty pool with the adaptive bound, and leaves it so."""
    before = fusedce.set_buffer_pool(0)
    fusedce.set_buffer_pool(None)
    yield
    fusedce.set_buffer_pool(0)
    fusedce.set_buffer_pool(before)


def _rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc/self/status")

# ---------------------------------------------------------------------------- which results


def _every_result(rows, classes):
    """Every result fusedce allocates, on inputs large enough for each to be pooled."""
    x, t = problem(1, rows, classes)
    q = np.random.default_rng(2).uniform(0, 1, x.shape).astype(np.float32)
    _, lse = fusedce.cross_entropy_forward(x, t, reduction="none")
    return {
        "gradient": fusedce.cross_entropy_with_grad(x, t)[1],
        "gradient (backward)": fusedce.cross_entropy_backward(x, t, lse),
        "per-row loss": fusedce.cross_entropy(x, t, reduction="none"),
        "lse": lse,
        "softmax": fusedce.softmax(x),
        "log_softmax": fusedce.log_softmax(x),
        "logsumexp": fusedce.logsumexp(x),
        "bce element loss": fusedce.binary_cross_entropy_with_logits(x, q, reduction="none"),
        "bce gradient": fusedce.binary_cross_entropy_with_logits_with_grad(x, q)[1],
    }


def test_every_large_result_comes_from_the_pool_and_is_an_ordinary_array():
    # 2**18 rows: the per-row results are 1 MiB in float32, over the pool's threshold
    results = _every_result(2**18, 4)
    x, t = problem(1, 2**18, 4)
    for name, r in results.items():
        assert from_pool(r), f"{name} does not come from the pool"
        assert r.flags.c_contiguous and r.flags.aligned and r.flags.writeable, name
        align = 2 * MIB if r.nbytes >= 2 * MIB else 4096  # huge-page aligned from 2 MiB up
        assert r.ctypes.data % align == 0, f"{name}: a pooled block of {r.nbytes} bytes is {align}-aligned"
    assert_grad_close(results["gradient"], ref.cross_entropy_with_grad(x, t)[1], "float32")
    assert_loss_close(results["per-row loss"], ref.cross_entropy(x, t, reduction="none"), "float32")
    assert_loss_close(results["logsumexp"], ref.logsumexp(x), "float32")
    assert results["lse"].dtype == np.float32 and results["per-row loss"].shape == (2**18,)
    assert pool_info()["in_use_blocks"] >= len(results)


def test_small_results_and_results_with_the_pool_off_come_from_numpy():
    x, t = problem(0, 8, 16)
    assert not from_pool(fusedce.cross_entropy_with_grad(x, t)[1])
    # the threshold: 128 KiB of float32 lse is pooled, 64 bytes less is not
    assert from_pool(fusedce.logsumexp(problem(0, 2**15, 4)[0]))
    assert not from_pool(fusedce.logsumexp(problem(0, 2**15 - 16, 4)[0]))
    fusedce.set_buffer_pool(0)
    x, t = problem(0)
    _, g = fusedce.cross_entropy_with_grad(x, t)
    assert not from_pool(g)
    assert_grad_close(g, expected_grad(0), "float32")


def test_a_released_block_is_handed_out_again():
    x, t = problem(0)
    _, g = fusedce.cross_entropy_with_grad(x, t)
    address = g.ctypes.data
    del g
    assert pool_info()["held_blocks"] == 1
    hits = pool_info()["hits"]
    _, g = fusedce.cross_entropy_with_grad(x, t)
    assert g.ctypes.data == address
    assert pool_info()["hits"] == hits + 1
    assert_grad_close(g, expected_grad(0), "float32")


def test_ordinary_array_behaviour():
    x, t = problem(0)
    _, g = fusedce.cross_entropy_with_grad(x, t)
    want = expected_grad(0)
    assert_grad_close(np.concatenate([g, g])[B:], want, "float32")
    assert np.sum(g) == pytest.approx(np.sum(want), abs=1e-3)
    g2 = g.copy()
    g *= 2.0  # writeable in place
    np.testing.assert_array_equal(g, 2.0 * g2)
    assert pickle.loads(pickle.dumps(g)).tobytes() == g.tobytes()
    assert copy.deepcopy(g).tobytes() == g.tobytes()
    assert np.shares_memory(g.reshape(-1)[:10], g) and g.T.base is not None


# ---------------------------------------------------------------------------- lifetime


def test_a_view_outlives_its_result():
    x, t = problem(0)
    _, g = fusedce.cross_entropy_with_grad(x, t)
    rows = g[10:20, ::3]
    flat = g.reshape(-1)
    want = expected_grad(0)
    del g
    churn()
    assert_grad_close(rows, want[10:20, ::3], "float32")
    assert_grad_close(flat.reshape(B, K), want, "float32")
    held = pool_info()["in_use_blocks"]
    del rows
    assert pool_info()["in_use_blocks"] == held  # flat still reaches the block
    del flat
    assert pool_info()["in_use_blocks"] == held - 1


ORDER_NAMES = ("result", "view", "copy", "deepcopy", "unpickled")


@pytest.mark.parametrize("order", list(itertools.permutations(ORDER_NAMES)), ids="-".join)
def test_pickled_copied_and_deleted_in_every_order(order):
    in_use = pool_info()["in_use_blocks"]
    x, t = problem(0)
    want = expected_grad(0)
    _, g = fusedce.cross_entropy_with_grad(x, t)
    objects = {"result": g, "view": g[:, 5:], "copy": copy.copy(g), "deepcopy": copy.deepcopy(g),
               "unpickled": pickle.loads(pickle.dumps(g[:, 5:]))}
    expect = {"result": want, "view": want[:, 5:], "copy": want, "deepcopy": want, "unpickled": want[:, 5:]}
    del g
    for name in order:
        del objects[name]
        churn(2)
        for other in objects:
            assert_grad_close(objects[other], expect[other], "float32", what=f"{other} after deleting {name}")
    assert pool_info()["in_use_blocks"] == in_use


def test_a_torch_tensor_outlives_its_result():
    torch = pytest.importorskip("torch")
    in_use = pool_info()["in_use_blocks"]
    x, t = problem(0)
    _, g = fusedce.cross_entropy_with_grad(x, t)
    tensor = torch.from_numpy(g)[3:]
    del g
    churn()
    assert_grad_close(tensor.numpy(), expected_grad(0)[3:], "float32")
    del tensor
    assert pool_info()["in_use_blocks"] == in_use


def test_torch_adapter_gradients_come_from_the_pool_and_keep_their_values():
    torch = pytest.importorskip("torch")
    import fusedce.torch as ft

    x, t = problem(0)
    hits, kept = pool_info()["hits"], {}
    for step in range(6):
        logits = torch.from_numpy(x * (1 + step)).requires_grad_()
        ft.cross_entropy(logits, torch.from_numpy(t)).backward()
        if step % 2 == 0:
            kept[step] = logits.grad  # the tensor fusedce allocated (or torch's copy of it)
        del logits  # odd steps: the gradient's block goes back for the next step
    assert pool_info()["hits"] > hits, "later steps reuse the gradient blocks earlier ones released"
    for step, grad in kept.items():
        want = ref.cross_entropy_with_grad(x * (1 + step), t)[1]
        assert_grad_close(grad.numpy(), want, "float32", what=f"step {step}")


# ---------------------------------------------------------------------------- threads, fork


def test_many_threads_allocating_and_releasing():
    workers, rounds = 8, 6
    in_use = pool_info()["in_use_blocks"]
    shapes = [(B + 16 * i, K) for i in range(workers)]
    problems = [problem(i, *shapes[i]) for i in range(workers)]
    wants = [ref.cross_entropy_with_grad(x, t)[1] for x, t in problems]
    def work(i):
        kept = []
        for r in range(rounds):
            _, g = fusedce.cross_entropy_with_grad(*problems[i])
            kept.append(g[::2])  # a view keeps the block
            if r % 2:
                kept.pop(0)
            for view in kept:
                assert_grad_close(view, wants[i][::2], "float32", what=f"thread {i}")

    run_concurrently(work, workers)
    info = pool_info()
    assert info["in_use_blocks"] == in_use and info["held_bytes"] <= info["bound"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork with threads alive (3.12+)
def test_fork_in_the_middle():
    x, t = problem(0)
    want = expected_grad(0)
    _, kept = fusedce.cross_entropy_with_grad(x, t)  # in use across the fork
    churn(2)  # and some blocks free in the pool
    stop = threading.Event()

    def busy():  # another thread allocating and releasing while we fork
        while not stop.is_set():
            _pool.empty(3 * MIB, np.uint8)

    other = threading.Thread(target=busy)
    other.start()
    try:
        pid = os.fork()
        if pid == 0:  # the child: compute, check, never return into pytest
            ok = False
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    churn(3)
                    _, g = fusedce.cross_entropy_with_grad(x, t)
                    assert_grad_close(g, want, "float32")
                    assert_grad_close(kept, want, "float32")
                    assert g.ctypes.data != kept.ctypes.data
                    del kept
                    churn(3)
                    assert_grad_close(g, want, "float32")
                    ok = True
            finally:
                os._exit(0 if ok else 1)
        churn(3)
        _, g = fusedce.cross_entropy_with_grad(x, t)
        status = wait_for_child(pid)
    finally:
        stop.set()
        other.join()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "the child's results were wrong"
    assert_grad_close(kept, want, "float32", what="the parent's result kept across the fork")
    assert_grad_close(g, want, "float32")


# ---------------------------------------------------------------------------- bounds, memory


@needs_proc
def test_byte_bound_holds_and_memory_returns_when_turned_off():
    x, t = problem(0, 2048, 4096)  # 32 MiB gradients
    size = x.nbytes
    base = _rss_bytes()
    grads = [fusedce.cross_entropy_with_grad(x, t)[1] for _ in range(4)]
    del grads
    info = pool_info()
    assert info["held_blocks"] == 4 and info["held_bytes"] == 4 * size, "adaptive: keeps the recent peak in use"
    assert _rss_bytes() - base > 3.5 * size, "the kept blocks are resident"

    fusedce.set_buffer_pool(int(2.5 * size))
    info = pool_info()
    assert info["held_bytes"] <= 2.5 * size and info["held_blocks"] == 2
    assert _rss_bytes() - base < 2.5 * size + 8 * MIB
    grads = [fusedce.cross_entropy_with_grad(x, t)[1] for _ in range(4)]
    del grads
    assert pool_info()["held_bytes"] <= 2.5 * size, "the bound holds when more is released"

    fusedce.set_buffer_pool(0)
    assert pool_info()["held_bytes"] == 0
    assert _rss_bytes() - base < 8 * MIB, "turned off, the pool gives its memory back"
    _, g = fusedce.cross_entropy_with_grad(x, t)
    assert not from_pool(g)


def test_adaptive_bound_follows_the_working_set_down():
    big_x, big_t = problem(0, 2048, 4096)
    keep = [fusedce.cross_entropy_with_grad(big_x, big_t)[1] for _ in range(3)]
    del keep
    assert pool_info()["held_bytes"] == 3 * big_x.nbytes
    x, t = problem(1)
    for _ in range(130):  # two windows of the adaptive bound with only small results in use
        fusedce.cross_entropy_with_grad(x, t)
    info = pool_info()
    assert info["bound"] < big_x.nbytes and info["held_bytes"] <= info["bound"]


def test_set_buffer_pool_arguments():
    assert fusedce.set_buffer_pool(123 * MIB) is None
    assert fusedce.set_buffer_pool("1G") == 123 * MIB
    assert pool_info()["limit"] == 2**30
    assert fusedce.set_buffer_pool("512MiB") == 2**30
    assert pool_info()["limit"] == 512 * MIB
    fusedce.set_buffer_pool("auto")
    assert pool_info()["limit"] is None
    with pytest.raises(ValueError, match=r"max_bytes must be >= 0 bytes.*got -1"):
        fusedce.set_buffer_pool(-1)
    with pytest.raises(TypeError, match=r"max_bytes must be an int.*got 1.5"):
        fusedce.set_buffer_pool(1.5)
    with pytest.raises(TypeError, match="got True"):
        fusedce.set_buffer_pool(True)
    with pytest.raises(ValueError, match=r"max_bytes must be a byte count.*got 'lots'"):
        fusedce.set_buffer_pool("lots")


def _limit_in_subprocess(value):
    env = dict(os.environ, FUSEDCE_BUFFER_POOL=value)
    code = "import fusedce; print(fusedce.cpu_info()['buffer_pool']['limit'])"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    run.stdout = run.stdout.splitlines()[-1] if run.stdout.strip() else ""  # an editable build may log first
    return run


@pytest.mark.parametrize("value, limit", [("0", "0"), ("256M", str(256 * MIB)), ("3000000", "3000000"),
                                          ("auto", "None")])
def test_environment_variable(value, limit):
    run = _limit_in_subprocess(value)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == limit


def test_environment_variable_rejects_nonsense():
    run = _limit_in_subprocess("a lot")
    assert run.returncode != 0
    assert "FUSEDCE_BUFFER_POOL must be a byte count" in run.stderr and "'a lot'" in run.stderr


def test_info_command_reports_the_pool(capsys):
    from fusedce.__main__ import main

    x, t = problem(0)
    _, g = fusedce.cross_entropy_with_grad(x, t)
    del g
    assert main(["info"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("buffer pool:"))
    assert "holds 2 MiB in 1 blocks" in line and "adaptive" in line


# ---------------------------------------------------------------------------- leaks


@needs_proc
def test_many_pooled_results_keep_memory_flat():
    """100,000 results from the pool (some kept a while, some viewed, most released at once)
    between real calls: the resident set and the pool's in-use count come back to where they
    were (a leaked block is 1 MiB; a leaked descriptor or cffi object 100 bytes a call, 10 MB)."""
    x, t = problem(0, 64, 4096)  # 1 MiB gradients
    q = np.random.default_rng(1).uniform(0, 1, x.shape).astype(np.float32)
    sizes = [MIB, MIB + 4096, 2 * MIB, 3 * MIB + 100]

    def run(n):
        ring = [None] * 7
        for i in range(n):
            a = _pool.empty(sizes[i % 4] // 4, np.float32)
            ring[i % 7] = a[1:] if i % 3 else a
            if i % 100 == 0:
                fusedce.cross_entropy_with_grad(x, t)
                fusedce.softmax(x)
                fusedce.binary_cross_entropy_with_logits_with_grad(x, q, reduction="none")

    run(5_000)
    gc.collect()
    before, in_use = _rss_bytes(), pool_info()["in_use_blocks"]
    run(100_000)
    gc.collect()
    growth = _rss_bytes() - before
    assert pool_info()["in_use_blocks"] == in_use
    assert growth < 8 * MIB, f"resident memory grew by {growth / MIB:.1f} MiB over 100,000 pooled results"
