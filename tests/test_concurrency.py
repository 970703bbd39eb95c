"""Many Python threads calling fusedce at once: cffi releases the GIL around every kernel, so
the kernels really run concurrently; they must be re-entrant and give what serial calls give.

The C side's mutable state is in dispatch.c: the active kernel table and the thread
count, both read and written with atomics, and the CPU detection, run once under
pthread_once (docs/guarantees.md); and the buffer pool's lists, under a mutex
(tests/test_buffer_pool.py).
"""

import os
import threading

import numpy as np
import pytest

import fusedce
from parallel_runs import run_concurrently, wait_for_child

WORKERS = 8
ROUNDS = 12


def _problem(seed):
    """Every public function with its own data: (name, call) pairs. Sizes are large enough for
    a kernel to take a while (so calls overlap) but keep K < 8192: no row is split over
    threads, so results do not depend on the thread count and must match bit for bit."""
    rng = np.random.default_rng(seed)
    B, K = 64 + seed, 1000 + 37 * seed  # 64k+ elements: calls use OpenMP when allowed 2 threads
    x = (rng.standard_normal((B, K)) * 3).astype(np.float32)
    t = rng.integers(0, K, B)
    t[::5] = -100
    q = rng.uniform(0, 1, (B, K)).astype(np.float32)
    w = rng.uniform(0.5, 2, K)
    go = rng.standard_normal(B)
    opts = {"weight": w, "label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 20.0}
    _, lse = fusedce.cross_entropy_forward(x, t, reduction="none", **opts)

    def inplace():
        buf = x.copy()
        fusedce.cross_entropy_with_grad(buf, t, reduction="none", grad_output=go, inplace=True, **opts)
        return buf

    return [
        ("cross_entropy", lambda: fusedce.cross_entropy(x, t, reduction="none", **opts)),
        ("cross_entropy_forward", lambda: fusedce.cross_entropy_forward(x, t, **opts)),
        ("cross_entropy_with_grad", lambda: fusedce.cross_entropy_with_grad(x, t, grad_output=0.5, **opts)),
        ("cross_entropy_with_grad[probabilities]", lambda: fusedce.cross_entropy_with_grad(x, q)),
        ("cross_entropy_with_grad[inplace]", inplace),
        ("cross_entropy_backward", lambda: fusedce.cross_entropy_backward(x, t, lse, go, reduction="none", **opts)),
        ("log_softmax", lambda: fusedce.log_softmax(x)),
        ("softmax", lambda: fusedce.softmax(x)),
        ("logsumexp", lambda: fusedce.logsumexp(x)),
        ("binary_cross_entropy_with_logits", lambda: fusedce.binary_cross_entropy_with_logits(x, q, pos_weight=w)),
        ("binary_cross_entropy_with_logits_with_grad",
         lambda: fusedce.binary_cross_entropy_with_logits_with_grad(x, q, weight=w, reduction="none")),
    ]


def _as_arrays(result):
    return [np.asarray(r) for r in (result if isinstance(result, tuple) else (result,))]


def _check_against(expected, problems, rounds):
    def work(i):
        for r in range(rounds):
            # each thread walks the functions in its own order, so different kernels overlap
            for k in np.random.default_rng(100 * i + r).permutation(len(problems[i])):
                name, call = problems[i][k]
                for got, want in zip(_as_arrays(call()), expected[i][k]):
                    assert got.tobytes() == want.tobytes(), f"thread {i}: {name} differs from the serial call"

    return work


@pytest.mark.parametrize("threads_per_call", [1, 2], ids=["1 thread per call", "2 threads per call"])
def test_threads_give_the_serial_results(isa, threads_per_call):
    before = fusedce.get_num_threads()
    fusedce.set_num_threads(threads_per_call)
    try:
        problems = [_problem(i) for i in range(WORKERS)]
        expected = [[_as_arrays(call()) for _, call in p] for p in problems]
        run_concurrently(_check_against(expected, problems, ROUNDS), WORKERS)
    finally:
        fusedce.set_num_threads(before)


def test_thread_count_and_isa_queries_while_kernels_run():
    """set_num_threads, get_num_threads, available_isas and cpu_info from other threads while
    kernels run: no crash, and the results stay the serial ones (the thread count never
    changes a result here: no row is split)."""
    before = fusedce.get_num_threads()
    problems = [_problem(i) for i in range(WORKERS // 2)]
    expected = [[_as_arrays(call()) for _, call in p] for p in problems]
    check = _check_against(expected, problems, ROUNDS // 2)
    done = threading.Event()

    def fiddle(i):
        rng = np.random.default_rng(i)
        while not done.is_set():
            fusedce.set_num_threads(int(rng.integers(0, 4)))  # 0: all cores
            assert fusedce.get_num_threads() >= 1
            assert "portable" in fusedce.available_isas()
            assert fusedce.cpu_info()["active_isa"] in fusedce.available_isas()

    def work(i):
        if i < len(problems):
            try:
                check(i)
            finally:
                done.set()
        else:
            fiddle(i)

    try:
        run_concurrently(work, workers=2 * len(problems))
    finally:
        fusedce.set_num_threads(before)


def test_switching_isa_while_kernels_run():
    """set_isa swaps the whole kernel table atomically: calls that race with it run on one ISA
    or another, never on a torn mix, so every result matches one of the ISAs' serial results."""
    isas = fusedce.available_isas()
    if len(isas) < 2:
        pytest.skip(f"one ISA only: {isas}")
    before = fusedce.cpu_info()["active_isa"]
    problems = [_problem(i) for i in range(WORKERS // 2)]
    per_isa = {}
    for name in isas:
        fusedce.set_isa(name)
        per_isa[name] = [[b"".join(a.tobytes() for a in _as_arrays(call())) for _, call in p] for p in problems]
    done = threading.Event()

    def work(i):
        if i >= len(problems):
            rng = np.random.default_rng(i)
            while not done.is_set():
                fusedce.set_isa(isas[int(rng.integers(0, len(isas)))])
            return
        try:
            for _ in range(ROUNDS // 2):
                for k, (name, call) in enumerate(problems[i]):
                    got = b"".join(a.tobytes() for a in _as_arrays(call()))
                    assert any(got == per_isa[isa][i][k] for isa in isas), f"{name}: matches no ISA's result"
        finally:
            done.set()

    try:
        run_concurrently(work, workers=len(problems) + 2)
    finally:
        fusedce.set_isa(before)



@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork with threads alive (3.12+)
def test_a_forked_child_computes_on_one_thread():
    """GNU OpenMP cannot run a parallel region in a child forked after the parent ran one (the
    child waits for pool threads fork did not copy): the child computes on one thread, and a
    request for more warns and keeps one. The parent keeps its threads."""
    before = fusedce.get_num_threads()
    fusedce.set_num_threads(2)
    try:
        problems = _problem(0)
        expected = [_as_arrays(call()) for _, call in problems]  # the parent's OpenMP team now exists
        pid = os.fork()
        if pid == 0:
            ok = False
            try:
                assert fusedce.get_num_threads() == 1
                with pytest.warns(RuntimeWarning, match="forked child"):
                    fusedce.set_num_threads(2)
                assert fusedce.get_num_threads() == 1
                for (name, call), want in zip(problems, expected):
                    for got, w in zip(_as_arrays(call()), want):
                        assert got.tobytes() == w.tobytes(), name
                ok = True
            finally:
                os._exit(0 if ok else 1)
        status = wait_for_child(pid)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "the child's results differ"
        assert fusedce.get_num_threads() == 2
    finally:
        fusedce.set_num_threads(before)
