"""The process's resident memory, for the benchmarks' peak-growth figures (Linux)."""

from __future__ import annotations

import time


def status_kib(field):
    """A field of /proc/self/status in KiB (VmRSS, VmHWM, ...)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_growth(step):
    """(seconds, peak resident bytes above the current RSS) of one call of step(), its result
    dropped after: VmHWM reset to VmRSS first (writing 5 to /proc/self/clear_refs, Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    before = status_kib("VmRSS")
    start = time.perf_counter()
    result = step()
    elapsed = time.perf_counter() - start
    peak = status_kib("VmHWM")
    del result
    return elapsed, (peak - before) * 1024
