"""steepest.MFAC against a dense reference: the window's empirical Fisher
``F = damp*I + (1/m) sum_i g_i g_i^T`` built as a d x d matrix and solved with torch.linalg.solve
(arXiv 2107.03356; optim.py of github.com/IST-DASLab/M-FAC). The conformance suite covers state_dict
round trips from the default state, bfloat16, schedulers, errors for bad arguments and zero gradients
from a fresh state; these tests cover the math and the window's bookkeeping."""
import copy
import re

import pytest
import torch
from torch import nn

import steepest
from steepest.optim.fisher_window import (insert_gradient, inverse_fisher_product, solve_window_system,
                                          window_products)
from steepest.optim.mfac import MFAC

from state_dict_checks import assert_state_dicts_equal


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()  # d = 35 + 18 = 53


def set_grads(model: nn.Module, seed: int) -> torch.Tensor:
    """Give ``model`` the gradient of a random regression loss; return it flattened."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 6, generator=g, dtype=torch.float64)
    y = torch.randn(8, 3, generator=g, dtype=torch.float64)
    model.zero_grad(set_to_none=True)
    ((model(x) - y) ** 2).mean().backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


def dense_direction(window: list[torch.Tensor], g: torch.Tensor, m: int, damp: float) -> torch.Tensor:
    """``(damp*I + (1/m) sum_i g_i g_i^T)^{-1} g`` over the gradients in the window (dense, float64)."""
    d = g.numel()
    fisher = damp * torch.eye(d, dtype=torch.float64)
    for gi in window:
        fisher += torch.outer(gi, gi) / m
    return torch.linalg.solve(fisher, g)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# -- the preconditioned direction ---------------------------------------------------------------
@pytest.mark.parametrize("m,steps", [(4, 3), (4, 9), (1, 3)], ids=["partial", "wrapped", "m1"])
def test_step_is_dense_inverse_fisher_times_gradient(m, steps):
    """One window over every parameter of the model (2-D and 1-D tensors concatenated): each step
    moves the parameters by exactly -lr * F^{-1} g, before the ring is full and after it wrapped."""
    model = make_model()
    lr, damp = 0.01, 1e-5
    opt = MFAC(model.named_parameters(), lr=lr, ngrads=m, damp=damp, momentum=0.0)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["role"] == ""  # one window, not split by shape
    history = []
    for t in range(steps):
        g = set_grads(model, seed=t)
        history.append(g)
        before = flat(model.parameters())
        opt.step()
        expected = -lr * dense_direction(history[-m:], g, m, damp)
        assert rel_err(flat(model.parameters()) - before, expected) < 1e-5, t
    state = opt.state[model[0].weight]
    assert state["step"].item() == steps
    assert state["grad_window"].shape == (m, 30)
    assert state["gram"].dtype == torch.float64


def test_groups_have_independent_windows():
    """Two groups with their own ngrads and damp: the update is block diagonal, each block the
    dense solve of the group's own window."""
    model = make_model()
    first, second = list(model[0].parameters()), list(model[2].parameters())
    lr = 0.02
    opt = MFAC([{"params": first, "ngrads": 3, "damp": 1e-4}, {"params": second, "ngrads": 5}], lr=lr, damp=1e-3, momentum=0.0)
    n1 = sum(p.numel() for p in first)
    hist1, hist2 = [], []
    for t in range(7):
        g = set_grads(model, seed=10 + t)
        hist1.append(g[:n1])
        hist2.append(g[n1:])
        b1, b2 = flat(first), flat(second)
        opt.step()
        assert rel_err(flat(first) - b1, -lr * dense_direction(hist1[-3:], g[:n1], 3, 1e-4)) < 1e-5, t
        assert rel_err(flat(second) - b2, -lr * dense_direction(hist2[-5:], g[n1:], 5, 1e-3)) < 1e-5, t


