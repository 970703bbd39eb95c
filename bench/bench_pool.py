"""The buffer pool's effect: the default call (a fresh result each call) against the same call
with out= (a buffer the caller keeps), and the torch adapter's forward + backward step
against torch's, each with the pool off (before: results from np.empty) and on (after).

    python bench/bench_pool.py                         (4096, 32000) and (65536, 1024) float32
    python bench/bench_pool.py --shape 1024x32000 --rounds 3 --calls 2

One run, interleaved: each round runs every variant with the pool off and then on (the order
alternates between rounds), one untimed call per variant first (which, with the pool on,
leaves it holding what the loop needs), then --calls timed calls. The loop keeps each result
until the next call has returned, as `loss, grad = f(x, t)` in a training loop does. Times
are the median and best over rounds x calls; the machine is shared and noisy, so read them as
indications. The last line gives the most the pool held (free for reuse) and had in use after
a variant's calls. torch allocates its own buffers without transparent huge pages unless
THP_MEM_ALLOC_ENABLE=1 is set; its times do not depend on fusedce's pool.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import fusedce

try:
    import torch
except ImportError:  # the NumPy rows still run
    torch = None

MODES = {"off": 0, "on": None}  # set_buffer_pool values: before (np.empty) and after (adaptive)


def parse_shape(text):
    batch, classes = (int(v) for v in text.lower().split("x"))
    return batch, classes


def variants(x, t):
    """(name, step) pairs; each step returns what the loop keeps until the next step."""
    out = np.empty_like(x)
    steps = [("default", lambda: fusedce.cross_entropy_with_grad(x, t)),
             ("out=", lambda: fusedce.cross_entropy_with_grad(x, t, out=out))]
    if torch is not None:
        import fusedce.torch as ft

        logits = torch.from_numpy(x).requires_grad_()
        target = torch.from_numpy(t)

        def step(loss_fn):
            return lambda: torch.autograd.grad(loss_fn(logits, target), logits)

        steps += [("torch adapter step", step(ft.cross_entropy)),
                  ("torch step", step(torch.nn.functional.cross_entropy))]
    return steps


def run_shape(shape, rounds, calls):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    t = rng.integers(0, shape[1], shape[0])
    steps = variants(x, t)
    times = {(mode, name): [] for mode in MODES for name, _ in steps}
    held = {mode: (0, 0) for mode in MODES}  # the most (free, in use) bytes seen after a variant
    for r in range(rounds):
        for mode in (MODES if r % 2 == 0 else reversed(list(MODES))):
            fusedce.set_buffer_pool(MODES[mode])
            for name, step in steps:
                kept = step()  # untimed: fills the pool with what the loop needs
                for _ in range(calls):
                    start = time.perf_counter()
                    kept = step()
                    times[mode, name].append(time.perf_counter() - start)
                pool = fusedce.cpu_info()["buffer_pool"]
                held[mode] = max(held[mode], (pool["held_bytes"], pool["in_use_bytes"]), key=sum)
                del kept
            fusedce.set_buffer_pool(0)  # the next mode starts from an empty pool
    return times, held


def report(shape, times, held):
    mib = 2**20
    print(f"\n{shape[0]}x{shape[1]} float32 (logits {shape[0] * shape[1] * 4 / mib:.0f} MiB): ms median / best")
    print(f"{'variant':<20}{'pool off':>18}{'pool on':>18}{'on/off':>8}")
    med = {key: statistics.median(v) * 1e3 for key, v in times.items()}
    for name in dict.fromkeys(name for _, name in times):
        off, on = times["off", name], times["on", name]
        print(f"{name:<20}{med['off', name]:>9.1f} / {min(off) * 1e3:<6.1f}{med['on', name]:>9.1f} / "
              f"{min(on) * 1e3:<6.1f}{med['on', name] / med['off', name]:>8.2f}")
    for mode in MODES:
        print(f"pool {mode}: default / out= = {med[mode, 'default'] / med[mode, 'out=']:.2f}", end="")
        if ("off", "torch step") in med:
            print(f"; torch step / adapter step = {med[mode, 'torch step'] / med[mode, 'torch adapter step']:.2f}",
                  end="")
        print()
    free, in_use = held["on"]
    print(f"pool on: it held {free / mib:.0f} MiB free for reuse with {in_use / mib:.0f} MiB in use (at most, "
          f"after a variant's calls: one kept result, {shape[0] * shape[1] * 4 / mib:.0f} MiB, in use)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", action="append", type=parse_shape, metavar="BxK")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3, help="timed calls per variant and round")
    args = parser.parse_args(argv)
    shapes = args.shape or [(4096, 32000), (65536, 1024)]
    before = fusedce.set_buffer_pool(None)
    info = fusedce.cpu_info()
    print(f"fusedce {fusedce.__version__}, ISA {info['active_isa']}, threads {info['num_threads']}"
          + (f", torch {torch.__version__} threads {torch.get_num_threads()}" if torch else ", no torch")
          + f"; transparent huge pages: {info['buffer_pool']['transparent_huge_pages']}; "
          f"{args.rounds} rounds x {args.calls} calls, interleaved")
    try:
        for shape in shapes:
            report(shape, *run_shape(shape, args.rounds, args.calls))
    finally:
        fusedce.set_buffer_pool(0)
        fusedce.set_buffer_pool(before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
