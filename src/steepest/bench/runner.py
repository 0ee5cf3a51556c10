"""Run a benchmark suite: every (task, optimizer, learning rate, seed) cell, resumable.

A suite (:class:`SuiteConfig`, :mod:`.config`) names the tasks, the optimizers ("peers"), the learning-rate
multipliers applied to each optimizer's base lr (the same grid for everyone, e.g. x{0.5, 1, 2}),
the seeds and the budget (``smoke``, ``quick`` or ``full``, each task's :class:`Budget`). The runner

1. prepares every task in this process (downloads and verifies data once, before any training);
2. writes the plan (``plan.json``) into the run directory;
3. trains the pending cells, by default in one fresh Python process per (task, optimizer) pair
   (``python -m steepest.bench.worker``), so the process's peak resident set size is attributable
   to that optimizer on that task; each finished cell is saved at once (:mod:`.cells`);
4. loads every cell and summarizes them (:mod:`.summary`).

Re-running the same command finds the same run directory (its name holds a hash of the suite), skips
the finished cells and resumes with the first unfinished one. Within a cell, a partial checkpoint
(``SuiteConfig.checkpoint_every``, on by default; :mod:`.checkpoint`) lets that first unfinished cell
continue from its last saved step instead of starting over, with a bit-identical loss curve.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

from . import checkpoint as checkpoints
from .cells import Cell, CellStore, library_version, write_json_atomic
from .config import (FULL_OPTIMIZERS, QUICK_OPTIMIZERS, REFERENCES, SuiteConfig, base_lr,  # noqa: F401
                     default_run_dir)
from .environment import machine_info
from .peers import PEER_NAMES, PeerUnavailable, build_peer, unavailable_reason
from .summary import summarize
from .tasks import Budget, Task, make_task, task_from_spec
from .tasks.char_lm import CharLMTask
from .train import train_trial

def plan_cells(config: SuiteConfig, tasks: dict[str, Task], optimizers: list[str]) -> list[Cell]:
    """Every cell of the suite, ordered task, optimizer, lr multiplier, seed (with ``diagnostics``,
    the first seed of each lr multiplier records them)."""
    cells = []
    for key, task in tasks.items():
        budget = config.task_budget(task).to_dict()
        for optimizer in optimizers:
            lr = base_lr(config, optimizer)
            for mult in config.lr_multipliers:
                for seed in config.seeds:
                    cells.append(Cell(task_key=key, task=task.spec(), optimizer=optimizer,
                                      lr_multiplier=float(mult), lr=lr * mult, seed=int(seed),
                                      budget=budget,
                                      diagnostics=bool(config.diagnostics and seed == config.seeds[0]),
                                      options=dict(config.peer_options.get(optimizer, {})),
                                      average=config.average))
    return cells


def run_cell(cell: Cell, task: Task, show_progress: bool = False,
             checkpoint: checkpoints.CellCheckpoint | None = None) -> dict:
    """Train one cell in this process and return its record (failures become records too); with
    ``checkpoint`` (:func:`.checkpoint.for_cell`) the cell saves itself as it goes and resumes from
    a valid partial checkpoint."""
    try:
        budget = Budget(**cell.budget)
        trial = task.trial(cell.seed, budget.batch_size)
        peer = build_peer(cell.optimizer, trial.model, lr=cell.lr, roles_override=trial.roles,
                          adamw_weight_decay=task.adamw_weight_decay, options=cell.options)
        label = f"{cell.optimizer} x{cell.lr_multiplier:g} s{cell.seed}"
        record = train_trial(task, trial, peer, budget, label=label, show_progress=show_progress,
                             diagnostics=cell.diagnostics, seed=cell.seed,
                             checkpoint=checkpoint, average=cell.average)
        record.update(step_covers=peer.step_covers, hyperparameters=peer.hyperparameters,
                      explanation=peer.explanation)
        return record
    except PeerUnavailable as exc:
        return {"status": "skipped", "reason": str(exc)}
    except Exception as exc:  # one broken optimizer must not lose the other results
        return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc()}


def run_pair(run_dir: Path, cells: list[Cell], task: Task, show_progress: bool = False,
             checkpoint_every: int | None = None) -> None:
    """Run the unfinished ``cells`` (one task and optimizer) in this process, saving each at once.

    Each cell checkpoints itself every ``checkpoint_every`` steps (``None``: after every evaluation;
    0: never) and resumes from its checkpoint; the checkpoint is deleted once the result is saved.
    ``cell_seconds`` is the wall time of this (last) segment of the cell."""
    store = CellStore(run_dir)
    for cell in store.pending(cells):
        started = time.time()
        record = run_cell(cell, task, show_progress, checkpoint=checkpoints.for_cell(run_dir, cell, checkpoint_every))
        record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())
        record["cell_seconds"] = time.time() - started
        store.save(cell, record)
        checkpoints.discard(checkpoints.partial_path(run_dir, cell))


def _child_env() -> dict:
    """The environment for a worker process, with this ``steepest`` package importable."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])  # the directory holding steepest/
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def run_pair_isolated(run_dir: Path, task_key: str, optimizer: str, show_progress: bool) -> str | None:
    """Run one (task, optimizer) pair in a fresh process; return a note when the worker failed."""
    command = [sys.executable, "-m", "steepest.bench.worker", "--run-dir", str(run_dir),
               "--task", task_key, "--optimizer", optimizer]
    if not show_progress:
        command.append("--quiet")
    done = subprocess.run(command, env=_child_env())
    if done.returncode != 0:
        return (f"the worker for {task_key} / {optimizer} exited with code {done.returncode}; "
                f"its unfinished cells are missing (rerun the same command to retry them)")
    return None


