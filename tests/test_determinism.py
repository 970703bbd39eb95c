"""Determinism as a promise (docs/guarantees.md): on the CPU, every result is bitwise identical
for any thread count, and a row's results are the same bits whether it is computed alone or
inside a batch of any size, on each ISA. Rows are cut into fixed chunks of classes whose
statistics merge in one order, so the rows split over threads (fewer rows than threads, or rows
too large for the L2 and too few to share out evenly) give what unsplit rows give.
"""

import numpy as np
import pytest

import fusedce
from fusedce import reference as ref
from tolerances import assert_loss_close

THREADS = (1, 2, 3, 4)
# one chunk; 9 chunks (split over threads when there are fewer rows than threads, a row alone
# among them); 37 chunks, beyond a quarter of the L2 (split also where whole rows would share
# out unevenly: 3 and 5 rows on 2 threads split, 2 rows do not)
CLASSES = (1000, 70000, 300000)
OPTIONS = {
    "plain": {},
    "weighted, smoothed, z-loss": {"weight": True, "label_smoothing": 0.1, "z_loss": 1e-3},
    "softcap, ignored rows": {"softcap": 15.0, "ignore": True},
    "ignored rows": {"ignore": True},
    "probabilities": {"soft": True},
}


def _dtype(name):
    if name == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _case(rows, classes, dtype, option, seed=0):
    rng = np.random.default_rng([rows, classes, seed])
    x = (rng.standard_normal((rows, classes)) * 4).astype(dtype)
    kwargs = {k: v for k, v in OPTIONS[option].items() if k in ("label_smoothing", "z_loss", "softcap")}
    if OPTIONS[option].get("weight"):
        kwargs["weight"] = rng.uniform(0.5, 2.0, classes)
    if OPTIONS[option].get("soft"):
        q = rng.uniform(0, 1, (rows, classes))
        target = (q / q.sum(axis=1, keepdims=True)).astype(dtype)
    else:
        target = rng.integers(0, classes, rows)
        if OPTIONS[option].get("ignore"):
            target[::3] = -100
    return x, target, kwargs


def _results(x, target, kwargs):
    """Every CPU entry point's per-row outputs, as raw bytes-comparable arrays."""
    loss, grad = fusedce.cross_entropy_with_grad(x, target, reduction="none", **kwargs)
    fwd, lse = fusedce.cross_entropy_forward(x, target, reduction="none", **kwargs)
    out = {"loss": loss, "grad": grad, "forward loss": fwd, "lse": lse}
    # the forward takes each row's max during the previous row's pass where rows are one chunk
    # (and, for the loss alone, skips ignored rows), the fused call in a pass of its own: the
    # same bits
    _assert_same_bits({"loss": fwd}, {"loss": loss}, "forward against fused")
    loss_only = fusedce.cross_entropy(x, target, reduction="none", **kwargs)
    _assert_same_bits({"loss": loss_only}, {"loss": loss}, "loss alone against fused")
    # in place, the exponentials are kept over the logits instead of in scratch: the same bits
    in_place = x.copy()
    fusedce.cross_entropy_with_grad(in_place, target, reduction="none", inplace=True, **kwargs)
    _assert_same_bits({"grad": in_place}, {"grad": grad}, "in place against out")
    out["grad in place"] = in_place
    out["backward grad"] = fusedce.cross_entropy_backward(x, target, lse, reduction="none", **kwargs)
    out["softmax"] = fusedce.softmax(x)
    out["log_softmax"] = fusedce.log_softmax(x)
    out["logsumexp"] = fusedce.logsumexp(x)
    if "softcap" not in kwargs:
        _assert_same_bits({"lse": out["logsumexp"]}, {"lse": lse}, "logsumexp against the forward's lse")
    return out


def _assert_same_bits(got, want, what):
    for name, value in want.items():
        a = np.ascontiguousarray(got[name]).view(np.uint8)
        b = np.ascontiguousarray(value).view(np.uint8)
        assert np.array_equal(a, b), f"{what}: {name} differs"


@pytest.fixture
def restore_threads():
    before = fusedce.get_num_threads()
    yield
    fusedce.set_num_threads(before)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("classes", CLASSES)
@pytest.mark.parametrize("option", OPTIONS)
def test_any_thread_count_gives_the_same_bits(isa, restore_threads, dtype, classes, option):
    rows = 3 if classes > 1000 else 7  # fewer rows than threads, and more
    x, target, kwargs = _case(rows, classes, _dtype(dtype), option)
    fusedce.set_num_threads(1)
    want = _results(x, target, kwargs)
    for threads in THREADS[1:]:
        fusedce.set_num_threads(threads)
        _assert_same_bits(_results(x, target, kwargs), want, f"{isa} {dtype} K={classes} {option}, {threads} threads")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("classes", CLASSES)
