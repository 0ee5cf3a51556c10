"""SPD geometries: Bures-Wasserstein (BW), generalized BW (GBW), affine-invariant (AIM) and log-Euclidean (LEM)
distances, log/exp maps, geodesics and barycenters, for matrices of shape ``(..., n, n)`` (batch dims broadcast),
in the input dtype (float16/bfloat16 computed in float32). Gradients flow through everything, finite at repeated
eigenvalues. Formulas and sources: the package docstring (:mod:`steepest.spd`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .functions import _check_matrix, _work_dtype, expm, funcm_derivative, invsqrtm, logm, polar, sqrtm, sym

__all__ = [
    "lyapunov", "bw_distance", "bw_log", "bw_exp", "bw_geodesic", "bw_barycenter", "gbw_distance",
    "aim_distance", "aim_log", "aim_exp", "aim_geodesic", "aim_barycenter", "lem_distance", "lem_log",
    "lem_exp", "lem_geodesic", "lem_barycenter", "BarycenterInfo", "SPDMetric", "BuresWasserstein",
    "GeneralizedBuresWasserstein", "AffineInvariant", "LogEuclidean", "METRICS", "metric",
]


class BarycenterInfo(NamedTuple):
    """What a barycenter iteration did: ``iterations`` (updates applied), ``converged`` (the largest
    residual is at most ``tol``) and ``residual`` (per matrix of the batch, detached; see each barycenter)."""
    iterations: int
    converged: bool
    residual: Tensor


# -- helpers -------------------------------------------------------------------------------------------
def _congruence(A: Tensor, X: Tensor) -> Tensor:
    """``sym(A X A^T)``."""
    return sym(A @ X @ A.mT)


def _safe_sqrt(d2: Tensor) -> Tensor:
    """``sqrt(max(d2, 0))`` whose gradient at 0 is 0 (not inf or NaN), as ``torch.linalg.vector_norm`` at 0."""
    positive = d2 > 0
    root = torch.sqrt(torch.where(positive, d2, torch.ones_like(d2)))
    return torch.where(positive, root, torch.zeros_like(d2))


def _time(t: float | Tensor, ref: Tensor) -> Tensor:
    """``t`` as a tensor that broadcasts over ``ref``'s matrices (a batch of times gets two trailing dims)."""
    t = torch.as_tensor(t, dtype=ref.dtype, device=ref.device)
    return t[..., None, None] if t.ndim else t


def _check(name: str, *Xs: Tensor) -> None:
    for X in Xs:
        _check_matrix(X, name)


def _prepare(Xs: Tensor, weights: Tensor | None, dim: int, name: str) -> tuple[Tensor, Tensor]:
    """``Xs`` with the averaged dimension moved to the front, and the normalized weights shaped to broadcast."""
    _check_matrix(Xs, name)
    if Xs.ndim < 3:
        raise ValueError(f"{name}: expected a stack of matrices of shape (N, ..., n, n), "
                         f"got shape {tuple(Xs.shape)}")
    dim = dim % Xs.ndim
    if dim >= Xs.ndim - 2:
        raise ValueError(f"{name}: dim must index a batch dimension, not a matrix dimension, got {dim}")
    Xs = Xs.movedim(dim, 0)
    if weights is None:
        w = torch.full((Xs.shape[0],), 1.0 / Xs.shape[0], dtype=Xs.dtype, device=Xs.device)
    else:
        w = torch.as_tensor(weights, dtype=Xs.dtype, device=Xs.device)
        if w.shape != (Xs.shape[0],):
            raise ValueError(f"{name}: expected weights of shape ({Xs.shape[0]},), got {tuple(w.shape)}")
        w = w / w.sum()
    return Xs, w.reshape((-1,) + (1,) * (Xs.ndim - 1))


def _default_tol(dtype: torch.dtype) -> float:
    return 1e-10 if dtype == torch.float64 else 1e-5


