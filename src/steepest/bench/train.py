"""Train one trial with one optimizer and measure it: the loop every benchmark cell runs.

Protocol (the same for every optimizer on a task, so that differences are paired): the trial's own
initial weights and batch stream (both functions of the seed); one ``LambdaLR`` per underlying
optimizer with the task budget's warm-up + cosine multiplier (:func:`lr_multiplier`), so every
parameter group follows the same schedule; evaluation at step 0, every ``eval_every`` steps and at
the last step.

Timing uses ``time.perf_counter`` around three spans of each step: the whole step (zero_grad,
forward, backward, optimizer step, schedule), forward+backward, and ``peer.step()`` alone. Records
keep every per-step time; summaries use medians over the steps after the first ``timing_skip``
(warm-up). Evaluation time is excluded from the training clock ``train_seconds``.

A non-finite training loss, or a non-finite gradient that a steepest optimizer refuses
(``FloatingPointError``), ends the cell early with status ``diverged``; its metric is then treated
as infinitely bad when learning rates are compared.
"""
from __future__ import annotations

import math
import resource
import statistics
import sys
import time

import torch

from .peers import Peer, state_bytes
from .progress import Progress
from .tasks import Budget, Task, Trial, lr_multiplier

MIB = 1024.0 * 1024.0
TIMING_SKIP = 3


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024.0  # bytes on macOS, KiB on Linux


def median_ms(values: list[float], skip: int = TIMING_SKIP) -> float | None:
    """The median of ``values`` (seconds) after the first ``skip``, in milliseconds."""
    kept = values[skip:] if len(values) > skip else values
    return statistics.median(kept) * 1000.0 if kept else None


def layer_stats(peer: Peer) -> list[dict]:
    """``layer_stats()`` of the peer's noise-adaptive optimizers, trimmed to name, noise and factor."""
    rows = []
    for opt in peer.optimizers:
        for row in getattr(opt, "layer_stats", lambda: [])():
            rows.append({"parameter": row["parameter"], "role": row["role"], "noise": row["noise"],
                         "factor": row["factor"]})
    return rows


def train_trial(task: Task, trial: Trial, peer: Peer, budget: Budget, label: str = "",
                show_progress: bool = False) -> dict:
    """Train ``trial.model`` with ``peer`` for ``budget.steps`` steps and return the measurements.

    The record holds ``status`` (``ok`` or ``diverged``), ``curve`` (one dict per evaluation:
    ``step``, ``train_seconds`` and every metric of :meth:`Trial.evaluate`), ``final`` (the last
    evaluation's metrics), per-step losses and times, median times, the exact optimizer state size
    and the process's peak RSS.
    """
    def schedule(step: int) -> float:
        return lr_multiplier(step, budget.steps, budget.warmup, budget.final_lr_fraction)

    schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, schedule) for opt in peer.optimizers]
    evals = set(budget.eval_steps())
    curve = [{"step": 0, "train_seconds": 0.0, **trial.evaluate()}]
    snapshots: list[dict] = []
    step_s, fwd_bwd_s, opt_s, losses = [], [], [], []
    train_seconds = 0.0
    diverged = False
    bar = Progress(label or task.key, budget.steps, enabled=show_progress)
    for step in range(1, budget.steps + 1):
        t0 = time.perf_counter()
        peer.zero_grad(set_to_none=True)
        loss = trial.train_loss()
        loss.backward()
        t1 = time.perf_counter()
        try:
            peer.step()
            refused = False
        except FloatingPointError:  # steepest refuses a non-finite gradient: the run has diverged
            refused = True
        t2 = time.perf_counter()
        for scheduler in schedulers:
            scheduler.step()
        t3 = time.perf_counter()
        step_s.append(t3 - t0)
        fwd_bwd_s.append(t1 - t0)
        opt_s.append(t2 - t1)
        train_seconds += t3 - t0
        value = loss.item()
        losses.append(value)
        diverged = refused or not math.isfinite(value)
        if step in evals or diverged:
            metrics = trial.evaluate()
            curve.append({"step": step, "train_seconds": train_seconds, **metrics})
            rows = layer_stats(peer)
            if rows:
                snapshots.append({"step": step, "layers": rows})
            bar.update(step, value, metrics[task.metric])
        else:
            bar.update(step, value)
        if diverged:
            break
    bar.close()
    final = {k: v for k, v in curve[-1].items() if k not in ("step", "train_seconds")}
    return {
        "status": "diverged" if diverged else "ok",
        "steps_done": len(step_s),
        "curve": curve,
        "final": final,
        "train_loss": losses,
        "layer_stats": snapshots,
        "train_seconds": train_seconds,
        "step_ms": median_ms(step_s),
        "fwd_bwd_ms": median_ms(fwd_bwd_s),
        "opt_step_ms": median_ms(opt_s),
        "per_step_ms": {"step": [round(t * 1000.0, 3) for t in step_s],
                        "fwd_bwd": [round(t * 1000.0, 3) for t in fwd_bwd_s],
                        "opt_step": [round(t * 1000.0, 3) for t in opt_s]},
        "state_mib": state_bytes(peer.optimizers) / MIB,
        "peak_rss_mib": peak_rss_mib(),
        "torch_threads": torch.get_num_threads(),
    }
