"""for_model builds one group per role with the preset's recipe; explain shows it."""
import math
import re

import pytest
import torch
from torch import nn

import steepest


class LM(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok_emb = nn.Embedding(30, 16)
        self.fc = nn.Linear(16, 64)
        self.proj = nn.Linear(64, 16, bias=False)
        self.ln = nn.LayerNorm(16)
        self.lm_head = nn.Linear(16, 30, bias=False)


def test_muon_groups_by_role_with_names():
    opt = steepest.for_model(LM(), "muon", lr=0.03, adamw_lr=1e-3)
    groups = {g["role"]: g for g in opt.param_groups}
    assert set(groups) == {"embedding", "head", "hidden", "vector"}
    assert groups["hidden"]["param_names"] == ["fc.weight", "proj.weight"]
    assert groups["hidden"]["lr"] == 0.03 and groups["hidden"]["geometry"] == "spectral"
    for role in ("embedding", "head", "vector"):
        assert groups[role]["transform"] == "adam"
    assert groups["head"]["lr"] == groups["vector"]["lr"] == 1e-3
    assert groups["embedding"]["lr"] == 3e-3  # embedding_lr's default, not adamw_lr
    assert sorted(n for g in opt.param_groups for n in g["param_names"]) == sorted(n for n, _ in LM().named_parameters())


def test_default_lr_is_the_presets():
    opt = steepest.for_model(LM(), "scion")
    assert all(g["lr"] == 2**-6 for g in opt.param_groups)
    lrs = {g["role"]: g["lr"] for g in steepest.for_model(LM(), "muon").param_groups}
    assert lrs == {"hidden": 0.02, "head": 1e-2, "vector": 1e-2, "embedding": 3e-3}


def test_overrides_per_role_and_per_parameter():
    opt = steepest.for_model(LM(), "muon", overrides={"hidden": {"weight_decay": 0.1},
                                                      "proj.weight": {"lr": 0.5, "ns": "svd"}})
    by_name = {n: g for g in opt.param_groups for n in g["param_names"]}
    assert by_name["fc.weight"]["weight_decay"] == 0.1 and by_name["fc.weight"]["lr"] == 0.02
    assert by_name["proj.weight"]["lr"] == 0.5 and by_name["proj.weight"]["ns"] == "svd"
    assert by_name["proj.weight"]["weight_decay"] == 0.1  # role override still applies
    assert by_name["proj.weight"]["param_names"] == ["proj.weight"]


def test_frozen_parameters_are_left_out():
    model = LM()
    model.fc.weight.requires_grad_(False)
    opt = steepest.for_model(model, "muon")
    assert "fc.weight" not in [n for g in opt.param_groups for n in g["param_names"]]


def test_errors():
    with pytest.raises(ValueError, match=re.escape("Unknown optimizer preset 'adamq'; expected one of: muon, scion")):
        steepest.for_model(LM(), "adamq")
    with pytest.raises(ValueError, match=re.escape("overrides= keys must be role names (embedding, head, hidden, conv, vector) "
                                                   "or parameter names; unknown: nope")):
        steepest.for_model(LM(), "muon", overrides={"nope": {}})
    with pytest.raises(TypeError, match=re.escape("explain() needs a steepest optimizer, got SGD")):
        steepest.explain(torch.optim.SGD(LM().parameters(), lr=0.1))


def test_explain_table_rows_and_effective_lr():
    opt = steepest.for_model(LM(), "muon", lr=0.02, adamw_lr=1e-3)
    rows = {r["parameter"]: r for r in steepest.explain_rows(opt)}
    assert rows["fc.weight"]["effective lr"] == pytest.approx(0.02 * math.sqrt(64 / 16))
    assert rows["proj.weight"]["effective lr"] == pytest.approx(0.02)
    assert rows["lm_head.weight"]["role"] == "head" and rows["lm_head.weight"]["effective lr"] == 1e-3
    text = steepest.explain(opt)
    lines = text.splitlines()
    assert lines[0].split() == ["parameter", "shape", "role", "geometry", "update", "lr", "effective", "lr", "weight", "decay"]
    fc = next(line for line in lines if line.startswith("fc.weight"))
    assert "64x16" in fc and "hidden" in fc and "spectral(keller, original)" in fc and "0.04" in fc
    assert len(lines) == 2 + len(rows)


def test_explain_follows_the_scheduler():
    opt = steepest.for_model(LM(), "scion", lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    assert sched.get_last_lr()[0] == pytest.approx(0.05)
    rows = {r["parameter"]: r for r in steepest.explain_rows(opt)}
    assert rows["fc.weight"]["effective lr"] == pytest.approx(0.05 * 3.0 * math.sqrt(64 / 16))
