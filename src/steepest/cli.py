"""The ``steepest`` command line: ``bench``, ``explain`` and ``info``.

``steepest bench``    train every benchmark task with several optimizers at a shared lr grid and
                      seeds, and write a report (markdown tables, PNG plots, JSON); with no options
                      it runs the quick suite (4-13 minutes on a 2-core CPU: torch.optim.Muon's
                      bfloat16 step is slow where bfloat16 matmul is not native). ``steepest bench
                      kernels`` times the orthogonalization backends against the matmul roofline.
``steepest explain``  print how a preset treats each parameter of the benchmark GPT.
``steepest info``     versions and the facts about this machine that matter for the optimizers.
``steepest diagnose`` train one task with a few optimizers and record per-layer sharpness, gradient
                      noise, update norms and orthogonality error (report in bench-out/diagnose-<task>).

``python -m steepest`` runs the same program. This module builds the parser (one function per
subcommand) and dispatches; the subcommands themselves are in :mod:`steepest.cli_commands`.
"""
from __future__ import annotations

import argparse
import sys

from .bench.config import FULL_OPTIMIZERS, QUICK_OPTIMIZERS
from .bench.overhead import OVERHEAD_ONLY
from .bench.overhead_workloads import WORKLOAD_NAMES
from .bench.peers import PEER_NAMES
from .bench.tasks import BUILTIN_TASKS
from .cli_commands import EXIT_USAGE, cmd_bench, cmd_diagnose, cmd_explain, cmd_info, info_lines, suite_config
from .nn.hyper_connections import MIXERS

__all__ = ["main", "build_parser", "suite_config", "info_lines", "EXIT_USAGE"]


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
    # `bench overhead` also times optimizers the suite does not train (OVERHEAD_ONLY); the suite and
    # `diagnose` reject those when they check their optimizers
    return _name_list(text, (*PEER_NAMES, *OVERHEAD_ONLY), "optimizer")


def _workload_list(text: str) -> list[str]:
    return _name_list(text, WORKLOAD_NAMES, "workload")


def _nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text}")
    return value


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
    mixer = mixer or "birkhoff"
    if mixer not in MIXERS:
        raise argparse.ArgumentTypeError(f"unknown mixer {mixer!r}; choose from {', '.join(MIXERS)}")
    return {"hyper_connections": n, "hc_mixer": mixer}


def _lr_override(text: str) -> tuple[str, float]:
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
    parser = argparse.ArgumentParser(
        prog="steepest", description="Geometry-aware optimizers for PyTorch: benchmarks and tools.")
    sub = parser.add_subparsers(dest="command", metavar="{bench,explain,info,diagnose}")
    _add_bench(sub)
    _add_explain(sub)
    _add_info(sub)
    _add_diagnose(sub)
    return parser


def _add_bench(sub) -> None:
    """``steepest bench [suite | kernels | distributed | lanton | overhead | defaults | robust | spd |
    langevin]`` and its options (in ``--help`` order)."""
    bench = sub.add_parser(
        "bench", help="compare optimizers on real tasks (or time the orthogonalization kernels)",
        description="`steepest bench` trains every task with every optimizer at a shared lr grid and "
                    "seeds, and writes report.md, PNG plots and results.json. The run resumes: rerunning "
                    "the same command skips the cells this steepest version finished. `steepest bench "
                    "kernels` times the orthogonalization backends against this machine's matmul roofline.")
    bench.add_argument("what", nargs="?", choices=("suite", "kernels", "distributed", "lanton", "overhead", "defaults",
                                                "robust", "spd", "langevin"),
                       default="suite",
                       help="suite (default): train and compare; kernels: the kernel micro-benchmark; "
                            "distributed: optimizer step time per rank under DDP and FSDP2 (torchrun, gloo); "
                            "lanton: the LANTON study (its noise rules against its base, Muon and AdamW on "
                            "shakespeare-char and a depth ladder of GPTs; hours on 2 cores, resumable); "
                            "overhead: the time of one optimizer.step() with the gradients set, steepest "
                            "against its peers, on a tiny, the quick-suite and a GPT-2-small-shaped model; "
                            "defaults: the defaults study (every preset's candidate settings on six tasks, "
                            "scored by worst-case regret; about an hour on 2 cores with --jobs 2, resumable); "
                            "robust: robust gradient aggregation hooks (mean, median, trimmed mean, Flag) training "
                            "under attack on 4 gloo ranks, and each rule's cost over workers and dimensions; "
                            "spd: the spd-covariance task (SPD batch norms across condition numbers, geoopt's "
                            "RiemannianAdam as peer when installed); langevin: recovery of a planted direction by "
                            "gradient descent, Langevin dynamics and Langevin with averaging")
    size = bench.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="budget", action="store_const", const="quick",
                      help="the quick suite, 4-13 minutes on 2 cores (the default): optimizers "
                           f"{','.join(QUICK_OPTIMIZERS)}, lr x1, seeds 0,1, every built-in task")
    size.add_argument("--full", dest="budget", action="store_const", const="full",
                      help=f"the full suite, about an hour on 2 cores: {len(FULL_OPTIMIZERS)} optimizers "
                           "(external ones when installed), lr x0.5,1,2, seeds 0,1, longer budgets")
    size.add_argument("--smoke", dest="budget", action="store_const", const="smoke",
                      help="a few steps of everything (checks that it runs; numbers mean nothing)")
    bench.add_argument("--world", type=_positive_int, default=None,
                       help="robust: the number of gloo ranks of the training runs (default 4, at least 3)")
    _add_suite_options(bench)
    _add_distributed_and_lanton_options(bench)
    _add_overhead_options(bench)
    bench.add_argument("--no-progress", action="store_true", help="no progress display on stderr")
    bench.set_defaults(handler=cmd_bench, subparser=bench)


