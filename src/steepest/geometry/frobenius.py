"""Frobenius (l2) geometry: the Euclidean ball of the whole tensor.

Norm ``||W||_F``; LMO ``G / ||G||_F``; the norm is self-dual, so ``<G, lmo(G)> = ||G||_F``. Steepest
descent under it is normalized SGD per tensor. It is Lion-K's ``K = ||x||_2`` (arXiv 2310.05898:
``grad K(x) = x / ||x||_2``, so Lion-K with decoupled decay ``lambda`` keeps ``||W||_F <= 1/lambda``)
and the unit-Frobenius input of AuON's cosh brake (arXiv 2509.24320).

``shape_scale`` modes for ``(m, n) = (fan_out, fan_in)``: ``none`` (1) or ``original``
(``sqrt(max(1, m/n))``, Keller Jordan's Muon factor, which AuON's reference code applies).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..numerics import l2_norm, l2_normalize
from .base import Geometry, shape_fans

_TINY = 1e-30


class Frobenius(Geometry):
    name = "frobenius"
    shape_scales = ("none", "original")

    def lmo(self, x: Tensor) -> Tensor:
        return l2_normalize(x)  # range-safe (steepest.numerics); zero stays zero

    def dual_norm(self, x: Tensor) -> Tensor:
        return l2_norm(x)

    def norm(self, w: Tensor) -> Tensor:
        return l2_norm(w)

    def lmo_spectral_norm(self) -> float:
        """A unit-Frobenius matrix has spectral norm at most 1."""
        return 1.0

    def shape_scale(self, shape) -> float:
        if self.shape_scale_mode == "original":
            m, n = shape_fans(shape)
            return math.sqrt(max(1.0, m / n))
        return 1.0

    def init_(self, w: Tensor, scale: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """Gaussian entries rescaled to Frobenius norm ``scale``."""
        x = torch.randn(w.shape, generator=generator, dtype=torch.float32, device=w.device)
        x *= scale / torch.linalg.vector_norm(x).clamp(min=_TINY)
        with torch.no_grad():
            w.copy_(x.to(w.dtype))
        return w
