"""Lion against the lion-pytorch package, Lion-K's constraint (arXiv 2310.05898), and Signum's formula."""
import lion_pytorch  # a test dependency (pyproject's "test" extra)
import pytest
import torch
from torch import nn

import steepest
from steepest.optim import Lion, LionK, Signum

SHAPES = [(8, 16), (24, 8), (7,), (3, 4, 2, 2)]


def _params(seed=0, scale=1.0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [(scale * torch.randn(s, generator=gen, dtype=dtype)).requires_grad_() for s in SHAPES]


def _feed(params_list, opts, steps, seed=1, persistent=0.0):
    """Give every parameter list the same random gradients and step all optimizers. ``persistent``
    adds that many times one fixed random matrix (the same every step) to each gradient."""
    gen = torch.Generator().manual_seed(seed)
    fixed = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params_list[0]] if persistent else None
    for _ in range(steps):
        grads = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params_list[0]]
        if fixed is not None:
            grads = [g + persistent * f for g, f in zip(grads, fixed)]
        for params in params_list:
            for p, g in zip(params, grads):
                p.grad = g.clone()
        for opt in opts:
            opt.step()


@pytest.mark.parametrize("wd", [0.0, 0.1])
@pytest.mark.parametrize("betas", [(0.9, 0.99), (0.95, 0.98)])
def test_lion_matches_lion_pytorch_for_twenty_steps(wd, betas):
    ref, ours = _params(), _params()
    opt_ref = lion_pytorch.Lion(ref, lr=1e-3, betas=betas, weight_decay=wd)
    opt_ours = Lion(ours, lr=1e-3, betas=betas, weight_decay=wd)
    _feed([ref, ours], [opt_ref, opt_ours], steps=20)
    for a, b in zip(ref, ours):
        assert ((a - b).abs().max() / a.abs().max()).item() <= 1e-6
    # The comparison is not vacuous: the parameters moved.
    for a, b in zip(ref, _params()):
        assert (a - b).abs().max() > 1e-3


def test_lion_every_entry_moves_by_lr():
    torch.manual_seed(10)
    p = torch.randn(5, 6, requires_grad=True)
    before = p.detach().clone()
    opt = Lion([p], lr=0.01)
    p.grad = torch.randn(5, 6)
    opt.step()
    torch.testing.assert_close((p - before).abs(), torch.full((5, 6), 0.01), rtol=1e-6, atol=1e-7)


def test_lion_k_l1_is_lion():
    a, b = _params(), _params()
    opt_a, opt_b = Lion(a, lr=1e-3, weight_decay=0.1), LionK(b, lr=1e-3, weight_decay=0.1, kappa="l1")
    _feed([a, b], [opt_a, opt_b], steps=5)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_lion_k_directions_per_kappa():
    """One step from a zero buffer: the direction is grad K((1 - beta1) g) for each kappa."""
    g = torch.randn(6, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    U, _, Vh = torch.linalg.svd(g, full_matrices=False)
    expected = {"l1": torch.sign(g), "l2": g / g.norm(), "nuclear": U @ Vh}
    for kappa, direction in expected.items():
        w = torch.zeros(6, 4, dtype=torch.float64, requires_grad=True)
        opt = LionK([{"params": [w], "role": "hidden"}], lr=1.0, kappa=kappa, ns="svd", ns_dtype="float64")
        w.grad = g.clone()
        opt.step()
        torch.testing.assert_close(-w.detach(), direction, rtol=1e-10, atol=1e-12, msg=kappa)


def test_lion_k_nuclear_gives_vectors_l2():
    torch.manual_seed(11)
    model = nn.Sequential(nn.Linear(4, 3))
    opt = steepest.for_model(model, "lion_k", kappa="nuclear")
    geometries = {g["role"]: g["geometry"] for g in opt.param_groups}
    assert geometries == {"head": "spectral", "vector": "frobenius"}


def _top_singular(w):
    return torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2).item()


