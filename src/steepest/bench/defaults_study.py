"""The defaults study: which settings should each preset have when the user passes none?

``steepest bench defaults`` trains every registered preset at a grid of candidate settings on every
task of the study, and scores each candidate by its **worst-case regret** across the tasks: on each
task, how far the candidate's final metric (mean over the seeds) is from the best that any candidate
of the same preset reached there. Regret is measured in the units the defaults promise:

- language models (``val_loss``): ``metric - best`` in nats, against a tolerance of
  :data:`LM_TOLERANCE` (0.05 nats);
- every other metric: ``metric / best - 1``, against :data:`REL_TOLERANCE` (10 %).

A candidate's score is the largest of its regrets divided by the tolerance on the **scored** tasks
(so a score <= 1 keeps the promise on each of them); the new default is the candidate with the
lowest score (ties: the lowest mean normalised regret). A candidate that diverges or fails on a
scored task scores infinity. Two refinements, both stated in the report next to the raw numbers:

- **Seed noise.** Where the seeds disagree by more than the tolerance, a smaller gap is no
  evidence: the tolerance of a task is at least twice the standard error of the difference of two
  seed means (:func:`seed_noise`, the median over the preset's candidates). On digits-cnn the test loss
  of one setting varies by up to 20x between two seeds, so this matters there; on the language
  models it rarely does. The report also gives every candidate's raw regret (tolerance alone).
- **Matrix sensing is reported, not scored.** A fixed-size step (spectral, sign) leaves matrix
  sensing at an error floor proportional to the lr after 600 steps, so its best candidate is
  always the smallest lr of the grid, the opposite of what the networks need; scoring it would
  pick defaults that train no network well. Its regret at the chosen default is in the report.

Tasks (:func:`default_tasks`): the quick suite's four (``shakespeare-char``, ``digits-cnn``,
``matrix-sensing``, ``matrix-sensing-asym``, at their quick budgets), a deeper GPT (8 blocks of
width 64, context 64, on Shakespeare's text) and the GPT at width 64 on a second real text
(``text:PATH``; by default the source of 24 standard-library modules of the running Python,
:func:`steepest.bench.data.python_source_text`). Seeds 0 and 1.

Candidates (:data:`GRIDS`): per preset the main lr, crossed with the fallback lr (the AdamW lr of
the Muon family, the sign lr of LANTON) and with momentum where it changes the algorithm's
behaviour (M-FAC, whose default has none); the preset's current default is always a candidate,
so the report says how much a change moves results. Muon also gets "tied" candidates: the hidden
update rescaled to AdamW's RMS (``adjust_lr="match_rms_adamw"``, arXiv 2502.16982) with one lr
for both, a setting meant to carry across model sizes by construction; and, since 0.11, candidates
whose embedding tables take their own AdamW lr (``embedding_lr`` 3e-3 or 1e-3; every other Muon
candidate has ``embedding_lr=None``, one lr for the whole AdamW side).

Every (task, preset, candidate family) is a benchmark suite (:func:`steepest.bench.runner.run_suite`)
in its own run directory, so an interrupted study resumes cell by cell; ``jobs`` suites run at a
time, each in single-threaded worker processes.
"""
from __future__ import annotations

import inspect
import math
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..optim.registry import REGISTRY
from .cells import CellStore, write_json_atomic
from .config import SuiteConfig
from .defaults_report import write_report
from .environment import machine_info
from .runner import load_tasks, plan_cells, run_suite
from .summary import final_metric

#: regret tolerance of language-model tasks (nats of validation loss)
LM_TOLERANCE = 0.05
#: regret tolerance of every other task (fraction of the best metric)
REL_TOLERANCE = 0.10
SEEDS = (0, 1)


