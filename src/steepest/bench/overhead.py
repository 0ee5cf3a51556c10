"""``steepest bench overhead``: the time of one ``optimizer.step()``, steepest against its peers.

What is measured: the wall time of ``step()`` alone. Every parameter's ``.grad`` is already set
(a seeded Gaussian, the same values for every optimizer; :mod:`.overhead_workloads`), so no
forward or backward pass is in the number: it is the optimizer's own arithmetic plus its Python
overhead, which dominates on models of many small tensors (the ``tiny`` workload) and vanishes on
large ones (``gpt2-small``).

How, for each (workload, optimizer) pair, in one process and one run:

1. a fresh copy of the workload's model and a fresh optimizer, built as the suite builds its peers
   (:mod:`.peers`, :mod:`.external_peers`); the gradients are re-attached before every step (outside
   the timed region), since some optimizers (heavyball) drop ``.grad`` after stepping;
2. ``warmup`` steps (state allocation, first-call costs), then at least ``repeats`` timed steps and
   at least ``min_time_s`` seconds of them, each timed with ``time.perf_counter`` (on CUDA between
   two ``torch.cuda.synchronize()``);
3. the budget: the pair stops once ``budget_s`` seconds (warm-up included) have passed, after the
   step in progress, so a pair overruns it by at most one step. A warm-up step that alone takes
   longer than the budget ends the pair at once; its single (cold) time is reported, flagged.
   That is what happens to ``torch.optim.Muon`` and heavyball's Muon on large models on a CPU
   without native bfloat16 matmul, where their bfloat16 Newton-Schulz is emulated (about 100x
   slower). A step in progress cannot be interrupted: such a pair costs one step's time.

The table gives the median and the minimum of the timed steps in milliseconds and, for each
steepest optimizer, the ratio of its median to its peer's (:data:`PAIRS`). The optimizers:

===========================  =======================================================================
``steepest-muon``            ``steepest.for_model(model, "muon")``: Muon on the hidden matrices and
                             conv filters, its AdamW fallback on the rest (one optimizer)
``steepest-lion``,           ``steepest.for_model(model, <preset>)`` with the suite's settings
``steepest-signum``,
``steepest-diffgrad``
``steepest-adamw-fallback``  steepest Muon's AdamW fallback alone: ``for_model(model, "muon")`` with
                             every parameter given the role ``vector``, so every tensor gets the
                             fallback's recipe (Adam transform, identity geometry)
``torch-muon``               the suite's ``torch.optim.Muon`` recipe (hidden matrices) with its
                             ``torch.optim.AdamW`` on the rest switched to ``foreach=True``
``hb-muon``                  heavyball's ``Muon`` (eager) + ``torch.optim.AdamW``, as the suite builds it
``po-lion``, ``po-diffgrad``  pytorch-optimizer's ``Lion`` and ``DiffGrad`` on every parameter
``adamw-foreach``            ``torch.optim.AdamW(foreach=True)`` on every parameter, no weight decay
                             (as the fallback it is paired with)
===========================  =======================================================================

Every other peer of the suite (``steepest.bench.peers.PEER_NAMES``) can be named too. A peer that
cannot be built here (a missing library, a missing torch API, or one that fails on this model) is
reported as unavailable with the reason; a steepest optimizer that fails raises.
"""
from __future__ import annotations

import copy
import dataclasses
import gc
import importlib.metadata
import statistics
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable

import torch
from torch import nn

from .. import __version__
from ..factory import for_model
from .environment import machine_info
from .overhead_report import format_ms
from .overhead_workloads import SMOKE_WORKLOADS, WORKLOAD_NAMES, build_workload, default_gpt2_blocks, \
    seeded_gradients, trainable
from .peer_base import AUX_ADAMW_LR, Peer, PeerUnavailable
from .peers import PEER_NAMES, build_peer

#: the optimizers only this benchmark builds (every other name is a suite peer)
OVERHEAD_ONLY = ("steepest-adamw-fallback", "adamw-foreach")
OPTIMIZER_NAMES = (*PEER_NAMES, *OVERHEAD_ONLY)
#: what a default run times, in table order
DEFAULT_OPTIMIZERS = ("steepest-muon", "torch-muon", "hb-muon", "steepest-lion", "po-lion", "steepest-signum",
                      "steepest-diffgrad", "po-diffgrad", "steepest-adamw-fallback", "adamw-foreach")
