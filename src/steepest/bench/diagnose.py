"""``steepest diagnose``: train a benchmark task with several optimizers and record, per hidden layer,
curvature, gradient noise, update size and orthogonality at regular checkpoints.

Protocol. Each optimizer (a benchmark peer name, :func:`steepest.bench.peers.build_peer`) trains a
fresh trial of the task with the same seed (same initial weights, same batch stream) at its
benchmark base lr held **constant** (no warm-up / cosine schedule: this is a diagnostic run, not a
benchmark). At a checkpoint step ``s`` (every ``every`` steps and the last step), *before* update
``s`` is applied, at the current parameters ``theta_{s-1}``
(:func:`steepest.diagnostics.layers.layer_checkpoint`):

two mini-batch gradients are drawn (batch ``a`` is the one training step ``s`` uses; the trial's
random generators are rewound afterwards, so the training batch stream is the one an undiagnosed
run would see), and each layer's sharpness, gradient noise in its group's dual norm and
orthogonality error are measured as that function's docstring says;

then step ``s`` is taken and **update_rms / update_spectral** of that step come from
:func:`steepest.diagnostics.update_stats`; the task metric is evaluated after the step.

Classifier tasks (trials with a ``classifier_features()`` method, e.g. ``digits-cnn``) also record
the neural collapse metrics NC1-NC4 (:func:`steepest.diagnostics.neural_collapse`) of the last
layer on the whole training set at every checkpoint, after the step.

A ``checkpoint`` (a path to a ``state_dict`` of the task's model, e.g. saved with
``torch.save(trial.model.state_dict(), path)``, or a dict holding one under ``"model"``) replaces
the initial weights of every optimizer's trial, so a trained model can be diagnosed from where it is.

Hidden layers: the 2-D parameters under ``blocks.`` when the model has such parameters (the
benchmark GPT), otherwise every parameter with at least 2 dimensions.

Time spent in diagnostics (including the extra gradients and evaluations) is reported separately
from training time (zero_grad, forward, backward, optimizer step).
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..diagnostics import neural_collapse, update_stats
from ..diagnostics.layers import describe_geometry, hidden_layers, layer_checkpoint, layer_geometries
from .peers import PEER_NAMES, build_peer
from .tasks import make_task

__all__ = ["run_diagnostics", "load_model_checkpoint", "DEFAULT_OPTIMIZERS"]

DEFAULT_OPTIMIZERS = ("steepest-muon", "steepest-lanton")
LR_NOTE = ("each optimizer at its benchmark base lr, held constant (no warm-up or cosine schedule)")


def load_model_checkpoint(path, model: nn.Module) -> None:
    """Load a ``state_dict`` (or a dict with a ``"model"`` state_dict) from ``path`` into ``model``,
    strictly: a missing or unexpected key, or a shape mismatch, raises ``ValueError`` naming it."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"checkpoint not found: {path}") from None
    except Exception as exc:
        raise ValueError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
    if isinstance(saved, dict) and isinstance(saved.get("model"), dict):
        saved = saved["model"]
    if not isinstance(saved, dict) or not all(isinstance(v, Tensor) for v in saved.values()):
        raise ValueError(f"checkpoint {path} holds no state_dict (a dict of tensors, or one under 'model')")
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not fit the task's model: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    for key, value in saved.items():
        if value.shape != own[key].shape:
            raise ValueError(f"checkpoint {path}: {key} has shape {tuple(value.shape)}, the task's model "
                             f"{tuple(own[key].shape)}")
    model.load_state_dict(saved)


def _collapse(trial) -> dict | None:
    if not hasattr(trial, "classifier_features"):
        return None
    features, labels, weight, bias = trial.classifier_features()
    return neural_collapse(features, labels, weight, bias)


