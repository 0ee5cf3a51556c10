"""Tests of the benchmark package (steepest.bench) and the command line.

Shared helpers live here: a deterministic small text file and a tiny model configuration, so that
end-to-end runs finish in seconds and never touch the network; and one cell's training as
``run_cell`` does it, which can die at a chosen step (the crash-safety and averaging tests).
"""
from __future__ import annotations

import random
from pathlib import Path

from steepest.bench.peers import build_peer
from steepest.bench.tasks import Budget
from steepest.bench.train import train_trial

TINY_MODEL = {"n_layer": 1, "d_model": 32, "n_head": 2, "ctx": 32}


def write_tiny_text(path: Path, n_lines: int = 400, seed: int = 0) -> Path:
    """A deterministic pseudo-English text (about 25 kB, a vocabulary of about 25 characters)."""
    rng = random.Random(seed)
    words = ("to be or not that is the question whether tis nobler in mind suffer slings and "
             "arrows of outrageous fortune").split()
    lines = [" ".join(rng.choice(words) for _ in range(10)).capitalize() + "." for _ in range(n_lines)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class Interrupted(Exception):
    pass


def train_cell(task, cell, checkpoint=None, stop_at: int | None = None) -> dict:
    """Train ``cell`` (as ``run_cell`` does); with ``stop_at``, die just before that step's update."""
    budget = Budget(**cell.budget)
    trial = task.trial(cell.seed, budget.batch_size)
    peer = build_peer(cell.optimizer, trial.model, lr=cell.lr, roles_override=trial.roles,
                      adamw_weight_decay=task.adamw_weight_decay)
    if stop_at is not None:
        real, calls = peer.step, []

        def step():
            calls.append(1)
            if len(calls) == stop_at:
                raise Interrupted
            real()

        peer.step = step
    return train_trial(task, trial, peer, budget, diagnostics=cell.diagnostics, seed=cell.seed,
                       checkpoint=checkpoint, average=cell.average)
