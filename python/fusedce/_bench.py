"""The engine behind ``python -m fusedce bench|check`` and the pytest-benchmark suites in bench/.

A case is (batch, classes, dtype, loss); the loss is categorical cross-entropy with class
targets (ce, the default), with probability targets of the logits' shape (soft), or binary
cross-entropy with logits (bce, a target probability per element). Per case: the float64 reference result is computed once
(the oracle); every chosen backend and operation is run once and checked against it (a wrong
result stops everything); the oracle is dropped; then every (backend, op) and the yardsticks
are timed, each as a warm-up then `repeat` calls, of which the median is reported: fusedce's
CPU calls and the host roofline passes in interleaved rounds (one call of each per round), the
other backends in consecutive calls.

The yardsticks on the host are the machine's memory roofline, measured by the C library with
the threads a kernel call of the case uses: a read of the logits' bytes (the forward's traffic)
and a copy of them with streaming stores (forward+backward's); np.copyto (one thread) is a
familiar extra row. `% roof` compares each call with the roofline of its traffic, best call
against best pass, the machine being shared; the rounds put the kernel's calls and the roofline's
side by side, so that a shared machine's slow and fast minutes fall on both alike (on a 2-core
VM the same two-thread read took 7.8 and 15.7 ms a minute apart, and timed in blocks a kernel
showed 129 % of the roofline). Other backends are not in the rounds: a call that follows another
thread pool's call, torch's OpenMP still spinning, runs several times slower at small shapes.

Bytes counted are the ones an operation cannot avoid: forward reads the logits once
(B*K*itemsize), backward (given lse) and fused forward+backward read them once and write the
gradient once (2*B*K*itemsize); the copy yardstick reads and writes once (2*B*K*itemsize).
The soft and bce losses also read their logits-sized target once (B*K*itemsize more).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.metadata
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import fusedce
from fusedce import _cpu, reference
from fusedce._tolerances import GRAD_RTOL, LOSS_RTOL  # the tests judge with the same table

DTYPES = ("float32", "float64", "float16", "bfloat16")
OPS = ("forward", "backward", "fused")
LOSSES = ("ce", "soft", "bce")
# BCE has no separate backward entry point: its fused call is what a backward computes.
LOSS_OPS = {"ce": OPS, "soft": OPS, "bce": ("forward", "fused")}
BACKENDS = ("cpu", "cuda", "reference", "torch", "jax")

DEFAULT_SHAPES = ((4096, 32000), (8192, 1024), (64, 131072))
DEFAULT_DTYPES = ("float32",)
DEFAULT_OPS = ("fused",)
DEFAULT_LOSSES = ("ce",)
DEFAULT_REPEAT = 5
# Small, awkward sizes (K not a multiple of any vector width, one huge row split over threads).
CHECK_SHAPES = ((64, 1000), (7, 4097), (2, 262144), (33, 3))

# Summed, not averaged: with 'mean' a half-precision gradient is scaled by 1/B into subnormals
# and the check would compare rounding noise. The kernels' cost is the same.
REDUCTION = "sum"

# A loss handed back in a half format (torch's) carries that format's rounding of each row's
# log-softmax and of their sum: a few units of its roundoff.
HALF_LOSS_RTOL = {"float16": 4 * 2.0**-11, "bfloat16": 4 * 2.0**-8}
HALF_MAX = {"float16": 65504.0, "bfloat16": 3.3895e38}
# A gradient computed in half precision throughout (torch's, with probability targets) is
# further off than fusedce's single rounding: the check only makes sure it is the same function.
HALF_COMPUTED_GRAD_RTOL = {"float16": 8 * 2.0**-11, "bfloat16": 8 * 2.0**-8}

# Passes over the B*K*itemsize bytes of the logits (or of the gradient) each op must make.
MEMORY_PASSES = {"forward": 1, "backward": 2, "fused": 2, "copy": 2, "read": 1}
# The roofline pattern each op's traffic is: the logits read, or read and a gradient written.
ROOFLINE_OF = {"forward": "read", "backward": "copy", "fused": "copy"}

# A call this slow was just run by the check: a warm-up round would add time, not accuracy.
SLOW_CALL_S = 0.5
# Gradients are compared in row blocks of about this many elements, so that checking a
# 10^8-element gradient does not allocate gigabytes of float64 temporaries.
CHECK_BLOCK_ELEMENTS = 1 << 22


class BenchError(Exception):
    """A request the bench cannot carry out (bad option, missing optional package)."""


class CheckFailure(Exception):
    """A backend's result is beyond tolerance of the float64 reference."""


# --------------------------------------------------------------------------- cases and inputs


@dataclasses.dataclass(frozen=True)
class Case:
    batch: int
    classes: int
    dtype: str
    loss: str = "ce"

    @property
    def shape(self):
        return (self.batch, self.classes)

    @property
    def elements(self):
        return self.batch * self.classes

    @property
    def label(self):
        return f"{self.batch}x{self.classes} {self.dtype}" + ("" if self.loss == "ce" else f" {self.loss}")

    def bytes_moved(self, op):
        target_pass = op in OPS and self.loss != "ce"  # the logits-sized target, read once
        return (MEMORY_PASSES[op] + target_pass) * self.elements * numpy_dtype(self.dtype).itemsize


