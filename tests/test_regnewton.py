"""RegularizedNewton: the gradient-regularized Newton step of arXiv 2506.13710 (Algorithm 1) on the
exact Hessian (HVP + CG) and on M-FAC's Fisher window, checked against dense references in float64."""
from __future__ import annotations

import copy
import importlib.util
import pathlib
import re

import numpy as np

import pytest
import torch
import torch.nn.functional as F

import steepest
from steepest import RegularizedNewton

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


# -- the convex problem: l2-regularized binary logistic regression on digits (4x4-pooled, float64) --
@pytest.fixture(scope="module")
def digits():
    # the file load_digits() reads, read directly: importing scikit-learn takes seconds
    spec = importlib.util.find_spec("sklearn")
    if spec is None:
        pytest.skip("scikit-learn is not installed")
    path = pathlib.Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    data = np.loadtxt(path, delimiter=",")
    x, y = data[:, :-1], data[:, -1].astype(int)
    assert x.shape == (1797, 64)
    x = torch.tensor(x, dtype=F64).reshape(-1, 4, 2, 4, 2).mean((2, 4)).reshape(-1, 16)
    x = (x - x.mean(0)) / (x.std(0) + 1.0)
    t = torch.tensor(y >= 5, dtype=F64)
    return x, t


REG = 1e-3


def logistic(x, t, w, b):
    return F.binary_cross_entropy_with_logits(x @ w + b, t) + 0.5 * REG * (w @ w)


@pytest.fixture(scope="module")
def optimum(digits):
    """The minimizer by dense Newton (25 steps: the gradient is at rounding level)."""
    x, t = digits
    d = x.shape[1]

    def f(v):
        return logistic(x, t, v[:d], v[d])
    v = torch.zeros(d + 1, dtype=F64)
    for _ in range(25):
        v = v - torch.linalg.solve(torch.autograd.functional.hessian(f, v), torch.autograd.functional.jacobian(f, v))
    assert torch.autograd.functional.jacobian(f, v).norm() < 1e-14
    return v, f(v).item()


def start(d):
    return torch.zeros(d, dtype=F64, requires_grad=True), torch.zeros((), dtype=F64, requires_grad=True)


def test_hvp_search_reaches_the_optimum(digits, optimum):
    x, t = digits
    v_star, f_star = optimum
    w, b = start(x.shape[1])
    opt = RegularizedNewton([w, b], lr=1.0, hessian="hvp", search="loss")
    losses, gammas = [], []
    for _ in range(10):
        loss = opt.step(lambda: logistic(x, t, w, b))
        losses.append(loss.item())
        gammas.append(float(opt.state[w]["gamma"]))
        # p.grad: the gradient at the step's start; one step from ||g|| < 1e-5 lands at ~1e-10
        # (stepping on from there, trials fail by rounding and gamma halves, as in the paper's code)
        if torch.cat([w.grad, b.grad.reshape(1)]).norm() < 1e-5:
            break
    # the Newton regime: every first trial is accepted and gamma doubles (measured: 7 steps)
    assert gammas == [2.0 ** (k + 1) for k in range(len(gammas))] and len(gammas) <= 8, gammas
    assert all(b_ <= a for a, b_ in zip(losses, losses[1:])), losses  # monotone: every accepted step descends
    err = (torch.cat([w.detach(), b.detach().reshape(1)]) - v_star).norm().item()
    assert err < 1e-7, err  # measured 8.5e-9 (the last start gradient ~3.5e-6, the Hessian's smallest eigenvalue ~1e-3)
    assert logistic(x, t, w, b).item() - f_star < 1e-14


def test_fisher_search_reaches_the_optimum(digits, optimum):
    """The window of the last 32 full gradients spans the 17 dimensions; 100 steps reach ~2e-7."""
    x, t = digits
    v_star, f_star = optimum
    w, b = start(x.shape[1])
    opt = RegularizedNewton([w, b], lr=1.0, hessian="fisher", search="loss")

    def closure():
        opt.zero_grad()
        loss = logistic(x, t, w, b)
        loss.backward()
        return loss
    losses = [opt.step(closure).item() for _ in range(100)]
    assert all(b_ <= a for a, b_ in zip(losses, losses[1:]))
    err = (torch.cat([w.detach(), b.detach().reshape(1)]) - v_star).norm().item()
    assert err < 1e-5, err
    assert logistic(x, t, w, b).item() - f_star < 1e-10


# -- one step against a dense reference ------------------------------------------------------------
def test_hvp_step_equals_the_dense_regularized_newton_step(digits):
    x, t = digits
    d = x.shape[1]
    gen = torch.Generator().manual_seed(0)
    w0, b0 = 0.3 * torch.randn(d, generator=gen, dtype=F64), torch.tensor(0.2, dtype=F64)
    w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    opt = RegularizedNewton([w, b], lr=1.0, hessian="hvp", gamma=0.7, cg_iters=50, cg_tol=1e-14)
    opt.step(lambda: logistic(x, t, w, b))

    def f(v):
        return logistic(x, t, v[:d], v[d])
    v0 = torch.cat([w0, b0.reshape(1)])
    g = torch.autograd.functional.jacobian(f, v0)
    h = torch.autograd.functional.hessian(f, v0)
    lam = g.norm() / (0.7 + 1e-8)
    expected = v0 - torch.linalg.solve(h + lam * torch.eye(d + 1, dtype=F64), g)
    got = torch.cat([w.detach(), b.detach().reshape(1)])
    assert (got - expected).norm() <= 1e-8 * (expected - v0).norm()
    assert float(opt.state[w]["gamma"]) == 0.7  # search="none" keeps gamma