def test_momentum_weight_decay_and_maximize_match_dense_reference():
    """v <- mu v + (1 - mu) F^{-1} g ; W <- (1 - lr wd) W - lr v, with maximize negating g first."""
    model = make_model()
    lr, mu, wd, m, damp = 0.01, 0.9, 0.1, 3, 1e-4
    opt = MFAC(model.parameters(), lr=lr, momentum=mu, weight_decay=wd, ngrads=m, damp=damp, maximize=True)
    assert opt.describe_update(opt.param_groups[0]) == "mfac(m=3, damp=0.0001, momentum=0.9)"
    v = torch.zeros(53, dtype=torch.float64)
    history = []
    for t in range(6):
        g = -set_grads(model, seed=20 + t)  # maximize: the optimizer works with -grad
        history.append(g)
        before = flat(model.parameters())
        opt.step()
        v = mu * v + (1 - mu) * dense_direction(history[-m:], g, m, damp)
        torch.testing.assert_close(flat(model.parameters()), (1 - lr * wd) * before - lr * v, rtol=1e-9, atol=1e-12)


# -- the window's bookkeeping -----------------------------------------------------------------------
def test_zero_gradient_after_training_gives_exactly_zero_step():
    model = make_model()
    opt = MFAC(model.parameters(), lr=0.01, ngrads=3, momentum=0.0)
    for t in range(4):
        set_grads(model, seed=30 + t)
        opt.step()
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)
        assert all(torch.isfinite(v).all() for v in opt.state[p].values())
    assert opt.state[model[0].weight]["grad_window"][4 % 3].abs().sum() == 0  # the zero row went in


def _lost_message(name):
    return (f"MFAC: parameter {name!r} has no gradient at this step, but its group's gradient window holds "
            f"it (the window spans every parameter of the group, so the parameters with gradients must be the "
            f"same at every step); give it a zero gradient instead, or put it in a param group of its own")


def test_parameter_that_loses_or_gains_its_gradient_raises_and_changes_nothing():
    model = make_model()
    named = list(model.named_parameters())
    opt = MFAC([{"params": named[:1]}, {"params": named[1:]}], lr=0.01, ngrads=3)
    set_grads(model, seed=40)
    model[2].bias.grad = None  # never had one: its window stays empty, not moved
    opt.step()
    assert float(opt.state[model[2].bias]["step"]) == 0 and not opt.state[model[2].bias]["grad_window"].any()
    params = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(opt.state_dict()["state"])

    set_grads(model, seed=41)
    model[2].weight.grad = None  # group 1 loses a gradient; group 0 must not step either
    model[2].bias.grad = None
    with pytest.raises(ValueError, match=exact(_lost_message("2.weight"))):
        opt.step()
    set_grads(model, seed=42)  # group 1 gains one
    gained = ("MFAC: parameter '2.bias' has a gradient at this step, but it had none at its group's first step "
              "(the window spans every parameter of the group, so the parameters with gradients must be the "
              "same at every step); put it in a param group of its own")
    with pytest.raises(ValueError, match=exact(gained)):
        opt.step()
    for p, b in zip(model.parameters(), params):
        assert torch.equal(p, b)
    after = opt.state_dict()["state"]
    assert after.keys() == state.keys()
    assert all(torch.equal(after[i][k], state[i][k]) for i in state for k in state[i])

    # A group whose parameters all lack gradients is skipped and its window does not advance.
    set_grads(model, seed=43)
    model[0].weight.grad = model[2].bias.grad = None
    opt.step()
    assert opt.state[model[0].weight]["step"].item() == 1 and opt.state[model[2].weight]["step"].item() == 2
    assert torch.equal(model[0].weight, params[0])


def test_unnamed_parameter_in_error_message_and_ngrads_change():
    torch.manual_seed(10)
    w = nn.Parameter(torch.randn(4, 3))
    v = nn.Parameter(torch.randn(3))
    opt = MFAC([w, v], ngrads=2)
    w.grad, v.grad = torch.randn(4, 3), torch.randn(3)
    opt.step()
    v.grad = None
    with pytest.raises(ValueError, match=exact(_lost_message("param 1 of group 0 (shape (3,))"))):
        opt.step()
    v.grad = torch.randn(3)
    opt.param_groups[0]["ngrads"] = 4
    msg = ("MFAC: group 0 has ngrads=4 but its gradient window holds 2 gradients; ngrads cannot change after "
           "the group's first step")
    with pytest.raises(ValueError, match=exact(msg)):
        opt.step()


