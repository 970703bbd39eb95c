"""Why fusedce.jax writes the CE gradient over the logits: both choices, in three settings.

    python bench/bench_jax_alias.py                      # (4096, 32000) float32
    python bench/bench_jax_alias.py --shape 512x131072 --rounds 9

jax.jit(jax.value_and_grad(...)) of fusedce.jax.cross_entropy with the gradient written over the
logits (input_output_aliases, the library's choice: "in place") or into a buffer of its own
("fresh"), beside optax, where the logits are
  kept      an argument of the jitted function, not donated: in place costs XLA a copy of them
  donated   jax.jit(..., donate_argnums=0): fresh costs XLA a copy of the gradient into the
            donated buffer
  computed  x = h @ W.T inside the step (hidden size --hidden, small so that the GEMMs do not
            hide the loss), the gradient taken to h and W: the logits die in the loss
Each round runs every row once (an untimed --settle pause before each call, as in
bench_jax.py); the table gives medians and the speedup over optax in the same setting, and the
number of logits-sized copies in each compiled program.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import fusedce.jax as fj
from bench_jax import _optax_loss  # run as a script: bench/ is on sys.path
from fusedce.jax import _calls


def build(loss, setting, x, h, w, t):
    """The compiled step for one setting and its arguments (the first one is replaced by the
    step's result where it is donated)."""
    if setting == "computed":
        step = jax.jit(jax.value_and_grad(lambda a, b, c: loss(a @ b.T, c), argnums=(0, 1)))
        return step.lower(h, w, t).compile(), (h, w, t)
    kw = {"donate_argnums": 0} if setting == "donated" else {}
    return jax.jit(jax.value_and_grad(loss), **kw).lower(x, t).compile(), (x, t)


def logits_copies(compiled, shape):
    dims = ",".join(str(n) for n in shape)
    return sum(1 for line in compiled.as_text().splitlines() if " copy(" in line and f"[{dims}]" in line)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="4096x32000")
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--settle", type=float, default=0.05, help="untimed pause before each call, s")
    args = parser.parse_args(argv)
    rows, cols = (int(n) for n in args.shape.split("x"))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((rows, cols), dtype=np.float32))
    h = jnp.asarray(rng.standard_normal((rows, args.hidden), dtype=np.float32))
    w = jnp.asarray(rng.standard_normal((cols, args.hidden), dtype=np.float32) / np.sqrt(args.hidden))
    t = jnp.asarray(rng.integers(0, cols, rows), dtype=jnp.int32)

    calls = {}
    for setting in ("kept", "donated", "computed"):
        calls[(setting, "optax")] = build(_optax_loss, setting, x, h, w, t)
        try:
            for alias in (True, False):
                _calls.ALIAS_GRADIENT = alias
                calls[(setting, "in place" if alias else "fresh")] = build(fj.cross_entropy, setting, x, h, w, t)
        finally:
            _calls.ALIAS_GRADIENT = True
    args_of = {key: [jnp.copy(a) if i == 0 and key[0] == "donated" else a for i, a in enumerate(fargs)]
               for key, (_, fargs) in calls.items()}
    times = {key: [] for key in calls}
    for _ in range(args.rounds + 1):  # the first round warms up and is dropped
        for key, (fn, _) in calls.items():
            time.sleep(args.settle)
            start = time.perf_counter()
            out = jax.block_until_ready(fn(*args_of[key]))
            times[key].append(time.perf_counter() - start)
            if key[0] == "donated":
                args_of[key][0] = out[1]  # the gradient has the donated logits' shape
    print(f"jax {jax.__version__}; ({rows}, {cols}) float32, hidden {args.hidden}; median of {args.rounds} rounds")
    print(f"{'setting':<9} {'row':<9} {'median ms':>9} {'x optax':>8} {'logits copies':>14}")
    for (setting, label), ts in times.items():
        med = statistics.median(ts[1:])
        base = statistics.median(times[(setting, "optax")][1:])
        copies = logits_copies(calls[(setting, label)][0], (rows, cols))
        print(f"{setting:<9} {label:<9} {1e3 * med:9.1f} {base / med:7.2f}x {copies:14d}")


if __name__ == "__main__":
    main()
