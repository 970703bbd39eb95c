"""The arrays fusedce returns, from its buffer pool (csrc/buffer_pool.c).

A fresh logits-sized result is paid for twice: the kernel writes it, and before that the
system faults in and zeroes each of its pages. Large results (MIN_POOLED_BYTES and up) come
from the C pool instead, which hands out blocks that earlier results released, already
resident. Each block is a cffi pointer whose destructor (ffi.gc) releases it to the pool; the
array is np.frombuffer over it, so NumPy's base chain (every view, every torch tensor made
with torch.from_numpy) keeps the block in use as long as anything can reach its memory.
The arrays are ordinary ndarrays: C-contiguous, aligned (to 2 MiB), writeable; they pickle,
copy and deepcopy as any other (to arrays NumPy allocates).

Small results come from np.empty: glibc already reuses small freed blocks, and a pooled block
costs a few microseconds of bookkeeping, the price of one or two page faults.
"""

from __future__ import annotations

import math
import os
import re

import numpy as np

from ._cffi import ffi, lib

# From glibc's mmap threshold up: below it, malloc keeps freed blocks for reuse; from it, a
# fresh array is fresh pages. A forward at 65536x1024 faulted in its float64 per-row losses and
# lse (512 KiB each) on every call: 224 faults, about 0.5 ms of a 7 ms call on a Zen 5 VM.
MIN_POOLED_BYTES = 128 << 10
ENV = "FUSEDCE_BUFFER_POOL"
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def empty(shape, dtype):
    """An uninitialised C-contiguous array, from the pool when it is large and the pool is on."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape if isinstance(shape, tuple) else (shape,)) * dtype.itemsize
    if nbytes < MIN_POOLED_BYTES or lib.fusedce_pool_limit() == 0:
        return np.empty(shape, dtype)
    block = lib.fusedce_pool_acquire(nbytes)
    if block == ffi.NULL:  # no mapping to be had: NumPy tries, and raises its MemoryError
        return np.empty(shape, dtype)
    owner = ffi.gc(block, lib.fusedce_pool_release)
    return np.frombuffer(ffi.buffer(owner, nbytes), dtype).reshape(shape)


def empty_like(a):
    return empty(a.shape, a.dtype)


def astype(a, dtype):
    """a in dtype (a itself when it is already), the copy from the pool: ndarray.astype with
    the pool's memory."""
    if a.dtype == dtype:
        return a
    out = empty(a.shape, dtype)
    np.copyto(out, a, casting="unsafe")
    return out


def parse_bytes(value, name):
    """A byte count: an int >= 0, or a string such as '0', '512M', '2G', '1.5GiB' (binary
    units); None or 'auto' for the adaptive default (returned as None)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "auto"):
            return None
        match = re.fullmatch(r"(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?", text)
        if not match:
            raise ValueError(f"{name} must be a byte count such as 0, 536870912, 512M or 2G, or 'auto', "
                             f"got {value!r}")
        return int(float(match[1]) * _UNITS[match[2]])
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int number of bytes or None (adaptive), got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0 bytes (0 turns the pool off) or None (adaptive), got {value}")
    return int(value)


def set_buffer_pool(max_bytes):
    """Bound fusedce's buffer pool: keep at most max_bytes of released result memory for
    reuse (0 turns the pool off: results come from np.empty and kept blocks go back to the
    system at once; None: the adaptive default, the most bytes of results in use at once
    recently). Also takes the strings FUSEDCE_BUFFER_POOL takes ('512M', '2G', 'auto').
    Returns the setting before, so that `set_buffer_pool(set_buffer_pool(0))` empties it."""
    limit = parse_bytes(max_bytes, "max_bytes")
    before = lib.fusedce_pool_set_limit(-1 if limit is None else limit)
    return None if before < 0 else int(before)


def info():
    """What the pool holds and has done (see fusedce_pool_stats in fusedce.h)."""
    s = ffi.new("fusedce_pool_stats *")
    lib.fusedce_pool_get_stats(s)
    return {
        "limit": None if s.limit < 0 else s.limit,
        "bound": s.bound,
        "held_bytes": s.held_bytes,
        "held_blocks": s.held_blocks,
        "in_use_bytes": s.in_use_bytes,
        "in_use_blocks": s.in_use_blocks,
        "hits": s.hits,
        "misses": s.misses,
        "returned_bytes": s.returned_bytes,
        "returned_blocks": s.returned_blocks,
        "huge_pages": {1: "requested", 0: "refused by the system", -1: "not yet requested"}[s.huge_pages],
        "transparent_huge_pages": _thp_mode(),
        "min_pooled_bytes": MIN_POOLED_BYTES,
    }


def _thp_mode():
    """The system's transparent huge page mode (always, madvise or never), None where unknown."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            match = re.search(r"\[(\w+)\]", f.read())
    except OSError:
        return None
    return match[1] if match else None


def _configure_from_environment():
    value = os.environ.get(ENV)
    if value is not None:
        set_buffer_pool(parse_bytes(value, ENV))


_configure_from_environment()
