"""Train one trial with one optimizer and measure it: the loop every benchmark cell runs.

Protocol (the same for every optimizer on a task, so that differences are paired): the trial's own
initial weights and batch stream (both functions of the seed); one ``LambdaLR`` per underlying
optimizer with the task budget's warm-up + cosine multiplier (:func:`lr_multiplier`), so every
parameter group follows the same schedule; evaluation at step 0, every ``eval_every`` steps and at
the last step.

Timing uses ``time.perf_counter`` around three spans of each step: the whole step (zero_grad,
forward, backward, optimizer step, schedule), forward+backward (with the second batch's forward
and backward of an optimizer that asks for one, :meth:`Peer.needs_second_grads`), and
``peer.step()`` alone. Records
keep every per-step time; summaries use medians over the steps after the first ``timing_skip``
(warm-up). Evaluation time is excluded from the training clock ``train_seconds``.

With ``diagnostics=True`` the trial also records, at step 0 and at every evaluation, each hidden
layer's sharpness (top eigenvalue of its Hessian block on the next training batch, by
:data:`DIAGNOSTIC_ITERS` power iterations) and gradient noise (``||G_a - G_b||`` of two independent
batches, in the dual norm that steepest's default roles give the layer: nuclear for hidden matrices),
through :func:`steepest.diagnostics.layers.layer_checkpoint`. The batch stream is rewound afterwards,
so the training curve is the one an undiagnosed run gives; the time goes to ``diagnostics_seconds``,
not to the training clock.

With ``average`` (``"ema"`` or ``"swa"``, the suite's ``--average``) the trial keeps a
``torch.optim.swa_utils.AveragedModel`` of the model next to it (:class:`Averager`): ``swa`` is the
equal-weight mean of the iterates after the first :data:`SWA_START` of the steps, ``ema`` the
exponential moving average (``get_ema_multi_avg_fn``) with decay ``1 - 1/h`` over a horizon of
``h`` = :data:`EMA_HORIZON` of the steps, from the first step. The training trajectory (and every raw
number) is the one an unaveraged run gives: no ``SWALR``, the task's schedule stays. At every
evaluation at which the average exists, the averaged weights are swapped into the model, evaluated
by the task's own ``evaluate`` and swapped back (buffers stay the raw model's); the record's
``averaged`` holds that curve and its ``final`` metrics. Averaging costs one parameter copy of memory
and one ``lerp`` per parameter and step (inside the training clock).

A non-finite training loss, or a non-finite gradient that a steepest optimizer refuses
(``FloatingPointError``), ends the cell early with status ``diverged``; its metric is then treated
as infinitely bad when learning rates are compared.

With a ``checkpoint`` (:class:`steepest.bench.checkpoint.CellCheckpoint`, which the runner gives
every cell by default) the loop saves its whole state atomically every few steps and, when a
usable checkpoint of the same cell exists, resumes from it at the saved step + 1: the per-step
losses and the evaluation curve then equal an uninterrupted run's bit for bit
(:mod:`steepest.bench.checkpoint`). Saving time is excluded from ``train_seconds``.
"""
from __future__ import annotations

import copy
import math
import resource
import statistics
import sys
import time

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..diagnostics.layers import dual_norm_label, hidden_layers, layer_checkpoint, layer_geometries
from ..factory import for_model
from .checkpoint import CellCheckpoint, capture_state, restore_state
from .config import AVERAGES
from .peers import Peer, state_bytes
from .progress import Progress
from .tasks import Budget, Task, Trial, lr_multiplier

MIB = 1024.0 * 1024.0
TIMING_SKIP = 3
#: power iterations per layer for the ``diagnostics`` sharpness
DIAGNOSTIC_ITERS = 10


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024.0  # bytes on macOS, KiB on Linux


def mean_ms(values: list[float], skip: int = TIMING_SKIP) -> float | None:
    """The mean of ``values`` (seconds) after the first ``skip``, in milliseconds: the amortized
    cost of work done at some steps only (LANTON's noise measurement every ``noise_every`` steps),
    which the median does not show."""
    kept = values[skip:] if len(values) > skip else values
    return statistics.fmean(kept) * 1000.0 if kept else None


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


def reference_geometries(model: torch.nn.Module, layers, roles=None) -> dict:
    """``{layer: geometry}`` that steepest's default roles give each layer (``for_model(model,
    "muon")``: spectral for hidden matrices and convolutions, so noise is a nuclear norm). The
    benchmark's panel measures every optimizer's layers in these norms, so that torch.optim.AdamW,
    torch.optim.Muon and the steepest presets are compared in the same units."""
    probe = for_model(model, "muon", roles=roles)
    return layer_geometries([probe], model, layers)


