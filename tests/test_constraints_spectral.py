"""Spectral-norm balls (steepest.constraints.spectral) against exact SVD.

Every invariant is measured with float64 ``torch.linalg.svdvals`` of the projected matrix: the top
singular value against the bound, the other singular values against the input's, the result
against the SVD clip ``U min(S, beta) V^T``, and the soft cap's polynomial against its quartic.
"""
from __future__ import annotations

import math
import re

import pytest
import torch

from steepest.constraints.spectral import (SOFTCAP_MIN_RATIO, SOFTCAP_MONOTONE_Y, SpectralHammer, SpectralHardCap,
                                           SpectralNormalize, SpectralSoftCap, softcap_alpha, softcap_map,
                                           top_singular_triple)

F64 = torch.float64
BALLS = [SpectralNormalize, SpectralHammer, SpectralHardCap, SpectralSoftCap]
GAUSSIAN_SHAPES = [(64, 32), (32, 64), (128, 128), (8, 3, 3, 3)]


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


def svals(w: torch.Tensor) -> torch.Tensor:
    m = w.detach().to(F64)
    return torch.linalg.svdvals(m.reshape(m.shape[0], -1))


def sigma1(w: torch.Tensor) -> float:
    return float(svals(w)[0])


def gaussian(shape, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64).to(dtype)


def with_singular_values(m: int, n: int, s, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """U diag(s) V^T with random orthonormal U (m x k), V (n x k), k = len(s)."""
    s = torch.as_tensor(s, dtype=F64)
    gen = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(m, len(s), generator=gen, dtype=F64))
    V, _ = torch.linalg.qr(torch.randn(n, len(s), generator=gen, dtype=F64))
    return ((U * s) @ V.T).to(dtype)


