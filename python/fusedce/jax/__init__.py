"""JAX adapter: fusedce's fused kernels inside jax.jit, jax.grad, jax.vmap and jax.lax.scan.

    import fusedce.jax as fj
    loss = fj.cross_entropy(logits, target, label_smoothing=0.1)            # as fusedce.cross_entropy
    loss, grad = jax.jit(jax.value_and_grad(fj.cross_entropy))(logits, target)
    loss = fj.linear_cross_entropy(hidden, head, target)  # the LM head's loss without the logits

Same names and keywords as the NumPy API (fusedce.cross_entropy, ...). On the CPU each call is
an XLA custom call into the C kernels (no Python callback, no copy of the logits), so it
compiles into jitted programs; jax.custom_vjp gives the gradient (see _vjp for what the forward
keeps). Results: the loss is a JAX scalar for 'mean'/'sum' and per row for 'none', float64 for
float64 logits and float32 otherwise (as the NumPy API); BCE's 'none' is in the logits' dtype.

Argument errors are raised when the call is traced, with the NumPy API's messages. Values
that are only known when the program runs (a target out of range, a NaN weight under jit) are
checked by the custom call, which makes the computation fail with a jax.errors.JaxRuntimeError
carrying the same message (raised when the result is used, as JAX reports runtime errors).

GPU: JAX arrays on a CUDA device, called outside any JAX transformation, go to fusedce's
Numba CUDA kernels through DLPack (no copy) and come back as JAX arrays on that device; the
loss only, no gradient. Under jax.jit (or grad, vmap) on a GPU the compiled program fails with
a clear error: the custom calls have CPU kernels only. docs/jax.md has the details.
"""

from __future__ import annotations

try:
    import jax
except ImportError as exc:  # pragma: no cover - exercised only without jax
    raise ImportError("fusedce.jax needs JAX: pip install 'fusedce[jax]' (or pip install jax)") from exc

from . import _arguments, _linear, _vjp

__all__ = ["cross_entropy", "binary_cross_entropy_with_logits", "log_softmax", "softmax", "logsumexp",
           "linear_cross_entropy"]


def _on_gpu(*arrays):
    """True when an argument is a concrete (not traced) JAX array on a non-CPU device."""
    for a in arrays:
        if isinstance(a, jax.Array) and not _arguments.is_traced(a):
            if any(d.platform != "cpu" for d in a.devices()):
                return True
    return False


def _gpu():
    from . import _gpu as backend

    return backend


def cross_entropy(logits, target, *, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                  z_loss=0.0, softcap=None):
    """Cross-entropy of logits (..., K) against class indices (...) or probabilities (..., K).

    Every option as in fusedce.cross_entropy. Differentiable with respect to the logits (and
    to probability targets); returns a scalar for 'mean'/'sum', logits.shape[:-1] for 'none'."""
    opts = dict(weight=weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
                z_loss=z_loss, softcap=softcap)
    if _on_gpu(logits, target, weight):
        return _gpu().call("cross_entropy", logits, target, **opts)
    o, x, t, w = _arguments.check_ce(logits, target, weight, reduction=reduction, ignore_index=ignore_index,
                                     label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
    return _vjp.cross_entropy(o, x, t, w)


def linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, weight=None, ignore_index=-100,
                         reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None, chunk_size=None):
    """cross_entropy(input @ linear_weight.T + linear_bias, target, ...) without the logits, as
    fusedce.linear_cross_entropy: a chunk of rows at a time (chunk_size rows, default as many as
    a 32 MiB logits buffer holds), so a jitted program never holds the (rows, V) logits.

    input (..., H), linear_weight (V, H), linear_bias (V,) or None, all of one dtype (float16,
    bfloat16, float32, float64); target: class indices (...) or probabilities (..., V); weight:
    per-class weights (V,). Differentiable with respect to input, linear_weight and linear_bias
    (see fusedce/jax/_linear.py for what the forward keeps). Returns the loss as cross_entropy
    does: a scalar for 'mean'/'sum', input.shape[:-1] for 'none'; float64 for float64 input,
    float32 otherwise. Under jax.jit on a GPU the compiled program fails (CPU kernels only)."""
    o, x, w, b, t, cw, batch_shape = _arguments.check_linear(
        input, linear_weight, target, linear_bias, weight, ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, chunk_size=chunk_size)
    loss = _linear.linear_cross_entropy(o, x, w, b, t, cw)
    return loss.reshape(batch_shape) if reduction == "none" else loss


def binary_cross_entropy_with_logits(logits, target, *, weight=None, pos_weight=None, reduction="mean"):
    """torch's binary_cross_entropy_with_logits, as fusedce.binary_cross_entropy_with_logits.
    Differentiable with respect to the logits and the targets."""
    if _on_gpu(logits, target, weight, pos_weight):
        return _gpu().call("binary_cross_entropy_with_logits", logits, target, weight=weight, pos_weight=pos_weight,
                           reduction=reduction)
    o, x, t, w, pw = _arguments.check_bce(logits, target, weight, pos_weight, reduction=reduction)
    return _vjp.binary_cross_entropy(o, x, t, w, pw)


def _softmax_family(mode, x):
    if _on_gpu(x):
        return _gpu().call(mode, x)
    return getattr(_vjp, mode)(_arguments.as_logits(x, "x"))


def logsumexp(x):
    """log(sum(exp(x))) over the last axis (float64 for float64 input, else float32)."""
    return _softmax_family("logsumexp", x)


def softmax(x):
    """softmax over the last axis, in x's dtype."""
    return _softmax_family("softmax", x)


def log_softmax(x):
    """log_softmax over the last axis, in x's dtype."""
    return _softmax_family("log_softmax", x)
