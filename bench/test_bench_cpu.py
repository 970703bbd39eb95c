"""Forward, backward (given lse) and fused forward+backward on the CPU: fusedce's C kernels
(per ISA), the NumPy float64 reference, torch when installed, and np.copyto of the same
logits as the memory yardstick. The calls are the ones `python -m fusedce bench` times."""

import pytest

import fusedce
from fusedce import _bench, reference

ops = pytest.mark.parametrize("op", _bench.OPS)


@ops
def test_fusedce_cpu(timed, inputs, active_isa, op):
    runner = _bench.ApiRunner(fusedce, *inputs)
    timed(f"cpu/{active_isa}", op, getattr(runner, op))


@ops
def test_reference(timed, inputs, op):
    runner = _bench.ApiRunner(reference, *inputs)
    timed("reference", op, getattr(runner, op))


@ops
def test_torch(timed, inputs, op):
    if _bench.torch_unavailable_reason():
        pytest.skip(_bench.torch_unavailable_reason())
    runner = _bench.TorchRunner(*inputs)
    timed("torch", op, getattr(runner, op))


def test_copy(timed, inputs):
    stick = _bench.HostCopy(inputs[0])
    timed(stick.label, "copy", stick.run)