def _iterate(B: Tensor, evaluate: Callable[[Tensor], tuple[Tensor, Tensor]], iters: int, tol: float | None,
             return_info: bool):
    """Fixed-point driver: ``evaluate(B) -> (residual per matrix, next B)``; stop when the largest residual
    is ``<= tol`` (one host sync per iteration; ``tol=0`` runs exactly ``iters`` updates without syncing)."""
    if iters < 0:
        raise ValueError(f"iters must be non-negative, got {iters}")
    tol = _default_tol(B.dtype) if tol is None else float(tol)
    done, residual = 0, None
    for _ in range(iters):
        residual, B_next = evaluate(B)
        if tol > 0 and residual.max().item() <= tol:
            break
        B, done, residual = B_next, done + 1, None
    if not return_info:
        return B
    if residual is None:
        residual, _ = evaluate(B)
    residual = residual.detach()
    return B, BarycenterInfo(done, bool(residual.max().item() <= tol), residual)


# -- Lyapunov equation -----------------------------------------------------------------------------------
class _Lyapunov(torch.autograd.Function):
    """``L`` with ``P L + L P = V`` in ``P``'s eigenbasis; backward by implicit differentiation."""

    @staticmethod
    def forward(ctx, P: Tensor, V: Tensor) -> Tensor:
        l, U = torch.linalg.eigh(sym(P))
        denom = l.unsqueeze(-1) + l.unsqueeze(-2)
        L = U @ ((U.mT @ sym(V) @ U) / denom) @ U.mT
        ctx.save_for_backward(U, denom, L)
        return L

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        U, denom, L = ctx.saved_tensors
        W = U @ ((U.mT @ sym(grad) @ U) / denom) @ U.mT  # the solution operator is self-adjoint
        return -(W @ L + L @ W), W


def lyapunov(P: Tensor, V: Tensor) -> Tensor:
    """Solution ``L`` of the Lyapunov equation ``P L + L P = V`` for SPD ``P`` and symmetric ``V``.

    With ``P = U diag(l) U^T``: ``L = U [(U^T V U)_ij / (l_i + l_j)] U^T``. Shapes ``(..., n, n)`` broadcast.
    Backward: ``W = L_P[G]``, ``dV = W``, ``dP = -(W L + L W)`` (no division by eigenvalue gaps, so finite
    at repeated eigenvalues). The BW metric is ``<U, V>_P = tr(L_P[U] V) / 2`` (Bhatia-Jain-Lim).
    """
    _check("lyapunov", P, V)
    dtype, work = V.dtype, _work_dtype(P.dtype)
    return _Lyapunov.apply(*torch.broadcast_tensors(P.to(work), V.to(work))).to(dtype)


# -- Bures-Wasserstein ----------------------------------------------------------------------------------
def _bw_root(P: Tensor, Q: Tensor) -> Tensor:
    """``T = (PQ)^{1/2} = P^{1/2} O^T Q^{1/2}``, ``O`` the polar factor of ``Q^{1/2} P^{1/2}``; ``T^T = (QP)^{1/2}``."""
    Ph, Qh = sqrtm(P), sqrtm(Q)
    return Ph @ polar(Qh @ Ph).mT @ Qh


def bw_distance(P: Tensor, Q: Tensor, squared: bool = False) -> Tensor:
    """BW distance ``d(P, Q) = [tr P + tr Q - 2 tr (P^{1/2} Q P^{1/2})^{1/2}]^{1/2}``, shape ``(...)``.

    Computed in the Procrustes form ``d = min_O ||Q^{1/2} - O P^{1/2}||_F = ||Q^{1/2} - O P^{1/2}||_F``, ``O`` the
    polar factor of ``Z = Q^{1/2} P^{1/2}`` (Bhatia-Jain-Lim; ``tr (Z^T Z)^{1/2} = tr(O^T Z)``). It
    never forms ``P^{1/2} Q P^{1/2}`` (condition number ~``cond(P) cond(Q)``) and subtracts matrices, not traces:
    ``d`` stays accurate for close ill-conditioned pairs, ``d(P, P)`` is ~1e-14 ``sqrt(tr P)``.
    ``squared=True`` returns ``d^2`` (smooth; use it in losses); the gradient of ``d`` at ``d = 0`` is 0.
    """
    _check("bw_distance", P, Q)
    Ph, Qh = sqrtm(P), sqrtm(Q)
    d2 = (Qh - polar(Qh @ Ph) @ Ph).square().sum((-2, -1))
    return d2 if squared else _safe_sqrt(d2)


