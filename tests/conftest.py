"""Shared fixtures: every CPU instruction set as a parameter, and the tolerances."""

import numpy as np
import pytest

import fusedce
from fusedce import _cpu

ALL_ISAS = _cpu.ISA_NAMES


@pytest.fixture(params=ALL_ISAS)
def isa(request):
    """Runs the test once per ISA this CPU has; the others are skipped with the reason."""
    name = request.param
    if name not in fusedce.available_isas():
        pytest.skip(f"ISA {name} not available here (compiled and supported: {fusedce.available_isas()})")
    before = _cpu.active_isa()
    fusedce.set_isa(name)
    yield name
    fusedce.set_isa(before)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    before = fusedce.get_num_threads()
    fusedce.set_num_threads(request.param)
    yield request.param
    fusedce.set_num_threads(before)
