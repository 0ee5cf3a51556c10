"""Functions of symmetric matrices by eigendecomposition, with a Daleckii-Krein backward.

For a symmetric ``X = U diag(l) U^T`` and a scalar function ``f``, ``f(X) = U diag(f(l)) U^T``. Its
derivative (Daleckii & Krein, 1965; Bhatia, *Matrix Analysis*, ch. V) in a symmetric direction
``dX`` is::

    Df_X[dX] = U (L o (U^T dX U)) U^T,   L_ij = (f(l_i) - f(l_j)) / (l_i - l_j)   (l_i != l_j)
                                         L_ij = f'(l_i)                           (l_i == l_j)

with ``o`` the entrywise product. ``L`` is symmetric, so the map is self-adjoint and the backward
applies the same formula to the symmetric part of the incoming gradient.

**Tie rule.** Two eigenvalues count as equal when ``|l_i - l_j| <= tol * max(|l_i|, |l_j|, floor)``;
then ``L_ij = f'((l_i + l_j) / 2)``. ``floor`` is the dtype's smallest normal number (a purely relative
test) except for ``expm``, where it is 1: ``exp`` loses accuracy by the absolute gap (``f / f' = 1``), so
eigenvalues near 0 such as ``+-1e-12`` must count as tied. The divided
difference equals ``f'`` at the midpoint up to ``f''' h^2 / 24`` (``h = l_i - l_j``), while computing
it from rounded ``f`` values costs ``~eps_mach / (relative gap)``; the two errors balance at a relative
gap of ``eps_mach^(1/3)``, which is the default ``tol``: 6.1e-6 in float64, 4.9e-3 in float32
(:func:`tie_tolerance`). The relative error of ``L`` then stays below ~1e-10 (float64) at the switch.
``torch.linalg.eigh``'s own backward divides by ``l_i - l_j`` and is not finite at repeated
eigenvalues; the functions here are (the identity, ``diag(1, 1, 2)``, condition numbers ~1e8).

**Conventions** shared by every function here:

- ``X`` has shape ``(..., n, n)`` (any leading batch dimensions). The input is symmetrized first,
  ``F(X) := f(sym(X))``, so forward and backward agree for every input; the gradient returned is
  symmetric. Non-square inputs raise ``ValueError``, non-floating (or complex) ones ``TypeError``.
- float32/float64 are computed in their own precision; float16/bfloat16 in float32, the result cast
  back to the input dtype.
- ``eps`` clamps eigenvalues from below, ``l -> max(l, eps)``, before ``f`` (the derivative of the
  clamped function is 0 below ``eps``). ``sqrtm`` and ``powm`` with ``p > 0`` clamp at 0 by default
  (exact on positive semidefinite inputs; round-off negatives become 0 instead of NaN).
  ``logm``, ``invsqrtm`` and ``powm`` with ``p <= 0`` do not clamp by default (exact: a zero
  eigenvalue gives inf, a negative one NaN); an explicit ``eps`` for them must be positive.
- Backward is first order only (``once_differentiable``): a double backward raises.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["sym", "sym_funcm", "sqrtm", "invsqrtm", "logm", "expm", "powm", "funcm_derivative", "polar",
           "tie_tolerance"]

ScalarFn = Callable[[Tensor], Tensor]


def sym(X: Tensor) -> Tensor:
    """Symmetric part ``(X + X^T) / 2`` of ``X`` of shape ``(..., n, n)``, in ``X``'s dtype."""
    _check_matrix(X, "sym")
    return (X + X.mT) / 2


def tie_tolerance(dtype: torch.dtype) -> float:
    """Default relative tolerance of the tie rule for ``dtype``: ``eps_mach^(1/3)`` of the working
    dtype (float64: 6.06e-6; float32, float16 and bfloat16, which work in float32: 4.92e-3)."""
    return torch.finfo(_work_dtype(dtype)).eps ** (1.0 / 3.0)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _check_matrix(X: Tensor, name: str) -> None:
    if not isinstance(X, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(X).__name__}")
    if not X.is_floating_point():
        raise TypeError(f"{name}: expected a real floating-point tensor, got {X.dtype}")
    if X.ndim < 2 or X.shape[-1] != X.shape[-2]:
        raise ValueError(f"{name}: expected square matrices of shape (..., n, n), got shape {tuple(X.shape)}")


def _check_eps(eps: float | None, name: str, positive: bool) -> None:
    if eps is None:
        return
    if not isinstance(eps, Real) or not math.isfinite(eps):
        raise ValueError(f"{name}: eps must be a finite number or None, got {eps!r}")
    if positive and eps <= 0:
        raise ValueError(f"{name}: eps must be positive, got {eps!r}")
    if not positive and eps < 0:
        raise ValueError(f"{name}: eps must be non-negative, got {eps!r}")


