"""Geometry of symmetric positive definite (SPD) matrices: matrix functions with a Daleckii-Krein backward
and the Bures-Wasserstein, generalized Bures-Wasserstein, affine-invariant and log-Euclidean metrics.

A low layer: it imports only torch and the standard library. Shapes are ``(..., n, n)`` throughout.

**Matrix functions** (:mod:`steepest.spd.functions`). For symmetric ``X = U diag(l) U^T``,
``f(X) = U diag(f(l)) U^T`` (``sqrtm``, ``invsqrtm``, ``logm``, ``expm``, ``powm``, general ``sym_funcm``).
Backward (Daleckii & Krein, "Integration and differentiation of functions of Hermitian operators", 1965;
Bhatia, *Matrix Analysis*, 1997, ch. V)::

    dF = U (L o (U^T dX U)) U^T,  L_ij = (f(l_i) - f(l_j)) / (l_i - l_j),  L_ij = f'((l_i + l_j) / 2) on ties,

a tie being ``|l_i - l_j| <= tol max(|l_i|, |l_j|, floor)`` with ``tol = eps_mach^(1/3)`` by default and
``floor`` the dtype's smallest normal number (1 for ``expm``).
``polar(Z)`` (orthogonal polar factor) has a backward that divides by ``s_i + s_j``, never by gaps.

**Bures-Wasserstein (BW)** (Bhatia, Jain & Lim, "On the Bures-Wasserstein distance between positive
definite matrices", arXiv 1712.01504; Riemannian optimization with it: Han, Mishra,
Jawanpuria & Gao, NeurIPS 2021, arXiv 2106.00286)::

    d(P, Q)^2  = tr P + tr Q - 2 tr (P^{1/2} Q P^{1/2})^{1/2}
    Log_P(Q)   = (PQ)^{1/2} + (QP)^{1/2} - 2P,     (PQ)^{1/2} = P^{1/2} (P^{1/2} Q P^{1/2})^{1/2} P^{-1/2}
                                                             = P^{1/2} O^T Q^{1/2},  O = polar(Q^{1/2} P^{1/2})
    Exp_P(V)   = P + V + L P L,  P L + L P = V     (= (I + L) P (I + L))
    g(t)       = (1-t)^2 P + t^2 Q + t(1-t) [(PQ)^{1/2} + (QP)^{1/2}]
    barycenter: B <- B^{-1/2} (sum_i w_i (B^{1/2} X_i B^{1/2})^{1/2})^2 B^{-1/2}   (from the arithmetic mean)

The implementation never forms ``P^{1/2} Q P^{1/2}`` (condition number ~``cond(P) cond(Q)``): with ``O`` the
polar factor of ``Q^{1/2} P^{1/2}``, ``d = ||Q^{1/2} - O P^{1/2}||_F`` (the Procrustes form, as in
Bhatia-Jain-Lim) and ``(PQ)^{1/2} = P^{1/2} O^T Q^{1/2}``, both equal to the formulas above in exact arithmetic and
accurate for close, ill-conditioned pairs (condition number 1e8) where the textbook forms are not.

**Generalized BW (GBW)** with an SPD parameter ``M`` (Han, Mishra, Jawanpuria & Gao, "Learning with symmetric
positive definite matrices via generalized Bures-Wasserstein geometry", arXiv 2110.10464; used with a
learnable ``M`` by GBWBN, Wang, Jin, Chen, Luo & Wu, CVPR 2025, arXiv 2504.00660). This library's reading:
``X -> M^{-1/2} X M^{-1/2}`` is an isometry from GBW_M onto BW (derived here: it carries the generalized
Lyapunov operator ``X L M + M L X = V`` onto the ordinary one), so ``d_M(P, Q) = d_BW(M^{-1/2} P M^{-1/2},
M^{-1/2} Q M^{-1/2})``, and log/exp/geodesic/barycenter are conjugated the same way. That is the
congruence GBWBN's reference code applies before its BW batch statistics. It gives
``d_M^2 = tr(M^{-1}P) + tr(M^{-1}Q) - 2 tr (P^{1/2} M^{-1} Q M^{-1} P^{1/2})^{1/2}`` and the invariance
``d_{AMA^T}(A P A^T, A Q A^T) = d_M(P, Q)`` for every invertible ``A``.

**Affine-invariant (AIM)** (Pennec, Fillard & Ayache 2006; Bhatia, *Positive Definite Matrices*, 2007):
``d = ||logm(P^{-1/2} Q P^{-1/2})||_F``, ``Exp_P(V) = P^{1/2} expm(P^{-1/2} V P^{-1/2}) P^{1/2}``, Karcher mean.
**Log-Euclidean (LEM)** (Arsigny, Fillard, Pennec & Ayache 2007): ``d = ||logm P - logm Q||_F``, mean
``expm(sum_i w_i logm X_i)``.

Pick a geometry by name with :func:`metric` (``"bw"``, ``"gbw"``, ``"aim"``, ``"lem"``).
"""
from __future__ import annotations

from .functions import expm, funcm_derivative, invsqrtm, logm, polar, powm, sqrtm, sym, sym_funcm, tie_tolerance
from .metrics import (
    METRICS,
    AffineInvariant,
    BarycenterInfo,
    BuresWasserstein,
    GeneralizedBuresWasserstein,
    LogEuclidean,
    SPDMetric,
    aim_barycenter,
    aim_distance,
    aim_exp,
    aim_geodesic,
    aim_log,
    bw_barycenter,
    bw_distance,
    bw_exp,
    bw_geodesic,
    bw_log,
    gbw_distance,
    lem_barycenter,
    lem_distance,
    lem_exp,
    lem_geodesic,
    lem_log,
    lyapunov,
    metric,
)

__all__ = [
    "sym", "sym_funcm", "sqrtm", "invsqrtm", "logm", "expm", "powm", "funcm_derivative", "polar", "tie_tolerance",
    "lyapunov", "bw_distance", "bw_log", "bw_exp", "bw_geodesic", "bw_barycenter", "gbw_distance",
    "aim_distance", "aim_log", "aim_exp", "aim_geodesic", "aim_barycenter",
    "lem_distance", "lem_log", "lem_exp", "lem_geodesic", "lem_barycenter",
    "BarycenterInfo", "SPDMetric", "BuresWasserstein", "GeneralizedBuresWasserstein", "AffineInvariant",
    "LogEuclidean", "METRICS", "metric",
]