def test_state_dict_round_trip_after_the_ring_wrapped_continues_bit_identically():
    model = make_model()
    opt = MFAC(model.named_parameters(), lr=0.01, momentum=0.5, ngrads=2)
    for t in range(5):
        set_grads(model, seed=50 + t)
        opt.step()
    model2 = make_model(seed=1)
    model2.load_state_dict(model.state_dict())
    opt2 = MFAC(model2.named_parameters(), ngrads=7)  # everything comes from the state dict
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert opt2.param_groups[0]["ngrads"] == 2
    assert_state_dicts_equal(opt.state_dict(), opt2.state_dict())
    for t in range(5):  # past the next wrap of the 2-slot ring
        set_grads(model, seed=60 + t)
        for p, q in zip(model.parameters(), model2.parameters()):
            q.grad = p.grad.clone()
        opt.step()
        opt2.step()
        for p, q in zip(model.parameters(), model2.parameters()):
            assert torch.equal(p, q)
        assert_state_dicts_equal(opt.state_dict(), opt2.state_dict())
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
        for key, value in opt.state[p].items():
            assert value.dtype == opt2.state[q][key].dtype and torch.equal(value, opt2.state[q][key]), key


def test_for_model_gives_one_window_per_role_and_explain_names_it():
    model = make_model().float()
    opt = steepest.for_model(model, "mfac")
    assert sorted(g["role"] for g in opt.param_groups) == ["head", "hidden", "vector"]
    table = steepest.explain(opt)
    assert "mfac(m=32, damp=1e-05, momentum=0.5)" in table and "none" in table


# -- kernels -----------------------------------------------------------------------------------------
def test_kernels_match_dense_algebra():
    torch.manual_seed(0)
    m, damp, sizes = 5, 1e-3, (7, 4, 9)
    windows = [torch.zeros(m, n, dtype=torch.float64) for n in sizes]
    grams = [torch.zeros(m, m, dtype=torch.float64) for _ in sizes]
    for t in range(8):
        grads = [torch.randn(n, dtype=torch.float64) for n in sizes]
        rhs = insert_gradient(windows, grams, grads, t % m)
        full = torch.cat(windows, dim=1)
        torch.testing.assert_close(rhs, full @ torch.cat(grads), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sum(grams), full @ full.T, rtol=1e-12, atol=1e-12)
    xs = [torch.randn(n, dtype=torch.float64) for n in sizes]
    torch.testing.assert_close(window_products(windows, xs), full @ torch.cat(xs))
    fisher = damp * torch.eye(sum(sizes), dtype=torch.float64) + full.T @ full / m
    got = torch.cat(inverse_fisher_product(windows, sum(grams), xs, damp))
    torch.testing.assert_close(got, torch.linalg.solve(fisher, torch.cat(xs)), rtol=1e-8, atol=0)


def test_solve_falls_back_to_lu_when_rounding_makes_the_system_indefinite():
    gram = torch.diag(torch.tensor([2.0, 1.0, -0.5], dtype=torch.float64))  # m*damp*I + K indefinite
    rhs = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    y = solve_window_system(gram, rhs, damp=0.01)
    torch.testing.assert_close(y, rhs / torch.tensor([2.03, 1.03, -0.47], dtype=torch.float64))


def test_solve_survives_a_numerically_singular_window_of_repeated_large_gradients():
    """Full-batch training repeats nearly the same large gradient: ``K + m damp I`` is then singular
    in float64 (LU raises); the raised diagonal shift keeps the step finite and damped."""
    g = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 1e6
    window = g.repeat(4, 1)  # float32, four identical rows
    gram = window @ window.T
    m, damp = 4, 1e-5
    shifted = gram.double() + torch.eye(m, dtype=torch.float64) * (m * damp)
    assert int(torch.linalg.cholesky_ex(shifted)[1]) != 0  # the plain system is numerically singular
    rhs = torch.mv(window, g).double()
    y = solve_window_system(gram, rhs, damp=damp)
    assert torch.isfinite(y).all()
    # the solution of the minimally regularized system: each row takes a quarter, damped slightly
    torch.testing.assert_close(y, torch.full((4,), 0.25, dtype=torch.float64), rtol=1e-3, atol=0)
