"""Langevin dynamics (the group key ``langevin_temperature``): the noise's statistics, seeding and
resume, validation, and every preset carrying it. The Langevin sphere study's smoke run is here too."""
from __future__ import annotations

import copy
import io
import math
import re

import pytest
import torch

from steepest.optim import PRESETS
from steepest.optim.langevin import langevin_seed

from state_dict_checks import assert_state_dicts_equal


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _groups(model, temperature=None, seed=None):
    group = {"params": list(model.parameters())}
    if temperature is not None:
        group["langevin_temperature"] = temperature
    if seed is not None:
        group["langevin_seed"] = seed
    return [group]


def _train(model, opt, steps, start=0):
    for i in range(start, start + steps):
        g = torch.Generator().manual_seed(100 + i)
        x, y = torch.randn(16, 6, generator=g), torch.randn(16, 3, generator=g)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def test_increment_variance_is_2_lr_temperature_on_a_zero_gradient():
    """With a zero gradient (and no momentum, no decay) one step moves W by the noise alone: its
    entries have mean 0 and variance 2 * lr * T. 4 steps of 100 x 100 entries: the sample variance
    of 40 000 normals is within 3 % (about 4 standard errors, sqrt(2/40000) = 0.7 %) of the truth."""
    lr, temperature = 0.01, 0.3
    w = torch.nn.Parameter(torch.zeros(100, 100, dtype=torch.float64))
    opt = PRESETS["muon"]([{"params": [w], "langevin_temperature": temperature}], lr=lr)
    increments = []
    for _ in range(4):
        before = w.detach().clone()
        w.grad = torch.zeros_like(w)
        opt.step()
        increments.append(w.detach() - before)
    d = torch.stack(increments)
    assert abs(d.mean().item()) < 4 * math.sqrt(2 * lr * temperature / d.numel())
    assert d.var().item() == pytest.approx(2 * lr * temperature, rel=0.03)
    # the steps' increments are independent: their correlation is at the 1/sqrt(n) level
    corr = torch.corrcoef(d.reshape(4, -1))[0, 1:]
    assert corr.abs().max().item() < 0.05
    assert int(opt.state[w]["langevin_step"]) == 4


def test_temperature_zero_is_bit_identical_to_no_key_and_adds_no_state():
    a, b = _model(), _model()
    opt_a = PRESETS["muon"](_groups(a), lr=0.02)
    opt_b = PRESETS["muon"](_groups(b, temperature=0.0, seed=5), lr=0.02)
    _train(a, opt_a, 3)
    _train(b, opt_b, 3)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert all("langevin_step" not in s for s in opt_b.state.values())


@pytest.mark.parametrize("name", ["muon", "scion", "lion"])
def test_resume_from_state_dict_is_bit_identical(name):
    """6 steps in one go equal 3 steps, a state_dict saved through torch.save and loaded with
    weights_only into a fresh optimizer (bound to a copy of the model), then 3 more."""
    kwargs = {"lr": 1e-3} if name == "lion" else {}
    whole = _model()
    opt = PRESETS[name](_groups(whole, temperature=0.05, seed=7), **kwargs)
    _train(whole, opt, 6)

    first = _model()
    opt1 = PRESETS[name](_groups(first, temperature=0.05, seed=7), **kwargs)
    _train(first, opt1, 3)
    buffer = io.BytesIO()
    torch.save(opt1.state_dict(), buffer)
    buffer.seek(0)
    resumed = copy.deepcopy(first)
    opt2 = PRESETS[name](_groups(resumed, temperature=0.05, seed=7), **kwargs)
    opt2.load_state_dict(torch.load(buffer, weights_only=True))
    for state in opt2.state.values():
        assert state["langevin_step"].dtype == torch.int64 and state["langevin_step"].device.type == "cpu"
    _train(resumed, opt2, 3, start=3)
    for p, q in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    assert_state_dicts_equal(opt.state_dict(), opt2.state_dict())


def test_noise_depends_on_the_seed_and_on_the_parameter():
    a, b, c = _model(), _model(), _model()
    for model, seed in ((a, 1), (b, 1), (c, 2)):
        _train(model, PRESETS["scion"](_groups(model, temperature=0.1, seed=seed)), 2)
    for p, q, r in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(p, q) and not torch.equal(p, r)
    # two parameters of one shape get different noise (their index enters the seed)
    w1, w2 = torch.nn.Parameter(torch.zeros(5, 5)), torch.nn.Parameter(torch.zeros(5, 5))
    opt = PRESETS["muon"]([{"params": [w1, w2], "langevin_temperature": 1.0}])
    w1.grad, w2.grad = torch.zeros(5, 5), torch.zeros(5, 5)
    opt.step()
    assert not torch.equal(w1, w2)
    assert len({langevin_seed(0, i, t, 0) for i in range(20) for t in range(20)}) == 400


def test_set_langevin_and_explain():
    model = _model()
    opt = PRESETS["muon"](_groups(model))
    opt.set_langevin(0.01, seed=3)
    assert all(g["langevin_temperature"] == 0.01 and g["langevin_seed"] == 3 for g in opt.param_groups)
    assert "Langevin noise (T=0.01, seed 3)" in opt.describe_update(opt.param_groups[0])
    with pytest.raises(ValueError, match=exact("Invalid langevin_temperature value: -1; expected a finite number >= 0")):
        opt.set_langevin(-1)
    assert opt.param_groups[0]["langevin_temperature"] == 0.01  # all or nothing
    opt.set_langevin(0.0)
    _train(model, opt, 1)
    assert all("langevin_step" not in s for s in opt.state.values())


