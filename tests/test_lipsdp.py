"""LipSDP certificates (steepest.lipschitz) against known constants, lower bounds and the product bound.

A certificate must lie between what the network does (the exact constant where it is known, else a
secant lower bound found by gradient ascent on the input Jacobian's spectral norm) and the product
of the layers' bounds; and it must stay above the true constant even when the solver is inaccurate.
"""
from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import torch
from torch import nn

cp = pytest.importorskip("cvxpy")

from steepest.lipschitz import gelu_max_slope, lipschitz_bound  # noqa: E402
from steepest.lipschitz import (DEFAULT_MAX_NEURONS, GroupSort, MaxMin, certify, extract_network,  # noqa: E402
                             jacobian_lower_bound, lipsdp)

F64 = torch.float64


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


def mlp(seed: int, act, width: int = 12, depth: int = 3, din: int = 6, dout: int = 3) -> nn.Sequential:
    torch.manual_seed(seed)
    dims = [din] + [width] * depth + [dout]
    mods: list[nn.Module] = []
    for i in range(len(dims) - 1):
        mods.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            mods.append(act())
    return nn.Sequential(*mods)


def orthogonal(n: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, n, dtype=F64, generator=torch.Generator().manual_seed(seed)))[0]


def test_one_linear_layer_is_its_spectral_norm():
    w = torch.randn(5, 7, dtype=F64, generator=torch.Generator().manual_seed(0))
    sigma = float(torch.linalg.matrix_norm(w, ord=2))
    result = lipsdp([w])
    assert result.neurons == 0 and result.status in ("optimal", "optimal_inaccurate")
    assert sigma <= result.bound == pytest.approx(sigma, rel=1e-4)
    lin = nn.Linear(7, 5)
    assert certify(lin) == pytest.approx(float(torch.linalg.matrix_norm(lin.weight.detach().double(), ord=2)), rel=1e-4)


@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh])
def test_rotated_diagonal_network_has_known_constant(act):
    # f(x) = R D2 phi(D1 Q x), Q, R orthogonal: the coordinates of Q x do not interact, so
    # L = max_i d2_i d1_i = 3 (attained along a coordinate where phi has slope 1), while the
    # product bound is max(d1) max(d2) = 9.
    d1, d2 = torch.tensor([3.0, 1.0, 2.0, 1.0], dtype=F64), torch.tensor([1.0, 3.0, 1.0, 1.5], dtype=F64)
    model = nn.Sequential(nn.Linear(4, 4, bias=False), act(), nn.Linear(4, 4, bias=False)).double()
    with torch.no_grad():
        model[0].weight.copy_(d1[:, None] * orthogonal(4, 1))
        model[2].weight.copy_(orthogonal(4, 2) * d2)
    assert lipschitz_bound(model) == pytest.approx(9.0)
    neuron = lipsdp(extract_network(model).weights)
    assert 3.0 <= neuron.bound == pytest.approx(3.0, rel=1e-4)  # the neuron form is exact here
    layer = certify(model, form="layer")
    assert 4.0 < layer <= 9.0  # one multiplier per layer cannot match both neurons (measured 5.0)


def test_maxmin_and_groupsort_between_orthogonal_maps_certify_one():
    x = torch.tensor([[1.0, 2.0, -1.0, -3.0]])
    assert MaxMin()(x).tolist() == [[2.0, 1.0, -1.0, -3.0]]
    assert GroupSort(4)(x).tolist() == [[2.0, 1.0, -1.0, -3.0]]
    q1, q2 = orthogonal(8, 3), orthogonal(8, 4)
    for act in (MaxMin(), GroupSort(4)):  # locally a permutation: L = 1 exactly
        model = nn.Sequential(nn.Linear(8, 8), act, nn.Linear(8, 8)).double()
        with torch.no_grad():
            model[0].weight.copy_(q1)
            model[2].weight.copy_(q2)
        for form in ("neuron", "layer"):
            assert 1.0 <= certify(model, form=form) == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("act", [nn.Tanh, nn.GELU, MaxMin])
def test_random_mlps_between_lower_bound_and_product(act):
    # Measured on these seeds (width 12, three hidden layers, PyTorch's default init):
    # neuron/product = 0.32 0.32 0.44 0.31 0.33 (Tanh), 0.35 0.34 0.46 0.34 0.35 (GELU),
    # 0.60 0.45 0.55 0.41 0.47 (MaxMin); layer/product <= 0.79 throughout.
    margin = 0.7 if act is MaxMin else 0.5
    for seed in range(5):
        model = mlp(seed, act)
        net = extract_network(model)
        if act is MaxMin:  # lipschitz_bound has no MaxMin rule; MaxMin is 1-Lipschitz
            product = float(np.prod([np.linalg.norm(w, 2) for w in net.weights]))
        else:
            product = lipschitz_bound(model)
        neuron = lipsdp(net.weights, net.alpha, net.beta, groups=net.groups)
        layer = lipsdp(net.weights, net.alpha, net.beta, groups=net.groups, form="layer")
        lower = jacobian_lower_bound(model, 6, restarts=16, steps=40, scale=3.0, lr=0.1, seed=seed)
        assert 0 < lower <= neuron.bound <= layer.bound * (1 + 1e-6)
        assert layer.bound <= product
        assert neuron.bound <= margin * product
        assert neuron.neurons == 36 and neuron.bound >= neuron.solver_bound