def _add_suite_options(bench: argparse.ArgumentParser) -> None:
    """The options of the suite (``--task`` to ``--diagnostics``, ``--average`` among them)."""
    bench.add_argument("--task", dest="tasks", action="append", default=None, metavar="NAME",
                       help=f"a task: {', '.join(BUILTIN_TASKS)} or text:PATH for your own UTF-8 file "
                            "(repeatable; default: every built-in task)")
    bench.add_argument("--text", metavar="FILE", help="shorthand for --task text:FILE")
    bench.add_argument("--optimizers", type=_optimizer_list, default=None, metavar="A,B,...",
                       help=f"comma-separated, from {', '.join(PEER_NAMES)} (overhead also "
                            f"{', '.join(OVERHEAD_ONLY)}; its default: steepest's muon, lion, signum, "
                            "diffgrad and AdamW fallback and their peers)")
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
    bench.add_argument("--average", choices=("ema", "swa"), default=None,
                       help="also keep a torch.optim.swa_utils.AveragedModel of every cell's model (ema: decay "
                            "1 - 1/h, h = 10%% of the steps; swa: equal weights over the last 25%% of the steps) and "
                            "report its final metric next to the raw one (default: none)")
    bench.add_argument("--diagnostics", action="store_true",
                       help="record each hidden layer's sharpness and gradient noise at every evaluation of "
                            "the first seed (the report's per-layer panel, diagnostics-<task>.png); costs 10 "
                            "Hessian-vector products per hidden layer and evaluation, about 12 s per "
                            "evaluation of the quick GPT on 2 cores")


def _add_distributed_and_lanton_options(bench: argparse.ArgumentParser) -> None:
    """The options of ``bench distributed`` and ``bench lanton``."""
    bench.add_argument("--ranks", type=_int_list, default=None, metavar="N,N,...",
                       help="distributed: world sizes to time (default 1,2)")
    bench.add_argument("--d-model", type=_positive_int, default=None,
                       help="distributed: width of the benchmark GPT (default 128)")
    bench.add_argument("--layers", type=_positive_int, default=None,
                       help="distributed: blocks of the benchmark GPT (default 4)")
    bench.add_argument("--jobs", type=_positive_int, default=None,
                       help="lanton, defaults: tasks (defaults: suites) trained at the same time (default 1; each "
                            "cell uses --threads, default 1)")
    bench.add_argument("--report-only", action="store_true",
                       help="lanton, defaults: write the report from the finished cells without training")


def _add_overhead_options(bench: argparse.ArgumentParser) -> None:
    """The options of ``bench overhead`` (with ``--optimizers``, ``--threads``, ``--smoke`` and ``--out``)."""
    bench.add_argument("--workloads", type=_workload_list, default=None, metavar="A,B,...",
                       help=f"overhead: comma-separated, from {', '.join(WORKLOAD_NAMES)} (default: all)")
    bench.add_argument("--repeats", type=_positive_int, default=None,
                       help="overhead: timed steps per optimizer and workload, at least (default 20)")
    bench.add_argument("--warmup", type=_nonnegative_int, default=None,
                       help="overhead: untimed steps before them (default 3)")
    bench.add_argument("--min-time", type=_nonnegative_float, default=None, metavar="SECONDS",
                       help="overhead: keep timing steps until this many seconds have passed (default 0.5)")
    bench.add_argument("--budget", dest="step_budget", type=_positive_float, default=None, metavar="SECONDS",
                       help="overhead: seconds per optimizer and workload, warm-up included (default 10); a "
                            "warm-up step over it is reported alone, flagged")
    bench.add_argument("--device", default=None, help="overhead: cpu (default) or cuda")
    bench.add_argument("--gpt2-blocks", type=_positive_int, default=None, metavar="N",
                       help="overhead: blocks of the gpt2-small workload (default 1 on a CPU, 12 on CUDA)")


def _add_explain(sub) -> None:
    """``steepest explain [--preset NAME]``."""
    explain = sub.add_parser("explain", help="show how a preset treats each parameter of the bench GPT",
                             description="Build the benchmark GPT (vocabulary 84) and print "
                                         "steepest.explain(steepest.for_model(model, PRESET)).")
    explain.add_argument("--preset", default="muon", help="optimizer preset (default %(default)s)")
    explain.set_defaults(handler=cmd_explain, subparser=explain)


def _add_info(sub) -> None:
    """``steepest info``."""
    info = sub.add_parser("info", help="versions and machine facts (threads, bf16 speed)")
    info.set_defaults(handler=cmd_info, subparser=info)


def _add_diagnose(sub) -> None:
    """``steepest diagnose`` and its options."""
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
    diagnose.set_defaults(handler=cmd_diagnose, subparser=diagnose, budget="quick")


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
