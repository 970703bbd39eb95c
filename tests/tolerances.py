"""What "matches the float64 reference" means, per dtype.

Loss: |got - ref| <= rtol * max(|ref|, 1). The floor of 1 (nat) is there because a per-row loss
is lse - y_t: when the target's probability is near 1 it is a small difference of two O(1)
numbers, and float32 can only carry it to about eps32 * |lse| absolute.
Gradient: max |got - ref| <= rtol * max |ref| over the whole array (the issue's rule).
or within rtol absolute when the reference is identically zero (K = 1: the O(1) terms cancel
exactly in float64 but leave rounding noise in float32).
Half-precision gradients are rounded once, so their bound is the format's half-ulp.
"""

import numpy as np

from fusedce._tolerances import GRAD_RTOL, LOSS_RTOL


def _name(dtype):
    return np.dtype(dtype).name


def assert_loss_close(got, ref, dtype, what="loss"):
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    if ref.size == 0:
        return
    tol = LOSS_RTOL[_name(dtype)] * np.maximum(np.abs(ref), 1.0)
    with np.errstate(invalid="ignore"):  # inf - inf where both are inf: judged below
        err = np.abs(got - ref)
    both_nan = np.isnan(got) & np.isnan(ref)
    same_inf = np.isinf(ref) & (got == ref)
    bad = ~((err <= tol) | both_nan | same_inf)
    assert not bad.any(), (
        f"{what} ({_name(dtype)}): {np.count_nonzero(bad)} mismatches, worst at "
        f"{np.unravel_index(np.argmax(np.where(bad, err, -1)), ref.shape)}: "
        f"got {got[bad][:3]}, ref {ref[bad][:3]}"
    )


def assert_grad_close(got, ref, dtype, what="gradient", row_factor=0.0):
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    if ref.size == 0:
        return
    finite = np.isfinite(ref)
    assert np.array_equal(np.isnan(got), np.isnan(ref)), f"{what}: NaNs differ"
    scale = np.max(np.abs(ref[finite])) if finite.any() else 0.0
    err = np.max(np.abs(got[finite] - ref[finite])) if finite.any() else 0.0
    scale = max(scale, 0.05 * float(np.max(np.abs(row_factor))))
    assert err <= GRAD_RTOL[_name(dtype)] * scale, (
        f"{what} ({_name(dtype)}): max error {err:.3e} > {GRAD_RTOL[_name(dtype)]:.0e} * max|ref| {scale:.3e}"
    )
