"""The LANTON study: does noise-adaptive layerwise lr beat its base, and where?

``steepest bench lanton`` trains LANTON's noise rules (:mod:`steepest.optim.noise`) against its base
(the same preset with ``noise_adaptive=False``), steepest's Muon, ``torch.optim.Muon`` and
``torch.optim.AdamW`` on ``shakespeare-char`` and on a depth ladder of character GPTs (2, 4, 8 and
16 blocks of width 96, context 64, on the same text), where the layers' gradient noise differs
more as depth grows. The protocol, per task:

1. **Grid.** Every optimizer at lr multipliers x{0.25, 0.5, 1, 2, 4, 8} of its benchmark base lr
   (:data:`steepest.bench.peers.DEFAULT_LRS`), seeds 0 and 1, warm-up + cosine schedule. To fit a
   2-core machine, the 8- and 16-block rungs train the base, the two square-root rules and the
   references only (:data:`DEEP`), and ``torch.optim.Muon`` runs a shorter grid where it is
   expensive (:func:`default_tasks`): its Newton-Schulz is hard-coded bfloat16, which costs several
   times steepest's step on CPUs without native bfloat16 matmul (docs/benchmarks.md).
2. **Confirm.** Each optimizer's best multiplier (lowest mean final validation loss over the two
   seeds) runs once more with seed 2, so the best-lr numbers are means over three seeds.

From the cells it reports, per task and optimizer: the 3-seed final loss at the best lr, the steps
and training seconds the seed-mean curve needs to reach AdamW's 3-seed final loss, the lr range
whose 2-seed mean stays within :data:`ROBUST_NATS` of the optimizer's own best (lr robustness),
and the median and mean optimizer-step times; across tasks, each rule's gap to the base against
depth (``gap-vs-depth.png``), the loss against lr (``lr-<task>.png``) and the per-layer lr factors
over training (``factors-<task>.png``). Every phase is a benchmark suite in its own run directory
(:func:`steepest.bench.runner.run_suite`), so an interrupted study resumes where it stopped, cell
by cell; tasks run in ``jobs`` parallel threads, each driving single-threaded worker processes.
"""
from __future__ import annotations

import math
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .cells import CellStore, write_json_atomic
from .config import SuiteConfig
from .environment import machine_info
from .formatting import markdown_table
from .peers import DEFAULT_LRS, STEEPEST_PEERS, STUDY_NOISE
from .runner import load_tasks, plan_cells, run_suite

GRID = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
GRID_SEEDS = (0, 1)
CONFIRM_SEEDS = (2,)
#: an lr counts as "as good" when its 2-seed mean final loss is within this many nats of the best
ROBUST_NATS = 0.05
BASE = "steepest-lanton-base"
#: the noise-adaptive variants, compared with BASE
RULES = ("steepest-lanton-min-ratio", "steepest-lanton-sqrt-ratio", "steepest-lanton-alpha-sqrt",
         "steepest-lanton-second", "steepest-lanton-every-step")
CORE = ("adamw", "steepest-muon", BASE, "steepest-lanton-min-ratio", "steepest-lanton-sqrt-ratio",
        "steepest-lanton-alpha-sqrt", "steepest-lanton-second")


@dataclass(frozen=True)
class StudyTask:
    """One task of the study: a GPT shape on Shakespeare's text and its training budget."""

    key: str
    depth: int
    gpt_options: dict = field(default_factory=dict)
    steps: int = 200
    batch_size: int = 16
    eval_every: int = 25
    optimizers: tuple[str, ...] = CORE
    torch_muon_grid: tuple[float, ...] = GRID


#: the optimizers of the deep ladder rungs (8 and 16 blocks), whose cells cost the most: the base,
#: the two square-root rules and the references
DEEP = ("adamw", "steepest-muon", BASE, "steepest-lanton-sqrt-ratio", "steepest-lanton-alpha-sqrt")


def default_tasks() -> list[StudyTask]:
    """shakespeare-char (the suite's GPT: 4 blocks, width 128, context 128; 150 steps) and the
    ladder of 2, 4, 8 and 16 blocks at width 96, context 64 (200 steps). torch.optim.Muon, whose
    bfloat16 Newton-Schulz costs several times steepest's step on CPUs without native bfloat16
    matmul, runs the whole grid on 2 and 4 blocks, x{0.5, 1, 2} on shakespeare-char and 8 blocks and
    x1 on 16."""
    tasks = [StudyTask("shakespeare-char", 4, {}, steps=150, optimizers=(*CORE, "steepest-lanton-every-step"),
                       torch_muon_grid=(0.5, 1.0, 2.0))]
    for depth in (2, 4, 8, 16):
        tasks.append(StudyTask(f"gpt-{depth}x96", depth, {"n_layer": depth, "d_model": 96, "ctx": 64},
                               optimizers=CORE if depth <= 4 else DEEP,
                               torch_muon_grid=GRID if depth <= 4 else (0.5, 1.0, 2.0) if depth <= 8 else (1.0,)))
    return tasks


