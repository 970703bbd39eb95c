"""Which CPU instruction sets a test may skip: only those this CPU lacks."""

import pytest

import fusedce
from fusedce import _cpu


def require_isa(name):
    """Skips a test of an ISA this CPU lacks; fails one this CPU has but the build left out, so
    that a machine's ISAs are never skipped silently."""
    if name in fusedce.available_isas():
        return
    if name in _cpu.cpu_isas():
        pytest.fail(f"this CPU runs {name}, but this build of fusedce has no {name} kernels "
                    f"(compiled and supported: {fusedce.available_isas()})")
    pytest.skip(f"this CPU lacks {name} (it runs: {_cpu.cpu_isas()})")
