"""`steepest diagnose`: per-layer sharpness, gradient noise, update statistics and orthogonality."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from steepest.cli import main
from steepest.diagnostics import layer_sharpness
from steepest.diagnostics.layers import hidden_layers, measure_sharpness


@pytest.fixture(scope="module")
def diag_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("diag")
    code = main(["diagnose", "--task", "digits-cnn", "--smoke", "--steps", "4", "--every", "2",
                 "--out", str(out)])
    return code, out


def test_diagnose_cli_writes_report(diag_run, capsys):
    code, out = diag_run
    assert code == 0
    data = json.loads((out / "diagnostics.json").read_text())  # strict JSON (no NaN)
    assert set(data["optimizers"]) == {"steepest-muon", "steepest-lanton"}
    assert data["steps"] == 4 and data["every"] == 2
    for name, res in data["optimizers"].items():
        assert res["status"] == "ok"
        assert [c["step"] for c in res["checkpoints"]] == [2, 4]
        assert res["layers"] == ["conv1.weight", "conv2.weight", "fc.weight", "head.weight"]
        assert res["train_seconds"] > 0 and res["diagnostics_seconds"] > 0
        assert [p["step"] for p in res["curve"]] == [0, 2, 4]
        for cp in res["checkpoints"]:
            assert math.isfinite(cp["metric"])
            for layer in res["layers"]:
                row = cp["layers"][layer]
                for key in ("sharpness", "noise", "update_rms", "update_spectral"):
                    assert isinstance(row[key], float) and math.isfinite(row[key]), (name, layer, key)
                assert row["noise"] > 0 and row["update_rms"] > 0 and row["update_spectral"] > 0
        last = res["checkpoints"][-1]["layers"]
        # spectral layers get an orthogonality error; conv1 (full-rank gradient) lies inside keller's band
        assert last["conv1.weight"]["orthogonality_error"] is not None
        assert 0 <= last["conv1.weight"]["orthogonality_error"] < 0.5
    # head.weight: AdamW fallback in muon (no LMO diagnostic), sign geometry in lanton
    assert data["optimizers"]["steepest-muon"]["checkpoints"][-1]["layers"]["head.weight"]["noise_norm"] == "frobenius"
    assert data["optimizers"]["steepest-muon"]["checkpoints"][-1]["layers"]["head.weight"]["orthogonality_error"] is None
    md = (out / "diagnostics.md").read_text()
    assert "## steepest-muon" in md and "## steepest-lanton" in md and "orthogonality error" in md
    assert (out / "diagnostics.png").stat().st_size > 1000
    # digits-cnn is a classifier: NC1-NC4 of its last layer at every checkpoint, in the report too
    for res in data["optimizers"].values():
        for cp in res["checkpoints"]:
            assert set(cp["collapse"]) == {"nc1", "nc2", "nc2_equinorm", "nc2_equiangle", "nc3", "nc4"}
            assert cp["collapse"]["nc1"] > 0 and 0 <= cp["collapse"]["nc4"] <= 1
    assert "Neural collapse of the last layer on the training set" in md and "| step | nc1 | nc2 |" in md


def test_digits_classifier_features_are_the_heads_inputs():
    from steepest.bench.tasks import make_task
    from steepest.diagnostics import neural_collapse

    task = make_task("digits-cnn")
    task.prepare()
    trial = task.trial(0, 8)
    features, labels, weight, bias = trial.classifier_features()
    assert features.shape == (len(labels), 128) and weight.shape == (10, 128) and bias.shape == (10,)
    assert trial.model.training  # left in training mode
    # the classifier's own logits are W h + b: the features are exactly what the head sees
    with torch.no_grad():
        logits = trial.model(trial._x_train[:5])
    assert torch.allclose(features[:5] @ weight.T + bias, logits, atol=1e-5)
    nc = neural_collapse(features, labels, weight, bias)
    assert nc["nc1"] > 0


def test_diagnose_starts_from_a_checkpoint(tmp_path):
    from steepest.bench.tasks import make_task
    from steepest.bench.diagnose import run_diagnostics

    task = make_task("digits-cnn")
    task.prepare()
    trial = task.trial(0, 8)
    with torch.no_grad():
        trial.model.head.weight.zero_()
        trial.model.head.bias.zero_()
    path = tmp_path / "model.pt"
    torch.save({"model": trial.model.state_dict()}, path)
    res = run_diagnostics("digits-cnn", ["steepest-muon"], steps=1, every=1, budget="smoke", checkpoint=path)
    assert res["checkpoint"] == str(path)
    # a zero head predicts the uniform distribution: the step-0 test loss is log(10)
    assert res["optimizers"]["steepest-muon"]["curve"][0]["test_loss"] == pytest.approx(math.log(10), rel=1e-6)
    plain = run_diagnostics("digits-cnn", ["steepest-muon"], steps=1, every=1, budget="smoke")
    assert plain["optimizers"]["steepest-muon"]["curve"][0]["test_loss"] != pytest.approx(math.log(10), rel=1e-3)


@pytest.mark.parametrize("content, message", [
    (None, "checkpoint not found: "),
    ({"step": 3}, "holds no state_dict (a dict of tensors, or one under 'model')"),
    ({"conv1.weight": torch.zeros(1)}, "does not fit the task's model: missing ['conv1.bias'"),
])
def test_bad_checkpoints_fail_before_training(tmp_path, content, message, capsys):
    path = tmp_path / "ckpt.pt"
    if content is not None:
        torch.save(content, path)
    code = main(["diagnose", "--task", "digits-cnn", "--smoke", "--checkpoint", str(path), "--out", str(tmp_path / "o")])
    assert code == 1
    assert message in capsys.readouterr().err


def test_checkpoint_with_a_wrong_shape_names_the_tensor(tmp_path):
    from steepest.bench.tasks import make_task
    from steepest.bench.diagnose import load_model_checkpoint

    model = make_task("digits-cnn").trial(0, 8).model
    state = model.state_dict()
    state["head.bias"] = torch.zeros(11)
    torch.save(state, tmp_path / "c.pt")
    with pytest.raises(ValueError, match=r"head.bias has shape \(11,\), the task's model \(10,\)"):
        load_model_checkpoint(tmp_path / "c.pt", model)


def test_sharpness_matches_layer_sharpness_on_fixed_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))

    def loss_fn():
        return nn.functional.cross_entropy(model(x), y)

    layers = hidden_layers(model)
    assert layers == ["0.weight", "2.weight"]
    ours = measure_sharpness(model, loss_fn, layers, iters=30, seed=3)
    ref = layer_sharpness(model, loss_fn, iters=30, generator=torch.Generator().manual_seed(3))
    assert ours == pytest.approx(ref, rel=1e-10)
    # cross-entropy is convex in the last layer's weights: its block is PSD, the top eigenvalue > 0
    assert ours["2.weight"] > 0


def test_hidden_layers_gpt_uses_blocks():
    from steepest.bench.gpt import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=20))
    layers = hidden_layers(model)
    assert layers and all(n.startswith("blocks.") for n in layers)
    params = dict(model.named_parameters())
    assert all(params[n].ndim == 2 for n in layers)


@pytest.mark.parametrize("argv, message", [
    (["--task", "nope"], "unknown task"),
    (["--optimizers", "bogus"], "unknown optimizer"),
    (["--steps", "0"], "positive integer"),
    (["--every", "x"], "positive integer"),
    (["--smoke", "--quick"], "not allowed with"),
])
def test_diagnose_argument_errors(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["diagnose", "--out", str(tmp_path), *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_sharpness_through_scaled_dot_product_attention():
    # the fused attention kernels have no double backward; the math kernel is used for the HVPs
    from steepest.bench.gpt import GPT, GPTConfig
    from steepest.diagnostics.layers import hidden_layers, measure_sharpness

    model = GPT(GPTConfig(vocab_size=11, n_layer=1, d_model=16, n_head=2, ctx=8), seed=0)
    idx = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(0))
    values = measure_sharpness(model, lambda: model(idx, idx)[1], hidden_layers(model), iters=3)
    assert set(values) == set(hidden_layers(model)) and all(math.isfinite(v) for v in values.values())
