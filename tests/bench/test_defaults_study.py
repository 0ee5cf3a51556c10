"""The defaults study (steepest bench defaults), the suite's per-peer options and the defaults peers."""
from __future__ import annotations

import json
import math

import pytest

import steepest
from steepest.bench import defaults_report
from steepest.bench import defaults_study as ds
from steepest.bench import peers
from steepest.bench.cells import Cell
from steepest.bench.config import QUICK_OPTIMIZERS, SuiteConfig
from steepest.bench.runner import load_tasks, plan_cells
from steepest.bench.summary import defaults_rows
from steepest.bench.tasks import make_task
from steepest.cli import main

from . import write_tiny_text


def test_a_grid_crosses_lrs_fallbacks_and_variants_then_adds_extras():
    grid = ds.Grid((0.1, 0.2), "adamw_lr", (1e-3, 1e-2), variants=({"momentum": 0.0}, {"momentum": 0.5}),
                   extra=({"lr": 7.0},))
    cands = grid.candidates()
    assert len(cands) == 2 * 2 * 2 + 1 and cands[-1] == {"lr": 7.0}
    assert {"lr": 0.2, "momentum": 0.5, "adamw_lr": 1e-2} in cands


def test_every_preset_has_a_grid_and_its_current_and_previous_defaults_are_candidates():
    from steepest.optim.registry import REGISTRY

    assert set(ds.GRIDS) == set(REGISTRY) == set(ds.PREVIOUS_DEFAULTS)
    for preset in ds.GRIDS:
        cands = ds.candidates(preset)
        current = ds.current_defaults(preset)
        assert current in cands and {**current, **ds.PREVIOUS_DEFAULTS[preset]} in cands, preset
        assert len(cands) == len({json.dumps(c, sort_keys=True) for c in cands}), preset
        assert all(set(c) == set(current) for c in cands), preset  # every candidate sets every studied key


def test_regret_is_nats_for_language_models_and_relative_otherwise():
    assert ds.regret(2.10, 2.05, True) == pytest.approx(1.0)  # 0.05 nats is one tolerance
    assert ds.regret(1.1, 1.0, False) == pytest.approx(1.0)  # 10 % is one tolerance
    assert ds.regret(1.0, 1.0, False) == 0.0
    assert ds.regret(math.inf, 1.0, False) == math.inf


def test_the_choice_minimises_the_worst_regret_and_a_divergence_disqualifies(monkeypatch):
    """Three candidates on two tasks: A is best on one task and diverges on the other, B is never best
    but always close, C is poor on the language model: B is the minimax choice."""
    a, b, c = ({"lr": 1.0}, {"lr": 2.0}, {"lr": 3.0})
    values = {"lm": {1.0: 2.00, 2.0: 2.03, 3.0: 2.20}, "other": {1.0: math.inf, 2.0: 0.105, 3.0: 0.10}}
    study = ds.DefaultsStudy(tasks=[ds.DefaultsTask("lm", "shakespeare-char"), ds.DefaultsTask("other", "digits-cnn")],
                             presets=("lion",), grids={"lion": [a, b, c]})
    monkeypatch.setattr(ds, "task_results", lambda st, task, preset, out: [  # seeds agree: no noise floor
        {"options": o, "value": values[task.key][o["lr"]], "seeds": [values[task.key][o["lr"]]] * 2}
        for o in (a, b, c)])
    monkeypatch.setattr(ds, "current_defaults", lambda preset: c)
    res = ds.analyse_preset(study, "lion", None)
    assert res["chosen"]["options"] == b
    assert res["chosen"]["score"] == pytest.approx(max(0.03 / 0.05, 0.05 / 0.1))
    assert next(r for r in res["candidates"] if r["options"] == a)["score"] == math.inf
    assert res["current"]["options"] == c and res["best"] == {"lm": a, "other": c}
    # the 0.9 default (lion's lr 1e-4) is not among this study's candidates: that ranking says so
    # instead of showing the chosen candidate's numbers under the 0.9 heading
    assert res["previous"] is None
    assert defaults_report.ranking_table({"lion": res}, "previous") == (
        "No preset's 0.9 defaults were among this study's candidates.")
    assert "2.03" in defaults_report.ranking_table({"lion": res})


