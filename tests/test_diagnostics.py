"""Diagnostics (steepest.diagnostics) against exact values.

Sharpness: a tiny float64 MLP (31 parameters) whose exact Hessian is formed with
``torch.autograd.functional.hessian`` on the flattened parameter vector; HVPs, power iteration,
per-layer diagonal blocks and Lanczos Ritz values are compared with ``H`` and its eigenvalues.
Neural collapse: features exactly at the vertices of a simplex ETF (all metrics 0) against random
Gaussian features (all clearly positive), and a hand-computed NC1. Updates: hand-computed norms.
"""
from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn
from torch.func import functional_call

from steepest.diagnostics import (gradient_noise, hvp, lanczos_spectrum, layer_sharpness, neural_collapse,
                                  orthogonality_error, top_eigenvalue, update_stats)
from steepest.geometry import Spectral

F64 = torch.float64


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


# -- sharpness ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).to(F64)
    x = torch.randn(16, 3, dtype=F64)
    y = torch.randint(0, 3, (16,))
    named = list(model.named_parameters())

    def loss_fn():
        return nn.functional.cross_entropy(model(x), y)

    def flat_loss(v):
        tensors, i = {}, 0
        for name, p in named:
            tensors[name] = v[i:i + p.numel()].view_as(p)
            i += p.numel()
        return nn.functional.cross_entropy(functional_call(model, tensors, (x,)), y)

    flat = torch.cat([p.detach().reshape(-1) for _, p in named])
    H = torch.autograd.functional.hessian(flat_loss, flat)
    offsets, i = {}, 0
    for name, p in named:
        offsets[name] = (i, i + p.numel())
        i += p.numel()
    return model, loss_fn, H, offsets


def test_hvp_matches_exact_hessian(problem):
    model, loss_fn, H, _ = problem
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(1)
    vec = [torch.randn(p.shape, generator=gen, dtype=F64) for p in params]
    out = hvp(loss_fn, params, vec)
    flat = torch.cat([h.reshape(-1) for h in out])
    expected = H @ torch.cat([v.reshape(-1) for v in vec])
    assert [h.shape for h in out] == [p.shape for p in params]
    assert torch.allclose(flat, expected, rtol=0, atol=1e-12)


def test_top_eigenvalue_matches_exact(problem):
    model, loss_fn, H, _ = problem
    params = list(model.parameters())
    ev, vecs = torch.linalg.eigh(H)
    top = int(ev.abs().argmax())
    lam, v = top_eigenvalue(loss_fn, params, iters=300, tol=1e-14)
    assert abs(lam - float(ev[top])) <= 1e-6 * abs(float(ev[top]))
    v = torch.cat([t.reshape(-1) for t in v])
    assert abs(abs(float(v @ vecs[:, top])) - 1) < 1e-6
    # Default iters/tol: coarse but close; the default generator makes it reproducible.
    lam20, _ = top_eigenvalue(loss_fn, params)
    assert abs(lam20 - float(ev[top])) <= 1e-3 * abs(float(ev[top]))
    assert top_eigenvalue(loss_fn, params)[0] == lam20


def test_top_eigenvalue_sign_is_that_of_largest_magnitude():
    a = torch.tensor([1.0, -3.0, 0.5], dtype=F64)
    x = torch.tensor([0.3, -0.2, 1.0], dtype=F64, requires_grad=True)
    lam, v = top_eigenvalue(lambda: 0.5 * (a * x * x).sum(), [x], iters=200, tol=0)
    assert abs(lam + 3.0) < 1e-12
    assert abs(abs(float(v[0][1])) - 1) < 1e-12
    # A loss linear in the parameters has a zero Hessian.
    lam0, _ = top_eigenvalue(lambda: (a * x).sum(), [x])
    assert lam0 == 0.0


def test_layer_sharpness_matches_diagonal_blocks(problem):
    model, loss_fn, H, offsets = problem
    full_top = float(torch.linalg.eigvalsh(H)[-1])
    out = layer_sharpness(model, loss_fn, iters=400, tol=1e-14)
    assert list(out) == ["0.weight", "2.weight"]
    out_all = layer_sharpness(model, loss_fn, iters=400, tol=1e-14, min_ndim=0)
    assert list(out_all) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    for name, value in out_all.items():
        i, j = offsets[name]
        block = torch.linalg.eigvalsh(H[i:j, i:j])
        expected = float(block[block.abs().argmax()])
        assert abs(value - expected) <= 1e-6 * abs(expected), name
        assert value <= full_top + 1e-12  # Cauchy interlacing
        if name in out:
            assert out[name] == pytest.approx(value, rel=1e-9)


