"""Shared fixtures: every CPU instruction set as a parameter, and the tolerances."""

import numpy as np
import pytest

import fusedce
from fusedce import _cpu
from isa_support import require_isa

ALL_ISAS = _cpu.ISA_NAMES


@pytest.fixture(params=ALL_ISAS)
def isa(request):
    """Runs the test once per ISA this CPU has; the others are skipped with the reason."""
    name = request.param
    require_isa(name)
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