def test_the_smoke_study_runs_resumes_and_reports(tmp_path):
    text = write_tiny_text(tmp_path / "tiny.txt")
    study = ds.tiny_study(str(text))
    out = tmp_path / "study"
    results = ds.run_study(study, out)
    assert set(results) == {"muon", "lion"}
    for res in results.values():
        assert res["chosen"]["score"] == min(r["score"] for r in res["candidates"])
        assert set(res["chosen"]["tasks"]) == {"gpt-tiny", "matrix-sensing"}
    report = (out / "report.md").read_text(encoding="utf-8")
    for heading in ("## Chosen defaults", "## Out-of-the-box ranking", "## muon", "## lion"):
        assert heading in report
    saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert saved["study"]["lm_tolerance"] == ds.LM_TOLERANCE
    cells = sorted(p for p in out.rglob("lrx*-seed*.json"))
    assert len(cells) == 2 * (3 + 3) * 2  # tasks x candidates x seeds
    stamp = {p: p.stat().st_mtime_ns for p in cells}
    again = ds.run_study(study, out)  # resumes: nothing trains again, same answer
    assert {p: p.stat().st_mtime_ns for p in cells} == stamp
    assert again["muon"]["chosen"]["options"] == results["muon"]["chosen"]["options"]


def test_the_cli_runs_the_smoke_study_and_rejects_suite_options(tmp_path, capsys):
    text = write_tiny_text(tmp_path / "tiny.txt")
    out = tmp_path / "cli"
    assert main(["bench", "defaults", "--smoke", "--text", str(text), "--out", str(out), "--no-progress"]) == 0
    assert "## Chosen defaults" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["bench", "defaults", "--lr-grid", "1,2"])
    assert "--lr-grid does not apply to `steepest bench defaults`" in capsys.readouterr().err


