"""The differentiable functions: jax.custom_vjp around the custom calls.

What the forward keeps for the backward (the residual) is chosen per dtype, in RESIDUAL:

- "grad" (float32, float64): the differentiated forward computes loss and gradient in one fused
  call, for upstream gradient 1, and keeps the gradient; the backward multiplies it by the real
  upstream gradient. jax.grad's upstream gradient is the constant 1, which XLA folds away, so the
  step is one pass: the logits read once (each row stays in cache for its second pass) and the
  gradient written once. A traced upstream factor (a loss scale) costs XLA one more elementwise
  pass over the gradient.
- "lse" (float16, bfloat16): the forward computes the loss and the per-row log-sum-exp; the
  backward computes the gradient in one pass with the upstream gradient as the kernel's
  grad_scale, so it is computed in float32 with the loss scale applied and rounded once. The
  "grad" residual would round the gradient to the half type before the scale is applied.

The trade for float32. The fused pass moves 2 bytes per logit byte, forward then backward 3:
docs/performance.md's quiet-machine AVX-512 figures at (4096, 32000) are 23.7 ms fused against
13.0 + 20.3 ms, 1.4x. Under load on this shared 2-core VM the kernels are compute-bound and the
two tie for plain jax.value_and_grad (the [grad]/[lse] rows of bench/bench_jax.py, donated logits,
medians of 25 interleaved rounds: 126 against 121 ms at (4096, 32000), 48 against 54 ms at
(512, 131072)), while with a traced loss scale "lse" wins by 1.4x (117 against 169 ms, 55
against 77). The plain gradient is the common float32 case, so float32 and float64 keep the
gradient; both backward paths are tested.

Gradients with respect to probability targets are computed (in JAX, from the saved lse) only
when the targets are being differentiated (custom_vjp's symbolic zeros say so); gradients with
respect to weight or pos_weight are not implemented and raise at trace time.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from . import _calls
from ._arguments import compute_dtype, rows_of

RESIDUAL = {"float32": "grad", "float64": "grad", "float16": "lse", "bfloat16": "lse"}


def _residual(dtype):
    return RESIDUAL[jnp.dtype(dtype).name]


def _not_differentiable(fn, name):
    raise NotImplementedError(
        f"fusedce.jax.{fn}: the gradient with respect to {name} is not implemented; "
        f"pass jax.lax.stop_gradient({name}) if it is not meant to be trained"
    )


def _value(p):
    return None if p is None else p.value


def _perturbed(p):
    return p is not None and p.perturbed


def _row_scale(reduction, g, rows):
    """The upstream gradient as a factor per row (..., 1): over the rows for 'mean'."""
    if reduction == "none":
        return g[..., None]
    if reduction == "mean":
        return g / rows if rows else jnp.zeros_like(g)
    return g


# ----------------------------------------------------------------------------- cross-entropy
# Residuals: (gradient for upstream 1 or None, (x, t, w, lse) for the "lse" backward or None,
# (x, t, w, lse) when probability targets are differentiated or None). None is an empty
# pytree, so which parts are there is static and the backward can branch on it.


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def cross_entropy(opts, x, t, w):
    loss, _ = _calls.ce(opts, x, t, w, fwd=True)
    return loss


def _ce_fwd(opts, x, t, w):
    if _perturbed(w):
        _not_differentiable("cross_entropy", "weight")
    want_t = opts.soft and _perturbed(t)
    x, t, w = x.value, t.value, _value(w)
    if _residual(x.dtype) == "grad":
        one = jnp.ones(x.shape[:-1] if opts.reduction == "none" else (), compute_dtype(x.dtype))
        loss, lse, grad = _calls.ce(opts, x, t, w, fwd=True, grad=True, cot=one)
        return loss, (grad, None, (x, t, w, lse) if want_t else None)
    loss, lse = _calls.ce(opts, x, t, w, fwd=True)
    return loss, (None, (x, t, w, lse), (x, t, w, lse) if want_t else None)


def _ce_bwd(opts, res, g):
    grad, saved, for_target = res
    if isinstance(g, SymbolicZero):
        return None, None, None
    if grad is not None:
        dx = grad * (g[..., None] if opts.reduction == "none" else g).astype(grad.dtype)
    else:
        x, t, w, lse = saved
        (dx,) = _calls.ce(opts, x, t, w, grad=True, cot=g, lse=lse)
    dt = None if for_target is None else _ce_target_grad(opts, *for_target, g)
    return dx, dt, None


def _ce_target_grad(opts, x, t, w, lse, g):
    """d loss / d q for probability targets q: per row s * (1 - e) * w_k * (lse - y_k), with
    y the (softcapped) logits and s the row's upstream factor."""
    cd = compute_dtype(x.dtype)
    y = x.astype(cd)
    if opts.softcap:
        y = opts.softcap * jnp.tanh(y / opts.softcap)
    s = _row_scale(opts.reduction, g.astype(cd), rows_of(x.shape[:-1]))
    d = (1.0 - opts.label_smoothing) * (lse[..., None] - y) * s
    if w is not None:
        d = d * w
    return d.astype(t.dtype)


