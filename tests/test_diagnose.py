"""`steepest diagnose`: per-layer sharpness, gradient noise, update statistics and orthogonality."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from steepest.cli import main
from steepest.diagnostics import layer_sharpness
from steepest.diagnostics.run import hidden_layers, measure_sharpness


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
    from steepest.diagnostics.run import hidden_layers, measure_sharpness

    model = GPT(GPTConfig(vocab_size=11, n_layer=1, d_model=16, n_head=2, ctx=8), seed=0)
    idx = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(0))
    values = measure_sharpness(model, lambda: model(idx, idx)[1], hidden_layers(model), iters=3)
    assert set(values) == set(hidden_layers(model)) and all(math.isfinite(v) for v in values.values())