@dataclass(frozen=True)
class Grid:
    """A preset's candidates: ``lrs`` crossed with ``fallbacks`` (values of ``fallback_key``) and
    with ``variants`` (extra keyword sets), plus ``extra`` candidates given whole (lr included)."""

    lrs: tuple[float, ...]
    fallback_key: str | None = None
    fallbacks: tuple[float, ...] = ()
    variants: tuple[dict, ...] = ({},)
    extra: tuple[dict, ...] = ()

    def candidates(self) -> list[dict]:
        out = []
        for variant in self.variants:
            for fallback in (self.fallbacks or (None,)):
                for lr in self.lrs:
                    options = {"lr": lr, **variant}
                    if fallback is not None:
                        options[self.fallback_key] = fallback
                    out.append(options)
        return out + [dict(c) for c in self.extra]


_MUON_FALLBACKS = (3e-4, 1e-3, 3e-3, 1e-2)
#: the candidate grids: lr ladders of ratio about 2 around the benchmark's tuned lr, reaching the
#: previous default where it was far from it, each extended by one step where the first pass found
#: a task's best on the ladder's edge (NorMuon 0.08, AuON 1.6, LANTON sign_lr 3e-3, Lion-K 0.12,
#: Signum 2e-3, M-FAC 6e-3), and Muon by two points between its first choice and the quick GPT's best
GRIDS: dict[str, Grid] = {
    "muon": Grid((0.01, 0.02, 0.04), "adamw_lr", _MUON_FALLBACKS, variants=({"embedding_lr": None},),
                 extra=(*({"lr": v, "adamw_lr": v, "adjust_lr": "match_rms_adamw", "embedding_lr": None}
                          for v in (3e-3, 1e-2)),
                        # between the first pass's choice (0.02, 1e-2) and the quick GPT's best settings
                        {"lr": 0.03, "adamw_lr": 1e-2, "embedding_lr": None},
                        {"lr": 0.02, "adamw_lr": 5e-3, "embedding_lr": None},
                        # 0.11: the embedding tables at their own AdamW lr (docs/benchmarks.md,
                        # "Embedding tables": the GPTs' position tables want less than 1e-2)
                        *({"lr": lr, "adamw_lr": 1e-2, "embedding_lr": e} for lr, e in ((0.02, 1e-3), (0.02, 3e-3),
                                                                                        (0.03, 3e-3))))),
    "normuon": Grid((0.02, 0.04, 0.08), "adamw_lr", (1e-3, 3e-3, 1e-2)),
    "auon": Grid((0.2, 0.4, 0.8, 1.6), "adamw_lr", (3e-3, 1e-2)),
    "hybrid_auon": Grid((0.2, 0.4, 0.8, 1.6), "adamw_lr", (3e-3, 1e-2)),
    "lanton": Grid((0.02, 0.04, 0.08), "sign_lr", (5e-4, 1.5e-3, 3e-3)),
    "scion": Grid((2.0 ** -7, 2.0 ** -6, 2.0 ** -5, 2.0 ** -4)),
    "lion": Grid((1e-4, 3e-4, 6e-4, 1.2e-3)),
    "lion_k": Grid((0.015, 0.03, 0.06, 0.12)),
    "signum": Grid((1e-4, 2.5e-4, 5e-4, 1e-3, 2e-3)),
    "diffgrad": Grid((1e-3, 2e-3, 4e-3, 8e-3)),
    "mfac": Grid((1e-3, 3e-3, 6e-3), variants=({"momentum": 0.0}, {"momentum": 0.5})),
    "regnewton": Grid((0.1, 0.3, 1.0, 3.0)),
}
#: the constructor keywords whose defaults the study chooses
STUDIED_KEYS = ("lr", "adamw_lr", "embedding_lr", "sign_lr", "momentum", "adjust_lr")
#: the defaults of steepest 0.9, before this study chose new ones (always candidates, so the report
#: says how far the change moved each preset)
PREVIOUS_DEFAULTS: dict[str, dict] = {
    "muon": {"lr": 0.02, "adamw_lr": 3e-4, "embedding_lr": None, "momentum": 0.95, "adjust_lr": "original"},
    "normuon": {"lr": 0.02, "adamw_lr": 3e-4, "momentum": 0.95, "adjust_lr": None},
    "auon": {"lr": 0.055, "adamw_lr": 3e-4, "momentum": 0.95},
    "hybrid_auon": {"lr": 0.055, "adamw_lr": 3e-4, "momentum": 0.95},
    "lanton": {"lr": 0.04, "sign_lr": 5e-4, "momentum": 0.95},
    "scion": {"lr": 2.0 ** -6, "momentum": 0.9},
    "lion": {"lr": 1e-4},
    "lion_k": {"lr": 1e-4},
    "signum": {"lr": 1e-4, "momentum": 0.9},
    "diffgrad": {"lr": 1e-3},
    "mfac": {"lr": 1e-3, "momentum": 0.0},
    # new in 0.10, so no 0.9 default: its first default, the paper's step lr 1
    "regnewton": {"lr": 1.0, "momentum": 0.0},
}