def test_fisher_step_equals_the_dense_window_solve():
    """Without a closure: (H + lambda I)^{-1} g with H = (1/m) sum of the last m gradients' outer
    products (ring of m = 2, so the oldest is overwritten), lambda = ||g|| / (gamma + 1e-8), over
    both tensors of the group together."""
    gen = torch.Generator().manual_seed(1)
    a, c = torch.zeros(3, 2, dtype=F64, requires_grad=True), torch.zeros(4, dtype=F64, requires_grad=True)
    opt = RegularizedNewton([a, c], ngrads=2, gamma=0.5, lr=0.3, weight_decay=0.1)
    rows = []
    for _ in range(4):
        g = torch.randn(10, generator=gen, dtype=F64)
        a.grad, c.grad = g[:6].view(3, 2).clone(), g[6:].clone()
        before = torch.cat([a.detach().reshape(-1), c.detach()])
        opt.step()
        rows.append(g)
        window = torch.stack(rows[-2:])
        lam = g.norm() / (0.5 + 1e-8)
        direction = torch.linalg.solve(window.T @ window / 2 + lam * torch.eye(10, dtype=F64), g)
        expected = (1 - 0.3 * 0.1) * before - 0.3 * direction
        got = torch.cat([a.detach().reshape(-1), c.detach()])
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


# -- the search follows Algorithm 1 --------------------------------------------------------------
def algorithm1(f, x, gamma, steps, max_trials=40, gamma_min=1e-9):
    """A plain transcript of the paper's Algorithm 1 with the dense Hessian (B = I): the iterates,
    the gamma after each step and each step's accept/reject sequence."""
    xs, gammas, decisions = [], [], []
    for _ in range(steps):
        fx = f(x)
        g = torch.autograd.functional.jacobian(f, x)
        h = torch.autograd.functional.hessian(f, x)
        seq = []
        for _ in range(max_trials):
            lam = g.norm() / (gamma + 1e-8)
            trial = x - torch.linalg.solve(h + lam * torch.eye(len(x), dtype=F64), g)
            ok = bool(fx - f(trial) >= torch.autograd.functional.jacobian(f, trial).norm() ** 2 / (8 * lam))
            seq.append(ok)
            gamma = max(2 * gamma, gamma_min) if ok else gamma / 2
            if ok:
                break
        x = trial
        xs.append(x)
        gammas.append(gamma)
        decisions.append(seq)
    return xs, gammas, decisions


def run_hvp_search(f, x0, gamma, steps):
    x = x0.clone().requires_grad_()
    opt = RegularizedNewton([x], lr=1.0, hessian="hvp", search="loss", gamma=gamma, cg_iters=50, cg_tol=1e-15)
    calls = []
    xs, gammas = [], []
    for _ in range(steps):
        calls.append(0)

        def closure():
            calls[-1] += 1
            return f(x)
        opt.step(closure)
        xs.append(x.detach().clone())
        gammas.append(float(opt.state[x]["gamma"]))
    return xs, gammas, calls


def test_quadratic_with_exact_hessian_accepts_every_first_trial():
    """On a quadratic with H exact, f(x) - f(x+) >= ||g+||^2 / (8 lambda) always holds (algebra in
    docs/algorithms/regnewton.md), so gamma doubles at every step and each step costs one trial."""
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(6, 6, generator=gen, dtype=F64)
    a, b = q @ q.T + 0.1 * torch.eye(6, dtype=F64), torch.randn(6, generator=gen, dtype=F64)

    def f(x):
        return 0.5 * x @ a @ x - b @ x
    xs, gammas, calls = run_hvp_search(f, torch.zeros(6, dtype=F64), 1.0, 5)
    assert gammas == [2.0, 4.0, 8.0, 16.0, 32.0]
    assert calls == [2] * 5  # the start point and one trial
    ref_xs, ref_gammas, decisions = algorithm1(f, torch.zeros(6, dtype=F64), 1.0, 5)
    assert decisions == [[True]] * 5 and ref_gammas == gammas
    for got, want in zip(xs, ref_xs):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_search_rejects_and_accepts_as_the_paper():
    """A non-quadratic (a least-squares term plus mu/4 ||x||^4) started with a large gamma: the
    first trials fail and gamma halves until one passes, exactly as the transcript of Algorithm 1."""
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(8, 5, generator=gen, dtype=F64), torch.randn(8, generator=gen, dtype=F64)

    def f(x):
        return 0.5 * (a @ x - b).square().sum() + 0.25 * 2.0 * (x @ x) ** 2
    x0 = 2.0 * torch.ones(5, dtype=F64)
    xs, gammas, calls = run_hvp_search(f, x0, 64.0, 6)
    ref_xs, ref_gammas, decisions = algorithm1(f, x0, 64.0, 6)
    assert any(False in seq for seq in decisions), decisions  # the case exercises rejections
    assert gammas == ref_gammas
    assert calls == [1 + len(seq) for seq in decisions]
    for got, want in zip(xs, ref_xs):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


