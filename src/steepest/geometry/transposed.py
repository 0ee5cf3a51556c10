"""A geometry for weights stored ``in x out``: every operation runs on the transpose.

Every geometry here reads a matrix as ``(fan_out, fan_in)``: ``nn.Linear`` stores ``y = x W^T`` with
``W`` of shape ``(out, in)``. Some layers store the transpose: Hugging Face's GPT-2 family uses
``transformers.pytorch_utils.Conv1D``, ``y = x W + b`` with ``W`` of shape ``(in, out)``. Read as
``(fan_out, fan_in)`` such a weight gets the shape factor of the transposed layer (Muon's
``sqrt(max(1, m/n))`` and the RMS->RMS factor ``sqrt(m/n)`` swap ``m`` and ``n``), Scion's column and
row norms swap, and the sign geometry's ``1/fan_in`` uses the wrong fan.

``Transposed(inner)`` is the geometry ``inner`` applied to ``W^T``. For a matrix norm with
``||W||' = ||W^T||``, the LMO and the dual norm transform the same way:

    lmo'(X) = lmo(X^T)^T,    ||X||'_* = ||X^T||_*,    shape_scale'((n, m)) = shape_scale((m, n)),

since ``<X, D> = <X^T, D^T>``. The spectral norm is transpose-invariant, so Muon's *direction* does
not change (the polar factor of ``X^T`` is the transpose of ``X``'s); only the shape factor and the
row/column-wise geometries do. Transposed tensors are strided views, never copies, except where the
inner geometry copies anyway.

A group selects it with ``layout="in_out"`` (default ``"out_in"``); ``steepest.for_model`` sets it
for ``Conv1D``-style modules by itself.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .base import Geometry

#: the values of a group's ``layout`` key
LAYOUTS = ("out_in", "in_out")


def _t(x: Tensor) -> Tensor:
    return x.mT if x.ndim >= 2 else x


class Transposed(Geometry):
    """``inner`` on the transpose of a 2-D weight stored ``(in, out)`` (module docstring)."""

    min_ndim = 2
    # the rows of the stored weight are the inner geometry's columns: shards of dim 0 are not rows
    rowwise_lmo = False
    rowwise_dual_norm = False

    def __init__(self, inner: Geometry) -> None:
        if isinstance(inner, Transposed):
            raise TypeError("Transposed(Transposed(g)) is g: transpose once")
        self.inner = inner
        self.batched_lmo = inner.batched_lmo
        self.name = inner.name
        self.shape_scales = inner.shape_scales
        self.shape_scale_mode = inner.shape_scale_mode

    def lmo(self, x: Tensor) -> Tensor:
        return _t(self.inner.lmo(_t(x)))

    def lmo_(self, x: Tensor) -> Tensor:
        return _t(self.inner.lmo_(_t(x)))

    def lmo_many_(self, xs: list[Tensor]) -> list[Tensor]:
        return [_t(o) for o in self.inner.lmo_many_([_t(x) for x in xs])]

    def lmo_many(self, xs: list[Tensor], compiles: Callable[[Tensor], bool] | None = None) -> list[Tensor]:
        return [_t(o) for o in self.inner.lmo_many([_t(x) for x in xs], compiles)]

    def dual_norm(self, x: Tensor) -> Tensor:
        return self.inner.dual_norm(_t(x))

    def norm(self, w: Tensor) -> Tensor:
        return self.inner.norm(_t(w))

    def lmo_spectral_norm(self) -> float | None:
        return self.inner.lmo_spectral_norm()

    def shape_scale(self, shape: torch.Size | tuple[int, ...]) -> float:
        return self.inner.shape_scale(tuple(shape)[::-1])

    def init_(self, w: Tensor, scale: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        self.inner.init_(_t(w), scale=scale, generator=generator)  # in place through the view
        return w

    def check_shape(self, shape: torch.Size | tuple[int, ...], name: str) -> None:
        if len(shape) != 2:
            raise ValueError(f"layout 'in_out' applies to 2-D weights stored (in, out), got shape {tuple(shape)} "
                             f"for parameter {name!r}")
        self.inner.check_shape(tuple(shape)[::-1], name)

    def describe(self) -> str:
        return f"{self.inner.describe()} on W^T"
