"""pytest-benchmark suites over a batch x K grid. Not part of the normal test run (pyproject's
testpaths is tests/); results are checked by `python -m fusedce check` and tests/, not here.

    pytest bench/ --benchmark-only                                  the whole grid (long)
    pytest bench/ --benchmark-only -k "fused and float32"           a slice
    pytest bench/ --benchmark-only --bench-max-elements 2e7 --bench-isa all --benchmark-json out.json

Each case (shape, dtype) is one benchmark group: every backend and op next to the copy of
the same logits. extra_info records the elements and the bytes each op must move.
"""

import pytest

import fusedce
from fusedce import _bench

GRID_BATCHES = (8, 512, 4096)
GRID_CLASSES = (1000, 4096, 32000, 131072, 262144)


def pytest_addoption(parser):
    group = parser.getgroup("fusedce bench")
    group.addoption("--bench-max-elements", type=float, default=2.0**27,
                    help="skip grid shapes with more than this many logits (default 2**27)")
    group.addoption("--bench-dtypes", default=",".join(_bench.DTYPES),
                    help="comma-separated dtypes (default: all four)")
    group.addoption("--bench-isa", action="append", default=None,
                    help="CPU ISA to time, repeatable; 'all' = every available one (default: the active one)")
    group.addoption("--bench-rounds", type=int, default=_bench.DEFAULT_REPEAT,
                    help="timed rounds per benchmark, after one warm-up round")


def _grid(config):
    limit = config.getoption("--bench-max-elements")
    dtypes = [name.strip() for name in config.getoption("--bench-dtypes").split(",") if name.strip()]
    unknown = set(dtypes) - set(_bench.DTYPES)
    if unknown:
        raise pytest.UsageError(f"--bench-dtypes: unknown {sorted(unknown)}; choose from {_bench.DTYPES}")
    return [_bench.Case(batch, classes, dtype) for dtype in dtypes
            for batch in GRID_BATCHES for classes in GRID_CLASSES if batch * classes <= limit]


def pytest_generate_tests(metafunc):
    # Module scope makes pytest run every test of one case together: the inputs are made once.
    if "case" in metafunc.fixturenames:
        cases = _grid(metafunc.config)
        metafunc.parametrize("case", cases, ids=[f"{c.batch}x{c.classes}-{c.dtype}" for c in cases], scope="module")
    if "isa" in metafunc.fixturenames:
        try:
            isas = _bench.resolve_isas(metafunc.config.getoption("--bench-isa"))
        except _bench.BenchError as exc:
            raise pytest.UsageError(f"--bench-isa: {exc}") from exc
        metafunc.parametrize("isa", isas)


@pytest.fixture(scope="module")
def inputs(case):
    """(logits, target) of the case, shared by every benchmark of it."""
    if not _bench.numpy_dtype_available(case.dtype):
        pytest.skip(f"{case.dtype} needs ml_dtypes")
    return _bench.make_inputs(case)


@pytest.fixture
def active_isa(isa):
    before = fusedce.cpu_info()["active_isa"]
    fusedce.set_isa(isa)
    yield isa
    fusedce.set_isa(before)


@pytest.fixture
def timed(benchmark, case, pytestconfig):
    """timed(backend, op, call): benchmark `call` in the case's group, one warm-up round
    (which also computes what backward is given: lse, or torch's graph)."""
    rounds = pytestconfig.getoption("--bench-rounds")

    def run(backend, op, call):
        benchmark.group = f"{case.batch}x{case.classes} {case.dtype}"
        benchmark.extra_info.update(backend=backend, op=op, elements=case.elements,
                                    bytes=case.bytes_moved(op))
        benchmark.pedantic(call, rounds=rounds, warmup_rounds=1, iterations=1)

    return run