def one_large(m: int = 48, n: int = 24, top: float = 5.0, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Singular values [top, 0.9, 0.5, ... decreasing]: only the top one exceeds a bound of 1."""
    rest = torch.linspace(0.5, 0.05, min(m, n) - 2, dtype=F64)
    return with_singular_values(m, n, torch.cat([torch.tensor([top, 0.9], dtype=F64), rest]), seed, dtype)


# -- the top singular triple -----------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (8, 27)])
def test_top_singular_triple_is_a_singular_triple(shape):
    W = gaussian(shape, 3, F64)
    sigma, u, v = top_singular_triple(W, 32)
    assert sigma == pytest.approx(sigma1(W), rel=1e-10)
    assert torch.allclose(W @ v, sigma * u, atol=1e-8) and torch.allclose(W.T @ u, sigma * v, atol=1e-8)


def test_top_singular_triple_is_a_lower_bound_and_deterministic():
    state = torch.get_rng_state()
    for seed in range(5):
        W = gaussian((128, 128), seed, F64)
        a = top_singular_triple(W, 4)[0]
        assert a <= sigma1(W) * (1 + 1e-12)
        assert top_singular_triple(W, 4)[0] == a
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched


def test_top_singular_triple_of_zero_and_rank_one():
    torch.manual_seed(10)
    sigma, u, v = top_singular_triple(torch.zeros(5, 3), 8)
    assert sigma == 0.0 and not torch.isnan(u).any() and not torch.isnan(v).any()
    x, y = torch.randn(7, dtype=F64), torch.randn(4, dtype=F64)
    assert top_singular_triple(torch.outer(x, y), 16)[0] == pytest.approx(float(x.norm() * y.norm()), rel=1e-12)


# -- spectral normalization ------------------------------------------------------------------------
@pytest.mark.parametrize("shape", GAUSSIAN_SHAPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_normalize_reaches_the_bound_on_gaussian_matrices(shape, seed):
    W = gaussian(shape, seed)
    bound = 0.5 * sigma1(W)
    out = SpectralNormalize(bound).project(W)
    s = sigma1(out)
    assert s <= bound * (1 + 1e-3)
    assert s >= bound * (1 - 1e-5)  # the estimate is a lower bound, so the division never over-shrinks
    ratio = (out.double() / W.double()).flatten()
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-5)  # one common factor: direction kept


def test_normalize_with_close_top_singular_values():
    s = torch.cat([torch.tensor([3.0, 3.0 * (1 - 1e-4), 3.0 * (1 - 3e-4)], dtype=F64), torch.linspace(2.9, 0.1, 29)])
    for seed in range(3):
        W = with_singular_values(64, 32, s, seed)
        out = SpectralNormalize(1.0).project(W)
        assert 1.0 - 1e-3 <= sigma1(out) <= 1.0 + 1e-3


def test_normalize_leaves_the_inside_of_the_ball_alone():
    W = one_large(top=0.95)
    assert torch.equal(SpectralNormalize(1.0).project(W), W)


# -- spectral hammer -------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(48, 24), (24, 48)])
def test_hammer_caps_one_large_singular_value_and_keeps_the_rest(shape):
    W = one_large(*shape)
    before = svals(W)
    out = SpectralHammer(1.0).project(W)
    after = svals(out)
    assert after[0] <= 1.0 + 1e-3 and after[0] >= 1.0 - 1e-3
    assert torch.allclose(after[1:], before[1:], atol=1e-5)
    # ... and the singular vectors too: the change is rank one along the top pair
    assert int(torch.linalg.matrix_rank(out.double() - W.double(), atol=1e-4)) == 1


def test_hammer_with_several_violating_singular_values_stays_outside():
    """Documented limitation: only sigma_1 moves, so a second violating singular value remains."""
    W = with_singular_values(32, 16, [5.0, 4.0, 3.0] + [0.5] * 13)
    c = SpectralHammer(1.0)
    out = c.project(W)
    assert c.check(out) > 0.0
    assert sigma1(out) == pytest.approx(4.0, rel=1e-4)


def test_hammer_does_not_raise_small_singular_values():
    W = one_large(top=0.8)
    assert torch.equal(SpectralHammer(1.0).project(W), W)


# -- spectral hard cap -----------------------------------------------------------------------------
def svd_clip(W: torch.Tensor, beta: float) -> torch.Tensor:
    m = W.to(F64).reshape(W.shape[0], -1)
    U, S, Vh = torch.linalg.svd(m, full_matrices=False)
    return ((U * S.clamp(max=beta)) @ Vh).reshape(W.shape)


@pytest.mark.parametrize("method", ["exact", "svd"])
@pytest.mark.parametrize("shape", GAUSSIAN_SHAPES)
def test_hardcap_is_the_svd_clip(method, shape):
    W = gaussian(shape, 5)
    beta = 0.5 * sigma1(W)
    out = SpectralHardCap(beta, method=method).project(W)
    assert sigma1(out) <= beta * (1 + 1e-3)
    assert (out.double() - svd_clip(W, beta)).abs().max() < 1e-5
    again = SpectralHardCap(beta, method=method).project(out)
    assert (again - out).abs().max() < 1e-5  # idempotent


def test_hardcap_exact_in_float64_matches_to_rounding():
    W = gaussian((40, 25), 1, F64)
    out = SpectralHardCap(2.0).project(W)
    assert (out - svd_clip(W, 2.0)).abs().max() < 1e-12


def test_hardcap_with_singular_values_at_and_near_the_bound():
    """Y = beta Q - X is ill-conditioned here; the exact (SVD) polar factors still give the clip."""
    s = torch.cat([1 + torch.logspace(-7, -1, 16, dtype=F64), torch.tensor([1.0, 1.0], dtype=F64),
                   torch.linspace(0.1, 0.99, 14, dtype=F64)])
    W = with_singular_values(64, 32, s, 2)
    out = SpectralHardCap(1.0).project(W)
    assert sigma1(out) <= 1 + 1e-6
    assert (out.double() - svd_clip(W, 1.0)).abs().max() < 1e-5


def test_hardcap_newton_schulz_polar_factors():
    """The matmul-only form with polar_express_8 (20 steps) meets the bound and matches the clip."""
    W = gaussian((64, 32), 4)
    beta = 0.5 * sigma1(W)
    out = SpectralHardCap(beta, ns="polar_express_8", ns_steps=20).project(W)
    assert sigma1(out) <= beta * (1 + 1e-3)
    assert (out.double() - svd_clip(W, beta)).abs().max() < 1e-4


# -- spectral soft cap -----------------------------------------------------------------------------
def test_softcap_constants():
    y = SOFTCAP_MONOTONE_Y
    assert 1 - 15 * y**2 + 21 * y**3 - 9 * y**4 == pytest.approx(0.0, abs=1e-15)
    assert SOFTCAP_MIN_RATIO == pytest.approx(1 - 3 * y**2 + 3 * y**3 - y**4, abs=1e-15)


@pytest.mark.parametrize("k", [1e-3, 0.5, 1.0, 3.0, 100.0])
@pytest.mark.parametrize("ratio", [0.999999, 0.99, 0.9, 0.8, SOFTCAP_MIN_RATIO, 0.6, 0.3])
def test_softcap_alpha_solves_the_quartic(k, ratio):
    target = ratio * k
    a = softcap_alpha(k, target)
    assert a >= 0.0
    k64 = torch.tensor(k, dtype=F64)
    assert float(softcap_map(k64, a)) == pytest.approx(target, abs=1e-9 * k)
    quartic = -k**9 * a**4 + 3 * k**7 * a**3 - 3 * k**5 * a**2 + (k - target)
    assert quartic == pytest.approx(0.0, abs=1e-9 * k)
    # the smallest non-negative root: no root of f(k) = target for a smaller alpha
    grid = torch.linspace(0.0, a, 1001, dtype=F64)[:-1]
    assert bool((softcap_map(k64, grid) > target).all())


def test_softcap_alpha_is_zero_inside():
    assert softcap_alpha(1.0, 1.0) == 0.0 and softcap_alpha(1.0, 2.0) == 0.0


@pytest.mark.parametrize("step", [0.0, 0.01, 0.1, 0.3, 0.5, 1.0, 4.0])
def test_softcap_passes_map_the_whole_interval_into_the_ball(step):
    """Scalar check of the guarantee: every s in [0, bound + step] ends in [0, bound], order kept."""
    cap = SpectralSoftCap(1.0)
    k = 1.0 + step
    alphas = cap.passes(k, 1.0)
    assert len(alphas) == (0 if step == 0 else max(1, math.ceil(math.log(1 / k) / math.log(SOFTCAP_MIN_RATIO))))
    s = torch.linspace(0.0, k, 20001, dtype=F64)
    out = s
    for a in alphas:
        out = softcap_map(out, a)
    assert float(out.max()) <= 1.0 + 1e-12
    assert bool((out[1:] >= out[:-1]).all())
    if step <= 0.3:
        assert len(alphas) <= 1


def test_one_pass_with_a_large_step_would_overshoot():
    """Why large steps use several passes: the quartic's single alpha breaks monotonicity."""
    a = softcap_alpha(2.0, 1.0)
    s = torch.linspace(0.0, 2.0, 20001, dtype=F64)
    assert float(softcap_map(s, a).max()) > 1.05


@pytest.mark.parametrize("step", [0.01, 0.1, 0.5])
@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (8, 3, 3, 3)])
def test_softcap_caps_after_a_step(step, shape):
    bound = 1.0
    top = bound + step
    n = min(shape[0], math.prod(shape[1:]))
    s = torch.cat([torch.tensor([top, top * 0.999], dtype=F64), torch.linspace(top * 0.95, 0.01, n - 2, dtype=F64)])
    W = with_singular_values(shape[0], math.prod(shape[1:]), s, 1).reshape(shape)
    out = SpectralSoftCap(bound).project(W, step_size=step)
    assert sigma1(out) <= bound * (1 + 1e-3)
    assert sigma1(out) >= bound * (1 - 1e-3)  # f(k) = bound: the top one lands on the bound


