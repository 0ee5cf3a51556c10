"""Crash-safe cells: a partial checkpoint inside a cell, so a killed run resumes mid-cell exactly.

While a cell trains, :func:`steepest.bench.train.train_trial` saves a checkpoint every
``checkpoint_every`` steps (``SuiteConfig.checkpoint_every``; ``None``, the default, saves after
every evaluation but the last, 0 turns checkpoints off) to
``<run_dir>/partial/<task>/<optimizer>/lrx<multiplier>-seed<seed>.pt``. A checkpoint holds

* the cell's specification (``Cell.to_dict()``) and the steepest version: a checkpoint of a
  differently planned cell (another lr, budget or task option) or one saved by another version is
  ignored, never resumed from (one curve never mixes two versions of the code);
* the step reached, the model's ``state_dict``, every underlying optimizer's and every ``LambdaLR``
  scheduler's ``state_dict``;
* the state of every ``torch.Generator`` attribute of the trial (its batch streams), torch's global
  CPU RNG state (and every CUDA device's, when CUDA is initialised) and Python's ``random`` state
  (nothing in a cell draws from NumPy's global generator, so it is not stored);
* the per-step records so far: losses, the three per-step times, the evaluation curve, the
  ``layer_stats`` snapshots, the ``diagnostics`` snapshots and the training clock.

Only tensors and plain Python values are stored, so the file is read with
``torch.load(weights_only=True)``: a checkpoint cannot run code when it is loaded. A param-group
setting that is not plain data (pytorch-optimizer's Scion keeps an enum there) is stored as
:data:`LIVE_SETTING` and taken from the rebuilt optimizer, which the cell's specification fixes.

Writing is atomic: the payload goes to a temporary file in the same directory, which is flushed and
``os.fsync``-ed, then ``os.replace``-d onto the final name, and the directory is fsync-ed so that
the rename itself survives a power cut. A run killed at any moment (even during a write) leaves
either the previous complete checkpoint or the new one at the final path, never a partial file.

Resuming continues at the checkpoint's step + 1 with bit-identical state, so the resumed cell's
per-step training losses and evaluation curve equal an uninterrupted run's exactly (the steps
between the last checkpoint and the kill are recomputed). Timings differ: the record's
``train_seconds`` is the sum of the kept steps of every segment, ``resumed_from_step`` names the
checkpoint step, and ``checkpoint`` holds the interval, the number of saves, their wall time (not
counted in ``train_seconds``; the save each resume started from is counted, its time is not), the
number of segments (processes) and notes. A checkpoint that cannot be read (truncated, corrupt, of
another format or of a model that does not fit) is not fatal: the cell starts over and the record
says why in ``checkpoint["notes"]``. The runner deletes the checkpoint once the cell's result is
saved (:func:`discard`).

Cost: a save (``torch.save`` + fsync + rename + directory fsync) takes a fraction of a training
step, so at the default interval (after each intermediate evaluation) checkpoints add a negligible
share of a cell's time, and they are on by default; saving after every step costs noticeably more.
The measurement is in docs/benchmarks.md, "Measurements behind the defaults".

Not covered: a peer whose own results are not reproducible run to run (``hb-muon``: heavyball's
Muon differs between two fresh runs already) resumes, but cannot match a run bit for bit.
"""
from __future__ import annotations

import copy
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .cells import library_version
from .formatting import clean_json

#: bumped when the payload's layout changes; a checkpoint of another format is not resumed from
FORMAT = 1
PARTIAL_DIR = "partial"


def partial_path(run_dir: str | Path, cell) -> Path:
    """``<run_dir>/partial/<task>/<optimizer>/lrx<multiplier>-seed<seed>.pt`` for ``cell``."""
    return (Path(run_dir) / PARTIAL_DIR / cell.task_key / cell.optimizer
            / f"lrx{cell.lr_multiplier:g}-seed{cell.seed}.pt")