def current_defaults(preset: str) -> dict:
    """The preset's constructor defaults of :data:`STUDIED_KEYS` (what a user gets today)."""
    params = inspect.signature(REGISTRY[preset].cls.__init__).parameters
    return {k: params[k].default for k in STUDIED_KEYS if k in params}


def candidates(preset: str) -> list[dict]:
    """The preset's candidates, its current and its 0.9 defaults included (each a full set of the
    studied keys)."""
    defaults = current_defaults(preset)
    out = []
    for options in [*GRIDS[preset].candidates(), {}, PREVIOUS_DEFAULTS.get(preset, {})]:
        full = {**defaults, **options}
        if full not in out:
            out.append(full)
    return out


@dataclass(frozen=True)
class DefaultsTask:
    """One task of the study: a benchmark task name and the GPT shape when it is a GPT."""

    key: str
    task: str
    gpt_options: dict = field(default_factory=dict)
    #: whether the task's regret counts in a candidate's score (else it is reported only)
    scored: bool = True

    @property
    def language_model(self) -> bool:
        return self.task == "shakespeare-char" or self.task.startswith("text:")


def default_tasks(text: str | None = None) -> list[DefaultsTask]:
    """The quick suite's tasks, the deeper GPT and the second text (``text``, default the Python
    source of :func:`steepest.bench.data.python_source_text`)."""
    if text is None:
        from .data import python_source_text

        text = str(python_source_text())
    small = {"d_model": 64, "ctx": 64}
    return [DefaultsTask("shakespeare-char", "shakespeare-char"),
            DefaultsTask("gpt-8x64", "shakespeare-char", {"n_layer": 8, **small}),
            DefaultsTask(f"text-{Path(text).stem}", f"text:{text}", {"n_layer": 4, **small}),
            DefaultsTask("digits-cnn", "digits-cnn"),
            DefaultsTask("matrix-sensing", "matrix-sensing", scored=False),
            DefaultsTask("matrix-sensing-asym", "matrix-sensing-asym", scored=False)]


def tiny_tasks(text: str | None = None) -> list[DefaultsTask]:
    """Two tiny tasks for ``--smoke`` (checks that the study runs; the numbers mean nothing): a
    one-block GPT on ``text`` (default Shakespeare's) and matrix sensing."""
    corpus = f"text:{text}" if text else "shakespeare-char"
    return [DefaultsTask("gpt-tiny", corpus, {"n_layer": 1, "d_model": 16, "n_head": 2, "ctx": 16,
                                              "eval_batches": 1}),
            DefaultsTask("matrix-sensing", "matrix-sensing")]


def _slug(options: dict) -> str:
    return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(options.items())) or "lr"


