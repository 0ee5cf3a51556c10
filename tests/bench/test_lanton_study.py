"""The LANTON study (steepest bench lanton), the bench loop's second gradients and the mean opt.step."""
from __future__ import annotations

import json
import math

import pytest
import torch

from steepest.bench import lanton_study as study_mod
from steepest.bench.lanton_study import BASE, Study, StudyTask, best_multipliers, run_study, tiny_study
from steepest.bench.peers import STUDY_NOISE, build_peer
from steepest.bench.peer_base import Peer
from steepest.bench.tasks import make_task
from steepest.bench.train import mean_ms, train_trial
from steepest.cli import main

from . import write_tiny_text


def _text_task(tmp_path, **options):
    text = write_tiny_text(tmp_path / "tiny.txt")
    task = make_task(f"text:{text}", n_layer=1, d_model=16, n_head=2, ctx=16, eval_batches=1, **options)
    task.prepare()
    return task


def test_the_loop_draws_a_second_batch_only_at_measuring_steps(tmp_path):
    """steepest-lanton-second measures every noise_every steps: the loop computes a second gradient
    (from the trial's own second stream) at those steps only, and the optimizer estimates from it."""
    from steepest.bench.tasks.base import Budget

    task = _text_task(tmp_path)
    trial = task.trial(0, 2)
    calls = []
    real = trial.second_loss

    def counted():
        calls.append(1)
        return real()

    trial.second_loss = counted
    peer = build_peer("steepest-lanton-second", trial.model)
    every = STUDY_NOISE["noise_every"]
    record = train_trial(task, trial, peer, Budget(steps=2 * every + 1, batch_size=2, eval_every=every))
    assert record["status"] == "ok" and len(calls) == 2
    opt = peer.optimizers[0]
    assert {int(s["noise_count"]) for s in opt.state.values() if "noise_count" in s} == {2}
    # the main batch stream is untouched by the second one: the same seed's first batch
    fresh, other = task.trial(0, 2), task.trial(0, 2)
    other.second_loss()
    assert torch.equal(fresh.train_loss(), other.train_loss())


def test_peer_passes_second_gradients_only_to_optimizers_that_ask():
    class Recorder(torch.optim.SGD):
        def __init__(self, params, wants):
            super().__init__(params, lr=0.1)
            self.wants, self.got = wants, []

        def needs_second_grads(self):
            return self.wants

        def step(self, closure=None, second_grads=None):  # noqa: D401 - the torch signature
            self.got.append(second_grads)

    a, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    asks, plain = Recorder([a], True), Recorder([b], False)
    peer = Peer("p", [asks, plain], step_covers="")
    assert peer.needs_second_grads()
    peer.step(second_grads={a: torch.ones(2)})
    assert asks.got[0] is not None and plain.got == [None]
    assert not Peer("q", [plain], step_covers="").needs_second_grads()


def test_mean_ms_counts_the_rare_expensive_steps():
    times = [1.0, 1.0, 1.0] + [0.010] * 9 + [0.100]  # the first three are warm-up
    assert mean_ms(times) == pytest.approx(1000 * (0.09 + 0.1) / 10)
    from steepest.bench.train import median_ms
    assert median_ms(times) == pytest.approx(10.0)


def test_best_multipliers_treat_a_divergence_as_worst():
    class C:
        def __init__(self, opt, mult, lr):
            self.optimizer, self.lr_multiplier, self.lr = opt, mult, lr

    ok = lambda v: {"status": "ok", "final": {"val_loss": v}}  # noqa: E731
    records = [(C("a", 1.0, 0.1), ok(1.9)), (C("a", 1.0, 0.1), ok(2.1)),
               (C("a", 2.0, 0.2), ok(1.5)), (C("a", 2.0, 0.2), {"status": "diverged", "final": {}}),
               (C("a", 0.5, 0.05), ok(2.1)), (C("a", 0.5, 0.05), ok(2.1))]
    best = best_multipliers(records)["a"]
    assert best["best_multiplier"] == 1.0 and best["best_lr"] == 0.1
    assert best["grid"][2.0] == math.inf and best["grid"][0.5] == pytest.approx(2.1)