def fsync_dir(directory: Path) -> None:
    """Flush ``directory``'s entries (a rename into it) to disk, where the platform allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_atomic(path: Path, payload: dict) -> None:
    """``torch.save(payload)`` to ``path`` atomically: temp file in the same directory, flush,
    fsync, ``os.replace``, fsync of the directory. On any failure the temp file is removed and the
    previous file at ``path`` (if any) is left untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def _stale_temps(path: Path) -> list[Path]:
    """Temp files left by writers killed mid-write (``.<name>.<pid>.tmp``)."""
    return list(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.is_dir() else []


def discard(path: Path) -> None:
    """Delete the checkpoint at ``path``, stale temp files beside it, and the emptied directories
    up to ``partial/``."""
    for file in (path, *_stale_temps(path)):
        try:
            file.unlink()
        except FileNotFoundError:
            pass
    directory = path.parent
    for _ in range(3):  # <optimizer>/, <task>/, partial/
        try:
            directory.rmdir()
        except OSError:  # not empty (other cells' checkpoints) or already gone
            break
        directory = directory.parent


# -- what a checkpoint holds -----------------------------------------------------------------------

def generator_attributes(trial) -> dict[str, torch.Generator]:
    """The trial's ``torch.Generator`` attributes by name (its batch streams)."""
    return {name: value for name, value in sorted(vars(trial).items()) if isinstance(value, torch.Generator)}


#: stands in a saved param group for a setting that is not plain data (an enum of an external
#: library, say); the freshly built optimizer's own value is used on restore
LIVE_SETTING = "<live setting of the rebuilt optimizer>"


def _plain(value) -> bool:
    """Whether ``torch.load(weights_only=True)`` reads ``value`` back (tensors and plain data)."""
    if value is None or type(value) in (bool, int, float, str) or isinstance(value, torch.Tensor):
        return True
    if type(value) in (list, tuple):
        return all(_plain(v) for v in value)
    if type(value) is dict:
        return all(_plain(k) and _plain(v) for k, v in value.items())
    return False


def optimizer_state(opt: torch.optim.Optimizer) -> dict:
    """``opt.state_dict()`` with param-group settings that are not plain data replaced by
    :data:`LIVE_SETTING` (constructor settings: the rebuilt optimizer has the same ones)."""
    saved = opt.state_dict()
    groups = [{k: (v if k == "params" or _plain(v) else LIVE_SETTING) for k, v in g.items()}
              for g in saved["param_groups"]]
    return {**saved, "param_groups": groups}


def load_optimizer_state(opt: torch.optim.Optimizer, saved: dict) -> None:
    """``opt.load_state_dict`` of :func:`optimizer_state`'s output (live settings filled back in)."""
    groups = [{k: (own[k] if isinstance(v, str) and v == LIVE_SETTING else v) for k, v in group.items()}
              for group, own in zip(saved["param_groups"], opt.param_groups)]
    opt.load_state_dict({**saved, "param_groups": groups})


def capture_state(trial, peer, schedulers) -> dict:
    """Model, optimizers, schedulers and every random stream, as tensors and plain values."""
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "cuda": None}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "model": trial.model.state_dict(),
        "optimizers": [optimizer_state(opt) for opt in peer.optimizers],
        "schedulers": [s.state_dict() for s in schedulers],
        "generators": {name: g.get_state() for name, g in generator_attributes(trial).items()},
        "rng": rng,
    }


def _check_fits(trial, peer, schedulers, state: dict) -> None:
    """Raise ``ValueError`` unless ``state`` has the shape of this trial's model, optimizers,
    schedulers and generators (checked before anything is modified)."""
    own = trial.model.state_dict()
    saved = state["model"]
    if set(saved) != set(own):
        raise ValueError("the model's parameter names differ")
    for name, tensor in own.items():
        other = saved[name]
        if not isinstance(other, torch.Tensor) or other.shape != tensor.shape or other.dtype != tensor.dtype:
            raise ValueError(f"model tensor {name!r} differs in shape or dtype")
    if len(state["optimizers"]) != len(peer.optimizers) or len(state["schedulers"]) != len(schedulers):
        raise ValueError("the number of optimizers or schedulers differs")
    for opt, saved_opt in zip(peer.optimizers, state["optimizers"]):
        groups = saved_opt["param_groups"]
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in opt.param_groups]:
            raise ValueError("the optimizers' parameter groups differ")
    if set(state["generators"]) != set(generator_attributes(trial)):
        raise ValueError("the trial's random generators differ")