#: the steepest optimizer -> the peers its ratio is taken against (when both are in the run)
PAIRS = MappingProxyType({
    "steepest-muon": ("torch-muon", "hb-muon", "po-muon"),
    "steepest-lion": ("po-lion",),
    "steepest-signum": ("po-lion",),
    "steepest-diffgrad": ("po-diffgrad",),
    "steepest-scion": ("po-scion",),
    "steepest-adamw-fallback": ("adamw-foreach",),
})
DEFAULTS = MappingProxyType({"warmup": 3, "repeats": 20, "min_time_s": 0.5, "budget_s": 10.0})


def smoke_settings() -> dict:
    """The settings of ``--smoke``: the tiny workload and one quick-suite model, 2 timed steps after
    1 warm-up step, a 2 s budget per pair (checks that everything runs; the numbers mean nothing)."""
    return {"workloads": SMOKE_WORKLOADS, "warmup": 1, "repeats": 2, "min_time_s": 0.0, "budget_s": 2.0}


# ---------------------------------------------------------------------------------------------------
# building the optimizers


def _foreach_adamw(peer: Peer) -> Peer:
    """``peer`` with every ``torch.optim.AdamW`` in it set to ``foreach=True`` (torch's default picks
    the per-tensor loop on a CPU)."""
    for opt in peer.optimizers:
        if isinstance(opt, torch.optim.AdamW):
            opt.defaults["foreach"] = True
            for group in opt.param_groups:
                group["foreach"] = True
    return peer


def _build_fallback(model: nn.Module, roles) -> Peer:
    # The fallback is Muon's recipe for every role but hidden and conv: label every tensor a vector.
    # (The task's roles do not matter here: no tensor is left to the Muon side.)
    every = {name: "vector" for name, p in model.named_parameters() if p.requires_grad}
    opt = for_model(model, "muon", roles=every, adamw_lr=AUX_ADAMW_LR)
    return Peer("steepest-adamw-fallback", [opt],
                step_covers="steepest.for_model(model, 'muon', roles=<every tensor a vector>): its AdamW "
                            "fallback on every parameter", hyperparameters={"adamw_lr": AUX_ADAMW_LR})


def build_optimizer(name: str, model: nn.Module, roles=None) -> Peer:
    """The optimizer ``name`` (:data:`OPTIMIZER_NAMES`) for ``model``, as a :class:`Peer`.

    Raises :class:`PeerUnavailable` when it cannot be built here, ``ValueError`` for an unknown name.
    """
    if name == "steepest-adamw-fallback":
        return _build_fallback(model, roles)
    if name == "adamw-foreach":
        peer = _foreach_adamw(build_peer("adamw", model, roles_override=roles, adamw_weight_decay=0.0))
        return dataclasses.replace(peer, name=name, step_covers="torch.optim.AdamW(foreach=True) on every "
                                                                "parameter, no weight decay")
    if name not in PEER_NAMES:
        raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZER_NAMES)}")
    peer = build_peer(name, model, roles_override=roles)
    if name == "torch-muon":
        peer = _foreach_adamw(peer)
        peer.step_covers += "; the AdamW with foreach=True"
    return peer


def is_steepest(name: str) -> bool:
    """Whether ``name`` is one of steepest's optimizers (a failure raises) rather than a peer's."""
    return name.startswith("steepest-")


# ---------------------------------------------------------------------------------------------------
# timing


@dataclass
class Timing:
    """The step times of one pair, in milliseconds.

    ``status``: ``ok``; ``short`` (the budget ran out before ``repeats`` timed steps); or
    ``over-budget`` (one warm-up step took longer than the budget: ``samples_ms`` is that step).
    """

    samples_ms: list[float]
    warmup_ms: list[float] = field(default_factory=list)
    status: str = "ok"
    seconds: float = 0.0

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def min_ms(self) -> float:
        return min(self.samples_ms)


