"""Column- and row-norm geometries for embeddings and output layers (Scion, arXiv 2502.07529).

Both view a parameter as the matrix ``(fan_out, fan_in)``; a zero column or row gets a zero step.

``ColNorm``: norm ``max_j ||W[:, j]||_2``; LMO normalizes every column to unit l2 norm; dual norm
``sum_j ||G[:, j]||_2``. ``shape_scale``: ``rms`` = ``sqrt(fan_out)`` (columns of unit RMS, the
l1->RMS operator norm, Scion's ``ColNorm``) or ``none``.

``RowNorm``: norm ``max_i ||W[i, :]||_2``; LMO normalizes every row to unit l2 norm; dual norm
``sum_i ||G[i, :]||_2``. ``shape_scale``: ``rms`` = ``sqrt(fan_in)`` (rows of unit RMS: an
``nn.Embedding`` stores one token vector per row, so this is Scion's ``ColNorm(transpose=True)``
for embeddings), ``rms_to_linf`` = ``1/sqrt(fan_in)`` (the RMS->l_inf operator norm of an output
layer, Scion's ``RowNorm(normalized=True)``), or ``none``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..numerics import l2_norm, l2_normalize
from .base import Geometry, as_matrix, shape_fans, sum_over_rows

_TINY = 1e-30


def _normalize_along(x: Tensor, dim: int) -> Tensor:
    # range-safe (steepest.numerics): a column of entries above ~1e19 or below ~1e-19 is unit too,
    # and a zero column stays zero
    return l2_normalize(as_matrix(x), dim=dim).reshape(x.shape)


def _norms_along(x: Tensor, dim: int) -> Tensor:
    return l2_norm(as_matrix(x), dim=dim)


def _gaussian_unit(shape, dim: int, generator, device) -> Tensor:
    g = torch.randn(shape, generator=generator, device=device)
    return g / torch.linalg.vector_norm(g, dim=dim, keepdim=True).clamp(min=_TINY)


class _AxisNorm(Geometry):
    """Shared body of ColNorm (``axis = 0``: the vectors are columns) and RowNorm (``axis = 1``)."""

    axis: int = 0
    min_ndim = 2

    def lmo(self, x: Tensor) -> Tensor:
        return _normalize_along(x, self.axis)

    def dual_norm(self, x: Tensor) -> Tensor:
        return sum_over_rows(_norms_along(x, self.axis))

    def norm(self, w: Tensor) -> Tensor:
        norms = _norms_along(w, self.axis)
        return norms.amax() if norms.numel() else norms.sum()  # an empty matrix has norm 0

    def init_(self, w: Tensor, scale: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """Gaussian vectors (columns or rows) normalized to l2 norm ``scale``."""
        u = _gaussian_unit(as_matrix(w).shape, self.axis, generator, w.device)
        with torch.no_grad():
            w.copy_((u * scale).reshape(w.shape).to(w.dtype))
        return w


class ColNorm(_AxisNorm):
    name = "colnorm"
    shape_scales = ("rms", "none")
    axis = 0

    def shape_scale(self, shape) -> float:
        return math.sqrt(shape_fans(shape)[0]) if self.shape_scale_mode == "rms" else 1.0


class RowNorm(_AxisNorm):
    name = "rownorm"
    rowwise_lmo = True
    rowwise_dual_norm = True
    shape_scales = ("rms", "rms_to_linf", "none")
    axis = 1

    def shape_scale(self, shape) -> float:
        n = shape_fans(shape)[1]
        if self.shape_scale_mode == "rms":
            return math.sqrt(n)
        if self.shape_scale_mode == "rms_to_linf":
            return 1.0 / math.sqrt(n)
        return 1.0
