"""Binary cross-entropy with logits on the GPU backend against the float64 reference."""

import numpy as np
import pytest

from fusedce import _cuda
from fusedce import reference as ref


def make_case(rng, shape, dtype, spec):
    x = (3.0 * rng.standard_normal(shape)).astype(dtype)
    t = rng.uniform(size=shape).astype(dtype)
    t.reshape(-1)[::3] = 1.0  # hard labels mixed in
    classes = shape[-1] if shape else 1
    opts, grad_output = {}, 1.0
    if "class_weights" in spec:
        opts["weight"] = rng.uniform(0.5, 2.0, classes if shape else ())
        opts["pos_weight"] = rng.uniform(0.5, 3.0, classes)
    if "element_weights" in spec:
        opts["weight"] = rng.uniform(0.5, 2.0, shape)
    if "row_pos_weights" in spec:  # broadcast from (rows, 1): one per element on the device
        opts["pos_weight"] = rng.uniform(0.5, 3.0, shape[:-1] + (1,))
    if "none" in spec:
        opts["reduction"] = "none"
        grad_output = rng.standard_normal(shape)
    if "sum" in spec:
        opts["reduction"] = "sum"
        grad_output = 0.5
    return x, t, opts, grad_output


def check(h, x, t, opts, grad_output, on_device=True):
    dev = h.dev if on_device else (lambda a: a)
    dx = h.dev(x)
    dev_opts = {k: dev(v) for k, v in opts.items() if isinstance(v, np.ndarray)}
    dev_opts.update({k: v for k, v in opts.items() if not isinstance(v, np.ndarray)})
    g_out = dev(grad_output) if isinstance(grad_output, np.ndarray) else grad_output
    ref_loss, ref_grad = ref.binary_cross_entropy_with_logits_with_grad(x, t, grad_output=grad_output, **opts)
    loss = _cuda.binary_cross_entropy_with_logits(dx, dev(t), **dev_opts)
    loss_g, grad = _cuda.binary_cross_entropy_with_logits_with_grad(dx, dev(t), grad_output=g_out, **dev_opts)
    for got in (loss, loss_g):
        if opts.get("reduction") == "none":
            h.assert_array(got, ref_loss, x.dtype)  # element losses in the logits' dtype
        else:
            h.assert_loss(got, ref_loss, x.dtype)
    h.assert_array(grad, ref_grad, x.dtype)
    np.testing.assert_array_equal(h.host(dx), x)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("shape", [(), (7,), (0, 3), (2, 3, 5)])
def test_shapes(h, rng, dtype, shape):
    check(h, *make_case(rng, shape, dtype, ()))


@pytest.mark.parametrize("spec", [("class_weights",), ("element_weights", "none"), ("class_weights", "sum"),
                                  ("class_weights", "none"), ("row_pos_weights",), ("row_pos_weights", "none")])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_options(h, rng, dtype, spec):
    check(h, *make_case(rng, (3, 5), dtype, spec))


def test_host_arguments_and_cast_target(h, rng):
    x, t, opts, grad_output = make_case(rng, (3, 5), "float16", ("class_weights", "none"))
    check(h, x, t, opts, grad_output, on_device=False)
    t64 = t.astype(np.float64)
    ref_loss = ref.binary_cross_entropy_with_logits(x, t64, reduction="sum")
    h.assert_loss(_cuda.binary_cross_entropy_with_logits(h.dev(x), h.dev(t64), reduction="sum"), ref_loss, x.dtype)


def test_inplace_and_out(h, rng):
    x, t, opts, _ = make_case(rng, (3, 5), "float32", ("class_weights",))
    _, ref_grad = ref.binary_cross_entropy_with_logits_with_grad(x, t, **opts)
    dx = h.dev(x)
    _, grad = _cuda.binary_cross_entropy_with_logits_with_grad(dx, h.dev(t), inplace=True, **opts)
    assert grad is dx
    h.assert_array(dx, ref_grad, x.dtype)
    out = h.cuda.device_array(x.shape, x.dtype)
    _, grad = _cuda.binary_cross_entropy_with_logits_with_grad(h.dev(x), h.dev(t), out=out, **opts)
    assert grad is out
    h.assert_array(out, ref_grad, x.dtype)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_special_values(h):
    x = np.array([[0.0, 1e30, -1e30, np.inf], [-np.inf, np.nan, 40.0, -40.0]])
    t = np.array([[0.5, 1.0, 0.0, 0.3], [0.0, 0.5, 1.0, 0.0]])
    check(h, x, t, dict(reduction="none"), np.ones(x.shape))


def test_bad_arguments_match_reference(h, rng):
    x, t, _, _ = make_case(rng, (3, 5), "float32", ())
    dx = h.dev(x)
    bad = [
        dict(target=t.astype(np.int64)),
        dict(target=t[:2]),
        dict(weight=np.ones(4)),
        dict(weight=np.ones((2, 3, 5))),
        dict(pos_weight=np.ones(3)),
        dict(grad_output=np.ones((3, 5))),  # per element with 'mean'
        dict(reduction="avg"),
        dict(inplace=True, out=np.empty_like(x)),
    ]
    for kwargs in bad:
        kwargs = dict(kwargs)
        target = kwargs.pop("target", t)
        dev_kwargs = {k: (h.dev(v) if isinstance(v, np.ndarray) and k != "out" else v) for k, v in kwargs.items()}
        if "out" in kwargs:
            dev_kwargs["out"] = h.cuda.device_array(x.shape, x.dtype)
        with pytest.raises((TypeError, ValueError)) as expected:
            ref.binary_cross_entropy_with_logits_with_grad(x, target, **kwargs)
        with pytest.raises(expected.type) as got:
            _cuda.binary_cross_entropy_with_logits_with_grad(dx, h.dev(target), **dev_kwargs)
        assert str(got.value) == str(expected.value)
    np.testing.assert_array_equal(h.host(dx), x)