def _divided_differences(l: Tensor, fl: Tensor, df: ScalarFn, eps: float | None, tol: float,
                         floor: float = 0.0) -> Tensor:
    """The Daleckii-Krein matrix ``L`` (shape ``(..., n, n)``) of eigenvalues ``l`` with ``fl = f(max(l, eps))``."""
    li, lj = l.unsqueeze(-1), l.unsqueeze(-2)
    diff = li - lj
    scale = torch.maximum(li.abs(), lj.abs()).clamp_min(max(floor, torch.finfo(l.dtype).tiny))
    tie = diff.abs() <= tol * scale
    quotient = (fl.unsqueeze(-1) - fl.unsqueeze(-2)) / torch.where(tie, torch.ones_like(diff), diff)
    mid = (li + lj) / 2
    if eps is None:
        slope = df(mid)
    else:  # the clamped function is constant below eps
        slope = torch.where(mid > eps, df(mid.clamp_min(eps)), torch.zeros_like(mid))
    return torch.where(tie, slope, quotient)


class _SymFuncm(torch.autograd.Function):
    """``U diag(f(max(l, eps))) U^T`` of ``sym(X)``; backward by Daleckii-Krein with the tie rule."""

    @staticmethod
    def forward(ctx, X: Tensor, f: ScalarFn, df: ScalarFn, eps: float | None, tol: float, floor: float) -> Tensor:
        l, U = torch.linalg.eigh((X + X.mT) / 2)
        fl = f(l if eps is None else l.clamp_min(eps))
        ctx.save_for_backward(l, U, fl)
        ctx.df, ctx.eps, ctx.tol, ctx.floor = df, eps, tol, floor
        return (U * fl.unsqueeze(-2)) @ U.mT

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        l, U, fl = ctx.saved_tensors
        L = _divided_differences(l, fl, ctx.df, ctx.eps, ctx.tol, ctx.floor)
        inner = U.mT @ ((grad + grad.mT) / 2) @ U
        return U @ (L * inner) @ U.mT, None, None, None, None, None


def sym_funcm(X: Tensor, f: ScalarFn, df: ScalarFn, *, eps: float | None = None,
              tol: float | None = None, floor: float = 0.0) -> Tensor:
    """``f(sym(X)) = U diag(f(max(l, eps))) U^T`` for ``sym(X) = U diag(l) U^T``.

    ``f`` and ``df`` (its derivative) are elementwise functions of a tensor. Shape ``(..., n, n)`` in,
    same shape and dtype out. ``eps=None`` applies no clamp; any finite ``eps`` clamps the eigenvalues
    at ``eps``. ``tol`` is the relative tie tolerance of the backward (default :func:`tie_tolerance`) and
    ``floor`` the absolute floor of its scale (module docstring; 1 suits ``exp``-like ``f``, whose divided
    differences lose accuracy by absolute gaps). Backward: Daleckii-Krein, finite at repeated eigenvalues.
    """
    _check_matrix(X, "sym_funcm")
    if eps is not None and (not isinstance(eps, Real) or not math.isfinite(eps)):
        raise ValueError(f"sym_funcm: eps must be a finite number or None, got {eps!r}")
    return _apply(X, f, df, eps, tol, float(floor))


def _apply(X: Tensor, f: ScalarFn, df: ScalarFn, eps: float | None, tol: float | None, floor: float = 0.0) -> Tensor:
    work = _work_dtype(X.dtype)
    tol = tie_tolerance(work) if tol is None else float(tol)
    Y = _SymFuncm.apply(X.to(work), f, df, None if eps is None else float(eps), tol, floor)
    return Y.to(X.dtype)


def sqrtm(X: Tensor, eps: float = 0.0) -> Tensor:
    """Principal square root ``X^{1/2} = U diag(sqrt(max(l, eps))) U^T`` of a symmetric PSD ``X``.

    Shape ``(..., n, n)``; ``eps >= 0`` (``ValueError`` otherwise), default 0: exact for PSD inputs,
    round-off negative eigenvalues map to 0. The derivative ``1 / (2 sqrt(l))`` grows without bound as
    an eigenvalue tends to 0 (finite for every positive one). Source: Daleckii-Krein backward.
    """
    _check_matrix(X, "sqrtm")
    _check_eps(eps, "sqrtm", positive=False)
    return _apply(X, torch.sqrt, lambda x: 0.5 * torch.rsqrt(x), eps, None)


def invsqrtm(X: Tensor, eps: float | None = None) -> Tensor:
    """Inverse square root ``X^{-1/2} = U diag(max(l, eps)^{-1/2}) U^T`` of a symmetric PD ``X``.

    Shape ``(..., n, n)``. ``eps=None`` (default): no clamp, exact for SPD inputs (a zero eigenvalue
    gives inf, a negative one NaN); an explicit ``eps`` must be positive. Derivative ``-l^{-3/2} / 2``.
    """
    _check_matrix(X, "invsqrtm")
    _check_eps(eps, "invsqrtm", positive=True)
    return _apply(X, torch.rsqrt, lambda x: -0.5 * torch.rsqrt(x) / x, eps, None)


