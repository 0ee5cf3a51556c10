"""Spectral-norm balls: keep the largest singular value of every weight matrix below a bound.

Four ways to map a matrix ``W = U diag(s) V^T`` (the matrix view ``(fan_out, fan_in)`` of the
weight) back into the ball ``{W : sigma_1(W) <= beta}``, all from "Training Transformers with
Enforced Lipschitz Constants" (Newhouse, Hess, Cesista, Zahorodnii, Bernstein, Isola; arXiv
2507.13338):

=====================  ==========================================  ===================================
class                  map of the singular values                  cost
=====================  ==========================================  ===================================
``SpectralNormalize``  ``s <- s / max(1, sigma_1 / beta)``          Lanczos: 2 matvecs per iteration
``SpectralHammer``     ``sigma_1 <- beta`` (others unchanged)       Lanczos: 2 matvecs per iteration
``SpectralHardCap``    ``s <- min(s, beta)`` (nearest point)        two polar factors, or one SVD
``SpectralSoftCap``    ``s <- f(s)``, a degree-9 odd polynomial     4 matmuls per pass
=====================  ==========================================  ===================================

Units: every constraint takes ``bound`` and ``units``. With ``units="spectral"`` the bound is on the
plain spectral norm, ``beta = bound``; with ``units="rms"`` it is on the RMS->RMS operator norm
``sqrt(fan_in / fan_out) sigma_1(W)``, i.e. ``beta = bound * sqrt(fan_out / fan_in)`` for the matrix
view ``(fan_out, fan_in)``.

The top singular triple that the Lanczos-based balls use, and the exact ``sigma_1``, come from
:mod:`.spectral_norm`.

``check(w)`` of every ball returns the relative excess ``max(0, sigma_1(W) / beta - 1)`` with the
exact ``sigma_1`` (float64 ``torch.linalg.matrix_norm(ord=2)``). It is the raw value: after a
projection in float32 expect rounding of order 1e-6, in bfloat16 of order 1e-3.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..polar import SCHEDULE_NAMES, polar
from .base import Constraint, choice, positive, positive_int, step_size_value
from .spectral_norm import SPECTRAL_UNITS, effective_bound, exact_sigma_max, top_singular_triple

__all__ = [
    "SPECTRAL_UNITS",
    "HARDCAP_METHODS",
    "SpectralNormalize",
    "SpectralHammer",
    "SpectralHardCap",
    "SpectralSoftCap",
    "top_singular_triple",
    "softcap_alpha",
    "softcap_map",
    "SOFTCAP_MONOTONE_Y",
    "SOFTCAP_MIN_RATIO",
]

#: values of ``SpectralHardCap(method=...)``
HARDCAP_METHODS: tuple[str, ...] = ("exact", "svd")


# -- shared base of the four balls ---------------------------------------------------------------
class _SpectralBall(Constraint):
    """Common arguments (``bound``, ``units``) and ``check`` of the spectral balls."""

    def __init__(self, bound: float = 1.0, units: str = "spectral"):
        self.bound = positive("bound", bound)
        self.units = choice("units", units, SPECTRAL_UNITS)

    def beta(self, m: Tensor) -> float:
        """The plain spectral bound for the matrix ``m``."""
        return effective_bound(self.bound, self.units, tuple(m.shape))

    def check(self, w: Tensor) -> float:
        """Relative excess ``max(0, sigma_1 / beta - 1)`` (exact ``sigma_1``, float64)."""
        if w.ndim < self.min_ndim:
            raise ValueError(f"Constraint {self.name!r} needs a tensor with at least {self.min_ndim} dimensions, "
                             f"got shape {tuple(w.shape)}")
        beta = effective_bound(self.bound, self.units, tuple(w.shape))
        return max(0.0, exact_sigma_max(w) / beta - 1.0)

    def describe(self) -> str:
        units = "" if self.units == "spectral" else ", rms"
        return f"{self.name}({self.bound:g}{units})"


class _LanczosBall(_SpectralBall):
    """A spectral ball whose projection estimates ``sigma_1`` by ``iters`` Lanczos steps."""

    def __init__(self, bound: float = 1.0, units: str = "spectral", iters: int = 32):
        super().__init__(bound, units)
        self.iters = positive_int("iters", iters)


class SpectralNormalize(_LanczosBall):
    """Spectral normalization: ``W <- W / max(1, sigma_1(W) / beta)``.

    Source: arXiv 2507.13338 (spectral normalization as one of the weight constraints it compares).
    Every singular value is divided by the same factor, so the direction of ``W`` is kept and only
    matrices outside the ball change.

    ``sigma_1`` comes from :func:`top_singular_triple` (Lanczos, ``iters`` steps), which
    underestimates it. Safety: after the division ``sigma_1`` of the result is estimated again by a
    second Lanczos run started from the first Ritz vector (a new Krylov space, so a better
    estimate), and the result is divided once more if it is still above ``beta``. Measured
    (``sigma_1 / beta - 1`` by float64 SVD after a float32 projection, ``beta`` half of ``sigma_1``,
    default ``iters=16``, worst of 10 Gaussian matrices): below 1e-7 on 64x32, 32x64, 8x27 and
    128x128, 1e-6 on 256x1024, 6e-5 on 512x512; raise ``iters`` for large matrices with a crowded
    top spectrum.

    Cost: 2 matvecs per Lanczos step, ``2 * iters + 1`` per run, two runs.

    Args:
        bound: the bound (> 0).
        units: ``"spectral"`` (``sigma_1 <= bound``) or ``"rms"``
            (``sigma_1 <= bound * sqrt(fan_out / fan_in)``).
        iters: Lanczos steps per run (>= 1).
    """

    name = "spectral_normalize"
    cost = "Lanczos on the smaller Gram: 2 matvecs per step, 2 runs of iters steps; one rescale"

    def _project(self, m: Tensor, step_size: float | None) -> Tensor:
        step_size_value(step_size)
        beta = self.beta(m)
        sigma, u, v = top_singular_triple(m, self.iters)
        out = m * (beta / sigma) if sigma > beta else m.clone()
        start = v if m.shape[0] >= m.shape[1] else u
        sigma2, _, _ = top_singular_triple(out, self.iters, start=start)
        if sigma2 > beta:
            out = out * (beta / sigma2)
        return out


class SpectralHammer(_LanczosBall):
    """Spectral hammer: set the top singular value to ``beta``, ``W <- W + (beta - sigma_1) u v^T``.

    Source: arXiv 2507.13338. The paper's hammer sets ``sigma_1`` to ``beta`` whether it is above or
    below; here the update is applied only when ``sigma_1 > beta``, so a matrix inside the ball is
    left alone and the map is a constraint (idempotent, identity on the ball).

    Limitation: only ``sigma_1`` is changed, so the bound holds after one call only when at most one
    singular value exceeds ``beta``; with several violating singular values the second largest
    becomes the new ``sigma_1`` and ``check`` stays positive (the paper relies on small steps that
    push at most one singular value over the bound at a time).

    ``(u, sigma_1, v)`` come from :func:`top_singular_triple` (Lanczos, ``iters`` steps); when the
    top two singular values are close, ``u`` and ``v`` mix the two directions and the result can stay
    slightly above ``beta``.

    Cost: ``2 * iters + 1`` matvecs and one rank-one update.

    Args:
        bound: the bound (> 0).
        units: ``"spectral"`` or ``"rms"`` (see the module docstring).
        iters: Lanczos steps (>= 1).
    """

    name = "spectral_hammer"
    cost = "Lanczos on the smaller Gram: 2 matvecs per step (iters steps); one rank-one update"

    def _project(self, m: Tensor, step_size: float | None) -> Tensor:
        step_size_value(step_size)
        beta = self.beta(m)
        sigma, u, v = top_singular_triple(m, self.iters)
        if sigma <= beta:
            return m.clone()
        return m + (beta - sigma) * torch.outer(u, v)


class SpectralHardCap(_SpectralBall):
    """Spectral hard cap: the Frobenius-nearest point of the ball, ``U min(S, beta) V^T``.

    Source: arXiv 2507.13338 (the matmul-only form through polar factors).

    ``method="svd"``: clip the singular values of ``torch.linalg.svd`` directly.

    ``method="exact"``: only polar factors. For a wide ``X = U S V^T`` (a tall one is transposed, so
    the Gram below is the smaller one) let ``Q = polar(X) = U V^T`` and ``Y = beta Q - X =
    U (beta - S) V^T``; then ``polar(Y) = U sign(beta - S) V^T`` and ``Y polar(Y)^T Q =
    U |beta - S| V^T``, so::

        0.5 * (beta Q + X - Y polar(Y)^T Q) = U (beta + S - |beta - S|) / 2 V^T = U min(S, beta) V^T.

    With ``ns="svd"`` (the default) both polar factors are exact SVD factors computed in float64, and
    the result matches the SVD clip to about 1e-7 in float32 (1e-14 in float64). With a
    Newton-Schulz schedule (``ns="polar_express_8"`` etc., in the working dtype) the map is
    matmul-only but approximate: singular values ``s`` close to ``beta`` make ``Y`` ill-conditioned
    (its singular values ``|beta - s|`` fall below what Newton-Schulz resolves relative to
    ``||Y||_F``), and such an ``s`` comes out as ``beta + (s - beta)(1 - p)/2`` instead of ``beta``,
    where ``p < 1`` is the unconverged polar factor; the overshoot is at most ``(s - beta)/2``. Small
    singular values of ``X`` are unaffected by an unconverged first polar factor as long as the second
    one converges (they come out as ``s``). Measured in float32 (``sigma_1 / beta - 1`` after
    projection; max abs difference to the float64 SVD clip), Gaussian matrices with ``beta`` half of
    ``sigma_1``: ``ns="svd"``: 2e-8, 1.2e-7; ``polar_express_8`` with 8 steps: up to 2.7e-4 on
    512x512 but a difference of 3e-2 on 128x128 and 6e-2 on 512x512 (the tiny singular values of
    square matrices are not resolved); with 12 steps: 1e-6, 4e-6 up to 128x128 (5e-2 on 512x512); with
    20 steps: 1e-6, 2e-5 on all of 64x32, 128x128, 512x512, 256x1024. Half the singular values within
    1e-7..1e-1 above ``beta``: polar_express_8 gives 2e-4 (8 steps), 1.5e-5 (12), 2e-6 (20). So the
    Newton-Schulz form meets a 1e-3 bound with 8 steps and matches the clip with about 20.

    Cost: ``exact``: two polar factors (two SVDs for ``ns="svd"``, else ``ns_steps`` Newton-Schulz
    iterations each) and three matrix products; ``svd``: one SVD.

    Args:
        bound: the bound (> 0).
        units: ``"spectral"`` or ``"rms"``.
        method: ``"exact"`` (through polar factors) or ``"svd"``.
        ns: polar-factor kernel of ``method="exact"``: ``"svd"`` or a Newton-Schulz schedule name.
        ns_steps: Newton-Schulz iterations (``None``: the schedule's default).
    """

    name = "spectral_hardcap"
    cost = "exact: two polar factors and three matmuls; svd: one SVD"

    def __init__(self, bound: float = 1.0, units: str = "spectral", method: str = "exact", ns: str = "svd",
                 ns_steps: int | None = None):
        super().__init__(bound, units)
        self.method = choice("method", method, HARDCAP_METHODS)
        self.ns = choice("ns", ns, SCHEDULE_NAMES)
        self.ns_steps = None if ns_steps is None else positive_int("ns_steps", ns_steps)

    def _project(self, m: Tensor, step_size: float | None) -> Tensor:
        step_size_value(step_size)
        beta = self.beta(m)
        if self.method == "svd":
            U, S, Vh = torch.linalg.svd(m, full_matrices=False)
            return (U * S.clamp(max=beta).unsqueeze(-2)) @ Vh
        tall = m.shape[0] > m.shape[1]
        X = m.mT if tall else m
        work = torch.float64 if self.ns == "svd" else m.dtype
        Xw = X.to(work)
        Q = polar(Xw, ns=self.ns, steps=self.ns_steps, dtype=work).to(work)
        Y = beta * Q - Xw
        P = polar(Y, ns=self.ns, steps=self.ns_steps, dtype=work).to(work)
        out = 0.5 * (beta * Q + Xw - (Y @ P.mT) @ Q)
        out = out.to(m.dtype)
        return out.mT if tall else out


# -- the soft cap ------------------------------------------------------------------------------
def _h(y: float) -> float:
    """``f(s) / s`` of the soft cap as a function of ``y = alpha s^2``: ``1 - 3y^2 + 3y^3 - y^4``."""
    return 1.0 - 3.0 * y * y + 3.0 * y**3 - y**4


#: ``y* = alpha s^2`` past which the soft cap's map ``f`` stops increasing: ``f'(s) = 1 - 15y^2 +
#: 21y^3 - 9y^4 = (1 - 3y)(1 + 3y(1 - y)^2)`` and the second factor is positive for ``y >= 0``.
SOFTCAP_MONOTONE_Y: float = 1.0 / 3.0
#: ``f(s*)/s* = h(1/3) = 62/81`` (about 0.7654): the smallest ratio ``target / k`` one pass reaches
#: while keeping ``f`` increasing on ``[0, k]``.
SOFTCAP_MIN_RATIO: float = 62.0 / 81.0


def softcap_map(s: Tensor | float, alpha: float) -> Tensor | float:
    """The soft cap's action on a singular value: ``f(s) = s (1 - a s^2)(1 + a s^2 (1 - a s^2)^2)``."""
    g = s - alpha * s**3
    return g + alpha * g**3


def softcap_alpha(k: float, target: float) -> float:
    """The smallest ``alpha >= 0`` with ``f(k) = target`` (``0 < target <= k``).

    With ``y = alpha k^2``, ``f(k) = k (1 - 3y^2 + 3y^3 - y^4)``, so ``f(k) = target`` is the quartic
    ``-k^9 a^4 + 3k^7 a^3 - 3k^5 a^2 + (k - target) = 0`` in ``a``; divided by ``k`` it is
    ``-y^4 + 3y^3 - 3y^2 + (1 - c) = 0`` with ``c = target / k``, scale-free, which is what is
    solved: the eigenvalues of its companion matrix (float64), real ones (``|imag| < 1e-6``) that are
    >= 0, the smallest, polished by Newton steps; bisection on ``[0, 1]`` (where
    ``h(y) = 1 - 3y^2 + 3y^3 - y^4`` falls from 1 to 0, since ``h'(y) = -y (6 - 9y + 4y^2) < 0``) if
    no root qualifies. The positive root is unique because ``h`` is strictly decreasing for ``y > 0``.
    """
    k = positive("k", k)
    target = positive("target", target)
    c = target / k
    if c >= 1.0:
        return 0.0
    coeffs = torch.tensor([-3.0, 3.0, 0.0, -(1.0 - c)], dtype=torch.float64)  # monic: y^4 - 3y^3 + 3y^2 - (1-c)
    companion = torch.zeros(4, 4, dtype=torch.float64)
    companion[1:, :3] = torch.eye(3, dtype=torch.float64)
    companion[:, 3] = -coeffs.flip(0)
    roots = torch.linalg.eigvals(companion)
    real = [float(r.real) for r in roots if abs(float(r.imag)) < 1e-6 and float(r.real) >= -1e-12]
    y = min(real) if real else None
    if y is not None and 0.0 <= y <= 1.0:
        y = max(y, 0.0)
        for _ in range(3):  # Newton polish on h(y) - c
            dh = -6.0 * y + 9.0 * y * y - 4.0 * y**3
            if dh == 0.0:
                break
            y_new = y - (_h(y) - c) / dh
            if not 0.0 <= y_new <= 1.0:
                break
            y = y_new
    else:
        lo, hi = 0.0, 1.0
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if _h(mid) > c:
                lo = mid
            else:
                hi = mid
        y = 0.5 * (lo + hi)
    return y / (k * k)


def _odd_cubic(M: Tensor, a: float) -> Tensor:
    """``M + a M M^T M``, with the Gram on the smaller side."""
    if M.shape[0] <= M.shape[1]:
        return M + a * ((M @ M.mT) @ M)
    return M + a * (M @ (M.mT @ M))


class SpectralSoftCap(_LanczosBall):
    """Spectral soft cap: two odd cubic steps whose strength is tied to the step size.

    Source: arXiv 2507.13338. One pass is ``M <- M - alpha M M^T M`` then ``M <- M + alpha M M^T M``;
    on each singular value it acts as ``f(s) = s (1 - a s^2)(1 + a s^2 (1 - a s^2)^2)``, i.e.
    ``f(s) = s h(a s^2)`` with ``h(y) = 1 - 3y^2 + 3y^3 - y^4 = 1 - y^2 (3 - 3y + y^2)``.

    Coupling: if the weights were in the ball before an update of spectral norm at most
    ``step_size`` (the argument of ``project``, in plain spectral units), every singular value is at
    most ``k = beta + step_size``; ``alpha`` is the smallest non-negative root of
    ``-k^9 a^4 + 3k^7 a^3 - 3k^5 a^2 + (k - beta) = 0``, which is ``f(k) = beta``
    (:func:`softcap_alpha`). With ``step_size=None``, ``k`` is the measured ``sigma_1`` of ``w``
    (Lanczos, ``iters`` steps, a slight underestimate), so ``f(sigma_1) ~= beta``.

    Monotonicity and passes: ``f'(s) = 1 - 15y^2 + 21y^3 - 9y^4 = (1 - 3y)(1 + 3y(1 - y)^2)`` with
    ``y = a s^2``, so ``f`` increases on ``[0, k]`` exactly while ``a k^2 <= 1/3``, where
    ``h(1/3) = 62/81 ~ 0.7654``. One pass therefore maps every singular value in ``[0, k]`` into
    ``[0, beta]`` when ``beta / k >= 62/81``, i.e. ``step_size <= (81/62 - 1) beta ~ 0.3065 beta`` (the
    usual case: one pass, ``alpha`` the quartic's root, as in the paper). For a larger step a single
    pass with the quartic's root would overshoot: the singular values near ``s = sqrt(1/(3a)) < k``
    would land above ``f(k) = beta``. Instead the cap then runs
    ``p = ceil(log(beta/k) / log(62/81))`` passes with the equal ratio ``(beta/k)^(1/p)`` each (each
    pass's ``alpha`` solves the same quartic for its own ``k`` and target), so the guarantee holds for
    any step size. ``k`` is also never below the measured ``sigma_1`` (Lanczos, ``iters`` steps), so
    weights that start outside the ball (an initialization) or an update larger than ``step_size``
    (Newton-Schulz output singular values overshoot 1) still end at the bound, up to Lanczos's
    slight underestimate of ``sigma_1``.

    Small singular values change little: ``f(s) = s h(y (s/k)^2) = s (1 - 3 y^2 (s/k)^4 + O(y^3))``
    with ``y = a k^2``, a relative shrink of about ``3 y^2 (s/k)^4``. For ``step_size = 0.1 beta``
    (``y ~ 0.19``) singular values at half the bound shrink by 0.45 %, at a tenth of it by 1e-5; for
    ``step_size = 0.01 beta`` (``y ~ 0.057``) at half the bound by 0.06 %.

    Cost: 4 matmuls per pass (``M M^T M`` on the smaller side, twice); one pass when
    ``step_size <= 0.3065 beta``; plus ``2 * iters + 1`` matvecs to measure ``sigma_1``.

    Args:
        bound: the bound (> 0).
        units: ``"spectral"`` or ``"rms"``.
        iters: Lanczos steps to measure ``sigma_1``.
    """

    name = "spectral_softcap"
    cost = "4 matmuls per pass (two odd cubic steps); one pass when step_size <= 0.3065 beta"

    def passes(self, k: float, beta: float) -> list[float]:
        """The ``alpha`` of every pass that maps ``[0, k]`` into ``[0, beta]`` (empty if ``k <= beta``)."""
        if k <= beta:
            return []
        ratio = beta / k
        count = max(1, math.ceil(math.log(ratio) / math.log(SOFTCAP_MIN_RATIO) - 1e-12))
        step_ratio = ratio ** (1.0 / count)
        alphas = []
        level = k
        for _ in range(count):
            alphas.append(softcap_alpha(level, level * step_ratio))
            level *= step_ratio
        return alphas

    def _project(self, m: Tensor, step_size: float | None) -> Tensor:
        step = step_size_value(step_size)
        beta = self.beta(m)
        sigma = top_singular_triple(m, self.iters)[0]
        # k bounds every singular value: beta + step when the weights were in the ball before the
        # step, but a start outside the ball (an initialization) or an update whose spectral norm
        # exceeds step_size (Newton-Schulz overshoots 1) is caught by the measurement
        k = sigma if step is None else max(beta + step, sigma)
        out = m
        for a in self.passes(k, beta):
            out = _odd_cubic(out, -a)
            out = _odd_cubic(out, a)
        return out.clone() if out is m else out