# -- closures and errors -------------------------------------------------------------------------
def test_closure_is_required_where_the_method_needs_one():
    p = torch.zeros(3, requires_grad=True)
    p.grad = torch.ones(3)
    msg = ("RegularizedNewton with hessian='fisher' and search='loss' needs a closure that re-evaluates "
           "the loss: call optimizer.step(closure)")
    with pytest.raises(RuntimeError, match="^" + re.escape(msg) + "$"):
        RegularizedNewton([p], search="loss").step()
    with pytest.raises(RuntimeError, match=re.escape("hessian='hvp' and search='none' needs a closure")):
        RegularizedNewton([p], hessian="hvp").step()
    assert torch.equal(p.detach(), torch.zeros(3))


def test_hvp_closure_that_calls_backward_raises_a_clear_error():
    p = torch.ones(3, requires_grad=True)
    opt = RegularizedNewton([p], hessian="hvp")

    def closure():
        loss = (p.exp()).sum()
        loss.backward()
        return loss
    with pytest.raises(RuntimeError, match="must return the loss without calling backward"):
        opt.step(closure)


def test_groups_must_agree_on_the_closure_path():
    p, q = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    opt = RegularizedNewton([{"params": [p]}, {"params": [q], "search": "loss"}])
    with pytest.raises(ValueError, match=re.escape("every param group must have the same search; got 'loss', 'none'")):
        opt.step(lambda: (p.square().sum() + q.square().sum()))


def test_registry_and_factory():
    assert steepest.optim.preset_class("regnewton") is RegularizedNewton
    model = torch.nn.Linear(3, 2)
    opt = steepest.for_model(model, "regnewton", lr=1.0, hessian="hvp", search="loss")
    assert {g["hessian"] for g in opt.param_groups} == {"hvp"}


# -- state_dict ------------------------------------------------------------------------------------
@pytest.mark.parametrize("hessian", ["fisher", "hvp"])
def test_state_dict_round_trip_continues_identically(digits, hessian):
    x, t = digits
    d = x.shape[1]

    def make():
        w, b = start(d)
        opt = RegularizedNewton([w, b], lr=1.0, hessian=hessian, search="loss", ngrads=4, gamma=8.0)

        def closure():
            loss = logistic(x, t, w, b)
            if hessian == "fisher":
                opt.zero_grad()
                loss.backward()
            return loss
        return w, b, opt, closure
    w1, b1, opt1, closure1 = make()
    for _ in range(3):
        opt1.step(closure1)
    saved = copy.deepcopy(opt1.state_dict())
    w2, b2, opt2, closure2 = make()
    with torch.no_grad():
        w2.copy_(w1)
        b2.copy_(b1)
    opt2.load_state_dict(saved)
    assert float(opt2.state[w2]["gamma"]) == float(opt1.state[w1]["gamma"]) != 8.0
    for _ in range(3):
        opt1.step(closure1)
        opt2.step(closure2)
        assert torch.equal(w1, w2) and torch.equal(b1, b2)
    assert float(opt2.state[w2]["gamma"]) == float(opt1.state[w1]["gamma"])


@pytest.mark.parametrize("keys", [{"search": "loss"}, {"hessian": "hvp"}])
def test_closure_path_refuses_langevin_and_constraints(keys):
    w = torch.nn.Parameter(torch.randn(4, 3))
    message = ("RegularizedNewton: langevin_temperature and constraint need search='none' and hessian='fisher' "
               "(the closure path applies the accepted trial point as it is)")
    with pytest.raises(ValueError, match=re.escape(message)):
        RegularizedNewton([{"params": [w], "langevin_temperature": 0.1, **keys}])
    with pytest.raises(ValueError, match=re.escape(message)):
        RegularizedNewton([{"params": [w], "constraint": "hypersphere", **keys}])
    RegularizedNewton([{"params": [w], "langevin_temperature": 0.1}])  # the plain Fisher step applies both


def test_window_errors_name_the_preset():
    """The window checks are shared with M-FAC; their messages name the optimizer that raised them."""
    w, b = torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.zeros(3))
    opt = RegularizedNewton([w, b], lr=0.1, ngrads=2)
    w.grad, b.grad = torch.randn(3, 2), torch.randn(3)
    opt.step()
    b.grad = None
    message = ("RegularizedNewton: parameter 'param 1 of group 0 (shape (3,))' has no gradient at this step, "
               "but its group's gradient window holds it (the window spans every parameter of the group, so the "
               "parameters with gradients must be the same at every step); give it a zero gradient instead, or "
               "put it in a param group of its own")
    with pytest.raises(ValueError, match=re.escape(message)):
        opt.step()
