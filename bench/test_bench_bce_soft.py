"""Binary cross-entropy with logits and probability-target cross-entropy, fused forward +
backward on the CPU, against torch's (forward + backward through autograd) and np.copyto.

    pytest bench/test_bench_bce_soft.py --benchmark-only --benchmark-group-by=param:shape

Bytes per element: BCE reads logits and targets and writes the gradient (12 for float32);
the probability-target CE does the same (pass 1 reads both, pass 2 rereads them from cache).
"""

import numpy as np
import pytest

import fusedce

SHAPES = [(4096, 32000), (512, 4096)]


@pytest.fixture(scope="module", params=SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def shape(request):
    return request.param


@pytest.fixture(scope="module")
def data(shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    labels = (rng.random(shape) < 0.05).astype(np.float32)  # multi-label targets
    probs = rng.random(shape, dtype=np.float32)
    probs /= probs.sum(axis=1, keepdims=True)
    return x, labels, probs, np.empty_like(x)


def _torch():
    return pytest.importorskip("torch")


def test_bce_fusedce(benchmark, data):
    x, labels, _, out = data
    benchmark.extra_info["bytes"] = 3 * x.nbytes
    benchmark(fusedce.binary_cross_entropy_with_logits_with_grad, x, labels, out=out)


def test_bce_torch(benchmark, data):
    torch = _torch()
    x, labels, _, _ = data
    xt = torch.from_numpy(x.copy()).requires_grad_()
    yt = torch.from_numpy(labels)

    def step():
        xt.grad = None
        torch.nn.functional.binary_cross_entropy_with_logits(xt, yt).backward()

    benchmark(step)


def test_soft_ce_fusedce(benchmark, data):
    x, _, probs, out = data
    benchmark.extra_info["bytes"] = 3 * x.nbytes
    benchmark(fusedce.cross_entropy_with_grad, x, probs, out=out)


def test_soft_ce_torch(benchmark, data):
    torch = _torch()
    x, _, probs, _ = data
    xt = torch.from_numpy(x.copy()).requires_grad_()
    qt = torch.from_numpy(probs)

    def step():
        xt.grad = None
        torch.nn.functional.cross_entropy(xt, qt).backward()

    benchmark(step)


def test_copy(benchmark, data):
    x, _, _, out = data
    benchmark.extra_info["bytes"] = 2 * x.nbytes
    benchmark(np.copyto, out, x)
