"""The CPU instruction sets: this build has kernels for every one the CPU runs, so no ISA test
on this machine is skipped but those of ISAs the CPU lacks (tests/isa_support.py)."""

import fusedce
from fusedce import _cpu


def test_every_isa_this_cpu_runs_is_compiled_in():
    missing = [name for name in _cpu.cpu_isas() if name not in fusedce.available_isas()]
    assert not missing, f"this CPU runs {missing}, but this build has no kernels for them"


def test_available_isas_are_ones_this_cpu_runs():
    assert "portable" in _cpu.cpu_isas()
    assert set(fusedce.available_isas()) <= set(_cpu.cpu_isas())
    assert fusedce.cpu_info()["detected_isa"] in fusedce.available_isas()


def test_names_are_the_c_librarys():
    assert _cpu.ISA_NAMES[0] == "portable" and len(set(_cpu.ISA_NAMES)) == len(_cpu.ISA_NAMES)
    assert all(_cpu.isa_name(code) == name for code, name in enumerate(_cpu.ISA_NAMES))