def parse_shape(text):
    """'4096x32000' -> (4096, 32000)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or int(match[1]) < 1 or int(match[2]) < 1:
        raise ValueError(f"shape must be BxK with B, K >= 1 (e.g. 4096x32000), got {text!r}")
    return int(match[1]), int(match[2])


def numpy_dtype(name):
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError as exc:
            raise BenchError("bfloat16 needs ml_dtypes (pip install 'fusedce[half]')") from exc
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def numpy_dtype_available(name):
    try:
        numpy_dtype(name)
    except BenchError:
        return False
    return True


def make_inputs(case, seed=0):
    """Logits uniform in [-6, 6) (so the loss is about ln K + 5) and targets: uniform classes
    (ce), rows of uniform draws normalised to sum 1 (soft), uniform probabilities (bce); the
    soft and bce targets in the logits' dtype."""
    rng = np.random.default_rng(seed)
    x = rng.random(case.shape, dtype=np.float32)  # float32 draws: 3x faster than normals
    x *= 12.0
    x -= 6.0
    logits = x if case.dtype == "float32" else x.astype(numpy_dtype(case.dtype))
    if case.loss == "ce":
        return logits, rng.integers(0, case.classes, size=case.batch, dtype=np.int64)
    t = rng.random(case.shape, dtype=np.float32)
    if case.loss == "soft":
        t /= t.sum(axis=1, keepdims=True)
    return logits, t if case.dtype == "float32" else t.astype(numpy_dtype(case.dtype))


# --------------------------------------------------------------------------- correctness


@dataclasses.dataclass
class Outcome:
    """One operation's result, on the host, as the check reads it."""

    loss: float | None = None
    loss_dtype: str = "float64"  # what the backend returned the loss in (torch: the logits')
    grad_computed_in_half: bool = False  # torch: its half-precision kernels compute in half
    lse: np.ndarray | None = None
    grad: np.ndarray | None = None


class Oracle:
    """The float64 reference's loss and gradient; its lse only when a forward is checked
    (another full float64 pass: seconds at the big shapes)."""

    def __init__(self, logits, target, loss="ce"):
        self._logits = logits
        if loss == "bce":
            value, self.grad = reference.binary_cross_entropy_with_logits_with_grad(logits, target,
                                                                                  reduction=REDUCTION)
        else:
            value, self.grad = reference.cross_entropy_with_grad(logits, target, reduction=REDUCTION)
        self.loss = float(value)

    @functools.cached_property
    def lse(self):
        return reference.logsumexp(self._logits)


