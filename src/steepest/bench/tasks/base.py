"""What a benchmark task is: a data set, a model, a loss and a metric, at two budgets.

A :class:`Task` is a description that can be rebuilt from JSON (``Task.spec()``) in any process. It
loads and verifies its data once (:meth:`Task.prepare`, called in the parent before any training, so
that a download happens once and an offline machine fails with one clear message), and for each
``(seed, batch_size)`` builds a :class:`Trial`: a freshly initialised model plus the training batch
stream and the fixed evaluation data. Everything a trial does is a function of its seed alone, so
two optimizers trained on trials with the same seed see the same initial weights and the same
batches (paired comparisons).

The primary metric (``Task.metric``) is what the suite ranks by, picks the best learning rate by
and measures "steps to target" with; lower is better for every task (a loss or an error).
``Task.extra_metrics`` are reported beside it (accuracy, say).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import ClassVar, Mapping

import torch
from torch import nn

BUDGETS = ("smoke", "quick", "full")
#: the second batch stream of a trial with seed ``s`` (:meth:`Trial.second_loss`) is seeded
#: ``s + SECOND_STREAM``, far from every seed's main stream ``s + 1``
SECOND_STREAM = 7_919_000


@dataclass(frozen=True)
class Budget:
    """How long and how one trial trains: the shared schedule of every optimizer on a task.

    The lr multiplier rises linearly over ``warmup`` steps (``warmup_fraction`` of the steps, at
    least 1) and then follows half a cosine down to ``final_lr_fraction`` of the peak at the last
    step (:func:`lr_multiplier`).
    """

    steps: int
    batch_size: int
    eval_every: int
    warmup_fraction: float = 0.05
    final_lr_fraction: float = 0.1

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Budget.{name} must be a positive int, got {value!r}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"Budget.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if not 0.0 <= self.final_lr_fraction <= 1.0:
            raise ValueError(f"Budget.final_lr_fraction must be in [0, 1], got {self.final_lr_fraction}")

    @property
    def warmup(self) -> int:
        """The number of warm-up steps."""
        return min(self.steps, max(1, round(self.warmup_fraction * self.steps)))

    def eval_steps(self) -> list[int]:
        """The steps after which the trial is evaluated: 0, every ``eval_every`` and the last."""
        return sorted({0, self.steps, *range(self.eval_every, self.steps + 1, self.eval_every)})

    def to_dict(self) -> dict:
        return asdict(self)


def lr_multiplier(step: int, total: int, warmup: int, final_fraction: float) -> float:
    """Schedule multiplier for the update at 0-based ``step``: linear warm-up, then cosine.

    During warm-up the multiplier is ``(step + 1) / warmup``; afterwards it follows half a cosine
    from 1 down to ``final_fraction`` at the last step ``total - 1``.
    """
    if step < warmup:
        return (step + 1) / warmup
    decay_steps = max(1, total - 1 - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))


class Trial(ABC):
    """One model trained on one task with one seed.

    Attributes:
        model: the freshly initialised model (initial weights depend on the seed only).
        roles: ``roles=`` overrides for :func:`steepest.roles.classify` (``None``: the classifier
            decides), used for every peer so that they all agree on what is a hidden matrix.
    """

    model: nn.Module
    roles: Mapping[str, str] | None = None

    @abstractmethod
    def train_loss(self) -> torch.Tensor:
        """The scalar training loss of the next batch (with its autograd graph)."""

    @abstractmethod
    def evaluate(self) -> dict[str, float]:
        """The task's metrics on its fixed evaluation data (the model is left in training mode)."""

    @abstractmethod
    def second_loss(self) -> torch.Tensor:
        """The training loss of a batch from a second stream, independent of :meth:`train_loss`'s
        (for optimizers that estimate gradient noise from a second gradient at the same point,
        such as LANTON with ``noise_source="second"``); drawing it leaves the main stream as it is."""


class Task(ABC):
    """A benchmark task (see the module docstring). Subclasses set the class attributes."""

    name: ClassVar[str]
    #: the primary metric's key in :meth:`Trial.evaluate`'s dict; lower is better
    metric: ClassVar[str]
    metric_label: ClassVar[str]
    #: plot the metric on a log scale (errors that fall by orders of magnitude)
    metric_log_scale: ClassVar[bool] = False
    extra_metrics: ClassVar[tuple[str, ...]] = ()
    budgets: ClassVar[Mapping[str, Budget]]
    #: the weight decay of the AdamW baseline on >= 2-D tensors (0.1 unless the task says otherwise)
    adamw_weight_decay: ClassVar[float] = 0.1

    def __init__(self, **options) -> None:
        self.options = dict(options)

    @property
    def key(self) -> str:
        """A short name that tells this task apart in file names and tables."""
        return self.name

    def spec(self) -> dict:
        """JSON that rebuilds this task with :func:`steepest.bench.tasks.task_from_spec`."""
        return {"name": self.name, "options": dict(self.options)}

    def budget(self, which: str) -> Budget:
        """The named budget (``smoke``, ``quick`` or ``full``)."""
        try:
            return self.budgets[which]
        except KeyError:
            raise ValueError(f"unknown budget {which!r}; choose from {', '.join(BUDGETS)}") from None

    @abstractmethod
    def prepare(self) -> dict:
        """Load (downloading once if needed) and verify the data; return a JSON description of it."""

    @abstractmethod
    def trial(self, seed: int, batch_size: int) -> Trial:
        """A fresh :class:`Trial` for ``seed``; ``batch_size`` is the training batch size."""

    @abstractmethod
    def describe_model(self) -> str:
        """One line on the model (architecture and parameter count) for the report."""
