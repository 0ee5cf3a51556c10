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


# ---- attention on bounded inputs (LipschitzAttention, input_bound=) ----

import math  # noqa: E402

from torch.func import grad, jvp, vjp  # noqa: E402

from steepest.lipschitz import LipschitzAttention, output_bound  # noqa: E402

# forward-mode AD loads torch's jvp decompositions through torch.jit.script, which warns
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def project_rows(X: torch.Tensor, r: float) -> torch.Tensor:
    """Scale every token (row) of norm above ``r`` back onto the sphere of radius ``r``."""
    n = X.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    return X * torch.clamp(r / n, max=1.0)


def flat_jacobian(f, X: torch.Tensor) -> torch.Tensor:
    return torch.autograd.functional.jacobian(lambda z: f(z.view_as(X)).flatten(), X.flatten(), vectorize=True)


def token_max_norm_lower(J: torch.Tensor, T: int, d: int, iters: int = 15) -> float:
    """A lower estimate of J's operator norm in the token-max norm max_i ||x_i||: for each output token,
    alternate y = normalize(J_i dX), dx_j = normalize((J_ij)^T y) (every dX used is feasible)."""
    Jb = J.view(T, d, T, d)
    best = 0.0
    gen = torch.Generator().manual_seed(0)
    for i in range(T):
        dX = torch.randn(T, d, generator=gen, dtype=F64)
        for _ in range(iters):
            dX = dX / dX.norm(dim=1, keepdim=True)
            y = torch.einsum("atb,tb->a", Jb[i], dX)
            best = max(best, float(y.norm()))
            dX = torch.einsum("a,atb->tb", y / y.norm(), Jb[i])
    return best


def jacobian_probe(f, T: int, d: int, r: float, seed: int, points: int = 6, steps: int = 100) -> tuple[float, float]:
    """(largest sigma_1 of the flattened Jacobian, largest token-max-norm estimate) over random sequences
    with token norms <= r and a projected gradient ascent on sigma_1 (u^T J(X) v with the top singular
    pair tracked by power steps)."""
    gen = torch.Generator().manual_seed(seed)
    starts = []
    for k in range(points):
        X = torch.randn(T, d, generator=gen, dtype=F64)
        X = r * X / X.norm(dim=1, keepdim=True)
        starts.append(X if k % 2 == 0 else X * torch.rand(T, 1, generator=gen, dtype=F64))
    X = starts[0].clone()
    v = torch.randn(T, d, generator=gen, dtype=F64)
    for _ in range(steps):
        _, Jv = jvp(f, (X,), (v / v.norm(),))
        u = Jv / Jv.norm()
        _, pull = vjp(f, X)
        (v,) = pull(u)
        w = v / v.norm()
        g = grad(lambda Z: (jvp(f, (Z,), (w,))[1] * u).sum())(X)
        X = project_rows(X + 0.05 * r * g / g.norm().clamp_min(1e-300), r)
    sig, mixed = 0.0, 0.0
    for X in starts + [X]:
        J = flat_jacobian(f, X.detach())
        sig = max(sig, float(torch.linalg.matrix_norm(J, ord=2)))
        mixed = max(mixed, token_max_norm_lower(J, T, d))
    return sig, mixed


def test_attention_forward_is_the_documented_map():
    torch.manual_seed(0)
    for causal in (True, False):
        att = LipschitzAttention(8, 2, scale=2.0, causal=causal).to(F64)
        X = torch.randn(3, 5, 8, dtype=F64)
        q, k, v = X @ att.w_q.weight.T, X @ att.w_k.weight.T, X @ att.w_v.weight.T
        heads = []
        for h in range(2):
            sl = slice(4 * h, 4 * h + 4)
            S = (2.0 / 4) * q[..., sl] @ k[..., sl].transpose(-1, -2)  # scale / d_head
            if causal:
                S = S.masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
            heads.append(torch.softmax(S, dim=-1) @ v[..., sl])
        expected = torch.cat(heads, dim=-1) @ att.w_o.weight.T / 3
        assert torch.allclose(att(X), expected, atol=1e-12)
        assert torch.allclose(att(X[0]), expected[0], atol=1e-12)  # unbatched (T, dim)
    att = LipschitzAttention(8, 2).to(F64)  # causal: the first token attends to itself only
    X = torch.randn(5, 8, dtype=F64)
    assert torch.allclose(att(X)[0], att.w_o(att.w_v(X[0])) / 3, atol=1e-12)


