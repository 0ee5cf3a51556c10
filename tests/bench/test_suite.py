"""steepest.bench.runner and summary: the suite plan, resuming, isolation, summary maths."""
from __future__ import annotations

import json
import math

import pytest

import steepest
from steepest.bench import cells as cells_mod
from steepest.bench import peers, report, runner, summary
from steepest.bench.runner import SuiteConfig
from steepest.bench.tasks import Budget, Task, Trial, lr_multiplier

from . import write_tiny_text


def text_suite(tmp_path, **overrides) -> SuiteConfig:
    text = write_tiny_text(tmp_path / "tiny.txt")
    values = dict(budget="smoke", tasks=[f"text:{text}"], optimizers=["adamw", "steepest-muon"],
                  lr_multipliers=[1.0], seeds=[0], isolate=False)
    values.update(overrides)
    return SuiteConfig(**values)


def test_schedule_warmup_then_cosine_to_final_fraction():
    mult = [lr_multiplier(s, total=100, warmup=10, final_fraction=0.1) for s in range(100)]
    assert mult[0] == pytest.approx(0.1) and mult[9] == pytest.approx(1.0)
    assert mult[10] == pytest.approx(1.0) and mult[99] == pytest.approx(0.1)
    assert lr_multiplier(10 + (99 - 10) / 2, 100, 10, 0.1) == pytest.approx(0.55)
    assert all(a >= b for a, b in zip(mult[10:], mult[11:]))
    assert Budget(steps=300, batch_size=1, eval_every=25).warmup == 15
    assert Budget(steps=10, batch_size=1, eval_every=4).eval_steps() == [0, 4, 8, 10]


def test_suite_config_validation_and_presets():
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'; choose from adamw, torch-muon"):
        SuiteConfig(optimizers=["adamw", "sgd"])
    with pytest.raises(ValueError, match="optimizers lists a value twice: adamw, adamw"):
        SuiteConfig(optimizers=["adamw", "adamw"])
    with pytest.raises(ValueError, match="unknown budget 'huge'; choose from smoke, quick, full"):
        SuiteConfig(budget="huge")
    with pytest.raises(ValueError, match="seeds must name at least one value"):
        SuiteConfig(seeds=[])
    with pytest.raises(ValueError, match="learning rates and multipliers must be > 0, got -1"):
        SuiteConfig(lr_multipliers=[-1])
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        SuiteConfig(steps=0)
    quick, full = SuiteConfig.preset("quick"), SuiteConfig.preset("full")
    assert quick.optimizers == list(runner.QUICK_OPTIMIZERS) and quick.lr_multipliers == [1.0]
    assert full.lr_multipliers == [0.5, 1.0, 2.0] and set(peers.CORE_PEERS) <= set(full.optimizers)
    assert quick.seeds == full.seeds == [0, 1]
    assert SuiteConfig.preset("full", seeds=[3]).seeds == [3]
    # The same suite always maps to the same run directory; a different one never does.
    assert runner.default_run_dir(quick) == runner.default_run_dir(SuiteConfig.preset("quick"))
    assert runner.default_run_dir(quick) != runner.default_run_dir(SuiteConfig.preset("quick", seeds=[0]))
    assert str(runner.default_run_dir(full)).startswith("bench-out/full-")
    assert SuiteConfig.from_dict({**quick.to_dict(), "future_key": 1}) == quick


def test_plan_has_every_cell_with_scaled_lrs(tmp_path):
    config = text_suite(tmp_path, lr_multipliers=[0.5, 2.0], seeds=[0, 1], lrs={"adamw": 1e-3})
    tasks = runner.load_tasks(config)
    cells = runner.plan_cells(config, tasks, config.optimizers)
    assert len(cells) == 2 * 2 * 2
    adamw = [c for c in cells if c.optimizer == "adamw"]
    assert sorted({c.lr for c in adamw}) == [5e-4, 2e-3]
    muon = {c.lr for c in cells if c.optimizer == "steepest-muon"}
    assert muon == {0.5 * peers.DEFAULT_LRS["steepest-muon"], 2.0 * peers.DEFAULT_LRS["steepest-muon"]}
    assert {c.task_key for c in cells} == {"text-tiny"}
    assert cells[0].name == "text-tiny/adamw/lrx0.5-seed0"
    assert cells[0].budget == {"steps": 6, "batch_size": 2, "eval_every": 3, "warmup_fraction": 0.05,
                               "final_lr_fraction": 0.1}


