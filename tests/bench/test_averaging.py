"""``steepest bench --average ema|swa``: an AveragedModel next to every cell's model, its final metric
in the cell, the summary and the report; cells and suites without it are unchanged."""
from __future__ import annotations

import pytest
import torch

from steepest.bench import checkpoint as ckpt
from steepest.bench import report, runner
from steepest.bench.cells import Cell
from steepest.bench.runner import SuiteConfig
from steepest.bench.train import Averager

from . import TINY_MODEL, Interrupted, train_cell, write_tiny_text


def _config(tmp_path, **overrides) -> SuiteConfig:
    text = write_tiny_text(tmp_path / "tiny.txt")
    values = dict(budget="smoke", tasks=[f"text:{text}"], optimizers=["steepest-muon"], lr_multipliers=[1.0],
                  seeds=[0], steps=8, eval_every=4, isolate=False, gpt_options=dict(TINY_MODEL), checkpoint_every=0)
    values.update(overrides)
    return SuiteConfig(**values)


def test_swa_suite_records_the_averaged_metric_next_to_the_raw_one(tmp_path):
    config = _config(tmp_path, average="swa")
    results = runner.run_suite(config, tmp_path / "run", show_progress=False)
    (record,) = results["cells"]
    averaged = record["averaged"]
    # SWA: equal weights over the steps after 75 % of 8 (steps 7 and 8), evaluated at step 8
    assert averaged["kind"] == "swa" and averaged["start_step"] == 7 and averaged["updates"] == 2
    assert [p["step"] for p in averaged["curve"]] == [8]
    assert averaged["final"]["val_loss"] != record["final"]["val_loss"]
    summary = results["tasks"]["text-tiny"]["optimizers"]["steepest-muon"]
    assert summary["averaged_kind"] == "swa"
    assert summary["averaged_final"] == pytest.approx(averaged["final"]["val_loss"])
    markdown = report.render_markdown({**results, "lr_plot": None})
    assert "| optimizer | best lr | final val_loss | averaged (swa) final val_loss |" in markdown
    assert "`--average swa`" in markdown


def test_averaging_leaves_the_raw_run_unchanged_and_ema_averages_from_the_start(tmp_path):
    plain = runner.run_suite(_config(tmp_path), tmp_path / "plain", show_progress=False)
    ema = runner.run_suite(_config(tmp_path, average="ema"), tmp_path / "ema", show_progress=False)
    (raw,), (avg,) = plain["cells"], ema["cells"]
    assert avg["curve"] == [dict(p, train_seconds=q["train_seconds"]) for p, q in zip(raw["curve"], avg["curve"])]
    assert "averaged" not in raw and "averaged_kind" not in plain["tasks"]["text-tiny"]["optimizers"]["steepest-muon"]
    assert avg["averaged"]["ema_decay"] == 0.0  # a horizon of 10 % of 8 steps: at least one step
    assert [p["step"] for p in avg["averaged"]["curve"]] == [4, 8]
    assert "averaged" not in report.task_table(plain["tasks"]["text-tiny"])


def test_config_cells_and_cli_keep_old_suites_and_cells_readable():
    from steepest.cli import build_parser, suite_config

    quick = SuiteConfig.preset("quick")
    assert "average" not in quick.to_dict()  # the fingerprint (run directory) of old suites is unchanged
    assert SuiteConfig.preset("quick", average="ema").fingerprint() != quick.fingerprint()
    with pytest.raises(ValueError, match="unknown average 'mean'; choose from ema, swa"):
        SuiteConfig(average="mean")
    cell = Cell(task_key="t", task={}, optimizer="adamw", lr_multiplier=1.0, lr=1e-3, seed=0, budget={})
    assert "average" not in cell.to_dict() and Cell(**cell.to_dict()) == cell
    assert Cell(**{**cell.to_dict(), "average": "swa"}).to_dict()["average"] == "swa"
    assert suite_config(build_parser().parse_args(["bench", "--average", "ema"])).average == "ema"
    assert suite_config(build_parser().parse_args(["bench"])).average is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--average", "mean"])


def test_an_averaged_cell_resumes_bit_for_bit(tmp_path):
    config = _config(tmp_path, average="ema", steps=12)
    tasks = runner.load_tasks(config)
    (task,) = tasks.values()
    task.prepare()
    (cell,) = runner.plan_cells(config, tasks, config.optimizers)

    ref = train_cell(task, cell)
    path = ckpt.partial_path(tmp_path / "run", cell)
    with pytest.raises(Interrupted):
        train_cell(task, cell, ckpt.CellCheckpoint(path, cell.to_dict(), every=3), stop_at=8)
    resumed = train_cell(task, cell, ckpt.CellCheckpoint(path, cell.to_dict(), every=3))
    assert resumed["resumed_from_step"] == 6
    assert resumed["averaged"] == ref["averaged"] and resumed["final"] == ref["final"]


def test_averager_evaluates_the_average_and_puts_the_raw_weights_back():
    class Trial:
        model = torch.nn.Linear(2, 1)

        def evaluate(self):
            return {"w": float(self.model.weight.detach().sum())}

    trial = Trial()
    averager = Averager("swa", trial.model, steps=4)  # averages steps 4 on
    with torch.no_grad():
        for step, value in enumerate((1.0, 2.0, 3.0, 5.0), 1):
            trial.model.weight.fill_(value)
            averager.update(step, trial.model)
    assert averager.start == 4 and int(averager.model.n_averaged) == 1
    averager.record(4, trial)
    assert averager.curve == [{"step": 4, "w": 10.0}] and float(trial.model.weight.detach().sum()) == 10.0
    ema = Averager("ema", trial.model, steps=40)  # horizon 4 steps: decay 0.75
    assert ema.decay == 0.75
    with torch.no_grad():
        for step, value in enumerate((0.0, 4.0), 1):
            trial.model.weight.fill_(value)
            ema.update(step, trial.model)
    assert ema.evaluate(trial) == {"w": 2.0}  # 0.75 * 0 + 0.25 * 4, per entry
