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

from .base import Geometry


def _work(x: Tensor) -> Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class RMS(Geometry):
    name = "rms"

    def lmo(self, x: Tensor) -> Tensor:
        w = _work(x)
        if w.numel() == 0:
            return w.clone()
        rms = torch.linalg.vector_norm(w) / math.sqrt(w.numel())
        return w / torch.where(rms > 0, rms, 1.0)  # zero stays zero; no absolute floor (float64)

    def dual_norm(self, x: Tensor) -> Tensor:
        w = _work(x)
        return torch.linalg.vector_norm(w) * math.sqrt(max(w.numel(), 1))

    def norm(self, w: Tensor) -> Tensor:
        v = _work(w)
        return torch.linalg.vector_norm(v) / math.sqrt(max(v.numel(), 1))

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
        return torch.linalg.vector_norm(_work(x))

    def norm(self, w: Tensor) -> Tensor:
        return torch.linalg.vector_norm(_work(w))

    def init_(self, w: Tensor, scale: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """Leaves ``w`` unchanged (the identity has no preferred point)."""
        return w

    def describe(self) -> str:
        return "none"