def time_steps(step: Callable[[], None], *, before: Callable[[], None] | None = None,
               sync: Callable[[], None] | None = None, warmup: int = DEFAULTS["warmup"],
               repeats: int = DEFAULTS["repeats"], min_time_s: float = DEFAULTS["min_time_s"],
               budget_s: float = DEFAULTS["budget_s"], clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Time ``step()`` as the module docstring describes; ``before()`` runs untimed before each step,
    ``sync()`` (CUDA's synchronize) just before and just after it."""
    check_settings(warmup=warmup, repeats=repeats, min_time_s=min_time_s, budget_s=budget_s)

    def one() -> float:
        if before is not None:
            before()
        if sync is not None:
            sync()
        start = clock()
        step()
        if sync is not None:
            sync()
        return clock() - start

    begin = clock()
    warm: list[float] = []
    for _ in range(warmup):
        seconds = one()
        warm.append(seconds)
        if seconds > budget_s:
            return Timing([seconds * 1e3], [s * 1e3 for s in warm], "over-budget", clock() - begin)
        if clock() - begin >= budget_s:
            break
    samples: list[float] = []
    timed_from = clock()
    while True:
        samples.append(one())
        if len(samples) >= repeats and clock() - timed_from >= min_time_s:
            break
        if clock() - begin >= budget_s:
            break
    status = "ok" if len(samples) >= repeats else "short"
    return Timing([s * 1e3 for s in samples], [s * 1e3 for s in warm], status, clock() - begin)


def check_settings(*, warmup: int, repeats: int, min_time_s: float, budget_s: float) -> None:
    """``ValueError`` for a setting out of range."""
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    if not min_time_s >= 0:
        raise ValueError(f"min_time_s must be >= 0, got {min_time_s!r}")
    if not budget_s > 0:
        raise ValueError(f"budget_s must be > 0, got {budget_s!r}")


# ---------------------------------------------------------------------------------------------------
# one pair, one workload, the run


def _covered(peer: Peer) -> tuple[int, int]:
    """(numbers, tensors) in the param groups of the peer's optimizers, each tensor counted once."""
    seen = {id(p): p for opt in peer.optimizers for group in opt.param_groups for p in group["params"]}
    return sum(p.numel() for p in seen.values()), len(seen)


def _second_grads(peer: Peer, params: list, grads: list) -> dict | None:
    """``{param: gradient}`` for optimizers that estimate noise from a second gradient, else None."""
    wants = any(group.get("noise_adaptive") and group.get("noise_source") == "second"
                for opt in peer.optimizers for group in opt.param_groups)
    return dict(zip(params, grads)) if wants else None


def time_pair(name: str, template: nn.Module, roles, grads: list[torch.Tensor], *, device: torch.device,
              warmup: int, repeats: int, min_time_s: float, budget_s: float) -> dict:
    """Build a fresh copy of ``template`` and optimizer ``name`` and time its step; a row of the report."""
    model = copy.deepcopy(template)
    params = trainable(model)
    own = [g.clone() for g in grads]
    row = {"optimizer": name, "side": "steepest" if is_steepest(name) else "peer"}
    try:
        peer = build_optimizer(name, model, roles)
    except PeerUnavailable as exc:
        return {**row, "status": "unavailable", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a peer's library that does not fit is reported, not raised
        if is_steepest(name):
            raise
        return {**row, "status": "unavailable", "reason": f"building it failed: {type(exc).__name__}: {exc}"}
    second = _second_grads(peer, params, own)

    def attach() -> None:
        for p, g in zip(params, own):
            if p.grad is not g:
                p.grad = g

    sync = torch.cuda.synchronize if device.type == "cuda" else None
    try:
        timing = time_steps(lambda: peer.step(second), before=attach, sync=sync, warmup=warmup, repeats=repeats,
                            min_time_s=min_time_s, budget_s=budget_s)
    except Exception as exc:  # noqa: BLE001
        if is_steepest(name):
            raise
        return {**row, "status": "unavailable", "reason": f"its step failed: {type(exc).__name__}: {exc}"}
    numbers, tensors = _covered(peer)
    return {**row, "status": timing.status, "median_ms": timing.median_ms, "min_ms": timing.min_ms,
            "steps": len(timing.samples_ms), "warmup_ms": timing.warmup_ms, "seconds": timing.seconds,
            "params": numbers, "tensors": tensors, "covers": peer.step_covers}


def add_ratios(rows: list[dict]) -> None:
    """Give each steepest row of one workload its ratios against the timed peers of :data:`PAIRS`."""
    timed = {row["optimizer"]: row for row in rows if "median_ms" in row}
    for row in rows:
        if row["optimizer"] not in timed:
            continue
        row["ratios"] = [{"peer": peer, "ratio": row["median_ms"] / timed[peer]["median_ms"],
                          "peer_status": timed[peer]["status"]}
                         for peer in PAIRS.get(row["optimizer"], ()) if peer in timed]


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _check_names(names, known: tuple[str, ...], what: str) -> list[str]:
    names = list(names)
    if not names:
        raise ValueError(f"name at least one {what}; choose from {', '.join(known)}")
    for name in names:
        if name not in known:
            raise ValueError(f"unknown {what} {name!r}; choose from {', '.join(known)}")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"{what} {twice[0]!r} is listed twice")
    return names


def _library_versions() -> dict:
    versions = {}
    for package in ("pytorch-optimizer", "heavyball"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def run_overhead(*, workloads=WORKLOAD_NAMES, optimizers=DEFAULT_OPTIMIZERS, warmup: int = DEFAULTS["warmup"],
                 repeats: int = DEFAULTS["repeats"], min_time_s: float = DEFAULTS["min_time_s"],
                 budget_s: float = DEFAULTS["budget_s"], device: str = "cpu", gpt2_blocks: int | None = None,
                 threads: int | None = None, seed: int = 0,
                 progress: Callable[[str], None] | None = None) -> dict:
    """Time every optimizer on every workload (see the module docstring) and return the results dict
    that :mod:`.overhead_report` renders. ``threads`` sets ``torch.set_num_threads`` for the run (the
    previous value is restored); ``progress`` receives one line per finished pair."""
    workloads = _check_names(workloads, WORKLOAD_NAMES, "workload")
    optimizers = _check_names(optimizers, OPTIMIZER_NAMES, "optimizer")
    check_settings(warmup=warmup, repeats=repeats, min_time_s=min_time_s, budget_s=budget_s)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available here")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    blocks = default_gpt2_blocks(dev) if gpt2_blocks is None else gpt2_blocks
    previous_threads = torch.get_num_threads()
    began = time.perf_counter()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        results = {
            "benchmark": "steepest bench overhead", "steepest": __version__,
            "settings": {"workloads": workloads, "optimizers": optimizers, "warmup": warmup, "repeats": repeats,
                         "min_time_s": min_time_s, "budget_s": budget_s, "device": str(dev),
                         "gpt2_blocks": blocks, "seed": seed},
            "environment": {"device": str(dev), "device_name": torch.cuda.get_device_name(dev)
                            if dev.type == "cuda" else None, "torch_threads": torch.get_num_threads(),
                            "libraries": _library_versions(), "machine": machine_info()},
            "pairs": {name: [p for p in PAIRS[name] if p in optimizers] for name in optimizers if name in PAIRS},
            "workloads": [],
        }
        for workload_name in workloads:
            workload = build_workload(workload_name, device=dev, gpt2_blocks=blocks, seed=seed)
            grads = seeded_gradients(workload.model, seed)
            params = trainable(workload.model)
            rows = []
            for name in optimizers:
                row = time_pair(name, workload.model, workload.roles, grads, device=dev, warmup=warmup,
                                repeats=repeats, min_time_s=min_time_s, budget_s=budget_s)
                rows.append(row)
                _release(dev)
                if progress is not None:
                    progress(_progress_line(workload_name, row))
            add_ratios(rows)
            results["workloads"].append({"name": workload_name, "description": workload.description,
                                         "params": sum(p.numel() for p in params), "tensors": len(params),
                                         "rows": rows})
            del workload, grads, params
            _release(dev)
    finally:
        torch.set_num_threads(previous_threads)
    results["wall_seconds"] = time.perf_counter() - began
    return results


def _progress_line(workload: str, row: dict) -> str:
    if row["status"] == "unavailable":
        return f"{workload} / {row['optimizer']}: unavailable ({row['reason']})"
    flag = {"ok": "", "short": " (budget reached)", "over-budget": " (one warm-up step over the budget)"}
    return (f"{workload} / {row['optimizer']}: {format_ms(row['median_ms'])} ms median over {row['steps']} steps"
            f"{flag[row['status']]}")


__all__ = ["DEFAULT_OPTIMIZERS", "DEFAULTS", "OPTIMIZER_NAMES", "OVERHEAD_ONLY", "PAIRS", "Timing", "add_ratios",
           "build_optimizer", "run_overhead", "smoke_settings", "time_pair", "time_steps"]
