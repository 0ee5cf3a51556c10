"""steepest.bench.runner, peers and report: schedule, state size, summary maths, end-to-end runs."""
from __future__ import annotations

import json
import math

import pytest
import torch

from steepest.bench import peers, report, runner
from steepest.bench.gpt import GPT, GPTConfig
from steepest.bench.runner import BenchConfig

from . import TINY_MODEL, write_tiny_text


def tiny_config(text_path, **overrides) -> BenchConfig:
    values = dict(text_file=str(text_path), steps=10, batch_size=4, eval_every=5, eval_batches=2,
                  seed=3, **TINY_MODEL)
    values.update(overrides)
    return BenchConfig(**values)


def test_schedule_warmup_then_cosine_to_final_fraction():
    mult = [runner.lr_multiplier(s, total=100, warmup=10, final_fraction=0.1) for s in range(100)]
    assert mult[0] == pytest.approx(0.1) and mult[9] == pytest.approx(1.0)
    assert mult[10] == pytest.approx(1.0) and mult[99] == pytest.approx(0.1)
    midpoint = 10 + (99 - 10) / 2  # the cosine is half-way down half-way through the decay
    assert runner.lr_multiplier(midpoint, 100, 10, 0.1) == pytest.approx(0.55)
    assert all(a >= b for a, b in zip(mult[10:], mult[11:]))
    assert BenchConfig(steps=300).warmup == 15 and BenchConfig(steps=10, warmup_steps=50).warmup == 10


def test_config_validation_messages():
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'; choose from adamw, torch-muon"):
        BenchConfig(optimizers=["adamw", "sgd"])
    with pytest.raises(ValueError, match="listed twice"):
        BenchConfig(optimizers=["adamw", "adamw"])
    with pytest.raises(ValueError, match="steps must be >= 1"):
        BenchConfig(steps=0)
    with pytest.raises(ValueError, match="lr given for unknown optimizer 'x'"):
        BenchConfig(lrs={"x": 0.1})
    round_trip = BenchConfig.from_dict({**BenchConfig(steps=7).to_dict(), "future_key": 1})
    assert round_trip.steps == 7


def test_state_bytes_counts_adamw_moments_exactly():
    model = GPT(GPTConfig(vocab_size=11, **TINY_MODEL))
    peer = peers.build_peer("adamw", model)
    model(torch.zeros(2, 8, dtype=torch.long), torch.zeros(2, 8, dtype=torch.long))[1].backward()
    peer.step()
    n_tensors = len(list(model.parameters()))
    n_elements = sum(p.numel() for p in model.parameters())
    # exp_avg and exp_avg_sq in float32, plus one float32 scalar "step" per tensor.
    assert peers.state_bytes(peer.optimizers) == 2 * 4 * n_elements + 4 * n_tensors


def test_peers_follow_the_documented_recipes():
    model = GPT(GPTConfig(vocab_size=84))
    adamw = peers.build_peer("adamw", model)
    (opt,) = adamw.optimizers
    assert opt.defaults["lr"] == 4e-3 and opt.defaults["betas"] == (0.9, 0.95)
    decays = {g["weight_decay"]: sum(p.ndim for p in g["params"]) // len(g["params"]) for g in opt.param_groups}
    assert decays == {0.1: 2, 0.0: 1}

    muon = peers.build_peer("torch-muon", model)
    torch_muon, aux = muon.optimizers
    assert isinstance(torch_muon, torch.optim.Muon) and isinstance(aux, torch.optim.AdamW)
    assert sum(p.numel() for g in torch_muon.param_groups for p in g["params"]) == 786_432
    group = torch_muon.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.02, 0.95, True, 0.0)
    assert aux.param_groups[0]["lr"] == 2e-3 and aux.param_groups[0]["weight_decay"] == 0.0
    assert peers.build_peer("torch-muon", model, lr=0.04).optimizers[0].param_groups[0]["lr"] == 0.04
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        peers.build_peer("sgd", model)


def test_every_registered_preset_is_a_default_bench_peer():
    from steepest.optim import PRESETS

    assert {preset for preset, _ in peers.STEEPEST_PEERS.values()} == set(PRESETS)
    assert set(runner.DEFAULT_OPTIMIZERS) == set(peers.PEER_NAMES)
    model = GPT(GPTConfig(vocab_size=84))
    for name, (preset, kwargs) in peers.STEEPEST_PEERS.items():
        peer = peers.build_peer(name, model)
        (opt,) = peer.optimizers
        assert isinstance(opt, PRESETS[preset]), name
        assert peer.hyperparameters["lr"] == opt.defaults["lr"]
        if "lr" in kwargs:
            assert opt.defaults["lr"] == kwargs["lr"], name
            assert peers.build_peer(name, model, lr=0.5 * kwargs["lr"]).optimizers[0].defaults["lr"] == 0.5 * kwargs["lr"]
        assert "parameter" in peer.explanation  # the report shows what each parameter gets