def test_lanczos_full_and_partial_spectrum(problem):
    model, loss_fn, H, _ = problem
    params = list(model.parameters())
    ev = torch.linalg.eigvalsh(H).flip(0)
    n = ev.numel()
    ritz = lanczos_spectrum(loss_fn, params, k=n)
    assert ritz.dtype == F64 and ritz.shape == (n,)
    assert bool((ritz[:-1] >= ritz[1:]).all())
    assert float((ritz - ev).abs().max()) < 1e-10
    # 20 of 31 steps already resolve the outliers at the top.
    ritz20 = lanczos_spectrum(loss_fn, params, k=20, generator=torch.Generator().manual_seed(3))
    assert float((ritz20[:2] - ev[:2]).abs().max()) < 1e-6 * float(ev[0])
    assert float(ritz20[-1]) >= float(ev[-1]) - 1e-12  # Ritz values lie inside the spectrum


def test_lanczos_restarts_on_invariant_subspace():
    # Two distinct eigenvalues: the Krylov space has dimension 2, so Lanczos must restart.
    a = torch.tensor([1.0, 2.0, 1.0, 2.0, 1.0], dtype=F64)
    x = torch.zeros(5, dtype=F64, requires_grad=True)
    ritz = lanczos_spectrum(lambda: 0.5 * (a * x * x).sum(), [x], k=5)
    assert torch.allclose(ritz, torch.tensor([2.0, 2.0, 1.0, 1.0, 1.0], dtype=F64), rtol=0, atol=1e-12)


def test_sharpness_errors(problem):
    model, loss_fn, _, _ = problem
    params = list(model.parameters())
    for k in (0, 32):
        message = f"k must be an integer between 1 and the number of parameters (31), got {k}"
        with pytest.raises(ValueError, match=exact(message)):
            lanczos_spectrum(loss_fn, params, k=k)
    with pytest.raises(ValueError, match=exact("every parameter must require grad")):
        hvp(loss_fn, [torch.zeros(2)], [torch.zeros(2)])
    with pytest.raises(ValueError, match=exact("vec[0] has shape (3,), expected (4, 3)")):
        hvp(loss_fn, params, [torch.zeros(3)] + [torch.zeros_like(p) for p in params[1:]])
    with pytest.raises(ValueError, match=exact("iters must be a positive integer, got 0")):
        top_eigenvalue(loss_fn, params, iters=0)
    with pytest.raises(TypeError, match=exact("loss_fn must be a callable with no arguments, got float")):
        top_eigenvalue(1.0, params)
    with pytest.raises(ValueError, match=exact("model has no trainable parameter with at least 3 dimensions")):
        layer_sharpness(model, loss_fn, min_ndim=3)


# -- neural collapse ---------------------------------------------------------------------------------
def simplex_etf(C: int, d: int, seed: int) -> torch.Tensor:
    """C unit vectors in R^d with pairwise cosines -1/(C-1), in a random orientation."""
    gen = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(d, C, generator=gen, dtype=F64))
    centered = torch.eye(C, dtype=F64) - 1.0 / C
    return math.sqrt(C / (C - 1)) * centered @ basis.T


def test_collapsed_features_give_zero():
    C, d = 4, 6
    M = 3.0 * simplex_etf(C, d, seed=0)
    y = torch.arange(C).repeat(5)
    out = neural_collapse(M[y], y, weight=M)
    assert set(out) == {"nc1", "nc2", "nc2_equinorm", "nc2_equiangle", "nc3", "nc4"}
    assert out["nc1"] < 1e-8
    for key in ("nc2", "nc2_equinorm", "nc2_equiangle", "nc3"):
        assert out[key] < 1e-8, key
    assert out["nc4"] == 0.0
    # Shifting every feature leaves every metric unchanged (the metrics use centered means),
    # but the classifier then needs the matching bias for NC4.
    shift = torch.full((d,), 0.7, dtype=F64)
    shifted = neural_collapse(M[y] + shift, y, weight=M, bias=-(M @ shift))
    assert shifted["nc1"] < 1e-8 and shifted["nc3"] < 1e-8 and shifted["nc4"] == 0.0
    # A classifier that maps class c to c+1 disagrees with the class means everywhere.
    assert neural_collapse(M[y], y, weight=M.roll(1, dims=0))["nc4"] == 1.0


