"""The ``steepest`` command line: ``bench``, ``explain`` and ``info``.

``steepest bench``    train every benchmark task with several optimizers at a shared lr grid and
                      seeds, and write a report (markdown tables, PNG plots, JSON); with no options
                      it runs the quick suite (4-11 minutes on a 2-core CPU: torch.optim.Muon's
                      bfloat16 step is slow where bfloat16 matmul is not native). ``steepest bench
                      kernels`` times the orthogonalization backends against the matmul roofline.
``steepest explain``  print how a preset treats each parameter of the benchmark GPT.
``steepest info``     versions and the facts about this machine that matter for the optimizers.
``steepest diagnose`` train one task with a few optimizers and record per-layer sharpness, gradient
                      noise, update norms and orthogonality error (report in bench-out/diagnose-<task>).

``python -m steepest`` runs the same program.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

EXIT_USAGE = 2


def _int_at_least(minimum: int, kind: str):
    """An argparse type: an integer >= ``minimum`` (``kind`` names it in the error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind} integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {kind} integer, got {value}")
        return value
    return parse


_positive_int = _int_at_least(1, "positive")
_nonnegative_int = _int_at_least(0, "non-negative")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _name_list(text: str, known: tuple[str, ...] | None, what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}s")
    for name in names:
        if known is not None and name not in known:
            raise argparse.ArgumentTypeError(f"unknown {what} {name!r}; choose from {', '.join(known)}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"a {what} is listed twice in {text!r}")
    return names


def _optimizer_list(text: str) -> list[str]:
    from .bench.peers import PEER_NAMES

    return _name_list(text, PEER_NAMES, "optimizer")


def _float_list(text: str) -> list[float]:
    return [_positive_float(v) for v in _name_list(text, None, "number")]


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in _name_list(text, None, "seed")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _hyper_connections(text: str) -> dict:
    streams, _, mixer = text.partition(":")
    try:
        n = int(streams)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected N or N:MIXER with N >= 1 streams, got {text!r}")
    from .nn.hyper_connections import MIXERS

    mixer = mixer or "birkhoff"
    if mixer not in MIXERS:
        raise argparse.ArgumentTypeError(f"unknown mixer {mixer!r}; choose from {', '.join(MIXERS)}")
    return {"hyper_connections": n, "hc_mixer": mixer}


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


def _target(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected TASK=VALUE such as digits-cnn=0.1, got {text!r}")
    return name.strip(), _positive_float(value.strip())


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    from .bench.peers import PEER_NAMES
    from .bench.runner import FULL_OPTIMIZERS, QUICK_OPTIMIZERS
    from .bench.tasks import BUILTIN_TASKS

    parser = argparse.ArgumentParser(
        prog="steepest", description="Geometry-aware optimizers for PyTorch: benchmarks and tools.")
    sub = parser.add_subparsers(dest="command", metavar="{bench,explain,info,diagnose}")

    bench = sub.add_parser(
        "bench", help="compare optimizers on real tasks (or time the orthogonalization kernels)",
        description="`steepest bench` trains every task with every optimizer at a shared lr grid and "
                    "seeds, and writes report.md, PNG plots and results.json. The run resumes: rerunning "
                    "the same command skips the cells this steepest version finished. `steepest bench "
                    "kernels` times the orthogonalization backends against this machine's matmul roofline.")
    bench.add_argument("what", nargs="?", choices=("suite", "kernels", "distributed", "lanton"), default="suite",
                       help="suite (default): train and compare; kernels: the kernel micro-benchmark; "
                            "distributed: optimizer step time per rank under DDP and FSDP2 (torchrun, gloo); "
                            "lanton: the LANTON study (its noise rules against its base, Muon and AdamW on "
                            "shakespeare-char and a depth ladder of GPTs; hours on 2 cores, resumable)")
    size = bench.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="budget", action="store_const", const="quick",
                      help="the quick suite, 4-11 minutes on 2 cores (the default): optimizers "
                           f"{','.join(QUICK_OPTIMIZERS)}, lr x1, seeds 0,1, every built-in task")
    size.add_argument("--full", dest="budget", action="store_const", const="full",
                      help=f"the full suite, about an hour on 2 cores: {len(FULL_OPTIMIZERS)} optimizers "
                           "(external ones when installed), lr x0.5,1,2, seeds 0,1, longer budgets")
    size.add_argument("--smoke", dest="budget", action="store_const", const="smoke",
                      help="a few steps of everything (checks that it runs; numbers mean nothing)")
    bench.add_argument("--task", dest="tasks", action="append", default=None, metavar="NAME",
                       help=f"a task: {', '.join(BUILTIN_TASKS)} or text:PATH for your own UTF-8 file "
                            "(repeatable; default: every built-in task)")
    bench.add_argument("--text", metavar="FILE", help="shorthand for --task text:FILE")
    bench.add_argument("--optimizers", type=_optimizer_list, default=None, metavar="A,B,...",
                       help=f"comma-separated, from {', '.join(PEER_NAMES)}")
    bench.add_argument("--lr-grid", type=_float_list, default=None, metavar="M,M,...",
                       help="lr multipliers applied to every optimizer's base lr (quick: 1; full: 0.5,1,2)")
    bench.add_argument("--seeds", type=_int_list, default=None, metavar="S,S,...",
                       help="seeds of init and data order (default 0,1)")
    bench.add_argument("--lr", type=_lr_override, action="append", default=[], metavar="NAME=LR",
                       help="replace one optimizer's base lr, e.g. steepest-scion=0.01 (repeatable)")
    bench.add_argument("--steps", type=_positive_int, default=None, help="training steps of every task")
    bench.add_argument("--batch-size", type=_positive_int, default=None, help="batch size of every task")
    bench.add_argument("--eval-every", type=_positive_int, default=None, help="steps between evaluations")
    bench.add_argument("--target", type=_target, action="append", default=[], metavar="TASK=VALUE",
                       help="the target metric of a task (default: torch.optim.AdamW's final value)")
    bench.add_argument("--threads", type=_positive_int, default=None,
                       help="torch.set_num_threads for training (default: torch's default)")
    bench.add_argument("--in-process", action="store_true",
                       help="run every cell in this process (faster start; peak RSS no longer per optimizer)")
    bench.add_argument("--out", metavar="DIR",
                       help="run directory (default ./bench-out/<budget>-<hash of the suite>; an existing "
                            "one is resumed)")
    bench.add_argument("--hyper-connections", type=_hyper_connections, default=None, metavar="N[:MIXER]",
                       help="widen the GPT tasks' residual stream to N streams with hyper-connections "
                            "(mixer birkhoff by default; identity, spectral_sphere, stiefel, grassmann)")
    bench.add_argument("--checkpoint-every", type=_nonnegative_int, default=None, metavar="N",
                       help="save a crash-safe checkpoint of the running cell every N steps (default: after "
                            "every evaluation; 0: never); a killed run resumes mid-cell with the exact curve")
    bench.add_argument("--diagnostics", action="store_true",
                       help="record each hidden layer's sharpness and gradient noise at every evaluation of "
                            "the first seed (the report's per-layer panel, diagnostics-<task>.png); costs 10 "
                            "Hessian-vector products per hidden layer and evaluation, about 12 s per "
                            "evaluation of the quick GPT on 2 cores")
    bench.add_argument("--ranks", type=_int_list, default=None, metavar="N,N,...",
                       help="distributed: world sizes to time (default 1,2)")
    bench.add_argument("--d-model", type=_positive_int, default=None,
                       help="distributed: width of the benchmark GPT (default 128)")
    bench.add_argument("--layers", type=_positive_int, default=None,
                       help="distributed: blocks of the benchmark GPT (default 4)")
    bench.add_argument("--jobs", type=_positive_int, default=None,
                       help="lanton: tasks trained at the same time (default 1; each cell uses --threads, default 1)")
    bench.add_argument("--report-only", action="store_true",
                       help="lanton: write the report from the finished cells without training")
    bench.add_argument("--no-progress", action="store_true", help="no progress display on stderr")
    bench.set_defaults(handler=_cmd_bench, subparser=bench)

    explain = sub.add_parser("explain", help="show how a preset treats each parameter of the bench GPT",
                             description="Build the benchmark GPT (vocabulary 84) and print "
                                         "steepest.explain(steepest.for_model(model, PRESET)).")
    explain.add_argument("--preset", default="muon", help="optimizer preset (default %(default)s)")
    explain.set_defaults(handler=_cmd_explain, subparser=explain)

    info = sub.add_parser("info", help="versions and machine facts (threads, bf16 speed)")
    info.set_defaults(handler=_cmd_info, subparser=info)

    diagnose = sub.add_parser(
        "diagnose", help="per-layer sharpness, gradient noise and update statistics during training",
        description="Train one task with each optimizer (constant base lr) and every --every steps record, "
                    "per hidden layer, the top eigenvalue of its Hessian block, the dual-norm gradient noise, "
                    "the update's RMS and spectral norm and (spectral layers) the LMO's orthogonality error. "
                    "Writes diagnostics.json, diagnostics.md and diagnostics.png.")
    diagnose.add_argument("--task", default="shakespeare-char", metavar="NAME",
                          help=f"a task: {', '.join(BUILTIN_TASKS)} or text:PATH (default %(default)s)")
    diagnose.add_argument("--optimizers", type=_optimizer_list, default=None, metavar="A,B,...",
                          help="comma-separated peer names (default steepest-muon,steepest-lanton)")
    diagnose.add_argument("--steps", type=_positive_int, default=None, help="training steps (default: the budget's)")
    diagnose.add_argument("--every", type=_positive_int, default=10, help="steps between checkpoints (default 10)")
    diagnose.add_argument("--seed", type=int, default=0, help="seed of init and data order (default 0)")
    diagnose.add_argument("--sharpness-iters", type=_positive_int, default=10,
                          help="power iterations per layer for sharpness (default 10)")
    diagnose.add_argument("--checkpoint", metavar="PATH",
                          help="start every optimizer from these weights: a state_dict of the task's model "
                               "(torch.save(model.state_dict(), PATH)) or a dict holding one under 'model'")
    diagnose.add_argument("--out", metavar="DIR", help="output directory (default bench-out/diagnose-<task>)")
    dsize = diagnose.add_mutually_exclusive_group()
    dsize.add_argument("--quick", dest="budget", action="store_const", const="quick",
                       help="the task's quick budget (the default)")
    dsize.add_argument("--smoke", dest="budget", action="store_const", const="smoke",
                       help="the task's smoke budget (a few steps)")
    diagnose.set_defaults(handler=_cmd_diagnose, subparser=diagnose, budget="quick")
    return parser


def _cmd_diagnose(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .bench.tasks import make_task
    from .diagnostics.report import diagnostics_markdown, write_diagnostics_report
    from .diagnostics.run import DEFAULT_OPTIMIZERS, run_diagnostics

    try:
        make_task(args.task)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(f"--task: {exc}")
    optimizers = args.optimizers or list(DEFAULT_OPTIMIZERS)
    try:
        results = run_diagnostics(args.task, optimizers, steps=args.steps, every=args.every, seed=args.seed,
                                  budget=args.budget, sharpness_iters=args.sharpness_iters,
                                  checkpoint=args.checkpoint)
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        print(f"steepest diagnose: error: {exc}", file=sys.stderr)
        return 1
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in args.task)
    out = Path(args.out) if args.out else Path("bench-out") / f"diagnose-{safe}"
    paths = write_diagnostics_report(results, out)
    print(paths["report"].read_text())
    print(f"report written to {paths['report']}")
    return 0


def _cmd_lanton(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from dataclasses import replace

    from .bench.lanton_study import Study, describe, run_study, tiny_study

    if args.budget not in (None, "smoke"):
        parser.error("`steepest bench lanton` takes --smoke (a tiny study) or no size option")
    if args.text is not None and not Path(args.text).is_file():
        parser.error(f"--text: no such file: {args.text}")
    corpus = f"text:{args.text}" if args.text else "shakespeare-char"
    study = tiny_study(corpus) if args.budget == "smoke" else Study(corpus=corpus)
    if args.threads is not None:
        study = replace(study, threads=args.threads)
    if args.in_process:
        study = replace(study, isolate=False)
    out = Path(args.out) if args.out else Path("bench-out") / ("lanton-study-smoke" if args.budget else "lanton-study")
    if not args.no_progress:
        print(f"steepest bench lanton: {out}\n{describe(study)}", file=sys.stderr)
    try:
        run_study(study, out, jobs=args.jobs or 1, report_only=args.report_only, show_progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"\nsteepest bench lanton: interrupted; finished cells are saved in {out}; rerun the same "
              f"command to resume", file=sys.stderr)
        return 130
    print((out / "report.md").read_text(encoding="utf-8"))
    print(f"report written to {out / 'report.md'}")
    return 0


def suite_config(args: argparse.Namespace):
    """The :class:`SuiteConfig` that the ``bench`` options describe (``ValueError`` when invalid)."""
    from .bench.runner import SuiteConfig

    overrides = {}
    tasks = list(args.tasks or [])
    if args.text:
        tasks.append(f"text:{args.text}")
    if tasks:
        overrides["tasks"] = tasks
    for key, value in (("optimizers", args.optimizers), ("lr_multipliers", args.lr_grid),
                       ("seeds", args.seeds), ("steps", args.steps), ("batch_size", args.batch_size),
                       ("eval_every", args.eval_every), ("threads", args.threads),
                       ("checkpoint_every", args.checkpoint_every)):
        if value is not None:
            overrides[key] = value
    if args.lr:
        overrides["lrs"] = dict(args.lr)
    if args.target:
        overrides["targets"] = dict(args.target)
    if args.hyper_connections:
        overrides["gpt_options"] = dict(args.hyper_connections)
    if args.diagnostics:
        overrides["diagnostics"] = True
    overrides["isolate"] = not args.in_process
    return SuiteConfig.preset(args.budget or "quick", **overrides)


#: ``bench`` options (argparse dest, flag) and the commands they apply to; any other use is an error
_BENCH_OPTION_SCOPE = {
    ("tasks", "--task"): ("suite",), ("text", "--text"): ("suite", "lanton"), ("optimizers", "--optimizers"): ("suite",),
    ("lr_grid", "--lr-grid"): ("suite",), ("seeds", "--seeds"): ("suite",), ("lr", "--lr"): ("suite",),
    ("batch_size", "--batch-size"): ("suite",), ("eval_every", "--eval-every"): ("suite",),
    ("target", "--target"): ("suite",), ("in_process", "--in-process"): ("suite", "lanton"),
    ("hyper_connections", "--hyper-connections"): ("suite",), ("diagnostics", "--diagnostics"): ("suite",),
    ("checkpoint_every", "--checkpoint-every"): ("suite",),
    ("budget", "--quick/--full/--smoke"): ("suite", "kernels", "lanton"), ("steps", "--steps"): ("suite", "distributed"),
    ("threads", "--threads"): ("suite", "kernels", "distributed", "lanton"), ("ranks", "--ranks"): ("distributed",),
    ("jobs", "--jobs"): ("lanton",), ("report_only", "--report-only"): ("lanton",),
    ("d_model", "--d-model"): ("distributed",), ("layers", "--layers"): ("distributed",),
}


def _check_bench_options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    for (dest, flag), scope in _BENCH_OPTION_SCOPE.items():
        if args.what not in scope and getattr(args, dest) not in (None, [], False):
            parser.error(f"{flag} does not apply to `steepest bench {args.what}` (it applies to: {', '.join(scope)})")


def _cmd_bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _check_bench_options(args, parser)
    if args.what == "kernels":
        return _cmd_kernels(args, parser)
    if args.what == "distributed":
        return _cmd_distributed(args, parser)
    if args.what == "lanton":
        return _cmd_lanton(args, parser)
    from .bench.report import summary_text, write_report
    from .bench.runner import default_run_dir, load_tasks, run_suite

    if args.text is not None and not Path(args.text).is_file():
        parser.error(f"--text: no such file: {args.text}")
    try:
        config = suite_config(args)
        load_tasks(config)  # checks task names and files before anything runs
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    run_dir = Path(args.out) if args.out else default_run_dir(config)
    try:
        results = run_suite(config, run_dir, show_progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"\nsteepest bench: interrupted; finished cells are saved in {run_dir}; rerun the same "
              f"command to resume", file=sys.stderr)
        return 130
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        print(f"steepest bench: error: {exc}", file=sys.stderr)
        return 1
    paths = write_report(results, run_dir)
    print(summary_text(results))
    for note in results.get("notes", []):
        print(f"note: {note}")
    print(f"\nwall time {results['total_wall_seconds']:.1f} s ({results['cells_total']} cells, "
          f"{results['cells_resumed']} of them finished by an earlier run; {results['cell_seconds']:.1f} s "
          f"in the cells)")
    print(f"report written to {paths['report']}")
    return 0


def _cmd_kernels(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .bench.kernel_report import kernel_table, write_kernel_report
    from .bench.kernels import KernelConfig, run_kernels

    if args.budget == "full":
        config = KernelConfig.full_default()
    else:  # the kernel benchmark's quick default (about 2 minutes)
        config = KernelConfig.quick_default()
    if args.threads is not None:
        config.threads = args.threads
    out = Path(args.out) if args.out else Path("bench-out") / f"kernels-{'full' if args.budget == 'full' else 'quick'}"
    results = run_kernels(config, progress=not args.no_progress)
    paths = write_kernel_report(results, out)
    print(kernel_table(results))
    print(f"\nreport written to {paths['report'] if 'report' in paths else out}")
    return 0


def _cmd_distributed(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .bench.distributed import DistributedConfig, render, run_distributed, write_distributed_report

    config = DistributedConfig()
    for key in ("ranks", "d_model", "layers", "steps", "threads"):
        if getattr(args, key) is not None:
            setattr(config, key, getattr(args, key))
    if any(w < 1 for w in config.ranks):
        parser.error("--ranks: world sizes must be >= 1")
    try:
        results = run_distributed(config, progress=not args.no_progress)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"steepest bench distributed: error: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else Path("bench-out") / "distributed"
    paths = write_distributed_report(results, out)
    print(render(results))
    print(f"report written to {paths['report']}")
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

    from .bench.environment import machine_info

    from . import __version__, __file__ as package_file

    # the imported package's own version (installed metadata can be stale under an editable install)
    steepest_version = f"{__version__} ({Path(package_file).parent})"
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