cross_entropy.defvjp(_ce_fwd, _ce_bwd, symbolic_zeros=True)


# ----------------------------------------------------------------------------- binary cross-entropy
# Residuals: (gradient for upstream 1 or None, (x, t, w, pw) for the "lse"-style backward, which
# recomputes the gradient with the upstream factor, or None, (x, t, w, pw) for the target's
# gradient or None).


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def binary_cross_entropy(opts, x, t, w, pw):
    (loss,) = _calls.bce(opts, x, t, w, pw, fwd=True)
    return loss


def _bce_fwd(opts, x, t, w, pw):
    if _perturbed(w):
        _not_differentiable("binary_cross_entropy_with_logits", "weight")
    if _perturbed(pw):
        _not_differentiable("binary_cross_entropy_with_logits", "pos_weight")
    want_t = _perturbed(t)
    x, t, w, pw = x.value, t.value, _value(w), _value(pw)
    inputs = (x, t, w, pw)
    if _residual(x.dtype) == "grad":
        one = jnp.ones(x.shape if opts.reduction == "none" else (), compute_dtype(x.dtype))
        loss, grad = _calls.bce(opts, x, t, w, pw, fwd=True, grad=True, cot=one)
        return loss, (grad, None, inputs if want_t else None)
    (loss,) = _calls.bce(opts, x, t, w, pw, fwd=True)
    return loss, (None, inputs, inputs if want_t else None)


def _bce_bwd(opts, res, g):
    grad, saved, for_target = res
    if isinstance(g, SymbolicZero):
        return None, None, None, None
    if grad is not None:
        dx = grad * g.astype(grad.dtype)
    else:
        (dx,) = _calls.bce(opts, *saved, grad=True, cot=g)
    dt = None if for_target is None else _bce_target_grad(opts, *for_target, g)
    return dx, dt, None, None


def _bce_target_grad(opts, x, t, w, pw, g):
    """d loss / d t = s * w * ((pw - 1) * softplus(-x) - x), elementwise."""
    cd = compute_dtype(x.dtype)
    xc = x.astype(cd)
    d = -xc if pw is None else (pw - 1.0) * jax.nn.softplus(-xc) - xc
    if w is not None:
        d = d * w
    gc = g.astype(cd)
    if opts.reduction == "mean":
        gc = gc / x.size if x.size else jnp.zeros_like(gc)
    return (d * gc).astype(t.dtype)


binary_cross_entropy.defvjp(_bce_fwd, _bce_bwd, symbolic_zeros=True)


# ----------------------------------------------------------------------------- softmax family
# The backward formulas are XLA's elementwise work over saved results. float32/float64 keep the
# output; half types keep x and the float32 lse and recompute p = exp(x - lse) in float32, so
# the gradient is rounded once, after the upstream gradient is applied.


@jax.custom_vjp
def logsumexp(x):
    (lse,) = _calls.softmax_family("logsumexp", x)
    return lse


def _lse_fwd(x):
    (lse,) = _calls.softmax_family("logsumexp", x)
    return lse, (x, lse)


def _lse_bwd(res, g):
    x, lse = res
    p = jnp.exp(x.astype(lse.dtype) - lse[..., None])
    return ((p * g[..., None]).astype(x.dtype),)


logsumexp.defvjp(_lse_fwd, _lse_bwd)


def _probabilities(res, from_out):
    """(softmax in the compute dtype, x's dtype) from what the forward kept: its output
    (from_out turns it into probabilities), or x and the lse."""
    out, x, lse = res
    if out is not None:
        return from_out(out), out.dtype
    return jnp.exp(x.astype(lse.dtype) - lse[..., None]), x.dtype


def _softmax_res(x, out, lse):
    return (out, None, None) if _residual(x.dtype) == "grad" else (None, x, lse)


def _softmax_like(mode, from_out, vjp):
    """softmax or log_softmax as a custom_vjp: vjp(p, g) is the input gradient given the
    probabilities p and the upstream gradient g, both in the compute dtype."""

    @jax.custom_vjp
    def fn(x):
        return _calls.softmax_family(mode, x)[0]

    def fwd(x):
        out, lse = _calls.softmax_family(mode, x)
        return out, _softmax_res(x, out, lse)

    def bwd(res, g):
        p, dtype = _probabilities(res, from_out)
        return (vjp(p, g.astype(p.dtype)).astype(dtype),)

    fn.defvjp(fwd, bwd)
    return fn


softmax = _softmax_like("softmax", lambda out: out, lambda p, g: p * (g - jnp.sum(g * p, axis=-1, keepdims=True)))
log_softmax = _softmax_like("log_softmax", jnp.exp, lambda p, g: g - p * jnp.sum(g, axis=-1, keepdims=True))
