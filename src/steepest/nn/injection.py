"""Stable residual updates: a contractive state injection and the delta (rank-1 erase-write) rule.

``StableInjection`` (Parcae, arXiv 2604.12946) injects an input ``e`` into a recurrent (looped)
state ``h`` through a discretized diagonal linear system whose state matrix is a contraction for
*every* parameter value::

    Delta = softplus(dt_bias)            > 0, per channel
    A     = exp(A_log)                   > 0, per channel
    A_bar = exp(-max(Delta * A, eps))    in (0, exp(-eps)], eps = 1e-6
    h'    = A_bar * h + Delta * (e @ B^T)

``A_bar`` is the diagonal state matrix, so its spectral norm is ``max A_bar < 1``: iterating the
injection cannot blow the state up, whatever the optimizer does to ``A_log`` and ``dt_bias``. The
clamp makes the bound hold in floating point: without it, ``Delta * A < ~3e-8`` (reachable, e.g.
``A_log = dt_bias = -20``) rounds ``exp(-Delta * A)`` to exactly 1.0 in float32;
``exp(-1e-6) = 1 - 1e-6`` is 17 float32 ulps below 1. (The product ``Delta * A`` is NaN only for
``A = inf`` with ``Delta = 0``, i.e. ``A_log > 88`` together with ``dt_bias < -103`` in float32.)
Init: ``A_log = 0``, ``dt_bias = log(expm1(-log(decay_init)))`` so that ``A_bar = decay_init``
(``sqrt(1/5)``), ``B = I``. Cost: ``dim^2`` multiply-adds per token (the ``B`` matmul).

``DeltaResidual`` (Deep Delta Learning, arXiv 2601.00417) keeps a matrix state ``X`` of shape
``[..., dim, d_v]`` and updates it with a rank-1 erase-and-write along a unit key ``k``::

    k    = k_in / ||k_in||                                 (the branch output, unit l2)
    beta = 2 sigmoid(w_beta . x_in + b_beta)               in [0, 2]
    v    = v_scale sigmoid(W_v x_in + b_v)                 in (0, v_scale)^{d_v}
    X'   = X + beta k (v^T - k^T X) = (I - beta k k^T) X + beta k v^T

``I - beta k k^T`` has eigenvalues ``1`` (on ``k^perp``) and ``1 - beta`` in ``[-1, 1]`` (on ``k``):
``beta = 0`` is the identity, ``beta = 1`` replaces the component of ``X`` along ``k`` by ``v``
(``k^T X' = v^T``), ``beta = 2`` is the Householder reflection through ``k^perp`` (orthogonal).
The update is the pure function :func:`delta_update`; the module computes ``k``, ``beta``, ``v``.
Init: ``w_beta = 0`` and ``b_beta = logit(beta_init / 2)`` (so ``beta = beta_init`` for every
input), ``W_v`` uniform in ``+-1/sqrt(dim)`` (``nn.Linear``'s default), ``b_v = 0``.
Cost: ``O(dim d_v)`` per token plus the two small projections (``O(dim (d_v + 1))``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import positive_int, work_dtype

__all__ = ["StableInjection", "DeltaResidual", "delta_update", "RATE_EPS"]

#: floor of ``Delta * A``: keeps ``A_bar <= exp(-1e-6) < 1`` in float32 and float64
RATE_EPS = 1e-6
#: guard of the key normalization
_KEY_EPS = 1e-6


class StableInjection(nn.Module):
    """``h' = A_bar * h + Delta * (e @ B^T)`` with a diagonal ``A_bar`` whose entries are ``< 1``.

    Args:
        dim: channels of ``h`` and ``e``.
        decay_init: ``A_bar`` at init, in ``(0, 1)`` (Parcae: ``sqrt(1/5)``).
    """

    def __init__(self, dim: int, decay_init: float = math.sqrt(1 / 5)):
        super().__init__()
        self.dim = positive_int("dim", dim)
        if not 0 < decay_init < 1:
            raise ValueError(f"Invalid decay_init: {decay_init}; expected a number in (0, 1)")
        delta0 = -math.log(decay_init)
        self.A_log = nn.Parameter(torch.zeros(dim))
        self.dt_bias = nn.Parameter(torch.full((dim,), math.log(math.expm1(delta0))))
        self.B = nn.Parameter(torch.eye(dim))

    def step_size(self) -> Tensor:
        """``Delta = softplus(dt_bias)`` (per channel, float32 or float64)."""
        return F.softplus(self.dt_bias.to(work_dtype(self.dt_bias)))

    def decay(self) -> Tensor:
        """``A_bar = exp(-max(Delta * A, 1e-6))``, the diagonal of the state matrix (differentiable)."""
        rate = self.step_size() * torch.exp(self.A_log.to(work_dtype(self.A_log)))
        return torch.exp(-rate.clamp_min(RATE_EPS))

    @torch.no_grad()
    def spectral_norm(self) -> float:
        """``||diag(A_bar)||_2 = max A_bar`` (``< 1`` for any parameter values)."""
        return float(self.decay().max())

    @torch.no_grad()
    def contraction(self) -> float:
        """``mean A_bar``, the average per-channel decay."""
        return float(self.decay().mean())

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        if h.shape[-1] != self.dim or e.shape[-1] != self.dim:
            raise ValueError(f"StableInjection expects h and e of shape [..., {self.dim}], "
                             f"got {tuple(h.shape)} and {tuple(e.shape)}")
        work = torch.promote_types(work_dtype(h), work_dtype(self.A_log))
        a_bar = self.decay().to(work)
        delta = self.step_size().to(work)
        out = a_bar * h.to(work) + delta * F.linear(e.to(work), self.B.to(work))
        return out.to(h.dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


def delta_update(X: Tensor, k: Tensor, beta: Tensor | float, v: Tensor) -> Tensor:
    """``X + beta k (v^T - k^T X)`` for ``X [..., dim, d_v]``, ``k [..., dim]``, ``v [..., d_v]``.

    ``beta`` is a number or a tensor broadcastable to the batch shape ``[...]``. ``k`` is used as
    given (unit norm for the reflection / replacement properties).
    """
    beta = torch.as_tensor(beta, dtype=X.dtype, device=X.device)
    read = torch.einsum("...d,...dv->...v", k, X)
    return X + beta[..., None, None] * k.unsqueeze(-1) * (v - read).unsqueeze(-2)


class DeltaResidual(nn.Module):
    """The Deep Delta Learning residual update of a ``[..., dim, d_v]`` state (see the module doc).

    Args:
        dim: key / input width.
        d_v: value width (columns of the state).
        beta_init: the gate ``beta`` at init, in ``(0, 2)``.
        v_scale: the values lie in ``(0, v_scale)``.

    ``forward(X, k_in, x_in)``: ``k_in`` the branch output ``[..., dim]``, ``x_in`` the input the gates
    read ``[..., dim]``; returns ``X'`` in ``X``'s dtype (computed in float32, float64 for float64).
    """

    def __init__(self, dim: int, d_v: int = 4, beta_init: float = 1.0, v_scale: float = 4.0):
        super().__init__()
        self.dim = positive_int("dim", dim)
        self.d_v = positive_int("d_v", d_v)
        if not 0 < beta_init < 2:
            raise ValueError(f"Invalid beta_init: {beta_init}; expected a number in (0, 2)")
        if not (math.isfinite(v_scale) and v_scale > 0):
            raise ValueError(f"Invalid v_scale: {v_scale}; expected a positive number")
        self.v_scale = float(v_scale)
        half = beta_init / 2
        self.w_beta = nn.Parameter(torch.zeros(dim))
        self.b_beta = nn.Parameter(torch.tensor(math.log(half) - math.log1p(-half)))
        bound = 1 / math.sqrt(dim)
        self.W_v = nn.Parameter(torch.empty(d_v, dim).uniform_(-bound, bound))
        self.b_v = nn.Parameter(torch.zeros(d_v))

    def gates(self, x_in: Tensor) -> tuple[Tensor, Tensor]:
        """``(beta [...], v [..., d_v])`` for the read input ``x_in [..., dim]``."""
        work = work_dtype(x_in)
        x = x_in.to(work)
        beta = 2 * torch.sigmoid(x @ self.w_beta.to(work) + self.b_beta.to(work))
        v = self.v_scale * torch.sigmoid(F.linear(x, self.W_v.to(work), self.b_v.to(work)))
        return beta, v

    def forward(self, X: Tensor, k_in: Tensor, x_in: Tensor) -> Tensor:
        if X.ndim < 2 or X.shape[-2:] != (self.dim, self.d_v):
            raise ValueError(f"DeltaResidual expects a state of shape [..., {self.dim}, {self.d_v}], "
                             f"got {tuple(X.shape)}")
        if k_in.shape[-1] != self.dim or x_in.shape[-1] != self.dim:
            raise ValueError(f"DeltaResidual expects k_in and x_in of shape [..., {self.dim}], "
                             f"got {tuple(k_in.shape)} and {tuple(x_in.shape)}")
        work = work_dtype(X)
        k = F.normalize(k_in.to(work), dim=-1, eps=_KEY_EPS)
        beta, v = self.gates(x_in.to(work))
        return delta_update(X.to(work), k, beta, v).to(X.dtype)

    @staticmethod
    def read(X: Tensor) -> Tensor:
        """The state's output: the mean over the ``d_v`` value columns (``[..., dim, d_v]`` -> ``[..., dim]``)."""
        return X.mean(dim=-1)

    @staticmethod
    def expand(x: Tensor, d_v: int) -> Tensor:
        """An initial state: ``d_v`` copies of ``x`` as columns, so ``read(expand(x, d_v)) == x``."""
        d_v = positive_int("d_v", d_v)
        return x.unsqueeze(-1).expand(*x.shape, d_v).clone()

    def extra_repr(self) -> str:
        return f"dim={self.dim}, d_v={self.d_v}, v_scale={self.v_scale}"