def cost(task: StudyTask) -> float:
    """A rough relative cost of a task's grid (its cells times their model's work per step)."""
    options = {"n_layer": 4, "d_model": 128, "ctx": 128, **task.gpt_options}
    return (task.steps * options["n_layer"] * options["d_model"] ** 2 * options["ctx"]
            * (len(task.optimizers) + 3 * len(task.torch_muon_grid) / 6))


def tiny_tasks() -> list[StudyTask]:
    """A few steps of two tiny GPTs (checks that the study runs; the numbers mean nothing)."""
    shape = {"d_model": 16, "n_head": 2, "ctx": 16, "eval_batches": 1}
    optimizers = ("adamw", BASE, "steepest-lanton-alpha-sqrt", "steepest-lanton-second")
    return [StudyTask(f"gpt-{d}x16", d, {**shape, "n_layer": d}, steps=6, batch_size=2, eval_every=3,
                      optimizers=optimizers, torch_muon_grid=(1.0,)) for d in (1, 2)]


@dataclass
class Study:
    """The whole study: its tasks, the lr grid, the seeds and how the cells run."""

    tasks: list[StudyTask] = field(default_factory=default_tasks)
    grid: tuple[float, ...] = GRID
    grid_seeds: tuple[int, ...] = GRID_SEEDS
    confirm_seeds: tuple[int, ...] = CONFIRM_SEEDS
    threads: int | None = 1
    isolate: bool = True
    #: the text every task trains on: ``shakespeare-char`` or ``text:PATH`` (a UTF-8 file of your own)
    corpus: str = "shakespeare-char"

    def suite(self, task: StudyTask, optimizers, multipliers, seeds, lrs=None) -> SuiteConfig:
        return SuiteConfig(budget="full", tasks=[self.corpus], optimizers=list(optimizers),
                           lr_multipliers=list(multipliers), seeds=list(seeds), lrs=dict(lrs or {}),
                           steps=task.steps, batch_size=task.batch_size, eval_every=task.eval_every,
                           threads=self.threads, isolate=self.isolate, gpt_options=dict(task.gpt_options))

    def grid_suites(self, task: StudyTask) -> dict[str, SuiteConfig]:
        """The grid phase: ``grid`` (every optimizer but torch.optim.Muon) and ``grid-torch-muon``."""
        main = [o for o in task.optimizers if o != "torch-muon"]
        suites = {"grid": self.suite(task, main, self.grid, self.grid_seeds)}
        if task.torch_muon_grid:
            suites["grid-torch-muon"] = self.suite(task, ["torch-muon"], task.torch_muon_grid, self.grid_seeds)
        return suites

    def confirm_suite(self, task: StudyTask, best_lrs: dict[str, float]) -> SuiteConfig:
        """The confirm phase: every optimizer once more at its best lr (multiplier 1 of that lr)."""
        return self.suite(task, list(best_lrs), [1.0], self.confirm_seeds, lrs=best_lrs)


def _records(config: SuiteConfig, run_dir: Path) -> list[tuple]:
    """``(cell, record or None)`` for every planned cell of a suite."""
    tasks = load_tasks(config)
    store = CellStore(run_dir)
    return [(cell, store.load(cell)) for cell in plan_cells(config, tasks, config.optimizers)]


def _final(record: dict | None) -> float:
    """A cell's final validation loss (infinite when it diverged, failed or is missing)."""
    if not record or record.get("status") != "ok":
        return math.inf
    value = record["final"].get("val_loss")
    return float(value) if value is not None and math.isfinite(value) else math.inf


def best_multipliers(records: list[tuple]) -> dict[str, dict]:
    """Per optimizer: the 2-seed mean final loss at every multiplier and the best multiplier."""
    by_opt: dict[str, dict[float, list[float]]] = {}
    lrs: dict[tuple[str, float], float] = {}
    for cell, record in records:
        by_opt.setdefault(cell.optimizer, {}).setdefault(cell.lr_multiplier, []).append(_final(record))
        lrs[(cell.optimizer, cell.lr_multiplier)] = cell.lr
    out = {}
    for name, grid in by_opt.items():
        means = {m: (statistics.fmean(v) if all(math.isfinite(x) for x in v) else math.inf) for m, v in grid.items()}
        best = min(means, key=lambda m: (means[m], m))
        out[name] = {"grid": means, "best_multiplier": best, "best_lr": lrs[(name, best)],
                     "lrs": {m: lrs[(name, m)] for m in grid}}
    return out