class _Diagnostics:
    """Per-layer sharpness and noise snapshots of one trial (see the module docstring)."""

    def __init__(self, trial: Trial, seed: int) -> None:
        self.trial, self.seed = trial, seed
        self.layers = hidden_layers(trial.model)
        self.geoms = reference_geometries(trial.model, self.layers, getattr(trial, "roles", None))
        self.norms = {n: dual_norm_label(g) for n, g in self.geoms.items()}
        self.snapshots: list[dict] = []
        self.seconds = 0.0

    def record(self, step: int) -> None:
        t0 = time.perf_counter()
        rows = layer_checkpoint(self.trial, self.trial.model, self.layers, self.geoms, DIAGNOSTIC_ITERS,
                                seed=self.seed, orthogonality=False)
        self.snapshots.append({"step": step, "layers": {n: {"sharpness": r["sharpness"], "noise": r["noise"]}
                                                         for n, r in rows.items()}})
        self.seconds += time.perf_counter() - t0

    def result(self) -> dict:
        return {"layers": self.layers, "norms": self.norms, "iters": DIAGNOSTIC_ITERS,
                "snapshots": self.snapshots, "seconds": self.seconds}


def second_gradients(trial: Trial) -> dict:
    """``{param: gradient}`` of the trial's second batch (:meth:`Trial.second_loss`), for optimizers
    that estimate gradient noise from a second gradient at the same point; the parameters'
    ``.grad`` are left as they are."""
    params = [p for p in trial.model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(trial.second_loss(), params, allow_unused=True)
    return {p: g for p, g in zip(params, grads) if g is not None}


#: iterate averaging (``--average``): SWA averages the iterates after this fraction of the steps; EMA's
#: horizon is this fraction of the steps (decay ``1 - 1/horizon``)
SWA_START = 0.75
EMA_HORIZON = 0.1


class Averager:
    """An ``AveragedModel`` of the trial's model (``kind``: ``"swa"`` or ``"ema"``, see the module
    docstring) and its evaluations."""

    def __init__(self, kind: str, model: torch.nn.Module, steps: int) -> None:
        if kind not in AVERAGES:
            raise ValueError(f"unknown average {kind!r}; choose from {', '.join(AVERAGES)}")
        self.kind = kind
        if kind == "ema":
            self.decay = 1.0 - 1.0 / max(1.0, EMA_HORIZON * steps)
            self.start = 1
            self.model = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(self.decay))
        else:
            self.decay = None
            self.start = math.floor(SWA_START * steps) + 1
            self.model = AveragedModel(model)  # equal weights: the running mean of the iterates
        self.curve: list[dict] = []

    def update(self, step: int, model: torch.nn.Module) -> None:
        if step >= self.start:
            self.model.update_parameters(model)

    @property
    def ready(self) -> bool:
        return int(self.model.n_averaged) > 0

    @torch.no_grad()
    def evaluate(self, trial: Trial) -> dict:
        """The task's metrics of the averaged weights: swapped into ``trial.model``, evaluated, and
        the raw weights put back exactly."""
        params = list(trial.model.parameters())
        raw = [p.detach().clone() for p in params]
        for p, a in zip(params, self.model.module.parameters()):
            p.copy_(a)
        try:
            return trial.evaluate()
        finally:
            for p, r in zip(params, raw):
                p.copy_(r)

    def record(self, step: int, trial: Trial) -> None:
        if self.ready:
            self.curve.append({"step": step, **self.evaluate(trial)})

    def result(self) -> dict:
        final = {k: v for k, v in self.curve[-1].items() if k != "step"} if self.curve else None
        return {"kind": self.kind, "start_step": self.start, "ema_decay": self.decay,
                "updates": int(self.model.n_averaged), "curve": self.curve, "final": final}


#: the loop's per-step records, saved in a checkpoint and restored on resume
_RECORD_KEYS = ("curve", "layer_stats", "train_loss", "step_s", "fwd_bwd_s", "opt_s", "train_seconds",
                "segments")


def _resume(checkpoint: CellCheckpoint, trial: Trial, peer: Peer, schedulers: list,
            diag: _Diagnostics | None, averager: Averager | None = None) -> tuple[int, dict] | None:
    """Restore the cell from its checkpoint: ``(step reached, records)``, or ``None`` (start over,
    with a note when a checkpoint existed but was not usable)."""
    payload = checkpoint.load()
    if payload is None:
        return None
    records = payload["records"]
    try:
        if any(key not in records for key in _RECORD_KEYS) or len(records["train_loss"]) != payload["step"] \
                or (diag is not None) != isinstance(records.get("diagnostics"), dict) \
                or (averager is not None) != isinstance(records.get("averaged_state"), dict):
            raise ValueError("its records are incomplete")
        averaged = None
        if averager is not None:  # loaded into a copy first: a misfit changes nothing
            averaged = copy.deepcopy(averager.model)
            averaged.load_state_dict(records["averaged_state"])
            curve = list(records["averaged_curve"])
        restore_state(trial, peer, schedulers, payload["state"])
        if averaged is not None:
            averager.model, averager.curve = averaged, curve
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        checkpoint.note(f"partial checkpoint {checkpoint.path} cannot be resumed ({exc}); "
                         f"the cell started over")
        return None
    if diag is not None:
        diag.snapshots = list(records["diagnostics"]["snapshots"])
        diag.seconds = float(records["diagnostics"]["seconds"])
    checkpoint.saves += int(records.get("checkpoint_saves", 0)) + 1  # + the save resumed from
    checkpoint.seconds += float(records.get("checkpoint_seconds", 0.0))
    return payload["step"], records