def _fake_run(final, curve, opt_ms, state=1.0):
    return {"status": "ok", "final_val_loss": final, "opt_step_ms": opt_ms, "step_ms": opt_ms + 100.0,
            "fwd_bwd_ms": 100.0, "peak_rss_mib": 400.0, "state_mib": state,
            "curve": [{"step": s, "val_loss": v, "train_seconds": s * 0.1} for s, v in curve]}


def test_summary_targets_ratios_and_headlines():
    runs = {
        "adamw": _fake_run(2.0, [(0, 4.4), (50, 2.6), (100, 2.2), (150, 2.0)], 3.5, state=6.0),
        "torch-muon": _fake_run(1.7, [(0, 4.4), (50, 1.99), (100, 1.8), (150, 1.7)], 760.0, state=3.0),
        "steepest-muon": _fake_run(1.7, [(0, 4.4), (50, 2.1), (100, 1.8), (150, 1.7)], 24.0, state=3.0),
        "steepest-scion": {"status": "skipped", "reason": "import failed"},
    }
    summary = runner.summarize(BenchConfig(), runs)
    assert summary["target_loss"] == 2.0 and "AdamW" in summary["target_source"]
    assert runs["adamw"]["steps_to_target"] == 150 and runs["steepest-muon"]["steps_to_target"] == 100
    assert runs["torch-muon"]["steps_to_target"] == 50
    ratios = summary["ratios"]["steepest-muon"]
    assert ratios["vs_torch_muon"]["opt_step_ms"] == pytest.approx(24.0 / 760.0)
    assert ratios["vs_adamw"]["steps_to_target"] == pytest.approx(100 / 150)
    assert ratios["vs_adamw"]["state_mib"] == pytest.approx(0.5)
    assert "steepest-scion" not in summary["ratios"] and "adamw" not in summary["ratios"]
    assert summary["ratios"]["torch-muon"]["vs_adamw"]["steps_to_target"] == pytest.approx(50 / 150)
    assert ("steepest.Muon optimizer step: 0.03x torch.optim.Muon's (24.0 ms vs 760.0 ms)"
            in summary["headlines"])
    assert any(h.startswith("steepest.Muon reaches val 2.000 in 0.67x torch.optim.AdamW's steps (100 vs 150)")
               for h in summary["headlines"])
    # An explicit target overrides AdamW's final loss; an unreachable one gives no step count.
    summary = runner.summarize(BenchConfig(target_loss=1.0), runs)
    assert summary["target_loss"] == 1.0 and runs["adamw"]["steps_to_target"] is None


def test_end_to_end_isolated_runs_write_full_report(tmp_path):
    text = write_tiny_text(tmp_path / "tiny.txt")
    config = tiny_config(text, optimizers=["adamw", "steepest-muon"])
    results = runner.run_benchmark(config, show_progress=False)
    paths = report.write_report(results, tmp_path / "out")

    runs = results["runs"]
    assert [runs[n]["status"] for n in ("adamw", "steepest-muon")] == ["ok", "ok"], results["notes"]
    for run in runs.values():
        assert run["isolated"] is True and run["steps_done"] == 10
        assert [p["step"] for p in run["curve"]] == [0, 5, 10]
        assert run["curve"][0]["val_loss"] == pytest.approx(math.log(results["data"]["vocab_size"]), abs=0.15)
        assert run["final_val_loss"] < run["curve"][0]["val_loss"]
        assert run["state_mib"] > 0 and run["peak_rss_mib"] >= run["rss_before_train_mib"] > 50
        assert 0 < run["opt_step_ms"] < run["step_ms"]
    # Same seed, same init: both optimizers start from the identical val loss.
    assert runs["adamw"]["curve"][0]["val_loss"] == runs["steepest-muon"]["curve"][0]["val_loss"]
    assert results["target_loss"] == runs["adamw"]["final_val_loss"]

    saved = json.loads(paths["results"].read_text(encoding="utf-8"))
    assert set(saved["ratios"]["steepest-muon"]["vs_adamw"]) >= {"opt_step_ms", "steps_to_target", "step_ms"}
    assert saved["ratios"]["steepest-muon"]["vs_adamw"]["opt_step_ms"] == pytest.approx(
        runs["steepest-muon"]["opt_step_ms"] / runs["adamw"]["opt_step_ms"])
    assert saved["config"]["steps"] == 10 and saved["model"]["d_model"] == 32
    assert len(saved["runs"]["adamw"]["train_loss"]) == 10

    markdown = paths["report"].read_text(encoding="utf-8")
    assert "| optimizer | val@5 | val@10 | final val |" in markdown
    assert "| steepest-muon |" in markdown and "## Ratios" in markdown and "## Machine" in markdown
    pytest.importorskip("matplotlib")
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_in_process_runs_are_identical_and_unavailable_peer_is_skipped(tmp_path, monkeypatch):
    def unavailable(model, lr=None):
        raise peers.PeerUnavailable("import steepest failed: test")

    monkeypatch.setitem(peers.BUILDERS, "steepest-scion", unavailable)
    text = write_tiny_text(tmp_path / "tiny.txt")
    config = tiny_config(text, optimizers=["adamw", "steepest-scion"], isolate=False, steps=6)
    first = runner.run_benchmark(config, show_progress=False)
    second = runner.run_benchmark(config, show_progress=False)
    assert first["runs"]["adamw"]["curve"] == [
        {**p, "train_seconds": q["train_seconds"]}
        for p, q in zip(second["runs"]["adamw"]["curve"], first["runs"]["adamw"]["curve"])]
    assert first["runs"]["adamw"]["train_loss"] == second["runs"]["adamw"]["train_loss"]
    assert first["runs"]["steepest-scion"] == {"name": "steepest-scion", "status": "skipped",
                                               "reason": "import steepest failed: test"}
    assert "steepest-scion skipped: import steepest failed: test" in first["notes"]
    paths = report.write_report(first, tmp_path / "out")
    assert "steepest-scion skipped: import steepest failed: test" in paths["report"].read_text(encoding="utf-8")