def test_random_features_are_not_collapsed():
    gen = torch.Generator().manual_seed(0)
    C, d, N = 4, 5, 200
    H = torch.randn(N, d, generator=gen, dtype=F64)
    y = torch.arange(C).repeat(N // C)
    W = torch.randn(C, d, generator=gen, dtype=F64)
    out = neural_collapse(H, y, weight=W)
    assert out["nc1"] > 0.1
    assert out["nc2"] > 0.1 and out["nc2_equinorm"] > 0.1 and out["nc2_equiangle"] > 0.1
    assert out["nc3"] > 0.5
    assert out["nc4"] > 0.1
    assert "nc3" not in neural_collapse(H, y)


def test_nc1_hand_computed():
    # C = 2, d = 1: means -1 and +1 (global mean 0), within-class spread s: NC1 = s^2 / 2.
    s = 0.3
    H = torch.tensor([[-1 - s], [-1 + s], [1 - s], [1 + s]], dtype=F64)
    y = torch.tensor([0, 0, 1, 1])
    out = neural_collapse(H, y)
    assert out["nc1"] == pytest.approx(s * s / 2, rel=1e-12)
    assert out["nc2"] < 1e-12  # two opposite means are a simplex ETF for C = 2


def test_collapse_errors():
    H = torch.zeros(4, 3)
    with pytest.raises(TypeError, match=exact("labels must have an integer dtype, got torch.float32")):
        neural_collapse(H, torch.zeros(4))
    with pytest.raises(ValueError, match=exact("every class needs at least one sample; missing classes [1]")):
        neural_collapse(H, torch.tensor([0, 0, 2, 2]))
    with pytest.raises(ValueError, match=exact("weight must have shape (C, 3), got (2, 4)")):
        neural_collapse(H, torch.tensor([0, 0, 1, 1]), weight=torch.zeros(2, 4))
    with pytest.raises(ValueError, match=exact("the class means are all equal: the between-class covariance is zero")):
        neural_collapse(H, torch.tensor([0, 0, 1, 1]))


# -- updates -----------------------------------------------------------------------------------------
def test_update_stats_hand_computed():
    before = {"w": torch.ones(2, 2), "b": torch.zeros(2), "conv": torch.zeros(2, 1, 1, 2)}
    after = {"w": torch.tensor([[4.0, 1.0], [1.0, 5.0]]), "b": torch.tensor([3.0, -4.0]),
             "conv": torch.tensor([[[[0.0, 2.0]]], [[[1.0, 0.0]]]])}
    out = update_stats(before, after)
    assert out["w"] == pytest.approx({"rms": 2.5, "frobenius": 5.0, "spectral": 4.0}, rel=1e-12)
    assert out["b"] == pytest.approx({"rms": 5 / math.sqrt(2), "frobenius": 5.0, "spectral": 5.0}, rel=1e-12)
    assert out["conv"] == pytest.approx({"rms": math.sqrt(5) / 2, "frobenius": math.sqrt(5), "spectral": 2.0},
                                        rel=1e-12)
    with pytest.raises(ValueError, match=exact("before and after must have the same names; only in before: ['b'], "
                                               "only in after: []")):
        update_stats({"w": torch.zeros(1), "b": torch.zeros(1)}, {"w": torch.zeros(1)})
    with pytest.raises(ValueError, match=exact("shape mismatch for 'w': (2,) in before, (3,) in after")):
        update_stats({"w": torch.zeros(2)}, {"w": torch.zeros(3)})


def test_orthogonality_error():
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=F64))
    assert orthogonality_error(q) < 1e-6
    semi, _ = torch.linalg.qr(torch.randn(5, 3, generator=gen))
    assert orthogonality_error(semi.T) < 1e-6  # 3 x 5, float32
    assert orthogonality_error(q @ torch.diag(torch.tensor([1.2, 0.9, 1, 1, 1, 1], dtype=F64)) @ q.T) \
        == pytest.approx(0.2, abs=1e-12)
    assert orthogonality_error(torch.diag(torch.tensor([1.2, 0.9]))) == pytest.approx(0.2, abs=1e-6)
    partial = torch.diag(torch.tensor([1.0, 1.0, 0.0]))
    assert orthogonality_error(partial) == pytest.approx(1.0)
    assert orthogonality_error(partial, rank=2) < 1e-12
    with pytest.raises(ValueError, match=exact("rank must be an integer between 1 and 3, got 4")):
        orthogonality_error(partial, rank=4)


def test_gradient_noise():
    a = {"w": torch.tensor([[4.0, 0.0], [0.0, -1.0]]), "v": torch.tensor([1.0, 2.0])}
    b = {"w": torch.tensor([[1.0, 0.0], [0.0, 3.0]]), "v": torch.tensor([0.0, 0.0])}
    nuclear = gradient_noise(a, b, Spectral().dual_norm)
    assert nuclear["w"] == pytest.approx(7.0) and nuclear["v"] == pytest.approx(math.sqrt(5))
    l1 = gradient_noise(a, b, lambda g: g.abs().sum())
    assert l1 == pytest.approx({"w": 7.0, "v": 3.0})
    with pytest.raises(TypeError, match=exact("dual_norm must be callable, got str")):
        gradient_noise(a, b, "nuclear")
