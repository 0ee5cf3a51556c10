"""The subcommands of the ``steepest`` command line (:mod:`steepest.cli` parses the arguments).

Each ``cmd_*`` function takes the parsed arguments and its subcommand's parser (for usage errors) and
returns the exit code. Each imports the benchmark modules it runs when it runs, so one subcommand
does not load the others' (the suite runner, the kernel benchmark, the LANTON study, ...).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

__all__ = ["EXIT_USAGE", "cmd_bench", "cmd_diagnose", "cmd_explain", "cmd_info", "info_lines", "suite_config"]

EXIT_USAGE = 2


def cmd_diagnose(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``steepest diagnose``: train, record, write the report and print it."""
    from .bench.diagnose import DEFAULT_OPTIMIZERS, run_diagnostics
    from .bench.diagnose_report import write_diagnostics_report
    from .bench.tasks import make_task

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


def _run_study(name: str, study, run_study, describe, args: argparse.Namespace) -> int:
    """Run (or resume) a study (``steepest bench lanton`` or ``defaults``) with the shared options
    (``--threads``, ``--in-process``, ``--out``, ``--jobs``, ``--report-only``) and print its report."""
    from dataclasses import replace

    if args.threads is not None:
        study = replace(study, threads=args.threads)
    if args.in_process:
        study = replace(study, isolate=False)
    out = Path(args.out) if args.out else Path("bench-out") / (f"{name}-study-smoke" if args.budget else f"{name}-study")
    if not args.no_progress:
        print(f"steepest bench {name}: {out}\n{describe(study)}", file=sys.stderr)
    try:
        run_study(study, out, jobs=args.jobs or 1, report_only=args.report_only, show_progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"\nsteepest bench {name}: interrupted; finished cells are saved in {out}; rerun the same "
              f"command to resume", file=sys.stderr)
        return 130
    print((out / "report.md").read_text(encoding="utf-8"))
    print(f"report written to {out / 'report.md'}")
    return 0