def test_end_to_end_smoke_suite_writes_report(tmp_path):
    config = text_suite(tmp_path, lr_multipliers=[0.5, 1.0], seeds=[0, 1])
    results = runner.run_suite(config, tmp_path / "run", show_progress=False)
    task = results["tasks"]["text-tiny"]
    adamw, muon = task["optimizers"]["adamw"], task["optimizers"]["steepest-muon"]
    for s in (adamw, muon):
        assert s["status"] == "ok" and s["seeds"] == 2 and len(s["grid"]) == 2
        assert s["best_lr_multiplier"] in (0.5, 1.0)
        best = next(row for row in s["grid"] if row["lr_multiplier"] == s["best_lr_multiplier"])
        assert s["final"] == pytest.approx(sum(best["final"]) / 2) == min(r["mean"] for r in s["grid"])
        assert s["final_std"] == pytest.approx(abs(best["final"][0] - best["final"][1]) / math.sqrt(2))
        assert [p["step"] for p in s["curve"]] == [0, 3, 6]
        assert 0 < s["opt_step_ms"] < s["step_ms"] and s["state_mib"] > 0
    assert task["target"] == adamw["final"] and adamw["reached"] in ("1/2", "2/2")
    # Same seed, same init: every optimizer starts from the identical validation loss.
    first = {(c["cell"]["optimizer"], c["cell"]["seed"]): c["curve"][0]["val_loss"] for c in results["cells"]}
    assert first[("adamw", 0)] == first[("steepest-muon", 0)] != first[("adamw", 1)]
    ratios = muon["ratios"]["vs_adamw"]
    assert ratios["opt_step_ms"] == pytest.approx(muon["opt_step_ms"] / adamw["opt_step_ms"])
    assert ratios["final"] == pytest.approx(muon["final"] / adamw["final"])

    paths = report.write_report(results, tmp_path / "run")
    saved = json.loads(paths["results"].read_text(encoding="utf-8"), parse_constant=_no_nan)
    assert saved["config"]["lr_multipliers"] == [0.5, 1.0] and len(saved["cells"]) == 8
    assert "per_step_ms" not in saved["cells"][0] and "train_loss" not in saved["cells"][0] and saved["machine"]["torch"]
    muon_cell = next(c for c in saved["cells"] if c["cell"]["optimizer"] == "steepest-muon")
    assert "parameter" in muon_cell["explanation"]  # what steepest gives each parameter (explain)
    cell_file = next((tmp_path / "run" / "cells").rglob("*.json"))  # every per-step number stays there
    assert len(json.loads(cell_file.read_text(encoding="utf-8"))["per_step_ms"]["opt_step"]) == 6
    markdown = paths["report"].read_text(encoding="utf-8")
    assert markdown.startswith("# steepest bench (smoke)")
    assert "## text-tiny" in markdown and "| optimizer | lr x0.5 | lr x1 |" in markdown
    assert "| steepest-muon | torch.optim.AdamW |" in markdown  # the ratio table
    pytest.importorskip("matplotlib")
    for key in ("curves-text-tiny", "lr_plot"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _no_nan(value):
    raise ValueError(f"results.json must be strict JSON, found {value}")


def test_rerun_resumes_and_reruns_only_missing_or_replanned_cells(tmp_path, monkeypatch):
    config = text_suite(tmp_path, seeds=[0, 1])
    run_dir = tmp_path / "run"
    runner.run_suite(config, run_dir, show_progress=False)
    store = cells_mod.CellStore(run_dir)
    planned = runner.plan_cells(config, runner.load_tasks(config), config.optimizers)
    assert store.pending(planned) == []

    calls = []
    real = runner.run_cell
    monkeypatch.setattr(runner, "run_cell", lambda cell, task, show_progress=False, **kw: calls.append(cell.name) or real(cell, task, **kw))
    again = runner.run_suite(config, run_dir, show_progress=False)
    assert calls == [] and again["cells_resumed"] == 4
    assert any(note.startswith("resumed: 4 of 4 cells") for note in again["notes"])

    store.path(planned[1]).unlink()  # lost (say, killed while writing): only that cell runs again
    runner.run_suite(config, run_dir, show_progress=False)
    assert calls == [planned[1].name]

    calls.clear()  # a different budget is a different cell: nothing stale is reused
    runner.run_suite(text_suite(tmp_path, seeds=[0, 1], steps=4), run_dir, show_progress=False)
    assert len(calls) == 4


def test_cells_recorded_by_another_steepest_version_run_again_with_a_note(tmp_path, monkeypatch):
    config = text_suite(tmp_path)
    run_dir = tmp_path / "run"
    runner.run_suite(config, run_dir, show_progress=False)
    store = cells_mod.CellStore(run_dir)
    planned = runner.plan_cells(config, runner.load_tasks(config), config.optimizers)
    assert all(store.load(c)["steepest"] == steepest.__version__ for c in planned)
    old = store.path(planned[0])
    record = json.loads(old.read_text(encoding="utf-8"))
    record["steepest"] = "0.0.1"
    old.write_text(json.dumps(record), encoding="utf-8")
    legacy = store.path(planned[1])  # written before records carried a version
    record = json.loads(legacy.read_text(encoding="utf-8"))
    del record["steepest"]
    legacy.write_text(json.dumps(record), encoding="utf-8")
    assert store.pending(planned) == planned[:2]
    assert store.other_versions(planned) == {"0.0.1": 1, "before 0.7": 1}

    calls = []
    real = runner.run_cell
    monkeypatch.setattr(runner, "run_cell", lambda cell, task, show_progress=False, **kw: calls.append(cell.name) or real(cell, task, **kw))
    again = runner.run_suite(config, run_dir, show_progress=False)
    assert calls == [planned[0].name, planned[1].name]
    assert (f"2 finished cells were recorded by another steepest version (1 by steepest 0.0.1, 1 by steepest "
            f"before 0.7) and ran again with {steepest.__version__}, so no table mixes versions") in again["notes"]
    assert store.pending(planned) == [] and store.other_versions(planned) == {}


def test_a_run_killed_mid_way_keeps_finished_cells(tmp_path, monkeypatch):
    config = text_suite(tmp_path, seeds=[0, 1, 2])
    real, calls = runner.run_cell, []

    def dies_on_third(cell, task, show_progress=False, **kw):
        calls.append(cell.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(cell, task, **kw)

    monkeypatch.setattr(runner, "run_cell", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        runner.run_suite(config, tmp_path / "run", show_progress=False)
    saved = sorted(p.name for p in (tmp_path / "run" / "cells").rglob("*.json"))
    assert saved == ["lrx1-seed0.json", "lrx1-seed1.json"]
    assert not list((tmp_path / "run" / "cells").rglob("*.part"))
    monkeypatch.setattr(runner, "run_cell", lambda cell, task, show_progress=False, **kw: calls.append(cell.name) or real(cell, task, **kw))
    results = runner.run_suite(config, tmp_path / "run", show_progress=False)
    assert calls[3:] == [f"text-tiny/{o}/lrx1-seed{s}" for o, s in
                         (("adamw", 2), ("steepest-muon", 0), ("steepest-muon", 1), ("steepest-muon", 2))]
    assert results["tasks"]["text-tiny"]["optimizers"]["adamw"]["seeds"] == 3


def test_isolated_worker_runs_a_pair_in_its_own_process(tmp_path):
    config = text_suite(tmp_path, optimizers=["steepest-muon"], isolate=True)
    results = runner.run_suite(config, tmp_path / "run", show_progress=False)
    (record,) = results["cells"]
    assert record["status"] == "ok" and record["peak_rss_mib"] > 50, results["notes"]
    assert record["cell"]["optimizer"] == "steepest-muon" and record["cell_seconds"] > 0


def test_unavailable_and_failing_peers_become_notes(tmp_path, monkeypatch):
    def broken(model, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setitem(peers.BUILDERS, "steepest-scion", broken)
    monkeypatch.setattr(runner, "unavailable_reason", lambda name: "po-muon: not here" if name == "po-muon" else None)
    config = text_suite(tmp_path, optimizers=["adamw", "steepest-scion", "po-muon"])
    results = runner.run_suite(config, tmp_path / "run", show_progress=False)
    assert "po-muon skipped: po-muon: not here" in results["notes"]
    assert "failed: steepest-scion on text-tiny: RuntimeError: boom" in results["notes"]
    scion = results["tasks"]["text-tiny"]["optimizers"]["steepest-scion"]
    assert scion["status"] == "failed" and scion["reasons"] == ["RuntimeError: boom"]
    markdown = report.render_markdown({**results, "run_dir": "x"})
    assert "| steepest-scion | failed: RuntimeError: boom |" in markdown


class _FakeTask(Task):
    name = "fake"
    metric = "loss"
    metric_label = "loss"
    extra_metrics = ("accuracy",)
    budgets = {"smoke": Budget(steps=100, batch_size=1, eval_every=50)}

    def prepare(self):
        return {}

    def trial(self, seed, batch_size) -> Trial:  # pragma: no cover - summaries only
        raise NotImplementedError

    def describe_model(self):
        return "fake"


def _record(losses, opt_ms, status="ok"):
    curve = [{"step": s, "loss": v, "accuracy": 1 - v / 10, "train_seconds": s * 0.1}
             for s, v in zip((0, 50, 100), losses)]
    return {"status": status, "curve": curve, "final": {"loss": losses[-1], "accuracy": 1 - losses[-1] / 10},
            "step_ms": opt_ms + 10, "fwd_bwd_ms": 10.0, "opt_step_ms": opt_ms, "state_mib": 1.0,
            "peak_rss_mib": 100.0, "train_seconds": 10.0}


def _cell(optimizer, mult, seed):
    return cells_mod.Cell(task_key="fake", task={"name": "fake"}, optimizer=optimizer, lr_multiplier=mult,
                          lr=0.01 * mult, seed=seed, budget={})


def test_summary_best_lr_spread_target_and_ratios():
    task = _FakeTask()
    config = SuiteConfig(budget="smoke", tasks=["shakespeare-char"], optimizers=["adamw", "torch-muon", "steepest-muon"])
    records = [
        (_cell("adamw", 1.0, 0), _record([5, 3.0, 2.0], 1.0)), (_cell("adamw", 1.0, 1), _record([5, 3.2, 2.2], 1.0)),
        (_cell("adamw", 2.0, 0), _record([5, 4, float("nan")], 1.0, status="diverged")),
        (_cell("adamw", 2.0, 1), _record([5, 2.5, 1.5], 1.0)),
        (_cell("torch-muon", 1.0, 0), _record([5, 2.0, 1.5], 30.0)), (_cell("torch-muon", 1.0, 1), _record([5, 2.1, 1.6], 30.0)),
        (_cell("steepest-muon", 1.0, 0), _record([5, 2.0, 1.4], 15.0)), (_cell("steepest-muon", 1.0, 1), None),
    ]
    out = summary.summarize_task(task, config, records, {})
    adamw = out["optimizers"]["adamw"]
    # x2 diverged on one seed, so its mean is inf and x1 is the best lr despite seed 1's 1.5.
    assert adamw["best_lr_multiplier"] == 1.0 and adamw["final"] == pytest.approx(2.1)
    assert adamw["final_std"] == pytest.approx(math.sqrt(0.02)) and adamw["grid"][1]["mean"] == math.inf
    assert adamw["extras"]["accuracy"] == pytest.approx(0.79) and adamw["at_budget"]["0.5"] == pytest.approx(3.1)
    assert out["target"] == pytest.approx(2.1) and "AdamW" in out["target_source"]
    # steps to target come from the seed-mean curve: AdamW's mean reaches its own mean final value at
    # the end even though only one seed does on its own
    assert adamw["steps_to_target"] == 100 and adamw["reached"] == "1/2"
    muon = out["optimizers"]["torch-muon"]
    assert muon["steps_to_target"] == 50 and muon["reached"] == "2/2" and muon["seconds_to_target"] == pytest.approx(5.0)
    steepest = out["optimizers"]["steepest-muon"]
    assert steepest["seeds"] == 1 and steepest["final_std"] is None  # one seed is missing
    assert steepest["ratios"]["vs_torch_muon"]["opt_step_ms"] == pytest.approx(0.5)
    assert steepest["ratios"]["vs_adamw"]["steps_to_target"] == pytest.approx(0.5)
    assert muon["ratios"]["vs_adamw"]["final"] == pytest.approx(1.55 / 2.1)
    assert out["headlines"][0].startswith("fake: steepest.Muon wins with loss 1.4 (lr x1); next torch.optim.Muon 1.55")
    explicit = summary.summarize_task(task, SuiteConfig(budget="smoke", targets={"fake": 1.0}), records, {})
    assert explicit["target"] == 1.0 and explicit["optimizers"]["torch-muon"]["steps_to_target"] is None


def test_overview_ranks_every_optimizer_on_every_task():
    def task(metric, finals):
        return {"metric": metric, "optimizers": {
            n: ({"status": "ok", "final": v} if v is not None else {"status": "diverged"}) for n, v in finals.items()}}

    results = {"tasks": {"lm": task("val_loss", {"adamw": 2.0, "steepest-muon": 1.5, "steepest-lion": None}),
                         "cnn": task("test_loss", {"adamw": 0.1, "steepest-muon": 0.2, "steepest-lion": 0.15})}}
    lines = report.overview_table(results).splitlines()
    assert lines[0] == "| optimizer | lm: final val_loss (rank) | cnn: final test_loss (rank) |"
    assert lines[2:] == ["| adamw | 2 (2) | 0.1 (1) |", "| steepest-muon | 1.5 (1) | 0.2 (3) |",
                         "| steepest-lion | diverged | 0.15 (2) |"]


def test_a_refused_non_finite_gradient_is_a_divergence_not_a_failure():
    import torch

    from steepest.bench.train import train_trial

    class Exploding(Trial):
        def __init__(self):
            self.model = torch.nn.Linear(4, 4, bias=False)
            self.roles = {"weight": "hidden"}
            self.calls = 0

        def train_loss(self):
            self.calls += 1
            scale = float("inf") if self.calls == 3 else 1.0
            return (self.model.weight * scale).sum() if self.calls == 3 else self.model.weight.square().sum()

        def second_loss(self):  # a fixed stream: this trial never measures noise
            return self.model.weight.square().sum()

        def evaluate(self):
            return {"loss": float(self.model.weight.detach().square().sum())}

    trial = Exploding()
    peer = peers.build_peer("steepest-muon", trial.model, roles_override=trial.roles)
    record = train_trial(_FakeTask(), trial, peer, Budget(steps=10, batch_size=1, eval_every=5))
    assert record["status"] == "diverged" and record["steps_done"] == 3
    assert [p["step"] for p in record["curve"]] == [0, 3] and math.isfinite(record["final"]["loss"])
