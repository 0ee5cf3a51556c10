"""The cone of symmetric positive definite (SPD) matrices with an eigenvalue floor, and its projection.

The set is ``{W : W = W^T, lambda_min(W) >= eps}`` (closed and convex). Its Frobenius-nearest point to
any square ``W`` is obtained from the symmetric part (the nearest symmetric matrix; the set lies in the
symmetric subspace, so the projection factors through it) by clamping the eigenvalues::

    S = (W + W^T) / 2 = U diag(l) U^T,      project(W) = U diag(max(l, eps)) U^T

(Higham, "Computing a nearest symmetric positive semidefinite matrix", Linear Algebra Appl. 103, 1988,
for ``eps = 0``; the floor ``eps`` only shifts the clamp). This is the projection geoopt's
``SymmetricPositiveDefinite`` applied in its older versions (it now reflects eigenvalues, ``|l|``,
without a floor).

Used for the SPD parameters of :class:`steepest.nn.SPDBatchNorm` (the congruence ``M`` and the bias):
the optimizer takes its ordinary step, then the engine's stage 4 puts the matrix back on the set, so
it stays SPD with its smallest eigenvalue at least ``eps`` after every step (the group key
``constraint="spd"``; ``steepest.for_model`` sets it for modules that declare it).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..distributed import is_dtensor
from .base import Constraint, positive, work_dtype

__all__ = ["SPD"]


class SPD(Constraint):
    """SPD matrices with eigenvalues at least ``eps``: ``project(W) = U diag(max(l, eps)) U^T`` for
    ``sym(W) = U diag(l) U^T`` (exact Frobenius-nearest point; see the module docstring).

    Unlike the other constraints, a tensor with more than two dimensions is a stack of square
    matrices ``(..., n, n)``, each projected on its own (not flattened to one matrix).

    ``check(w)`` returns ``max(max |W - W^T| / 2, eps - lambda_min(sym(W)), 0)`` in float64 (0.0 on the set).

    Cost: one symmetric eigendecomposition per matrix (``O(n^3)``).

    Args:
        eps: the eigenvalue floor (> 0), default 1e-6.
    """

    name = "spd"
    cost = "one symmetric eigendecomposition per n x n matrix"

    def __init__(self, eps: float = 1e-6):
        self.eps = positive("eps", eps)

    def _square(self, w: Tensor) -> None:
        if w.ndim < 2 or w.shape[-1] != w.shape[-2]:
            raise ValueError(f"Constraint {self.name!r} needs square matrices of shape (..., n, n), "
                             f"got shape {tuple(w.shape)}")

    def project(self, w: Tensor, step_size: float | None = None) -> Tensor:
        """The projected matrix (or stack of matrices): a new tensor in ``w``'s dtype and shape."""
        if is_dtensor(w):
            raise TypeError(f"Constraint {self.name!r} projects whole tensors; for a DTensor pass w.full_tensor(), "
                            f"or give the optimizer the constraint (group key 'constraint'), which projects "
                            f"each sharded matrix once on its owner rank")
        self._square(w)
        work = w.detach()
        return self._project(work.to(work_dtype(work)), step_size).to(w.dtype)

    def _project(self, m: Tensor, step_size: float | None) -> Tensor:
        l, U = torch.linalg.eigh((m + m.mT) / 2)
        out = (U * l.clamp_min(self.eps).unsqueeze(-2)) @ U.mT
        return (out + out.mT) / 2

    def check(self, w: Tensor) -> float:
        self._square(w)
        m = w.detach().to(torch.float64)
        asym = float(((m - m.mT) / 2).abs().max())
        low = float(torch.linalg.eigvalsh((m + m.mT) / 2).min())
        return max(asym, self.eps - low, 0.0)

    def describe(self) -> str:
        return f"{self.name}(eps={self.eps:g})"
