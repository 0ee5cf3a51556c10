"""The digits-cnn and matrix-sensing benchmark tasks: data, models, roles, seeds, metrics, registry."""
from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from steepest.bench.tasks import BUILTIN_TASKS, make_task, task_from_spec
from steepest.bench.tasks.digits_cnn import DigitsCNN, DigitsNet, split_indices
from steepest.bench.tasks.matrix_sensing import MatrixSensing, MatrixSensingAsym
from steepest.roles import classify

SENSING = (MatrixSensing, MatrixSensingAsym)


def parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    pa, pb = parameters(a), parameters(b)
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def adam_steps(trial, steps: int, lr: float) -> None:
    opt = torch.optim.Adam(trial.model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        trial.train_loss().backward()
        opt.step()


@pytest.fixture(scope="module")
def digits() -> DigitsCNN:
    pytest.importorskip("sklearn")
    task = DigitsCNN()
    task.prepare()
    return task


# --- digits-cnn ---------------------------------------------------------------------------------

def test_digits_data_shapes_and_description(digits):
    x_train, y_train, x_test, y_test = digits.data
    assert x_train.shape == (1437, 1, 8, 8) and x_test.shape == (360, 1, 8, 8)
    assert y_train.shape == (1437,) and y_test.shape == (360,) and y_train.dtype == torch.int64
    assert x_train.dtype == torch.float32 and 0.0 <= x_train.min() and x_train.max() <= 1.0
    assert set(y_train.tolist()) == set(range(10)) == set(y_test.tolist())
    info = digits.prepare()
    json.dumps(info)
    assert info["n_train"] == 1437 and info["n_test"] == 360 and info["classes"] == 10
    assert info["image_shape"] == [1, 8, 8] and info["source"] == "sklearn.datasets.load_digits"
    assert "151,306 parameters" in digits.describe_model()


def test_digits_split_is_fixed_disjoint_and_complete(digits):
    train, test = split_indices(1797)
    assert len(train) == 1437 and len(test) == 360
    assert torch.equal(torch.sort(torch.cat([train, test])).values, torch.arange(1797))
    again = split_indices(1797)
    assert torch.equal(train, again[0]) and torch.equal(test, again[1])
    other = DigitsCNN()
    assert all(torch.equal(a, b) for a, b in zip(digits.data, other.data))


def test_digits_model_shapes_and_roles():
    model = DigitsNet()
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes == {"conv1.weight": (32, 1, 3, 3), "conv1.bias": (32,), "conv2.weight": (64, 32, 3, 3),
                      "conv2.bias": (64,), "fc.weight": (128, 1024), "fc.bias": (128,),
                      "head.weight": (10, 128), "head.bias": (10,)}
    assert model(torch.zeros(5, 1, 8, 8)).shape == (5, 10)
    assert classify(model) == {"conv1.weight": "conv", "conv1.bias": "vector", "conv2.weight": "conv",
                               "conv2.bias": "vector", "fc.weight": "hidden", "fc.bias": "vector",
                               "head.weight": "head", "head.bias": "vector"}


def test_digits_trial_is_a_function_of_its_seed(digits):
    state = torch.get_rng_state()
    a, b, c = digits.trial(3, 16), digits.trial(3, 16), digits.trial(4, 16)
    assert torch.equal(torch.get_rng_state(), state)  # building a trial leaves the global RNG alone
    assert same_parameters(a.model, b.model) and not same_parameters(a.model, c.model)
    losses = [[t.train_loss().item() for _ in range(3)] for t in (a, b, c)]
    assert losses[0] == losses[1] and losses[0] != losses[2]


def test_digits_evaluate_and_a_few_steps_lower_the_test_loss(digits):
    trial = digits.trial(0, 32)
    before = trial.evaluate()
    assert set(before) == {"test_loss", "test_accuracy"} and all(math.isfinite(v) for v in before.values())
    assert trial.model.training
    adam_steps(trial, 10, 1e-3)
    after = trial.evaluate()
    assert after["test_loss"] < before["test_loss"] and after["test_accuracy"] > before["test_accuracy"]


def test_digits_without_scikit_learn_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(RuntimeError, match="digits-cnn task needs scikit-learn.*pip install scikit-learn"):
        DigitsCNN().prepare()


def test_digits_takes_no_options():
    with pytest.raises(ValueError, match="digits-cnn: unknown option 'width'; this task takes no options"):
        DigitsCNN(width=3)


# --- matrix-sensing ---------------------------------------------------------------------------

@pytest.mark.parametrize("cls, names", [(MatrixSensing, ["X"]), (MatrixSensingAsym, ["F", "G"])])
def test_sensing_shapes_and_roles(cls, names):
    task = cls()
    trial = task.trial(0, 400)
    assert [n for n, _ in trial.model.named_parameters()] == names
    assert all(p.shape == (20, 8) for p in trial.model.parameters())
    assert trial.measurements.shape == (400, 400) and trial.targets.shape == (400,)
    assert trial.truth.shape == (20, 20) and trial.truth_factor.shape == (20, 2)
    assert trial.roles == {n: "hidden" for n in names}
    assert classify(trial.model, trial.roles) == trial.roles == classify(trial.model)
    assert torch.linalg.matrix_norm(trial.truth, ord=2).item() == pytest.approx(1.0, rel=1e-5)
    assert torch.linalg.matrix_rank(trial.truth).item() == 2
    json.dumps(task.prepare())
    assert f"{len(names) * 160:,} parameters" in task.describe_model()


def test_sensing_measurements_are_symmetric_only_for_the_symmetric_task():
    sym = MatrixSensing().trial(0, 1).measurements.reshape(400, 20, 20)
    asym = MatrixSensingAsym().trial(0, 1).measurements.reshape(400, 20, 20)
    assert torch.equal(sym, sym.transpose(1, 2)) and not torch.equal(asym, asym.transpose(1, 2))
    assert torch.allclose(sym, (asym + asym.transpose(1, 2)) / 2)  # the same raw Gaussians


@pytest.mark.parametrize("cls", SENSING)
def test_sensing_operator_is_near_isotropic_on_low_rank_matrices(cls):
    trial = cls().trial(0, 1)
    for seed in range(3):
        u = torch.randn(20, 2, generator=torch.Generator().manual_seed(seed))
        low_rank = u @ u.T
        energy = (trial.measurements @ low_rank.reshape(-1)).square().mean()
        assert energy.item() == pytest.approx(low_rank.square().sum().item(), rel=0.3)


@pytest.mark.parametrize("cls", SENSING)
def test_sensing_trial_is_a_function_of_its_seed(cls):
    task = cls()
    a, b, c = task.trial(5, 1), task.trial(5, 1), task.trial(6, 1)
    assert same_parameters(a.model, b.model) and not same_parameters(a.model, c.model)
    assert torch.equal(a.truth, b.truth) and not torch.equal(a.truth, c.truth)
    assert torch.equal(a.measurements, b.measurements) and a.train_loss().item() == b.train_loss().item()
    assert a.train_loss().item() != c.train_loss().item()


def test_sensing_tasks_share_the_instance_and_the_first_factor():
    sym, asym = MatrixSensing().trial(2, 1), MatrixSensingAsym().trial(2, 1)
    assert torch.equal(sym.truth, asym.truth) and torch.equal(sym.model.X, asym.model.F)
    assert not torch.equal(asym.model.F, asym.model.G)
    scale = torch.linalg.matrix_norm(sym.model.X).item() / math.sqrt(8)  # per column: about alpha
    assert 0.5e-2 < scale < 2e-2


@pytest.mark.parametrize("cls", SENSING)
def test_sensing_true_factor_has_zero_error_and_loss(cls):
    trial = cls().trial(1, 1)
    padded = torch.cat([trial.truth_factor, torch.zeros(20, 6)], dim=1)
    with torch.no_grad():
        for p in trial.model.parameters():
            p.copy_(padded)
    result = trial.evaluate()
    assert set(result) == {"rel_error", "train_loss"}
    assert result["rel_error"] < 1e-6 and result["train_loss"] < 1e-10


@pytest.mark.parametrize("cls", SENSING)
def test_sensing_metrics_at_init_and_after_a_few_adam_steps(cls):
    trial = cls().trial(0, 1)
    before = trial.evaluate()
    assert math.isfinite(before["train_loss"]) and 0.99 < before["rel_error"] <= 1.01  # M is tiny at init
    adam_steps(trial, 30, 1e-2)
    after = trial.evaluate()
    assert after["rel_error"] < 0.9 * before["rel_error"] and after["train_loss"] < before["train_loss"]


def test_sensing_options_and_their_errors():
    task = MatrixSensing(n=6, rank=1, width=3, measurements=50, scale=2.0, init_scale=0.1)
    trial = task.trial(0, 1)
    assert trial.model.X.shape == (6, 3) and trial.measurements.shape == (50, 36)
    assert torch.linalg.matrix_norm(trial.truth, ord=2).item() == pytest.approx(2.0, rel=1e-5)
    with pytest.raises(ValueError, match="matrix-sensing: unknown option 'k'; expected one of n, rank"):
        MatrixSensing(k=4)
    with pytest.raises(ValueError, match="rank must be between 1 and n = 5, got 6"):
        MatrixSensingAsym(n=5, rank=6)
    with pytest.raises(ValueError, match="init_scale must be > 0"):
        MatrixSensing(init_scale=0)


# --- registry and budgets ---------------------------------------------------------------------

@pytest.mark.parametrize("name, cls", [("digits-cnn", DigitsCNN), ("matrix-sensing", MatrixSensing),
                                       ("matrix-sensing-asym", MatrixSensingAsym)])
def test_registry_builds_and_round_trips(name, cls):
    assert name in BUILTIN_TASKS
    task = make_task(name)
    assert type(task) is cls and task.name == task.key == name
    again = task_from_spec(json.loads(json.dumps(task.spec())))
    assert type(again) is cls and again.spec() == task.spec()
    for which in ("smoke", "quick", "full"):
        assert task.budget(which).steps >= 1
    assert 10 <= len(task.budget("quick").eval_steps()) <= 25 and 10 <= len(task.budget("full").eval_steps()) <= 25


def test_sensing_spec_keeps_its_options():
    task = task_from_spec(MatrixSensingAsym(n=8, init_scale=1e-3).spec())
    assert isinstance(task, MatrixSensingAsym) and task.n == 8 and task.alpha == 1e-3


def test_task_attributes():
    assert (DigitsCNN.metric, DigitsCNN.extra_metrics, DigitsCNN.metric_log_scale) == (
        "test_loss", ("test_accuracy",), False)
    for cls in SENSING:
        assert (cls.metric, cls.extra_metrics, cls.metric_log_scale) == ("rel_error", ("train_loss",), True)
        assert cls.adamw_weight_decay == 0.0
        assert cls.budgets["quick"].final_lr_fraction == 0.01
