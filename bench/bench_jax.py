"""fusedce.jax against optax under jax.jit: the loss and its gradient, interleaved rounds.

    python bench/bench_jax.py                           # (4096, 32000) and (512, 131072) float32
    python bench/bench_jax.py --shapes 4096x32000 --dtypes float32,bfloat16 --rounds 15

Rows (each a jitted function of (logits, target), run to completion):
  optax value_and_grad   jax.value_and_grad(optax.softmax_cross_entropy_with_integer_labels(...).mean())
  fusedce value_and_grad jax.value_and_grad(fusedce.jax.cross_entropy), with the residual the
                         library chose for the dtype, and (float32/float64) both residuals:
                         "grad" (fused forward keeps the gradient) and "lse" (backward pass)
  ... forward            the loss alone
Each round runs every row once in turn (so machine noise hits all rows alike); the table gives
the median and the best over rounds, and each row's speedup over optax from the medians.
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
from fusedce.jax import _vjp


def _optax():
    import optax

    return optax


def compiled_rows(x, t):
    """(label, compiled function) pairs for x's dtype. The residual is read when a function is
    traced, so each fusedce variant is lowered under its own setting."""
    optax = _optax()
    dtype = x.dtype.name

    def optax_loss(x, t):
        return optax.softmax_cross_entropy_with_integer_labels(x, t).mean()

    def build(fn):
        return jax.jit(fn).lower(x, t).compile()

    rows = [("optax value_and_grad", build(jax.value_and_grad(optax_loss))), ("optax forward", build(optax_loss))]
    chosen = _vjp.RESIDUAL[dtype]
    others = [r for r in ("grad", "lse") if r != chosen] if dtype in ("float32", "float64") else []
    try:
        for residual in [chosen] + others:
            _vjp.RESIDUAL[dtype] = residual
            label = f"fusedce value_and_grad [{residual}{' (chosen)' if residual == chosen else ''}]"
            rows.append((label, build(jax.value_and_grad(fj.cross_entropy))))
    finally:
        _vjp.RESIDUAL[dtype] = chosen
    rows.append(("fusedce forward", build(fj.cross_entropy)))
    return rows


def check(rows, x, t):
    """Every fusedce row agrees with optax (loss 2e-5 relative, gradient 2e-5 of max |grad|)."""
    ref_loss, ref_grad = dict(rows)["optax value_and_grad"](x, t)
    scale = float(jnp.max(jnp.abs(ref_grad.astype(jnp.float32))))
    tol = 2e-5 if x.dtype in (jnp.float32, jnp.float64) else 1e-2
    for label, fn in rows:
        if label.startswith("fusedce value_and_grad"):
            loss, grad = fn(x, t)
            err = float(jnp.max(jnp.abs(grad.astype(jnp.float32) - ref_grad.astype(jnp.float32))))
            assert abs(float(loss) - float(ref_loss)) <= tol * max(abs(float(ref_loss)), 1.0), (label, loss, ref_loss)
            assert err <= tol * scale, (label, err, scale)


def run(shape, dtype, rounds):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape, dtype=np.float32), dtype=dtype)
    t = jnp.asarray(rng.integers(0, shape[-1], shape[0]), dtype=jnp.int32)
    rows = compiled_rows(x, t)
    check(rows, x, t)
    times = {label: [] for label, _ in rows}
    for _ in range(rounds + 1):  # the first round warms up and is dropped
        for label, fn in rows:
            start = time.perf_counter()
            jax.block_until_ready(fn(x, t))
            times[label].append(time.perf_counter() - start)
    return {label: ts[1:] for label, ts in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="4096x32000,512x131072")
    parser.add_argument("--dtypes", default="float32")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    info = fusedce.cpu_info()
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}; fusedce ISA {info['active_isa']}, "
          f"{info['num_threads']} threads; {args.rounds} rounds, interleaved")
    print(f"{'shape':>12} {'dtype':>9}  {'row':<40} {'median ms':>10} {'best ms':>9} {'vs optax':>9}")
    for spec in args.shapes.split(","):
        shape = tuple(int(n) for n in spec.split("x"))
        for dtype in args.dtypes.split(","):
            times = run(shape, dtype, args.rounds)
            medians = {label: statistics.median(ts) for label, ts in times.items()}
            for label, ts in times.items():
                base = "optax forward" if label.endswith("forward") else "optax value_and_grad"
                print(f"{spec:>12} {dtype:>9}  {label:<40} {1e3 * medians[label]:10.1f} {1e3 * min(ts):9.1f} "
                      f"{medians[base] / medians[label]:8.1f}x")


if __name__ == "__main__":
    main()