@pytest.mark.parametrize("kappa,norm,tol", [
    ("l1", lambda w: w.abs().max().item(), 1e-6),
    ("l2", lambda w: w.norm().item(), 1e-6),
    ("nuclear", _top_singular, 1e-3),  # the polar factor is Newton-Schulz ("you": singular values <= 1)
])
def test_lion_k_with_weight_decay_enters_the_ball_of_radius_one_over_lambda(kappa, norm, tol):
    """From a start far outside (norm ~25x the radius) and with random gradients, after enough steps
    every parameter satisfies the constraint ||W|| <= 1/lambda of its kappa (arXiv 2310.05898).

    The gradients have a persistent part (twice one fixed random matrix, plus fresh noise), so the
    momentum keeps pointing one way and the iterates sit on the boundary: the bound binds, and a
    decay 10% too weak ends outside it. With pure noise the iterates wander at 0.56-0.72 of the
    radius (l2, nuclear), where a wrong decay would go unnoticed."""
    lam, lr = 2.0, 0.05

    def run(weight_decay):
        params = [p for p in _params(seed=4, scale=10.0) if p.ndim >= 2]
        opt = LionK([{"params": params, "role": "hidden"}], lr=lr, weight_decay=weight_decay, kappa=kappa)
        start = [norm(p.detach()) for p in params]
        _feed([params], [opt], steps=300, persistent=2.0)
        return start, [norm(p.detach()) for p in params]

    start, final = run(lam)
    assert min(start) > 5 / lam
    for n in final:
        assert n <= (1 + tol) / lam
    # ... and it is the active constraint, not a collapse to zero: the iterates sit on the boundary
    # (measured 0.998-1.0 of the radius).
    assert min(final) >= 0.98 / lam
    # The check has teeth: with a decay 10% weaker (radius 1.11/lambda), or none, it would fail.
    _, weaker = run(0.9 * lam)
    assert min(weaker) > 1.05 / lam
    _, free = run(0.0)
    assert min(free) > 5 / lam


def test_lion_k_nuclear_constraint_is_what_decay_sets():
    """Without weight decay nothing pulls the top singular value back in."""
    params = [p for p in _params(seed=4, scale=10.0) if p.ndim >= 2]
    opt = LionK([{"params": params, "role": "hidden"}], lr=0.05, weight_decay=0.0)
    _feed([params], [opt], steps=50)
    assert all(_top_singular(p.detach()) > 5.0 for p in params)


# -- Signum ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("nesterov", [False, True])
def test_signum_matches_its_formula(nesterov):
    """W <- (1 - lr wd) W - lr sign(M), M <- beta M + (1 - beta) g (or the Nesterov signal)."""
    params = _params(dtype=torch.float64)
    ref = [p.detach().clone() for p in params]
    bufs = [torch.zeros_like(p) for p in ref]
    lr, beta, wd = 0.01, 0.9, 0.1
    opt = Signum(params, lr=lr, momentum=beta, nesterov=nesterov, weight_decay=wd)
    gen = torch.Generator().manual_seed(1)
    for _ in range(6):
        grads = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        for w, m, g in zip(ref, bufs, grads):
            m.mul_(beta).add_(g, alpha=1 - beta)
            signal = (1 - beta) * g + beta * m if nesterov else m
            w.mul_(1 - lr * wd).sub_(lr * torch.sign(signal))
    for p, w in zip(params, ref):
        torch.testing.assert_close(p.detach(), w, rtol=1e-12, atol=1e-12)


def test_signum_without_momentum_is_sign_sgd():
    torch.manual_seed(12)
    p = torch.randn(4, 5, requires_grad=True)
    before = p.detach().clone()
    opt = Signum([p], lr=0.1, momentum=0.0)
    assert "momentum_buffer" not in opt.state[p]
    g = torch.randn(4, 5)
    p.grad = g
    opt.step()
    torch.testing.assert_close(p.detach(), before - 0.1 * torch.sign(g))
