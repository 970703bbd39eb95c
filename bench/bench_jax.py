"""fusedce.jax against optax under jax.jit: the loss and its gradient, interleaved rounds.

    python bench/bench_jax.py                           # (4096, 32000) and (512, 131072) float32
    python bench/bench_jax.py --shapes 4096x32000 --dtypes float32,bfloat16 --rounds 15

Each row is a jitted function of (logits, target) run to completion:
  optax              jax.value_and_grad(optax.softmax_cross_entropy_with_integer_labels(x, t).mean())
  fusedce [grad]     jax.value_and_grad(fusedce.jax.cross_entropy), the fused forward keeping the
                     gradient as its residual; [lse]: forward keeps the lse, backward writes the
                     gradient (see fusedce/jax/_vjp.py); "chosen" marks the library's default
  ... x scale        the gradient of loss * s with s a traced argument (a loss scale), where the
                     "grad" residual costs XLA a multiply over the kept gradient
  ... forward        the loss alone
in two settings (--donate both|no|yes):
  argument           the logits are an argument of the jitted function, not donated: XLA keeps
                     them, so the gradient needs a fresh logits-sized buffer (first-touch page
                     faults on it cost more than the kernel on this VM), and fusedce's in-place
                     gradient costs XLA a copy of the logits
  donated            jax.jit(..., donate_argnums=0): the logits die in the loss, as inside a
                     training step that computes them; the gradient is written over them
Each round runs every row once in turn (machine noise hits all rows alike); the table gives the
median and best over rounds and the speedup of the median over optax's in the same setting.
Before each timed call the process pauses --settle seconds (0.05 by default, not timed): the
release of a call's memory runs on after the call returns (here 10-20 ms of system time in the
30 ms after an optax step at 4096x32000), and without the pause it lands in the next row's time
(fusedce donated right after an optax call 41-44 ms, after a 20 ms pause 31 ms).
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


def _optax_loss(x, t):
    import optax

    return optax.softmax_cross_entropy_with_integer_labels(x, t).mean()


def compiled_rows(x, t, donate):
    """[(label, compiled function of (x, t, s))]: value_and_grad of the loss (s unused: the
    upstream gradient is jax.grad's constant 1) and of loss * s (a traced loss scale). The
    residual is read when a function is traced, so each fusedce variant is lowered under its own
    setting."""
    dtype = x.dtype.name
    kw = {"donate_argnums": 0} if donate else {}
    s = jnp.float32(1.0)

    def build(loss, scaled):
        f = (lambda a, b, c: loss(a, b) * c) if scaled else (lambda a, b, c: loss(a, b))
        return jax.jit(jax.value_and_grad(f), **kw).lower(x, t, s).compile()

    rows = [("optax", build(_optax_loss, False))]
    chosen = _vjp.RESIDUAL[dtype]
    variants = [chosen] + ([r for r in ("grad", "lse") if r != chosen] if dtype in ("float32", "float64") else [])
    scaled = []
    try:
        for residual in variants:
            _vjp.RESIDUAL[dtype] = residual
            label = f"fusedce [{residual}{' chosen' if residual == chosen else ''}]"
            rows.append((label, build(fj.cross_entropy, False)))
            scaled.append((label + " x scale", build(fj.cross_entropy, True)))
    finally:
        _vjp.RESIDUAL[dtype] = chosen
    forward = [("optax forward", jax.jit(lambda a, b, c: _optax_loss(a, b)).lower(x, t, s).compile()),
               ("fusedce forward", jax.jit(lambda a, b, c: fj.cross_entropy(a, b)).lower(x, t, s).compile())]
    return rows, scaled, forward


def check(rows, x, t):
    """Every fusedce row agrees with optax (loss and gradient within 2e-5 relative for float32)."""
    ref_loss, ref_grad = rows[0][1](jnp.copy(x), t, jnp.float32(1.0))
    scale = float(jnp.max(jnp.abs(ref_grad.astype(jnp.float32))))
    tol = 2e-5 if x.dtype in (jnp.float32, jnp.float64) else 1e-2
    for label, fn in rows[1:]:
        loss, grad = fn(jnp.copy(x), t, jnp.float32(1.0))
        err = float(jnp.max(jnp.abs(grad.astype(jnp.float32) - ref_grad.astype(jnp.float32))))
        assert abs(float(loss) - float(ref_loss)) <= tol * max(abs(float(ref_loss)), 1.0), (label, loss, ref_loss)
        assert err <= tol * scale, (label, err, scale)


def run(shape, dtype, rounds, donate, settle):
    rng = np.random.default_rng(0)
    x0 = jnp.asarray(rng.standard_normal(shape, dtype=np.float32), dtype=dtype)
    t = jnp.asarray(rng.integers(0, shape[-1], shape[0]), dtype=jnp.int32)
    rows, scaled, forward = compiled_rows(x0, t, donate)
    check(rows + scaled, x0, t)
    calls = [(label, fn, 1.0) for label, fn in rows] + [(label, fn, 1024.0) for label, fn in scaled]
    calls += [(label, fn, 1.0) for label, fn in forward]
    xs = {label: jnp.copy(x0) for label, _, _ in calls}
    times = {label: [] for label, _, _ in calls}
    for _ in range(rounds + 1):  # the first round warms up and is dropped
        for label, fn, s in calls:
            time.sleep(settle)
            start = time.perf_counter()
            out = jax.block_until_ready(fn(xs[label], t, jnp.float32(s)))
            times[label].append(time.perf_counter() - start)
            if donate and not label.endswith("forward"):
                xs[label] = out[1]  # the donated logits are gone; the gradient has their shape
    return {label: ts[1:] for label, ts in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="4096x32000,512x131072")
    parser.add_argument("--dtypes", default="float32")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--donate", choices=("both", "no", "yes"), default="both")
    parser.add_argument("--settle", type=float, default=0.05, help="untimed pause before each call, s")
    args = parser.parse_args(argv)
    info = fusedce.cpu_info()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; fusedce ISA {info['active_isa']}, "
          f"{info['num_threads']} threads; median and best of {args.rounds} interleaved rounds")
    print(f"{'shape':>11} {'dtype':>8} {'logits':>8}  {'row':<30} {'median ms':>9} {'best ms':>8} {'x optax':>8}")
    settings = {"both": (False, True), "no": (False,), "yes": (True,)}[args.donate]
    for spec in args.shapes.split(","):
        shape = tuple(int(n) for n in spec.split("x"))
        for dtype in args.dtypes.split(","):
            for donate in settings:
                times = run(shape, dtype, args.rounds, donate, args.settle)
                med = {label: statistics.median(ts) for label, ts in times.items()}
                for label, ts in times.items():
                    base = med["optax forward" if label.endswith("forward") else "optax"]
                    print(f"{spec:>11} {dtype:>8} {'donated' if donate else 'argument':>8}  {label:<30} "
                          f"{1e3 * med[label]:9.1f} {1e3 * min(ts):8.1f} {base / med[label]:7.1f}x")


if __name__ == "__main__":
    main()