def test_softcap_barely_moves_small_singular_values():
    """f(s) = s (1 - 3 y^2 (s/k)^4 + ...), y = alpha k^2: measured against the formula."""
    step = 0.1
    s = torch.tensor([1.1, 0.5, 0.3, 0.1, 0.01], dtype=F64)
    W = with_singular_values(32, 16, s, 0, F64)
    out = svals(SpectralSoftCap(1.0).project(W, step_size=step))[: len(s)]
    y = softcap_alpha(1.1, 1.0) * 1.1**2
    shrink = 1 - out[1:] / s[1:]
    predicted = 3 * y**2 * (s[1:] / 1.1) ** 4
    assert torch.allclose(shrink, predicted, rtol=0.1)  # measured: within 4 % (the O(y^3) term)
    assert float(shrink[0]) < 5e-3 and float(shrink[2]) < 1e-4


def test_softcap_without_step_size_measures_sigma():
    for seed in range(3):
        W = gaussian((48, 24), seed)
        out = SpectralSoftCap(1.0).project(W)
        assert 1.0 - 1e-3 <= sigma1(out) <= 1.0 + 1e-3


# -- shared behaviour ------------------------------------------------------------------------------
def cap_input(cls, dtype=torch.float32, shape=(48, 24)):
    """A matrix every ball maps into the ball: one large singular value (the hammer's case) within
    the soft cap's step of 0.5."""
    return one_large(*shape, top=1.5, dtype=dtype)


