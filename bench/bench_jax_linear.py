"""fusedce.jax.linear_cross_entropy against the unfused optax loss under jax.jit: time of one
loss-and-gradients step and XLA's temporary memory, interleaved rounds.

    python bench/bench_jax_linear.py                        # (4096, 1024, 32000) float32
    python bench/bench_jax_linear.py --shapes 4096x1024x32000 --ignored 0.5 --rounds 5

Each row is jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, W, t), gradients to the
hidden states x (N, H) and the head W (V, H):
  optax              optax.softmax_cross_entropy_with_integer_labels(x @ W.T, t), averaged over
                     the counted rows (masked where t is ignored): the (N, V) logits and their
                     gradient in memory
  fusedce            fusedce.jax.linear_cross_entropy(x, W, t): chunks of a 32 MiB logits
                     buffer; [keep] the default for float32 (the fused forward keeps the
                     gradients), [recompute] the backward that runs the loop again (the one
                     half precision and 'none' take)
  3 GEMMs            x @ W.T, G @ W and G.T @ x for a given G (N, V): the matrix products
                     that any of these steps must do, alone (a floor, not a loss)
"temp MB" is XLA's temporary memory for the compiled step (Compiled.memory_analysis():
buffers other than arguments and results; the results are the loss and the gradients,
the same for every row). --ignored f sets that fraction of targets to ignore_index (fusedce
skips their GEMMs). Each round runs every row once in turn; the table gives the median and
best over rounds (the first, warm-up round dropped).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import fusedce
import fusedce.jax as fj
from fusedce.jax import _linear


def _optax_loss(x, w, t):
    import optax

    counted = t != -100
    rows = optax.softmax_cross_entropy_with_integer_labels(x @ w.T, jnp.where(counted, t, 0))
    return jnp.sum(jnp.where(counted, rows, 0)) / jnp.maximum(jnp.sum(counted), 1)


def _step(loss):
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def compiled_rows(x, w, t):
    """[(label, compiled function of (x, W, t) or None, temp bytes)]. KEEP is read when a
    function is traced, so each fusedce variant is lowered under its own setting."""
    dtype = jnp.dtype(x.dtype).name
    rows = [("optax", _step(_optax_loss).lower(x, w, t).compile())]
    chosen = _linear.KEEP[dtype]
    variants = [chosen] + ([not chosen] if dtype in ("float32", "float64") else [])
    try:
        for keep in variants:
            _linear.KEEP[dtype] = keep
            label = f"fusedce [{'keep' if keep else 'recompute'}{' chosen' if keep == chosen else ''}]"
            rows.append((label, _step(fj.linear_cross_entropy).lower(x, w, t).compile()))
    finally:
        _linear.KEEP[dtype] = chosen
    g = jax.ShapeDtypeStruct((x.shape[0], w.shape[0]), x.dtype)
    gemms = jax.jit(lambda a, c, d: (a @ c.T, d @ c, d.T @ a)).lower(x, w, g).compile()
    rows.append(("3 GEMMs", gemms))
    return [(label, fn, fn.memory_analysis().temp_size_in_bytes) for label, fn in rows]


def check(rows, x, w, t):
    """Every fusedce row agrees with optax: loss and gradients within 1e-4 of the largest
    (float32 GEMMs over H feed both; half precision: 2e-2)."""
    ref_loss, ref_grads = rows[0][1](x, w, t)
    tol = 1e-4 if x.dtype in (jnp.float32, jnp.float64) else 2e-2
    for label, fn, _ in rows[1:]:
        if label == "3 GEMMs":
            continue
        loss, grads = fn(x, w, t)
        assert abs(float(loss) - float(ref_loss)) <= tol * max(abs(float(ref_loss)), 1.0), (label, loss, ref_loss)
        for g, r in zip(grads, ref_grads):
            g, r = g.astype(jnp.float32), r.astype(jnp.float32)
            assert float(jnp.max(jnp.abs(g - r))) <= tol * float(jnp.max(jnp.abs(r))), label


def run(shape, dtype, rounds, ignored):
    rows_, hidden, vocab = shape
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((rows_, hidden), dtype=np.float32), dtype=dtype)
    w = jnp.asarray(rng.standard_normal((vocab, hidden), dtype=np.float32) / np.sqrt(hidden), dtype=dtype)
    t_np = rng.integers(0, vocab, rows_)
    t_np[rng.random(rows_) < ignored] = -100
    t = jnp.asarray(t_np, dtype=jnp.int32)
    rows = compiled_rows(x, w, t)
    check(rows, x, w, t)
    g = jnp.asarray(rng.standard_normal((rows_, vocab), dtype=np.float32) * 1e-4, dtype=dtype)
    times = {label: [] for label, _, _ in rows}
    for _ in range(rounds + 1):
        for label, fn, _ in rows:
            args = (x, w, g) if label == "3 GEMMs" else (x, w, t)
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[label].append(time.perf_counter() - start)
    return [(label, times[label][1:], temp) for label, _, temp in rows]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="4096x1024x32000", help="NxHxV, comma-separated")
    parser.add_argument("--dtypes", default="float32")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ignored", type=float, default=0.0, help="fraction of rows whose target is ignored")
    args = parser.parse_args(argv)
    info = fusedce.cpu_info()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; fusedce ISA {info['active_isa']}, "
          f"{info['num_threads']} threads; median and best of {args.rounds} interleaved rounds, "
          f"{args.ignored:.0%} of targets ignored")
    print(f"{'N x H x V':>16} {'dtype':>8}  {'row':<28} {'median ms':>9} {'best ms':>8} {'x optax':>8} {'temp MB':>8}")
    for spec in args.shapes.split(","):
        shape = tuple(int(n) for n in spec.split("x"))
        for dtype in args.dtypes.split(","):
            results = run(shape, dtype, args.rounds, args.ignored)
            base = statistics.median(results[0][1])
            for label, ts, temp in results:
                med = statistics.median(ts)
                print(f"{spec:>16} {dtype:>8}  {label:<28} {1e3 * med:9.0f} {1e3 * min(ts):8.0f} "
                      f"{base / med:7.2f}x {temp / 2**20:8.1f}")


if __name__ == "__main__":
    main()
