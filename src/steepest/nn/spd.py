r"""SPD networks: BiMap, ReEig, LogEig (SPDNet) and Riemannian batch normalization on the SPD cone,
with the (generalized) Bures-Wasserstein batch norm of GBWBN.

Sources:

- SPDNet (BiMap, ReEig, LogEig): Huang & Van Gool, "A Riemannian Network for SPD Matrix Learning",
  AAAI 2017, arXiv 1608.04233.
- Riemannian batch normalization (AIM): Brooks, Schwander, Barbaresco, Schneider & Cord,
  "Riemannian batch normalization for SPD neural networks", NeurIPS 2019, arXiv 1909.02414.
- GBWBN: Wang, Jin, Chen, Luo & Wu, "Learning to Normalize on the SPD Manifold under Bures-Wasserstein
  Geometry", CVPR 2025, arXiv 2504.00660 (code ``jjscc/GBWBN``). The generalized BW metric: Han,
  Mishra, Jawanpuria & Gao, arXiv 2110.10464.

The geometry (matrix functions with a Daleckii-Krein backward, BW/GBW/AIM/LEM distances, logs, exps,
geodesics, barycenters) is :mod:`steepest.spd`'s; this module composes it. Every layer works in the
dtype of its input; SPD layers are normally run in float64 (condition numbers above ~1e5 lose most
digits of ``log`` and ``^{-1/2}`` in float32).

Training with :func:`steepest.for_model`: the layers declare their parameters' constraint sets
(``steepest_constraints``), so BiMap weights are put back on the Stiefel manifold (polar retraction of
the step, ``constraint="stiefel"``) and the batch norm's ``M`` and ``bias`` back on the SPD cone
(eigenvalue floor 1e-6, ``constraint="spd"``) after every optimizer step; ``steepest.explain`` shows
the constraint in the update column. The SPD parameters get the ``vector`` role (as the gains and
biases of other norm layers): presets give them their elementwise (AdamW-style) recipe.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Callable

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..spd import (
    aim_barycenter,
    aim_geodesic,
    bw_barycenter,
    bw_exp,
    bw_geodesic,
    bw_log,
    expm,
    invsqrtm,
    lem_geodesic,
    logm,
    powm,
    sqrtm,
    sym,
    sym_funcm,
    tie_tolerance,
)
from ..spd.metrics import GeneralizedBuresWasserstein
from ._checks import positive_int

__all__ = ["BiMap", "ReEig", "LogEig", "SPDBatchNorm", "SPD_BATCHNORM_METRICS", "triu_vector"]

#: values of ``SPDBatchNorm(metric=...)``
SPD_BATCHNORM_METRICS: tuple[str, ...] = ("bw", "gbw", "aim", "lem")


def _check_spd_input(X: Tensor, n: int, name: str) -> None:
    if not isinstance(X, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(X).__name__}")
    if X.ndim < 2 or X.shape[-1] != X.shape[-2] or X.shape[-1] != n:
        raise ValueError(f"{name}: expected matrices of shape (..., {n}, {n}), got shape {tuple(X.shape)}")


def _check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _congruence(A: Tensor, X: Tensor) -> Tensor:
    return sym(A @ X @ A.mT)


# -- SPDNet blocks ------------------------------------------------------------------------------------
class BiMap(nn.Module):
    r"""Bilinear map ``X -> W^T X W`` from ``S++(in_dim)`` to ``S++(out_dim)`` (SPDNet, arXiv 1608.04233).

    ``weight`` has shape ``(in_dim, out_dim)`` with ``out_dim <= in_dim`` and orthonormal columns
    (``W^T W = I``, the Stiefel manifold), so the output of an SPD input is SPD (full rank: ``W`` has
    rank ``out_dim``). Input ``(..., in_dim, in_dim)``, output ``(..., out_dim, out_dim)``, symmetrized.

    Initialization: a random point of the Stiefel manifold (sign-fixed QR of a Gaussian matrix, from
    ``generator`` if given); the SPDNet reference code takes the leading singular vectors of a random
    ``v v^T`` instead. Training: the module declares ``steepest_constraints = {"weight": "stiefel"}``, so
    :func:`steepest.for_model` retracts the weight onto the manifold after every step (polar retraction,
    :class:`steepest.constraints.Stiefel`); its layout is declared ``in_out`` (fan-in ``in_dim``).
    """

    steepest_constraints = {"weight": "stiefel"}
    steepest_layouts = {"weight": "in_out"}

    def __init__(self, in_dim: int, out_dim: int, *, generator: torch.Generator | None = None,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        super().__init__()
        self.in_dim = positive_int("in_dim", in_dim)
        self.out_dim = positive_int("out_dim", out_dim)
        if out_dim > in_dim:
            raise ValueError(f"out_dim must be at most in_dim (W has orthonormal columns), got in_dim={in_dim}, "
                             f"out_dim={out_dim}")
        self.weight = nn.Parameter(torch.empty(in_dim, out_dim, dtype=dtype, device=device))
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """A random point of the Stiefel manifold: ``Q diag(sign(diag R))`` of ``QR(randn(in_dim, out_dim))``."""
        A = torch.randn(self.in_dim, self.out_dim, generator=generator, dtype=torch.float64)
        Q, R = torch.linalg.qr(A)
        d = torch.sign(torch.diagonal(R))
        Q = Q * torch.where(d == 0, torch.ones_like(d), d)
        self.weight.copy_(Q.to(self.weight.dtype))

    def forward(self, X: Tensor) -> Tensor:
        _check_spd_input(X, self.in_dim, "BiMap")
        W = self.weight.to(X.dtype)
        return sym(W.mT @ X @ W)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}"


class ReEig(nn.Module):
    r"""Eigenvalue rectification ``X -> U diag(max(l, eps)) U^T`` for ``sym(X) = U diag(l) U^T``
    (SPDNet's nonlinearity, arXiv 1608.04233; ``eps = 1e-5`` is the GBWBN reference code's threshold).

    Computed by :func:`steepest.spd.sym_funcm` with ``f(l) = max(l, eps)``: the backward is the
    Daleckii-Krein formula, finite at repeated eigenvalues (clamped eigenvalues tie exactly; the
    derivative below ``eps`` is 0). Shape ``(..., n, n)`` in and out.
    """

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = _check_positive("eps", eps)

    def forward(self, X: Tensor) -> Tensor:
        return sym_funcm(X, lambda x: x, torch.ones_like, eps=self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps:g}"


def triu_vector(S: Tensor) -> Tensor:
    r"""The upper triangle of symmetric ``S`` (``(..., n, n)``) as a vector of length ``n(n+1)/2``, row by
    row, with the off-diagonal entries multiplied by ``sqrt(2)``: an isometry from symmetric matrices with
    the Frobenius norm onto ``R^{n(n+1)/2}``, so ``||triu_vector(S)||_2 = ||S||_F``."""
    n = S.shape[-1]
    rows, cols = torch.triu_indices(n, n, device=S.device)
    weight = torch.where(rows == cols, 1.0, math.sqrt(2.0)).to(S.dtype)
    return S[..., rows, cols] * weight


class LogEig(nn.Module):
    r"""``X -> triu_vector(log X)``: the matrix logarithm (the tangent space at ``I`` of the log-Euclidean
    geometry; SPDNet's LogEig, arXiv 1608.04233) followed by the upper-triangular vectorization with
    off-diagonals scaled by ``sqrt(2)`` (:func:`triu_vector`; SPDNet flattens all ``n^2`` entries instead,
    which holds each off-diagonal twice). Input ``(..., n, n)``, output ``(..., n(n+1)/2)``.

    ``eps`` (default ``None``: no clamp) clamps eigenvalues from below before the log
    (:func:`steepest.spd.logm`); the backward is Daleckii-Krein, finite at repeated eigenvalues.
    """

    def __init__(self, eps: float | None = None):
        super().__init__()
        self.eps = None if eps is None else _check_positive("eps", eps)

    def forward(self, X: Tensor) -> Tensor:
        return triu_vector(logm(X, eps=self.eps))

    def extra_repr(self) -> str:
        return "" if self.eps is None else f"eps={self.eps:g}"


# -- the BW transports: operators with a kernel of l_i + l_j in a matrix's eigenbasis ---------------------------
class _SumKernel(torch.autograd.Function):
    """``T_B(V) = U [(U^T V U)_ij h(l_i + l_j)] U^T`` for symmetric ``B = U diag(l) U^T``; backward in ``B`` by
    divided differences (no division by eigenvalue gaps: finite at repeated eigenvalues)."""

    @staticmethod
    def forward(ctx, B: Tensor, V: Tensor, h: Callable, dh: Callable) -> Tensor:
        l, U = torch.linalg.eigh(sym(B))
        K = h(l.unsqueeze(-1) + l.unsqueeze(-2))
        Vt = U.mT @ sym(V) @ U
        ctx.save_for_backward(l, U, Vt, K)
        ctx.h, ctx.dh, ctx.B_shape = h, dh, B.shape
        return U @ (K * Vt) @ U.mT

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        l, U, Vt, K = ctx.saved_tensors
        Gt = U.mT @ sym(grad) @ U
        dV = U @ (K * Gt) @ U.mT
        # D[c, a, b] = (h(l_c + l_a) - h(l_c + l_b)) / (l_a - l_b), h' at the midpoint on ties.
        la, lb, lc = l[..., None, :, None], l[..., None, None, :], l[..., :, None, None]
        diff = la - lb
        tie = diff.abs() <= tie_tolerance(l.dtype) * torch.maximum(la.abs(), lb.abs()).clamp_min(
            torch.finfo(l.dtype).tiny)
        quotient = (ctx.h(lc + la) - ctx.h(lc + lb)) / torch.where(tie, torch.ones_like(diff), diff)
        D = torch.where(tie, ctx.dh(lc + (la + lb) / 2), quotient)
        # dT[E]_ij = sum_m D[j,i,m] E_im V_mj + D[i,m,j] V_im E_mj (eigenbasis); its adjoint applied to G is
        # E1_im = sum_j D[j,i,m] G_ij V_mj and E2_mj = sum_i D[i,m,j] G_ij V_im. The products G V are summed
        # over the dimensions B was broadcast along first (B's gradient is summed over them anyway).
        shape = D.shape[:-3] + D.shape[-2:] + D.shape[-1:]
        P1 = (Gt.unsqueeze(-2) * Vt.unsqueeze(-3)).sum_to_size(shape)  # [i, m, j] = G_ij V_mj
        P2 = (Gt.unsqueeze(-2) * Vt.unsqueeze(-1)).sum_to_size(shape)  # [i, m, j] = G_ij V_im
        Et = (D.permute(*range(D.ndim - 3), -2, -1, -3) * P1).sum(-1) + (D * P2).sum(-3)
        dB = U @ sym(Et) @ U.mT
        return dB.sum_to_size(ctx.B_shape), dV, None, None


def _bw_transport_to_identity(B: Tensor, V: Tensor) -> Tensor:
    """GBWBN's transport of ``V`` in ``T_B`` to ``T_I``: entries multiplied by ``sqrt(2 / (l_i + l_j))``."""
    return _SumKernel.apply(B, V, lambda s: torch.sqrt(2.0 / s), lambda s: -torch.sqrt(2.0 / s) / (2.0 * s))


def _bw_transport_from_identity(G: Tensor, V: Tensor) -> Tensor:
    """GBWBN's transport of ``V`` in ``T_I`` to ``T_G``: entries multiplied by ``sqrt((l_i + l_j) / 2)``."""
    return _SumKernel.apply(G, V, lambda s: torch.sqrt(s / 2.0), lambda s: 0.25 / torch.sqrt(s / 2.0))


# -- batch normalization ---------------------------------------------------------------------------------
class SPDBatchNorm(nn.Module):
    r"""Riemannian batch normalization of SPD matrices ``(N, n, n)`` under the Bures-Wasserstein (``"bw"``),
    generalized BW with a learnable SPD ``M`` (``"gbw"``, GBWBN), affine-invariant (``"aim"``) or
    log-Euclidean (``"lem"``) geometry.

    Training forward, for a batch ``X_1..X_N`` (``theta = power``, ``s = scale``, ``G = bias``):

    1. Deformation (GBWBN): ``Y_i = X_i^theta``, ``G' = G^theta`` (skipped for ``theta = 1``).
    2. Congruence (GBWBN, ``"gbw"`` only): ``Y_i <- M^{-1/2} Y_i M^{-1/2}``, ``G' <- M^{-1/2} G' M^{-1/2}``;
       an isometry from GBW_M onto BW (:mod:`steepest.spd`), so the next steps are plain BW.
    3. Batch barycenter ``B`` of the ``Y_i``: BW fixed-point iteration from the arithmetic mean
       (:func:`steepest.spd.bw_barycenter`; GBWBN runs 1 iteration), AIM Karcher iteration
       (:func:`steepest.spd.aim_barycenter`; Brooks et al. run 1 step) or the LEM closed form
       ``expm(mean log Y_i)``; ``iters`` updates, no tolerance test (no host sync).
    4. Centering: ``V_i`` = the tangent vector at ``I`` of ``Y_i`` after moving ``B`` to ``I``:

       - BW/GBW (GBWBN): ``V_i = PT_{B->I}(Log_B Y_i)`` with ``Log_B`` the BW log and ``PT_{B->I}`` multiplying
         the entries of ``U^T V U`` by ``sqrt(2 / (l_i + l_j))`` for ``B = U diag(l) U^T``;
       - AIM (Brooks et al.): ``V_i = log(B^{-1/2} Y_i B^{-1/2})``;  LEM: ``V_i = log Y_i - log B``.
    5. Dispersion ``var = mean_i ||V_i||_I^2 / theta^2`` with the metric's norm at ``I``
       (``tr(V^2) / 4`` for BW, ``||V||_F^2`` for AIM and LEM), which equals the Frechet variance
       ``mean_i d(Y_i, B)^2 / theta^2`` (both transports are isometries).
    6. Scaling: ``V_i <- s V_i / sqrt(var + eps)``.
    7. Biasing and back to the cone: BW/GBW (GBWBN) ``Z_i = Exp_{G'}(PT_{I->G'} V_i)`` with the transport
       multiplying by ``sqrt((l_i + l_j) / 2)`` in ``G'``'s eigenbasis and the BW exponential
       (:func:`steepest.spd.bw_exp`); AIM ``Z_i = G'^{1/2} expm(V_i) G'^{1/2}``; LEM
       ``Z_i = expm(log G' + V_i)``.
    8. Undo (GBWBN): ``Z_i <- M^{1/2} Z_i M^{1/2}`` (``"gbw"``), then ``Z_i <- Z_i^{1/theta}``.

    Running statistics (momentum ``m``, default 0.1 as GBWBN): the running mean ``R`` moves along the
    metric's geodesic, ``R <- geodesic(R, B, m)`` (for ``"gbw"`` the GBW_M geodesic), and the running
    variance ``v <- (1 - m) v + m var``. Evaluation mode uses ``R`` and ``v`` in steps 3 and 5.

    With ``bias = I`` and ``scale = 1`` the output batch's barycenter (in the layer's geometry) is ``I``
    once the barycenter iteration has converged: the centered ``V_i`` sum to 0 (the first-order condition of
    the barycenter), scaling keeps that, and the output's log at ``I`` is ``V_i``. For BW/GBW that last step
    needs ``Exp`` to be invertible at the outputs (``I + L_{G'}[W]`` positive definite): the BW exponential
    is not injective on the whole tangent space, and a large ``scale`` (or a far bias) can put outputs
    beyond that region, where they are still SPD but the batch's barycenter moves away from the bias.

    **What is the paper's and what is this library's reading.** Steps 1-8 and the transports of step 4 and 7
    follow the GBWBN reference code as read for this library (``spd/nn.py::BatchNormSPD``, ``spd/functional.py``;
    the paper's own text was not read here beyond its abstract: its numeric results are not reproduced).
    This library's choices where that code differs or is silent:

    - the dispersion of step 5 is the Frechet variance around the batch barycenter; the reference code
      measures ``mean_i d_BW(Y_i, I)^2 / theta^2`` (distance to ``I``, not to ``B``);
    - gradients flow through the batch statistics (as in Euclidean batch norm and Brooks et al.); the
      reference code computes them under ``no_grad`` (``detach_stats=True`` does the same here);
    - step 7 maps ``V`` straight to ``T_{G'}``; the reference code first goes to the cone and back,
      ``Log_I(Exp_I(V))`` with ``Exp_I(V) = (I + V/2)^2``, which is ``V`` whenever ``I + V/2`` is positive
      definite and otherwise reflects its negative eigenvalues;
    - the running mean is kept in the deformed coordinates before the congruence by ``M`` (so it stays
      valid while ``M`` is learned) and moves along the GBW_M geodesic; the bias starts at ``I`` exactly
      (the reference code uses ``I + diag(1e-7 k)`` to avoid exact ties its backward cannot handle; the
      backward here is finite at ties);
    - the ``"aim"`` and ``"lem"`` options use the same deformation, scaling and biasing skeleton with their
      own barycenter, centering and exponential (Brooks et al. for AIM; the LEM variant is the Euclidean
      batch norm of ``log X``); neither uses ``M``.
    - whether the transports of steps 4 and 7 are the Levi-Civita parallel transports of BW along the
      geodesic is not claimed here; they are linear isometries between the tangent spaces (checked in the
      tests), which is what makes step 5 a Frechet variance.

    Parameters: ``bias`` (``(n, n)``, SPD, init ``I``), ``scale`` (scalar, init 1) and, for ``"gbw"``, ``M``
    (``(n, n)``, SPD, init ``I``). The module declares ``steepest_constraints = {"M": "spd", "bias": "spd"}``
    and the ``vector`` role for all three, so :func:`steepest.for_model` keeps ``M`` and ``bias`` SPD.

    Args:
        dim: the matrix size ``n``.
        metric: ``"bw"``, ``"gbw"``, ``"aim"`` or ``"lem"``.
        momentum: running statistics' step along the geodesic, in ``(0, 1]``.
        power: the deformation ``theta`` (> 0; GBWBN default 1, 0.5 in its HDM05 setting).
        eps: added to the variance before the square root (> 0).
        iters: barycenter iterations per batch (>= 1; default 1 as GBWBN and Brooks et al.; ignored by LEM).
        detach_stats: compute batch statistics without gradient (the GBWBN reference code's choice).
        dtype, device: of the parameters and buffers (SPD networks normally use float64).
    """

    steepest_constraints = {"M": "spd", "bias": "spd"}
    steepest_roles = {"M": "vector", "bias": "vector", "scale": "vector"}

    def __init__(self, dim: int, metric: str = "gbw", momentum: float = 0.1, *, power: float = 1.0,
                 eps: float = 1e-5, iters: int = 1, detach_stats: bool = False,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        super().__init__()
        self.dim = positive_int("dim", dim)
        if not isinstance(metric, str) or metric not in SPD_BATCHNORM_METRICS:
            raise ValueError(f"Unknown metric {metric!r}; expected one of: {', '.join(SPD_BATCHNORM_METRICS)}")
        self.metric = metric
        if isinstance(momentum, bool) or not isinstance(momentum, Real) or not 0 < momentum <= 1:
            raise ValueError(f"momentum must be a number in (0, 1], got {momentum!r}")
        self.momentum = float(momentum)
        self.power = _check_positive("power", power)
        self.eps = _check_positive("eps", eps)
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
            raise ValueError(f"iters must be an int >= 1, got {iters!r}")
        self.iters = iters
        self.detach_stats = bool(detach_stats)
        factory = {"dtype": dtype, "device": device}
        self.bias = nn.Parameter(torch.eye(dim, **factory))
        self.scale = nn.Parameter(torch.ones((), **factory))
        if metric == "gbw":
            self.M = nn.Parameter(torch.eye(dim, **factory))
        else:
            self.register_parameter("M", None)
        self.register_buffer("running_mean", torch.eye(dim, **factory))
        self.register_buffer("running_var", torch.ones((), **factory))

    def extra_repr(self) -> str:
        return (f"{self.dim}, metric={self.metric!r}, momentum={self.momentum:g}, power={self.power:g}, "
                f"iters={self.iters}")

    def _deform(self, X: Tensor) -> Tensor:
        return X if self.power == 1.0 else powm(X, self.power)

    def forward(self, X: Tensor) -> Tensor:
        _check_spd_input(X, self.dim, "SPDBatchNorm")
        if X.ndim != 3:
            raise ValueError(f"SPDBatchNorm: expected a batch of shape (N, {self.dim}, {self.dim}), "
                             f"got shape {tuple(X.shape)}")
        theta, training = self.power, self.training
        bias = self.bias.to(X.dtype)
        Y = self._deform(X)
        stats = Y.detach() if self.detach_stats else Y
        R = self.running_mean.to(X.dtype)
        if self.metric in ("bw", "gbw"):
            if self.metric == "gbw":
                M = self.M.to(X.dtype)
                Mi, Mh = invsqrtm(M), sqrtm(M)
                Y, stats, R = _congruence(Mi, Y), _congruence(Mi, stats), _congruence(Mi, R)
                Gp = _congruence(Mi, self._deform(bias))
            else:
                Gp = self._deform(bias)
            B = bw_barycenter(stats, iters=self.iters, tol=0) if training else R
            V = _bw_transport_to_identity(B, bw_log(B, Y))
            var = V.square().sum((-2, -1)).mean() / (4 * theta ** 2)
        elif self.metric == "aim":
            Gp = self._deform(bias)
            B = aim_barycenter(stats, iters=self.iters, tol=0) if training else R
            V = logm(_congruence(invsqrtm(B), Y))
            var = V.square().sum((-2, -1)).mean() / theta ** 2
        else:  # lem
            logY = logm(Y)
            if training:
                log_B = (logY.detach() if self.detach_stats else logY).mean(0)
                B = expm(log_B)
            else:
                B, log_B = R, logm(R)
            V = logY - log_B
            var = V.square().sum((-2, -1)).mean() / theta ** 2
        if training:
            self._update_running(B.detach(), var.detach())
        else:
            var = self.running_var.to(X.dtype)
        V = V * (self.scale.to(X.dtype) / torch.sqrt(var + self.eps))
        if self.metric in ("bw", "gbw"):
            Z = bw_exp(Gp, _bw_transport_from_identity(Gp, V))
            if self.metric == "gbw":
                Z = _congruence(Mh, Z)
        elif self.metric == "aim":
            Z = _congruence(sqrtm(Gp), expm(V))
        else:
            Z = expm(theta * logm(bias) + V)
        return Z if theta == 1.0 else powm(Z, 1.0 / theta)

    @torch.no_grad()
    def _update_running(self, B: Tensor, var: Tensor) -> None:
        """Move the running mean along the geodesic towards the batch barycenter ``B`` (for ``"gbw"``, ``B``
        is in the congruenced coordinates: the GBW_M geodesic of the deformed coordinates is the BW
        geodesic there) and average the variance."""
        m, R = self.momentum, self.running_mean
        if self.metric == "gbw":
            M = self.M.detach().to(B.dtype)
            geometry = GeneralizedBuresWasserstein(M=M)
            new = geometry.geodesic(R.to(B.dtype), _congruence(sqrtm(M), B), m)
        elif self.metric == "bw":
            new = bw_geodesic(R.to(B.dtype), B, m)
        elif self.metric == "aim":
            new = aim_geodesic(R.to(B.dtype), B, m)
        else:
            new = lem_geodesic(R.to(B.dtype), B, m)
        self.running_mean.copy_(sym(new).to(R.dtype))
        self.running_var.mul_(1 - m).add_(m * var.to(self.running_var.dtype))
