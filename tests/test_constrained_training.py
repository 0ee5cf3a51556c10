"""Training with stage-4 constraints: a digits MLP whose hidden matrices stay in the spectral ball at
every step (the constrained presets of arXiv 2507.13338), and the constraint keys of the engine."""
from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

import steepest
from steepest.optim import Muon

from state_dict_checks import assert_state_dicts_equal

pytest.importorskip("sklearn")
from steepest.bench.tasks.digits_cnn import load_digits_split  # noqa: E402


def exact(message: str) -> str:
    return f"^{re.escape(message)}$"


def sigma_1(w: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(w.detach().double(), ord=2).item()


@pytest.mark.parametrize("constraint", ["spectral_hardcap", "spectral_softcap"])
def test_digits_mlp_trains_with_every_hidden_matrix_in_the_spectral_ball(constraint):
    x_train, y_train, x_test, y_test = load_digits_split()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                          nn.Linear(128, 10))
    bound = 1.0
    opt = steepest.for_model(model, "muon", lr=0.02, adamw_lr=3e-3, constraints={"hidden": (constraint, bound)})
    hidden = [model[1].weight, model[3].weight]
    assert sigma_1(hidden[0]) > 1.3  # the default initialization starts outside the ball
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        idx = torch.randint(0, len(y_train), (128,), generator=gen)
        loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        assert max(sigma_1(w) for w in hidden) <= bound * (1 + 1e-3)
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    assert accuracy >= 0.95  # measured 0.972 (hard cap), 0.969 (soft cap); unconstrained 0.983
    # the whole network's Lipschitz bound: the head's spectral norm times two matrices of norm <= 1
    assert steepest.lipschitz_bound(model[1:]) <= sigma_1(model[5].weight) * (1 + 1e-3) ** 2


def test_constraint_keys_are_validated_and_explained():
    torch.manual_seed(10)
    w = nn.Parameter(torch.randn(8, 4))
    opt = Muon([{"params": [("w", w)], "role": "hidden", "constraint": "stiefel"}])
    assert "+ stiefel(1)" in steepest.explain(opt)
    with pytest.raises(ValueError, match="Unknown constraint 'cap'; expected one of: spectral_normalize"):
        Muon([{"params": [w], "role": "hidden", "constraint": "cap"}])
    with pytest.raises(ValueError, match=exact("Invalid constraint_bound value: 0.0; expected a positive number")):
        Muon([{"params": [w], "role": "hidden", "constraint": "spectral_hardcap", "constraint_bound": 0.0}])
    with pytest.raises(ValueError, match=exact("Constraint 'stiefel' needs parameters with at least 2 dimensions, got "
                                               "shape (4,) for parameter 'b'")):
        Muon([{"params": [("b", nn.Parameter(torch.zeros(4)))], "role": "hidden", "geometry": "rms",
               "constraint": "stiefel"}])
    with pytest.raises(TypeError, match="constraints= values must be a constraint name"):
        steepest.for_model(nn.Linear(4, 4), "muon", constraints={"hidden": 3})


def test_a_stiefel_group_stays_orthonormal_and_checkpoints_round_trip():
    torch.manual_seed(1)
    w = nn.Parameter(torch.randn(16, 8))
    opt = Muon([{"params": [("w", w)], "role": "hidden", "constraint": "stiefel"}], lr=0.05)
    for step in range(5):
        w.grad = torch.randn(16, 8)
        opt.step()
        assert torch.allclose(w.T @ w, torch.eye(8), atol=1e-5)
    state = copy.deepcopy(opt.state_dict())
    assert state["param_groups"][0]["constraint"] == "stiefel"
    w2 = nn.Parameter(w.detach().clone())
    again = Muon([{"params": [("w", w2)], "role": "hidden"}], lr=0.05)
    again.load_state_dict(state)
    assert again.param_groups[0]["constraint"] == "stiefel"
    assert torch.equal(w2, w)
    assert_state_dicts_equal(again.state_dict(), opt.state_dict())
    # the resumed run continues exactly as the uninterrupted one, on the manifold
    gen = torch.Generator().manual_seed(2)
    for step in range(4):
        grad = torch.randn(16, 8, generator=gen)
        w.grad, w2.grad = grad.clone(), grad.clone()
        opt.step()
        again.step()
        assert torch.equal(w2, w)
        assert_state_dicts_equal(again.state_dict(), opt.state_dict())
        assert torch.allclose(w2.T @ w2, torch.eye(8), atol=1e-5)
