"""Noise-adaptive layerwise learning rates (LANTON, arXiv 2510.14009): the pure kernels.

For every layer ``l`` of a param group (the layers that share a norm), the engine keeps an EMA of
the squared gradient noise measured in the layer's dual norm and scales the group's step size per
layer so that noisier layers take smaller steps:

    Delta_t^l = G_t^l - G~_t^l       G~ = the previous step's gradient (``noise_source="previous"``,
                                     no extra backward) or a second, independent mini-batch
                                     gradient at the same point (``"second"``)
    H_n^l     = b H_{n-1}^l + (1 - b) ||Delta_n^l||_*^2             over the layer's measurements
                                     n = 1, 2, ... with b = noise_beta ** noise_every
                                     (bias-corrected: H_n / (1 - b^n))
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
the group has the same noise (then the optimizer is exactly its base preset). With ``s_min`` the
smallest ``sigma`` of the group:

- ``min_ratio``: ``s_min / sigma^l`` in (0, 1]: the least noisy layer runs at the base lr, noisier
  layers slow down in proportion to their noise standard deviation.
- ``sqrt_ratio``: ``sqrt(s_min / sigma^l)``: the same, with the step shrinking like the inverse
  square root of the noise standard deviation (the ``noise_alpha -> 0`` limit of ``alpha_sqrt``).
- ``alpha_sqrt``: ``sqrt(a^l / max_j a^j)`` with ``a^l = alpha / sqrt(alpha^2 + H^l)``, that is
  ``((alpha^2 + s_min^2) / (alpha^2 + (sigma^l)^2)) ** (1/4)``, where ``alpha = noise_alpha`` (in
  the units of ``sigma``: the ``noise`` column of ``layer_stats()``) sets the noise level below
  which noise stops mattering: layers much quieter than ``alpha`` get factors near 1, layers much
  noisier get ``sqrt_ratio``'s factors; ``alpha -> infinity`` is the base optimizer. This is the
  per-layer rate of one public reimplementation of the paper, read from public summaries; it is
  not verified against the paper itself.
- ``gmean_ratio``: ``gmean_j sigma^j / sigma^l``: quieter-than-typical layers speed up, noisier
  ones slow down; the factors' geometric mean is 1.

Cost (``noise_every = k``): the dual norms are measured at every k-th step of a layer only (steps
k, 2k, ...), and the factors are held in between. With ``noise_source="previous"`` the gradient
is kept at the step before each measurement (steps k-1, 2k-1, ...), so a measurement is always the
difference of two consecutive gradients; with ``"second"`` a second gradient is needed only at the
measuring steps (:meth:`~steepest.optim.engine.GeometryOptimizer.needs_second_grads`). Each
measurement enters the EMA with weight ``1 - noise_beta ** k`` (and the bias correction uses the
same power), so ``noise_beta`` is a per-step coefficient whatever ``k``: the EMA spans about
``1 / (1 - noise_beta)`` steps either way. ``k = 1`` measures at every step.

What is verified about the paper and what is reconstructed (its Algorithm 1 could not be read from
the public copies): the noise is estimated in the dual norm of each layer's LMO, it sets
time-varying layerwise rates within each group, there are two noise options, and the momentum is
the EMA ``B_t = beta1 B_{t-1} + (1 - beta1) G_t``; the exact EMA form, the floor, the rule and the
defaults are this library's reconstruction (``docs/algorithms/lanton.md`` lists what is verified
and where it was read).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from ..geometry import Geometry, Spectral, Transposed

NOISE_SOURCES = ("previous", "second")
NOISE_RULES = ("min_ratio", "sqrt_ratio", "alpha_sqrt", "gmean_ratio")
#: the defaults of ``noise_rule``, ``noise_alpha`` and ``noise_every`` in every preset: the winner of
#: the LANTON study (``steepest bench lanton``, docs/algorithms/lanton.md) at tuned lr, and a
#: measurement every 10 steps, which keeps LANTON's optimizer step within 1.15x its base's
NOISE_RULE = "alpha_sqrt"
NOISE_ALPHA = 0.3
NOISE_EVERY = 10


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


def layer_factors(stds: Sequence[float], rule: str, alpha: float = 0.0) -> list[float]:
    """Per-layer lr factors of one group from the layers' noise standard deviations (``alpha`` is
    ``noise_alpha``, used by ``alpha_sqrt`` only)."""
    if not stds:
        return []
    low, high = min(stds), max(stds)
    if high == low or high == 0.0:
        return [1.0] * len(stds)  # equal noise (or none measured): exactly the base optimizer
    if rule == "min_ratio":
        return [low / s for s in stds]
    if rule == "sqrt_ratio":
        return [math.sqrt(low / s) for s in stds]
    if rule == "alpha_sqrt":
        a2 = alpha * alpha
        return [math.sqrt(math.sqrt((a2 + low * low) / (a2 + s * s))) for s in stds]
    if rule == "gmean_ratio":
        positive = [s for s in stds if s > 0]
        center = math.exp(sum(math.log(s) for s in positive) / len(positive))
        return [center / s if s > 0 else 1.0 for s in stds]
    raise ValueError(f"Unknown noise_rule {rule!r}; expected one of: {', '.join(NOISE_RULES)}")


def measurement_beta(beta: float, every: int) -> float:
    """The EMA coefficient of one measurement: ``noise_beta ** noise_every``, so that ``noise_beta``
    keeps its meaning per step (the EMA forgets at the same rate per step whatever ``noise_every``)."""
    return beta ** every


def measures_at(step: int, every: int) -> bool:
    """Whether a layer measures its noise at its ``step``-th noise-adaptive step (1-based)."""
    return step % every == 0


def keeps_gradient_at(step: int, every: int) -> bool:
    """Whether a layer keeps its gradient at its ``step``-th step for the next step's measurement
    (``noise_source="previous"``)."""
    return (step + 1) % every == 0
