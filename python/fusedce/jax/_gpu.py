"""JAX arrays on a CUDA device, outside any transformation: the NumPy API's CUDA backend
(Numba kernels) reads them through DLPack without a copy; array results come back to JAX
through DLPack, on the same device. Loss values only (no gradient: jax.grad traces).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import fusedce


def _to_jax(result):
    if isinstance(result, float):
        return jnp.asarray(result)
    return jax.dlpack.from_dlpack(result)


def call(name, *args, **kwargs):
    """fusedce.<name>(*args, **kwargs) with JAX results."""
    return _to_jax(getattr(fusedce, name)(*args, **kwargs))
