"""The solves of the gradient-regularized Newton step (arXiv 2506.13710; :class:`steepest.RegularizedNewton`):
``lambda = ||g|| / (gamma + 1e-8)`` and ``(H + lambda I)^{-1} g``, on a gradient window by Woodbury
or on Hessian-vector products by conjugate gradients. Pure functions of tensors and floats."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .fisher_window import inverse_fisher_apply

#: the paper's ``eps`` in ``lambda = ||g|| / (gamma + eps)``
GAMMA_EPS = 1e-8


def group_norm(grads: list[Tensor], whole_sums: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """``||g||_2`` of a group's gradients (all tensors together), a float64 0-d tensor (no host read).
    ``whole_sums`` turns the per-tensor sums of squares of local shards into whole-tensor sums
    (the engine's ``_whole_sums`` for a sharded group)."""
    sq = torch.stack([torch.sum(g.double() * g.double()) for g in grads])
    if whole_sums is not None:
        sq = whole_sums(sq)
    return sq.sum().sqrt()


def regularization(gnorm: Tensor, gamma: float) -> Tensor:
    """The paper's ``lambda = ||g|| / (gamma + 1e-8)``."""
    return gnorm / (gamma + GAMMA_EPS)


def window_newton_directions(windows: list[Tensor], gram: Tensor, rhs: Tensor, grads: list[Tensor],
                             lam: Tensor) -> list[Tensor]:
    """``(H + lambda I)^{-1} g`` for ``H = (1/m) G^T G`` (the window ``G``, Gram ``K = G G^T = gram``,
    ``rhs = G g``) by Woodbury: ``(g - G^T (m lambda I + K)^{-1} G g) / lambda``; flattened blocks.

    ``lambda`` stays a tensor (no host read): it is floored at the window dtype's smallest normal number
    (a zero gradient then gives exactly zero directions) and the shift of the ``m x m`` system at
    ``4 m eps max|K|`` (``eps`` of the window's dtype), which only changes numerically singular
    systems."""
    m = gram.shape[0]
    k = gram.double()
    lam = lam.to(device=k.device, dtype=torch.float64).clamp_min(torch.finfo(windows[0].dtype).tiny)
    floor = 4.0 * m * torch.finfo(windows[0].dtype).eps * k.abs().amax()
    shift = torch.maximum(m * lam, floor)
    eye = torch.eye(m, dtype=torch.float64, device=k.device)
    factor, _ = torch.linalg.cholesky_ex(k + eye * shift)
    y = torch.cholesky_solve(rhs.double().reshape(m, 1).to(k.device), factor).reshape(m)
    return inverse_fisher_apply(windows, grads, y, lam)


def conjugate_gradients(matvec: Callable[[list[Tensor]], list[Tensor]], b: list[Tensor], iters: int,
                        tol: float, fallback: Callable[[list[Tensor]], list[Tensor]]) -> list[Tensor]:
    """Solve ``A x = b`` (``A`` symmetric, applied by ``matvec``) by conjugate gradients from
    ``x = 0``, stopping after ``iters`` products or when ``||r|| <= tol ||b||``. If a search
    direction has ``p^T A p <= 0`` (negative curvature of a non-convex loss) the iteration stops
    there; at the first iteration the result is then ``fallback(b)``."""
    x = [torch.zeros_like(t) for t in b]
    r = [t.clone() for t in b]
    p = [t.clone() for t in b]
    rr = sum(float(torch.sum(t.double() * t.double())) for t in r)
    b_norm = math.sqrt(rr)
    if b_norm == 0.0:
        return x
    for it in range(iters):
        ap = matvec(p)
        pap = sum(float(torch.sum(u.double() * v.double())) for u, v in zip(p, ap))
        if not pap > 0.0:
            return fallback(b) if it == 0 else x
        alpha = rr / pap
        for xi, pi, ri, api in zip(x, p, r, ap):
            xi.add_(pi, alpha=alpha)
            ri.sub_(api, alpha=alpha)
        rr_new = sum(float(torch.sum(t.double() * t.double())) for t in r)
        if math.sqrt(rr_new) <= tol * b_norm:
            break
        beta = rr_new / rr
        for pi, ri in zip(p, r):
            pi.mul_(beta).add_(ri)
        rr = rr_new
    return x
