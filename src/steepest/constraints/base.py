"""The constraint protocol: a feasible set of weights, its projection (or retraction) and a check.

A constraint is a small immutable object (like a geometry): ``project(w)`` returns the point of the
set the constraint maps ``w`` to (the nearest point in Frobenius norm where the docstring says
"exact", a documented approximation otherwise), in ``w``'s dtype and shape, computed in float32
(float64 for float64 weights); ``project_(w)`` writes it into ``w`` in place; ``check(w)`` returns
the violation as a float (0.0 on the set, to the stated tolerance). Tensors with more than two
dimensions are viewed as the matrix ``(shape[0], prod(shape[1:]))`` (conv filters: out x in*k*k).

Constructor arguments are checked with the validators here (``real_number``, ``positive``,
``choice``, ``positive_int``, ``step_size_value``), so every constraint words its errors alike.

Where a constraint needs the step that was just taken (the spectral soft cap couples its strength
to the largest possible update), ``project`` takes ``step_size``: the largest spectral norm the
optimizer's last update of ``w`` can have (for Muon, ``lr * shape factor * max singular value of
the Newton-Schulz output``).
"""
from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..distributed import is_dtensor


# -- argument validation (shared by every constraint) --------------------------------------------
def real_number(name: str, value: Any) -> float:
    """``value`` as a float; ``TypeError`` for a bool or a non-real."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Invalid type for {name}: expected a real number, got {type(value).__name__}")
    return float(value)


def positive(name: str, value: Any) -> float:
    """``value`` as a float, required finite and > 0."""
    x = real_number(name, value)
    if not (x > 0.0 and math.isfinite(x)):
        raise ValueError(f"Invalid {name} value: {value}; expected a positive number")
    return x


def choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else ``ValueError``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; expected one of: {', '.join(choices)}")
    return value


def positive_int(name: str, value: Any) -> int:
    """``value`` if it is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Invalid type for {name}: expected an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"Invalid {name}: {value}; expected an integer >= 1")
    return value


def step_size_value(step_size: Any) -> float | None:
    """``step_size`` as a float >= 0, or None."""
    if step_size is None:
        return None
    x = real_number("step_size", step_size)
    if not (x >= 0.0 and math.isfinite(x)):
        raise ValueError(f"Invalid step_size value: {step_size}; expected a non-negative number or None")
    return x


def work_dtype(t: Tensor) -> torch.dtype:
    """The dtype constrained maps are computed in: float64 for float64 tensors, float32 otherwise."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


class Constraint(ABC):
    """Base class: subclasses set ``name`` and ``cost`` and implement ``_project`` and ``check``."""

    #: registry name (``steepest.constraints.make_constraint(name, ...)``)
    name: ClassVar[str] = ""
    #: the cost of one ``project`` call, in words (for docs and ``describe``)
    cost: ClassVar[str] = ""
    #: smallest ndim the constraint accepts
    min_ndim: ClassVar[int] = 2

    def project(self, w: Tensor, step_size: float | None = None) -> Tensor:
        """The projected weight (a new tensor, ``w``'s dtype and shape)."""
        if is_dtensor(w):
            raise TypeError(f"Constraint {self.name!r} projects whole tensors; for a DTensor pass w.full_tensor(), "
                            f"or give the optimizer the constraint (group key 'constraint'), which projects "
                            f"each sharded matrix once on its owner rank")
        if w.ndim < self.min_ndim:
            raise ValueError(f"Constraint {self.name!r} needs a tensor with at least {self.min_ndim} dimensions, "
                             f"got shape {tuple(w.shape)}")
        work = w.detach()
        work = work.to(work_dtype(work))
        out = self._project(work.reshape(work.shape[0], -1) if work.ndim > 2 else work, step_size)
        return out.reshape(w.shape).to(w.dtype)

    @torch.no_grad()
    def project_(self, w: Tensor, step_size: float | None = None) -> Tensor:
        """Project ``w`` in place and return it."""
        w.copy_(self.project(w, step_size))
        return w

    @abstractmethod
    def _project(self, m: Tensor, step_size: float | None) -> Tensor:
        """Project the float32/float64 matrix ``m`` (2-D, or 1-D for vector constraints)."""

    @abstractmethod
    def check(self, w: Tensor) -> float:
        """The violation of ``w`` (0.0 when ``w`` satisfies the constraint)."""

    def describe(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"