def test_peer_options_reach_the_peer_and_are_part_of_the_cell():
    config = SuiteConfig(budget="smoke", tasks=["matrix-sensing"], optimizers=["steepest-muon"],
                         peer_options={"steepest-muon": {"adamw_lr": 5e-3}})
    (cell, *_) = plan_cells(config, load_tasks(config), config.optimizers)
    assert cell.options == {"adamw_lr": 5e-3} and cell.to_dict()["options"] == {"adamw_lr": 5e-3}
    assert "options" not in Cell(**{**cell.to_dict(), "options": {}}).to_dict()  # old cells keep matching
    assert SuiteConfig(budget="smoke").fingerprint() == SuiteConfig(budget="smoke", peer_options={}).fingerprint()
    from steepest.bench.gpt import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=11, n_layer=1, d_model=16, n_head=2, ctx=16))
    (opt,) = peers.build_peer("steepest-muon", model, lr=0.01, options=cell.options).optimizers
    lrs = {g["role"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"embedding": 5e-3, "head": 5e-3, "hidden": 0.01, "vector": 5e-3}


def test_peer_options_errors():
    with pytest.raises(ValueError, match="peer_options names 'adamw', which is not a steepest peer of this suite"):
        SuiteConfig(optimizers=["adamw"], peer_options={"adamw": {"betas": (0.9, 0.9)}})
    with pytest.raises(ValueError, match="peer_options of 'steepest-muon' set lr; use lrs or lr_multipliers"):
        SuiteConfig(optimizers=["steepest-muon"], peer_options={"steepest-muon": {"lr": 0.1}})
    with pytest.raises(ValueError, match="options apply to steepest peers only; 'adamw' is not one"):
        peers.build_peer("adamw", make_task("matrix-sensing").trial(0, 8).model, options={"lr": 1})


def test_defaults_peers_build_each_preset_exactly_as_for_model_does():
    trial = make_task("matrix-sensing").trial(0, 8)
    for name, (preset, _) in peers.DEFAULTS_PEERS.items():
        (opt,) = peers.build_peer(name, trial.model).optimizers
        ref = steepest.for_model(trial.model, preset)
        assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == \
            [{k: v for k, v in g.items() if k != "params"} for g in ref.param_groups], name
    assert peers.tuned_peer("steepest-muon-defaults") == "steepest-muon" and peers.tuned_peer("steepest-muon") is None
    # the quick suite runs a defaults peer exactly for the quick presets whose tuned settings differ
    for tuned in ("steepest-muon", "steepest-normuon", "steepest-scion", "steepest-lanton"):
        assert (f"{tuned}-defaults" in QUICK_OPTIMIZERS) == (not peers.defaults_are_tuned(tuned))
    assert not set(peers.DEFAULTS_PEERS) & set(peers.CORE_PEERS)  # the full suite's lr grid would move them


def test_defaults_rows_give_the_regret_in_nats_or_relative():
    lm, other = make_task("shakespeare-char"), make_task("digits-cnn")
    grid = lambda v: [{"lr_multiplier": 0.5, "mean": 0.0}, {"lr_multiplier": 1.0, "mean": v}]  # noqa: E731
    optimizers = {"steepest-muon": {"final": 2.0, "grid": grid(2.0)},
                  "steepest-muon-defaults": {"final": 1.0, "grid": grid(2.3)}}
    (row,) = defaults_rows(lm, optimizers)
    assert row["regret"] == pytest.approx(0.3) and row["unit"] == "nats" and not row["same"]
    (row,) = defaults_rows(other, optimizers)
    assert row["regret"] == pytest.approx(0.15) and row["unit"] == "relative"
    if peers.defaults_are_tuned("steepest-scion"):
        (row,) = defaults_rows(other, {"steepest-scion": {"final": 0.5, "grid": grid(0.5)}})
        assert row["same"] and row["regret"] == 0.0


def test_seed_noise_floors_the_tolerance_and_unscored_tasks_do_not_count(monkeypatch):
    """The noise floor: two seeds that disagree by 0.1 make a 0.05 gap on a non-LM task count as
    less than one tolerance. An unscored task's regret is reported but not in the score."""
    assert ds.seed_noise([{"seeds": [1.0, 1.1]}, {"seeds": [2.0, 2.1]}, {"seeds": [math.inf, 1.0]}]) == \
        pytest.approx(math.sqrt(0.005 * 2 / 2))
    assert ds.regret(0.15, 0.10, False, noise=0.1) == pytest.approx(0.05 / 0.2)
    a, b = {"lr": 1.0}, {"lr": 2.0}
    values = {"lm": {1.0: 2.00, 2.0: 2.01}, "ms": {1.0: 1.0, 2.0: 100.0}}
    study = ds.DefaultsStudy(tasks=[ds.DefaultsTask("lm", "shakespeare-char"),
                                    ds.DefaultsTask("ms", "matrix-sensing", scored=False)],
                             presets=("lion",), grids={"lion": [a, b]})
    monkeypatch.setattr(ds, "task_results", lambda st, task, preset, out: [
        {"options": o, "value": values[task.key][o["lr"]], "seeds": [values[task.key][o["lr"]]] * 2} for o in (a, b)])
    monkeypatch.setattr(ds, "current_defaults", lambda preset: a)
    res = ds.analyse_preset(study, "lion", None)
    assert res["chosen"]["options"] == a
    second = next(r for r in res["candidates"] if r["options"] == b)
    assert second["score"] == pytest.approx(0.2) and second["raw_score"] > 100  # ms counts in the raw score only
    assert res["scored"] == ["lm"]