def run_task(study: Study, task: StudyTask, out: Path, show_progress: bool = False) -> None:
    """Run (or resume) both phases of one task."""
    root = out / task.key
    grid_records = []
    for name, config in study.grid_suites(task).items():
        run_suite(config, root / name, show_progress=show_progress)
        grid_records += _records(config, root / name)
    best = best_multipliers(grid_records)
    best_lrs = {name: info["best_lr"] for name, info in best.items() if math.isfinite(info["grid"][info["best_multiplier"]])}
    if best_lrs:
        config = study.confirm_suite(task, best_lrs)
        run_suite(config, root / "confirm", show_progress=show_progress)


def _mean_curve(records: list[dict]) -> list[dict]:
    """The seed-mean validation curve (steps every record has) with mean training seconds."""
    steps = sorted(set.intersection(*[{p["step"] for p in r["curve"]} for r in records]))
    out = []
    for step in steps:
        points = [next(p for p in r["curve"] if p["step"] == step) for r in records]
        out.append({"step": step, "val_loss": statistics.fmean(p["val_loss"] for p in points),
                    "train_seconds": statistics.fmean(p["train_seconds"] for p in points)})
    return out


def _reach(curve: list[dict], target: float) -> tuple[int | None, float | None]:
    for point in curve:
        if point["step"] > 0 and point["val_loss"] <= target:
            return point["step"], point["train_seconds"]
    return None, None


def analyse_task(study: Study, task: StudyTask, out: Path) -> dict:
    """Everything the report says about one task, from its saved cells."""
    root = out / task.key
    grid_records = []
    for name, config in study.grid_suites(task).items():
        grid_records += _records(config, root / name)
    best = best_multipliers(grid_records)
    best_lrs = {name: info["best_lr"] for name, info in best.items() if math.isfinite(info["grid"][info["best_multiplier"]])}
    confirm = _records(study.confirm_suite(task, best_lrs), root / "confirm") if best_lrs else []
    optimizers = {}
    for name, info in best.items():
        at_best = [r for c, r in grid_records if c.optimizer == name and c.lr_multiplier == info["best_multiplier"]]
        at_best += [r for c, r in confirm if c.optimizer == name]
        ok = [r for r in at_best if r and r.get("status") == "ok"]
        finals = [_final(r) for r in at_best]
        row = {"best_lr": info["best_lr"], "best_multiplier": info["best_multiplier"], "grid": info["grid"],
               "lrs": info["lrs"], "seeds": len(at_best), "finals": finals}
        if ok and len(ok) == len(at_best):
            row.update(final=statistics.fmean(finals), final_std=statistics.stdev(finals) if len(finals) > 1 else 0.0,
                       curve=_mean_curve(ok),
                       opt_step_ms=statistics.fmean(r["opt_step_ms"] for r in ok),
                       opt_step_mean_ms=statistics.fmean(r.get("opt_step_mean_ms") or r["opt_step_ms"] for r in ok),
                       step_ms=statistics.fmean(r["step_ms"] for r in ok),
                       layer_stats=ok[0].get("layer_stats") or [])
        else:
            row.update(final=math.inf)
        good = [m for m, v in info["grid"].items() if v <= info["grid"][info["best_multiplier"]] + ROBUST_NATS]
        row["robust_multipliers"] = sorted(good)
        row["robust_width"] = max(good) / min(good) if good else None
        optimizers[name] = row
    target = optimizers.get("adamw", {}).get("final", math.inf)
    for row in optimizers.values():
        steps, seconds = _reach(row.get("curve", []), target) if math.isfinite(target) else (None, None)
        row.update(steps_to_target=steps, seconds_to_target=seconds)
    base = optimizers.get(BASE, {})
    gaps = {name: optimizers[name]["final"] - base["final"] for name in RULES
            if name in optimizers and base and math.isfinite(optimizers[name]["final"]) and math.isfinite(base["final"])}
    return {"task": asdict(task), "target": target, "optimizers": optimizers, "gaps": gaps}


# -- the report ------------------------------------------------------------------------------------

def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}g}"


