"""fusedce.torch against torch's own loss on the CPU: forward + backward through autograd.

    pytest bench/test_bench_torch.py --benchmark-only
    pytest bench/test_bench_torch.py --benchmark-only -k 4096x32000

Time: pytest-benchmark rounds of ``torch.autograd.grad(loss(logits, target), logits)``
(autograd.grad, so that no .grad accumulates between rounds).

Peak extra memory: tracemalloc does not see torch's allocations, so this reads the process's
peak resident set (VmHWM in /proc/self/status) after resetting it to the current RSS
(writing 5 to /proc/self/clear_refs, Linux >= 4.0), with the logits already resident. The
buffers here are far above glibc's mmap threshold, so each is mapped on allocation and
unmapped on free, and the peak counts exactly the pages written while the step ran: the
gradient it returns included. Reported in units of one logits-sized buffer.

Both sides allocate fresh logits-sized buffers every step (torch three, fusedce one, none
with inplace_backward), and first-touch page faults are a large part of the time: NumPy, which
allocates fusedce's gradient on the CPU, asks for transparent huge pages; torch's allocator
does only with THP_MEM_ALLOC_ENABLE=1 in the environment (run both ways for a fair picture). On
a VM a buffer landing on never-touched guest memory can take a second more: read medians.

Target (issue #6): fusedce at least 8x faster than torch at (4096, 32000) float32, with at
most one logits-sized buffer of extra memory (none with inplace_backward). The summary line
at the end of the module gives the ratios and the ISA the C kernels ran with.
"""

import pytest

torch = pytest.importorskip("torch")
import fusedce  # noqa: E402
import fusedce.torch as ft  # noqa: E402

SHAPES = [(4096, 32000), (512, 131072)]
LOSSES = {
    "torch": torch.nn.functional.cross_entropy,
    "fusedce": ft.cross_entropy,
    "fusedce-inplace": lambda x, t: ft.cross_entropy(x, t, inplace_backward=True),
}
ROUNDS = 7  # medians: a fresh buffer's first touch sometimes costs a second on a VM


def _status_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_extra_bytes(step):
    """Peak resident bytes above the current RSS while step() runs (its result dropped after)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # VmHWM := VmRSS
    before = _status_kib("VmRSS")
    result = step()
    peak = _status_kib("VmHWM")
    del result
    return (peak - before) * 1024


@pytest.fixture(scope="module", params=SHAPES, ids=[f"{b}x{k}" for b, k in SHAPES])
def problem(request):
    """(logits, pristine copy, target) float32; the copy restores the logits that
    inplace_backward overwrites, outside the timed region."""
    batch, classes = request.param
    for loss_fn in LOSSES.values():  # first calls initialise libraries: not the step's memory
        tiny = torch.zeros(2, 3, requires_grad=True)
        torch.autograd.grad(loss_fn(tiny * 1, torch.zeros(2, dtype=torch.long)), tiny)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, classes, generator=gen) * 4
    target = torch.randint(0, classes, (batch,), generator=gen)
    return logits.requires_grad_(), logits.detach().clone(), target


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
    reporter.write_line(f"fusedce.torch vs torch, CPU fwd+bwd, float32; fusedce ISA {info['active_isa']} "
                        f"(detected {info['detected_isa']}), {info['num_threads']} threads; "
                        f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for shape in sorted({shape for shape, _ in rows}):
        base = rows.get((shape, "torch"))
        for name in LOSSES:
            if (shape, name) not in rows:
                continue
            median, fastest, buffers = rows[(shape, name)]
            speedup = f"{base[0] / median:5.2f}x torch" if base else ""
            reporter.write_line(f"  {f'{shape[0]}x{shape[1]}':11} {name:16} median {median * 1e3:7.1f} ms "
                                f"(min {fastest * 1e3:7.1f})  {speedup:12}  "
                                f"peak extra {buffers:4.2f} logits buffers")


@pytest.mark.parametrize("name", list(LOSSES))
def test_forward_backward(benchmark, problem, summary, name):
    logits, pristine, target = problem
    loss_fn = LOSSES[name]

    def restore():
        with torch.no_grad():
            logits.copy_(pristine)

    def step():
        (grad,) = torch.autograd.grad(loss_fn(logits, target), logits)
        return grad

    restore()
    buffers = peak_extra_bytes(step) / (logits.numel() * logits.element_size())
    benchmark.group = f"torch fwd+bwd {logits.shape[0]}x{logits.shape[1]} float32"
    benchmark.extra_info.update(peak_extra_logits_buffers=round(buffers, 3), isa=fusedce.cpu_info()["active_isa"])
    benchmark.pedantic(step, setup=restore, rounds=ROUNDS, warmup_rounds=1)
    if benchmark.stats:
        stats = benchmark.stats.stats
        summary[(tuple(logits.shape), name)] = (stats.median, stats.min, buffers)