def load_tasks(config: SuiteConfig) -> dict[str, Task]:
    """The suite's tasks by key (``make_task`` on each name)."""
    tasks: dict[str, Task] = {}
    for text in config.tasks:
        task = make_task(text)
        if config.gpt_options and isinstance(task, CharLMTask):
            task = make_task(text, **config.gpt_options)
        if task.key in tasks:
            raise ValueError(f"two tasks share the key {task.key!r}: {text!r}")
        tasks[task.key] = task
    if config.gpt_options and not any(isinstance(t, CharLMTask) for t in tasks.values()):
        raise ValueError("GPT options (--hyper-connections) apply to the GPT tasks (shakespeare-char, "
                         "text:PATH), and the suite has none")
    return tasks


def run_suite(config: SuiteConfig, run_dir: str | Path, show_progress: bool = True) -> dict:
    """Run (or resume) the suite in ``run_dir`` and return the summarized results."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    tasks = load_tasks(config)
    data = {key: task.prepare() for key, task in tasks.items()}  # downloads once, before any worker
    notes = []
    optimizers = []
    for name in config.optimizers:
        reason = unavailable_reason(name)
        if reason:
            notes.append(f"{name} skipped: {reason}")
        else:
            optimizers.append(name)
    cells = plan_cells(config, tasks, optimizers)
    write_json_atomic(run_dir / "plan.json", {"config": config.to_dict(),
                                              "cells": [c.to_dict() for c in cells]})
    store = CellStore(run_dir)
    outdated = store.other_versions(cells)
    if outdated:
        versions = ", ".join(f"{n} by steepest {v}" for v, n in sorted(outdated.items()))
        notes.append(f"{sum(outdated.values())} finished cells were recorded by another steepest version "
                     f"({versions}) and ran again with {library_version()}, so no table mixes versions")
        if show_progress:
            print(f"steepest bench: {notes[-1]}", file=sys.stderr)
    pending = store.pending(cells)
    resumed = len(cells) - len(pending)
    if show_progress:
        print(f"steepest bench: {len(cells)} cells in {run_dir} ({resumed} already finished)",
              file=sys.stderr)
    pairs = list(dict.fromkeys((c.task_key, c.optimizer) for c in pending))
    for i, (key, optimizer) in enumerate(pairs, 1):
        if show_progress:
            left = sum(1 for c in pending if (c.task_key, c.optimizer) == (key, optimizer))
            print(f"[{i}/{len(pairs)}] {key} / {optimizer}: {left} cells", file=sys.stderr)
        if config.isolate:
            note = run_pair_isolated(run_dir, key, optimizer, show_progress)
            if note:
                notes.append(note)
        else:
            run_pair(run_dir, [c for c in pending if (c.task_key, c.optimizer) == (key, optimizer)],
                     tasks[key], show_progress, checkpoint_every=config.checkpoint_every)
    records = [(cell, store.load(cell)) for cell in cells]
    for cell, record in records:  # a run killed between saving a result and deleting its checkpoint
        if record is not None:
            checkpoints.discard(checkpoints.partial_path(run_dir, cell))
    if resumed:
        notes.append(f"resumed: {resumed} of {len(cells)} cells were finished by an earlier run of "
                     f"this command (their timings come from that run)")
    continued = [c.name for c, r in records if r and r.get("resumed_from_step")]
    if continued:
        notes.append(f"{len(continued)} cells continued from a partial checkpoint after an interruption "
                     f"({', '.join(continued[:3])}{', ...' if len(continued) > 3 else ''}): their loss "
                     f"curves are exact, their timings span several processes")
    restarted = [c.name for c, r in records if r and (r.get("checkpoint") or {}).get("notes")]
    if restarted:
        notes.append(f"{len(restarted)} cells had an unusable partial checkpoint and started over "
                     f"({', '.join(restarted[:3])}{', ...' if len(restarted) > 3 else ''}; see the "
                     f"cells' checkpoint notes)")
    if not config.isolate:
        notes.append("all cells ran in one process: peak RSS is cumulative, not per optimizer")
    machine = machine_info()
    if "torch-muon" in optimizers and machine["mkldnn_bf16_supported"] is False:
        notes.append("no native bf16 on this CPU: torch.optim.Muon's hard-coded bfloat16 Newton-Schulz "
                     "runs on a slow fallback path; steepest's ns_dtype=\"auto\" iterates in "
                     f"{machine['ns_dtype_auto']} here")
    elif "torch-muon" in optimizers and machine["mkldnn_bf16_supported"]:
        notes.append("oneDNN reports native bf16 on this CPU, so torch.optim.Muon's hard-coded bfloat16 "
                     "Newton-Schulz is fast here; on CPUs without AVX512-BF16/AMX it runs on a slow "
                     "fallback (~0.76 s per step for the GPT, docs/benchmarks.md); steepest's "
                     f"ns_dtype=\"auto\" iterates in {machine['ns_dtype_auto']} here")
    results = summarize(config, tasks, data, records, notes)
    results.update(machine=machine, run_dir=str(run_dir), total_wall_seconds=time.perf_counter() - started,
                   cells_total=len(cells), cells_resumed=resumed,
                   cell_seconds=sum(r.get("cell_seconds", 0.0) for _, r in records if r))
    return results


def worker_main(argv: list[str] | None = None) -> int:
    """``python -m steepest.bench.worker``: run one (task, optimizer) pair of a planned run."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m steepest.bench.worker",
                                     description="Run the unfinished cells of one task and optimizer "
                                                 "of a planned benchmark (used by `steepest bench`).")
    parser.add_argument("--run-dir", required=True, help="the run directory holding plan.json")
    parser.add_argument("--task", required=True, help="the task key")
    parser.add_argument("--optimizer", required=True, choices=PEER_NAMES)
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    plan = json.loads((run_dir / "plan.json").read_text(encoding="utf-8"))
    config = SuiteConfig.from_dict(plan["config"])
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    cells = [Cell(**c) for c in plan["cells"] if c["task_key"] == args.task and c["optimizer"] == args.optimizer]
    if not cells:
        print(f"no cells for task {args.task!r} and optimizer {args.optimizer!r} in {run_dir}", file=sys.stderr)
        return 2
    run_pair(run_dir, cells, task_from_spec(cells[0].task), show_progress=not args.quiet,
             checkpoint_every=config.checkpoint_every)
    return 0