def test_tiny_study_end_to_end_and_resume(tmp_path):
    text = write_tiny_text(tmp_path / "tiny.txt")
    study = tiny_study(f"text:{text}")
    study.tasks = study.tasks[:1]
    out = tmp_path / "study"
    results = run_study(study, out)
    task = results[study.tasks[0].key]
    rows = task["optimizers"]
    assert set(rows) == {*study.tasks[0].optimizers, "torch-muon"}
    for name, row in rows.items():
        assert row["seeds"] == 3 and len(row["finals"]) == 3 and math.isfinite(row["final"]), name
        assert row["best_multiplier"] in (0.5, 2.0) or name == "torch-muon"
        assert row["opt_step_mean_ms"] > 0 and row["robust_multipliers"]
    assert task["target"] == pytest.approx(rows["adamw"]["final"])
    assert set(task["gaps"]) == {"steepest-lanton-alpha-sqrt", "steepest-lanton-second"}
    assert task["gaps"]["steepest-lanton-alpha-sqrt"] == pytest.approx(
        rows["steepest-lanton-alpha-sqrt"]["final"] - rows[BASE]["final"])
    report = (out / "report.md").read_text(encoding="utf-8")
    assert report.startswith("# LANTON study") and "## Gap to the base" in report and "| steepest-lanton-base |" in report
    saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert saved["study"]["noise"] == STUDY_NOISE and saved["tasks"].keys() == results.keys()
    cells = sorted(p.stat().st_mtime_ns for p in out.rglob("cells/**/*.json"))
    run_study(study, out)  # resumes: no cell trains again
    assert sorted(p.stat().st_mtime_ns for p in out.rglob("cells/**/*.json")) == cells


def test_default_study_shape():
    study = Study()
    keys = [t.key for t in study.tasks]
    assert keys == ["shakespeare-char", "gpt-2x96", "gpt-4x96", "gpt-8x96", "gpt-16x96"]
    assert study.grid == (0.25, 0.5, 1.0, 2.0, 4.0, 8.0) and study.grid_seeds == (0, 1)
    assert study.confirm_seeds == (2,)
    for task in study.tasks:
        assert {"adamw", "steepest-muon", BASE, "steepest-lanton-sqrt-ratio", "steepest-lanton-alpha-sqrt"} <= set(
            task.optimizers)
        assert ("steepest-lanton-second" in task.optimizers) == (task.depth <= 4)
        suites = study.grid_suites(task)
        assert suites["grid-torch-muon"].optimizers == ["torch-muon"]
        assert suites["grid"].threads == 1 and suites["grid"].tasks == ["shakespeare-char"]
    assert isinstance(study.tasks[0], StudyTask) and "steepest-lanton-every-step" in study.tasks[0].optimizers


def test_cli_lanton_options(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["bench", "lanton", "--full"])
    assert "takes --smoke (a tiny study) or no size option" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--jobs", "2"])
    assert "--jobs does not apply to `steepest bench suite`" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "lanton", "--text", str(tmp_path / "missing.txt")])
    assert "--text: no such file" in capsys.readouterr().err


def test_cli_smoke_study_on_a_text(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(study_mod, "tiny_tasks", _one_tiny_task)
    text = write_tiny_text(tmp_path / "tiny.txt")
    out = tmp_path / "out"
    assert main(["bench", "lanton", "--smoke", "--text", str(text), "--out", str(out), "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert "# LANTON study" in stdout and f"Text: text:{text}" in stdout
    assert f"report written to {out / 'report.md'}" in stdout


def _one_tiny_task():
    task = study_mod.StudyTask("gpt-1x16", 1, {"d_model": 16, "n_head": 2, "ctx": 16, "eval_batches": 1,
                                                "n_layer": 1}, steps=3, batch_size=2, eval_every=3,
                               optimizers=("adamw", BASE), torch_muon_grid=())
    return [task]