@pytest.mark.parametrize("settings, error, message", [
    ({"langevin_temperature": -0.5}, ValueError, "Invalid langevin_temperature value: -0.5; expected a finite number >= 0"),
    ({"langevin_temperature": float("nan")}, ValueError,
     "Invalid langevin_temperature value: nan; expected a finite number >= 0"),
    ({"langevin_temperature": float("inf")}, ValueError,
     "Invalid langevin_temperature value: inf; expected a finite number >= 0"),
    ({"langevin_temperature": "hot"}, TypeError, "Invalid type for langevin_temperature: expected a real number, got str"),
    ({"langevin_seed": -1}, ValueError, "Invalid langevin_seed value: -1; expected an integer >= 0"),
    ({"langevin_seed": 1.5}, TypeError, "Invalid type for langevin_seed: expected int, got float"),
    ({"langevin_seed": True}, TypeError, "Invalid type for langevin_seed: expected int, got bool"),
])
def test_validation_messages(settings, error, message):
    with pytest.raises(error, match=exact(message)):
        PRESETS["muon"]([{"params": [torch.nn.Parameter(torch.zeros(3, 3))], **settings}])
    with pytest.raises(error, match=exact(message)):  # the engine's constructor keys
        from steepest.optim import GeometryOptimizer
        GeometryOptimizer([torch.nn.Parameter(torch.zeros(3, 3))], **settings)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_takes_the_key_and_moves_a_zero_gradient_parameter(name):
    """A zero gradient gives a zero step; with T > 0 every parameter moves by the noise alone."""
    model = _model()
    opt = PRESETS[name](_groups(model, temperature=0.01))
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for p, b in zip(model.parameters(), before):
        assert not torch.equal(p, b)
        assert torch.isfinite(p).all()


def test_bfloat16_parameters_take_float32_noise():
    w = torch.nn.Parameter(torch.zeros(64, 64, dtype=torch.bfloat16))
    opt = PRESETS["muon"]([{"params": [w], "langevin_temperature": 0.5}], lr=0.01)
    w.grad = torch.zeros_like(w)
    opt.step()
    assert w.dtype == torch.bfloat16 and w.float().var().item() == pytest.approx(0.01, rel=0.1)


def test_noise_comes_before_the_constraint_projection():
    """On the hypersphere constraint the iterate stays on the sphere after the noise."""
    w = torch.nn.Parameter(torch.nn.functional.normalize(torch.randn(1, 32), dim=1))
    opt = PRESETS["muon"]([{"params": [w], "langevin_temperature": 1.0, "geometry": "identity", "momentum": 0.0,
                            "constraint": "hypersphere"}], lr=0.01)
    w.grad = torch.zeros_like(w)
    opt.step()
    assert w.norm().item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_noise_is_reproducible_on_the_parameter_device():  # pragma: no cover - GPU only
    outs = []
    for _ in range(2):
        w = torch.nn.Parameter(torch.zeros(50, 50, device="cuda"))
        opt = PRESETS["muon"]([{"params": [w], "langevin_temperature": 0.5, "langevin_seed": 4}], lr=0.01)
        w.grad = torch.zeros_like(w)
        opt.step()
        outs.append(w.detach().clone())
    assert torch.equal(outs[0], outs[1]) and outs[0].var().item() == pytest.approx(0.01, rel=0.05)


def test_langevin_study_smoke(tmp_path):
    from steepest.bench import langevin_study

    results = langevin_study.run(tmp_path, quick=True, seeds=(0,), smoke=True)
    assert (tmp_path / "report.md").read_text(encoding="utf-8").startswith("# Langevin dynamics")
    assert (tmp_path / "results.json").exists()
    rows = results["rows"]
    assert {r["method"] for r in rows} == {"gd", "langevin", "langevin+swa"}
    for r in rows:
        assert -1.0 <= r["overlap"] <= 1.0


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_for_model_takes_the_keys_for_every_preset_and_overrides_win(name):
    import steepest

    model = _model()
    opt = steepest.for_model(model, name, langevin_temperature=0.01, langevin_seed=3,
                             overrides={"vector": {"langevin_temperature": 0.0}})
    for group in opt.param_groups:
        expected = 0.0 if group["role"] == "vector" else 0.01
        assert group["langevin_temperature"] == expected and group["langevin_seed"] == 3, group["role"]
    with pytest.raises(ValueError, match=r"^Invalid langevin_temperature value: -1"):
        steepest.for_model(_model(), name, langevin_temperature=-1.0)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_constructor_takes_the_keys(name):
    """The keys are common constructor keywords, like maximize: every group gets them, and invalid
    values fail with the engine's exact error."""
    import torch

    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.zeros(4))]
    opt = PRESETS[name](params, langevin_temperature=0.02, langevin_seed=5)
    assert all(g["langevin_temperature"] == 0.02 and g["langevin_seed"] == 5 for g in opt.param_groups)
    with pytest.raises(ValueError, match=r"^Invalid langevin_seed value: -1; expected an integer >= 0$"):
        PRESETS[name](params, langevin_seed=-1)
