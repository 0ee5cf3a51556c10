r"""Residual blocks whose l2 Lipschitz constant is at most ``L`` for every value of their parameters.

**Block.** ``y = H x + G phi(W x + b)`` with ``x, y`` in ``R^d``, ``h`` hidden units and ``phi``
applied entrywise and slope-restricted in ``[0, 1]``: ``0 <= (phi(u) - phi(v)) / (u - v) <= 1``
(ReLU, leaky ReLU, tanh, ``4 sigmoid``, softplus; ``"sigmoid"`` is scaled by 4 so that its
slopes fill ``(0, 1]``: the same function class, as ``G`` absorbs the factor).
``skip="identity"`` fixes ``H = I``, the plain residual block ``y = x + G phi(W x + b)`` (needs
``L >= 1``: where every ``phi`` is flat the block is the identity); ``skip="learned"`` learns ``H``
(any ``L > 0``). The bias ``b`` is free.

**LMI (LipSDP for one hidden layer).** For two inputs write ``dx``, ``dz = W dx``,
``ds = phi(z) - phi(z')``. The slope restriction gives ``ds_i (dz_i - ds_i) >= 0`` per unit; with a
diagonal multiplier ``Lam = diag(lam) > 0`` and ``v = [dx; ds]``::

    ||dy||^2 - L^2 ||dx||^2 + 2 ds^T Lam (W dx - ds) = v^T M v,
    M = [[H^T H - L^2 I,  H^T G + W^T Lam],
         [G^T H + Lam W,  G^T G - 2 Lam  ]]

so ``M <= 0`` (negative semidefinite) implies ``||dy||^2 <= L^2 ||dx||^2 - 2 sum_i lam_i ds_i (dz_i
- ds_i) <= L^2 ||dx||^2``: the block is ``L``-Lipschitz. Equivalently ``[H G]^T [H G] <= P`` with
``P = [[L^2 I, -W^T Lam], [-Lam W, 2 Lam]]``. The same block-tridiagonal LMI (skip, residual and
multiplier blocks) is what the LDLT paper chains over a whole ResNet; this module solves it in
closed form for one block.

**Parameterization (LDL^T / Cholesky; derived here).** Free parameters: ``V`` (h x d), ``theta``
(h), ``log_alpha``, ``K`` and ``log_beta`` (below), ``b``. With ``Lam = diag(exp(theta))``:

1. ``a = alpha * s_V`` (``s_V`` the mean squared row norm of ``V``), ``V V^T + a I = C C^T``
   (Cholesky, h x h), ``U = C^{-1} V``. Then ``U^T U = I - a (V^T V + a I)^{-1}`` (Woodbury), so
   ``||U||_2 < 1``, and ``I - U U^T = a C^{-1} C^{-T}``.
2. ``W = sqrt(2) L Lam^{-1/2} U``. With ``S = blkdiag(L I, sqrt(2) Lam^{1/2})`` this makes
   ``P = S Q S``, ``Q = [[I, -U^T], [-U, I]]``, and ``Q`` has the block LDL^T factorization
   ``Q = [[I, 0], [-U, I]] blkdiag(I, I - U U^T) [[I, -U^T], [0, I]]`` whose pivots ``I`` and
   ``I - U U^T = a C^{-1} C^{-T}`` are positive definite for every parameter value. Hence
   ``Q = R^T R`` with ``R = [[I, -U^T], [0, sqrt(a) C^{-T}]]``.
3. Any ``N = [N_1 N_2]`` (d x (d + h)) with ``||N||_2 <= 1`` gives ``[H G] = N R S``, i.e.
   ``H = L N_1``, ``G = sqrt(2) (sqrt(a) N_2 - N_1 V^T) C^{-T} Lam^{1/2}``, and then
   ``[H G]^T [H G] = S R^T N^T N R S <= S R^T R S = P``: ``M <= 0``, the bound holds. Conversely
   every ``(H, G, W, Lam)`` with ``M <= 0`` and ``P > 0`` arises this way (take ``N = [H G] S^{-1}
   R^{-1}``), so nothing LipSDP certifies with a diagonal multiplier is lost.
4. ``N`` is a contraction by construction (:func:`contraction`): ``N = D^{-1} K`` with
   ``K K^T + beta s_K I = D D^T``, so ``N N^T = I - beta s_K D^{-1} D^{-T} < I``. ``skip="learned"``:
   ``K`` is d x (d + h). ``skip="identity"``: ``N_1 = I / L`` and ``N_2 = sqrt(1 - 1/L^2) N'``
   with ``N' = contraction(K)``, ``K`` d x h; then ``N N^T = I/L^2 + N_2 N_2^T <= I``.

For ``L = 1`` with an identity skip ``N_2 = 0`` and, for ReLU, the block is
``x - 2 U^T relu(U x + b')`` with ``||U|| < 1``: the convex potential layer (Meunier et al., arXiv
2110.12690) and the SLL form (Araujo et al., arXiv 2303.03169) -- a cross-check of the algebra.
For ReLU (positively homogeneous) ``Lam`` only rescales ``b``; for tanh/sigmoid it matters.

**Floating point.** The bound is exact in exact arithmetic. ``alpha`` and ``beta`` are floored at
``8 n^2 eps`` (``n`` the Cholesky size, ``eps`` of the working dtype) so that ``V V^T + a I`` has
condition number at most about ``1 / (8 n eps)`` and the Cholesky factorizations cannot fail; ``V``
and ``K`` are divided by their largest entry first (the maps are scale invariant), so the Gram
matrices cannot overflow. Log-parameters are clamped to ``[-30, 30]`` (``theta`` to ``[-15, 15]``)
before ``exp``; a clamped value is just another valid parameter, so the bound still holds. The
weights are built in float64 for float64 parameters and in float32 otherwise (``work_dtype``).

**Network.** :class:`LipschitzResidualNet`: input projection, ``depth`` blocks, output layer; the
two projections are spectrally normalized exactly (``W / max(1, ||W||_2)``, singular values by
``torch.linalg.matrix_norm(ord=2)``, no power iteration), so the network's Lipschitz constant is at
most the product of the block bounds, ``L^depth``.

**Sources.** Juston, Sreenivas, Nottage, Soylemezoglu, "LDLT L-Lipschitz Network: Generalized Deep
End-To-End Lipschitz Network Construction", arXiv 2512.05915 (ResNet as a block-tridiagonal LMI
certified through an LDL^T decomposition, Cholesky parameterization); its predecessor arXiv
2502.21279 (Gershgorin). The paper's exact equations were not available: the construction above is
derived here from LipSDP (Fazlyab et al., arXiv 1906.04893) and only shares the paper's idea
(LDL^T pivots positive by construction, Cholesky + Woodbury) and the author's ``Omega = W^T W +
alpha I`` normalization seen in ``Marius-Juston/LDLTFlossing``. Related complete parameterization:
the sandwich layer (Wang & Manchester, arXiv 2301.11526).

**Cost.** One h x h and one d x d Cholesky plus triangular solves per forward (independent of the
batch), then two matmuls like an MLP block.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import positive_int, work_dtype

__all__ = ["LipschitzResidual", "LipschitzResidualNet", "contraction", "ACTIVATIONS", "SKIPS"]

#: activations slope-restricted in [0, 1] (the LMI's sector)
ACTIVATIONS = {
    "relu": F.relu,
    "leaky_relu": F.leaky_relu,  # slope 0.01 or 1
    "tanh": torch.tanh,
    "sigmoid": lambda z: 4.0 * torch.sigmoid(z),  # 4 sigmoid: slopes in (0, 1], uses the whole sector
    "softplus": F.softplus,  # slopes in (0, 1)
}
SKIPS = ("identity", "learned")
_LOG_CLAMP = 30.0
_LAMBDA_CLAMP = 15.0


def _check_L(L) -> float:
    if isinstance(L, bool) or not isinstance(L, (int, float)) or not math.isfinite(L) or L <= 0:
        raise ValueError(f"Invalid L: {L!r}; expected a finite number > 0")
    return float(L)


def _check_activation(activation) -> str:
    if activation not in ACTIVATIONS:
        raise ValueError(f"Invalid activation: {activation!r}; expected one of: {', '.join(ACTIVATIONS)} "
                         f"(slope-restricted in [0, 1])")
    return activation


def contraction(k: Tensor, log_beta: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(N, D, shift, k_hat)`` with ``N = D^{-1} k_hat`` and ``||N||_2 < 1`` for every ``k``.

    ``k_hat = k / max|k|`` (``N`` is invariant to the scale of ``k``), ``shift = beta * s``
    (``s``: mean squared row norm of ``k_hat``, at least ``1/rows``; ``beta = exp(log_beta)`` floored
    at ``8 rows^2 eps``), ``D`` the lower Cholesky factor of ``k_hat k_hat^T + shift I``. Then
    ``N N^T = I - shift D^{-1} D^{-T}``. ``k`` must be a finite 2-d tensor (rows x cols)."""
    rows = k.shape[0]
    info = torch.finfo(k.dtype)
    k_hat = k / k.detach().abs().amax().clamp_min(info.tiny)
    s = ((k_hat * k_hat).sum() / rows).clamp_min(1.0 / rows)
    beta = torch.exp(log_beta.to(k.dtype).clamp(-_LOG_CLAMP, _LOG_CLAMP)) + 8.0 * rows * rows * info.eps
    shift = beta * s
    eye = torch.eye(rows, dtype=k.dtype, device=k.device)
    d = torch.linalg.cholesky(k_hat @ k_hat.T + shift * eye)
    return torch.linalg.solve_triangular(d, k_hat, upper=False), d, shift, k_hat