@pytest.mark.parametrize("option", OPTIONS)
def test_a_row_alone_or_in_any_batch_gives_the_same_bits(isa, restore_threads, dtype, classes, option):
    """Row i of a batch of 9 (or 5 for the longer rows) against the same row alone and inside
    the batches made of the first 2, 3 and 5 rows, at 2 threads (where rows split: batches
    with fewer rows than threads, and rows beyond a quarter of the L2 in uneven batches) and at 1."""
    rows = 5 if classes > 1000 else 9
    x, target, kwargs = _case(rows, classes, _dtype(dtype), option)
    for threads in (2, 1):
        fusedce.set_num_threads(threads)
        whole = _results(x, target, kwargs)
        for size in (1, 2, 3, 5):
            for first in range(0, rows - size + 1, size):
                part = _results(x[first:first + size], target[first:first + size], kwargs)
                want = {name: value[first:first + size] for name, value in whole.items()}
                _assert_same_bits(part, want, f"{isa} {dtype} K={classes} {option}: rows {first}..{first + size - 1} "
                                              f"of {rows}, {threads} threads")


def test_binary_cross_entropy_elements_do_not_depend_on_threads_or_batch(isa, restore_threads):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((6, 40000)) * 4).astype(np.float32)
    t = rng.uniform(0, 1, x.shape).astype(np.float32)
    fusedce.set_num_threads(1)
    want_loss, want_grad = fusedce.binary_cross_entropy_with_logits_with_grad(x, t, reduction="none")
    want_sum = fusedce.binary_cross_entropy_with_logits(x, t, reduction="sum")
    for threads in THREADS[1:]:
        fusedce.set_num_threads(threads)
        loss, grad = fusedce.binary_cross_entropy_with_logits_with_grad(x, t, reduction="none")
        assert np.array_equal(loss.view(np.uint32), want_loss.view(np.uint32))
        assert np.array_equal(grad.view(np.uint32), want_grad.view(np.uint32))
        assert fusedce.binary_cross_entropy_with_logits(x, t, reduction="sum") == want_sum
        alone = fusedce.binary_cross_entropy_with_logits_with_grad(x[2:3], t[2:3], reduction="none")
        assert np.array_equal(alone[0].view(np.uint32), want_loss[2:3].view(np.uint32))
        assert np.array_equal(alone[1].view(np.uint32), want_grad[2:3].view(np.uint32))


@pytest.mark.parametrize("shape", [(1200, 4096), (4800, 1024)])
@pytest.mark.parametrize("option", ["plain", "weighted, smoothed, z-loss", "softcap, ignored rows"])
def test_a_streamed_gradient_gives_the_bits_of_a_cached_one(isa, restore_threads, shape, option):
    """The gradient of a large call goes out through streaming stores (logits and gradient past
    32 MB, rows of 16 KB, and of 4 KB on Intel; csrc/ce_driver.c), that of 16 rows through
    ordinary ones: the same bits, also into an `out=` that starts one element past a cache line
    (the streamed part then begins after a head of ordinary stores). The pipeline streams the
    target's element in a lane of its vectors, the other paths rewrite it after ordinary stores
    over its line; the backward given the lse streams too."""
    x, target, kwargs = _case(shape[0], shape[1], np.dtype("float32"), option)
    fusedce.set_num_threads(2)
    backing = np.empty(x.size + 16, dtype=np.float32)
    shifted = backing[1:1 + x.size].reshape(x.shape)
    loss, grad = fusedce.cross_entropy_with_grad(x, target, reduction="none", **kwargs)
    fusedce.cross_entropy_with_grad(x, target, reduction="none", out=shifted, **kwargs)
    _, lse = fusedce.cross_entropy_forward(x, target, reduction="none", **kwargs)
    backward = fusedce.cross_entropy_backward(x, target, lse, reduction="none", **kwargs)
    for first in range(0, shape[0], 16):
        rows = slice(first, first + 16)
        part_loss, part_grad = fusedce.cross_entropy_with_grad(x[rows], target[rows], reduction="none", **kwargs)
        _assert_same_bits({"loss": part_loss, "grad": part_grad}, {"loss": loss[rows], "grad": grad[rows]},
                          f"{isa} {shape} {option}: rows {first}.. against the whole call")
        _assert_same_bits({"grad": shifted[rows]}, {"grad": part_grad}, f"{isa} {shape} {option}: shifted out=")
        part_backward = fusedce.cross_entropy_backward(x[rows], target[rows], lse[rows], reduction="none", **kwargs)
        _assert_same_bits({"grad": backward[rows]}, {"grad": part_backward},
                          f"{isa} {shape} {option}: backward given the lse, rows {first}..")


@pytest.mark.parametrize("classes", [1000, 20000])
def test_the_forward_takes_each_rows_own_max_after_ignored_rows(isa, classes):
    """The forward takes a one-chunk row's max during the previous row's pass and skips
    ignored rows: the row after one must take its own max, not the ignored row's (here 1000
    below it, which would overflow the exponentials). Rows of several chunks alongside."""
    rng = np.random.default_rng(classes)
    x = (rng.standard_normal((9, classes)) * 4).astype(np.float32)
    target = rng.integers(0, classes, 9)
    target[::3] = -100
    x[::3] -= 1000.0
    want = ref.cross_entropy(x, target, reduction="none")
    assert_loss_close(fusedce.cross_entropy(x, target, reduction="none"), want, x.dtype)
    assert_loss_close(fusedce.cross_entropy_forward(x, target, reduction="none")[0], want, x.dtype)