@dataclass
class DefaultsStudy:
    """The study: its tasks, presets, seeds, budget and how the cells run."""

    tasks: list[DefaultsTask] = field(default_factory=default_tasks)
    presets: tuple[str, ...] = tuple(GRIDS)
    seeds: tuple[int, ...] = SEEDS
    budget: str = "quick"
    threads: int | None = 1
    isolate: bool = True
    #: candidates per preset (default :func:`candidates`); the smoke study trims them
    grids: dict[str, list[dict]] = field(default_factory=dict)

    def candidates(self, preset: str) -> list[dict]:
        return self.grids.get(preset) or candidates(preset)

    def suites(self, task: DefaultsTask, preset: str) -> dict[str, tuple[SuiteConfig, list[dict]]]:
        """``{directory: (suite, its candidates)}``: one suite per candidate family (the candidates
        that differ only in lr), whose lr list is the family's lrs."""
        families: dict[str, list[dict]] = {}
        for options in self.candidates(preset):
            rest = {k: v for k, v in options.items() if k != "lr"}
            families.setdefault(_slug(rest), []).append(options)
        peer = f"steepest-{preset.replace('_', '-')}"
        out = {}
        for slug, members in families.items():
            rest = {k: v for k, v in members[0].items() if k != "lr"}
            config = SuiteConfig(budget=self.budget, tasks=[task.task], optimizers=[peer],
                                 lr_multipliers=[m["lr"] for m in members], lrs={peer: 1.0},
                                 seeds=list(self.seeds), threads=self.threads, isolate=self.isolate,
                                 gpt_options=dict(task.gpt_options), checkpoint_every=0,
                                 peer_options={peer: rest} if rest else {})
            out[slug] = (config, members)
        return out

    def jobs(self) -> list[tuple[DefaultsTask, str, str, SuiteConfig]]:
        return [(task, preset, slug, config) for task in self.tasks for preset in self.presets
                for slug, (config, _) in self.suites(task, preset).items()]


def task_results(study: DefaultsStudy, task: DefaultsTask, preset: str, out: Path) -> list[dict]:
    """Every candidate's seed-mean final metric on ``task`` (infinite when a seed diverged, failed
    or is missing), from the saved cells."""
    rows = []
    for slug, (config, members) in study.suites(task, preset).items():
        tasks = load_tasks(config)
        metric = next(iter(tasks.values())).metric
        store = CellStore(out / task.key / preset / slug)
        by_lr: dict[float, list[float]] = {}
        for cell in plan_cells(config, tasks, config.optimizers):
            by_lr.setdefault(cell.lr_multiplier, []).append(final_metric(store.load(cell), metric))
        for options in members:
            values = by_lr.get(float(options["lr"]), [math.inf])
            mean = statistics.fmean(values) if all(math.isfinite(v) for v in values) else math.inf
            rows.append({"options": options, "metric": metric, "value": mean, "seeds": values})
    return rows


def regret(value: float, best: float, language_model: bool, noise: float = 0.0) -> float:
    """The regret of ``value`` against ``best``, divided by its tolerance (see the module docstring).

    With ``noise`` (the standard error of the difference of two seed means, in the metric's units)
    the tolerance is at least ``2 * noise``: a gap the seeds cannot tell from zero counts less."""
    if not math.isfinite(value) or not math.isfinite(best):
        return math.inf
    tolerance = LM_TOLERANCE if language_model else REL_TOLERANCE * best
    tolerance = max(tolerance, 2.0 * noise)
    if tolerance <= 0:
        return math.inf if value > best else 0.0
    return (value - best) / tolerance


def seed_noise(rows: list[dict]) -> float:
    """The standard error of the difference between two candidates' seed means on one task: the
    median over the candidates that finished (``rows`` of :func:`task_results`) of the seeds'
    variance (the median, so that a few erratic candidates do not widen every other's tolerance),
    times ``2 / seeds``, square-rooted."""
    variances, seeds = [], 0
    for row in rows:
        values = row["seeds"]
        if len(values) > 1 and all(math.isfinite(v) for v in values):
            variances.append(statistics.variance(values))
            seeds = len(values)
    return math.sqrt(statistics.median(variances) * 2.0 / seeds) if variances else 0.0