def _apply(trial, peer, schedulers, state: dict) -> None:
    trial.model.load_state_dict(state["model"])
    for opt, saved in zip(peer.optimizers, state["optimizers"]):
        load_optimizer_state(opt, saved)
    for scheduler, saved in zip(schedulers, state["schedulers"]):
        scheduler.load_state_dict(saved)
    gens = generator_attributes(trial)
    for name, value in state["generators"].items():
        gens[name].set_state(value)
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])


def restore_state(trial, peer, schedulers, state: dict) -> None:
    """Load ``state`` (from :func:`capture_state`) into the trial, peer and schedulers.

    Raises ``ValueError`` (leaving everything as it was) when the state does not fit or fails to load.
    """
    try:
        _check_fits(trial, peer, schedulers, state)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed checkpoint: {type(exc).__name__}: {exc}") from None
    fresh = copy.deepcopy(capture_state(trial, peer, schedulers))
    try:
        _apply(trial, peer, schedulers, state)
    except Exception as exc:
        _apply(trial, peer, schedulers, fresh)  # undo a half-applied load: start over cleanly
        raise ValueError(f"the checkpoint does not load: {type(exc).__name__}: {exc}") from None


def _brief(exc: BaseException) -> str:
    """``Type: the telling line of the message`` (torch.load's messages run over many lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    telling = next((line for line in lines if line.startswith("WeightsUnpickler error")),
                   lines[0] if lines else "")
    return f"{type(exc).__name__}: {telling[:200]}" if telling else type(exc).__name__


# -- one cell's checkpoint -------------------------------------------------------------------------

@dataclass
class CellCheckpoint:
    """The partial checkpoint of one cell: where it lives, what it must match, when to save.

    ``every``: save after every ``every`` steps; ``None``: after every evaluation step (the last step
    excepted: the cell ends there and its result is saved instead).
    """

    path: Path
    spec: dict
    every: int | None = None
    saves: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.spec = clean_json(self.spec)

    def due(self, step: int, total: int, eval_steps: set[int]) -> bool:
        """Save after ``step``?"""
        if step >= total:
            return False
        return step in eval_steps if self.every is None else step % self.every == 0

    def save(self, step: int, state: dict, records: dict) -> None:
        """Write the checkpoint of ``step`` (``state`` from :func:`capture_state`) atomically."""
        t0 = time.perf_counter()
        save_atomic(self.path, {"format": FORMAT, "spec": self.spec, "step": step, "steepest": library_version(),
                                "torch_version": str(torch.__version__), "state": state, "records": records})
        self.saves += 1
        self.seconds += time.perf_counter() - t0

    def note(self, text: str) -> None:
        """Record (in the cell's ``checkpoint["notes"]``) and print a warning."""
        self.notes.append(text)
        print(f"steepest bench: warning: {text}", file=sys.stderr)

    def load(self) -> dict | None:
        """The saved payload (``step``, ``state``, ``records``) when a usable checkpoint exists.

        ``None`` when there is none, or (with a note) when it is unreadable or of another cell.
        """
        for stale in _stale_temps(self.path):  # a writer killed mid-write: its temp file is garbage
            try:
                stale.unlink()
            except OSError:
                pass
        if not self.path.exists():
            return None
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:
            self.note(f"partial checkpoint {self.path} is unreadable ({_brief(exc)}); the cell started over")
            return None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT or \
                not isinstance(payload.get("step"), int) or not isinstance(payload.get("records"), dict):
            self.note(f"partial checkpoint {self.path} has an unknown layout; the cell started over")
            return None
        if payload.get("spec") != self.spec:
            self.note(f"partial checkpoint {self.path} belongs to a differently planned cell; ignored, "
                       f"the cell started over")
            return None
        if payload.get("steepest") != library_version():
            self.note(f"partial checkpoint {self.path} was saved by steepest {payload.get('steepest', 'before 0.7')}, "
                      f"not {library_version()}; ignored, the cell started over")
            return None
        return payload


# -- the runner's side -------------------------------------------------------------------------

def for_cell(run_dir: str | Path, cell, every: int | None) -> CellCheckpoint | None:
    """``cell``'s checkpoint in ``run_dir`` (``every``: as :class:`CellCheckpoint`), or ``None``
    when ``every`` is 0 (checkpoints off)."""
    if every == 0:
        return None
    return CellCheckpoint(partial_path(run_dir, cell), cell.to_dict(), every)