def bw_log(P: Tensor, Q: Tensor) -> Tensor:
    """BW logarithm ``Log_P(Q) = (PQ)^{1/2} + (QP)^{1/2} - 2P`` (symmetric), computed as ``T + T^T - 2P`` with
    ``T = (PQ)^{1/2} = P^{1/2} (P^{1/2} Q P^{1/2})^{1/2} P^{-1/2} = P^{1/2} O^T Q^{1/2}``, ``O`` the orthogonal
    polar factor of ``Q^{1/2} P^{1/2}`` (:func:`~steepest.spd.functions.polar`): no inverse and no product
    ``P^{1/2} Q P^{1/2}``, whose condition number is ~``cond(P) cond(Q)`` (at condition numbers 1e8 and
    ``Q`` near ``P`` the textbook form loses every digit; this one keeps ~5). Defined for every SPD pair."""
    _check("bw_log", P, Q)
    T = _bw_root(P, Q)
    return sym(T + T.mT) - 2 * P


def bw_exp(P: Tensor, V: Tensor) -> Tensor:
    """BW exponential ``Exp_P(V) = P + V + L P L`` with ``L = L_P[V]`` (:func:`lyapunov`), computed as
    ``(I + L) P (I + L)``, which equals it and is positive semidefinite in floating point too. It is the
    geodesic endpoint while ``I + L`` is positive definite (always so for ``V = Log_P(Q)``)."""
    _check("bw_exp", P, V)
    K = lyapunov(P, V) + torch.eye(P.shape[-1], dtype=P.dtype, device=P.device)
    return _congruence(K, P)


def bw_geodesic(P: Tensor, Q: Tensor, t: float | Tensor) -> Tensor:
    """BW geodesic ``g(t) = (1-t)^2 P + t^2 Q + t(1-t) [(PQ)^{1/2} + (QP)^{1/2}]``; ``g(0) = P``, ``g(1) = Q``.
    ``t`` is a number or a tensor of the batch shape."""
    _check("bw_geodesic", P, Q)
    T, t = _bw_root(P, Q), _time(t, P)
    return (1 - t) ** 2 * P + t ** 2 * Q + t * (1 - t) * sym(T + T.mT)


def bw_barycenter(Xs: Tensor, weights: Tensor | None = None, *, dim: int = 0, iters: int = 50,
                  tol: float | None = None, return_info: bool = False):
    """BW barycenter ``argmin_B sum_i w_i d^2(B, X_i)`` by the fixed-point iteration discussed by
    Bhatia-Jain-Lim (arXiv 1712.01504), from the weighted arithmetic mean::

        B <- B^{-1/2} (sum_i w_i (B^{1/2} X_i B^{1/2})^{1/2})^2 B^{-1/2}

    ``Xs``: ``(..., n, n)`` with the averaged dimension ``dim`` (default 0; others are batch); ``weights``:
    ``(N,)``, normalized to sum 1 (default uniform). Stops after ``iters`` updates or once the relative
    residual ``||S(B) - B||_F / ||B||_F`` of the fixed-point equation ``B = S(B) = sum_i w_i (B^{1/2} X_i
    B^{1/2})^{1/2}`` is ``<= tol`` (default 1e-10 in float64, 1e-5 otherwise; 0 = no test, no host sync).
    Returns ``B``, or ``(B, BarycenterInfo)`` with ``return_info=True``. GBWBN uses ``iters=1``.
    """
    Xs, w = _prepare(Xs, weights, dim, "bw_barycenter")
    roots = sqrtm(Xs)

    def evaluate(B: Tensor) -> tuple[Tensor, Tensor]:
        Z = roots @ sqrtm(B)  # (B^{1/2} X_i B^{1/2})^{1/2} = O_i^T Z_i, O_i the polar factor of Z_i
        S = (w * sym(polar(Z).mT @ Z)).sum(0)
        residual = torch.linalg.matrix_norm(S - B) / torch.linalg.matrix_norm(B)
        return residual, _congruence(invsqrtm(B), S @ S)

    return _iterate((w * Xs).sum(0), evaluate, iters, tol, return_info)