def analyse_preset(study: DefaultsStudy, preset: str, out: Path) -> dict:
    """The preset's candidates with their value and regret on every task, the minimax choice and
    the current default's regret."""
    per_task = {task.key: task_results(study, task, preset, out) for task in study.tasks}
    lm = {task.key: task.language_model for task in study.tasks}
    scored = [task.key for task in study.tasks if task.scored] or [task.key for task in study.tasks]
    noise = {key: seed_noise(rows) for key, rows in per_task.items()}
    cands = study.candidates(preset)
    table = []
    for options in cands:
        row = {"options": options, "tasks": {}}
        for key, rows in per_task.items():
            best = min(r["value"] for r in rows)
            value = next(r["value"] for r in rows if r["options"] == options)
            row["tasks"][key] = {"value": value, "best": best, "raw_regret": regret(value, best, lm[key]),
                                 "regret": regret(value, best, lm[key], noise[key])}
        regrets = [row["tasks"][k]["regret"] for k in scored]
        row["score"] = max(regrets)
        row["raw_score"] = max(t["raw_regret"] for t in row["tasks"].values())
        row["mean_regret"] = statistics.fmean(regrets) if all(math.isfinite(r) for r in regrets) else math.inf
        table.append(row)
    chosen = min(table, key=lambda r: (r["score"], r["mean_regret"]))
    current = next((r for r in table if r["options"] == current_defaults(preset)), None)
    previous = {**current_defaults(preset), **PREVIOUS_DEFAULTS.get(preset, {})}
    old = next((r for r in table if r["options"] == previous), None)
    best_options = {key: min(rows, key=lambda r: r["value"])["options"] for key, rows in per_task.items()}
    return {"preset": preset, "candidates": table, "chosen": chosen, "current": current, "previous": old,
            "best": best_options, "noise": noise, "scored": scored,
            "language_model": lm}


def run_study(study: DefaultsStudy, out: str | Path, jobs: int = 1, report_only: bool = False,
              show_progress: bool = False) -> dict:
    """Run (or resume) every suite, ``jobs`` at a time (the GPT tasks first), then write
    ``report.md`` and ``results.json`` into ``out``; return the analysed results."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if not report_only:
        work = study.jobs()
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = [pool.submit(run_suite, config, out / task.key / preset / slug, False)
                       for task, preset, slug, config in work]
            for i, future in enumerate(futures, 1):
                future.result()
                if show_progress:
                    task, preset, slug, _ = work[i - 1]
                    print(f"[{i}/{len(work)}] {task.key} / {preset} / {slug} "
                          f"({time.perf_counter() - started:.0f} s)", flush=True)
    results = {preset: analyse_preset(study, preset, out) for preset in study.presets}
    write_json_atomic(out / "results.json", {
        "study": {"tasks": [{"key": t.key, "task": t.task, "gpt_options": t.gpt_options} for t in study.tasks],
                  "seeds": study.seeds, "budget": study.budget, "lm_tolerance": LM_TOLERANCE,
                  "rel_tolerance": REL_TOLERANCE},
        "presets": results, "machine": machine_info()})
    write_report(study, results, out, time.perf_counter() - started, LM_TOLERANCE, REL_TOLERANCE)
    return results


def tiny_study(text: str | None = None) -> DefaultsStudy:
    """The smoke study: two tiny tasks (:func:`tiny_tasks`), two presets, three candidates each, in
    this process."""
    grids = {"muon": [{**current_defaults("muon"), "lr": lr, "adamw_lr": a} for lr, a in
                      ((0.02, 3e-4), (0.04, 3e-4), (0.02, 3e-3))],
             "lion": [{"lr": lr} for lr in (1e-4, 3e-4, 1e-3)]}
    return DefaultsStudy(tasks=tiny_tasks(text), presets=("muon", "lion"), budget="smoke", threads=None,
                         isolate=False, grids=grids)


def describe(study: DefaultsStudy) -> str:
    """One line per preset: its candidates and cells."""
    lines = []
    for preset in study.presets:
        n = len(study.candidates(preset))
        lines.append(f"{preset}: {n} candidates x {len(study.tasks)} tasks x {len(study.seeds)} seeds = "
                     f"{n * len(study.tasks) * len(study.seeds)} cells")
    return "\n".join(lines)


__all__ = ["GRIDS", "LM_TOLERANCE", "REL_TOLERANCE", "DefaultsStudy", "DefaultsTask", "Grid", "analyse_preset",
           "candidates", "current_defaults", "default_tasks", "describe", "regret", "run_study", "tiny_study"]
