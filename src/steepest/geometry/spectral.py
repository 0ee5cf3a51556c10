"""Spectral geometry: Muon's and Scion's norm for hidden matrices.

Norm ``||W||_2`` (largest singular value) of the matrix view ``(fan_out, fan_in)`` (conv filters are
flattened to ``out x in*kh*kw`` and reshaped back). Its LMO is the polar factor ``U V^T`` of
``G = U S V^T``, its dual is the nuclear norm ``sum_i s_i``, and ``<G, U V^T> = ||G||_nuc``.

The polar factor comes from :func:`steepest.polar.polar`: a Newton-Schulz schedule (``keller``,
``you``, ``quintic``, ``polar_express``, ``polar_express_8``) or the exact ``svd``. Newton-Schulz
returns ``U S' V^T`` with ``S'`` in the schedule's band, so the identities hold to that tolerance.
Same-shape matrices are orthogonalized in one batched call (``lmo_many``).

``shape_scale`` modes for ``(m, n) = (fan_out, fan_in)``:

- ``original``: ``sqrt(max(1, m/n))`` (Keller Jordan's Muon, torch ``adjust_lr_fn="original"``);
  update RMS ``1/sqrt(n)``.
- ``match_rms_adamw``: ``0.2 sqrt(max(m, n))`` (Moonlight, arXiv 2502.16982); update RMS 0.2, so
  AdamW's lr and weight decay carry over.
- ``rms_to_rms``: ``sqrt(m/n)``, the unit ball of the RMS->RMS operator norm
  ``sqrt(n/m) ||W||_2`` (Scion's ``Spectral``, arXiv 2502.07529).
- ``none``: 1.
"""
from __future__ import annotations

import math

from typing import Callable

import torch
from torch import Tensor

from ..polar import get_schedule, polar, resolve_ns_dtype
from ..polar.newton_schulz import check_form
from .base import Geometry, as_matrix, shape_fans


class Spectral(Geometry):
    """Spectral-norm geometry with a Newton-Schulz or SVD polar factor.

    Args:
        ns: schedule name or ``"svd"``.
        ns_steps: iterations (``None``: the schedule's default).
        ns_dtype: ``"auto"`` (:func:`steepest.polar.dtype.auto_ns_dtype`: bfloat16 on CUDA and on CPUs
            with native bfloat16 matmul, float32 elsewhere) or a dtype name.
        eps: normalization guard of Newton-Schulz (zero input -> zero output).
        shape_scale: one of ``original``, ``match_rms_adamw``, ``rms_to_rms``, ``none``.
        ns_form: ``"auto"``, ``"direct"`` or ``"gram"``: Newton-Schulz on the matrix or on its short
            side's Gram matrix (:func:`steepest.polar.choose_form`).
    """

    name = "spectral"
    shape_scales = ("original", "match_rms_adamw", "rms_to_rms", "none")
    min_ndim = 2
    batched_lmo = True  # same-shape matrices share one batched Newton-Schulz call

    def __init__(self, ns: str = "keller", ns_steps: int | None = None, ns_dtype: str = "auto",
                 eps: float = 1e-7, shape_scale: str | None = None, ns_form: str = "auto"):
        super().__init__(shape_scale)
        check_form(ns_form)
        self.ns_form = ns_form
        self.ns = ns
        self.ns_steps = ns_steps
        self.ns_dtype = ns_dtype
        self.eps = eps

    def lmo_spectral_norm(self) -> float:
        """1 for the exact polar factor; the upper end of the schedule's documented output band
        otherwise (1.14 for ``keller``)."""
        return 1.0 if self.ns == "svd" else get_schedule(self.ns).band[1]

    def _dtype(self, x: Tensor) -> torch.dtype:
        return resolve_ns_dtype(self.ns_dtype, x.device)

    def lmo(self, x: Tensor, compile: bool = False) -> Tensor:
        m = as_matrix(x)
        return polar(m, self.ns, self.ns_steps, self._dtype(x), self.eps, compile=compile,
                     form=self.ns_form).reshape(x.shape)

    def lmo_many(self, xs: list[Tensor], compiles: Callable[[Tensor], bool] | None = None) -> list[Tensor]:
        """Polar factors of every tensor, one batched call per (shape, dtype, device) bucket, with
        Newton-Schulz compiled for the buckets where ``compiles(x)`` holds (never for ``svd``)."""
        out: list[Tensor | None] = [None] * len(xs)
        buckets: dict[tuple, list[int]] = {}
        for i, x in enumerate(xs):
            buckets.setdefault((tuple(x.shape), x.dtype, x.device), []).append(i)
        for idx in buckets.values():
            first = xs[idx[0]]
            compile = compiles is not None and self.ns != "svd" and compiles(first)
            if len(idx) == 1:
                out[idx[0]] = self.lmo(first, compile=compile)
                continue
            stack = torch.stack([as_matrix(xs[i]) for i in idx])
            result = polar(stack, self.ns, self.ns_steps, self._dtype(first), self.eps, compile=compile,
                           form=self.ns_form)
            for k, i in enumerate(idx):
                out[i] = result[k].reshape(first.shape)
        return out  # type: ignore[return-value]

    def dual_norm(self, x: Tensor) -> Tensor:
        m = as_matrix(x)
        work = m if m.dtype in (torch.float32, torch.float64) else m.float()
        return torch.linalg.matrix_norm(work, ord="nuc")

    def norm(self, w: Tensor) -> Tensor:
        m = as_matrix(w)
        work = m if m.dtype in (torch.float32, torch.float64) else m.float()
        return torch.linalg.matrix_norm(work, ord=2)

    def shape_scale(self, shape) -> float:
        m, n = shape_fans(shape)
        mode = self.shape_scale_mode
        if mode == "original":
            return math.sqrt(max(1.0, m / n))
        if mode == "match_rms_adamw":
            return 0.2 * math.sqrt(max(m, n))
        if mode == "rms_to_rms":
            return math.sqrt(m / n)
        return 1.0

    def init_(self, w: Tensor, scale: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """Orthogonal init (semi-orthogonal matrix view, spectral norm 1) times ``scale``."""
        m = as_matrix(w)
        g = torch.randn(m.shape, generator=generator, dtype=torch.float32, device=w.device)
        q = polar(g, "svd", dtype=torch.float32)
        with torch.no_grad():
            w.copy_((q * scale).reshape(w.shape).to(w.dtype))
        return w

    def describe(self) -> str:
        steps = "" if self.ns == "svd" else f"x{self.ns_steps}" if self.ns_steps else ""
        return f"spectral({self.ns}{steps}, {self.shape_scale_mode})"