def gbw_distance(P: Tensor, Q: Tensor, M: Tensor, squared: bool = False) -> Tensor:
    """Generalized BW distance with SPD parameter ``M`` (shape ``(..., n, n)``): the BW distance of
    ``M^{-1/2} P M^{-1/2}`` and ``M^{-1/2} Q M^{-1/2}``, i.e.
    ``d^2 = tr(M^{-1}P) + tr(M^{-1}Q) - 2 tr (P^{1/2} M^{-1} Q M^{-1} P^{1/2})^{1/2}`` (Han et al., arXiv 2110.10464;
    the congruence is this library's reading, see :mod:`steepest.spd`). ``M = I`` gives BW, and
    ``d(A P A^T, A Q A^T; A M A^T) = d(P, Q; M)`` for every invertible ``A``."""
    _check("gbw_distance", P, Q, M)
    Mi = invsqrtm(M)
    return bw_distance(_congruence(Mi, P), _congruence(Mi, Q), squared=squared)


# -- affine-invariant -------------------------------------------------------------------------------------
def aim_distance(P: Tensor, Q: Tensor, squared: bool = False) -> Tensor:
    """AIM distance ``||logm(P^{-1/2} Q P^{-1/2})||_F`` (shape ``(...)``); ``squared=True`` gives ``d^2``.
    Invariant under ``X -> A X A^T`` for invertible ``A``. Gradient of ``d`` at ``d = 0`` is 0."""
    _check("aim_distance", P, Q)
    d2 = logm(_congruence(invsqrtm(P), Q)).square().sum((-2, -1))
    return d2 if squared else _safe_sqrt(d2)


def aim_log(P: Tensor, Q: Tensor) -> Tensor:
    """AIM logarithm ``Log_P(Q) = P^{1/2} logm(P^{-1/2} Q P^{-1/2}) P^{1/2}``."""
    _check("aim_log", P, Q)
    return _congruence(sqrtm(P), logm(_congruence(invsqrtm(P), Q)))


def aim_exp(P: Tensor, V: Tensor) -> Tensor:
    """AIM exponential ``Exp_P(V) = P^{1/2} expm(P^{-1/2} V P^{-1/2}) P^{1/2}`` (complete: SPD for every V)."""
    _check("aim_exp", P, V)
    return _congruence(sqrtm(P), expm(_congruence(invsqrtm(P), V)))


def aim_geodesic(P: Tensor, Q: Tensor, t: float | Tensor) -> Tensor:
    """AIM geodesic ``P^{1/2} (P^{-1/2} Q P^{-1/2})^t P^{1/2}`` (``t`` a number or a batch-shaped tensor)."""
    _check("aim_geodesic", P, Q)
    return _congruence(sqrtm(P), expm(_time(t, P) * logm(_congruence(invsqrtm(P), Q))))


def aim_barycenter(Xs: Tensor, weights: Tensor | None = None, *, dim: int = 0, iters: int = 50,
                   tol: float | None = None, return_info: bool = False):
    """AIM (Karcher/Frechet) mean by the Karcher iteration with step control, from the log-Euclidean mean::

        T = sum_i w_i logm(B^{-1/2} X_i B^{-1/2}),   B <- B^{1/2} expm(a T) B^{1/2}

    ``T`` is minus the Riemannian gradient of ``sum_i w_i d^2(B, X_i) / 2``; the residual is ``||T||_F`` at ``B``
    (dimensionless). The unit step ``a = 1`` converges slowly or oscillates for widely spread inputs (the
    Hessian is ``>= I`` and grows with the spread), so the step is adapted per matrix of the batch: a trial
    step that increases ``||T||_F`` is rejected and ``a`` halved; after an accepted one ``a`` becomes the
    Barzilai-Borwein ratio ``a ||T||^2 / <T, T - T_new>`` (the two gradients compared in their whitened
    frames, a heuristic the rejection test guards), capped at 1. ``iterations`` counts trial steps.
    Arguments and return as :func:`bw_barycenter`."""
    Xs, w = _prepare(Xs, weights, dim, "aim_barycenter")

    def gradient(B: Tensor) -> tuple[Tensor, Tensor]:
        T = (w * logm(_congruence(invsqrtm(B), Xs))).sum(0)
        return T, torch.linalg.matrix_norm(T)

    state: dict = {}

    def evaluate(B: Tensor) -> tuple[Tensor, Tensor]:
        if state.get("B") is not B:
            state.update(B=B, a=B.new_ones(B.shape[:-2]))
            state["T"], state["r"] = gradient(B)
        T, r, a = state["T"], state["r"], state["a"]
        trial = _congruence(sqrtm(B), expm(a[..., None, None] * T))
        T_trial, r_trial = gradient(trial)
        ok = r_trial <= r
        keep = ok[..., None, None]
        curvature = (T * (T - T_trial)).sum((-2, -1)).detach()  # step sizes carry no gradient
        tiny = torch.finfo(r.dtype).tiny
        ratio = torch.where(curvature > 0, a * r.detach().square() / curvature.clamp_min(tiny), 1.0)
        state.update(B=torch.where(keep, trial, B), T=torch.where(keep, T_trial, T),
                     r=torch.where(ok, r_trial, r), a=torch.where(ok, ratio.clamp_max(1), a / 2))
        return r, state["B"]

    return _iterate(expm((w * logm(Xs)).sum(0)), evaluate, iters, tol, return_info)


