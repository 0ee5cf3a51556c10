"""The geometry protocol: a norm, its linear minimization oracle and its dual norm.

Sign convention used throughout the library: ``lmo(x)`` returns the unit-norm direction ``d`` that
*maximizes* ``<x, d>`` over the unit ball ``{||d|| <= 1}``, so ``<x, lmo(x)> == dual_norm(x)``; an
optimizer subtracts it (``W <- W - step * lmo(D)``). Every norm here is the unscaled one (spectral,
max-entry, max-column, max-row, RMS); the shape-dependent factor that turns it into an operator norm
between RMS-normed spaces (Scion's norms, Pethick et al., arXiv 2502.07529) is
``shape_scale(shape)``, a separate stage of the step size.

A geometry is a small immutable object built from a parameter group's flat keys; it never lives
inside a tensor, so param groups stay plain data (state_dict and ``weights_only`` loading work).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable, ClassVar

import torch
from torch import Tensor


class Geometry(ABC):
    """Base class. Subclasses set ``name``, ``shape_scales`` and implement the norm pair."""

    name: ClassVar[str] = ""
    #: accepted ``shape_scale`` modes; the first is the default.
    shape_scales: ClassVar[tuple[str, ...]] = ("none",)
    #: smallest parameter ndim the geometry accepts.
    min_ndim: ClassVar[int] = 0
    #: ``lmo`` acts on every row (dim-0 slice) on its own, so the LMO of a dim-0 shard is that
    #: shard of the LMO (distributed: it runs on local shards, no gathering).
    rowwise_lmo: ClassVar[bool] = False
    #: ``dual_norm`` is a sum over rows, so the shards' dual norms add up to the whole one.
    rowwise_dual_norm: ClassVar[bool] = False
    #: ``lmo_many`` does work across tensors (the spectral geometry stacks same-shape matrices into
    #: one batched call), so the engine hands it a group's tensors together; otherwise the engine may
    #: run a large tensor's stages on their own, freeing its temporaries before the next tensor.
    batched_lmo: ClassVar[bool] = False

    def __init__(self, shape_scale: str | None = None):
        mode = self.shape_scales[0] if shape_scale is None else shape_scale
        if mode not in self.shape_scales:
            raise ValueError(
                f"Unknown shape_scale {mode!r} for geometry {self.name!r}; "
                f"expected one of: {', '.join(self.shape_scales)}"
            )
        self.shape_scale_mode = mode

    # -- the norm pair -------------------------------------------------------------------------
    @abstractmethod
    def lmo(self, x: Tensor) -> Tensor:
        """Unit-norm direction maximizing ``<x, d>``; zeros for a zero input."""

    def lmo_(self, x: Tensor) -> Tensor:
        """The LMO of ``x``, written over ``x`` where the geometry can (the caller owns ``x`` and no
        longer needs it); otherwise :meth:`lmo`'s new tensor."""
        return self.lmo(x)

    def lmo_many_(self, xs: list[Tensor]) -> list[Tensor]:
        """:meth:`lmo_` over a list (geometries with a grouped in-place kernel override this)."""
        return [self.lmo_(x) for x in xs]

    def lmo_many(self, xs: list[Tensor], compiles: Callable[[Tensor], bool] | None = None) -> list[Tensor]:
        """``lmo`` over a list (geometries that can batch override this). ``compiles(x)`` says whether
        the kernels for ``x`` may run compiled (the optimizer's ``compile`` setting); geometries
        without a compiled kernel ignore it."""
        return [self.lmo(x) for x in xs]

    @abstractmethod
    def dual_norm(self, x: Tensor) -> Tensor:
        """The dual norm ``||x||_* = max_{||d|| <= 1} <x, d>`` as a 0-d tensor."""

    @abstractmethod
    def norm(self, w: Tensor) -> Tensor:
        """The primal norm ``||w||`` as a 0-d tensor."""

    def lmo_spectral_norm(self) -> float | None:
        """An upper bound of the spectral norm of ``lmo(x)`` for any ``x`` (``None``: no useful one),
        so that a step ``s * lmo(x)`` moves a matrix's singular values by at most ``s`` times it."""
        return None

    # -- step size and init --------------------------------------------------------------------
    def shape_scale(self, shape: torch.Size | tuple[int, ...]) -> float:
        """Multiplier applied to the unit direction for a parameter of this shape."""
        return 1.0

    @abstractmethod
    def init_(self, w: Tensor, scale: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """Fill ``w`` in place with a point of norm ``scale`` that suits the geometry."""

    def check_shape(self, shape: torch.Size | tuple[int, ...], name: str) -> None:
        """Raise ``ValueError`` if a parameter of this shape cannot use the geometry."""
        if len(shape) < self.min_ndim:
            raise ValueError(
                f"Geometry {self.name!r} needs parameters with at least {self.min_ndim} dimensions, "
                f"got shape {tuple(shape)} for parameter {name!r} (use geometry 'rms', 'sign' or an "
                f"AdamW-style group for vectors)"
            )

    def describe(self) -> str:
        """Short human-readable description for ``explain`` tables."""
        return self.name if self.shape_scale_mode == "none" else f"{self.name}({self.shape_scale_mode})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


def as_matrix(x: Tensor) -> Tensor:
    """View a >= 2-D tensor as the matrix ``(shape[0], prod(shape[1:]))`` (conv filters: out x in*k*k)."""
    return x if x.ndim == 2 else x.reshape(x.shape[0], math.prod(x.shape[1:]))  # explicit: shards may be empty


def shape_fans(shape: torch.Size | tuple[int, ...]) -> tuple[int, int]:
    """``(fan_out, fan_in)`` for shape factors: :func:`matrix_dims` with each fan at least 1, so a
    0-size parameter (which has no entries to scale) gets a finite factor instead of a division by 0."""
    m, n = matrix_dims(shape)
    return max(1, m), max(1, n)


def matrix_dims(shape: torch.Size | tuple[int, ...]) -> tuple[int, int]:
    """``(fan_out, fan_in)`` of a parameter viewed as a matrix; vectors are ``(1, numel)``."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, int(shape[0])
    return int(shape[0]), int(math.prod(shape[1:]))


def sum_over_rows(row_values: Tensor) -> Tensor:
    """The float64 sum of per-row (or per-entry) values: the last step of every dual norm that is a
    sum over rows (``rowwise_dual_norm``). Sharded by rows, a tensor's dual norm is the sum of its
    shards' (``steepest.distributed`` adds them in float64); summing in float64 here too makes the
    two agree to float64 rounding, so both round to the same float32 value, and the sum cannot
    overflow for float32 inputs."""
    return row_values.to(torch.float64).sum()
