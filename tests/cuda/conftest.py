"""tests/cuda: the GPU backend against the float64 reference.

Runs on a real GPU when a driver is present, else under Numba's CUDA simulator (set up here,
before anything imports numba). Skipped as a whole when numba is not installed.
"""

import importlib.util
import os
import shutil
import sys

import numpy as np
import pytest


def _gpu_driver_present():
    return shutil.which("nvidia-smi") is not None or os.path.exists("/proc/driver/nvidia")


if importlib.util.find_spec("numba") is None:
    collect_ignore_glob = ["test_cuda_*.py"]
    HAVE_NUMBA = False
else:
    HAVE_NUMBA = True
    if "NUMBA_ENABLE_CUDASIM" not in os.environ and not _gpu_driver_present():
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"

# Tolerances per logits dtype: (loss, relative to max(|ref|, 1); arrays, relative to the
# largest magnitude of the reference array).
TOLERANCE = {
    "float64": (1e-12, 1e-12),
    "float32": (2e-6, 2e-6),
    "float16": (2e-6, 1e-3),  # math in float32; arrays rounded once to float16
}


# Thresholds that make small shapes take each launch layout (see fusedce._cuda._plan).
LAYOUT_PATHS = {
    "cached": dict(ROW_CACHE_BYTES=1 << 20, SPLIT_MIN_CLASSES=1 << 40),
    "two_pass": dict(ROW_CACHE_BYTES=0, SPLIT_MIN_CLASSES=1 << 40),
    "split": dict(SPLIT_MIN_CLASSES=64, SPLIT_CHUNK_MIN=40, BLOCKS_PER_SM=32, SM_COUNT=1),
}


def pytest_report_header(config):
    if HAVE_NUMBA:
        return "fusedce cuda tests: " + ("CUDA simulator" if SIMULATED else "real GPU")
    return None


@pytest.fixture(scope="session", autouse=True)
def _fast_simulator_threads():
    """The simulator runs each CUDA thread as a Python thread and its scheduler polls them;
    a short GIL switch interval makes it about ten times faster."""
    if not SIMULATED:
        yield
        return
    old = sys.getswitchinterval()
    sys.setswitchinterval(5e-5)
    yield
    sys.setswitchinterval(old)


@pytest.fixture(scope="session", autouse=True)
def _thread_safe_simulated_shared_arrays():
    """The simulator's cuda.shared.array creates a block's array on first use from whichever
    thread gets there, without a lock: two threads that arrive together can each get their own
    np.empty array, and a reduction then reads uninitialised memory (seen here under load as a
    sum of 0 beside a garbage max). Make that first-use step atomic; the kernels are as on a GPU."""
    if not SIMULATED:
        yield
        return
    import threading
    import traceback

    from numba.core import types
    from numba.cuda.simulator.kernelapi import FakeCUDAShared
    from numba.np import numpy_support

    unlocked = FakeCUDAShared.array
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:  # dynamic shared memory: one buffer, no race
            return unlocked(self, shape, dtype, alignment)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        caller = tuple(traceback.extract_stack(sys._getframe(1), limit=1)[0][0:2])  # the kernel's line
        with lock:
            res = self._allocations.get(caller)
            if res is None:
                res = self._allocations[caller] = np.empty(shape, dtype)
        return res

    FakeCUDAShared.array = array
    yield
    FakeCUDAShared.array = unlocked


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch):
    """Under the simulator keep blocks at 8 threads (the tree reductions still take 3 steps)."""
    if SIMULATED:
        from fusedce import _cuda

        monkeypatch.setattr(_cuda, "MAX_THREADS", 8)


class Helpers:
    """Transfers and comparisons shared by the test modules (a fixture: conftest is no module)."""

    simulated = SIMULATED

    def __init__(self, monkeypatch):
        from numba import cuda

        self.cuda = cuda
        self._monkeypatch = monkeypatch

    def use_path(self, name):
        from fusedce import _cuda

        for attr, value in LAYOUT_PATHS[name].items():
            self._monkeypatch.setattr(_cuda, attr, value)

    def dev(self, a):
        return self.cuda.to_device(np.asarray(a, order="C"))  # ascontiguousarray makes 0-d 1-d

    @staticmethod
    def host(a):
        return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)

    @staticmethod
    def logits(rng, shape, dtype, scale=3.0):
        return (scale * rng.standard_normal(shape)).astype(dtype)

    @staticmethod
    def targets(rng, batch_shape, classes, ignore_every=0, ignore_index=-100):
        t = rng.integers(0, classes, size=batch_shape)
        if ignore_every:
            t.reshape(-1)[::ignore_every] = ignore_index
        return t

    def assert_loss(self, got, ref, dtype):
        tol = TOLERANCE[np.dtype(dtype).name][0]
        got, ref = np.asarray(self.host(got), np.float64), np.asarray(ref, np.float64)
        assert got.shape == ref.shape
        same_nan = np.isnan(got) == np.isnan(ref)
        assert same_nan.all(), (got, ref)
        ok = np.isnan(ref) | (got == ref) | (np.abs(got - ref) <= tol * np.maximum(np.abs(ref), 1.0))
        assert ok.all(), f"loss off by {np.nanmax(np.abs(got - ref))}: {got} vs {ref}"

    def assert_array(self, got, ref, dtype):
        tol = TOLERANCE[np.dtype(dtype).name][1]
        got = self.host(got)
        assert got.shape == ref.shape
        assert got.dtype == np.dtype(dtype), got.dtype
        got, ref = got.astype(np.float64), np.asarray(ref, np.float64)
        assert (np.isnan(got) == np.isnan(ref)).all()
        finite = np.isfinite(ref)
        assert (got[~finite & ~np.isnan(ref)] == ref[~finite & ~np.isnan(ref)]).all()
        if finite.any():
            scale = max(float(np.abs(ref[finite]).max()), 1e-30)
            err = float(np.abs(got[finite] - ref[finite]).max())
            assert err <= tol * scale, f"max error {err} vs largest magnitude {scale}"


@pytest.fixture
def h(monkeypatch):
    return Helpers(monkeypatch)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
