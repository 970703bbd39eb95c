"""fusedce.torch against torch's own loss on the CPU: forward + backward through autograd.

    pytest bench/test_bench_torch.py --benchmark-only
    pytest bench/test_bench_torch.py --benchmark-only -k "4096x32000 and float16"

Time: pytest-benchmark rounds of ``torch.autograd.grad(scale * loss(logits, target), logits)``
(autograd.grad, so that no .grad accumulates between rounds). The cases: class targets in
float32 at two shapes; float16 and bfloat16 logits with the upstream gradient 1 and with a loss
scale of 1024 (what mixed-precision training does, and where a half gradient must not be
rounded before the scale: the adapter then computes it in backward, from the saved lse);
probability targets and BCE with logits in float32.

Peak extra memory: tracemalloc does not see torch's allocations, so this reads the process's
peak resident set (VmHWM in /proc/self/status) after resetting it to the current RSS
(writing 5 to /proc/self/clear_refs, Linux >= 4.0), with the logits already resident. The
buffers here are far above glibc's mmap threshold, so each is mapped on allocation and
unmapped on free, and the peak counts exactly the pages written while the step ran: the
gradient it returns included. Reported in units of one logits-sized buffer.

torch allocates fresh logits-sized buffers every step (three), and first-touch page faults are
a large part of its time; its allocator asks for transparent huge pages only with
THP_MEM_ALLOC_ENABLE=1 in the environment (run both ways for a fair picture). fusedce's one
gradient (none with inplace_backward) comes from its buffer pool: after the first step a block
the previous step released, already resident (huge pages requested when it was mapped); a
block the pool kept from an earlier case counts as no extra memory here. bench/bench_pool.py
compares with the pool off. On a VM a buffer landing on never-touched guest memory can take a
second more: read medians.

Target (issue #6): fusedce at least 8x faster than torch at (4096, 32000) float32, with at
most one logits-sized buffer of extra memory (none with inplace_backward). The summary line
at the end of the module gives the ratios and the ISA the C kernels ran with.
"""

import pytest

torch = pytest.importorskip("torch")
import fusedce  # noqa: E402
import fusedce.torch as ft  # noqa: E402
from fusedce._rss import peak_growth  # noqa: E402

F = torch.nn.functional
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# (kind, (batch, classes), dtype, upstream gradient)
CASES = [
    ("ce", (4096, 32000), "float32", 1.0),
    ("ce", (512, 131072), "float32", 1.0),
    ("ce", (4096, 32000), "float16", 1.0),
    ("ce", (4096, 32000), "float16", 1024.0),
    ("ce", (4096, 32000), "bfloat16", 1.0),
    ("ce", (4096, 32000), "bfloat16", 1024.0),
    ("soft", (4096, 32000), "float32", 1.0),
    ("bce", (4096, 32000), "float32", 1.0),
]
LOSSES = {
    "ce": {"torch": F.cross_entropy, "fusedce": ft.cross_entropy,
           "fusedce-inplace": lambda x, t: ft.cross_entropy(x, t, inplace_backward=True)},
    "soft": {"torch": F.cross_entropy, "fusedce": ft.cross_entropy},
    "bce": {"torch": F.binary_cross_entropy_with_logits, "fusedce": ft.binary_cross_entropy_with_logits},
}
ROUNDS = 7  # medians: a fresh buffer's first touch sometimes costs a second on a VM


def _case_id(case):
    kind, (batch, classes), dtype, scale = case
    return f"{kind}-{batch}x{classes}-{dtype}" + (f"-scale{scale:g}" if scale != 1.0 else "")


def peak_extra_bytes(step):
    """Peak resident bytes above the current RSS while step() runs (its result dropped after)."""
    return peak_growth(step)[1]


@pytest.fixture(scope="module", params=CASES, ids=[_case_id(c) for c in CASES])
def problem(request):
    """(case, logits, pristine copy, target); the copy restores the logits that
    inplace_backward overwrites, outside the timed region."""
    kind, (batch, classes), dtype, _ = request.param
    for loss_fn in LOSSES["ce"].values():  # first calls initialise libraries: not the step's memory
        tiny = torch.zeros(2, 3, requires_grad=True)
        torch.autograd.grad(loss_fn(tiny * 1, torch.zeros(2, dtype=torch.long)), tiny)
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(batch, classes, generator=gen) * 4).to(TORCH_DTYPES[dtype])
    if kind == "ce":
        target = torch.randint(0, classes, (batch,), generator=gen)
    elif kind == "soft":
        target = torch.softmax(torch.randn(batch, classes, generator=gen), -1).to(logits.dtype)
    else:
        target = (torch.rand(batch, classes, generator=gen) < 0.01).to(logits.dtype)
    return request.param, logits.requires_grad_(), logits.detach().clone(), target


@pytest.fixture(scope="module")
def summary(request):
    """Collects (shape, loss) -> (median s, min s, peak extra buffers); printed at the end of
    the module, the speedup taken on medians."""
    rows = {}
    yield rows
    if not rows:  # --benchmark-disable
        return
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        _write_summary(reporter, rows)


def _write_summary(reporter, rows):
    info = fusedce.cpu_info()
    reporter.write_line("")
    reporter.write_line(f"fusedce.torch vs torch, CPU fwd+bwd; fusedce ISA {info['active_isa']} "
                        f"(detected {info['detected_isa']}), {info['num_threads']} threads; "
                        f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for case in CASES:
        base = rows.get((case, "torch"))
        for name in LOSSES[case[0]]:
            if (case, name) not in rows:
                continue
            median, fastest, buffers = rows[(case, name)]
            speedup = f"{base[0] / median:5.2f}x torch" if base else ""
            reporter.write_line(f"  {_case_id(case):32} {name:16} median {median * 1e3:7.1f} ms "
                                f"(min {fastest * 1e3:7.1f})  {speedup:12}  "
                                f"peak extra {buffers:4.2f} logits buffers")


@pytest.mark.parametrize("name", ["torch", "fusedce", "fusedce-inplace"])
def test_forward_backward(benchmark, problem, summary, name):
    case, logits, pristine, target = problem
    kind, _, dtype, scale = case
    if name not in LOSSES[kind]:
        pytest.skip(f"no {name} variant for {kind}")
    loss_fn = LOSSES[kind][name]

    def restore():
        with torch.no_grad():
            logits.copy_(pristine)

    def step():
        loss = loss_fn(logits, target)
        (grad,) = torch.autograd.grad(loss * scale if scale != 1.0 else loss, logits)
        return grad

    restore()
    buffers = peak_extra_bytes(step) / (logits.numel() * logits.element_size())
    benchmark.group = f"torch fwd+bwd {_case_id(case)}"
    benchmark.extra_info.update(peak_extra_logits_buffers=round(buffers, 3), isa=fusedce.cpu_info()["active_isa"])
    benchmark.pedantic(step, setup=restore, rounds=ROUNDS, warmup_rounds=1)
    if benchmark.stats:
        stats = benchmark.stats.stats
        summary[(case, name)] = (stats.median, stats.min, buffers)
