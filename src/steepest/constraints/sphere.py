"""Spheres: fix the Frobenius norm or the spectral norm of a weight.

``Hypersphere`` keeps ``||W||_F = radius`` (any tensor, viewed as one vector); ``SpectralSphere``
keeps ``sigma_1(W) = radius`` for the matrix view ``(fan_out, fan_in)``. Both are radial
projections: ``W`` is rescaled, its direction is kept.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Constraint, choice, positive, positive_int, step_size_value
from .spectral_norm import SPECTRAL_UNITS, effective_bound, exact_sigma_max, top_singular_triple

__all__ = ["Hypersphere", "SpectralSphere", "SPECTRAL_SPHERE_METHODS"]

#: values of ``SpectralSphere(method=...)``
SPECTRAL_SPHERE_METHODS: tuple[str, ...] = ("svd", "power")


class Hypersphere(Constraint):
    """The Frobenius sphere ``{W : ||W||_F = radius}``: ``W <- radius * W / ||W||_F``.

    The radial map is the Frobenius-nearest point of the sphere for every nonzero ``W``. A zero
    ``W`` has no nearest point (every point of the sphere is equally near); it is returned unchanged
    (zero), so ``check`` reports it as a violation of 1.0. Works on tensors of any shape with at
    least one dimension (all entries form one vector).

    ``check(w)`` returns the relative radius error ``| ||W||_F - radius | / radius`` (float64).

    Cost: one Frobenius norm and one rescale.

    Args:
        radius: the radius (> 0).
    """

    name = "hypersphere"
    cost = "one Frobenius norm and one rescale"
    min_ndim = 1

    def __init__(self, radius: float = 1.0):
        self.radius = positive("radius", radius)

    def _project(self, m: Tensor, step_size: float | None) -> Tensor:
        step_size_value(step_size)
        norm = float(torch.linalg.vector_norm(m))
        if norm == 0.0:
            return m.clone()
        return m * (self.radius / norm)

    def check(self, w: Tensor) -> float:
        if w.ndim < self.min_ndim:
            raise ValueError(f"Constraint {self.name!r} needs a tensor with at least {self.min_ndim} dimensions, "
                             f"got shape {tuple(w.shape)}")
        norm = float(torch.linalg.vector_norm(w.detach().to(torch.float64)))
        return abs(norm - self.radius) / self.radius

    def describe(self) -> str:
        return f"{self.name}({self.radius:g})"


class SpectralSphere(Constraint):
    """The spectral sphere ``{W : sigma_1(W) = r}``: ``W <- r * W / sigma_1(W)``.

    Source: "Controlled LLM Training on Spectral Sphere" (arXiv 2601.08393): weights are kept on the
    sphere of a fixed spectral norm (with ``units="rms"`` the RMS->RMS operator norm), so their scale
    is controlled exactly instead of only bounded. ``r = radius`` with ``units="spectral"``,
    ``r = radius * sqrt(fan_out / fan_in)`` with ``units="rms"``.

    ``method="svd"``: ``sigma_1`` exactly (``torch.linalg.matrix_norm(ord=2)`` in the working dtype;
    the result has ``sigma_1 = r`` to about 1e-7 relative in float32). ``method="power"``: Lanczos on
    the smaller Gram (:func:`steepest.constraints.spectral_norm.top_singular_triple`, ``iters`` steps),
    then a second run started from the Ritz vector on the rescaled matrix and a second rescale, which
    corrects most of the first estimate's shortfall; the result can still sit slightly above ``r``
    when the top singular values are crowded (see the accuracy table in ``spectral.py``).

    This is the radial projection (it keeps the direction of ``W``), not the Frobenius-nearest point
    of the spectral sphere (that one clips every singular value above ``r`` to ``r``, or raises only
    the largest one to ``r`` when all are below). A zero ``W`` stays zero.

    ``check(w)`` returns ``|sigma_1 - r| / r`` with the exact ``sigma_1`` (float64).

    Cost: ``svd``: one SVD (singular values only); ``power``: 2 matvecs per Lanczos step, two runs.

    Args:
        radius: the spectral radius (> 0).
        units: ``"spectral"`` or ``"rms"``.
        method: ``"svd"`` or ``"power"``.
        iters: Lanczos steps per run of ``method="power"``.
    """

    name = "spectral_sphere"
    cost = "svd: singular values of one SVD; power: 2 matvecs per Lanczos step, two runs of iters"

    def __init__(self, radius: float = 1.0, units: str = "spectral", method: str = "svd", iters: int = 16):
        self.radius = positive("radius", radius)
        self.units = choice("units", units, SPECTRAL_UNITS)
        self.method = choice("method", method, SPECTRAL_SPHERE_METHODS)
        self.iters = positive_int("iters", iters)

    def _project(self, m: Tensor, step_size: float | None) -> Tensor:
        step_size_value(step_size)
        r = effective_bound(self.radius, self.units, tuple(m.shape))
        if self.method == "svd":
            sigma = float(torch.linalg.matrix_norm(m, ord=2)) if m.numel() else 0.0
            return m * (r / sigma) if sigma > 0.0 else m.clone()
        sigma, u, v = top_singular_triple(m, self.iters)
        if sigma == 0.0:
            return m.clone()
        out = m * (r / sigma)
        start = v if m.shape[0] >= m.shape[1] else u
        sigma2, _, _ = top_singular_triple(out, self.iters, start=start)
        return out * (r / sigma2) if sigma2 > 0.0 else out

    def check(self, w: Tensor) -> float:
        if w.ndim < self.min_ndim:
            raise ValueError(f"Constraint {self.name!r} needs a tensor with at least {self.min_ndim} dimensions, "
                             f"got shape {tuple(w.shape)}")
        r = effective_bound(self.radius, self.units, tuple(w.shape))
        return abs(exact_sigma_max(w) - r) / r

    def describe(self) -> str:
        units = "" if self.units == "spectral" else ", rms"
        return f"{self.name}({self.radius:g}{units})"
