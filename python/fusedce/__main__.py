"""The `fusedce` command (also `python -m fusedce`): bench, check, info.

    fusedce bench                      check, then time every backend on the default grid
    fusedce bench --shape 4096x32000 --isa all --op all --json out.json --plot out.png
    fusedce bench --loss soft --loss bce   probability targets and binary cross-entropy
    fusedce bench-linear               the fused linear + cross-entropy against torch's (own processes)
    fusedce check                      correctness only: every ISA, every dtype, small shapes
    fusedce info                       version, build, ISAs, threads, buffer pool, CUDA, torch
    fusedce --version

Exit status: 0 on success, 1 when a result is wrong, 2 for a bad request.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__, _bench, _bench_linear
from ._cpu import ISA_NAMES


def _shape(text):
    try:
        return _bench.parse_shape(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _linear_shape(text):
    try:
        return _bench_linear.parse_shape(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _linear_shape(text):
    try:
        return _bench_linear.parse_shape(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _expand_all(chosen, every, default):
    """A repeatable option's values: the default when absent, every choice for 'all'."""
    if not chosen:
        return list(default)
    return list(every) if "all" in chosen else list(dict.fromkeys(chosen))


def build_parser():
    parser = argparse.ArgumentParser(prog="fusedce", description="Fused softmax + cross-entropy kernels.")
    parser.add_argument("--version", action="version", version=f"fusedce {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{bench,bench-linear,check,info}")

    bench = commands.add_parser(
        "bench", help="check every backend against the float64 reference, then time it",
        description="Checks each backend's result against the float64 NumPy reference, then times "
                    "it (median and best of --repeat calls) against the machine's memory roofline: a "
                    "multi-threaded read of the logits (for the forward) and a multi-threaded streaming "
                    "copy of them (for the backward and forward+backward), same threads; np.copyto is "
                    "shown too.")
    bench.add_argument("--shape", action="append", type=_shape, metavar="BxK",
                       help="batch x classes, repeatable (default: "
                            + ", ".join(f"{b}x{k}" for b, k in _bench.DEFAULT_SHAPES) + ")")
    bench.add_argument("--dtype", action="append", choices=_bench.DTYPES,
                       help="repeatable (default: " + ", ".join(_bench.DEFAULT_DTYPES) + ")")
    bench.add_argument("--backend", action="append", choices=_bench.BACKENDS + ("all",),
                       help="repeatable (default: all; unavailable ones are reported as such)")
    bench.add_argument("--op", action="append", choices=_bench.OPS + ("all",),
                       help="forward, backward (given lse), fused forward+backward; repeatable "
                            "(default: " + ", ".join(_bench.DEFAULT_OPS) + ")")
    bench.add_argument("--loss", action="append", choices=_bench.LOSSES + ("all",),
                       help="ce: class targets, soft: probability targets, bce: binary cross-entropy "
                            "with logits; repeatable (default: " + ", ".join(_bench.DEFAULT_LOSSES) + ")")
    bench.add_argument("--isa", action="append", choices=ISA_NAMES + ("all",),
                       help="run the cpu backend once per ISA named, repeatable; all = every "
                            "available one (default: the active ISA)")
    bench.add_argument("--threads", type=_positive_int, help="fusedce CPU threads (torch keeps its default)")
    bench.add_argument("--repeat", type=_positive_int, default=_bench.DEFAULT_REPEAT,
                       help="timed calls per case after a warm-up; the median is reported "
                            f"(default: {_bench.DEFAULT_REPEAT})")
    bench.add_argument("--json", metavar="PATH", help="write the machine, versions and every row as JSON")
    bench.add_argument("--plot", metavar="PATH.png", help="plot throughput against K (needs matplotlib)")
    bench.set_defaults(handler=_bench_command)

    linear = commands.add_parser(
        "bench-linear", help="the fused linear + cross-entropy against the GEMMs alone and torch's",
        description="Times one forward+backward step of an LM head's loss from its hidden states: the three "
                    "GEMMs alone, torch's unfused and chunked losses, fusedce.torch and the NumPy API, each "
                    "in a fresh process, with its peak memory growth.")
    linear.add_argument("--shape", action="append", type=_linear_shape, metavar="NxHxV",
                        help="rows x hidden x classes, repeatable (default: "
                             + ", ".join("x".join(map(str, s)) for s in _bench_linear.DEFAULT_SHAPES) + ")")
    linear.add_argument("--dtype", action="append", choices=("float32", "float64", "bfloat16", "float16"),
                        help="repeatable (default: float32)")
    linear.add_argument("--repeat", type=_positive_int, default=_bench_linear.DEFAULT_REPEAT,
                        help=f"timed steps per variant after a warm-up (default: {_bench_linear.DEFAULT_REPEAT})")
    linear.set_defaults(handler=_bench_linear_command)

    check = commands.add_parser("check", help="correctness only: every backend, ISA and dtype on small shapes")
    check.add_argument("--threads", type=_positive_int, help="fusedce CPU threads")
    check.set_defaults(handler=_check_command)

    info = commands.add_parser("info", help="version, build, ISAs, threads, buffer pool, CUDA and torch availability")
    info.set_defaults(handler=_info_command)
    return parser


def _bench_command(args):
    if args.plot:
        _bench.require_matplotlib()  # before minutes of timing, not after
    config = _bench.BenchConfig(
        shapes=list(dict.fromkeys(args.shape or _bench.DEFAULT_SHAPES)),
        dtypes=_expand_all(args.dtype, _bench.DTYPES, _bench.DEFAULT_DTYPES),
        backends=_expand_all(args.backend, _bench.BACKENDS, _bench.BACKENDS),
        ops=_expand_all(args.op, _bench.OPS, _bench.DEFAULT_OPS),
        losses=_expand_all(args.loss, _bench.LOSSES, _bench.DEFAULT_LOSSES),
        isas=args.isa, threads=args.threads, repeat=args.repeat)
    report = _bench.run(config, show_progress=sys.stdout.isatty())
    _bench.print_report(report)
    if args.json:
        _bench.write_json(report, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        _bench.plot(report, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _bench_linear_command(args):
    _bench_linear.bench(list(dict.fromkeys(args.shape or _bench_linear.DEFAULT_SHAPES)),
                        list(dict.fromkeys(args.dtype or ["float32"])), args.repeat)
    return 0


def _bench_linear_command(args):
    _bench_linear.bench(list(dict.fromkeys(args.shape or _bench_linear.DEFAULT_SHAPES)),
                        list(dict.fromkeys(args.dtype or ["float32"])), args.repeat)
    return 0


def _check_command(args):
    dtypes = [name for name in _bench.DTYPES if name != "bfloat16" or _bench.numpy_dtype_available(name)]
    config = _bench.BenchConfig(shapes=list(_bench.CHECK_SHAPES), dtypes=dtypes, backends=["cpu", "cuda"],
                                ops=list(_bench.OPS), losses=list(_bench.LOSSES), isas=["all"], threads=args.threads, timed=False)
    report = _bench.run(config, show_progress=sys.stdout.isatty())
    for line in _bench.check_summary(report):
        print(line)
    return 0


def _info_command(args):
    for key, value in _bench.info_lines(_bench.environment()):
        print(f"{key + ':':<16}{value}")
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except _bench.CheckFailure as exc:
        print(f"fusedce {args.command}: FAILED: {exc}", file=sys.stderr)
        return 1
    except _bench.BenchError as exc:
        print(f"fusedce {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