def test_text_too_short_for_context_is_a_clear_error(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("abcdefghij" * 20, encoding="utf-8")
    config = tiny_config(short, optimizers=["adamw"], isolate=False)
    with pytest.raises(ValueError, match="too few for a context of 32"):
        runner.train_one(config, "adamw", show_progress=False)


def test_report_columns_are_the_quarters_of_the_run():
    curve = [{"step": s, "val_loss": 1.0, "train_seconds": 0.0} for s in range(0, 301, 25)]
    results = {"config": {"steps": 300}, "runs": {"adamw": {"curve": curve}}}
    assert report._eval_columns(results) == [75, 150, 225, 300]
    short = {"config": {"steps": 10}, "runs": {"adamw": {"curve": curve[:3]}}}
    assert report._eval_columns(short) == [25, 50]


def test_steepest_scion_records_its_default_and_overridden_lr():
    factory = pytest.importorskip("steepest.factory")
    model = GPT(GPTConfig(vocab_size=84))
    default = peers.build_peer("steepest-scion", model)
    assert default.hyperparameters["lr"] == factory.for_model(model, "scion").defaults["lr"]
    tuned = peers.build_peer("steepest-scion", model, lr=0.01)
    assert tuned.hyperparameters["lr"] == 0.01
    assert {g["lr"] for g in tuned.optimizers[0].param_groups} == {0.01}


class _Stream:
    """A text stream that says whether it is a terminal."""

    def __init__(self, tty: bool) -> None:
        self.tty, self.text = tty, ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


def test_progress_redraws_on_a_terminal_and_prints_lines_otherwise():
    from steepest.bench.progress import Progress, format_seconds

    tty = _Stream(tty=True)
    bar = Progress("adamw", 4, stream=tty, width=4)
    for step in range(1, 5):
        bar.update(step, loss=3.0 - step / 10, val_loss=2.5 if step == 4 else None)
    bar.close()
    assert tty.text.count("\r") == 4 and tty.text.endswith("\n") and tty.text.count("\n") == 1
    assert "[####] 4/4  loss 2.6000  val 2.5000  0:00" in tty.text

    log = _Stream(tty=False)
    bar = Progress("torch-muon", 100, stream=log, width=10)
    for step in range(1, 101):
        bar.update(step, loss=1.0)
    bar.close("done")
    lines = log.text.splitlines()
    assert len(lines) == 11 and "\r" not in log.text and lines[-1] == "done"
    assert lines[0].strip().startswith("torch-muon [#---------] 10/100  loss 1.0000")
    assert format_seconds(75.3) == "1:15" and format_seconds(3725) == "1:02:05"


def test_lanton_run_records_layer_stats_and_plots_them(tmp_path):
    text = write_tiny_text(tmp_path / "tiny.txt")
    config = tiny_config(text, optimizers=["steepest-lanton", "steepest-lanton-base"], isolate=False, steps=10)
    results = runner.run_benchmark(config, show_progress=False)
    snapshots = results["runs"]["steepest-lanton"]["layer_stats"]
    assert [s["step"] for s in snapshots] == [5, 10]
    hidden = [row for row in snapshots[-1]["layers"] if row["role"] == "hidden"]
    assert hidden and all(row["noise"] > 0 and 0 < row["factor"] <= 1 for row in hidden)
    assert max(row["factor"] for row in hidden) == 1.0 > min(row["factor"] for row in hidden)
    assert results["runs"]["steepest-lanton-base"]["layer_stats"] == []
    paths = report.write_report(results, tmp_path / "out")
    markdown = paths["report"].read_text(encoding="utf-8")
    assert "## Layerwise lr factors: steepest-lanton" in markdown
    assert "steepest-lanton-base" not in markdown.split("## Layerwise lr factors")[1].split("##")[0]
    pytest.importorskip("matplotlib")
    assert paths["layer_plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_headline_labels_are_unique_per_peer():
    labels = [runner.steepest_label(name) for name in peers.STEEPEST_PEERS]
    assert len(set(labels)) == len(labels), labels
    assert runner.steepest_label("steepest-lanton-base") == "steepest.LANTON(noise_adaptive=False)"
    assert runner.steepest_label("steepest-muon-lanton") == "steepest.Muon(noise_adaptive=True)"
