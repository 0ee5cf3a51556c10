"""Weights stored ``(in, out)`` (GPT-2's ``Conv1D``): ``for_model`` gives them ``layout="in_out"`` and
every preset then updates them exactly as it updates the same layer stored ``(out, in)``."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import steepest
from steepest.roles import in_out_weights

from state_dict_checks import assert_state_dicts_equal


class Conv1D(nn.Module):
    """The layout of Hugging Face's ``transformers.pytorch_utils.Conv1D``: ``y = x W + b``, ``W`` (nx, nf)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf, self.nx = nf, nx
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return x @ self.weight + self.bias


class Net(nn.Module):
    def __init__(self, stored_in_out: bool, d: int = 8, hidden: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, d)
        if stored_in_out:
            self.fc, self.proj = Conv1D(hidden, d), Conv1D(d, hidden)
        else:
            self.fc, self.proj = nn.Linear(d, hidden), nn.Linear(hidden, d)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens):
        h = self.embed(tokens)
        return self.head(h + self.proj(torch.relu(self.fc(h))))


def _pair():
    torch.manual_seed(0)
    linear = Net(stored_in_out=False)
    stored = Net(stored_in_out=True)
    with torch.no_grad():
        stored.embed.weight.copy_(linear.embed.weight)
        stored.head.load_state_dict(linear.head.state_dict())
        for name in ("fc", "proj"):
            getattr(stored, name).weight.copy_(getattr(linear, name).weight.T)
            getattr(stored, name).bias.copy_(getattr(linear, name).bias)
    return linear, stored


def test_conv1d_weights_are_found_and_grouped_with_layout_in_out():
    _, stored = _pair()
    assert in_out_weights(stored) == {"fc.weight", "proj.weight"}
    opt = steepest.for_model(stored, "muon")
    layouts = {n: g["layout"] for g in opt.param_groups for n in g["param_names"]}
    assert layouts["fc.weight"] == layouts["proj.weight"] == "in_out"
    assert layouts["head.weight"] == layouts["embed.weight"] == "out_in"
    rows = {r["parameter"]: r for r in steepest.explain_rows(opt)}
    assert "on W^T" in str(rows["fc.weight"]) and "on W^T" not in str(rows["head.weight"])


@pytest.mark.parametrize("preset", ["muon", "normuon", "scion", "lanton", "signum", "lion"])
def test_in_out_weights_step_exactly_like_their_linear_twins(preset):
    linear, stored = _pair()
    opt_l, opt_s = steepest.for_model(linear, preset), steepest.for_model(stored, preset)
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        tokens, labels = torch.randint(0, 16, (32,), generator=gen), torch.randint(0, 4, (32,), generator=gen)
        for model, opt in ((linear, opt_l), (stored, opt_s)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(tokens), labels).backward()
            opt.step()
    for name in ("fc", "proj"):
        torch.testing.assert_close(getattr(stored, name).weight.T, getattr(linear, name).weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stored.head.weight, linear.head.weight, rtol=1e-5, atol=1e-6)


def test_a_constraint_sees_the_out_in_matrix():
    torch.manual_seed(3)
    linear, stored = _pair()
    spec = {"hidden": ("spectral_hardcap", 0.5, "rms")}
    opt_l = steepest.for_model(linear, "muon", constraints=spec)
    opt_s = steepest.for_model(stored, "muon", constraints=spec)
    tokens, labels = torch.randint(0, 16, (32,)), torch.randint(0, 4, (32,))
    for model, opt in ((linear, opt_l), (stored, opt_s)):
        nn.functional.cross_entropy(model(tokens), labels).backward()
        opt.step()
    torch.testing.assert_close(stored.fc.weight.T, linear.fc.weight, rtol=1e-5, atol=1e-6)
    # the RMS->RMS bound of the 32 x 8 layer fc: sigma_1 <= 0.5 sqrt(32 / 8) = 1
    assert torch.linalg.matrix_norm(stored.fc.weight, ord=2) <= 1.0 + 1e-5


def test_declared_layouts_and_errors():
    torch.manual_seed(4)
    class Declared(nn.Module):
        steepest_layouts = {"w": "in_out"}

        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(8, 32))

    assert in_out_weights(nn.Sequential(Declared())) == {"0.w"}

    class Bad(Declared):
        steepest_layouts = {"w": "transposed"}

    with pytest.raises(ValueError, match=r"^Unknown layout 'transposed' declared for parameter 'w'; expected one of"):
        in_out_weights(Bad())
    with pytest.raises(ValueError, match=r"^Unknown layout 'io'; expected one of: out_in, in_out$"):
        steepest.Muon([{"params": [nn.Parameter(torch.randn(4, 4))], "layout": "io"}])
    with pytest.raises(ValueError, match=r"layout 'in_out' applies to 2-D weights stored \(in, out\)"):
        steepest.Muon([{"params": [nn.Parameter(torch.randn(4, 4, 3))], "layout": "in_out", "role": "conv"}])


def _train(model, opt, seed: int, steps: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        tokens, labels = torch.randint(0, 16, (32,), generator=gen), torch.randint(0, 4, (32,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(tokens), labels).backward()
        opt.step()


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), name


def test_layout_round_trips_through_state_dict_and_old_state_dicts_load():
    _, stored = _pair()
    opt = steepest.for_model(stored, "muon")
    _train(stored, opt, seed=2, steps=3)
    state, weights = copy.deepcopy(opt.state_dict()), copy.deepcopy(stored.state_dict())
    assert [g["layout"] for g in state["param_groups"]].count("in_out") == 1
    _, resumed = _pair()
    with torch.no_grad():  # another start: everything must come from the state dicts
        for p in resumed.parameters():
            p.add_(1.0)
    resumed.load_state_dict(weights)
    fresh = steepest.for_model(resumed, "muon")
    fresh.load_state_dict(state)
    assert [g["layout"] for g in fresh.param_groups] == [g["layout"] for g in opt.param_groups]
    _assert_same_weights(stored, resumed)
    assert_state_dicts_equal(opt.state_dict(), fresh.state_dict())
    # the resumed run continues exactly as the uninterrupted one
    _train(stored, opt, seed=3, steps=3)
    _train(resumed, fresh, seed=3, steps=3)
    _assert_same_weights(stored, resumed)
    assert_state_dicts_equal(opt.state_dict(), fresh.state_dict())
    assert not torch.equal(stored.fc.weight, weights["fc.weight"])  # it did move

    # a state_dict saved before the key existed loads and steps as out_in
    torch.manual_seed(0)
    plain = nn.Linear(4, 4)
    twin = nn.Parameter(plain.weight.detach().clone())
    old = steepest.Muon([{"params": [plain.weight], "role": "hidden"}])
    plain.weight.grad = torch.randn(4, 4)
    old.step()
    saved = copy.deepcopy(old.state_dict())
    for g in saved["param_groups"]:
        del g["layout"]
    again = steepest.Muon([{"params": [plain.weight], "role": "hidden"}])
    again.load_state_dict(saved)
    assert again.param_groups[0]["layout"] == "out_in"
    assert_state_dicts_equal(again.state_dict(), old.state_dict())
    reference = steepest.Muon([{"params": [twin], "role": "hidden", "layout": "out_in"}])
    reference.load_state_dict(old.state_dict())
    with torch.no_grad():
        twin.copy_(plain.weight)
    grad = torch.randn(4, 4)
    plain.weight.grad, twin.grad = grad.clone(), grad.clone()
    again.step()
    reference.step()
    assert torch.equal(plain.weight, twin)
    assert_state_dicts_equal(again.state_dict(), reference.state_dict())
