"""fusedce: fused softmax + cross-entropy kernels (loss, log-sum-exp and gradient).

    loss, grad = fusedce.cross_entropy_with_grad(logits, target)

NumPy arrays run on the C SIMD kernels; CUDA arrays on the Numba CUDA kernels.
``fusedce.reference`` holds the float64 NumPy oracle with the same signatures.
"""

from . import reference
from ._api import (
    binary_cross_entropy_with_logits,
    binary_cross_entropy_with_logits_with_grad,
    cross_entropy,
    cross_entropy_backward,
    cross_entropy_forward,
    cross_entropy_with_grad,
    is_cuda_array,
    log_softmax,
    logsumexp,
    softmax,
)
from ._cpu import available_isas, get_num_threads, set_isa, set_num_threads
from ._linear import linear_cross_entropy, linear_cross_entropy_with_grad
from ._pool import set_buffer_pool

# The one place the version is written: the build reads it from here (pyproject.toml).
__version__ = "0.1.0"

__all__ = [
    "cross_entropy",
    "cross_entropy_with_grad",
    "cross_entropy_forward",
    "cross_entropy_backward",
    "log_softmax",
    "softmax",
    "logsumexp",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_with_grad",
    "linear_cross_entropy",
    "linear_cross_entropy_with_grad",
    "reference",
    "cpu_info",
    "set_isa",
    "available_isas",
    "set_num_threads",
    "get_num_threads",
    "set_buffer_pool",
    "is_cuda_array",
]


def cpu_info():
    """The CPU backend's state: detected and active ISA, available ISAs, threads (and whether
    the build has OpenMP: without it, one thread), the cache sizes the kernels plan with (rows
    over half the L2 are split over threads; gradients over the last-level cache are written
    with streaming stores), and what the buffer pool that large results come from holds (see
    set_buffer_pool)."""
    from . import _cpu, _pool

    l2, llc = _cpu.cache_bytes()
    return {
        "detected_isa": _cpu.detected_isa(),
        "active_isa": _cpu.active_isa(),
        "available_isas": _cpu.available_isas(),
        "num_threads": _cpu.get_num_threads(),
        "max_threads": _cpu.max_threads(),
        "openmp": _cpu.openmp(),
        "l2_bytes": l2,
        "llc_bytes": llc,
        "buffer_pool": _pool.info(),
    }
