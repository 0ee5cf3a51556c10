"""The (scaled) Stiefel manifold of matrices with orthonormal columns, its projection and retractions.

For a tall matrix view ``W`` (``m x n``, ``m >= n``) the set is ``{W : W^T W = scale^2 I_n}``. For a
wide one (``m < n``, e.g. a conv filter ``16 x 27``) the transpose convention applies: the set is
``{W : W W^T = scale^2 I_m}``, i.e. ``W^T`` is on the Stiefel manifold; every method transposes a
wide matrix, works on the tall one and transposes back.

Sources: the polar and QR retractions from Absil, Mahony, Sepulchre, "Optimization Algorithms on
Matrix Manifolds" (2008), section 4.1.1 and example 4.1.3; the Cayley retraction from Li, Li,
Todorovic, "Efficient Riemannian Optimization on the Stiefel Manifold via the Cayley Transform"
(arXiv 2002.01113).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Constraint, choice, positive, real_number, step_size_value

__all__ = ["Stiefel", "STIEFEL_RETRACTIONS"]

#: values of ``Stiefel(retraction=...)``
STIEFEL_RETRACTIONS: tuple[str, ...] = ("polar", "qr", "cayley")


def _polar_factor(X: Tensor) -> Tensor:
    """``U V^T`` from the thin SVD of a tall ``X``; keeps every singular direction (a rank-deficient
    ``X`` still gives orthonormal columns, completed by LAPACK's singular vectors)."""
    U, _, Vh = torch.linalg.svd(X, full_matrices=False)
    return U @ Vh


def _q_factor(X: Tensor) -> Tensor:
    """``Q`` of the thin QR of a tall ``X`` with ``Q <- Q diag(sign(diag R))`` (a zero sign -> +1), so
    that ``R`` has a non-negative diagonal and ``Q`` is unique for a full-rank ``X``."""
    Q, R = torch.linalg.qr(X, mode="reduced")
    d = torch.sign(torch.diagonal(R, dim1=-2, dim2=-1))
    d = torch.where(d == 0, torch.ones_like(d), d)
    return Q * d.unsqueeze(-2)


class Stiefel(Constraint):
    """The scaled Stiefel manifold ``{W : W^T W = scale^2 I}`` (tall view; ``W W^T`` for a wide one).

    ``project(w)`` maps any matrix onto the manifold:

    - ``"polar"``: ``scale * U V^T`` from the SVD ``W = U S V^T``, the Frobenius-nearest point of the
      manifold (unique when ``W`` has full rank; for a rank-deficient ``W`` the missing directions
      are completed by the SVD's singular vectors).
    - ``"qr"``: ``scale * Q`` of the thin QR decomposition with the sign fix
      ``Q <- Q diag(sign(diag R))`` (zero signs taken as +1). Cheaper, but not the nearest point.
    - ``"cayley"``: a Cayley retraction needs a base point on the manifold and a direction, which a
      projection does not have; ``project`` therefore uses the nearest point, exactly as ``"polar"``.
      The Cayley map is available as ``retract`` (below).

    ``retract(x, direction, lr)`` moves a point ``x`` of the manifold against a Euclidean direction
    ``Z`` (a gradient or momentum) with step ``lr`` and lands on the manifold; sign convention: to
    first order it steps to ``x - lr P_x(Z)`` with ``P_x(Z) = Z - x sym(x^T Z) / scale^2`` the
    tangent part of ``Z``, so for ``f(x) = <G, x>`` and small ``lr``, ``f(retract(x, G, lr)) < f(x)``
    whenever ``P_x(G) != 0``; and ``retract(x, Z, t) = x - t Z + O(t^2)`` for a tangent ``Z``.

    - ``"polar"``: ``scale * polar(x - lr Z)``.
    - ``"qr"``: ``scale * qf(x - lr Z)``.
    - ``"cayley"``: with ``u = x / scale`` and ``t = lr / scale``, the skew matrix of Li et al.,
      ``W_hat = Z u^T - 1/2 u (u^T Z u^T)``, ``W = W_hat - W_hat^T`` (``m x m``, so ``W u = P_u(Z)``),
      and ``Y = (I + t/2 W)^{-1} (I - t/2 W) u`` (``torch.linalg.solve``), returned as ``scale * Y``.
      The Cayley transform of a skew matrix is orthogonal, so ``Y^T Y = u^T u``: the step stays on
      the manifold exactly (up to rounding) but only if ``x`` was on it. The simpler skew matrix
      ``Z u^T - u Z^T`` gives ``W u = Z - u Z^T u`` (the canonical-metric gradient), also a descent
      direction, but for a tangent ``Z = u A + u_perp B`` (``A`` skew) that is ``Z + u A``, so it would
      not satisfy ``retract(x, Z, t) = x - t Z + O(t^2)``; the form above does.

    ``check(w)`` returns ``max |W^T W / scale^2 - I|`` (``W W^T`` for a wide ``W``), in float64.

    Cost: ``project``: one thin SVD (``polar``, ``cayley``) or one thin QR (``qr``). ``retract``:
    the same for polar and QR; ``cayley`` solves one ``m x m`` system (``m`` the long side), about
    ``m^3`` flops, which is only worth it for near-square matrices.

    Args:
        retraction: ``"polar"``, ``"qr"`` or ``"cayley"``.
        scale: the common singular value (> 0).
    """

    name = "stiefel"
    cost = "one thin SVD (polar, cayley) or one thin QR (qr); retract with cayley: one m x m solve"

    def __init__(self, retraction: str = "polar", scale: float = 1.0):
        self.retraction = choice("retraction", retraction, STIEFEL_RETRACTIONS)
        self.scale = positive("scale", scale)

    def _project(self, m: Tensor, step_size: float | None) -> Tensor:
        step_size_value(step_size)
        tall = m.shape[0] >= m.shape[1]
        X = m if tall else m.mT
        P = _q_factor(X) if self.retraction == "qr" else _polar_factor(X)
        P = self.scale * P
        return P if tall else P.mT

    def retract(self, x: Tensor, direction: Tensor, lr: float) -> Tensor:
        """The retraction of a step from ``x`` (on the manifold) against ``direction`` with step ``lr``.

        Returns a new tensor in ``x``'s dtype and shape (computed in float32, float64 for float64
        inputs; tensors with more than two dimensions are viewed as ``(shape[0], prod(shape[1:]))``).
        """
        lr = real_number("lr", lr)
        if x.ndim < self.min_ndim:
            raise ValueError(f"Constraint {self.name!r} needs a tensor with at least {self.min_ndim} dimensions, "
                             f"got shape {tuple(x.shape)}")
        if direction.shape != x.shape:
            raise ValueError(f"retract: direction has shape {tuple(direction.shape)}, expected {tuple(x.shape)}")
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        X = x.detach().to(work).reshape(x.shape[0], -1)
        Z = direction.detach().to(device=x.device, dtype=work).reshape(x.shape[0], -1)
        tall = X.shape[0] >= X.shape[1]
        if not tall:
            X, Z = X.mT, Z.mT
        if self.retraction == "polar":
            out = self.scale * _polar_factor(X - lr * Z)
        elif self.retraction == "qr":
            out = self.scale * _q_factor(X - lr * Z)
        else:
            u = X / self.scale
            t = lr / self.scale
            w_hat = Z @ u.mT - 0.5 * (u @ ((u.mT @ Z) @ u.mT))
            W = w_hat - w_hat.mT
            eye = torch.eye(W.shape[0], dtype=work, device=W.device)
            Y = torch.linalg.solve(eye + (0.5 * t) * W, u - (0.5 * t) * (W @ u))
            out = self.scale * Y
        if not tall:
            out = out.mT
        return out.reshape(x.shape).to(x.dtype)

    def check(self, w: Tensor) -> float:
        if w.ndim < self.min_ndim:
            raise ValueError(f"Constraint {self.name!r} needs a tensor with at least {self.min_ndim} dimensions, "
                             f"got shape {tuple(w.shape)}")
        m = w.detach().to(torch.float64).reshape(w.shape[0], -1)
        if m.shape[0] < m.shape[1]:
            m = m.mT
        gram = (m.mT @ m) / (self.scale * self.scale)
        return float((gram - torch.eye(gram.shape[0], dtype=torch.float64, device=gram.device)).abs().max())

    def describe(self) -> str:
        return f"{self.name}({self.retraction}, {self.scale:g})"