@pytest.mark.parametrize("cls", BALLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtypes(cls, dtype):
    W = cap_input(cls, dtype)
    out = cls(1.0).project(W, step_size=0.5)
    assert out.dtype == dtype and out.shape == W.shape
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-3
    assert sigma1(out) <= 1.0 + tol


@pytest.mark.parametrize("cls", BALLS)
@pytest.mark.parametrize("shape", [(48, 12), (12, 48)])
def test_rms_units(cls, shape):
    W = cap_input(cls, shape=shape)
    beta = 0.5 * math.sqrt(shape[0] / shape[1])
    W = W * (1.5 * beta / sigma1(W))  # top singular value at 1.5 beta, within the soft cap's step
    c = cls(0.5, units="rms")
    out = c.project(W, step_size=0.5 * beta)
    assert sigma1(out) <= beta * (1 + 1e-3)
    assert c.check(out) < 1e-3 and c.check(W) == pytest.approx(0.5, rel=1e-4)


@pytest.mark.parametrize("cls", BALLS)
def test_project_in_place_check_and_zero(cls):
    c = cls(1.0)
    W = cap_input(cls)
    assert c.check(W) == pytest.approx(0.5, rel=1e-4)
    expected = c.project(W, step_size=0.5)
    c.project_(W, step_size=0.5)
    assert torch.equal(W, expected) and c.check(W) < 1e-3
    inside = one_large(top=0.7)
    assert c.check(inside) == 0.0
    zero = c.project(torch.zeros(6, 4))
    assert torch.equal(zero, torch.zeros(6, 4))
    assert torch.equal(c.project(W, step_size=0.5), c.project(W, step_size=0.5))  # deterministic


@pytest.mark.parametrize("cls", BALLS)
def test_invalid_arguments(cls):
    with pytest.raises(ValueError, match=exact("Invalid bound value: 0; expected a positive number")):
        cls(0)
    with pytest.raises(ValueError, match=exact("Invalid bound value: -1.0; expected a positive number")):
        cls(-1.0)
    with pytest.raises(TypeError, match=exact("Invalid type for bound: expected a real number, got str")):
        cls("1")
    with pytest.raises(ValueError, match=exact("Unknown units 'l2'; expected one of: spectral, rms")):
        cls(1.0, units="l2")
    with pytest.raises(ValueError, match=exact("Invalid step_size value: -0.1; expected a non-negative number "
                                               "or None")):
        cls(1.0).project(torch.ones(3, 2), step_size=-0.1)
    with pytest.raises(ValueError, match=exact(f"Constraint {cls.name!r} needs a tensor with at least 2 "
                                               "dimensions, got shape (3,)")):
        cls(1.0).project(torch.ones(3))


def test_invalid_method_and_iters():
    with pytest.raises(ValueError, match=exact("Unknown method 'qr'; expected one of: exact, svd")):
        SpectralHardCap(1.0, method="qr")
    with pytest.raises(ValueError, match=exact("Unknown ns 'newton'; expected one of: keller, you, quintic, "
                                               "polar_express, polar_express_8, svd")):
        SpectralHardCap(1.0, ns="newton")
    with pytest.raises(ValueError, match=exact("Invalid iters: 0; expected an integer >= 1")):
        SpectralNormalize(1.0, iters=0)
    with pytest.raises(TypeError, match=exact("Invalid type for iters: expected an int, got float")):
        SpectralHammer(1.0, iters=2.0)


def test_names_costs_and_repr():
    assert [c.name for c in BALLS] == ["spectral_normalize", "spectral_hammer", "spectral_hardcap",
                                       "spectral_softcap"]
    assert all(c.cost for c in BALLS)
    assert repr(SpectralHardCap(2.0, units="rms")) == "SpectralHardCap(spectral_hardcap(2, rms))"