def _max_abs_diff(got, ref):
    """max |got - ref| over arrays of any float dtype; inf when got has a NaN ref has not."""
    rows = max(1, CHECK_BLOCK_ELEMENTS // max(1, ref.shape[-1]))
    worst = 0.0
    for start in range(0, ref.shape[0], rows):
        diff = np.abs(np.asarray(got[start:start + rows], dtype=np.float64) - ref[start:start + rows])
        if np.isnan(diff).any():
            return float("inf")
        worst = max(worst, float(diff.max(initial=0.0)))
    return worst


def result_errors(outcome, oracle, dtype):
    """{part: (normalised max error, tolerance)} for the parts the outcome has."""
    errors = {}
    # A loss beyond the format it is returned in (torch's float16 sum of a big BCE is inf)
    # cannot be compared; the gradient still is.
    beyond_format = abs(oracle.loss) > HALF_MAX.get(outcome.loss_dtype, np.inf)
    if outcome.loss is not None and not beyond_format:
        rtol = HALF_LOSS_RTOL.get(outcome.loss_dtype, LOSS_RTOL[dtype])
        err = abs(outcome.loss - oracle.loss) / max(abs(oracle.loss), 1.0)
        errors["loss"] = (err if np.isfinite(err) else float("inf"), rtol)
    if outcome.lse is not None:
        err = np.abs(np.asarray(outcome.lse, np.float64) - oracle.lse) / np.maximum(np.abs(oracle.lse), 1.0)
        errors["lse"] = (float("inf") if np.isnan(err).any() else float(err.max(initial=0.0)), LOSS_RTOL[dtype])
    if outcome.grad is not None:
        if outcome.grad.shape != oracle.grad.shape:
            errors["grad"] = (float("inf"), GRAD_RTOL[dtype])
        else:
            scale = float(np.abs(oracle.grad).max(initial=0.0)) or 1.0  # K = 1: the gradient is 0
            rtol = HALF_COMPUTED_GRAD_RTOL[dtype] if outcome.grad_computed_in_half else GRAD_RTOL[dtype]
            errors["grad"] = (_max_abs_diff(outcome.grad, oracle.grad) / scale, rtol)
    return errors


def require_within_tolerance(errors, what):
    for part, (err, tol) in errors.items():
        if not err <= tol:
            name = "gradient" if part == "grad" else part
            raise CheckFailure(
                f"wrong result: {what}: {name} max error {err:.3g} (relative) > tolerance {tol:.0e}"
            )


# --------------------------------------------------------------------------- backends


def _unpack(op, result):
    """(loss, lse, grad) from what the API returns for op; absent parts are None."""
    if op == "forward":
        loss, lse = result
        return loss, lse, None
    if op == "backward":
        return None, None, result
    loss, grad = result
    return loss, None, grad


class ApiRunner:
    """fusedce's public API, or its float64 reference (same signatures), on NumPy arrays.

    The gradient goes into a preallocated out= buffer: allocation is not what is timed."""

    device = "host"

    def __init__(self, api, logits, target, loss="ce"):
        self.api, self.x, self.t, self.loss = api, logits, target, loss
        self.grad_out = self._empty_like(logits)
        self._lse = None

    def _empty_like(self, arr):
        return np.empty_like(arr)

    def to_host(self, arr):
        return arr

    def sync(self):
        pass

    @property
    def lse(self):
        """The backend's own forward lse, what its backward is given (computed once)."""
        if self._lse is None:
            self._lse = self.forward()[1]
        return self._lse

    def forward(self):
        if self.loss == "bce":
            return self.api.binary_cross_entropy_with_logits(self.x, self.t, reduction=REDUCTION), None
        return self.api.cross_entropy_forward(self.x, self.t, reduction=REDUCTION)

    def backward(self):
        return self.api.cross_entropy_backward(self.x, self.t, self.lse, reduction=REDUCTION, out=self.grad_out)

    def fused(self):
        if self.loss == "bce":
            return self.api.binary_cross_entropy_with_logits_with_grad(self.x, self.t, reduction=REDUCTION,
                                                                       out=self.grad_out)
        return self.api.cross_entropy_with_grad(self.x, self.t, reduction=REDUCTION, out=self.grad_out)

    def outcome(self, op, result):
        loss, lse, grad = _unpack(op, result)
        return Outcome(loss=None if loss is None else float(loss),
                       lse=None if lse is None else self.to_host(lse),
                       grad=None if grad is None else self.to_host(grad))


class CudaRunner(ApiRunner):
    """The Numba CUDA backend (same signatures as the reference) on device arrays: the logits
    uploaded once, synchronised around every timed call. Called directly rather than through
    the public API's dispatch, so that the simulator's arrays run here too."""

    device = "cuda"

    def __init__(self, logits, target, loss="ce"):
        from numba import cuda

        from fusedce import _cuda

        self._cuda = cuda
        super().__init__(_cuda, cuda.to_device(logits), cuda.to_device(target), loss)

    def _empty_like(self, arr):
        return self._cuda.device_array_like(arr)

    def to_host(self, arr):
        return arr.copy_to_host() if hasattr(arr, "copy_to_host") else np.asarray(arr)

    def sync(self):
        self._cuda.synchronize()


class TorchRunner:
    """torch.nn.functional.cross_entropy (binary_cross_entropy_with_logits for bce) on CPU
    tensors sharing the NumPy memory, default threads. forward: no autograd; backward:
    autograd's backward of a kept graph (reads the saved log-softmax, writes the gradient);
    fused: forward + backward through autograd."""

    device = "host"

    def __init__(self, logits, target, loss="ce"):
        import torch

        self._torch = torch
        self.x, self.t, self.loss = self._tensor(logits), self._tensor(target), loss
        self.leaf = self.x.detach().requires_grad_()
        self._graph = None

    def _tensor(self, arr):
        if arr.dtype.name == "bfloat16":  # torch.from_numpy does not know ml_dtypes
            return self._torch.from_numpy(arr.view(np.uint16)).view(self._torch.bfloat16)
        return self._torch.from_numpy(arr)

    def _loss(self, x):
        functional = self._torch.nn.functional
        if self.loss == "bce":
            return functional.binary_cross_entropy_with_logits(x, self.t, reduction=REDUCTION)
        return functional.cross_entropy(x, self.t, reduction=REDUCTION)

    def sync(self):
        pass

    def forward(self):
        with self._torch.no_grad():
            return self._loss(self.x), None

    def backward(self):
        if self._graph is None:
            self._graph = self._loss(self.leaf)
        self.leaf.grad = None  # else autograd accumulates: an extra read and write
        self._graph.backward(retain_graph=True)
        return self.leaf.grad

    def fused(self):
        self.leaf.grad = None
        loss = self._loss(self.leaf)
        loss.backward()
        return loss.detach(), self.leaf.grad

    def outcome(self, op, result):
        loss, _, grad = _unpack(op, result)
        return Outcome(loss=None if loss is None else float(loss),
                       loss_dtype=None if loss is None else str(loss.dtype).removeprefix("torch."),
                       grad_computed_in_half=self.x.dtype in (self._torch.float16, self._torch.bfloat16),
                       grad=None if grad is None else grad.to(self._torch.float64).numpy())


class JaxRunner:
    """fusedce.jax under jax.jit (XLA custom calls into the C kernels). forward: the loss;
    backward: the jitted backward of a kept jax.vjp (its residual in, the gradient out); fused:
    jax.value_and_grad. The logits are an argument that is not donated, so XLA copies them
    before the in-place gradient (docs/jax.md; bench/bench_jax.py also times donated logits)."""

    device = "host"

    def __init__(self, logits, target, loss="ce"):
        import jax
        import jax.numpy as jnp

        import fusedce.jax as fj

        self._jax, self.loss = jax, loss
        if loss == "bce":
            fn = lambda x, t: fj.binary_cross_entropy_with_logits(x, t, reduction=REDUCTION)  # noqa: E731
        else:
            fn = lambda x, t: fj.cross_entropy(x, t, reduction=REDUCTION)  # noqa: E731
        self.x, self.t = jnp.asarray(logits), jnp.asarray(target)
        self._forward, self._fused = jax.jit(fn), jax.jit(jax.value_and_grad(fn))
        _, self._vjp = jax.vjp(lambda x: fn(x, self.t), self.x)
        self._backward = jax.jit(lambda vjp, g: vjp(g)[0])

    def sync(self):
        pass

    def forward(self):
        return self._jax.block_until_ready(self._forward(self.x, self.t)), None

    def backward(self):
        return self._jax.block_until_ready(self._backward(self._vjp, np.float32(1.0)))

    def fused(self):
        return self._jax.block_until_ready(self._fused(self.x, self.t))

    def outcome(self, op, result):
        loss, _, grad = _unpack(op, result)
        return Outcome(loss=None if loss is None else float(loss),
                       grad=None if grad is None else np.asarray(grad).astype(np.float64))


def jax_unavailable_reason():
    try:
        import fusedce.jax  # noqa: F401
    except ImportError as exc:
        return f"jax is not installed (pip install 'fusedce[jax]'): {exc}"
    return None


class HostCopy:
    """A familiar yardstick on the host: np.copyto of the logits into a preallocated buffer."""

    device = "host"
    label = "np.copyto"
    op = "copy"
    roofline = None  # one thread, ordinary stores: not the machine's limit
    self_timed = False
    in_rounds = False

    def __init__(self, logits):
        self.src, self.dst = logits, np.empty_like(logits)

    def run(self):
        np.copyto(self.dst, self.src)

    def sync(self):
        pass


class HostRoofline:
    """The host's memory roofline for the logits (fusedce_roofline): one multi-threaded pass of
    `pattern` ('read' or 'copy', the latter with streaming stores), timed by the C library."""

    device = "host"
    label = "roofline"
    self_timed = True
    in_rounds = True  # timed call by call beside fusedce's CPU calls

    def __init__(self, logits, pattern):
        self.op = self.roofline = pattern
        self.src = logits
        self.dst = np.empty_like(logits) if pattern == "copy" else None

    def run(self):
        return _cpu.roofline(self.op, self.src, self.dst)

    def sync(self):
        pass


class CudaCopy:
    """The memory yardstick on the GPU: a device-to-device copy of the logits."""

    device = "cuda"
    label = "cuda d2d copy"
    op = roofline = "copy"
    self_timed = False
    in_rounds = False

    def __init__(self, logits):
        from numba import cuda

        self._cuda = cuda
        self.src = cuda.to_device(logits)
        self.dst = cuda.device_array_like(self.src)

    def run(self):
        self.dst.copy_to_device(self.src)

    def sync(self):
        self._cuda.synchronize()


YARDSTICKS = {"host": (functools.partial(HostRoofline, pattern="read"),
                       functools.partial(HostRoofline, pattern="copy"), HostCopy),
              "cuda": (CudaCopy,)}


@dataclasses.dataclass
class BackendSpec:
    """One column of the comparison: a backend (and for the CPU, one ISA)."""

    label: str
    device: str
    dtypes: tuple
    open: Callable  # (logits, target, loss) -> runner
    isa: str | None = None

    @contextlib.contextmanager
    def active(self):
        """Select this spec's ISA for the calls inside (the CPU backend is process-global)."""
        if self.isa is None:
            yield
            return
        before = _cpu.active_isa()
        fusedce.set_isa(self.isa)
        try:
            yield
        finally:
            fusedce.set_isa(before)


def cuda_unavailable_reason():
    """None when the CUDA backend can run here, else why not."""
    # Broad on purpose: a numba-cuda that imports but mismatches its CUDA bindings raises
    # anything; that is "unavailable", not a crash of the bench.
    try:
        from numba import cuda  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return f"numba-cuda is not installed (pip install 'fusedce[cuda]'): {exc}"
    try:
        from fusedce import _cuda
    except Exception as exc:  # noqa: BLE001
        return f"fusedce's CUDA backend failed to import: {exc}"
    if _simulated():  # its times mean nothing, and big shapes take hours; tests/cuda covers it
        return "NUMBA_ENABLE_CUDASIM=1: the CUDA simulator is not a GPU"
    return None if _cuda.available() else "no CUDA GPU found (numba.cuda.is_available() is False)"


def _simulated():
    from numba.cuda.core import config

    return bool(config.ENABLE_CUDASIM)


def torch_unavailable_reason():
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        return f"torch is not installed: {exc}"
    return None


def resolve_isas(isas):
    """The CPU ISAs to run: the active one by default, every available one for 'all'."""
    available = _cpu.available_isas()
    if not isas:
        return [_cpu.active_isa()]
    if "all" in isas:
        return available
    missing = [name for name in isas if name not in available]
    if missing:
        raise BenchError(f"ISA {', '.join(missing)} not available here (available: {', '.join(available)})")
    return list(dict.fromkeys(isas))


def resolve_backends(kinds, isas):
    """(specs, {backend: why it is unavailable})."""
    specs, unavailable = [], {}
    for kind in kinds:
        if kind == "cpu":
            specs += [BackendSpec(f"cpu/{isa}", "host", DTYPES, _open_cpu, isa=isa)
                      for isa in resolve_isas(isas)]
        elif kind == "reference":
            specs.append(BackendSpec("reference", "host", DTYPES, _open_reference))
        elif kind == "torch":
            reason = torch_unavailable_reason()
            if reason:
                unavailable[kind] = reason
            else:
                specs.append(BackendSpec("torch", "host", DTYPES, TorchRunner))
        elif kind == "jax":
            reason = jax_unavailable_reason()
            if reason:
                unavailable[kind] = reason
            else:  # float64 needs jax_enable_x64, which the bench leaves as the user set it
                specs.append(BackendSpec("jax", "host", ("float32", "float16", "bfloat16"), JaxRunner))
        elif kind == "cuda":
            reason = cuda_unavailable_reason()
            if reason:
                unavailable[kind] = reason
            else:  # numba-cuda has no bfloat16 arrays
                specs.append(BackendSpec("cuda", "cuda", ("float32", "float64", "float16"), CudaRunner))
    return specs, unavailable


def _open_cpu(logits, target, loss):
    return ApiRunner(fusedce, logits, target, loss)


def _open_reference(logits, target, loss):
    return ApiRunner(reference, logits, target, loss)


# --------------------------------------------------------------------------- results


@dataclasses.dataclass
class Row:
    case: Case
    backend: str
    op: str  # forward | backward | fused, or a yardstick's: read | copy
    device: str
    times_s: list = dataclasses.field(default_factory=list)
    errors: dict = dataclasses.field(default_factory=dict)  # part -> (normalised max error, tolerance)
    roofline: str | None = None  # a roofline yardstick's pattern (read | copy)
    pct_roofline: float | None = None  # best call against the best roofline pass of its traffic
    pct_copy: float | None = None  # median against np.copyto's (the host) or the d2d copy
    vs_reference: float | None = None
    vs_torch: float | None = None

    @property
    def bytes(self):
        return self.case.bytes_moved(self.op)

    @property
    def median_s(self):
        return float(np.median(self.times_s)) if self.times_s else None

    @property
    def best_s(self):
        return float(np.min(self.times_s)) if self.times_s else None

    @property
    def gelem_per_s(self):
        return self.case.elements / self.median_s / 1e9 if self.times_s else None

    @property
    def gb_per_s(self):
        return self.bytes / self.median_s / 1e9 if self.times_s else None

    @property
    def max_error(self):
        return max((err for err, _ in self.errors.values()), default=None)

    @property
    def worst_fraction_of_tolerance(self):
        return max((err / tol for err, tol in self.errors.values()), default=0.0)

    def as_dict(self):
        return {
            "shape": list(self.case.shape), "batch": self.case.batch, "classes": self.case.classes,
            "dtype": self.case.dtype, "loss": self.case.loss, "backend": self.backend, "op": self.op, "device": self.device,
            "elements": self.case.elements, "bytes": self.bytes, "times_s": list(self.times_s),
            "median_s": self.median_s, "best_s": self.best_s, "gelem_per_s": self.gelem_per_s,
            "gb_per_s": self.gb_per_s, "roofline": self.roofline, "pct_roofline": self.pct_roofline,
            "pct_copy": self.pct_copy, "vs_reference": self.vs_reference, "vs_torch": self.vs_torch,
            "max_error": self.max_error,
            "errors": {part: err for part, (err, _) in self.errors.items()},
            "tolerances": {part: tol for part, (_, tol) in self.errors.items()},
        }


@dataclasses.dataclass
class BenchConfig:
    shapes: list = dataclasses.field(default_factory=lambda: list(DEFAULT_SHAPES))
    dtypes: list = dataclasses.field(default_factory=lambda: list(DEFAULT_DTYPES))
    backends: list = dataclasses.field(default_factory=lambda: list(BACKENDS))
    ops: list = dataclasses.field(default_factory=lambda: list(DEFAULT_OPS))
    losses: list = dataclasses.field(default_factory=lambda: list(DEFAULT_LOSSES))
    isas: list | None = None  # None: the active ISA; ["all"]: every available one
    threads: int | None = None  # fusedce's CPU threads; None: as set (all cores)
    repeat: int = DEFAULT_REPEAT
    timed: bool = True  # False: the correctness check only
    seed: int = 0

    def as_dict(self):
        return {**dataclasses.asdict(self), "reduction": REDUCTION}


@dataclasses.dataclass
class Report:
    config: BenchConfig
    environment: dict
    rows: list = dataclasses.field(default_factory=list)
    unavailable: dict = dataclasses.field(default_factory=dict)  # backend -> why
    skipped: list = dataclasses.field(default_factory=list)  # "cuda bfloat16: ..." combinations not run

    def as_dict(self):
        env = self.environment
        return {"schema": "fusedce-bench/1", "machine": env["machine"], "versions": env["versions"],
                "build": env["build"], "cpu": env["cpu"], "cuda": env["cuda"],
                "config": self.config.as_dict(), "unavailable": dict(self.unavailable),
                "skipped": list(self.skipped), "rows": [row.as_dict() for row in self.rows]}


# --------------------------------------------------------------------------- progress


class _NoProgress:
    def describe(self, text):
        pass

    def advance(self):
        pass


class _RichProgress:
    def __init__(self, progress, total):
        self._progress = progress
        self._task = progress.add_task("fusedce bench", total=total)

    def describe(self, text):
        self._progress.update(self._task, description=text)

    def advance(self):
        self._progress.advance(self._task)


class _TqdmProgress:
    def __init__(self, bar):
        self._bar = bar

    def describe(self, text):
        self._bar.set_description_str(text)

    def advance(self):
        self._bar.update(1)


@contextlib.contextmanager
def progress_display(total, enabled):
    """A progress bar from rich (else tqdm) while enabled, else nothing."""
    if not enabled:
        yield _NoProgress()
        return
    try:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    except ImportError:
        try:
            from tqdm import tqdm
        except ImportError:
            yield _NoProgress()
            return
        with tqdm(total=total, leave=False) as bar:
            yield _TqdmProgress(bar)
        return
    columns = (TextColumn("{task.description:<48}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True) as progress:
        yield _RichProgress(progress, total)


# --------------------------------------------------------------------------- the run


@contextlib.contextmanager
def _cpu_threads(threads):
    if threads is None:
        yield
        return
    before = fusedce.get_num_threads()
    fusedce.set_num_threads(threads)
    try:
        yield
    finally:
        fusedce.set_num_threads(before)


def _plan(config, specs):
    """[(case, [specs that run its dtype])] and the combinations skipped."""
    plan, skipped = [], []
    for dtype in config.dtypes:
        numpy_dtype(dtype)  # fail before any work when ml_dtypes is missing
    for batch, classes in config.shapes:
        for dtype in config.dtypes:
            runs = [spec for spec in specs if dtype in spec.dtypes]
            skipped += [f"{spec.label} {dtype}: not supported by this backend"
                        for spec in specs if dtype not in spec.dtypes]
            if runs:
                plan += [(Case(batch, classes, dtype, loss), runs) for loss in config.losses]
    skipped += [f"{loss} {op}: no separate entry point (the fused call computes it)"
                for loss in config.losses for op in config.ops if op not in LOSS_OPS[loss]]
    return plan, list(dict.fromkeys(skipped))


def _case_ops(case, ops):
    return [op for op in ops if op in LOSS_OPS[case.loss]]


def _steps(plan, config):
    """How many progress steps the run takes: one per check, one per timed call."""
    steps = 0
    for case, specs in plan:
        pairs = len(specs) * len(_case_ops(case, config.ops))
        sticks = sum(len(YARDSTICKS[device]) for device in {spec.device for spec in specs})
        steps += pairs + (config.repeat + 1) * (pairs + sticks) * config.timed
    return steps


def run(config, show_progress=False):
    """Check (and with config.timed, time) every case; raises CheckFailure on a wrong result."""
    specs, unavailable = resolve_backends(config.backends, config.isas)
    plan, skipped = _plan(config, specs)
    report = Report(config, environment(), unavailable=unavailable, skipped=skipped)
    with _cpu_threads(config.threads), progress_display(_steps(plan, config), show_progress) as progress:
        report.environment["cpu"]["threads"] = fusedce.get_num_threads()
        for case, case_specs in plan:
            report.rows += _run_case(case, case_specs, config, progress)
    return report


@dataclasses.dataclass
class _Timed:
    """One thing to time: its row, the call, and how to wrap it."""

    row: Row
    call: Callable
    sync: Callable
    active: Callable  # context manager factory (the ISA switch), entered outside the timing
    warm_up: bool
    self_timed: bool = False  # the call returns its own seconds (the C library's roofline)
    in_rounds: bool = False  # timed in the interleaved rounds (fusedce's CPU calls, the roofline)


def _run_case(case, specs, config, progress):
    logits, target = make_inputs(case, config.seed)
    runners = [(spec, spec.open(logits, target, case.loss)) for spec in specs]
    timed = _check_case(case, logits, target, runners, _case_ops(case, config.ops), progress)
    if config.timed:
        for device in dict.fromkeys(spec.device for spec in specs):
            for make in YARDSTICKS[device]:
                stick = make(logits)
                row = Row(case, stick.label, stick.op, device, roofline=stick.roofline)
                timed.append(_Timed(row, stick.run, stick.sync, contextlib.nullcontext, True, stick.self_timed,
                                    stick.in_rounds))
        _time_each(case, timed, config.repeat, progress)
        _fill_ratios([item.row for item in timed])
    return [item.row for item in timed]


def _check_case(case, logits, target, runners, ops, progress):
    """Run every (backend, op) once against the oracle (the oracle is freed on return).
    A call that took SLOW_CALL_S or more counts as its own warm-up."""
    progress.describe(f"reference (oracle) {case.label}")
    oracle = Oracle(logits, target, case.loss)
    checked = []
    for spec, runner in runners:
        for op in ops:
            what = f"{spec.label} {op} {case.label}"
            progress.describe(f"check {what}")
            with spec.active():
                start = time.perf_counter()
                result = getattr(runner, op)()
                runner.sync()
                seconds = time.perf_counter() - start
                errors = result_errors(runner.outcome(op, result), oracle, case.dtype)
            require_within_tolerance(errors, what)
            row = Row(case, spec.label, op, spec.device, errors=errors)
            checked.append(_Timed(row, getattr(runner, op), runner.sync, spec.active, seconds < SLOW_CALL_S,
                                  in_rounds=spec.device == "host" and spec.isa is not None))
            progress.advance()
    return checked


def _time_each(case, items, repeat, progress):
    """A warm-up call of each item (unless the check's call was slow enough to be its own),
    then `repeat` timed calls: in rounds of one call of each item for the items in_rounds, in
    turn (consecutive calls) for the others."""
    rounds = [item for item in items if item.in_rounds]
    for item in rounds:
        progress.describe(f"warm up {item.row.backend} {item.row.op} {case.label}")
        if item.warm_up:
            _time_call(item)
        progress.advance()
    for index in range(repeat):
        progress.describe(f"time round {index + 1} of {repeat}, {case.label}")
        for item in rounds:
            item.row.times_s.append(_time_call(item))
            progress.advance()
    for item in items:
        if item.in_rounds:
            continue
        progress.describe(f"time {item.row.backend} {item.row.op} {case.label}")
        for index in range(-1, repeat):
            if index >= 0 or item.warm_up:
                seconds = _time_call(item)
                if index >= 0:
                    item.row.times_s.append(seconds)
            progress.advance()


def _time_call(item):
    """One call of item, under its context (entered outside the timing), in seconds."""
    with item.active():
        item.sync()
        start = time.perf_counter()
        result = item.call()
        item.sync()
        return result if item.self_timed else time.perf_counter() - start


def _best_gb_per_s(row):
    return row.bytes / row.best_s / 1e9


def _fill_ratios(rows):
    """% of the roofline of each call's traffic (same device, best against best), % of the
    familiar copy (medians), and speedups over the reference and torch (same op)."""
    roof = {(row.device, row.roofline): _best_gb_per_s(row) for row in rows if row.roofline}
    copy_gbs = {row.device: row.gb_per_s for row in rows if row.op == "copy" and row.backend != "roofline"}
    baseline = {(row.backend, row.op): row.median_s for row in rows}
    for row in rows:
        row.pct_copy = 100.0 * row.gb_per_s / copy_gbs[row.device] if row.device in copy_gbs else None
        if row.op not in OPS:
            continue
        pattern = ROOFLINE_OF[row.op] if (row.device, ROOFLINE_OF[row.op]) in roof else "copy"
        if (row.device, pattern) in roof:
            row.pct_roofline = 100.0 * _best_gb_per_s(row) / roof[(row.device, pattern)]
        ref, torch_s = baseline.get(("reference", row.op)), baseline.get(("torch", row.op))
        row.vs_reference = ref / row.median_s if ref else None
        row.vs_torch = torch_s / row.median_s if torch_s else None


# --------------------------------------------------------------------------- environment


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model():
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib():
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    return None


def _extension_path():
    from fusedce import _cffi

    return Path(_cffi.__file__)


def _compiler():
    """The compiler's identification string the extension was built with, read from its ELF
    .comment section (GCC and Clang write one); the build exposes nothing better."""
    with contextlib.suppress(OSError, ImportError):
        blob = _extension_path().read_bytes()
        match = re.search(rb"(GCC: \([^)\x00]*\) [^\x00]+|(?:[\w ]+ )?clang version [^\x00]+)", blob)
        if match:
            return match[1].decode(errors="replace").strip()
    return "unknown"


def _build_type():
    """CMAKE_BUILD_TYPE from the CMake cache of an in-tree (editable) build that produced the
    loaded extension; 'unknown' for an installed wheel, whose cache is gone."""
    with contextlib.suppress(OSError, ImportError):
        extension = _extension_path().name
        for cache in (Path(fusedce.__file__).resolve().parents[2] / "build").glob("*/CMakeCache.txt"):
            if (cache.parent / extension).exists():
                match = re.search(r"^CMAKE_BUILD_TYPE:\w+=(.*)$", cache.read_text(), re.MULTILINE)
                if match and match[1]:
                    return match[1]
    return "unknown"


def _cuda_environment():
    reason = cuda_unavailable_reason()
    info = {"available": reason is None, "reason": reason, "device": None}
    if reason is None:
        from numba import cuda

        with contextlib.suppress(Exception):
            device = cuda.get_current_device()
            name = device.name
            info["device"] = name.decode() if isinstance(name, bytes) else str(name)
    return info


def environment():
    """Machine, versions, build, CPU and CUDA state: what `info` prints and the JSON records."""
    torch = sys.modules.get("torch")
    cpu = fusedce.cpu_info()  # the same dict the API gives, threads under the bench's key
    return {
        "machine": {"platform": platform.platform(), "cpu_model": _cpu_model(),
                    "cores": os.cpu_count(), "memory_gib": _memory_gib()},
        "versions": {"python": platform.python_version(), "fusedce": fusedce.__version__,
                     "numpy": np.__version__, "torch": _version("torch"), "numba": _version("numba"),
                     "numba_cuda": _version("numba-cuda"), "ml_dtypes": _version("ml_dtypes")},
        "build": {"build_type": _build_type(), "compiler": _compiler(),
                  "compiled_isas": [name for code, name in enumerate(_cpu.ISA_NAMES)
                                    if _cpu.lib.fusedce_isa_compiled(code)]},
        "cpu": {**{key: value for key, value in cpu.items() if key != "num_threads"},
                "threads": cpu["num_threads"],
                "torch_threads": torch.get_num_threads() if torch is not None else None},
        "cuda": _cuda_environment(),
    }


# --------------------------------------------------------------------------- output


COLUMNS = ("shape", "dtype", "backend", "op", "median ms", "best ms", "Gelem/s", "GB/s", "% roof",
           "x ref", "x torch", "max err")
_NUMERIC_FROM = COLUMNS.index("median ms")


def _fmt(value, spec, suffix=""):
    return "-" if value is None else f"{value:{spec}}{suffix}"


def table_cells(row):
    case = row.case
    op = row.op if case.loss == "ce" or row.op not in OPS else f"{case.loss} {row.op}"
    return [f"{case.batch}x{case.classes}", case.dtype, row.backend, op,
            _fmt(row.median_s and row.median_s * 1e3, ".3g"), _fmt(row.best_s and row.best_s * 1e3, ".3g"),
            _fmt(row.gelem_per_s, ".3g"), _fmt(row.gb_per_s, ".3g"), _fmt(row.pct_roofline, ".0f"),
            _fmt(row.vs_reference, ".2f", "x"),
            _fmt(row.vs_torch, ".2f", "x"), _fmt(row.max_error, ".1e")]


def summary_line(report):
    env, config = report.environment, report.config
    torch_threads = env["cpu"]["torch_threads"]
    return (f"fusedce {env['versions']['fusedce']} on {env['machine']['cpu_model']} "
            f"({env['machine']['cores']} cores), fusedce threads {env['cpu']['threads']}"
            + (f", torch {env['versions']['torch']} threads {torch_threads}" if torch_threads else "")
            + f"; reduction={REDUCTION!r}, median and best of {config.repeat}; % roof: best call against the best "
            "roofline pass of its traffic (read: forward; streaming copy: backward, fused), same threads; "
            "errors relative to the float64 reference")


def notes(report):
    lines = [f"{backend}: unavailable ({why})" for backend, why in report.unavailable.items()]
    return lines + [f"skipped {what}" for what in report.skipped]


def plain_table(rows):
    cells = [list(COLUMNS)] + [table_cells(row) for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]

    def aligned(line):
        return "  ".join(cell.rjust(width) if i >= _NUMERIC_FROM else cell.ljust(width)
                         for i, (cell, width) in enumerate(zip(line, widths))).rstrip()

    return "\n".join(aligned(line) for line in cells)


def _rich_console(stream, width_needed):
    """A rich console on a terminal wide enough for the boxed table, else None."""
    if not stream.isatty():
        return None
    try:
        from rich.console import Console
    except ImportError:
        return None
    console = Console(file=stream)
    return console if console.width >= width_needed else None


def print_report(report, stream=None):
    """A rich table on a wide terminal; plain aligned text otherwise (pipes, files, CI logs,
    and terminals where rich would have to cut the cells short)."""
    stream = stream or sys.stdout
    plain = plain_table(report.rows)
    box_overhead = len(COLUMNS) + 2  # rich draws a border and one more space per column
    console = _rich_console(stream, len(plain.partition("\n")[0]) + box_overhead)
    if console is None:
        table = [plain] if report.rows else []
        print(summary_line(report), *table, *notes(report), sep="\n", file=stream)
        return
    from rich.table import Table

    table = Table(title=summary_line(report), title_justify="left")
    for i, name in enumerate(COLUMNS):
        table.add_column(name, justify="right" if i >= _NUMERIC_FROM else "left", no_wrap=True)
    for row in report.rows:
        table.add_row(*table_cells(row), style="dim" if row.op not in OPS else None)
    console.print(table)
    for line in notes(report):
        console.print(line, highlight=False)


def check_summary(report):
    """One line per backend: how many (shape, dtype, op) results matched, and the worst error
    as a fraction of its tolerance; then the notes."""
    by_backend = {}
    for row in report.rows:
        by_backend.setdefault(row.backend, []).append(row)
    lines = [f"{backend}: {len(rows)} results ok on {len({r.case for r in rows})} cases, worst error "
             f"{max(r.worst_fraction_of_tolerance for r in rows):.2f} of its tolerance"
             for backend, rows in by_backend.items()]
    return lines + notes(report)


def info_lines(env):
    """(label, value) pairs for `fusedce info`."""
    cpu, build, versions, cuda = env["cpu"], env["build"], env["versions"], env["cuda"]
    return [
        ("fusedce", versions["fusedce"]),
        ("build", f"{build['build_type']}, ISAs compiled in: {', '.join(build['compiled_isas'])}"),
        ("compiler", build["compiler"]),
        ("machine", f"{env['machine']['cpu_model']}, {env['machine']['cores']} cores, {env['machine']['platform']}"),
        ("ISA", f"detected {cpu['detected_isa']}, active {cpu['active_isa']}"),
        ("available ISAs", ", ".join(cpu["available_isas"])),
        ("threads", f"{cpu['threads']} (max {cpu['max_threads']}), "
                    + ("OpenMP" if cpu["openmp"] else "built without OpenMP: one thread")),
        ("caches", f"L2 {cpu['l2_bytes'] >> 10} KiB per core, last level {cpu['llc_bytes'] >> 20} MiB "
                   "(rows over L2/2 split across threads; gradients over the LLC streamed)"),
        ("buffer pool", _pool_line(cpu["buffer_pool"])),
        ("cuda", f"available: {cuda['device']}" if cuda["available"] else f"unavailable ({cuda['reason']})"),
        ("numba", f"{versions['numba'] or 'not installed'}, numba-cuda {versions['numba_cuda'] or 'not installed'}"),
        ("torch", versions["torch"] or "not installed"),
        ("numpy", versions["numpy"]),
        ("ml_dtypes", versions["ml_dtypes"] or "not installed (no bfloat16)"),
    ]


def _pool_line(pool):
    """The buffer pool as `info` shows it: what it holds, its bound, what is in use."""
    mib = 2**20
    bound = ("off" if pool["limit"] == 0 else
             f"bound {pool['limit'] / mib:.0f} MiB" if pool["limit"] is not None else
             f"bound adaptive, now {pool['bound'] / mib:.0f} MiB (the recent peak in use)")
    return (f"holds {pool['held_bytes'] / mib:.0f} MiB in {pool['held_blocks']} blocks, {bound}; "
            f"in use {pool['in_use_bytes'] / mib:.0f} MiB; results from {pool['min_pooled_bytes'] // 1024} KiB; "
            f"huge pages {pool['huge_pages']} (system: {pool['transparent_huge_pages'] or 'unknown'})")


def write_json(report, path):
    Path(path).write_text(json.dumps(report.as_dict(), indent=2) + "\n")


def require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise BenchError("--plot needs matplotlib (pip install matplotlib, or 'fusedce[bench]')") from exc


def plot(report, path):
    """Throughput (G elements/s) against K, one panel per op, a line per backend and dtype;
    the roofline is the bandwidth of the op's roofline pattern (read for the forward, streaming
    copy otherwise) turned into elements/s at that op's bytes per element."""
    require_matplotlib()
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
    from matplotlib.ticker import FuncFormatter

    plain_numbers = FuncFormatter(lambda value, _: f"{value:g}")
    sparse_numbers = FuncFormatter(lambda value, _: f"{value:g}" if f"{value:.0e}"[0] in "25" else "")

    ops = [op for op in OPS if any(row.op == op and row.times_s for row in report.rows)]
    if not ops:
        raise BenchError("nothing was timed: no plot to draw")
    fig = Figure(figsize=(5.5 * len(ops), 4.5), layout="constrained")
    axes = fig.subplots(1, len(ops), squeeze=False)[0]
    for ax, op in zip(axes, ops):
        series = {}
        for row in report.rows:
            roof_pattern = ROOFLINE_OF[op] if any(r.roofline == ROOFLINE_OF[op] for r in report.rows) else "copy"
            if row.times_s and (row.op == op or row.roofline == roof_pattern) and op in LOSS_OPS[row.case.loss]:
                series.setdefault((row.backend, row.case.dtype, row.case.loss, row.op), []).append(row)
        for (backend, dtype, loss, kind), rows in sorted(series.items()):
            rows.sort(key=lambda r: (r.case.classes, r.case.batch))
            ks = [r.case.classes for r in rows]
            name = f"{backend} {dtype}" + ("" if loss == "ce" else f" {loss}")
            if kind not in OPS:  # bytes/s -> elements/s at this op's traffic per element
                ys = [r.gb_per_s * r.case.elements / r.case.bytes_moved(op) for r in rows]
                label = f"{kind} roofline" if backend == "roofline" else f"{name} roofline"
                ax.plot(ks, ys, "k--", lw=1.2, label=label)
            else:
                ax.plot(ks, [r.gelem_per_s for r in rows], "o-", label=name)
        ax.set(xscale="log", yscale="log", xlabel="K (classes)", ylabel="G elements / s", title=op)
        ax.yaxis.set_major_formatter(plain_numbers)
        ax.yaxis.set_minor_formatter(sparse_numbers)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(summary_line(report).split(";")[0], fontsize="small")
    fig.savefig(path, dpi=120)
