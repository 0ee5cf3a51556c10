"""RMS geometry for vectors (biases, norm gains) and the identity used after Adam's preconditioner.

``RMS``: norm ``||w||_RMS = ||w||_2 / sqrt(numel)``; LMO ``x / RMS(x)`` (unit RMS); dual norm
``sqrt(numel) ||x||_2``. This is Scion's ``BiasRMS``.

``Identity``: no norm ball. The direction is the state transform's output as is (Adam's
``m / (sqrt(v) + eps)`` in the AdamW-style fallback groups). ``dual_norm`` reports the Frobenius
norm for diagnostics; ``<x, lmo(x)> = ||x||_F^2``, so the LMO identity does not apply to it.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..numerics import l2_norm, l2_normalize
from .base import Geometry


class RMS(Geometry):
    name = "rms"

    def lmo(self, x: Tensor) -> Tensor:
        # x / RMS(x) = sqrt(numel) x / ||x||_2, range-safe (steepest.numerics); zero stays zero
        return l2_normalize(x).mul_(math.sqrt(max(x.numel(), 1)))

    def dual_norm(self, x: Tensor) -> Tensor:
        return l2_norm(x) * math.sqrt(max(x.numel(), 1))

    def norm(self, w: Tensor) -> Tensor:
        return l2_norm(w) / math.sqrt(max(w.numel(), 1))

    def init_(self, w: Tensor, scale: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """Constant ``scale`` (RMS ``scale``; ones, the usual gain init, at ``scale=1``)."""
        with torch.no_grad():
            w.fill_(scale)
        return w


class Identity(Geometry):
    name = "identity"
    rowwise_lmo = True

    def lmo(self, x: Tensor) -> Tensor:
        return x

    def dual_norm(self, x: Tensor) -> Tensor:
        return l2_norm(x)

    def norm(self, w: Tensor) -> Tensor:
        return l2_norm(w)

    def init_(self, w: Tensor, scale: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """Leaves ``w`` unchanged (the identity has no preferred point)."""
        return w

    def describe(self) -> str:
        return "none"
