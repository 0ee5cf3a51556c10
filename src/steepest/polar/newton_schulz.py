"""Newton-Schulz iterations for the polar factor, batched over same-shape matrices.

For ``G = U S V^T`` the polar factor is ``polar(G) = U V^T``: the linear minimization oracle of the
spectral-norm ball (Muon's direction). Newton-Schulz approximates it with matmuls only:

    X_0 = G / (s ||G||_F + eps)          # sigma_max(X_0) <= 1 since ||G||_F >= ||G||_2
    A   = X X^T                          # on the wide orientation, so A is the smaller Gram
    X  <- a X + (b A + c A^2) X          # per singular value: x <- a x + b x^3 + c x^5

FLOPs per iteration for a p x q matrix (p <= q): about 4 p^2 q + 2 p^3 (research/algorithms.md 0.1).

For a single matrix the op sequence is exactly ``torch.optim.Muon``'s (cast, transpose tall inputs,
divide by the clamped Frobenius norm, ``addmm`` with ``beta=b, alpha=c`` then ``beta=a``), so with
the same coefficients, steps and dtype the two agree bit for bit. A stack of matrices runs the same
iteration with ``baddbmm``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .schedules import Schedule


def newton_schulz(G: Tensor, schedule: Schedule, steps: int, dtype: torch.dtype, eps: float = 1e-7) -> Tensor:
    """Approximate ``polar(G)`` for ``G`` of shape ``(m, n)`` or ``(batch, m, n)``.

    Args:
        G: the input matrix or stack of same-shape matrices.
        schedule: coefficients and input scale (see :mod:`steepest.polar.schedules`).
        steps: number of quintic iterations.
        dtype: iteration dtype; the result is returned in this dtype.
        eps: guards the normalization, so a zero input returns zeros (never NaN).

    Returns:
        A tensor shaped like ``G`` whose singular values lie in the schedule's band.
    """
    if G.ndim not in (2, 3):
        raise ValueError(f"newton_schulz expects a 2-D or 3-D tensor, got shape {tuple(G.shape)}")
    X = G.to(dtype)
    tall = G.size(-2) > G.size(-1)
    if tall:
        X = X.mT
    if G.ndim == 2:
        norm = X.norm()
    else:
        norm = torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True)
    if schedule.input_scale != 1.0:
        norm = norm * schedule.input_scale
    X = X.div(norm.clamp(min=eps))
    if G.ndim == 2:
        for a, b, c in schedule.coefficients_for(steps):
            A = X @ X.T
            B = torch.addmm(A, A, A, beta=b, alpha=c)
            X = torch.addmm(X, B, X, beta=a)
    else:
        for a, b, c in schedule.coefficients_for(steps):
            A = X @ X.mT
            B = torch.baddbmm(A, A, A, beta=b, alpha=c)
            X = torch.baddbmm(X, B, X, beta=a)
    if tall:
        X = X.mT
    return X
