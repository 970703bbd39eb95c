"""linear_cross_entropy for JAX: cross_entropy(x @ W.T + b, target) and its gradients with
respect to x, W and b, a chunk of rows at a time, so that a jitted program never holds the
(rows, V) logits. The same computation as fusedce._linear's chunk loop, written in JAX:

- Rows go in chunks of a static size (fusedce._linear.chunk_rows_for: a 64 MiB logits buffer
  unless chunk_size says otherwise), by a lax.fori_loop and dynamic slices of x and the
  target. No row is padded: nothing has to be masked out of the sum, the 'mean' denominator or
  z_loss (run() says how the last chunk is handled).
- Per chunk: the logits by one XLA dot (plus bias); the cross-entropy custom call
  (_calls.ce) computes the chunk's losses and, when asked, its gradient written over the
  logits with the upstream factor applied inside the kernel; then grad_x[chunk] = dlogits @ W
  and grad_W += dlogits.T @ x[chunk] (grad_b += column sums) by XLA.
- 'mean' and 'sum' call the kernel with reduction 'sum' per chunk (the chunk's losses summed
  in double by the handler); 'mean' divides by the denominator computed once in JAX (the
  counted rows' summed class weight, or the rows for probability targets) and passes
  1/denominator as the kernel's gradient factor. 'none' passes one factor per row.

What the forward keeps (as fusedce.torch.linear_cross_entropy, for the same reasons):
- float32/float64 with 'mean'/'sum' (KEEP): the differentiated forward runs the loop once with
  gradients, for upstream gradient 1, and keeps grad_x, grad_W, grad_b (those asked for: a
  W under stop_gradient costs no grad_W GEMM); the backward multiplies them by the upstream
  scalar, which XLA folds away for jax.grad's constant 1. Three GEMMs per chunk in all.
- float16/bfloat16, or reduction 'none': the forward computes the loss alone and keeps the
  inputs; the backward runs the loop again with the real upstream gradient (a loss scale, or
  per-row factors) applied inside the kernel, so a half-precision dlogit is rounded once with
  the scale already in it. Four GEMMs per chunk. In half precision the GEMMs accumulate in
  float32 (the logits rounded once, after the bias), and grad_W and grad_b are summed over the
  chunks in float32 and rounded once at the end.

Ignored rows (target == ignore_index) cost no GEMM, as in the NumPy and torch versions: the
counted rows are sorted to the front and the loop runs over as many chunks as they fill (see
run()). The kernel gives ignored rows exact zeros (loss, z_loss, gradient), which is what makes
the relabelled overlap of the last chunk add nothing.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from . import _calls
from ._arguments import compute_dtype

#: which dtypes keep the gradients of the fused forward ('mean'/'sum'); the others recompute
KEEP = {"float32": True, "float64": True, "float16": False, "bfloat16": False}

_HALF = ("float16", "bfloat16")


def _accumulate_dtype(dtype):
    return jnp.float32 if jnp.dtype(dtype).name in _HALF else dtype


def _dot(a, b, contract, out_dtype):
    """a . b contracting axis contract[0] of a with contract[1] of b, accumulated and returned
    in out_dtype (float32 for half-precision operands)."""
    dims = (((contract[0],), (contract[1],)), ((), ()))
    return lax.dot_general(a, b, dims, preferred_element_type=out_dtype)


#: rows of grad_W per accumulating GEMM. XLA:CPU writes a dot's result to a buffer of its own
#: before adding it, so grad_W += dlogits.T @ x in one dot would cost a (V, H) temporary, as
#: large as grad_W; a loop over row blocks of grad_W bounds it to one block.
GW_BLOCK_BYTES = 8 << 20


def _blocks(total, size, body, carry):
    """body(start, n, carry) over [0, total) in blocks of `size` (n static: a lax.fori_loop
    over the full blocks, start traced, then the remainder as one smaller block)."""
    size = max(1, min(size, total))
    full, tail = divmod(total, size)
    if full == 1:
        carry = body(0, size, carry)
    elif full > 1:
        carry = lax.fori_loop(0, full, lambda i, c: body(i * size, size, c), carry)
    if tail:
        carry = body(full * size, tail, carry)
    return carry


def _accumulate_gw(gw, grad, x_c):
    """gw + grad.T @ x_c, a block of gw's rows at a time (updated in place by XLA)."""
    vocab, hidden = gw.shape

    def block(a, n, gw):
        part = _dot(lax.dynamic_slice_in_dim(grad, a, n, axis=1), x_c, (0, 0), gw.dtype)
        return lax.dynamic_update_slice_in_dim(gw, lax.dynamic_slice_in_dim(gw, a, n) + part, a, 0)

    return _blocks(vocab, GW_BLOCK_BYTES // max(1, hidden * gw.dtype.itemsize), block, gw)


def _add_rows(a, part, lo):
    """a[lo:lo + len(part)] += part (in place under XLA)."""
    return lax.dynamic_update_slice_in_dim(a, lax.dynamic_slice_in_dim(a, lo, part.shape[0]) + part, lo, 0)


def _chunk(o, x, w, b, t, cw, lo, size, cot, need, state, done=None):
    """One chunk of rows [lo, lo + size): size static, lo static or traced. state: dict of the
    accumulated results (loss, gx, gw, gb: those being computed). done: the chunk's first rows
    that an earlier chunk computed (the last chunk of the compacted loop is moved back to end
    at the last row): they are relabelled ignore_index, so they add exact zeros."""
    acc = _accumulate_dtype(x.dtype)
    x_c = lax.dynamic_slice_in_dim(x, lo, size)
    t_c = lax.dynamic_slice_in_dim(t, lo, size)
    if done is not None:
        t_c = jnp.where(jnp.arange(size) < done, jnp.asarray(o.ce.ignore_index, t_c.dtype), t_c)
    logits = _dot(x_c, w, (1, 1), acc)
    if b is not None:
        logits = logits + b.astype(acc)
    logits = logits.astype(x.dtype)
    want_loss = "loss" in state
    if cot is None:
        loss_c, _ = _calls.ce(o.ce, logits, t_c, cw, fwd=True)
        grad = None
    else:
        cot_c = cot if cot.ndim == 0 else lax.dynamic_slice_in_dim(cot, lo, size)
        out = _calls.ce(o.ce, logits, t_c, cw, fwd=want_loss, grad=True, cot=cot_c)
        loss_c, grad = (out[0] if want_loss else None), out[-1]
    state = dict(state)
    if want_loss:
        state["loss"] = _add_rows(state["loss"], loss_c, lo) if o.ce.reduction == "none" else state["loss"] + loss_c
    if grad is not None:
        if need[0]:
            state["gx"] = _add_rows(state["gx"], _dot(grad, w, (1, 0), acc).astype(x.dtype), lo)
        if need[1]:
            state["gw"] = _accumulate_gw(state["gw"], grad, x_c)
        if need[2]:
            state["gb"] = state["gb"] + jnp.sum(grad, axis=0, dtype=state["gb"].dtype)
    return state


def _counted(o, t):
    """The rows that count (target != ignore_index) as a boolean mask, or None when every row
    counts: probability targets, or an ignore_index that the targets' dtype cannot hold."""
    if o.ce.soft:
        return None
    info = jnp.iinfo(t.dtype)
    if not info.min <= o.ce.ignore_index <= info.max:
        return None
    return t != o.ce.ignore_index


def run(o, x, w, b, t, cw, *, cot=None, need=(False, False, False), loss=True):
    """The chunk loop. cot None: the loss alone; else the gradients in `need` (of x, W, b) of
    cot . per-chunk loss (cot a scalar for 'mean'/'sum', already over the denominator, or one
    per row for 'none'), and the loss too when `loss`. Returns a dict with 'loss' (summed over
    the chunks, or per row), 'gx', 'gw', 'gb' as computed.

    Class-index targets: the counted rows are moved to the front (a stable sort on the mask)
    and the loop runs over ceil(counted / chunk rows) chunks, a number known when the program
    runs: ignored rows cost no GEMM. The last chunk ends at the last row, its rows that the
    previous chunk computed relabelled ignored. Probability targets: every chunk, the last one
    (N mod chunk rows) of its own static shape."""
    rows, hidden = x.shape
    vocab = w.shape[0]
    cd = compute_dtype(x.dtype)
    acc = _accumulate_dtype(x.dtype)
    if cot is None:
        need, loss = (False, False, False), True
    else:
        cot = jnp.asarray(cot, cd)
    state = {}
    if loss:
        state["loss"] = jnp.zeros((rows,) if o.ce.reduction == "none" else (), cd)
    if need[0]:
        state["gx"] = jnp.zeros((rows, hidden), x.dtype)
    if need[1]:
        state["gw"] = jnp.zeros((vocab, hidden), acc)
    if need[2]:
        state["gb"] = jnp.zeros((vocab,), acc)
    counted = _counted(o, t)
    size = max(1, min(o.chunk_rows, rows))
    if rows == 0:
        pass
    elif counted is None:
        state = _blocks(rows, size, lambda lo, n, s: _chunk(o, x, w, b, t, cw, lo, n, cot, need, s), state)
    else:
        order = jnp.argsort(jnp.logical_not(counted), stable=True)
        x_p, t_p = x[order], t[order]
        cot_p = cot if cot is None or cot.ndim == 0 else cot[order]
        chunks = (jnp.sum(counted, dtype=jnp.int32) + (size - 1)) // size

        def step(i, s):
            start = i * size
            lo = jnp.minimum(start, rows - size)
            return _chunk(o, x_p, w, b, t_p, cw, lo, size, cot_p, need, s, done=start - lo)

        state = lax.fori_loop(0, chunks, step, state)
        inverse = jnp.zeros_like(order).at[order].set(jnp.arange(rows, dtype=order.dtype))
        for key in ("gx", "loss"):
            if key in state and state[key].ndim:
                state[key] = state[key][inverse]
    if "gw" in state:
        state["gw"] = state["gw"].astype(w.dtype)
    if "gb" in state:
        state["gb"] = state["gb"].astype(b.dtype)
    return state


def denominator(o, t, cw):
    """What 'mean' divides by: the counted rows' summed class weight (their number without
    weights), or the rows for probability targets; in the compute dtype of cw / the loss."""
    if o.ce.soft:
        return jnp.asarray(t.shape[0], jnp.float32)
    counted = _counted(o, t)
    if counted is None:
        counted = jnp.ones(t.shape, bool)
    if cw is None:
        return jnp.sum(counted, dtype=jnp.float32)
    return jnp.sum(jnp.where(counted, cw[jnp.where(counted, t, 0)], 0), dtype=cw.dtype)


def _safe_inverse(d, g):
    """g / d, and 0 where d is 0 (a 'mean' over nothing is 0 with a zero gradient)."""
    nonzero = d != 0
    return jnp.where(nonzero, g / jnp.where(nonzero, d, 1), jnp.zeros_like(g))


def _loss(o, total, t, cw):
    if o.reduction == "mean":
        return _safe_inverse(denominator(o, t, cw).astype(total.dtype), total)
    return total


def _upstream(o, g, t, cw, cd):
    """The kernel's gradient factor for upstream gradient g: per row for 'none', over the
    denominator for 'mean'."""
    g = g.astype(cd)
    if o.reduction == "mean":
        return _safe_inverse(denominator(o, t, cw).astype(cd), g)
    return g


# --------------------------------------------------------------------------- custom_vjp


@jax.tree_util.register_static
class _Need(tuple):
    """Which gradients (x, W, b) the backward computes: static, carried in the residuals."""


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def linear_cross_entropy(o, x, w, b, t, cw):
    return _loss(o, run(o, x, w, b, t, cw)["loss"], t, cw)


def _not_differentiable(name, why):
    raise NotImplementedError(
        f"fusedce.jax.linear_cross_entropy: the gradient with respect to {name} is not implemented{why}; "
        f"pass jax.lax.stop_gradient({name}) if it is not meant to be trained")


def _fwd(o, x, w, b, t, cw):
    if cw is not None and cw.perturbed:
        _not_differentiable("weight", "")
    if o.ce.soft and t.perturbed:
        _not_differentiable("target", " (it is logits-sized, which this function exists to avoid)")
    need = _Need((x.perturbed, w.perturbed, b is not None and b.perturbed))
    x, w, t = x.value, w.value, t.value
    b = None if b is None else b.value
    cw = None if cw is None else cw.value
    cd = compute_dtype(x.dtype)
    if KEEP[jnp.dtype(x.dtype).name] and o.reduction != "none" and any(need):
        out = run(o, x, w, b, t, cw, cot=_upstream(o, jnp.ones((), cd), t, cw, cd), need=need)
        kept = tuple(out.get(k) for k in ("gx", "gw", "gb"))
        return _loss(o, out["loss"], t, cw), (kept, None)
    loss = _loss(o, run(o, x, w, b, t, cw)["loss"], t, cw)
    return loss, (None, (need, x, w, b, t, cw))


def _bwd(o, res, g):
    kept, saved = res
    if isinstance(g, jax.custom_derivatives.SymbolicZero):
        return None, None, None, None, None
    if kept is not None:
        gx, gw, gb = (None if k is None else k * g.astype(k.dtype) for k in kept)
    else:
        need, x, w, b, t, cw = saved
        out = run(o, x, w, b, t, cw, cot=_upstream(o, g, t, cw, compute_dtype(x.dtype)), need=need, loss=False)
        gx, gw, gb = (out.get(k) for k in ("gx", "gw", "gb"))
    return gx, gw, gb, None, None


linear_cross_entropy.defvjp(_fwd, _bwd, symbolic_zeros=True)