def train_trial(task: Task, trial: Trial, peer: Peer, budget: Budget, label: str = "",
                show_progress: bool = False, diagnostics: bool = False, seed: int = 0,
                checkpoint: CellCheckpoint | None = None, average: str | None = None) -> dict:
    """Train ``trial.model`` with ``peer`` for ``budget.steps`` steps and return the measurements.

    The record holds ``status`` (``ok`` or ``diverged``), ``curve`` (one dict per evaluation:
    ``step``, ``train_seconds`` and every metric of :meth:`Trial.evaluate`), ``final`` (the last
    evaluation's metrics), per-step losses and times, median times, the exact optimizer state size
    and the process's peak RSS; with ``diagnostics``, ``diagnostics`` holds the per-layer snapshots
    (``seed`` seeds the power iterations' start vectors). With ``checkpoint`` the loop saves and
    resumes as the module docstring says, and the record adds ``resumed_from_step`` (``None`` for a
    cell trained in one go) and ``checkpoint`` (interval, saves, their seconds, segments, notes).
    With ``average`` (``"ema"`` or ``"swa"``) the record adds ``averaged`` (:class:`Averager`).
    """
    def schedule(step: int) -> float:
        return lr_multiplier(step, budget.steps, budget.warmup, budget.final_lr_fraction)

    schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, schedule) for opt in peer.optimizers]
    evals = set(budget.eval_steps())
    diag = _Diagnostics(trial, seed) if diagnostics else None
    averager = Averager(average, trial.model, budget.steps) if average else None
    resumed = _resume(checkpoint, trial, peer, schedulers, diag, averager) if checkpoint is not None else None
    if resumed is None:
        start = 1
        rec = {"curve": [{"step": 0, "train_seconds": 0.0, **trial.evaluate()}], "layer_stats": [],
               "train_loss": [], "step_s": [], "fwd_bwd_s": [], "opt_s": [], "train_seconds": 0.0,
               "segments": 1}
        if diag is not None:
            diag.record(0)
    else:
        reached, rec = resumed
        start = reached + 1
        rec = {key: rec[key] for key in _RECORD_KEYS}
        rec["segments"] += 1
    curve, snapshots, losses = rec["curve"], rec["layer_stats"], rec["train_loss"]
    step_s, fwd_bwd_s, opt_s = rec["step_s"], rec["fwd_bwd_s"], rec["opt_s"]
    train_seconds = rec["train_seconds"]
    diverged = False
    bar = Progress(label or task.key, budget.steps, enabled=show_progress)
    for step in range(start, budget.steps + 1):
        t0 = time.perf_counter()
        peer.zero_grad(set_to_none=True)
        loss = trial.train_loss()
        loss.backward()
        second = second_gradients(trial) if peer.needs_second_grads() else None
        t1 = time.perf_counter()
        try:
            if second is None:
                peer.step()
            else:
                peer.step(second_grads=second)
            refused = False
        except FloatingPointError:  # steepest refuses a non-finite gradient: the run has diverged
            refused = True
        t2 = time.perf_counter()
        for scheduler in schedulers:
            scheduler.step()
        if averager is not None:
            averager.update(step, trial.model)
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
            if diag is not None and not diverged:
                diag.record(step)
            if averager is not None and not diverged:
                averager.record(step, trial)
            bar.update(step, value, metrics[task.metric])
        else:
            bar.update(step, value)
        if diverged:
            break
        if checkpoint is not None and checkpoint.due(step, budget.steps, evals):
            rec["train_seconds"] = train_seconds
            records = {**rec, "checkpoint_saves": checkpoint.saves,
                       "checkpoint_seconds": checkpoint.seconds}
            if diag is not None:
                records["diagnostics"] = {"snapshots": diag.snapshots, "seconds": diag.seconds}
            if averager is not None:
                records["averaged_state"] = averager.model.state_dict()
                records["averaged_curve"] = averager.curve
            checkpoint.save(step, capture_state(trial, peer, schedulers), records)
    bar.close()
    extra = {"diagnostics": diag.result()} if diag is not None else {}
    if averager is not None:
        extra["averaged"] = averager.result()
    if checkpoint is not None:
        extra["resumed_from_step"] = None if resumed is None else resumed[0]
        extra["checkpoint"] = {"every": checkpoint.every if checkpoint.every is not None else "eval",
                               "saves": checkpoint.saves, "seconds": checkpoint.seconds,
                               "segments": rec["segments"], "notes": list(checkpoint.notes)}
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
        "opt_step_mean_ms": mean_ms(opt_s),
        "per_step_ms": {"step": [round(t * 1000.0, 3) for t in step_s],
                        "fwd_bwd": [round(t * 1000.0, 3) for t in fwd_bwd_s],
                        "opt_step": [round(t * 1000.0, 3) for t in opt_s]},
        "state_mib": state_bytes(peer.optimizers) / MIB,
        "peak_rss_mib": peak_rss_mib(),
        "torch_threads": torch.get_num_threads(),
        **extra,
    }