def test_inaccurate_solve_is_inflated_to_a_valid_bound():
    # A loose SCS solve stops at a slightly infeasible point (measured: solver_bound 2.993 < 3,
    # largest LMI eigenvalue 4.7e-4); the eigenvalue check raises the certificate above the truth, 3.
    w0, w1 = np.diag([3.0, 1.0]), np.diag([1.0, 3.0])
    loose = lipsdp([w0, w1], solver="SCS", solver_options={"eps_abs": 1e-2, "eps_rel": 1e-2})
    assert loose.bound >= 3.0 and loose.bound >= loose.solver_bound
    assert loose.max_eigenvalue <= 0 or loose.bound > loose.solver_bound
    stopped = lipsdp([w0, w1], solver="SCS", solver_options={"max_iters": 5})
    assert stopped.bound >= 3.0


def test_extract_network_maps_modules_to_slopes():
    model = nn.Sequential(nn.ReLU(), nn.Linear(4, 5), nn.Identity(), nn.Linear(5, 6), nn.Sigmoid(),
                          nn.Sequential(nn.LeakyReLU(0.1), nn.Linear(6, 6)), nn.GELU(), nn.Linear(6, 2), nn.Tanh())
    net = extract_network(model)
    assert [w.shape for w in net.weights] == [(4, 4), (6, 4), (6, 6), (6, 6), (2, 6), (2, 2)]
    w = [m.weight.detach().double().numpy() for m in model.modules() if isinstance(m, nn.Linear)]
    assert np.allclose(net.weights[1], w[1] @ w[0]) and np.array_equal(net.weights[0], np.eye(4))
    g = gelu_max_slope()
    assert net.alpha == pytest.approx((0.0, 0.0, 0.1, 1 - g, 0.0), abs=1e-9)
    assert net.beta == pytest.approx((1.0, 0.25, 1.0, g, 1.0), abs=1e-9)
    assert net.groups == (None,) * 5
    assert 0 < jacobian_lower_bound(model, 4, restarts=8, steps=5) <= certify(model)
    assert model[1].weight.dtype == torch.float32  # the helper works on a float64 copy


def test_product_method_is_lipschitz_bound():
    model = mlp(0, nn.ReLU)
    assert certify(model, method="product") == lipschitz_bound(model)
    with pytest.raises(ValueError, match=exact("certify: unknown method 'exact'; expected one of: lipsdp, product")):
        certify(model, method="exact")


def test_size_limit_message():
    model = mlp(0, nn.ReLU, width=8, depth=2)
    with pytest.raises(ValueError, match=exact(
            "lipsdp: the network has 16 hidden neurons, more than max_neurons=10; pass max_neurons=16 (or more) to "
            "solve it anyway (the LMI has 22 rows and its cost grows about like the cube of the neuron count)")):
        certify(model, max_neurons=10)
    assert certify(model, max_neurons=16) > 0
    assert DEFAULT_MAX_NEURONS == 200


def test_unsupported_module_message():
    with pytest.raises(TypeError, match=exact(
            "certify: unsupported module Softmax; supported: Linear, ReLU, Tanh, Sigmoid, GELU, LeakyReLU, "
            "Identity, GroupSort, MaxMin (in nn.Sequential)")):
        certify(nn.Sequential(nn.Linear(3, 3), nn.Softmax(dim=-1), nn.Linear(3, 1)))


def test_missing_cvxpy_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "cvxpy", None)  # makes `import cvxpy` raise ImportError
    with pytest.raises(ImportError, match=exact(
            "lipsdp needs cvxpy, which is not installed: pip install 'steepest[sdp]'")):
        lipsdp([np.eye(2)])


def test_failed_solve_raises_runtime_error(monkeypatch):
    def infeasible(self, *args, **kwargs):
        self._status = "infeasible"
    monkeypatch.setattr(cp.Problem, "solve", infeasible)
    message = "lipsdp: the solver SCS returned status 'infeasible'; no certificate"
    with pytest.raises(RuntimeError, match=exact(message)):
        lipsdp([np.eye(2), np.eye(2)], solver="SCS")


def test_invalid_arguments():
    with pytest.raises(ValueError, match=exact("lipsdp: unknown form 'network'; expected one of: neuron, layer")):
        lipsdp([np.eye(2)], form="network")
    with pytest.raises(ValueError, match=exact("lipsdp: weights[1] has 3 inputs but weights[0] has 2 outputs")):
        lipsdp([np.eye(2), np.ones((1, 3))])
    with pytest.raises(ValueError, match=exact(
            "lipsdp: invalid slope bounds [1.0, 0.0] for hidden layer 1; expected finite alpha <= beta")):
        lipsdp([np.eye(2), np.eye(2)], alpha=1.0, beta=0.0)
    assert lipsdp([np.eye(2), np.zeros((1, 2))]).bound == 0.0  # a constant network
