"""The `fusedce` command: bench/check/info options, JSON schema, plot, failure handling.

Everything runs in-process through main([...]) on tiny shapes; one subprocess checks that
`python -m fusedce` itself works.
"""

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fusedce
from fusedce import _bench, _cpu
from fusedce.__main__ import main

TINY = ["--shape", "8x1000", "--repeat", "2"]


def bench(capsys, *args):
    rc = main(["bench", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def table_rows(out):
    """(backend, op) of every table row in the plain output."""
    rows = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4 and "x" in fields[0] and fields[0].split("x")[0].isdigit():
            rows.append((fields[2], fields[3]))
    return rows


def test_bench_tiny_grid_every_op_and_dtype(capsys):
    rc, out, _ = bench(capsys, *TINY, "--shape", "3x4097", "--op", "all", "--backend", "cpu",
                       "--backend", "reference", "--dtype", "float32", "--dtype", "float64")
    assert rc == 0
    rows = table_rows(out)
    isa = _cpu.active_isa()
    for op in _bench.OPS:
        assert (f"cpu/{isa}", op) in rows and ("reference", op) in rows
    assert ("np.copyto", "copy") in rows and ("roofline", "read") in rows and ("roofline", "copy") in rows
    # 2 shapes x 2 dtypes x (2 backends x 3 ops + the roofline's read and copy + np.copyto)
    assert len(rows) == 2 * 2 * 9
    assert "float64" in out and "3x4097" in out


def test_bench_half_precision_against_torch(capsys):
    pytest.importorskip("ml_dtypes")
    pytest.importorskip("torch")
    rc, out, _ = bench(capsys, *TINY, "--dtype", "float16", "--dtype", "bfloat16", "--backend", "cpu",
                       "--backend", "torch")
    assert rc == 0
    assert "bfloat16" in out and "float16" in out
    assert ("torch", "fused") in table_rows(out)


def test_bench_json_schema(capsys, tmp_path):
    path = tmp_path / "bench.json"
    threads_before = fusedce.get_num_threads()
    rc, out, _ = bench(capsys, *TINY, "--backend", "cpu", "--backend", "reference", "--op", "fused",
                       "--threads", "1", "--json", str(path))
    assert rc == 0 and str(path) in out
    doc = json.loads(path.read_text())
    assert doc["schema"] == "fusedce-bench/1"
    assert {"platform", "cpu_model", "cores"} <= doc["machine"].keys()
    assert {"fusedce", "numpy", "torch", "numba"} <= doc["versions"].keys()
    assert doc["versions"]["fusedce"] == fusedce.__version__
    assert doc["cpu"]["active_isa"] in doc["cpu"]["available_isas"]
    assert doc["cpu"]["threads"] == 1  # what the run used, not what was set before
    assert doc["config"]["repeat"] == 2 and doc["config"]["shapes"] == [[8, 1000]]
    rows = doc["rows"]
    assert [(r["backend"], r["op"]) for r in rows] == [
        (f"cpu/{_cpu.active_isa()}", "fused"), ("reference", "fused"), ("roofline", "read"), ("roofline", "copy"),
        ("np.copyto", "copy")]
    for row in rows:
        assert row["shape"] == [8, 1000] and row["dtype"] == "float32"
        assert len(row["times_s"]) == 2 and all(isinstance(t, float) and t > 0 for t in row["times_s"])
        for key in ("median_s", "best_s", "gelem_per_s", "gb_per_s", "pct_copy"):
            assert isinstance(row[key], float) and row[key] > 0
        assert row["elements"] == 8000
        assert row["roofline"] == {"read": "read", "copy": "copy"}.get(row["op"]) or row["backend"] != "roofline"
    fused = rows[0]
    assert fused["bytes"] == 2 * 8000 * 4  # read the logits, write the gradient
    assert fused["errors"].keys() == fused["tolerances"].keys() == {"loss", "grad"}
    assert fused["max_error"] <= 2e-6
    assert isinstance(fused["vs_reference"], float) and fused["vs_torch"] is None
    # % roof: the best call against the best streaming copy of the same bytes (read + write)
    copy = rows[3]
    assert copy["bytes"] == fused["bytes"] and copy["roofline"] == "copy"
    assert fused["pct_roofline"] == pytest.approx(100.0 * min(copy["times_s"]) / min(fused["times_s"]))
    assert rows[2]["bytes"] == 8000 * 4 and rows[2]["pct_roofline"] is None  # the read: a yardstick
    assert rows[4]["pct_copy"] == pytest.approx(100.0) and rows[4]["roofline"] is None
    assert fusedce.get_num_threads() == threads_before  # --threads lasts for the run only


def test_bench_probability_targets_and_bce(capsys, tmp_path):
    """--loss: every op of each loss is checked against the float64 reference and timed;
    BCE has no separate backward and says so."""
    path = tmp_path / "bench.json"
    rc, out, _ = bench(capsys, *TINY, "--loss", "all", "--op", "all", "--backend", "cpu",
                       "--backend", "reference", "--json", str(path))
    assert rc == 0
    assert "skipped bce backward: no separate entry point" in out
    rows = json.loads(path.read_text())["rows"]
    cpu = f"cpu/{_cpu.active_isa()}"
    got = {(r["loss"], r["op"]) for r in rows if r["backend"] == cpu}
    assert got == {(loss, op) for loss in ("ce", "soft") for op in _bench.OPS} | {("bce", "forward"), ("bce", "fused")}
    for row in rows:
        if row["backend"] == cpu:
            assert row["max_error"] <= 2e-6 and row["vs_reference"] > 0
    soft_fused = next(r for r in rows if r["backend"] == cpu and (r["loss"], r["op"]) == ("soft", "fused"))
    assert soft_fused["bytes"] == 3 * 8000 * 4  # logits and targets read, gradient written
    assert "soft fused" in out and "bce forward" in out


def test_wrong_bce_result_stops_the_run(capsys, monkeypatch):
    real = _cpu.binary_cross_entropy

    def off_by_one_percent(call, **kwargs):
        result = real(call, **kwargs)
        if call.grad is not None:
            call.grad *= 1.01
        return result

    monkeypatch.setattr(_cpu, "binary_cross_entropy", off_by_one_percent)
    rc, _, err = bench(capsys, *TINY, "--backend", "cpu", "--loss", "bce")
    assert rc == 1
    assert f"cpu/{_cpu.active_isa()} fused 8x1000 float32 bce" in err and "gradient" in err


def test_bench_plot_written(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "perf.png"
    rc, _, _ = bench(capsys, *TINY, "--shape", "4x3000", "--backend", "cpu", "--op", "all", "--plot", str(path))
    assert rc == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_every_isa(capsys):
    rc, out, _ = bench(capsys, *TINY, "--backend", "cpu", "--isa", "all")
    assert rc == 0
    assert {b for b, _ in table_rows(out)} == (
        {f"cpu/{isa}" for isa in fusedce.available_isas()} | {"np.copyto", "roofline"})


def test_unavailable_cuda_is_reported_not_an_error(capsys):
    reason = _bench.cuda_unavailable_reason()
    if reason is None:
        pytest.skip("a CUDA GPU is available here")
    rc, out, _ = bench(capsys, *TINY, "--backend", "cuda", "--backend", "cpu")
    assert rc == 0
    assert "cuda: unavailable" in out and reason in out
    assert ("cuda", "fused") not in table_rows(out)


def test_wrong_result_stops_the_run_naming_the_case(capsys, monkeypatch):
    real = _cpu.cross_entropy

    def off_by_one_percent(call, **kwargs):
        result = real(call, **kwargs)
        if call.grad is not None:
            call.grad *= 1.01
        return result

    monkeypatch.setattr(_cpu, "cross_entropy", off_by_one_percent)
    rc, out, err = bench(capsys, *TINY, "--backend", "cpu", "--op", "forward", "--op", "fused")
    assert rc == 1
    assert f"cpu/{_cpu.active_isa()} fused 8x1000 float32" in err and "gradient" in err
    assert "median" not in out  # stopped before any table


@pytest.mark.parametrize("args, message", [
    (["--shape", "8by1000"], "BxK"),
    (["--shape", "0x10"], "BxK"),
    (["--repeat", "0"], "positive integer"),
    (["--dtype", "int8"], "invalid choice"),
    (["--backend", "tpu"], "invalid choice"),
])
def test_bad_options_exit_2(capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        main(["bench", *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_unavailable_isa_is_a_clear_error(capsys):
    missing = [isa for isa in _cpu.ISA_NAMES if isa not in fusedce.available_isas()]
    if not missing:
        pytest.skip("every ISA is available here")
    rc, _, err = bench(capsys, *TINY, "--isa", missing[0])
    assert rc == 2 and missing[0] in err and "not available" in err


def test_check_command(capsys):
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    for isa in fusedce.available_isas():
        assert f"cpu/{isa}: " in out
    assert out.count("results ok") == len(fusedce.available_isas()) + (_bench.cuda_unavailable_reason() is None)


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    info = fusedce.cpu_info()
    assert fusedce.__version__ in out
    for label in ("build:", "compiler:", "available ISAs:", "threads:", "caches:", "cuda:", "torch:"):
        assert label in out
    assert f"active {info['active_isa']}" in out
    assert ", ".join(info["available_isas"]) in out
    threads_line = next(line for line in out.splitlines() if line.startswith("threads:"))
    assert threads_line.endswith(", OpenMP" if info["openmp"] else ", built without OpenMP: one thread")


def test_openmp_flag_matches_the_thread_runtime():
    """cpu_info()['openmp'] comes from the C build (_OPENMP); a build without it offers one thread."""
    info = fusedce.cpu_info()
    assert isinstance(info["openmp"], bool)
    if not info["openmp"]:
        assert info["max_threads"] == 1


def test_version_in_one_place(capsys):
    """`fusedce --version` prints __version__, which is also what the installed metadata says
    (the build reads it from __init__.py)."""
    import importlib.metadata

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"fusedce {fusedce.__version__}"
    assert importlib.metadata.version("fusedce") == fusedce.__version__
    proc = subprocess.run([sys.executable, "-m", "fusedce", "--version"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    # the last line: an editable install's rebuild prints its own lines first
    assert proc.stdout.strip().splitlines()[-1] == f"fusedce {fusedce.__version__}"


def _sysfs_cache_bytes(level):
    """cpu0's cache of a level from Linux's sysfs, read independently of the C code, or None."""
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if int((index / "level").read_text()) == level:
                size = (index / "size").read_text().strip()
                return int(size[:-1]) << {"K": 10, "M": 20}[size[-1]]
        except (OSError, ValueError, KeyError):
            return None
    return None


def test_cpu_info_cache_sizes():
    """The sizes behind the split and streaming decisions: one cache instance (sysfs), not
    glibc's sum over every L3 of the package."""
    info = fusedce.cpu_info()
    assert 0 < info["l2_bytes"] <= info["llc_bytes"]
    for level, key in ((2, "l2_bytes"), (3, "llc_bytes")):
        expected = _sysfs_cache_bytes(level)
        if expected is not None:
            assert info[key] == expected


def test_python_dash_m_runs_plain_output():
    proc = subprocess.run([sys.executable, "-m", "fusedce", "bench", *TINY, "--backend", "cpu"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "median ms" in proc.stdout
    assert "\x1b[" not in proc.stdout  # no colours or progress bar when piped


def test_bytes_counted_per_op():
    case = _bench.Case(4096, 32000, "float32")
    assert case.bytes_moved("forward") == 4096 * 32000 * 4
    assert case.bytes_moved("fused") == case.bytes_moved("backward") == case.bytes_moved("copy") == 2 * 4096 * 32000 * 4
    assert _bench.Case(2, 3, "float64").bytes_moved("forward") == 2 * 3 * 8
    assert case.bytes_moved("read") == case.bytes_moved("forward")  # the forward's roofline
    for loss in ("soft", "bce"):  # their logits-sized targets are read too
        case = _bench.Case(4096, 32000, "float32", loss)
        assert case.bytes_moved("forward") == 2 * 4096 * 32000 * 4
        assert case.bytes_moved("fused") == 3 * 4096 * 32000 * 4
        assert case.bytes_moved("copy") == 2 * 4096 * 32000 * 4


def test_tolerance_check_catches_nan():
    oracle = _bench.Oracle(*_bench.make_inputs(_bench.Case(2, 3, "float32")))
    bad = oracle.grad.astype(np.float32)
    bad[1, 2] = np.nan
    errors = _bench.result_errors(_bench.Outcome(grad=bad), oracle, "float32")
    with pytest.raises(_bench.CheckFailure, match="gradient"):
        _bench.require_within_tolerance(errors, "case")


def test_bench_linear_every_variant_agrees(capsys):
    """`fusedce bench-linear` on a tiny head: every variant runs in its own process and the
    fused losses equal torch's (the same inputs in every process)."""
    pytest.importorskip("torch")
    assert main(["bench-linear", "--shape", "64x16x300", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    losses = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in ("torch-unfused", "torch-chunked", "fusedce-torch", "fusedce-numpy"):
            losses[parts[0]] = float(parts[-1])
    assert len(losses) == 4, out
    assert max(losses.values()) - min(losses.values()) <= 1e-5 * max(losses.values())


def test_bench_linear_bad_shape_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench-linear", "--shape", "64x16"])
    assert exc.value.code == 2
    assert "expected NxHxV" in capsys.readouterr().err


def test_kernel_and_roofline_calls_are_timed_in_interleaved_rounds():
    """fusedce's CPU calls and the roofline alternate call by call (the machine's slow and fast
    minutes fall on both); other backends keep consecutive calls; every item gets its warm-up
    (unless its check call was one) and `repeat` times."""
    calls = []

    def item(name, in_rounds, warm_up=True):
        row = _bench.Row(_bench.Case(2, 3, "float32"), name, "forward", "host")
        return _bench._Timed(row, lambda: calls.append(name), lambda: None, contextlib.nullcontext, warm_up,
                             in_rounds=in_rounds)

    items = [item("cpu/a", True), item("cpu/b", True, warm_up=False), item("torch", False), item("roofline", True)]
    steps = []
    progress = type("P", (), {"describe": lambda self, text: None, "advance": lambda self: steps.append(1)})()
    _bench._time_each(_bench.Case(2, 3, "float32"), items, 2, progress)
    assert calls == ["cpu/a", "roofline"] + ["cpu/a", "cpu/b", "roofline"] * 2 + ["torch"] * 3
    assert [len(i.row.times_s) for i in items] == [2, 2, 2, 2]
    assert len(steps) == 3 * len(items)  # what _steps counts: repeat + 1 per item
