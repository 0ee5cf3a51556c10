"""Lipschitz upper bounds (steepest.lipschitz) against measured slopes.

A bound is checked from below by what the network actually does: the largest ratio
||f(x) - f(y)|| / ||x - y|| over many random pairs (near and far) and the spectral norm of the
Jacobian at random points (``torch.autograd.functional.jacobian``); and against the exact value
where it is exact (a chain of linear maps, GELU's slope).
"""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from steepest.lipschitz import GELU_MAX_SLOPE, Residual, gelu_max_slope, lipschitz_bound

F64 = torch.float64


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


def mlp(seed: int, act: type[nn.Module], residual: str | None = None, width: int = 12) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(6, width)]
    for _ in range(2):
        block = nn.Sequential(nn.Linear(width, width), act(), nn.Linear(width, width))
        if residual == "plain":
            block = Residual(block)
        elif residual == "convex":
            block = Residual(block, alpha=0.3)
        layers += [act(), block]
    layers += [act(), nn.Dropout(0.1), nn.Identity(), nn.Linear(width, 4)]
    return nn.Sequential(*layers).to(F64).eval()


def largest_pair_ratio(f: nn.Module, dim: int, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(2000, dim, generator=gen, dtype=F64)
    scales = torch.logspace(-4, 1, 2000, dtype=F64).unsqueeze(1)  # near pairs probe the local slope
    y = x + scales * torch.randn(2000, dim, generator=gen, dtype=F64)
    with torch.no_grad():
        return float(((f(x) - f(y)).norm(dim=1) / (x - y).norm(dim=1)).max())


def largest_jacobian_norm(f: nn.Module, dim: int, seed: int, points: int = 30) -> float:
    gen = torch.Generator().manual_seed(seed)
    best = 0.0
    for _ in range(points):
        x = 2 * torch.randn(dim, generator=gen, dtype=F64)
        J = torch.autograd.functional.jacobian(f, x)
        best = max(best, float(torch.linalg.matrix_norm(J, ord=2)))
    return best


@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh, nn.GELU])
@pytest.mark.parametrize("residual", [None, "plain", "convex"])
@pytest.mark.parametrize("seed", [0, 1])
def test_bound_dominates_measured_slopes(act, residual, seed):
    f = mlp(seed, act, residual)
    bound = lipschitz_bound(f)
    assert bound >= largest_pair_ratio(f, 6, seed)
    assert bound >= largest_jacobian_norm(f, 6, seed)


def sigma1(w: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(w.detach().to(F64), ord=2))


def test_linear_chain_is_the_product():
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(7, 5), nn.Linear(5, 3)).to(F64)
    W1, W2 = f[0].weight, f[1].weight
    bound = lipschitz_bound(f)
    assert bound == pytest.approx(sigma1(W2) * sigma1(W1), rel=1e-12)
    assert bound >= sigma1(W2 @ W1)  # the true constant of the chain
    assert lipschitz_bound(f[0]) == pytest.approx(sigma1(W1), rel=1e-12)
    # a single linear layer's bound is attained: the Jacobian is the weight
    J = torch.autograd.functional.jacobian(f[0], torch.zeros(7, dtype=F64))
    assert sigma1(J) == pytest.approx(lipschitz_bound(f[0]), rel=1e-12)


def test_residual_rules():
    torch.manual_seed(1)
    lin = nn.Linear(4, 4).to(F64)
    L = sigma1(lin.weight)
    assert lipschitz_bound(Residual(lin)) == pytest.approx(1 + L)
    assert lipschitz_bound(Residual(lin, alpha=0.25)) == pytest.approx(0.75 + 0.25 * L)
    assert lipschitz_bound(Residual(lin, alpha=1 / (2 * L))) == pytest.approx(1.5 - 1 / (2 * L))
    x = torch.randn(3, 4, dtype=F64)
    assert torch.allclose(Residual(lin)(x), x + lin(x))
    assert torch.allclose(Residual(lin, alpha=0.25)(x), 0.75 * x + 0.25 * lin(x))
    # residual of the identity: x + x is exactly 2-Lipschitz
    assert lipschitz_bound(Residual(nn.Identity())) == 2.0


def test_gelu_slope():
    """Closed form (1 + erf 1)/2 + 1/(e sqrt pi) = 1.12890..., checked against autograd on a grid."""
    assert GELU_MAX_SLOPE == pytest.approx(1.1289, abs=1e-4)
    for approximate in ("none", "tanh"):
        x = torch.linspace(-8, 8, 40001, dtype=F64, requires_grad=True)
        (g,) = torch.autograd.grad(nn.functional.gelu(x, approximate=approximate).sum(), x)
        measured = float(g.abs().max())
        assert measured <= gelu_max_slope(approximate) <= measured + 2e-6
        assert lipschitz_bound(nn.GELU(approximate=approximate)) == gelu_max_slope(approximate)
    assert float(g.min()) == pytest.approx(1 - gelu_max_slope("tanh"), abs=1e-5)  # slope in [-0.129, 1.129]


def test_activation_and_dropout_rules():
    assert lipschitz_bound(nn.ReLU()) == 1.0 and lipschitz_bound(nn.Tanh()) == 1.0
    assert lipschitz_bound(nn.Identity()) == 1.0 and lipschitz_bound(nn.Sequential()) == 1.0
    drop = nn.Dropout(0.2)
    assert lipschitz_bound(drop.eval()) == 1.0
    assert lipschitz_bound(drop.train()) == pytest.approx(1.25)  # a draw scales kept entries by 1/(1-p)
    assert lipschitz_bound(nn.Dropout(1.0).train()) == 0.0


def test_unsupported_modules_raise():
    with pytest.raises(TypeError, match=exact("lipschitz_bound: no rule for module Conv2d; supported: Linear, "
                                              "Sequential, Residual, ReLU, Tanh, GELU, Identity, Dropout")):
        lipschitz_bound(nn.Sequential(nn.Conv2d(1, 1, 3)))
    with pytest.raises(TypeError, match=exact("lipschitz_bound: no rule for module MultiheadAttention: softmax "
                                              "attention has no finite Lipschitz constant on unbounded inputs "
                                              "(arXiv 2006.04710); a bound needs bounded inputs, which is out of "
                                              "scope")):
        lipschitz_bound(Residual(nn.MultiheadAttention(8, 2)))
    with pytest.raises(TypeError, match="^lipschitz_bound: no rule for module TransformerEncoderLayer: softmax"):
        lipschitz_bound(nn.TransformerEncoderLayer(8, 2))
    with pytest.raises(TypeError, match=exact("lipschitz_bound: expected an nn.Module, got int")):
        lipschitz_bound(3)


def test_residual_invalid_alpha():
    for alpha in (0, 0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=exact(f"Invalid alpha value: {alpha}; expected 0 < alpha <= 1 or None")):
            Residual(nn.Identity(), alpha=alpha)
    with pytest.raises(TypeError, match=exact("Invalid type for alpha: expected a real number or None, got str")):
        Residual(nn.Identity(), alpha="0.5")
    with pytest.raises(TypeError, match=exact("Invalid type for block: expected an nn.Module, got function")):
        Residual(lambda x: x)
    assert Residual(nn.Identity(), alpha=1).alpha == 1.0
