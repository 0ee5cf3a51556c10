"""steepest.nn.spd (BiMap, ReEig, LogEig, SPDBatchNorm), the "spd" constraint, and how for_model/explain
handle SPD networks."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck
from torch.func import functional_call

import steepest
from steepest import spd as S
from steepest.constraints import SPD, make_constraint
from steepest.nn import BiMap, LogEig, ReEig, SPDBatchNorm
from steepest.nn.spd import _bw_transport_from_identity, _bw_transport_to_identity, triu_vector
from steepest.roles import classify, declared_constraints

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64
METRICS = ("bw", "gbw", "aim", "lem")


def exact(text: str) -> str:
    return "^" + re.escape(text) + "$"


def spd(n: int, batch: tuple[int, ...] = (), cond: float = 10.0, seed: int = 0) -> torch.Tensor:
    """Random SPD matrices with eigenvalues log-spaced from 1 to ``cond`` times a random factor in [0.5, 1.5]."""
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(*batch, n, n, generator=gen, dtype=F64))
    l = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=F64).expand(*batch, n)
    l = l * (0.5 + torch.rand(*batch, 1, generator=gen, dtype=F64))
    return (Q * l.unsqueeze(-2)) @ Q.mT


def spd_net(metric: str | None, seed: int = 0) -> nn.Sequential:
    gen = torch.Generator().manual_seed(seed)
    layers = [BiMap(6, 4, generator=gen, dtype=F64)]
    if metric:
        layers.append(SPDBatchNorm(4, metric, dtype=F64))
    layers += [ReEig(), LogEig(), nn.Linear(10, 3, dtype=F64)]
    return nn.Sequential(*layers)


# -- BiMap, ReEig, LogEig ----------------------------------------------------------------------------------
def test_bimap_output_is_spd_and_weight_on_stiefel():
    layer = BiMap(6, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    W = layer.weight.detach()
    assert torch.allclose(W.T @ W, torch.eye(3, dtype=F64), atol=1e-12)
    Y = layer(spd(6, (5,), cond=1e6))
    assert Y.shape == (5, 3, 3) and torch.equal(Y, Y.mT)
    assert torch.linalg.eigvalsh(Y).min() > 0
    with pytest.raises(ValueError, match=exact("out_dim must be at most in_dim (W has orthonormal columns), "
                                               "got in_dim=3, out_dim=4")):
        BiMap(3, 4)
    with pytest.raises(ValueError, match=exact("BiMap: expected matrices of shape (..., 6, 6), got shape (5, 4, 4)")):
        layer(spd(4, (5,)))


def test_reeig_and_logeig_values_and_gradcheck():
    X = spd(4, (2,), cond=100.0)
    X[0] = torch.diag(torch.tensor([1e-7, 1e-7, 2.0, 2.0], dtype=F64))  # clamped ties and repeated eigenvalues
    rect = ReEig(eps=1e-3)(X)
    assert torch.linalg.eigvalsh(rect).min() >= 1e-3 - 1e-15
    assert torch.allclose(rect[1], X[1])  # nothing below eps: unchanged
    assert gradcheck(ReEig(eps=1e-3), (X.clone().requires_grad_(),))
    v = LogEig()(X[1:])
    assert v.shape == (1, 10)
    assert torch.allclose(v.norm(dim=-1), S.logm(X[1:]).norm(dim=(-2, -1)))  # sqrt(2) off-diagonals: an isometry
    Y = X.clone()
    Y[0] = torch.diag(torch.tensor([0.5, 0.5, 2.0, 2.0], dtype=F64))  # repeated eigenvalues
    assert gradcheck(LogEig(), (Y.requires_grad_(),))
    assert torch.equal(triu_vector(torch.tensor([[1.0, 2.0], [2.0, 3.0]])), torch.tensor([1.0, 2.0 * 2 ** 0.5, 3.0]))
    with pytest.raises(ValueError, match=exact("eps must be a positive finite number, got 0.0")):
        ReEig(eps=0.0)


# -- the BW transports ---------------------------------------------------------------------------------------
def test_bw_transports_are_isometries_with_finite_gradients_at_ties():
    B = spd(4, cond=50.0)
    V = S.sym(torch.randn(3, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(2)))

    def bw_norm2(P, W):  # <W, W>_P = tr(L_P[W] W) / 2
        return (S.lyapunov(P, W) * W).sum((-2, -1)) / 2

    eye = torch.eye(4, dtype=F64)
    assert torch.allclose(bw_norm2(eye, _bw_transport_to_identity(B, V)), bw_norm2(B, V))
    assert torch.allclose(bw_norm2(B, _bw_transport_from_identity(B, V)), bw_norm2(eye, V))
    assert torch.allclose(_bw_transport_from_identity(B, _bw_transport_to_identity(B, V)), V)
    for P in (B, eye, torch.diag(torch.tensor([1.0, 1.0, 2.0, 3.0], dtype=F64))):
        for transport in (_bw_transport_to_identity, _bw_transport_from_identity):
            assert gradcheck(transport, (P.clone().requires_grad_(), V[:2].clone().requires_grad_()), fast_mode=True)


# -- SPDBatchNorm ----------------------------------------------------------------------------------------------
def geometry(bn: SPDBatchNorm) -> S.SPDMetric:
    return S.metric(bn.metric, M=bn.M.detach()) if bn.metric == "gbw" else S.metric(bn.metric)


@pytest.mark.parametrize("metric", METRICS)
def test_batchnorm_centers_the_batch_and_tracks_running_stats(metric):
    X = spd(4, (8,), cond=100.0, seed=3)
    bn = SPDBatchNorm(4, metric, iters=30, dtype=F64)
    if metric == "gbw":
        with torch.no_grad():
            bn.M.copy_(spd(4, cond=5.0, seed=4))
    with torch.no_grad():  # inside the BW exponential's injectivity domain (see the docstring)
        bn.scale.fill_(0.5)
    geo = geometry(bn)
    Z = bn(X)
    eye = torch.eye(4, dtype=F64)
    B_out = geo.barycenter(Z, iters=100)
    assert (B_out - eye).abs().max() < 1e-8
    assert torch.allclose(geo.distance(Z, B_out, squared=True).mean(), torch.tensor(0.25, dtype=F64), rtol=1e-4)
    # running mean: one step of size momentum along the geodesic from I to the batch barycenter
    B = geo.barycenter(X, iters=100)
    assert geo.distance(bn.running_mean, geo.geodesic(eye, B, 0.1)) < 1e-8
    var = geo.distance(X, B, squared=True).mean()
    assert torch.allclose(bn.running_var, 0.9 + 0.1 * var, rtol=1e-6)
    # eval uses the running statistics: set them to this batch's, and eval equals train
    with torch.no_grad():
        bn.running_mean.copy_(B)
        bn.running_var.copy_(var)
    bn.eval()
    assert torch.allclose(bn(X), Z, atol=1e-7)
    before = bn.running_mean.clone()
    bn(spd(4, (8,), seed=5))
    assert torch.equal(bn.running_mean, before)


def test_batchnorm_bias_scale_and_power():
    X = spd(3, (6,), cond=20.0, seed=6)
    G = spd(3, cond=3.0, seed=7)
    for metric in METRICS:
        bn = SPDBatchNorm(3, metric, iters=30, power=0.5, dtype=F64)
        with torch.no_grad():
            bn.bias.copy_(G)
            bn.scale.fill_(1e-6)  # all outputs collapse onto the bias
        assert torch.allclose(bn(X), G.expand(6, 3, 3), atol=1e-5), metric


@pytest.mark.parametrize("metric", METRICS)
def test_batchnorm_gradcheck(metric):
    bn = SPDBatchNorm(3, metric, power=0.5, iters=1 if metric == "aim" else 2, dtype=F64)
    names = [n for n, _ in bn.named_parameters()]
    values = [spd(3, cond=3.0, seed=8 + i) if p.ndim == 2 else torch.tensor(1.3, dtype=F64)
              for i, (_, p) in enumerate(bn.named_parameters())]

    def f(X, *ps):
        return functional_call(bn, dict(zip(names, ps)), (X,))

    inputs = (spd(3, (4,), seed=9).requires_grad_(), *(v.requires_grad_() for v in values))
    assert gradcheck(f, inputs, fast_mode=True)
    bn.eval()
    assert gradcheck(f, inputs, fast_mode=True)


@pytest.mark.parametrize("metric", METRICS)
def test_batchnorm_finite_at_condition_number_1e8(metric):
    bn = SPDBatchNorm(5, metric, iters=3, dtype=F64)
    X = spd(5, (8,), cond=1e8, seed=10).requires_grad_()
    Z = bn(X)
    Z.square().sum().backward()
    assert torch.isfinite(Z).all() and torch.isfinite(X.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in bn.parameters())
    assert torch.isfinite(bn.running_mean).all() and torch.isfinite(bn.running_var)


def test_batchnorm_arguments():
    with pytest.raises(ValueError, match=exact("Unknown metric 'airm'; expected one of: bw, gbw, aim, lem")):
        SPDBatchNorm(3, "airm")
    with pytest.raises(ValueError, match=exact("momentum must be a number in (0, 1], got 0")):
        SPDBatchNorm(3, momentum=0)
    with pytest.raises(ValueError, match=exact("power must be a positive finite number, got -1")):
        SPDBatchNorm(3, power=-1)
    with pytest.raises(ValueError, match=exact("iters must be an int >= 1, got 0")):
        SPDBatchNorm(3, iters=0)
    with pytest.raises(ValueError, match=exact("SPDBatchNorm: expected a batch of shape (N, 3, 3), "
                                               "got shape (2, 2, 3, 3)")):
        SPDBatchNorm(3)(spd(3, (2, 2)))
    assert SPDBatchNorm(3, "bw").M is None and [n for n, _ in SPDBatchNorm(3, "gbw").named_parameters()] == [
        "bias", "scale", "M"]


def test_state_dict_round_trip():
    X = spd(6, (8,), seed=11)
    a, b = spd_net("gbw", seed=0), spd_net("gbw", seed=1)
    a(X)  # moves the running statistics
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    assert torch.equal(a(X), b(X))
    assert set(a.state_dict()) >= {"1.running_mean", "1.running_var", "1.M", "1.bias", "1.scale", "0.weight"}


# -- the spd constraint and for_model / explain ------------------------------------------------------------------
def test_spd_constraint_projection():
    c = make_constraint("spd")
    assert isinstance(c, SPD) and c.eps == 1e-6
    W = torch.randn(3, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(12))
    P = c.project(W)
    assert P.shape == W.shape and torch.equal(P, P.mT)
    assert torch.linalg.eigvalsh(P).min() >= 1e-6 * (1 - 1e-9) and c.check(P) < 1e-12 and c.check(W) > 0
    l, U = torch.linalg.eigh(S.sym(W))
    assert torch.allclose(P, (U * l.clamp_min(1e-6).unsqueeze(-2)) @ U.mT)
    X = spd(4, seed=13)
    assert torch.allclose(c.project(X), X)
    with pytest.raises(ValueError, match=exact("Invalid eps value: 0; expected a positive number")):
        SPD(eps=0)
    with pytest.raises(ValueError, match=exact("Constraint 'spd' needs square matrices of shape (..., n, n), "
                                               "got shape (3, 4)")):
        c.project(torch.zeros(3, 4))


def test_for_model_keeps_bimap_on_stiefel_and_bn_parameters_spd():
    model = spd_net("gbw")
    assert classify(model)["1.M"] == "vector" and classify(model)["0.weight"] == "hidden"
    assert declared_constraints(model) == {"0.weight": "stiefel", "1.bias": "spd", "1.M": "spd"}
    opt = steepest.for_model(model, "muon", lr=0.05, adamw_lr=0.05, constraints={"hidden": ("spectral_hardcap", 2.0)})
    X, y = spd(6, (16,), cond=1e3, seed=14), torch.arange(16) % 3
    for _ in range(5):
        loss = nn.functional.cross_entropy(model(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    W = model[0].weight.detach()
    assert torch.allclose(W.T @ W, torch.eye(4, dtype=F64), atol=1e-10)
    bn = model[1]
    for p in (bn.M, bn.bias):
        assert not torch.equal(p.detach(), torch.eye(4, dtype=F64))  # it was trained
        assert SPD().check(p) == 0.0
    text = steepest.explain(opt)
    rows = {line.split()[0]: line for line in text.splitlines()[2:]}
    assert "+ stiefel(1)" in rows["0.weight"] and "on W^T" in rows["0.weight"]
    assert "spectral_hardcap" not in rows["0.weight"]  # the declaration wins over the role's constraint
    for name in ("1.M", "1.bias"):
        assert "+ spd" in rows[name] and "+ spd(" not in rows[name]  # spd takes no bound: none is shown
    assert "spd" not in rows["1.scale"]
    opt = steepest.for_model(model, "muon", overrides={"1.M": {"constraint": None}})  # per-parameter wins
    assert "spd" not in [line for line in steepest.explain(opt).splitlines() if line.startswith("1.M ")][0]


def test_declared_constraints_conflict_and_unknown_names():
    class Stiff(nn.Module):
        steepest_constraints = {"w": "stiefel"}

        def __init__(self, w):
            super().__init__()
            self.w = w

    class Cone(Stiff):
        steepest_constraints = {"w": "spd"}

    w = nn.Parameter(torch.eye(3))
    with pytest.raises(ValueError, match=exact("Conflicting constraints declared for parameter '0.w': spd, stiefel")):
        declared_constraints(nn.Sequential(Stiff(w), Cone(w)))

    class Typo(Stiff):
        steepest_constraints = {"w": "spdd"}

    with pytest.raises(ValueError, match="^Unknown constraint 'spdd'"):
        steepest.for_model(Typo(nn.Parameter(torch.eye(3))), "muon")