def _lr_range(row: dict) -> str:
    good = row.get("robust_multipliers") or []
    if not good:
        return "-"
    lo, hi = row["lrs"][min(good)], row["lrs"][max(good)]
    return f"{lo:.3g}-{hi:.3g} ({row['robust_width']:g}x)"


def task_table(result: dict) -> str:
    base = result["optimizers"].get(BASE, {})
    rows = []
    for name, row in result["optimizers"].items():
        final = f"{_fmt(row['final'])} ± {_fmt(row.get('final_std'), 2)}" if math.isfinite(row["final"]) else "-"
        vs_base = (row.get("opt_step_mean_ms") / base["opt_step_mean_ms"]
                   if row.get("opt_step_mean_ms") and base.get("opt_step_mean_ms") else None)
        rows.append([name, f"{row['best_lr']:.3g} (x{row['best_multiplier']:g})", final,
                     _fmt(row.get("steps_to_target")), _fmt(row.get("seconds_to_target"), 3), _lr_range(row),
                     _fmt(row.get("opt_step_ms"), 3), _fmt(row.get("opt_step_mean_ms"), 3),
                     f"{vs_base:.2f}x" if vs_base else "-"])
    header = ["optimizer", "best lr", "final val loss (3 seeds)", "steps to AdamW's", "s to AdamW's",
              f"lr within {ROBUST_NATS} nats", "opt.step ms (median)", "opt.step ms (mean)", "mean vs base"]
    return markdown_table(header, rows)


def grid_table(result: dict) -> str:
    mults = sorted({m for row in result["optimizers"].values() for m in row["grid"]})
    rows = []
    for name, row in result["optimizers"].items():
        best = row["best_multiplier"]
        cells = []
        for m in mults:
            value = row["grid"].get(m)
            text = "" if value is None else ("diverged" if not math.isfinite(value) else f"{value:.4f}")
            cells.append(f"**{text}**" if m == best and text else text)
        rows.append([name, *cells])
    return markdown_table(["optimizer (2-seed mean)", *[f"x{m:g}" for m in mults]], rows)


def gap_table(results: dict) -> str:
    rules = [r for r in RULES if any(r in res["gaps"] for res in results.values())]
    rows = []
    for key, res in results.items():
        rows.append([key, str(res["task"]["depth"]), _fmt(res["optimizers"].get(BASE, {}).get("final")),
                     *[(f"{res['gaps'][r]:+.3f}" if r in res["gaps"] else "") for r in rules]])
    return markdown_table(["task", "blocks", "base final", *[f"{r.removeprefix('steepest-lanton-')} - base" for r in rules]],
                          rows)