# -- log-Euclidean ----------------------------------------------------------------------------------------
def lem_distance(P: Tensor, Q: Tensor, squared: bool = False) -> Tensor:
    """LEM distance ``||logm P - logm Q||_F`` (shape ``(...)``); ``squared=True`` gives ``d^2``."""
    _check("lem_distance", P, Q)
    d2 = (logm(P) - logm(Q)).square().sum((-2, -1))
    return d2 if squared else _safe_sqrt(d2)


def lem_log(P: Tensor, Q: Tensor) -> Tensor:
    """LEM logarithm ``D expm_{logm P}[logm Q - logm P]`` (Frechet derivative, :func:`funcm_derivative`)."""
    _check("lem_log", P, Q)
    logP = logm(P)
    return funcm_derivative(logP, logm(Q) - logP, torch.exp, torch.exp, floor=1.0)


def lem_exp(P: Tensor, V: Tensor) -> Tensor:
    """LEM exponential ``expm(logm P + D logm_P[V])``."""
    _check("lem_exp", P, V)
    return expm(logm(P) + funcm_derivative(P, V, torch.log, torch.reciprocal))


def lem_geodesic(P: Tensor, Q: Tensor, t: float | Tensor) -> Tensor:
    """LEM geodesic ``expm((1-t) logm P + t logm Q)``."""
    _check("lem_geodesic", P, Q)
    t = _time(t, P)
    return expm((1 - t) * logm(P) + t * logm(Q))


def lem_barycenter(Xs: Tensor, weights: Tensor | None = None, *, dim: int = 0, iters: int = 0,
                   tol: float | None = None, return_info: bool = False):
    """LEM mean ``expm(sum_i w_i logm X_i)`` (closed form; ``iters``/``tol`` are accepted and ignored, the
    info reports 0 iterations, converged, residual 0)."""
    Xs, w = _prepare(Xs, weights, dim, "lem_barycenter")
    B = expm((w * logm(Xs)).sum(0))
    return (B, BarycenterInfo(0, True, B.new_zeros(B.shape[:-2]))) if return_info else B


# -- geometry objects -------------------------------------------------------------------------------------
class SPDMetric:
    """A geometry of the SPD cone, picked by name with :func:`metric`: ``distance(P, Q, squared=False)``,
    ``log(P, Q)``, ``exp(P, V)``, ``geodesic(P, Q, t)``, ``barycenter(Xs, weights=None, **options)``."""
    name: ClassVar[str] = ""
    _fns: ClassVar[tuple[Callable, ...]] = ()

    def distance(self, P: Tensor, Q: Tensor, squared: bool = False) -> Tensor:
        return self._fns[0](P, Q, squared=squared)

    def log(self, P: Tensor, Q: Tensor) -> Tensor:
        return self._fns[1](P, Q)

    def exp(self, P: Tensor, V: Tensor) -> Tensor:
        return self._fns[2](P, V)

    def geodesic(self, P: Tensor, Q: Tensor, t: float | Tensor) -> Tensor:
        return self._fns[3](P, Q, t)

    def barycenter(self, Xs: Tensor, weights: Tensor | None = None, **options):
        return self._fns[4](Xs, weights, **options)


