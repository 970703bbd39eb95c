"""Deterministic inputs for the equivalence tests: logits, targets with ignored rows mixed in,
per-class weights, per-row upstream gradients, and the named option sets."""

import zlib

import numpy as np

REDUCTIONS = ("none", "mean", "sum")


def options(name, K, rng):
    """The keyword arguments of one named option set for K classes."""
    weight = rng.uniform(0.25, 2.0, K)
    return {
        "plain": {},
        "weight": {"weight": weight},
        "smoothing": {"label_smoothing": 0.1},
        "smoothing+weight": {"label_smoothing": 0.3, "weight": weight},
        "z_loss": {"z_loss": 1e-2},
        "softcap": {"softcap": 3.0},
        "ignore_class0": {"ignore_index": 0},
        "all": {"weight": weight, "label_smoothing": 0.2, "z_loss": 1e-3, "softcap": 4.0, "ignore_index": 1},
    }[name]


OPTION_NAMES = ("plain", "weight", "smoothing", "smoothing+weight", "z_loss", "softcap", "ignore_class0", "all")


def make_case(B, K, dtype, opt="plain", scale=2.0, batch_shape=None):
    """(logits, target, options, per-row grad_output); every 4th row (from row 1) is ignored."""
    seed = zlib.crc32(f"{B}-{K}-{dtype}-{opt}".encode())
    rng = np.random.default_rng(seed)
    kw = options(opt, K, rng)
    x = (rng.standard_normal((B, K)) * scale).astype(dtype)
    t = rng.integers(0, K, B)
    t[1::4] = kw.get("ignore_index", -100)
    go = rng.standard_normal(B)
    if batch_shape is not None:
        x = x.reshape(*batch_shape, K)
        t = t.reshape(batch_shape)
        go = go.reshape(batch_shape)
    return x, t, kw, go


def grad_output_for(reduction, per_row):
    return per_row if reduction == "none" else 0.75