def write_plots(results: dict, out: Path) -> list[str]:
    """gap-vs-depth.png, lr-<task>.png and factors-<task>.png (needs matplotlib; [] without it)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    ladder = {k: r for k, r in results.items() if k.startswith("gpt-")}
    if any(r["gaps"] for r in ladder.values()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for rule in RULES:
            points = sorted((r["task"]["depth"], r["gaps"][rule]) for r in ladder.values() if rule in r["gaps"])
            if points:
                ax.plot(*zip(*points), marker="o", label=rule.removeprefix("steepest-lanton-"))
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("transformer blocks (width 96)")
        ax.set_ylabel("final val loss: rule - base (nats, tuned lr)")
        ax.set_title("LANTON's gap to its base against depth")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "gap-vs-depth.png", dpi=110)
        plt.close(fig)
        written.append("gap-vs-depth.png")
    for key, res in results.items():
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for name, row in res["optimizers"].items():
            points = sorted((row["lrs"][m], v) for m, v in row["grid"].items() if math.isfinite(v))
            if points:
                ax.plot(*zip(*points), marker="o", label=name.removeprefix("steepest-"))
        ax.set_xscale("log")
        ax.set_xlabel("peak lr")
        ax.set_ylabel("final val loss (2-seed mean)")
        ax.set_title(f"{key}: loss against lr")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"lr-{key}.png", dpi=110)
        plt.close(fig)
        written.append(f"lr-{key}.png")
        row = res["optimizers"].get("steepest-lanton-alpha-sqrt") or {}
        snapshots = [s for s in row.get("layer_stats", []) if s.get("layers")]
        hidden = [layer["parameter"] for layer in snapshots[0]["layers"] if layer["role"] == "hidden"] if snapshots else []
        if hidden:
            fig, ax = plt.subplots(figsize=(6.5, 4))
            for name in hidden:
                points = [(s["step"], next(layer["factor"] for layer in s["layers"] if layer["parameter"] == name))
                          for s in snapshots]
                ax.plot(*zip(*points), lw=1, label=name)
            ax.set_xlabel("step")
            ax.set_ylabel("lr factor")
            ax.set_title(f"{key}: alpha-sqrt's hidden-layer factors (seed 0, best lr)")
            if len(hidden) <= 12:
                ax.legend(fontsize=6, ncol=2)
            fig.tight_layout()
            fig.savefig(out / f"factors-{key}.png", dpi=110)
            plt.close(fig)
            written.append(f"factors-{key}.png")
    return written


def write_report(study: Study, results: dict, out: Path, seconds: float) -> Path:
    machine = machine_info()
    lines = ["# LANTON study", "",
             f"Machine: {machine.get('processor', '?')} ({machine.get('cpu_count', '?')} logical CPUs, "
             f"{machine.get('cpu_capability', '?')}), torch {machine.get('torch', '?')}, {study.threads or 'default'} "
             f"torch thread(s) per cell. Lr grid x{', x'.join(f'{m:g}' for m in study.grid)} of each optimizer's "
             f"base lr with seeds {', '.join(map(str, study.grid_seeds))}; the best multiplier (lowest 2-seed mean) "
             f"then ran seed(s) {', '.join(map(str, study.confirm_seeds))} too. The study's noise settings: "
             f"{STUDY_NOISE} (each variant changes one). Text: {study.corpus}. Timings were taken while other "
             f"cells ran beside them.",
             "", "## Gap to the base (tuned lr, final val loss, nats; negative: the rule wins)", "", gap_table(results), ""]
    for key, res in results.items():
        task = res["task"]
        lines += [f"## {key}", "",
                  f"{task['depth']} blocks, GPT options {task['gpt_options'] or 'of the suite'}, {task['steps']} steps "
                  f"of batch {task['batch_size']}, evaluation every {task['eval_every']} steps. AdamW's 3-seed final "
                  f"loss (the target): {_fmt(res['target'])}.", "", task_table(res), "", grid_table(res), ""]
    plots = write_plots(results, out)
    if plots:
        lines += ["## Plots", "", *[f"![{p}]({p})" for p in plots], ""]
    lines += [f"Study wall time (this invocation): {seconds:.0f} s."]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_study(study: Study, out: str | Path, jobs: int = 1, report_only: bool = False,
              show_progress: bool = False) -> dict:
    """Run (or resume) every task, ``jobs`` tasks at a time, then write ``report.md``,
    ``results.json`` and the plots into ``out``; return the analysed results."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if not report_only:
        # the longest tasks first, so that parallel jobs end together
        order = sorted(study.tasks, key=lambda t: -cost(t))
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for future in [pool.submit(run_task, study, task, out, show_progress) for task in order]:
                future.result()
    results = {task.key: analyse_task(study, task, out) for task in study.tasks}
    write_json_atomic(out / "results.json", {"study": {"grid": study.grid, "grid_seeds": study.grid_seeds,
                                                       "confirm_seeds": study.confirm_seeds,
                                                       "noise": STUDY_NOISE,
                                                       "peers": {n: STEEPEST_PEERS[n][1] for n in STEEPEST_PEERS
                                                                 if n.startswith("steepest-lanton")},
                                                       "base_lrs": {n: DEFAULT_LRS[n] for n in DEFAULT_LRS}},
                                              "tasks": results, "machine": machine_info()})
    write_report(study, results, out, time.perf_counter() - started)
    return results


def tiny_study(corpus: str = "shakespeare-char") -> Study:
    """The tiny study (``--smoke``): two tiny GPTs, a 2-point grid, in this process."""
    return Study(tasks=tiny_tasks(), grid=(0.5, 2.0), grid_seeds=(0, 1), confirm_seeds=(2,), threads=None,
                 isolate=False, corpus=corpus)


def describe(study: Study) -> str:
    """One line per task: its key, shape, steps and number of cells."""
    lines = []
    for task in study.tasks:
        grid = len([o for o in task.optimizers if o != "torch-muon"]) * len(study.grid) * len(study.grid_seeds)
        torch_cells = len(task.torch_muon_grid) * len(study.grid_seeds)
        confirm = (len(task.optimizers) + (1 if task.torch_muon_grid else 0)) * len(study.confirm_seeds)
        lines.append(f"{task.key}: {task.gpt_options or 'the suite GPT'}, {task.steps} steps, "
                     f"{grid + torch_cells + confirm} cells")
    return "\n".join(lines)


__all__ = ["CORE", "GRID", "RULES", "Study", "StudyTask", "default_tasks", "describe", "run_study", "tiny_study",
           "tiny_tasks"]
