"""Accuracy of each CPU instruction set's vector exp, through the C API fusedce_vexp_f32/f64.

The softmax feeds exp max-subtracted arguments (x <= 0, down to where exp underflows) and the
backward pass slightly positive ones; the sweeps cover both and go on to overflow. Errors are
measured in ULP of the result against a more precise exp (float64 for float32 results; long
double, where NumPy has one wider than float64, for float64 results).
"""

import numpy as np
import pytest

from fusedce import _cpu
from isa_support import require_isa

ffi, lib = _cpu.ffi, _cpu.lib
ISAS = _cpu.ISA_NAMES
MAX_ULP = 2.0


def _available(isa):
    return bool(lib.fusedce_isa_available(isa))


@pytest.fixture(params=range(len(ISAS)), ids=ISAS)
def isa(request):
    require_isa(ISAS[request.param])
    return request.param


def vexp_f32(isa, x):
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.empty_like(x)
    rc = lib.fusedce_vexp_f32(isa, x.size, ffi.from_buffer("float[]", x), ffi.from_buffer("float[]", y))
    assert rc == lib.FUSEDCE_OK
    return y


def vexp_f64(isa, x):
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = np.empty_like(x)
    rc = lib.fusedce_vexp_f64(isa, x.size, ffi.from_buffer("double[]", x), ffi.from_buffer("double[]", y))
    assert rc == lib.FUSEDCE_OK
    return y


def ulp_error(y, ref, precision, min_exp):
    """|y - ref| in units of the last place, at ref, of a type with `precision` significant
    bits and smallest normal exponent min_exp (subnormals have the spacing at min_exp)."""
    _, e = np.frexp(np.abs(ref))  # ref = f * 2^e, f in [0.5, 1)
    ulp = np.ldexp(np.ones_like(ref), np.maximum(e - 1, min_exp) - (precision - 1))
    return np.abs(y.astype(ref.dtype) - ref) / ulp


def float32_sweep():
    """Floats by bit pattern (log-spaced, dense near 0) from -104 to 89, plus uniform ones."""
    neg = np.arange(0x80000000, 0xC2D00001, 257, dtype=np.uint64).astype(np.uint32).view(np.float32)
    pos = np.arange(0x00000000, 0x42B20001, 257, dtype=np.uint64).astype(np.uint32).view(np.float32)
    uniform = np.random.default_rng(0).uniform(-104.0, 89.0, 1 << 20).astype(np.float32)
    return np.concatenate([neg, pos, uniform])


def float64_sweep():
    rng = np.random.default_rng(1)
    uniform = rng.uniform(-746.0, 710.0, 1 << 20)
    small = rng.choice([-1.0, 1.0], 1 << 19) * np.ldexp(rng.uniform(1, 2, 1 << 19), rng.integers(-50, 10, 1 << 19))
    return np.concatenate([uniform, small])


def test_exp_f32_ulp(isa):
    x = float32_sweep()
    y = vexp_f32(isa, x)
    ref = np.exp(x.astype(np.float64))
    finite = ref <= np.finfo(np.float32).max
    err = ulp_error(y[finite], ref[finite], 24, -126)
    worst = int(np.argmax(err))
    assert err[worst] <= MAX_ULP, f"{ISAS[isa]}: {err[worst]:.3f} ULP at x = {x[finite][worst]!r}"
    assert np.all(y[~finite] == np.inf)
    # x <= 0 (the softmax's side) never rounds above 1
    assert np.all(y[x <= 0] <= 1.0)


def test_exp_f64_ulp(isa):
    x = float64_sweep()
    y = vexp_f64(isa, x)
    wide = np.finfo(np.longdouble).nmant > np.finfo(np.float64).nmant
    ref = np.exp(x.astype(np.longdouble)) if wide else np.exp(x)
    finite = ref <= np.finfo(np.float64).max
    err = ulp_error(y[finite], ref[finite], 53, -1022)
    worst = int(np.argmax(err))
    # without a wider reference, float64 np.exp's own rounding (<= 0.5 ULP more) is included
    limit = MAX_ULP if wide else MAX_ULP + 0.5
    assert err[worst] <= limit, f"{ISAS[isa]}: {err[worst]:.3f} ULP at x = {x[finite][worst]!r}"
    assert np.all(y[~finite] == np.inf)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_special_values(isa, dtype):
    x = np.array([-np.inf, np.nan, -np.nan, np.inf, -1e4, 1e4, -0.0, 0.0, -745.2, -103.98], dtype=dtype)
    y = (vexp_f32 if dtype == np.float32 else vexp_f64)(isa, x)
    assert y[0] == 0.0 and not np.signbit(y[0]), "exp(-inf) must be +0 exactly"
    assert np.isnan(y[1]) and np.isnan(y[2])
    assert y[3] == np.inf and y[4] == 0.0 and y[5] == np.inf
    assert y[6] == 1.0 and y[7] == 1.0
    assert y[8] == 0.0 and (dtype == np.float64 or y[9] == 0.0)


@pytest.mark.parametrize("n", list(range(0, 40)) + [1000, 1001])
def test_exp_every_length(isa, n):
    """Tails: each length gives the same values as the long call, and nothing past n."""
    x = np.random.default_rng(n).uniform(-20, 2, 1100)
    for dtype, fn in ((np.float32, vexp_f32), (np.float64, vexp_f64)):
        xs = x.astype(dtype)
        whole = fn(isa, xs)
        out = np.full(n + 16, 7.0, dtype=dtype)
        rc_fn = lib.fusedce_vexp_f32 if dtype == np.float32 else lib.fusedce_vexp_f64
        ctype = "float[]" if dtype == np.float32 else "double[]"
        rc = rc_fn(isa, n, ffi.from_buffer(ctype, xs[1:]), ffi.from_buffer(ctype, out[1:]))
        assert rc == lib.FUSEDCE_OK
        assert np.array_equal(out[1 : n + 1], whole[1 : n + 1])
        assert out[0] == 7.0 and np.all(out[n + 1 :] == 7.0)


def test_unavailable_isa_is_refused():
    for isa in range(len(ISAS)):
        if not _available(isa):
            x = np.zeros(4, dtype=np.float32)
            rc = lib.fusedce_vexp_f32(isa, 4, ffi.from_buffer("float[]", x), ffi.from_buffer("float[]", x))
            assert rc == lib.FUSEDCE_EISA
