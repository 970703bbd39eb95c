"""Every kernel compiles for a real GPU (sm_90), even on a machine without one.

The simulator runs the kernels as Python, so it cannot catch what only Numba's CUDA typing
rejects (an unsupported conversion, a function the CUDA target lacks). This test
compiles each kernel to PTX in a subprocess without the simulator; it needs NVVM and NVRTC
(numba-cuda[cu13]'s toolkit wheels, which the test extra installs, or a CUDA toolkit) and is
skipped without them. With a real GPU the
other tests compile the kernels anyway.
"""

import os
import subprocess
import sys
import textwrap

import pytest

import fusedce

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"  # set by conftest when no GPU

COMPILE_ALL = textwrap.dedent(
    """
    from types import SimpleNamespace
    import numpy as np
    from numba import cuda, typeof
    import numba.cuda.dispatcher as dispatcher
    if not cuda.is_available():
        # Compiling calls to device functions asks for the current device: answer for one.
        dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=(9, 0))
    from fusedce import _cuda_kernels as K

    def ptx(kernel, *args):
        code, _ = cuda.compile_ptx(kernel.py_func, tuple(typeof(a) for a in args), cc=(9, 0))
        return code

    for dt in ("float32", "float16", "float64"):
        ct = K.compute_dtype(dt)
        x, i64, w = np.zeros((2, 3), dt), np.zeros(2, np.int64), np.zeros(3, ct)
        f64, c1, parts = np.zeros(2), np.zeros(2, ct), np.zeros((2, 2, K.N_STATS), ct)
        rk = K.row_kernels(dt, 512)
        ptx(rk.rows, x, i64, x, w, f64, f64, parts, c1, c1, c1, x, 0, True, 0, 1, 1, 3, True,
            True, True, True, True, True, True, -100, 1.0, 0.1, 0.0, 3.0, 1.0, ct(0), ct(0))
        ptx(rk.chunk_stats, x, i64, x, w, True, True, True, True, -100, 1.0, 0.1, ct(0), ct(0), 1, 3,
            parts, c1)
        w2 = np.zeros((1, 3), ct)
        ptx(K.bce_kernels(dt, 512).bce, x, x, w2, 1, w2, 2, w2, True, 1.0, x, True, x, True, f64)
        ptx(K.reduce_kernels(512).cast, f64, np.zeros(2, dt))
    red = K.reduce_kernels(512)
    ptx(red.check_targets, np.zeros(2, np.int32), f64, True, -100, 3, np.zeros((2, 2)))
    ptx(red.sum_rows, np.zeros(2, np.float32), f64)
    print("compiled")
    """
)


@pytest.mark.skipif(not SIMULATED, reason="on a real GPU every other test compiles the kernels")
def test_kernels_compile_to_ptx():
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(list(fusedce.__path__)[0]),
                                         env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", COMPILE_ALL], env=env, capture_output=True, text=True)
    if proc.returncode and any(lib in proc.stderr for lib in ("NVVM", "libnvvm", "libnvrtc")):
        pytest.skip("the CUDA compiler libraries are not installed: " + proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "compiled" in proc.stdout
