"""What defines a benchmark suite: :class:`SuiteConfig` (tasks, optimizers, lr grid, seeds, budget and
overrides), the quick and full presets' optimizers, the reference optimizers every ratio is taken
against, and the run directory a suite resumes in.

The runner (:mod:`.runner`) plans and trains a suite; the summary (:mod:`.summary`) and the report
read it; both import it from here.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from .external_peers import EXTERNAL_BUILDERS
from .peers import CORE_PEERS, DEFAULT_LRS, PEER_NAMES, defaults_are_tuned
from .tasks import BUDGETS, BUILTIN_TASKS, Budget, Task

#: the ``average`` choices (``--average``)
AVERAGES = ("ema", "swa")

__all__ = ["AVERAGES", "REFERENCES", "QUICK_OPTIMIZERS", "FULL_OPTIMIZERS", "SuiteConfig", "default_run_dir", "base_lr"]

#: the reference optimizers: every ratio in a summary is against one of them, measured in the same run
REFERENCES = {"adamw": "torch.optim.AdamW", "torch-muon": "torch.optim.Muon"}
_QUICK_PRESETS = ("steepest-muon", "steepest-normuon", "steepest-scion", "steepest-lanton")
#: the quick suite's optimizers: the two torch references, steepest's main presets at their tuned
#: benchmark settings and LANTON's base, and each of those presets at its own defaults where these
#: differ from the tuned settings (what a user who sets nothing gets)
QUICK_OPTIMIZERS = ("adamw", "torch-muon", *_QUICK_PRESETS, "steepest-lanton-base",
                    *[f"{p}-defaults" for p in _QUICK_PRESETS if not defaults_are_tuned(p)])
FULL_OPTIMIZERS = (*CORE_PEERS, *EXTERNAL_BUILDERS)


@dataclass
class SuiteConfig:
    """Everything that defines a benchmark run (saved in ``plan.json`` and ``results.json``).

    ``steps``, ``batch_size`` and ``eval_every`` override every task's budget when set; ``lrs``
    replaces optimizers' base learning rates; ``targets`` fixes a task's target metric (default:
    torch.optim.AdamW's mean final metric at its best lr, in the same run).
    """

    budget: str = "quick"
    tasks: list[str] = field(default_factory=lambda: list(BUILTIN_TASKS))
    optimizers: list[str] = field(default_factory=lambda: list(QUICK_OPTIMIZERS))
    lr_multipliers: list[float] = field(default_factory=lambda: [1.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    lrs: dict[str, float] = field(default_factory=dict)
    steps: int | None = None
    batch_size: int | None = None
    eval_every: int | None = None
    targets: dict[str, float] = field(default_factory=dict)
    threads: int | None = None
    isolate: bool = True
    #: options of the GPT tasks (``shakespeare-char``, ``text:PATH``): ``hyper_connections``, ``hc_mixer``
    gpt_options: dict[str, object] = field(default_factory=dict)
    #: per-layer sharpness and noise at every evaluation of the first seed of each lr (the report's
    #: per-layer panel, ``diagnostics-<task>.png``)
    diagnostics: bool = False
    #: save a crash-safe partial checkpoint of the running cell every N steps (:mod:`.checkpoint`);
    #: ``None``: after every evaluation; 0: never. It does not change any result, so it is not part
    #: of the suite's fingerprint.
    checkpoint_every: int | None = None
    #: extra constructor keywords per steepest peer, e.g. ``{"steepest-muon": {"adamw_lr": 3e-3}}``
    #: (the defaults study's candidates); they replace the peer's own keywords, except ``lr``
    peer_options: dict[str, dict] = field(default_factory=dict)
    #: iterate averaging (``--average``): ``None`` (off), ``"ema"`` or ``"swa"``; every cell then keeps a
    #: ``torch.optim.swa_utils.AveragedModel`` and records its metrics next to the raw model's
    #: (:class:`steepest.bench.train.Averager`)
    average: str | None = None

    def __post_init__(self) -> None:
        if self.budget not in BUDGETS:
            raise ValueError(f"unknown budget {self.budget!r}; choose from {', '.join(BUDGETS)}")
        for name, values in (("tasks", self.tasks), ("optimizers", self.optimizers),
                             ("lr_multipliers", self.lr_multipliers), ("seeds", self.seeds)):
            if not values:
                raise ValueError(f"{name} must name at least one value")
            if len(set(values)) != len(values):
                raise ValueError(f"{name} lists a value twice: {', '.join(map(str, values))}")
        unknown = [n for n in (*self.optimizers, *self.lrs) if n not in PEER_NAMES]
        if unknown:
            raise ValueError(f"unknown optimizer {unknown[0]!r}; choose from {', '.join(PEER_NAMES)}")
        bad = [m for m in (*self.lr_multipliers, *self.lrs.values()) if not m > 0]
        if bad:
            raise ValueError(f"learning rates and multipliers must be > 0, got {bad[0]}")
        for name in ("steps", "batch_size", "eval_every", "threads"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name, options in self.peer_options.items():
            if name not in self.optimizers or not name.startswith("steepest-"):
                raise ValueError(f"peer_options names {name!r}, which is not a steepest peer of this suite")
            if "lr" in options:
                raise ValueError(f"peer_options of {name!r} set lr; use lrs or lr_multipliers for it")
        if self.average is not None and self.average not in AVERAGES:
            raise ValueError(f"unknown average {self.average!r}; choose from {', '.join(AVERAGES)}")
        if self.checkpoint_every is not None and int(self.checkpoint_every) < 0:
            raise ValueError(f"checkpoint_every must be >= 0 (0: no checkpoints), got {self.checkpoint_every}")

    @classmethod
    def preset(cls, budget: str, **overrides) -> "SuiteConfig":
        """The ``quick`` (README default, about 5 minutes) or ``full`` suite, with ``overrides``."""
        if budget == "full":
            base = cls(budget="full", optimizers=list(FULL_OPTIMIZERS), lr_multipliers=[0.5, 1.0, 2.0])
        else:
            base = cls(budget=budget)
        return replace(base, **overrides)

    def task_budget(self, task: Task) -> Budget:
        """The task's budget with this suite's overrides."""
        budget = task.budget(self.budget)
        changes = {k: getattr(self, k) for k in ("steps", "batch_size", "eval_every") if getattr(self, k)}
        return replace(budget, **changes) if changes else budget

    def to_dict(self) -> dict:
        values = asdict(self)
        for key in ("gpt_options", "diagnostics", "peer_options", "average"):
            if not values[key]:
                del values[key]  # suites without them keep their fingerprint (and run directory)
        if values["checkpoint_every"] is None:
            del values["checkpoint_every"]
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "SuiteConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def fingerprint(self) -> str:
        """8 hex digits that identify this suite (the default run directory's suffix)."""
        values = self.to_dict()
        values.pop("checkpoint_every", None)  # how often to checkpoint changes no result
        text = json.dumps(values, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def default_run_dir(config: SuiteConfig) -> Path:
    """``./bench-out/<budget>-<fingerprint>``: the same command always finds the same directory."""
    return Path("bench-out") / f"{config.budget}-{config.fingerprint()}"


def base_lr(config: SuiteConfig, optimizer: str) -> float:
    """The lr that the multipliers scale: ``config.lrs`` or the peer's benchmark default."""
    return float(config.lrs.get(optimizer, DEFAULT_LRS[optimizer]))
