"""Argument checking on the GPU backend: the reference's exceptions and wording, raised
before anything is written; device detection; interop with CuPy and PyTorch on a real GPU."""

import subprocess
import sys

import numpy as np
import pytest

from fusedce import _cuda
from fusedce import reference as ref


def raises_like_reference(ref_call, cuda_call):
    """cuda_call raises the same exception type with the same message as ref_call."""
    with pytest.raises((TypeError, ValueError)) as expected:
        ref_call()
    with pytest.raises(expected.type) as got:
        cuda_call()
    assert str(got.value) == str(expected.value)


@pytest.fixture
def case(h, rng):
    x = h.logits(rng, (2, 3, 5), "float32")
    t = h.targets(rng, (2, 3), 5)
    return x, t


@pytest.mark.parametrize("bad", [5, -3])
@pytest.mark.parametrize("on_device", [True, False])
def test_target_out_of_range(h, case, bad, on_device):
    x, t = case
    t[1, 2] = bad
    dx = h.dev(x)
    target = h.dev(t) if on_device else t
    for fn in (ref.cross_entropy_with_grad, ref.cross_entropy):
        kwargs = dict(inplace=True) if fn is ref.cross_entropy_with_grad else {}
        raises_like_reference(lambda: fn(x.copy(), t, **kwargs),
                              lambda: getattr(_cuda, fn.__name__)(dx, target, **kwargs))
    with pytest.raises(ValueError, match=rf"target\[1, 2\] = {bad} is out of range"):
        _cuda.cross_entropy_backward(dx, target, np.zeros((2, 3)), inplace=True)
    np.testing.assert_array_equal(h.host(dx), x)


def test_bad_arguments_match_reference(h, case):
    x, t = case
    dx, dt = h.dev(x), h.dev(t)
    calls = [
        (dict(target=t.astype(np.float32)), {}),
        (dict(target=np.full(x.shape, 0.2, np.float32)), dict(ignore_index=0)),  # probabilities
        (dict(target=t[:, :2]), {}),
        (dict(target=t), dict(reduction="avg")),
        (dict(target=t), dict(label_smoothing=1.5)),
        (dict(target=t), dict(softcap=-1.0)),
        (dict(target=t), dict(weight=np.ones(4))),
        (dict(target=t), dict(weight=np.array([1.0, np.nan, 1, 1, 1]))),
        (dict(target=t), dict(grad_output=np.ones((2, 3)))),  # per-row with 'mean'
        (dict(target=t), dict(reduction="none", grad_output=np.ones(3))),
        (dict(target=t), dict(inplace=1)),
        (dict(target=t), dict(inplace=True, out=np.empty_like(x))),
    ]
    for target, kwargs in calls:
        dev_kwargs = {k: (h.dev(v) if isinstance(v, np.ndarray) and k != "out" else v)
                      for k, v in kwargs.items()}
        if "out" in kwargs:
            dev_kwargs["out"] = h.cuda.device_array(x.shape, x.dtype)
        raises_like_reference(
            lambda: ref.cross_entropy_with_grad(x, target["target"], **kwargs),
            lambda: _cuda.cross_entropy_with_grad(dx, h.dev(target["target"]), **dev_kwargs))
    raises_like_reference(lambda: ref.cross_entropy_backward(x, t, np.zeros(6)),
                          lambda: _cuda.cross_entropy_backward(dx, dt, h.dev(np.zeros(6))))
    raises_like_reference(lambda: ref.cross_entropy(np.zeros((3, 0)), np.zeros(3, np.int64)),
                          lambda: _cuda.cross_entropy(h.dev(np.zeros((3, 0))), h.dev(np.zeros(3, np.int64))))
    raises_like_reference(lambda: ref.cross_entropy(np.ones((2, 5), np.int64), t[0, :2]),
                          lambda: _cuda.cross_entropy(h.dev(np.ones((2, 5), np.int64)), dt[0, :2]))
    np.testing.assert_array_equal(h.host(dx), x)


def test_out_and_inplace_checks(h, case):
    x, t = case
    dx, dt = h.dev(x), h.dev(t)
    with pytest.raises(TypeError, match="out must have dtype float32, got float64"):
        _cuda.cross_entropy_with_grad(dx, dt, out=h.cuda.device_array(x.shape, np.float64))
    with pytest.raises(ValueError, match=r"out must have shape \(2, 3, 5\), got \(6, 5\)"):
        _cuda.cross_entropy_with_grad(dx, dt, out=h.cuda.device_array((6, 5), np.float32))
    with pytest.raises(TypeError, match="out must be a CUDA device array"):
        _cuda.cross_entropy_with_grad(dx, dt, out=np.empty_like(x))
    big = h.dev(np.zeros((3, 3, 5), np.float32))
    with pytest.raises(ValueError, match="out overlaps logits"):
        _cuda.cross_entropy_with_grad(big[:2], dt, out=big[1:])
    with pytest.raises(ValueError, match="must be C-contiguous to be written in place"):
        _cuda.cross_entropy_with_grad(h.dev(np.zeros((3, 10), np.float32))[:, ::2], dt[0], inplace=True)
    np.testing.assert_array_equal(h.host(dx), x)
    _, grad = _cuda.cross_entropy_with_grad(dx, dt, out=dx)  # out=logits is inplace
    assert grad is dx


