"""linear_cross_entropy for JAX: cross_entropy(x @ W.T + b, target) and its gradients with
respect to x, W and b, a chunk of rows at a time, so that a jitted program never holds the
(rows, V) logits. The same computation as fusedce._linear's chunk loop, written in JAX:

- Rows go in chunks of a static size (fusedce._linear.chunk_rows_for: a 32 MiB logits buffer
  unless chunk_size says otherwise): a lax.fori_loop over the full chunks, dynamic slices of
  x and the target, and the remainder (N mod chunk rows) as one more, smaller chunk of its own
  static shape after the loop. No row is padded, so nothing has to be masked out of the sum,
  the 'mean' denominator or z_loss.
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

Ignored rows (target == ignore_index) are computed and contribute exact zeros (the kernel gives
them zero loss and gradient): with static shapes their GEMM work is not skipped, unlike the
NumPy and torch versions, which drop them before the GEMMs.
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


def _chunk(o, x, w, b, t, cw, lo, size, cot, need, state):
    """One chunk of rows [lo, lo + size): size static, lo static or traced. state: dict of the
    accumulated results (loss, gx, gw, gb: those being computed)."""
    acc = _accumulate_dtype(x.dtype)
    x_c = lax.dynamic_slice_in_dim(x, lo, size)
    t_c = lax.dynamic_slice_in_dim(t, lo, size)
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
        if o.ce.reduction == "none":
            state["loss"] = lax.dynamic_update_slice_in_dim(state["loss"], loss_c, lo, 0)
        else:
            state["loss"] = state["loss"] + loss_c
    if grad is not None:
        if need[0]:
            gx_c = _dot(grad, w, (1, 0), acc).astype(x.dtype)
            state["gx"] = lax.dynamic_update_slice_in_dim(state["gx"], gx_c, lo, 0)
        if need[1]:
            state["gw"] = _accumulate_gw(state["gw"], grad, x_c)
        if need[2]:
            state["gb"] = state["gb"] + jnp.sum(grad, axis=0, dtype=state["gb"].dtype)
    return state


def run(o, x, w, b, t, cw, *, cot=None, need=(False, False, False), loss=True):
    """The chunk loop. cot None: the loss alone; else the gradients in `need` (of x, W, b) of
    cot . per-chunk loss (cot a scalar for 'mean'/'sum', already over the denominator, or one
    per row for 'none'), and the loss too when `loss`. Returns a dict with 'loss' (summed over
    the chunks, or per row), 'gx', 'gw', 'gb' as computed."""
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
    state = _blocks(rows, o.chunk_rows, lambda lo, n, s: _chunk(o, x, w, b, t, cw, lo, n, cot, need, s), state)
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
    counted = t != o.ce.ignore_index
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