def _check_study_options(name: str, args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.budget not in (None, "smoke"):
        parser.error(f"`steepest bench {name}` takes --smoke (a tiny study) or no size option")
    if args.text is not None and not Path(args.text).is_file():
        parser.error(f"--text: no such file: {args.text}")


def _cmd_lanton(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``steepest bench lanton``: run (or resume) the LANTON study and print its report."""
    from .bench.lanton_study import Study, describe, run_study, tiny_study

    _check_study_options("lanton", args, parser)
    corpus = f"text:{args.text}" if args.text else "shakespeare-char"
    study = tiny_study(corpus) if args.budget == "smoke" else Study(corpus=corpus)
    return _run_study("lanton", study, run_study, describe, args)


def _cmd_defaults(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``steepest bench defaults``: run (or resume) the defaults study and print its report."""
    from .bench.defaults_study import DefaultsStudy, default_tasks, describe, run_study, tiny_study

    _check_study_options("defaults", args, parser)
    study = tiny_study(args.text) if args.budget == "smoke" else DefaultsStudy(tasks=default_tasks(args.text))
    return _run_study("defaults", study, run_study, describe, args)


def suite_config(args: argparse.Namespace):
    """The :class:`SuiteConfig` that the ``bench`` options describe (``ValueError`` when invalid)."""
    from .bench.config import SuiteConfig

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
    if getattr(args, "average", None):
        overrides["average"] = args.average
    overrides["isolate"] = not args.in_process
    return SuiteConfig.preset(args.budget or "quick", **overrides)


#: ``bench`` options (argparse dest, flag) and the commands they apply to; any other use is an error
_BENCH_OPTION_SCOPE = {
    ("tasks", "--task"): ("suite",), ("text", "--text"): ("suite", "lanton", "defaults"),
    ("optimizers", "--optimizers"): ("suite", "overhead"),
    ("lr_grid", "--lr-grid"): ("suite",), ("seeds", "--seeds"): ("suite", "spd", "langevin"), ("lr", "--lr"): ("suite",),
    ("batch_size", "--batch-size"): ("suite",), ("eval_every", "--eval-every"): ("suite",),
    ("target", "--target"): ("suite",), ("in_process", "--in-process"): ("suite", "lanton", "defaults"),
    ("hyper_connections", "--hyper-connections"): ("suite",), ("diagnostics", "--diagnostics"): ("suite",),
    ("checkpoint_every", "--checkpoint-every"): ("suite",), ("average", "--average"): ("suite",),
    ("budget", "--quick/--full/--smoke"): ("suite", "kernels", "lanton", "overhead", "defaults", "robust", "spd",
                                           "langevin"),
    ("steps", "--steps"): ("suite", "distributed", "robust"), ("world", "--world"): ("robust",),
    ("threads", "--threads"): ("suite", "kernels", "distributed", "lanton", "overhead", "defaults"),
    ("ranks", "--ranks"): ("distributed",),
    ("jobs", "--jobs"): ("lanton", "defaults"), ("report_only", "--report-only"): ("lanton", "defaults"),
    ("d_model", "--d-model"): ("distributed",), ("layers", "--layers"): ("distributed",),
    ("workloads", "--workloads"): ("overhead",), ("repeats", "--repeats"): ("overhead",),
    ("warmup", "--warmup"): ("overhead",), ("min_time", "--min-time"): ("overhead",),
    ("step_budget", "--budget"): ("overhead",), ("device", "--device"): ("overhead",),
    ("gpt2_blocks", "--gpt2-blocks"): ("overhead",),
}


def _check_bench_options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    for (dest, flag), scope in _BENCH_OPTION_SCOPE.items():
        if args.what not in scope and getattr(args, dest) not in (None, [], False):
            parser.error(f"{flag} does not apply to `steepest bench {args.what}` (it applies to: {', '.join(scope)})")


def cmd_bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``steepest bench``: the suite, or the ``kernels``, ``distributed``, ``lanton``, ``overhead``, ``defaults``,
    ``robust``, ``spd`` or ``langevin`` command."""
    _check_bench_options(args, parser)
    if args.what == "kernels":
        return _cmd_kernels(args, parser)
    if args.what == "distributed":
        return _cmd_distributed(args, parser)
    if args.what == "lanton":
        return _cmd_lanton(args, parser)
    if args.what == "overhead":
        return _cmd_overhead(args, parser)
    if args.what == "defaults":
        return _cmd_defaults(args, parser)
    if args.what == "robust":
        return _cmd_robust(args, parser)
    if args.what in ("spd", "langevin"):
        return _cmd_study(args, parser)
    from .bench.config import default_run_dir
    from .bench.report import summary_text, write_report
    from .bench.runner import load_tasks, run_suite

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
    """``steepest bench kernels``: time the orthogonalization kernels and print the table."""
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


def _cmd_overhead(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``steepest bench overhead``: time one optimizer step against the peers, print and write the report."""
    import torch

    from .bench.overhead import run_overhead, smoke_settings
    from .bench.overhead_report import render_markdown, write_overhead_report

    if args.budget not in (None, "smoke"):
        parser.error("`steepest bench overhead` takes --smoke (a quick check) or no size option")
    options = smoke_settings() if args.budget == "smoke" else {}
    for key, value in (("workloads", args.workloads), ("optimizers", args.optimizers), ("warmup", args.warmup),
                       ("repeats", args.repeats), ("min_time_s", args.min_time), ("budget_s", args.step_budget),
                       ("gpt2_blocks", args.gpt2_blocks), ("threads", args.threads)):
        if value is not None:
            options[key] = value
    device = args.device or "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError:
        parser.error(f"--device: not a torch device: {device!r} (use cpu or cuda)")
    if kind == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    out = Path(args.out) if args.out else Path("bench-out") / ("overhead-smoke" if args.budget else "overhead")
    progress = None if args.no_progress else (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        results = run_overhead(**options, device=device, progress=progress)
    except KeyboardInterrupt:
        print("\nsteepest bench overhead: interrupted; nothing was written", file=sys.stderr)
        return 130
    except (RuntimeError, ValueError) as exc:
        print(f"steepest bench overhead: error: {exc}", file=sys.stderr)
        return 1
    paths = write_overhead_report(results, out)
    print(render_markdown(results))
    print(f"report written to {paths['report']}")
    return 0


def _cmd_distributed(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``steepest bench distributed``: time the optimizer step per rank under DDP and FSDP2."""
    from .bench.distributed import DistributedConfig, render, run_distributed, write_distributed_report

    config = DistributedConfig()
    for key in ("ranks", "d_model", "layers", "steps", "threads"):
        if getattr(args, key) is not None:
            setattr(config, key, getattr(args, key))
    if any(w < 1 for w in config.ranks):
        parser.error("--ranks: world sizes must be >= 1")
    return _run_ranks("distributed", args, lambda: run_distributed(config, progress=not args.no_progress),
                      write_distributed_report, render)


def _run_ranks(name: str, args: argparse.Namespace, run, write, render) -> int:
    """Run a study that launches rank processes (``run()``), then write and print its report under
    ``--out`` (default ``bench-out/<name>``); a failed or timed-out launch is an exit status of 1."""
    try:
        results = run()
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"steepest bench {name}: error: {exc}", file=sys.stderr)
        return 1
    paths = write(results, Path(args.out) if args.out else Path("bench-out") / name)
    print(render(results))
    print(f"report written to {paths['report']}")
    return 0


def _cmd_robust(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``steepest bench robust``: the aggregation hooks under attack, and each rule's cost."""
    from .bench.robust import RobustConfig, render, run_robust, write_robust_report

    try:
        config = RobustConfig(world=args.world or 4, steps=args.steps or 60)
    except ValueError as exc:
        parser.error(str(exc))
    if args.budget == "smoke":
        config.steps, config.workers, config.dims, config.repeats = 3, (4,), (1000,), 1
    elif args.budget == "quick":
        config.workers, config.dims = (4, 8, 16), (10_000, 100_000)
    return _run_ranks("robust", args, lambda: run_robust(config, progress=not args.no_progress),
                      write_robust_report, render)


def _cmd_study(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``steepest bench spd`` and ``steepest bench langevin``: the SPD batch-norm benchmark and the
    planted-direction Langevin study (``--quick``: about 30 s; ``--smoke``: seconds)."""
    out = Path(args.out) if args.out else Path("bench-out") / ("spd-covariance" if args.what == "spd" else "langevin")
    seeds = tuple(args.seeds) if args.seeds else None
    if args.what == "spd":
        from .bench.spd_covariance import run

        log = None if args.no_progress else (lambda line: print(line, file=sys.stderr, flush=True))
        if args.budget == "smoke":
            run(out, quick=True, seeds=seeds or (0,), epochs=1, kappas=(10.0,), log=log)
        else:
            run(out, quick=args.budget == "quick", seeds=seeds, log=log)
    else:
        from .bench.langevin_study import run

        kwargs = {"seeds": seeds} if seeds else {}
        run(out, quick=args.budget == "quick", smoke=args.budget == "smoke", **kwargs)
    report = out / "report.md"
    print(report.read_text(encoding="utf-8"))
    print(f"report written to {report}")
    return 0


def cmd_explain(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``steepest explain``: print how a preset treats each parameter of the benchmark GPT."""
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
                 False: "no (oneDNN has no native bf16 here: bf16 matmul falls back to a slow path)",
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
        f"Newton-Schulz  ns_dtype=\"auto\" iterates in {machine['ns_dtype_auto']} on the CPU "
        f"({machine['ns_dtype_auto_reason']})",
        f"cuda available {torch.cuda.is_available()}",
    ]
    try:
        import matplotlib
        lines.append(f"matplotlib     {matplotlib.__version__} (bench plots enabled)")
    except ImportError:
        lines.append("matplotlib     not installed (bench plots are skipped)")
    return lines


def cmd_info(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``steepest info``: print :func:`info_lines`."""
    print("\n".join(info_lines()))
    return 0
