"""``steepest bench --diagnostics``: per-layer sharpness and noise during training, and the report's panel."""
from __future__ import annotations

import pytest
import torch

from steepest.bench import report, runner
from steepest.bench.peers import build_peer
from steepest.bench.runner import SuiteConfig, plan_cells
from steepest.bench.tasks import make_task
from steepest.bench.train import DIAGNOSTIC_ITERS, train_trial
from steepest.diagnostics import top_eigenvalue
from steepest.diagnostics.layers import hidden_layers

from . import write_tiny_text


def _text_task(tmp_path):
    task = make_task(f"text:{write_tiny_text(tmp_path / 'tiny.txt')}")
    task.prepare()
    return task


def _train(task, optimizer: str, diagnostics: bool, seed: int = 0):
    budget = task.budget("smoke")
    trial = task.trial(seed, budget.batch_size)
    peer = build_peer(optimizer, trial.model, roles_override=trial.roles, adamw_weight_decay=task.adamw_weight_decay)
    return train_trial(task, trial, peer, budget, diagnostics=diagnostics, seed=seed), trial


def test_diagnostics_leave_the_training_run_unchanged(tmp_path):
    task = _text_task(tmp_path)
    plain, _ = _train(task, "steepest-lanton", diagnostics=False)
    diagnosed, trial = _train(task, "steepest-lanton", diagnostics=True)
    # the batch stream is rewound after each snapshot and .grad is untouched: same losses, same curve
    assert diagnosed["train_loss"] == plain["train_loss"]
    assert [p["val_loss"] for p in diagnosed["curve"]] == [p["val_loss"] for p in plain["curve"]]
    assert "diagnostics" not in plain
    diag = diagnosed["diagnostics"]
    assert diag["layers"] == hidden_layers(trial.model) and diag["iters"] == DIAGNOSTIC_ITERS
    assert [s["step"] for s in diag["snapshots"]] == [p["step"] for p in diagnosed["curve"]] == [0, 3, 6]
    assert set(diag["norms"].values()) == {"nuclear"}  # hidden matrices: the spectral norm's dual
    assert diag["seconds"] > 0
    for snap in diag["snapshots"]:
        for row in snap["layers"].values():
            assert row["sharpness"] == row["sharpness"] and row["noise"] > 0


def test_step_zero_snapshot_is_the_same_for_every_optimizer_and_matches_layer_sharpness(tmp_path):
    task = _text_task(tmp_path)
    # (torch-muon is left out: its bfloat16 Newton-Schulz is emulated, 100x slower, on CPUs without
    # native bfloat16, and its step-0 snapshot is taken before any optimizer step like the others')
    first = {name: _train(task, name, diagnostics=True)[0]["diagnostics"]["snapshots"][0]["layers"]
             for name in ("adamw", "steepest-lion", "steepest-muon")}
    # same seed, same init and batch, and noise measured in the same (reference) norm for everyone
    assert first["adamw"] == first["steepest-lion"] == first["steepest-muon"]
    # the sharpness is the top eigenvalue of the layer's Hessian block on the first training batch
    trial = task.trial(0, task.budget("smoke").batch_size)
    layers = hidden_layers(trial.model)
    batches = trial._generator
    start = batches.get_state()

    def loss():
        batches.set_state(start)
        return trial.train_loss()

    from torch.nn.attention import SDPBackend, sdpa_kernel
    params = dict(trial.model.named_parameters())
    gen = torch.Generator().manual_seed(0)  # one generator, consumed by the layers in order
    with sdpa_kernel([SDPBackend.MATH]):
        for name in layers:
            expected = top_eigenvalue(loss, [params[name]], iters=DIAGNOSTIC_ITERS, generator=gen)[0]
            assert first["adamw"][name]["sharpness"] == pytest.approx(expected, rel=1e-6)


def test_plan_marks_the_first_seed_of_each_lr_and_keeps_fingerprints(tmp_path):
    text = write_tiny_text(tmp_path / "tiny.txt")
    base = dict(budget="smoke", tasks=[f"text:{text}"], optimizers=["adamw"], lr_multipliers=[0.5, 1.0],
                seeds=[3, 4], isolate=False)
    plain, diagnosed = SuiteConfig(**base), SuiteConfig(**base, diagnostics=True)
    assert "diagnostics" not in plain.to_dict() and diagnosed.to_dict()["diagnostics"] is True
    assert plain.fingerprint() != diagnosed.fingerprint()
    tasks = runner.load_tasks(diagnosed)
    marked = [(c.lr_multiplier, c.seed) for c in plan_cells(diagnosed, tasks, ["adamw"]) if c.diagnostics]
    assert marked == [(0.5, 3), (1.0, 3)]
    unmarked = plan_cells(plain, tasks, ["adamw"])
    assert not any(c.diagnostics for c in unmarked)
    assert "diagnostics" not in unmarked[0].to_dict()  # records saved before the option still match
    assert plan_cells(diagnosed, tasks, ["adamw"])[0].to_dict()["diagnostics"] is True


def test_suite_with_diagnostics_writes_the_per_layer_panel(tmp_path):
    text = write_tiny_text(tmp_path / "tiny.txt")
    config = SuiteConfig(budget="smoke", tasks=[f"text:{text}"], optimizers=["adamw", "steepest-muon"],
                         lr_multipliers=[1.0], seeds=[0, 1], isolate=False, diagnostics=True)
    results = runner.run_suite(config, tmp_path / "run", show_progress=False)
    diagnosed = [c for c in results["cells"] if c.get("diagnostics")]
    assert sorted((c["cell"]["optimizer"], c["cell"]["seed"]) for c in diagnosed) == [("adamw", 0),
                                                                                       ("steepest-muon", 0)]
    paths = report.write_report(results, tmp_path / "run")
    markdown = paths["report"].read_text(encoding="utf-8")
    assert "## Per-layer diagnostics" in markdown and "### text-tiny" in markdown
    assert "| optimizer | lr | step | median sharpness | sharpest layer | median noise | noisiest layer" in markdown
    assert "| adamw | x1 | 6 |" in markdown and "| steepest-muon | x1 | 6 |" in markdown
    pytest.importorskip("matplotlib")
    assert paths["diagnostics-text-tiny"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![per-layer diagnostics on text-tiny](diagnostics-text-tiny.png)" in markdown


def test_suite_without_diagnostics_has_no_panel(tmp_path):
    text = write_tiny_text(tmp_path / "tiny.txt")
    config = SuiteConfig(budget="smoke", tasks=[f"text:{text}"], optimizers=["adamw"], lr_multipliers=[1.0],
                         seeds=[0], isolate=False)
    results = runner.run_suite(config, tmp_path / "run", show_progress=False)
    paths = report.write_report(results, tmp_path / "run")
    assert "Per-layer diagnostics" not in paths["report"].read_text(encoding="utf-8")
    assert not any(key.startswith("diagnostics-") for key in paths)


def test_cli_flag_reaches_the_config_and_is_refused_elsewhere(capsys):
    from steepest.cli import build_parser, main, suite_config

    assert suite_config(build_parser().parse_args(["bench", "--diagnostics"])).diagnostics is True
    assert suite_config(build_parser().parse_args(["bench"])).diagnostics is False
    with pytest.raises(SystemExit):
        main(["bench", "kernels", "--diagnostics"])
    assert "--diagnostics does not apply to `steepest bench kernels` (it applies to: suite)" in capsys.readouterr().err