@pytest.mark.parametrize("r", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("causal", [True, False])
def test_attention_bound_dominates_jacobian(r, causal):
    torch.manual_seed(7)
    T, d = 5, 16
    att = LipschitzAttention(d, 2, causal=causal).to(F64)
    sig, mixed = jacobian_probe(att, T, d, r, seed=1)
    frob = att.lipschitz_bound(r, seq_len=T)
    tmax = att.lipschitz_bound(r)
    assert frob >= sig and tmax >= mixed
    assert lipschitz_bound(att, input_bound=r, seq_len=T) == frob and lipschitz_bound(att, input_bound=r) == tmax
    assert frob / sig < 10 and tmax / mixed < 10  # not vacuous


def test_attention_bound_formula_single_head_is_the_papers():
    """One head, token-max norm: (1/3)||W_o|| ||W_v|| (1 + 2 r^2 s/d ||W_q^T W_k||) <= the paper's
    (1/3)||W_o|| ||W_v|| (1 + 2 r^2 s' ||W_q|| ||W_k||)."""
    torch.manual_seed(3)
    att = LipschitzAttention(6, 1, scale=1.5).to(F64)
    Wq, Wk, Wv, Wo = (m.weight for m in (att.w_q, att.w_k, att.w_v, att.w_o))
    r = 2.0
    ours = sigma1(Wo) * sigma1(Wv) * (1 + 2 * r * r * 1.5 / 6 * sigma1(Wq.T @ Wk)) / 3
    paper = sigma1(Wo) * sigma1(Wv) * (1 + 2 * r * r * 1.5 / 6 * sigma1(Wq) * sigma1(Wk)) / 3
    assert att.lipschitz_bound(r) == pytest.approx(ours, rel=1e-12)
    assert ours <= paper
    assert att.lipschitz_bound(0.0) == pytest.approx(sigma1(Wo) * sigma1(Wv) / 3, rel=1e-12)


def test_paper_formula_is_not_a_frobenius_bound():
    """All 2000 queries attend (sharply) to token 0: moving token 0 along e_2 (which no logit sees)
    moves every output token, a Frobenius slope of about sqrt(T)/3 = 14.9, above the paper's
    (1/3)(1 + 2 r^2 s') = 10.33; the Frobenius bound (seq_len=T) has the sqrt(C) factors."""
    d, T, c = 4, 2000, 15.0
    att = LipschitzAttention(d, 1, scale=c * d, causal=False).to(F64)
    E = torch.eye(d, dtype=F64)
    with torch.no_grad():
        att.w_q.weight.copy_(torch.outer(E[0], E[0]))
        att.w_k.weight.copy_(torch.outer(E[0], E[1]))
        att.w_v.weight.copy_(E)
        att.w_o.weight.copy_(E)
    X = torch.zeros(T, d, dtype=F64)
    X[:, 0] = 1
    X[0] = (E[0] + E[1]) / math.sqrt(2)
    V = torch.zeros(T, d, dtype=F64)
    V[0, 2] = 1
    with torch.no_grad():
        slope = float(jvp(att, (X,), (V,))[1].norm())
    paper = (1 + 2 * 1.0 * c) / 3
    assert slope > 14 > paper
    assert att.lipschitz_bound(1.0, seq_len=T) >= slope
    assert att.lipschitz_bound(1.0) == pytest.approx(paper)  # the token-max bound is the paper's here


def transformer(seed: int, alpha: float, d: int = 16, heads: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(Residual(LipschitzAttention(d, heads), alpha),
                         Residual(nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d)), alpha)).to(F64)


@pytest.mark.parametrize("r", [1.0, 3.0])
def test_transformer_stack_bound(r):
    T, d = 5, 16
    f = transformer(0, alpha=0.5)
    att = f[0].block
    r1 = 0.5 * r + 0.5 * att.output_bound(r)
    mlp_l = sigma1(f[1].block[0].weight) * GELU_MAX_SLOPE * sigma1(f[1].block[2].weight)
    expected = (0.5 + 0.5 * att.lipschitz_bound(r, seq_len=T)) * (0.5 + 0.5 * mlp_l)
    bound = lipschitz_bound(f, input_bound=r, seq_len=T)
    assert bound == pytest.approx(expected, rel=1e-12)
    assert lipschitz_bound(f[1], input_bound=r1) == pytest.approx(0.5 + 0.5 * mlp_l, rel=1e-12)
    sig, mixed = jacobian_probe(f, T, d, r, seed=2, points=4, steps=60)
    assert bound >= sig
    assert lipschitz_bound(f, input_bound=r) >= mixed