class LipschitzResidual(nn.Module):
    """``y = x + G phi(W x + b)`` (or ``H x + ...`` with ``skip="learned"``), ``L``-Lipschitz in l2
    for every parameter value (module doc: the LMI, its LDL^T parameterization and the proof).

    Args:
        dim: features of ``x`` and ``y``.
        hidden: hidden units ``h``.
        L: the guaranteed Lipschitz bound (``> 0``; ``>= 1`` with ``skip="identity"``).
        activation: one of ``ACTIVATIONS`` (slope-restricted in [0, 1]).
        skip: ``"identity"`` (``H = I``) or ``"learned"`` (``H = L N_1``).
    """

    def __init__(self, dim: int, hidden: int, L: float = 1.0, activation: str = "relu", skip: str = "identity"):
        super().__init__()
        self.dim, self.hidden = positive_int("dim", dim), positive_int("hidden", hidden)
        self.L = _check_L(L)
        self.activation = _check_activation(activation)
        if skip not in SKIPS:
            raise ValueError(f"Invalid skip: {skip!r}; expected one of: {', '.join(SKIPS)}")
        if skip == "identity" and self.L < 1:
            raise ValueError(f"Invalid L: {L!r} with skip='identity'; an identity skip needs L >= 1 "
                             f"(use skip='learned' for L < 1)")
        self.skip = skip
        self.v = nn.Parameter(torch.empty(hidden, dim))
        self.log_alpha = nn.Parameter(torch.zeros(()))
        self.theta = nn.Parameter(torch.zeros(hidden))
        self.bias = nn.Parameter(torch.zeros(hidden))
        cols = dim + hidden if skip == "learned" else hidden
        if skip == "learned" or self.L > 1:
            self.k = nn.Parameter(torch.empty(dim, cols))
            self.log_beta = nn.Parameter(torch.zeros(()))
        else:  # identity skip with L = 1: N_2 = 0, no K
            self.register_parameter("k", None)
            self.register_parameter("log_beta", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``V ~ N(0, 1/d)``, ``alpha = lam = 1``, ``b = 0``; identity skip: ``K ~ N(0, 1/h)``,
        ``beta = 1``; learned skip: ``K = [I, N(0, 0.01)]``, ``beta = 0.01`` (``H`` about
        ``0.995 L I`` at init)."""
        with torch.no_grad():
            self.v.normal_(0.0, self.dim ** -0.5)
            self.log_alpha.zero_()
            self.theta.zero_()
            self.bias.zero_()
            if self.k is not None:
                if self.skip == "learned":
                    self.k.zero_()
                    self.k[:, :self.dim] = torch.eye(self.dim)
                    self.k[:, self.dim:].normal_(0.0, 0.1)
                    self.log_beta.fill_(math.log(0.01))
                else:
                    self.k.normal_(0.0, self.hidden ** -0.5)
                    self.log_beta.zero_()

    def weights(self) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
        """``(H, G, W, lam)`` in the working dtype (``H`` is None for the identity skip): the block
        is ``y = H x + G phi(W x + b)`` and ``M(lam) <= 0`` (module doc) by construction."""
        dt = work_dtype(self.v)
        d, L = self.dim, self.L
        lam = torch.exp(self.theta.to(dt).clamp(-_LAMBDA_CLAMP, _LAMBDA_CLAMP))
        root = lam.sqrt()
        u, c, a, v_hat = contraction(self.v.to(dt), self.log_alpha)
        if self.skip == "learned":
            n = contraction(self.k.to(dt), self.log_beta)[0]
            n1, n2 = n[:, :d], n[:, d:]
            rhs = a.sqrt() * n2.T - v_hat @ n1.T
            H = L * n1
        else:
            rhs = -v_hat / L
            if self.k is not None:
                n2 = math.sqrt(1.0 - 1.0 / (L * L)) * contraction(self.k.to(dt), self.log_beta)[0]
                rhs = rhs + a.sqrt() * n2.T
            H = None
        gt = math.sqrt(2.0) * root[:, None] * torch.linalg.solve_triangular(c, rhs, upper=False)  # G^T
        W = (math.sqrt(2.0) * L) * u / root[:, None]
        return H, gt.T, W, lam

    def forward(self, x: Tensor) -> Tensor:
        H, G, W, _ = self.weights()
        H, G, W = (None if H is None else H.to(x.dtype)), G.to(x.dtype), W.to(x.dtype)
        s = ACTIVATIONS[self.activation](F.linear(x, W, self.bias.to(x.dtype)))
        skip = x if H is None else F.linear(x, H)
        return skip + F.linear(s, G)

    def lmi(self) -> Tensor:
        """The LMI matrix ``M(lam)`` at the constructed multiplier ((d + h) x (d + h)); it is
        negative semidefinite by construction (a diagnostic, up to rounding)."""
        H, G, W, lam = self.weights()
        if H is None:
            H = torch.eye(self.dim, dtype=G.dtype, device=G.device)
        top = torch.cat([H.T @ H - self.L ** 2 * torch.eye(self.dim, dtype=G.dtype, device=G.device),
                         H.T @ G + W.T * lam], dim=1)
        bottom = torch.cat([G.T @ H + lam[:, None] * W, G.T @ G - 2.0 * torch.diag(lam)], dim=1)
        m = torch.cat([top, bottom], dim=0)
        return 0.5 * (m + m.T)

    def lipschitz_bound(self) -> float:
        """The guaranteed l2 Lipschitz bound, ``L``."""
        return self.L

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden={self.hidden}, L={self.L}, activation={self.activation!r}, skip={self.skip!r}"


def _spectral_normalized(w: Tensor) -> Tensor:
    """``w / max(1, ||w||_2)`` (exact largest singular value): spectral norm at most 1."""
    w = w.to(work_dtype(w))
    return w / torch.linalg.matrix_norm(w, ord=2).clamp_min(1.0)


class LipschitzResidualNet(nn.Module):
    """Input projection (spectrally normalized) -> ``depth`` :class:`LipschitzResidual` blocks ->
    output layer (spectrally normalized). Lipschitz constant at most ``L^depth`` for every parameter
    value (:meth:`lipschitz_bound`: the product of the layers' bounds, the projections counting 1).

    Args:
        in_features, out_features: input and output sizes (e.g. pixels and classes).
        width: the blocks' ``dim``; hidden: the blocks' hidden units (default ``width``).
        depth: number of blocks (``>= 1``); L, activation, skip: passed to every block.
    """

    def __init__(self, in_features: int, out_features: int, width: int = 64, depth: int = 2,
                 hidden: int | None = None, L: float = 1.0, activation: str = "relu", skip: str = "identity"):
        super().__init__()
        positive_int("in_features", in_features)
        positive_int("out_features", out_features)
        positive_int("width", width)
        positive_int("depth", depth)
        hidden = width if hidden is None else positive_int("hidden", hidden)
        self.in_weight = nn.Parameter(torch.randn(width, in_features) / math.sqrt(in_features))
        self.in_bias = nn.Parameter(torch.zeros(width))
        self.blocks = nn.ModuleList(LipschitzResidual(width, hidden, L, activation, skip) for _ in range(depth))
        self.out_weight = nn.Parameter(torch.randn(out_features, width) / math.sqrt(width))
        self.out_bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: Tensor) -> Tensor:
        x = F.linear(x, _spectral_normalized(self.in_weight).to(x.dtype), self.in_bias.to(x.dtype))
        for block in self.blocks:
            x = block(x)
        return F.linear(x, _spectral_normalized(self.out_weight).to(x.dtype), self.out_bias.to(x.dtype))

    def lipschitz_bound(self) -> float:
        """Guaranteed l2 Lipschitz bound: the product of the blocks' bounds (projections: 1)."""
        return math.prod(block.lipschitz_bound() for block in self.blocks)