def test_bfloat16_is_refused(h):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    if not h.simulated:
        pytest.skip("numba-cuda cannot hold bfloat16 device arrays")
    x = h.cuda.to_device(np.zeros((2, 3), ml_dtypes.bfloat16))
    with pytest.raises(TypeError, match="bfloat16 is not supported on the GPU backend"):
        _cuda.softmax(x)


class _Interface:
    def __init__(self, error=None):
        self._error = error

    @property
    def __cuda_array_interface__(self):
        if self._error:
            raise self._error
        return {"shape": (1,), "typestr": "<f4", "data": (0, False), "version": 3}


def test_is_device_array(h):
    assert _cuda.is_device_array(h.dev(np.zeros(3)))
    assert _cuda.is_device_array(_Interface())
    assert _cuda.is_device_array(_Interface(RuntimeError("requires grad")))
    for obj in (np.zeros(3), [1.0], 1.0, None, "x", _Interface(AttributeError("cpu tensor"))):
        assert not _cuda.is_device_array(obj)
    assert _cuda.available()


def test_importing_does_not_import_numba():
    code = ("import sys, numpy as np; from fusedce import _cuda; "
            "assert not _cuda.is_device_array(np.zeros(2)); "
            "assert 'numba' not in sys.modules, 'numba imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env=_subprocess_env())


def _subprocess_env():
    import os

    import fusedce

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(list(fusedce.__path__)[0]),
                                         env.get("PYTHONPATH", "")])
    return env


@pytest.mark.parametrize("library", ["cupy", "torch"])
def test_interop(h, library):
    if h.simulated:
        pytest.skip("the CUDA simulator has no __cuda_array_interface__ objects")
    lib = pytest.importorskip(library)
    rng = np.random.default_rng(0)
    x = h.logits(rng, (4, 33), "float32")
    t = h.targets(rng, (4,), 33)
    if library == "torch":
        if not lib.cuda.is_available():
            pytest.skip("torch has no CUDA")
        dx, dt = lib.tensor(x, device="cuda"), lib.tensor(t, device="cuda")
        to_host = lambda a: np.asarray(a.cpu()) if hasattr(a, "cpu") else h.host(a)  # noqa: E731
    else:
        dx, dt = lib.asarray(x), lib.asarray(t)
        to_host = lambda a: lib.asnumpy(a) if isinstance(a, lib.ndarray) else h.host(a)  # noqa: E731
    assert _cuda.is_device_array(dx)
    ref_loss, ref_grad = ref.cross_entropy_with_grad(x, t, label_smoothing=0.1)
    loss, grad = _cuda.cross_entropy_with_grad(dx, dt, label_smoothing=0.1)
    h.assert_loss(loss, ref_loss, x.dtype)
    h.assert_array(to_host(grad), ref_grad, x.dtype)
    loss, grad = _cuda.cross_entropy_with_grad(dx, dt, label_smoothing=0.1, inplace=True)
    assert grad is dx
    h.assert_array(to_host(dx), ref_grad, x.dtype)


def test_gradient_must_not_overwrite_inputs(h, rng):
    x = h.logits(rng, (2, 3, 5), "float64")
    t = h.targets(rng, (2, 3), 5)
    big = np.zeros(40)
    out = big[:30].reshape(2, 3, 5)
    dev_big = h.dev(big)
    with pytest.raises(ValueError, match="out must not overlap lse: the gradient would overwrite it"):
        _cuda.cross_entropy_backward(h.dev(x), h.dev(t), dev_big[:6].reshape(2, 3),
                                     out=dev_big[:30].reshape(2, 3, 5))
    raises_like_reference(
        lambda: ref.cross_entropy_with_grad(x, t, reduction="none", grad_output=big[:6].reshape(2, 3),
                                            out=out),
        lambda: _cuda.cross_entropy_with_grad(h.dev(x), h.dev(t), reduction="none",
                                              grad_output=dev_big[:6].reshape(2, 3),
                                              out=dev_big[:30].reshape(2, 3, 5)))


def test_no_classes(h):
    """K = 0, as the CPU and the reference have it (_checks.as_rows): lse -inf, loss 0 per row,
    empty gradient and softmax."""
    x = h.dev(np.zeros((3, 0), np.float32))
    ignored, probs = h.dev(np.full(3, -100)), h.dev(np.zeros((3, 0), np.float32))
    for target in (ignored, probs):
        loss, lse = _cuda.cross_entropy_forward(x, target, reduction="none", z_loss=0.1, label_smoothing=0.1)
        np.testing.assert_array_equal(h.host(loss), np.zeros(3))
        np.testing.assert_array_equal(h.host(lse), np.full(3, -np.inf))
        loss, grad = _cuda.cross_entropy_with_grad(x, target)
        assert loss == 0.0 and tuple(grad.shape) == (3, 0)
    np.testing.assert_array_equal(h.host(_cuda.logsumexp(x)), np.full(3, -np.inf))
    assert tuple(_cuda.softmax(x).shape) == (3, 0)
