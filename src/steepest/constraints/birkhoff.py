"""The Birkhoff polytope: doubly stochastic matrices, reached by Sinkhorn-Knopp scaling.

A square matrix ``P`` is doubly stochastic when ``P >= 0``, ``P 1 = 1`` and ``P^T 1 = 1``; these
matrices form the Birkhoff polytope, whose vertices are the permutation matrices. Every one of
them has spectral norm exactly 1 (so a residual mix ``x <- P x`` neither grows nor shrinks the
stream average). Manifold-constrained hyper-connections (mHC, arXiv 2512.24880) keep their
stream-mixing matrix on it with 20 Sinkhorn-Knopp iterations of ``exp(logits)``, columns then rows.

Sinkhorn-Knopp, in the log domain (``L = logits``, never exponentiated before the end)::

    repeat:  L <- L - logsumexp_i L_ij    (over each column: the columns of exp(L) sum to 1)
             L <- L - logsumexp_j L_ij    (over each row: the rows sum to 1)
    P = exp(L)

Each sweep is a diagonal scaling, so at the fixed point ``P = diag(e^a) exp(logits) diag(e^b)``:
the unique doubly stochastic matrix of that form, which is also the nearest doubly stochastic
matrix to ``exp(logits)`` in Kullback-Leibler divergence (the I-projection ``argmin_P KL(P || M)``).
After the last sweep the rows sum to 1 up to rounding; the columns to within the convergence error.

Gradients (:func:`sinkhorn` with ``backward="implicit"``, the default) are the derivative of the
exact fixed point, by the implicit function theorem, not of the truncated iteration. Differentiating
``P_ij = exp(X_ij + a_i + b_j)`` with the constraints ``dP 1 = 0`` and ``dP^T 1 = 0`` gives, for a
loss gradient ``G = dL/dP``,

    r = (P * G) 1,  c = (P * G)^T 1,
    [[I, P], [P^T, I]] [alpha; beta] = [r; c]     (2n x 2n, symmetric, rank 2n - 1),
    dL/dX = P * (G - alpha 1^T - 1 beta^T).

The system's null vector is ``(1, -1)`` (shifting ``a`` up and ``b`` down leaves ``P`` unchanged),
both right-hand sides are orthogonal to it, and any solution gives the same ``dL/dX``: this module
pins ``beta_n = 0`` and solves the remaining ``(2n-1) x (2n-1)`` system, which is nonsingular for a
matrix with positive entries. The backward stores only ``P`` (``n^2`` numbers per matrix, whatever
the number of iterations) and costs one small dense solve, ``O(n^3)``; it is exact only when the
forward converged, so iterate to a tolerance (``tol``) where the gradient matters.
``backward="unrolled"`` differentiates through the iterations instead (autograd stores every sweep).

Cost: ``2 * iters`` logsumexp sweeps over ``n^2`` entries (``O(iters n^2)``); with ``tol``, one host
sync per convergence check and, only where the sweeps had not converged, Newton steps of
``O(n^3)`` each (a handful; cheap for the tiny mixing matrices of hyper-connections).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .base import Constraint, work_dtype

__all__ = ["Birkhoff", "sinkhorn", "sinkhorn_vjp", "birkhoff_violation", "marginal_error", "SINKHORN_BACKWARDS"]

SINKHORN_BACKWARDS: tuple[str, ...] = ("implicit", "unrolled")
#: Tikhonov shift of the Newton system (float64): keeps it solvable when entries of ``P`` underflow
_NEWTON_RIDGE = 1e-12
#: Armijo constant and most step halvings of the Newton line search
_ARMIJO = 1e-4
_HALVINGS = 40


def marginal_error(L: Tensor) -> Tensor:
    """``max(|row sums - 1|, |column sums - 1|)`` of ``exp(L)`` for log-domain ``L``, per matrix."""
    rows = torch.logsumexp(L, dim=-1).expm1().abs().amax(-1)
    cols = torch.logsumexp(L, dim=-2).expm1().abs().amax(-1)
    return torch.maximum(rows, cols)


def _sweeps(L: Tensor, count: int) -> Tensor:
    for _ in range(count):
        L = L - torch.logsumexp(L, dim=-2, keepdim=True)
        L = L - torch.logsumexp(L, dim=-1, keepdim=True)
    return L


def _scaling_system(P: Tensor) -> Tensor:
    """``[[diag(P 1), P], [P^T, diag(P^T 1)]]`` without its last row and column ((2n-1) x (2n-1)).

    The Hessian of the scaling dual below, and the linearization the implicit gradient solves.
    """
    n = P.shape[-1]
    top = torch.cat([torch.diag_embed(P.sum(-1)), P[..., :, : n - 1]], dim=-1)
    bottom = torch.cat([P[..., :, : n - 1].mT, torch.diag_embed(P.sum(-2)[..., : n - 1])], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def _pad_zero(v: Tensor) -> Tensor:
    """Append the pinned ``b_n = 0`` to ``b_1..b_{n-1}``."""
    return torch.cat([v, v.new_zeros(*v.shape[:-1], 1)], dim=-1)


def _newton(L: Tensor, tol: float, steps: int) -> Tensor:
    """Polish log-domain ``L`` to ``marginal_error <= tol`` with damped Newton steps (float64).

    Minimizes the convex dual ``f(a, b) = sum_ij exp(L_ij + a_i + b_j) - sum_i a_i - sum_j b_j``
    (``b_n = 0`` pinned), whose minimizer scales ``exp(L)`` to the same doubly stochastic matrix
    Sinkhorn converges to. Gradient ``[P 1 - 1; P^T 1 - 1]``, Hessian :func:`_scaling_system`;
    backtracking (Armijo) line search per matrix. Sinkhorn converges at the rate
    ``sigma_2(P)^2`` per sweep, so slowly when the limit is close to a permutation; Newton converges
    quadratically near the solution whatever that rate. Differentiable (used as is by the unrolled
    backward).
    """
    X = L.double()
    n = X.shape[-1]
    batch = X.shape[:-2]
    u = X.new_zeros(*batch, 2 * n - 1)
    ridge = _NEWTON_RIDGE * torch.eye(2 * n - 1, dtype=X.dtype, device=X.device)

    def scaled(v: Tensor) -> Tensor:
        return X + v[..., :n].unsqueeze(-1) + _pad_zero(v[..., n:]).unsqueeze(-2)

    for _ in range(steps):
        Y = scaled(u)
        with torch.no_grad():
            if float(marginal_error(Y).max()) <= tol:
                break
        P = Y.exp()
        grad = torch.cat([P.sum(-1) - 1, P.sum(-2)[..., : n - 1] - 1], dim=-1)
        d = -torch.linalg.solve(_scaling_system(P) + ridge, grad.unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            # f(u + t d) - f(u), without cancelling the two O(n) values of f (expm1)
            shift = d[..., :n].unsqueeze(-1) + _pad_zero(d[..., n:]).unsqueeze(-2)
            slope, total = (grad * d).sum(-1), d.sum(-1)
            t = torch.ones_like(slope)
            for _ in range(_HALVINGS):
                change = (P * torch.expm1(t[..., None, None] * shift)).sum((-2, -1)) - t * total
                bad = ~(change <= _ARMIJO * t * slope)
                if not bool(bad.any()):
                    break
                t = torch.where(bad, t / 2, t)
            t = torch.where(bad, torch.zeros_like(t), t)
        u = u + t.unsqueeze(-1) * d
    return scaled(u).to(L.dtype)


def _iterate(L: Tensor, iters: int, tol: float | None, newton_steps: int) -> Tensor:
    """``iters`` sweeps, then (with ``tol``) Newton steps until the marginal error is at most ``tol``."""
    L = _sweeps(L, iters)
    if tol is None or L.numel() == 0 or newton_steps == 0:
        return L
    return _newton(L, tol, newton_steps)


def sinkhorn_vjp(P: Tensor, G: Tensor) -> Tensor:
    """``dL/dlogits`` at the exact Sinkhorn fixed point ``P`` for ``G = dL/dP`` (see the module doc).

    Batched over leading dimensions. The ``(2n-1) x (2n-1)`` system is solved in float64 (it is tiny,
    and near a permutation matrix its second smallest eigenvalue, ``1 - sigma_2(P)``, gets small),
    and the result is returned in ``P``'s dtype. The identity blocks of the system are written as
    ``diag(P 1)`` and ``diag(P^T 1)`` (equal to ``I`` at the fixed point): the linearization of the
    scaling ``P_ij = exp(X_ij + a_i + b_j)`` for the ``P`` actually computed, whose null vector is
    exactly ``(1, -1)`` whatever the rounding of ``P``.
    """
    n = P.shape[-1]
    Pd, Gd = P.double(), G.double()
    PG = Pd * Gd
    K = _scaling_system(Pd)
    rhs = torch.cat([PG.sum(-1), PG.sum(-2)[..., : n - 1]], dim=-1).unsqueeze(-1)
    sol, info = torch.linalg.solve_ex(K, rhs)
    if bool((info != 0).any()):  # entries of P underflowed to 0: least squares on those matrices
        sol = torch.where((info != 0)[..., None, None], torch.linalg.pinv(K, hermitian=True) @ rhs, sol)
    sol = sol.squeeze(-1)
    alpha = sol[..., :n]
    beta = _pad_zero(sol[..., n:])
    grad = Pd * (Gd - alpha.unsqueeze(-1) - beta.unsqueeze(-2))
    return grad.to(P.dtype)


class _ImplicitSinkhorn(torch.autograd.Function):
    """Forward: the iterations without autograd, saving only ``P``. Backward: :func:`sinkhorn_vjp`."""

    @staticmethod
    def forward(ctx, logits: Tensor, iters: int, tol: float | None, newton_steps: int) -> Tensor:
        P = torch.exp(_iterate(logits, iters, tol, newton_steps))
        ctx.save_for_backward(P)
        return P

    @staticmethod
    @once_differentiable
    def backward(ctx, G: Tensor):
        (P,) = ctx.saved_tensors
        return sinkhorn_vjp(P, G), None, None, None


def sinkhorn(logits: Tensor, iters: int = 20, tol: float | None = None, *, newton_steps: int = 50,
             backward: str = "implicit") -> Tensor:
    """The doubly stochastic Sinkhorn-Knopp scaling ``P`` of ``exp(logits)``.

    Args:
        logits: finite ``[..., n, n]`` tensor (any leading batch dimensions).
        iters: column-then-row sweeps always run (mHC uses 20).
        tol: if set, after the sweeps polish with damped Newton steps (float64) on the convex dual
            of the scaling problem until ``max(|row sums - 1|, |column sums - 1|) <= tol``: the
            same limit as sweeping forever, in a few steps where Sinkhorn can need thousands (its
            rate, ``sigma_2(P)^2`` per sweep, is slow when the limit is near a permutation). ``tol``
            only ever adds work, and one host sync per check. The implicit gradient is that of the
            exact projection, so set it where gradients matter (1e-5 in float32, 1e-12 in float64).
        newton_steps: most Newton steps when ``tol`` is set; each costs an ``O(n^3)`` solve.
        backward: ``"implicit"`` (the fixed-point gradient, memory ``O(n^2)`` per matrix) or
            ``"unrolled"`` (autograd through every sweep, memory ``O(iters n^2)``).

    Returns:
        ``P`` in float32 (float64 for float64 logits), shaped like ``logits``.
    """
    if not isinstance(logits, Tensor):
        raise TypeError(f"sinkhorn expects a tensor, got {type(logits).__name__}")
    if logits.ndim < 2 or logits.shape[-1] != logits.shape[-2]:
        raise ValueError(f"sinkhorn needs square matrices [..., n, n], got shape {tuple(logits.shape)}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"Invalid iters: {iters}; expected an integer >= 1")
    if tol is not None and not tol > 0:
        raise ValueError(f"Invalid tol: {tol}; expected a positive number or None")
    if isinstance(newton_steps, bool) or not isinstance(newton_steps, int) or newton_steps < 0:
        raise ValueError(f"Invalid newton_steps: {newton_steps}; expected an integer >= 0")
    if backward not in SINKHORN_BACKWARDS:
        raise ValueError(f"Unknown backward {backward!r}; expected one of: {', '.join(SINKHORN_BACKWARDS)}")
    L = logits.to(work_dtype(logits))
    if backward == "unrolled" or not (torch.is_grad_enabled() and L.requires_grad):
        return torch.exp(_iterate(L, iters, tol, newton_steps))
    return _ImplicitSinkhorn.apply(L, iters, tol, newton_steps)


def birkhoff_violation(m: Tensor) -> float:
    """``max(|row sums - 1|, |column sums - 1|, max(0, -min entry))`` of a square matrix."""
    w = m.to(work_dtype(m))
    if w.numel() == 0:
        return 0.0
    rows = (w.sum(-1) - 1).abs().max()
    cols = (w.sum(-2) - 1).abs().max()
    neg = (-w.min()).clamp_min(0)
    return float(torch.stack([rows, cols, neg]).max())


class Birkhoff(Constraint):
    """Doubly stochastic weights: the Sinkhorn (KL) projection onto the Birkhoff polytope.

    ``project(w)`` maps a square matrix with positive entries to ``D1 w D2``, the doubly stochastic
    matrix nearest to ``w`` in KL divergence (``argmin_P KL(P || w)``), by Sinkhorn-Knopp on
    ``log(w)`` (mHC, arXiv 2512.24880). It is *not* the Frobenius-nearest point. Entries ``<= 0``
    have no logarithm: they are clamped to the smallest positive normal number of the dtype
    (``log ~ -87`` in float32), i.e. treated as (almost) structural zeros; a matrix of all
    non-positive entries goes to the uniform ``1/n`` matrix. Tensors with more than two
    dimensions are viewed as ``shape[0] x prod(shape[1:])``, which must be square.

    Args:
        iters: sweeps always run.
        tol: then polish (Newton, see :func:`sinkhorn`) until the row and column sums are within
            ``tol`` of 1; ``None``: exactly ``iters`` sweeps.

    ``check(w)`` is ``max(|row sums - 1|, |column sums - 1|, max(0, -min entry))``.
    """

    name = "birkhoff"
    cost = "iters (or until tol) log-domain Sinkhorn sweeps, O(iters n^2) per n x n matrix"
    min_ndim = 2

    def __init__(self, iters: int = 20, tol: float | None = 1e-6):
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
            raise ValueError(f"Invalid iters: {iters}; expected an integer >= 1")
        if tol is not None and not tol > 0:
            raise ValueError(f"Invalid tol: {tol}; expected a positive number or None")
        self.iters = iters
        self.tol = tol

    @staticmethod
    def _square(m: Tensor) -> None:
        if m.shape[0] != m.shape[1]:
            raise ValueError(f"Constraint 'birkhoff' needs a square matrix, got {m.shape[0]} x {m.shape[1]}")

    def _project(self, m: Tensor, step_size: float | None) -> Tensor:
        self._square(m)
        logits = torch.log(m.clamp_min(torch.finfo(m.dtype).tiny))
        with torch.no_grad():
            return sinkhorn(logits, self.iters, self.tol)

    def check(self, w: Tensor) -> float:
        if w.ndim < self.min_ndim:
            raise ValueError(f"Constraint {self.name!r} needs a tensor with at least {self.min_ndim} dimensions, "
                             f"got shape {tuple(w.shape)}")
        m = w.detach().reshape(w.shape[0], -1)
        self._square(m)
        return birkhoff_violation(m)

    def describe(self) -> str:
        return f"{self.name}(iters={self.iters}, tol={self.tol})"