@dataclass(frozen=True, eq=False)
class BuresWasserstein(SPDMetric):
    """Bures-Wasserstein geometry; with an SPD ``M`` (shape ``(n, n)`` or broadcastable) the generalized BW
    geometry, evaluated through the isometry ``X -> M^{-1/2} X M^{-1/2}`` onto BW: points and tangent
    vectors are mapped by that congruence and results mapped back by ``X -> M^{1/2} X M^{1/2}``."""
    M: Tensor | None = None
    name: ClassVar[str] = "bw"
    _fns: ClassVar[tuple[Callable, ...]] = (bw_distance, bw_log, bw_exp, bw_geodesic, bw_barycenter)

    def _to_bw(self, *Xs: Tensor) -> list[Tensor]:
        Mi = invsqrtm(self.M)
        return [_congruence(Mi, X) for X in Xs]

    def _from_bw(self, X: Tensor) -> Tensor:
        return _congruence(sqrtm(self.M), X)

    def distance(self, P: Tensor, Q: Tensor, squared: bool = False) -> Tensor:
        return bw_distance(P, Q, squared) if self.M is None else gbw_distance(P, Q, self.M, squared)

    def log(self, P: Tensor, Q: Tensor) -> Tensor:
        return bw_log(P, Q) if self.M is None else self._from_bw(bw_log(*self._to_bw(P, Q)))

    def exp(self, P: Tensor, V: Tensor) -> Tensor:
        return bw_exp(P, V) if self.M is None else self._from_bw(bw_exp(*self._to_bw(P, V)))

    def geodesic(self, P: Tensor, Q: Tensor, t: float | Tensor) -> Tensor:
        return bw_geodesic(P, Q, t) if self.M is None else self._from_bw(bw_geodesic(*self._to_bw(P, Q), t))

    def barycenter(self, Xs: Tensor, weights: Tensor | None = None, **options):
        if self.M is None:
            return bw_barycenter(Xs, weights, **options)
        out = bw_barycenter(self._to_bw(Xs)[0], weights, **options)
        return (self._from_bw(out[0]), out[1]) if isinstance(out, tuple) else self._from_bw(out)


@dataclass(frozen=True, eq=False)
class GeneralizedBuresWasserstein(BuresWasserstein):
    """Generalized BW geometry (Han et al., arXiv 2110.10464; used by GBWBN, arXiv 2504.00660): as
    :class:`BuresWasserstein` with a required SPD ``M``."""
    name: ClassVar[str] = "gbw"

    def __post_init__(self):
        if self.M is None:
            raise ValueError("GeneralizedBuresWasserstein needs an SPD matrix M (use BuresWasserstein for M = I)")


@dataclass(frozen=True, eq=False)
class AffineInvariant(SPDMetric):
    """Affine-invariant geometry (Pennec, Fillard & Ayache 2006; Bhatia, *Positive Definite Matrices*, 2007)."""
    name: ClassVar[str] = "aim"
    _fns: ClassVar[tuple[Callable, ...]] = (aim_distance, aim_log, aim_exp, aim_geodesic, aim_barycenter)


@dataclass(frozen=True, eq=False)
class LogEuclidean(SPDMetric):
    """Log-Euclidean geometry (Arsigny et al. 2007): the Euclidean geometry of ``logm``."""
    name: ClassVar[str] = "lem"
    _fns: ClassVar[tuple[Callable, ...]] = (lem_distance, lem_log, lem_exp, lem_geodesic, lem_barycenter)


METRICS: dict[str, type[SPDMetric]] = {
    "bw": BuresWasserstein, "gbw": GeneralizedBuresWasserstein, "aim": AffineInvariant, "lem": LogEuclidean,
}


def metric(name: str, **kwargs) -> SPDMetric:
    """The geometry named ``name`` (``"bw"``, ``"gbw"``, ``"aim"``, ``"lem"``), built with ``kwargs``
    (``metric("gbw", M=M)``). An unknown name raises ``ValueError``."""
    if name not in METRICS:
        raise ValueError(f"Unknown SPD metric {name!r}; expected one of: {', '.join(METRICS)}")
    return METRICS[name](**kwargs)