def logm(X: Tensor, eps: float | None = None) -> Tensor:
    """Principal logarithm ``log X = U diag(log max(l, eps)) U^T`` of a symmetric PD ``X``.

    Shape ``(..., n, n)``. ``eps=None`` (default): no clamp; an explicit ``eps`` must be positive
    (SPDNet's ReEig threshold 1e-5 followed by LogEig is ``logm(X, eps=1e-5)``). Derivative ``1 / l``.
    """
    _check_matrix(X, "logm")
    _check_eps(eps, "logm", positive=True)
    return _apply(X, torch.log, torch.reciprocal, eps, None)


def expm(X: Tensor) -> Tensor:
    """Exponential ``exp X = U diag(exp l) U^T`` of a symmetric ``X`` (shape ``(..., n, n)``); the
    result is SPD. Eigenvalues above ~709 (float64) / ~88 (float32) overflow to inf."""
    _check_matrix(X, "expm")
    return _apply(X, torch.exp, torch.exp, None, None, floor=1.0)


def powm(X: Tensor, p: float, eps: float | None = None) -> Tensor:
    """Real power ``X^p = U diag(max(l, eps)^p) U^T`` of a symmetric PSD (``p > 0``) or PD (``p <= 0``) ``X``.

    ``p`` is a Python number (no gradient with respect to ``p``; a tensor raises ``TypeError``).
    ``eps=None`` means a clamp at 0 for ``p > 0`` and no clamp for ``p <= 0``; an explicit ``eps`` must be
    non-negative for ``p > 0`` and positive for ``p <= 0``. ``X^0`` is the identity. Derivative ``p l^{p-1}``.
    """
    _check_matrix(X, "powm")
    if isinstance(p, Tensor) or not isinstance(p, Real) or not math.isfinite(p):
        raise TypeError(f"powm: p must be a finite Python number, got {type(p).__name__}")
    p = float(p)
    _check_eps(eps, "powm", positive=p <= 0)
    if eps is None and p > 0:
        eps = 0.0
    if p == 0.0:
        return _apply(X, torch.ones_like, torch.zeros_like, eps, None)
    return _apply(X, lambda x: torch.pow(x, p), lambda x: p * torch.pow(x, p - 1.0), eps, None)


def funcm_derivative(X: Tensor, V: Tensor, f: ScalarFn, df: ScalarFn, *, eps: float | None = None,
                     tol: float | None = None, floor: float = 0.0) -> Tensor:
    """Directional (Frechet) derivative ``Df_X[V] = U (L o (U^T sym(V) U)) U^T`` of ``X -> f(sym(X))``.

    Shapes ``(..., n, n)`` (broadcast). Same ``L`` and tie rule (``tol``, ``floor``) as :func:`sym_funcm`.
    Used by the log-Euclidean exp/log maps (``D logm_P[V]``). Gradients *through* this function go through
    ``torch.linalg.eigh``'s own backward, which is not finite at repeated eigenvalues of ``X``.
    """
    _check_matrix(X, "funcm_derivative")
    _check_matrix(V, "funcm_derivative")
    work = _work_dtype(X.dtype)
    Xw, Vw = X.to(work), V.to(work)
    l, U = torch.linalg.eigh(sym(Xw))
    fl = f(l if eps is None else l.clamp_min(eps))
    L = _divided_differences(l, fl, df, eps, tie_tolerance(work) if tol is None else float(tol), float(floor))
    return (U @ (L * (U.mT @ sym(Vw) @ U)) @ U.mT).to(X.dtype)


class _Polar(torch.autograd.Function):
    """Orthogonal polar factor ``O = W V^T`` of ``Z = W diag(s) V^T``; backward through ``H = V diag(s) V^T``."""

    @staticmethod
    def forward(ctx, Z: Tensor) -> Tensor:
        W, s, Vh = torch.linalg.svd(Z)
        O = W @ Vh
        ctx.save_for_backward(O, Vh, s)
        return O

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        O, Vh, s = ctx.saved_tensors
        A = O.mT @ grad
        skew = Vh @ ((A - A.mT) / 2) @ Vh.mT  # in H's eigenbasis
        K = Vh.mT @ (skew / (s.unsqueeze(-1) + s.unsqueeze(-2))) @ Vh
        return 2 * O @ K


def polar(Z: Tensor) -> Tensor:
    """Orthogonal factor ``O`` of the polar decomposition ``Z = O H`` (``H = (Z^T Z)^{1/2}``) of a nonsingular
    square ``Z`` of shape ``(..., n, n)``, from an SVD ``Z = W diag(s) V^T``: ``O = W V^T``.

    Backward: differentiating ``Z = O H`` gives ``O^T dO = Omega`` (skew) with ``H Omega + Omega H =
    O^T dZ - dZ^T O``, solved in ``H``'s eigenbasis by dividing by ``s_i + s_j``; hence ``dZ = 2 O K`` with
    ``K = V [(V^T skew(O^T G) V)_ij / (s_i + s_j)] V^T``. No division by singular-value gaps: finite at
    repeated singular values (``torch.linalg.svd``'s own backward is not). float16/bfloat16 work in float32.
    """
    _check_matrix(Z, "polar")
    return _Polar.apply(Z.to(_work_dtype(Z.dtype))).to(Z.dtype)