def _train_one(task, name: str, steps: int, every: int, seed: int, batch_size: int,
               sharpness_iters: int, checkpoint=None) -> dict:
    trial = task.trial(seed, batch_size)
    model = trial.model
    if checkpoint is not None:
        load_model_checkpoint(checkpoint, model)
    peer = build_peer(name, model, roles_override=getattr(trial, "roles", None),
                      adamw_weight_decay=getattr(task, "adamw_weight_decay", 0.1))
    layers = hidden_layers(model)
    params = dict(model.named_parameters())
    geoms = layer_geometries(peer.optimizers, model, layers)
    check_steps = sorted({*range(every, steps + 1, every), steps})
    t0 = time.perf_counter()
    curve = [{"step": 0, **trial.evaluate()}]
    diag_s = time.perf_counter() - t0
    train_s = 0.0
    checkpoints, status = [], "ok"
    for step in range(1, steps + 1):
        record = step in check_steps
        if record:
            t0 = time.perf_counter()
            rows = layer_checkpoint(trial, model, layers, geoms, sharpness_iters, seed)
            before = {n: params[n].detach().clone() for n in layers}
            diag_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        peer.zero_grad(set_to_none=True)
        loss = trial.train_loss()
        loss.backward()
        try:
            peer.step()
            refused = False
        except FloatingPointError:
            refused = True
        train_s += time.perf_counter() - t0
        value = loss.item()
        diverged = refused or not math.isfinite(value)
        if record or diverged:
            t0 = time.perf_counter()
            metrics = trial.evaluate()
            curve.append({"step": step, **metrics})
            if record:
                ups = update_stats(before, {n: params[n].detach() for n in layers})
                for n in layers:
                    rows[n]["update_rms"] = ups[n]["rms"]
                    rows[n]["update_spectral"] = ups[n]["spectral"]
                entry = {"step": step, "train_loss": value, "metric": metrics[task.metric], "layers": rows}
                collapse = _collapse(trial)
                if collapse is not None:
                    entry["collapse"] = collapse
                checkpoints.append(entry)
            diag_s += time.perf_counter() - t0
        if diverged:
            status = "diverged"
            break
    return {"status": status, "layers": layers,
            "geometry": {n: describe_geometry(geoms[n]) for n in layers},
            "checkpoints": checkpoints, "curve": curve,
            "train_seconds": train_s, "diagnostics_seconds": diag_s}


def _sanitize(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _sanitize(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_sanitize(v) for v in x]
    return x


def run_diagnostics(task_name: str, optimizers: Sequence[str] | str = DEFAULT_OPTIMIZERS, steps: int | None = None,
                    every: int = 10, seed: int = 0, budget: str = "quick", sharpness_iters: int = 10,
                    checkpoint=None) -> dict:
    """Train ``task_name`` with each optimizer and record per-layer diagnostics (module docstring).

    Returns a JSON-ready dict (non-finite numbers become ``None``): ``task``, ``metric``,
    ``budget``, ``steps``, ``every``, ``seed``, ``batch_size``, ``lr_schedule`` and ``optimizers``:
    ``{name: {status, layers, geometry, checkpoints: [{step, train_loss, metric, layers: {layer:
    {sharpness, noise, noise_norm, update_rms, update_spectral, orthogonality_error, lmo_rank}}}],
    collapse?}], curve, train_seconds, diagnostics_seconds}}`` (``collapse``: NC1-NC4, classifier
    tasks only); ``checkpoint`` is the path of the initial weights, or ``None``.
    """
    if isinstance(optimizers, str):
        optimizers = [o.strip() for o in optimizers.split(",") if o.strip()]
    optimizers = list(optimizers)
    if not optimizers:
        raise ValueError("optimizers must name at least one optimizer")
    for name in optimizers:
        if name not in PEER_NAMES:
            raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(PEER_NAMES)}")
    if budget not in ("smoke", "quick", "full"):
        raise ValueError(f"budget must be smoke, quick or full, got {budget!r}")
    for label, value in (("every", every), ("sharpness_iters", sharpness_iters)) + ((("steps", steps),) if steps is not None else ()):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a positive integer, got {value!r}")
    task = make_task(task_name)
    task.prepare()
    if checkpoint is not None:  # fail before any training when it does not fit
        load_model_checkpoint(checkpoint, task.trial(seed, task.budget(budget).batch_size).model)
    b = task.budget(budget)
    n_steps = steps if steps is not None else b.steps
    start = time.perf_counter()
    results = {
        "task": task_name, "metric": task.metric, "metric_label": getattr(task, "metric_label", task.metric),
        "budget": budget, "steps": n_steps, "every": every, "seed": seed, "batch_size": b.batch_size,
        "sharpness_iters": sharpness_iters, "lr_schedule": LR_NOTE,
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "optimizers": {name: _train_one(task, name, n_steps, every, seed, b.batch_size, sharpness_iters, checkpoint)
                       for name in optimizers},
    }
    results["wall_seconds"] = time.perf_counter() - start
    return _sanitize(results)
