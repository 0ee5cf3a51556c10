"""steepest.spd.metrics: Bures-Wasserstein, generalized BW, affine-invariant and log-Euclidean geometry."""
from __future__ import annotations

import math
import re

import pytest
import torch

from steepest.spd import (
    METRICS,
    AffineInvariant,
    BuresWasserstein,
    GeneralizedBuresWasserstein,
    LogEuclidean,
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
    logm,
    lyapunov,
    metric,
    sqrtm,
    sym,
)

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64


def rotation(n: int, seed: int, batch: tuple[int, ...] = ()) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(*batch, n, n, dtype=F64, generator=g))[0]


def with_spectrum(l: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    return sym((Q * l.to(F64).unsqueeze(-2)) @ Q.mT)


def spd(n: int = 4, cond: float = 10.0, seed: int = 0, batch: tuple[int, ...] = ()) -> torch.Tensor:
    """Random rotation of a log-spaced spectrum from 1 to ``cond``, scaled by a random positive factor."""
    g = torch.Generator().manual_seed(seed + 1000)
    scale = torch.rand(*batch, 1, 1, dtype=F64, generator=g) + 0.5
    return with_spectrum(torch.logspace(0, math.log10(cond), n, dtype=F64), rotation(n, seed, batch)) * scale


def invertible(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.eye(n, dtype=F64) + 0.5 * torch.randn(n, n, dtype=F64, generator=g)


def commuting(n: int, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``count`` matrices sharing one eigenbasis: (stack, eigenvalues, basis)."""
    g = torch.Generator().manual_seed(seed)
    l = torch.rand(count, n, dtype=F64, generator=g) * 5 + 0.1
    Q = rotation(n, seed)
    return with_spectrum(l, Q), l, Q


def close(a, b, tol=1e-10):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


P, Q, R = spd(4, 30.0, seed=1), spd(4, 50.0, seed=2), spd(4, 5.0, seed=3)
DISTANCES = {"bw": bw_distance, "aim": aim_distance, "lem": lem_distance}


# -- shared metric axioms ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(DISTANCES))
def test_distance_axioms(name):
    d = DISTANCES[name]
    close(d(P, Q), d(Q, P))
    assert d(P, Q) > 0
    assert d(P, P) < 1e-12
    assert d(P, R) <= d(P, Q) + d(Q, R) + 1e-12
    batch = torch.stack([P, Q, R])
    close(d(batch, R), torch.stack([d(P, R), d(Q, R), d(R, R)]))
    close(d(P, Q, squared=True), d(P, Q) ** 2)


@pytest.mark.parametrize("name", list(METRICS))
def test_geometry_objects(name):
    M = spd(4, 3.0, seed=4)
    geo = metric(name, M=M) if name == "gbw" else metric(name)
    assert isinstance(geo, METRICS[name]) and geo.name == name
    close(geo.exp(P, geo.log(P, Q)), Q, tol=1e-9)
    close(geo.geodesic(P, Q, 0.0), P)
    close(geo.geodesic(P, Q, 1.0), Q, tol=1e-9)
    mid = geo.geodesic(P, Q, 0.5)
    close(geo.distance(P, mid), geo.distance(mid, Q), tol=1e-9)
    close(geo.distance(P, mid) * 2, geo.distance(P, Q), tol=1e-9)
    B, info = geo.barycenter(torch.stack([P, Q]), return_info=True)
    assert info.converged
    close(B, mid, tol=1e-8)


def test_metric_lookup_errors():
    assert list(METRICS) == ["bw", "gbw", "aim", "lem"]
    with pytest.raises(ValueError, match=re.escape("Unknown SPD metric 'x'; expected one of: bw, gbw, aim, lem")):
        metric("x")
    with pytest.raises(ValueError, match=re.escape("GeneralizedBuresWasserstein needs an SPD matrix M")):
        metric("gbw")
    assert isinstance(metric("aim"), AffineInvariant) and isinstance(metric("lem"), LogEuclidean)
    assert BuresWasserstein().M is None and isinstance(GeneralizedBuresWasserstein(M=P), BuresWasserstein)


def test_input_errors():
    square = "bw_distance: expected square matrices of shape (..., n, n), got shape (3, 4)"
    with pytest.raises(ValueError, match=re.escape(square)):
        bw_distance(torch.ones(3, 4, dtype=F64), P)
    stack = "bw_barycenter: expected a stack of matrices of shape (N, ..., n, n), got shape (4, 4)"
    with pytest.raises(ValueError, match=re.escape(stack)):
        bw_barycenter(P)
    with pytest.raises(ValueError, match=re.escape("bw_barycenter: expected weights of shape (2,), got (3,)")):
        bw_barycenter(torch.stack([P, Q]), torch.ones(3, dtype=F64))
    dim = "aim_barycenter: dim must index a batch dimension, not a matrix dimension, got 1"
    with pytest.raises(ValueError, match=re.escape(dim)):
        aim_barycenter(torch.stack([P, Q]), dim=1)


# -- Bures-Wasserstein ---------------------------------------------------------------------------------------
def test_bw_commuting_closed_form():
    Xs, l, U = commuting(4, 3, seed=5)
    close(bw_distance(Xs[0], Xs[1]), torch.linalg.matrix_norm(sqrtm(Xs[0]) - sqrtm(Xs[1])))
    close(bw_distance(Xs[0], Xs[1]), torch.linalg.vector_norm(l[0].sqrt() - l[1].sqrt()))
    B, info = bw_barycenter(Xs, return_info=True)
    close(B, with_spectrum(l.sqrt().mean(0) ** 2, U), tol=1e-9)  # (mean_i X_i^{1/2})^2
    w = torch.tensor([0.2, 0.5, 0.3], dtype=F64)
    close(bw_barycenter(Xs, w * 7), with_spectrum((w @ l.sqrt()) ** 2, U), tol=1e-9)
    assert info.converged and info.iterations >= 1


def test_bw_log_exp_geodesic():
    V = bw_log(P, Q)
    close(V, V.mT)
    T = sqrtm(P) @ sqrtm(sqrtm(P) @ Q @ sqrtm(P)) @ torch.linalg.inv(sqrtm(P))
    close(T @ T, P @ Q, tol=1e-9)  # T = (PQ)^{1/2}
    close(bw_exp(P, V), Q, tol=1e-9)
    L = lyapunov(P, V)
    close(P @ L + L @ P, V)
    close(bw_exp(P, V), P + V + L @ P @ L, tol=1e-9)
    close(bw_geodesic(P, Q, 0.0), P)
    close(bw_geodesic(P, Q, 1.0), Q)
    ts = torch.tensor([0.0, 0.3, 1.0], dtype=F64)
    close(bw_geodesic(P, Q, ts), torch.stack([bw_geodesic(P, Q, float(t)) for t in ts]))
    # the weighted barycenter of two points lies on the geodesic
    close(bw_barycenter(torch.stack([P, Q]), torch.tensor([0.7, 0.3], dtype=F64)), bw_geodesic(P, Q, 0.3), tol=1e-8)
    # BW norm of Log: <V, V>_P = tr(L_P[V] V) / 2 = d^2
    close((lyapunov(P, V) * V).sum() / 2, bw_distance(P, Q, squared=True), tol=1e-9)


def test_bw_barycenter_converges_on_non_commuting():
    Xs = spd(5, 100.0, seed=6, batch=(6,))
    B, info = bw_barycenter(Xs, return_info=True)
    assert info.converged and 1 <= info.iterations < 50 and info.residual.item() <= 1e-10
    S = sqrtm(sqrtm(B) @ Xs @ sqrtm(B)).mean(0)
    close(S, B, tol=1e-8)  # B = mean_i (B^{1/2} X_i B^{1/2})^{1/2}
    one = bw_barycenter(Xs, iters=1, tol=0.0)  # GBWBN: one step from the arithmetic mean
    assert bw_distance(one, B) < bw_distance(Xs.mean(0), B)
    batched = bw_barycenter(Xs.reshape(3, 2, 5, 5), dim=0)  # average over dim 0, batch over dim 1
    close(batched[1], bw_barycenter(Xs.reshape(3, 2, 5, 5)[:, 1]), tol=1e-8)  # stops on the batch's largest residual


def test_lyapunov_gradcheck_at_repeated_eigenvalues():
    V = sym(torch.randn(3, 3, dtype=F64, generator=torch.Generator().manual_seed(7)))
    for A in (torch.eye(3, dtype=F64), spd(3, seed=8)):
        assert torch.autograd.gradcheck(lyapunov, (A.clone().requires_grad_(), V.clone().requires_grad_()))


def test_bw_gradcheck():
    A, B = spd(3, 5.0, seed=9).requires_grad_(), spd(3, 8.0, seed=10).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: bw_distance(a, b, squared=True), (A, B))
    assert torch.autograd.gradcheck(bw_log, (A, B))
    assert torch.autograd.gradcheck(bw_exp, (A, sym(B - A).detach().requires_grad_()))
    eye = torch.eye(3, dtype=F64).requires_grad_()
    assert torch.autograd.gradcheck(bw_exp, (eye, sym(B - 2 * eye).detach().requires_grad_()))
    (grad,) = torch.autograd.grad(bw_distance(A, A.detach()), A)  # d = 0: gradient 0, not NaN
    assert torch.isfinite(grad).all()


def test_gradcheck_at_repeated_eigenvalues():
    """Points with repeated eigenvalues (and products with repeated singular values) keep exact gradients."""
    eye = torch.eye(3, dtype=F64)
    R = with_spectrum(torch.tensor([1.0, 1.0, 2.0]), rotation(3, seed=26))
    for A, B in ((eye, eye), (eye, R), (R, 2 * R)):
        a, b = A.clone().requires_grad_(), B.clone().requires_grad_()
        assert torch.autograd.gradcheck(lambda x, y: bw_distance(x, y, squared=True), (a, b))
        assert torch.autograd.gradcheck(bw_log, (a, b))
        assert torch.autograd.gradcheck(lambda x, y: gbw_distance(x, y, R, squared=True), (a, b))
        assert torch.autograd.gradcheck(aim_log, (a, b))
    Xs = spd(3, 10.0, seed=27, batch=(3,)).requires_grad_()
    assert torch.autograd.gradcheck(lambda X: bw_barycenter(X, iters=2, tol=0.0), (Xs,))  # unrolled iterations


def test_float32():
    A, B = spd(4, 100.0, seed=28).float(), spd(4, 100.0, seed=29).float()
    for name in ("bw", "aim", "lem"):
        geo = metric(name)
        assert geo.distance(A, B).dtype == torch.float32 == geo.log(A, B).dtype
        torch.testing.assert_close(geo.distance(A, B).double(), geo.distance(A.double(), B.double()), rtol=1e-4, atol=0)
        B32, info = geo.barycenter(torch.stack([A, B]), return_info=True)
        assert B32.dtype == torch.float32 and info.converged  # float32 default tol 1e-5


# -- generalized BW --------------------------------------------------------------------------------------------
def test_gbw():
    M, A = spd(4, 20.0, seed=11), invertible(4, seed=12)
    eye = torch.eye(4, dtype=F64)
    close(gbw_distance(P, Q, eye), bw_distance(P, Q))
    cong = lambda X: A @ X @ A.T  # noqa: E731
    close(gbw_distance(cong(P), cong(Q), cong(M)), gbw_distance(P, Q, M), tol=1e-9)
    # BW alone is only orthogonally invariant
    O = rotation(4, seed=13)
    close(bw_distance(O @ P @ O.T, O @ Q @ O.T), bw_distance(P, Q))
    assert abs(bw_distance(cong(P), cong(Q)) - bw_distance(P, Q)) > 1e-3
    # closed form: tr(M^-1 P) + tr(M^-1 Q) - 2 sum_i sqrt(eig_i(P M^-1 Q M^-1))
    Mi = torch.linalg.inv(M)
    cross = torch.linalg.eigvals(P @ Mi @ Q @ Mi).real.clamp_min(0).sqrt().sum()
    close(gbw_distance(P, Q, M, squared=True), torch.trace(Mi @ P) + torch.trace(Mi @ Q) - 2 * cross, tol=1e-9)
    geo = GeneralizedBuresWasserstein(M=M)
    Xs = spd(4, 10.0, seed=14, batch=(4,))
    B, info = geo.barycenter(Xs, return_info=True)
    assert info.converged
    close(GeneralizedBuresWasserstein(M=cong(M)).barycenter(cong(Xs)), cong(B), tol=1e-8)  # equivariance
    close(GeneralizedBuresWasserstein(M=eye).barycenter(Xs), bw_barycenter(Xs))


# -- affine-invariant and log-Euclidean -----------------------------------------------------------------------
def test_aim():
    A = invertible(4, seed=15)
    close(aim_distance(A @ P @ A.T, A @ Q @ A.T), aim_distance(P, Q), tol=1e-9)
    close(aim_exp(P, aim_log(P, Q)), Q, tol=1e-9)
    Pi = torch.linalg.inv(sqrtm(P))
    close(aim_geodesic(P, Q, 0.5), sqrtm(P) @ sqrtm(Pi @ Q @ Pi) @ sqrtm(P), tol=1e-9)  # geometric mean P # Q
    Xs, l, U = commuting(4, 3, seed=16)
    close(aim_barycenter(Xs), with_spectrum(l.log().mean(0).exp(), U), tol=1e-9)
    Xs = spd(4, 50.0, seed=17, batch=(5,))
    B, info = aim_barycenter(Xs, return_info=True)
    assert info.converged and info.residual.item() <= 1e-10
    Bi = torch.linalg.inv(sqrtm(B))
    close(logm(Bi @ Xs @ Bi).mean(0), torch.zeros(4, 4, dtype=F64), tol=1e-9)  # the Karcher equation
    assert torch.autograd.gradcheck(aim_log, (spd(3, seed=18).requires_grad_(), spd(3, seed=19).requires_grad_()))


def test_lem():
    close(lem_distance(P, Q), torch.linalg.matrix_norm(logm(P) - logm(Q)))
    Xs, l, U = commuting(4, 3, seed=20)
    close(lem_barycenter(Xs), with_spectrum(l.log().mean(0).exp(), U))
    close(lem_distance(Xs[0], Xs[1]), torch.linalg.vector_norm(l[0].log() - l[1].log()))
    B, info = lem_barycenter(Xs, return_info=True)
    assert info.iterations == 0 and info.converged


# -- ill-conditioned inputs -------------------------------------------------------------------------------------
def test_bw_accurate_for_close_ill_conditioned_pairs():
    """cond 1e8, Q a 1e-6 relative perturbation of P with the same eigenbasis: the closed forms
    ``d = ||P^{1/2} - Q^{1/2}||_F`` and ``Log_P(Q) = 2 (PQ)^{1/2} - 2P`` are exact from the eigenvalues.
    Forming ``P^{1/2} Q P^{1/2}`` (condition 1e16) gives d = 0.77 instead of 0.0050 and a log 0.6% off."""
    U = rotation(5, seed=25)
    p = torch.logspace(0, 8, 5, dtype=F64)
    q = p * (1 + 1e-6 * torch.linspace(-1, 1, 5, dtype=F64))
    P, Q = with_spectrum(p, U), with_spectrum(q, U)
    exact = torch.linalg.vector_norm(p.sqrt() - q.sqrt())
    torch.testing.assert_close(bw_distance(P, Q), exact, rtol=1e-6, atol=0)
    log_exact = with_spectrum(2 * (p * q).sqrt() - 2 * p, U)
    assert torch.linalg.matrix_norm(bw_log(P, Q) - log_exact) <= 1e-3 * torch.linalg.matrix_norm(log_exact)



@pytest.mark.parametrize("cond", [1e4, 1e8])
@pytest.mark.parametrize("name", list(METRICS))
def test_finite_at_high_condition_numbers(name, cond):
    A, B = spd(5, cond, seed=21), spd(5, cond, seed=22)
    geo = metric(name, M=spd(5, 10.0, seed=23)) if name == "gbw" else metric(name)
    for out in (geo.distance(A, B), geo.log(A, B), geo.exp(A, geo.log(A, B)), geo.geodesic(A, B, 0.3),
                geo.barycenter(torch.stack([A, B, spd(5, cond, seed=24)]), iters=20)):
        assert torch.isfinite(out).all()
    error = torch.linalg.matrix_norm(geo.exp(A, geo.log(A, B)) - B) / torch.linalg.matrix_norm(B)
    assert error <= (1e-10 if cond == 1e4 else 1e-5)
    A.requires_grad_()
    (geo.distance(A, B, squared=True) + geo.log(A, B).sum()).backward()
    assert torch.isfinite(A.grad).all()
