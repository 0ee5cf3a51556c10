"""``steepest.create`` / ``steepest.names``: optimizers chosen by a string, as config-driven trainers do."""
from __future__ import annotations

import doctest

import pytest
import torch

import steepest
from steepest import factory


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))


def test_names_are_the_registered_presets():
    assert steepest.names() == list(steepest.PRESETS)
    assert "lanton" in steepest.names() and "muon" in steepest.names()


@pytest.mark.parametrize("name", list(steepest.PRESETS))
def test_every_name_builds_the_same_optimizer_as_for_model(name):
    model = _model()
    made, direct = steepest.create(name, model), steepest.for_model(model, name)
    assert type(made) is type(direct) is steepest.PRESETS[name]
    assert [g["role"] for g in made.param_groups] == [g["role"] for g in direct.param_groups]
    assert [g["lr"] for g in made.param_groups] == [g["lr"] for g in direct.param_groups]


@pytest.mark.parametrize("spelling, preset", [("LANTON", "lanton"), ("Lion-K", "lion_k"), (" hybrid-auon", "hybrid_auon")])
def test_names_are_case_and_dash_insensitive(spelling, preset):
    assert type(steepest.create(spelling, _model())) is steepest.PRESETS[preset]


def test_keywords_pass_through_and_parameters_work_too():
    model = _model()
    opt = steepest.create("muon", model, lr=0.05, overrides={"head": {"lr": 1e-3}})
    assert {g["role"]: g["lr"] for g in opt.param_groups}["head"] == 1e-3
    plain = steepest.create("signum", model.parameters(), lr=1e-3)
    assert type(plain) is steepest.Signum and plain.param_groups[0]["lr"] == 1e-3


def test_unknown_names_and_types_raise_exact_errors():
    with pytest.raises(ValueError, match=r"^unknown optimizer 'adam'; choose from muon, scion, auon, hybrid_auon, "):
        steepest.create("adam", _model())
    with pytest.raises(TypeError, match=r"^optimizer name must be a string, got int$"):
        steepest.create(3, _model())


def test_docstring_example_runs():
    result = doctest.testmod(factory, verbose=False)
    assert result.attempted >= 1 and result.failed == 0