def test_output_bound_dominates_token_norms():
    T, d = 6, 16
    gen = torch.Generator().manual_seed(5)
    for model in (transformer(1, alpha=0.3), transformer(2, alpha=1.0),
                  nn.Sequential(nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 16), nn.ReLU(),
                                Residual(LipschitzAttention(16, 4, scale=3.0, causal=False)),
                                nn.Dropout(0.5).eval()).to(F64)):
        for r in (0.5, 1.0, 3.0):
            R = output_bound(model, r)
            X = torch.randn(200, T, d, generator=gen, dtype=F64)
            X = r * X / X.norm(dim=-1, keepdim=True)
            with torch.no_grad():
                assert float(model(X).norm(dim=-1).max()) <= R
    # the rules, one by one
    torch.manual_seed(0)
    lin = nn.Linear(5, 3).to(F64)
    assert output_bound(lin, 2.0) == pytest.approx(2 * sigma1(lin.weight) + float(lin.bias.detach().norm()))
    for act in (nn.ReLU(), nn.Tanh(), nn.GELU(), nn.GELU(approximate="tanh"), nn.Identity(), nn.Dropout(0.3).eval()):
        assert output_bound(act, 2.5) == 2.5
    assert output_bound(nn.Dropout(0.2).train(), 2.0) == pytest.approx(2.5)
    assert output_bound(Residual(nn.Identity()), 1.5) == 3.0
    res = Residual(nn.Linear(4, 4, bias=False), alpha=0.25)
    assert output_bound(res, 1.0) == pytest.approx(0.75 + 0.25 * sigma1(res.block.weight), rel=1e-12)
    att = LipschitzAttention(8, 2).to(F64)
    vh = [sigma1(att.w_v.weight[4 * h:4 * h + 4]) for h in range(2)]
    assert output_bound(att, 2.0) == pytest.approx(sigma1(att.w_o.weight) * math.hypot(*vh) * 2 / 3, rel=1e-12)


def test_attention_requires_input_bound():
    att = LipschitzAttention(8, 2)
    with pytest.raises(TypeError, match=exact("lipschitz_bound: no rule for module LipschitzAttention: softmax "
                                              "attention has no finite Lipschitz constant on unbounded inputs "
                                              "(arXiv 2006.04710); a bound needs bounded inputs: pass input_bound= "
                                              "(a bound of the l2 norm of every input token)")):
        lipschitz_bound(nn.Sequential(nn.Linear(8, 8), Residual(att, alpha=0.5)))
    with pytest.raises(TypeError, match=exact("lipschitz_bound: no rule for module MultiheadAttention: with "
                                              "input_bound= only LipschitzAttention has a bound")):
        lipschitz_bound(nn.MultiheadAttention(8, 2), input_bound=1.0)
    with pytest.raises(TypeError, match="supported: Linear, Sequential, Residual, ReLU, Tanh, GELU, Identity, "
                                        "Dropout, LipschitzAttention \\(with input_bound=\\)$"):
        lipschitz_bound(nn.Conv2d(1, 1, 3), input_bound=1.0)
    with pytest.raises(ValueError, match=exact("Invalid input_bound value: -1.0; expected a finite number >= 0")):
        lipschitz_bound(att, input_bound=-1.0)
    with pytest.raises(TypeError, match=exact("Invalid type for input_bound: expected a real number, got str")):
        lipschitz_bound(att, input_bound="1")
    with pytest.raises(ValueError, match=exact("Invalid seq_len value: 0; expected a positive int or None")):
        lipschitz_bound(att, input_bound=1.0, seq_len=0)
    with pytest.raises(ValueError, match=exact("Invalid n_heads value: 3; expected a divisor of dim=8")):
        LipschitzAttention(8, 3)
    # without attention, input_bound and seq_len change nothing
    f = mlp(0, nn.GELU, "convex")
    assert lipschitz_bound(f, input_bound=3.0) == lipschitz_bound(f) == lipschitz_bound(f, input_bound=0.1, seq_len=7)
