"""`fusedce bench-linear`: the fused linear + cross-entropy against the three GEMMs it cannot
avoid, torch's chunked F.linear_cross_entropy and the unfused F.cross_entropy(x @ W.T, t).

Each variant runs in a fresh process (so that one's allocator state and page cache do not
flatter the next): one warm-up step, then `repeat` timed forward+backward steps (gradients to
the input and the head's weight). Peak memory growth is the process's peak resident set
during a step (VmHWM, reset to the current RSS before it: Linux >= 4.0) above the resident set
with the inputs and their gradients from the warm-up step in place, so it counts what the
step allocates on top of what any training step keeps.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from ._rss import peak_growth

VARIANTS = ("gemms", "torch-unfused", "torch-chunked", "fusedce-torch", "fusedce-numpy")
DEFAULT_SHAPES = ((4096, 1024, 32000), (2048, 1024, 128256))
DEFAULT_REPEAT = 3


def parse_shape(text):
    try:
        n, h, v = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"expected NxHxV (rows x hidden x classes), got {text!r}") from None
    if min(n, h, v) < 1:
        raise ValueError(f"every size must be >= 1, got {text!r}")
    return n, h, v


def _inputs(n, h, v, dtype_name):
    """The same (input, head weight, target) for every variant, as NumPy arrays (bfloat16 and
    float16 are made from float32 by torch)."""
    import numpy as np

    rng = np.random.default_rng(0)
    dtype = dtype_name if dtype_name in ("float32", "float64") else "float32"
    x = (rng.standard_normal((n, h), dtype=np.float32) * 0.5).astype(dtype)
    w = (rng.standard_normal((v, h), dtype=np.float32) / h**0.5).astype(dtype)
    return x, w, rng.integers(0, v, n)


def _torch_step(variant, n, h, v, dtype_name):
    import torch

    import fusedce.torch as ft

    F = torch.nn.functional
    dtype = getattr(torch, dtype_name)
    x, w, t = (torch.from_numpy(a) for a in _inputs(n, h, v, dtype_name))
    x, w = x.to(dtype).requires_grad_(), w.to(dtype).requires_grad_()

    def loss_of():
        if variant == "torch-unfused":
            return F.cross_entropy(x @ w.T, t)
        if variant == "torch-chunked":
            return F.linear_cross_entropy(x, w, t, options=torch.nn.LinearCrossEntropyOptions())
        return ft.linear_cross_entropy(x, w, t)

    def step():
        if variant == "gemms":
            with torch.no_grad():
                logits = x @ w.T
                return logits @ w, logits.T @ x, float(logits[0, 0])
        x.grad = w.grad = None
        loss = loss_of()
        loss.backward()
        return float(loss)

    return step


def _numpy_step(n, h, v, dtype_name):
    import fusedce

    x, w, t = _inputs(n, h, v, dtype_name)
    return lambda: float(fusedce.linear_cross_entropy_with_grad(x, w, t)[0])


def child(variant, n, h, v, dtype_name, repeat):
    """Runs in the fresh process: prints one JSON line."""
    step = _numpy_step(n, h, v, dtype_name) if variant == "fusedce-numpy" else _torch_step(variant, n, h, v, dtype_name)
    result = step()  # warm-up: libraries initialised, gradients allocated as a training step keeps them
    times, peaks = [], []
    for _ in range(repeat):
        elapsed, peak = peak_growth(step)
        times.append(elapsed)
        peaks.append(peak)
    loss = result[-1] if isinstance(result, tuple) else result
    print(json.dumps({"variant": variant, "times": times, "peak": max(peaks), "loss": loss}))


def run_variant(variant, shape, dtype_name, repeat):
    n, h, v = shape
    cmd = [sys.executable, "-m", "fusedce._bench_linear", variant, str(n), str(h), str(v), dtype_name, str(repeat)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"variant": variant, "error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])


def available(variant, dtype_name):
    """None, or why the variant cannot run here."""
    if variant == "fusedce-numpy" and dtype_name not in ("float32", "float64"):
        return "NumPy API: float32/float64 only"
    if variant != "fusedce-numpy":
        try:
            import torch  # noqa: F401
        except ImportError:
            return "torch not installed"
    return None


def bench(shapes, dtypes, repeat, emit=print):
    """Runs every variant; emits a table per (shape, dtype); returns the rows."""
    rows = []
    for shape in shapes:
        n, h, v = shape
        logits_mb = n * v * 4 / 2**20
        for dtype_name in dtypes:
            results = {}
            for variant in VARIANTS:
                reason = available(variant, dtype_name)
                results[variant] = {"variant": variant, "error": reason} if reason else run_variant(
                    variant, shape, dtype_name, repeat)
            base = results["gemms"]
            chunked = results["torch-chunked"]
            emit(f"\n(N, H, V) = ({n}, {h}, {v}) {dtype_name}; logits {logits_mb:,.0f} MB in float32; "
                 f"median of {repeat} steps, each variant in a fresh process")
            emit(f"  {'variant':15} {'time':>9} {'t/GEMMs':>8} {'chunked/t':>10} {'peak growth':>12} "
                 f"{'mem/chunked':>11}  loss")
            for variant in VARIANTS:
                r = results[variant]
                if r.get("error"):
                    emit(f"  {variant:15} {r['error']}")
                    continue
                median = statistics.median(r["times"])
                r.update(shape=shape, dtype=dtype_name, median_s=median)
                vs_gemms = f"{median / statistics.median(base['times']):.2f}" if "times" in base else "-"
                vs_chunked = f"{statistics.median(chunked['times']) / median:.2f}" if "times" in chunked else "-"
                mem_vs = f"{r['peak'] / chunked['peak']:.2f}" if "peak" in chunked and chunked["peak"] else "-"
                loss = f"{r['loss']:.6f}" if variant != "gemms" else ""
                emit(f"  {variant:15} {median * 1e3:7.0f}ms {vs_gemms:>8} {vs_chunked:>10} {r['peak'] / 2**20:9.0f} MB "
                     f"{mem_vs:>11}  {loss}")
                rows.append(r)
    return rows


if __name__ == "__main__":
    name, n, h, v, dtype_name, repeat = sys.argv[1:7]
    child(name, int(n), int(h), int(v), dtype_name, int(repeat))
