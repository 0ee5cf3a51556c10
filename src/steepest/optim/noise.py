"""Noise-adaptive layerwise learning rates (LANTON, arXiv 2510.14009): the pure kernels.

For every layer ``l`` of a param group (the layers that share a norm), the engine keeps an EMA of
the squared gradient noise measured in the layer's dual norm and scales the group's step size per
layer so that noisier layers take smaller steps:

    Delta_t^l = G_t^l - G~_t^l       G~ = the previous step's gradient (``noise_source="previous"``,
                                     no extra backward) or a second, independent mini-batch
                                     gradient at the same point (``"second"``)
    H_t^l     = beta H_{t-1}^l + (1 - beta) ||Delta_t^l||_*^2      (bias-corrected: H / (1 - beta^k))
    sigma^l   = sqrt(H^l + eps * max_j H^j)
    eta_t^l   = eta_t * rule(sigma)^l

``||.||_*`` is the dual norm of the layer's step norm: ``radius * shape_scale * geometry.dual_norm``
(a step ``s * lmo(x)`` lies in the ball of ``||.|| / s``, whose dual norm is ``s ||.||_*``), so
layers of different shapes are measured in the units their steps are taken in. For the spectral
geometry the dual is the nuclear norm, estimated as ``<Delta, polar(Delta)>`` with a Newton-Schulz
polar factor (``noise_ns``, default ``quintic``: output singular values in [0.97, 1.04], so the
estimate is within 4% for singular values above 1e-2 of the Frobenius norm, and smaller ones add
little to a nuclear norm) or exactly by SVD (``noise_ns="svd"``). The other geometries' dual norms
are exact and cheap (l1, sums of column/row norms, Frobenius).

Why the difference measures noise: for independent samples ``E||G - G~||^2 = 2 Var``; for
consecutive steps the same holds up to the drift of the true gradient between the two points.

Rules (``noise_rule``), all decreasing in the layer's own noise and exactly 1 when every layer of
the group has the same noise (then the optimizer is exactly its base preset):

- ``min_ratio`` (default): ``min_j sigma^j / sigma^l`` in (0, 1]: the least noisy layer runs at the
  base lr, noisier layers slow down in proportion to their noise standard deviation.
- ``gmean_ratio``: ``gmean_j sigma^j / sigma^l``: quieter-than-typical layers speed up, noisier
  ones slow down; the factors' geometric mean is 1.

What is verified about the paper and what is reconstructed (its Algorithm 1 could not be read from
the public copies): the noise is estimated in the dual norm of each layer's LMO, it sets
time-varying layerwise rates within each group, there are two noise options, and the momentum is
the EMA ``B_t = beta1 B_{t-1} + (1 - beta1) G_t``; the exact EMA form, the floor, the rule and the
defaults (``noise_beta=0.9``) are this library's reconstruction (research/algorithms.md 5.1).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from ..geometry import Geometry, Spectral, Transposed

NOISE_SOURCES = ("previous", "second")
NOISE_RULES = ("min_ratio", "gmean_ratio")


def nuclear_norm_estimate(xs: list[Tensor], ns: str, ns_dtype: str = "auto") -> list[Tensor]:
    """``<X, polar(X)>`` for every matrix (conv filters flattened) with the ``ns`` schedule, batched
    over same-shape matrices; ``ns="svd"`` gives the exact nuclear norm."""
    estimator = Spectral(ns=ns, ns_dtype=ns_dtype)
    if ns == "svd":
        return [estimator.dual_norm(x) for x in xs]
    polars = estimator.lmo_many(xs)
    out = []
    for x, o in zip(xs, polars):
        w = x if x.dtype in (torch.float32, torch.float64) else x.float()
        out.append((w * o.to(w.dtype)).sum())
    return out


def dual_norms(geometry: Geometry, deltas: list[Tensor], ns: str, ns_dtype: str = "auto") -> list[Tensor]:
    """The unscaled dual norm ``||Delta||_*`` of each tensor under ``geometry`` (0-d tensors)."""
    if isinstance(geometry, Transposed):  # weights stored (in, out): the norm of the transpose
        geometry, deltas = geometry.inner, [d.mT for d in deltas]
    if isinstance(geometry, Spectral):
        return nuclear_norm_estimate(deltas, ns, ns_dtype)
    return [geometry.dual_norm(d) for d in deltas]


def noise_stds(noise_sq: Sequence[float], eps: float) -> list[float]:
    """``sqrt(H^l + eps * max_j H^j)`` for the bias-corrected noise EMAs ``H`` of one group."""
    floor = eps * max(noise_sq) if noise_sq else 0.0
    return [math.sqrt(h + floor) for h in noise_sq]


def layer_factors(stds: Sequence[float], rule: str) -> list[float]:
    """Per-layer lr factors of one group from the layers' noise standard deviations."""
    if not stds:
        return []
    low, high = min(stds), max(stds)
    if high == low or high == 0.0:
        return [1.0] * len(stds)  # equal noise (or none measured): exactly the base optimizer
    if rule == "min_ratio":
        return [low / s for s in stds]
    if rule == "gmean_ratio":
        positive = [s for s in stds if s > 0]
        center = math.exp(sum(math.log(s) for s in positive) / len(positive))
        return [center / s if s > 0 else 1.0 for s in stds]
    raise ValueError(f"Unknown noise_rule {rule!r}; expected one of: {', '.join(NOISE_RULES)}")
