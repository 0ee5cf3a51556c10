"""steepest.bench.overhead (``steepest bench overhead``): one optimizer step, steepest against its peers.

The runs here are the smoke settings (the tiny workload and matrix sensing, two timed steps), so the
file takes seconds. Times are checked for consistency only (positive, min <= median, ratios equal to
the quotient of the medians), never for speed; the budget guard is tested with a fake clock and
with a budget no real step can meet (1 ns).
"""
from __future__ import annotations

import json
import sys

import pytest
import torch

from steepest.bench import overhead, overhead_report, overhead_workloads
from steepest.bench.overhead import DEFAULT_OPTIMIZERS, PAIRS, build_optimizer, run_overhead, smoke_settings, \
    time_steps
from steepest.bench.overhead_workloads import build_workload, seeded_gradients, trainable
from steepest.bench.peer_base import Peer
from steepest.cli import build_parser, main

TINY_PARAMS = 22 * 64 + 42 * 128 + 64 * 16  # 22 matrices of 8x8, 21 each of 16x8 and 8x16, 64 vectors of 16


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke run (default optimizers) and the files it writes."""
    results = run_overhead(**smoke_settings())
    out = tmp_path_factory.mktemp("overhead")
    paths = overhead_report.write_overhead_report(results, out)
    return results, paths


def test_smoke_run_writes_both_files_with_the_expected_structure(smoke):
    results, paths = smoke
    assert paths == {"report": paths["report"].parent / "overhead.md",
                     "results": paths["report"].parent / "overhead.json"}
    saved = json.loads(paths["results"].read_text(encoding="utf-8"))
    assert saved["benchmark"] == "steepest bench overhead"
    assert saved["settings"]["workloads"] == ["tiny", "matrix-sensing"]
    assert saved["settings"]["optimizers"] == list(DEFAULT_OPTIMIZERS)
    assert (saved["settings"]["warmup"], saved["settings"]["repeats"]) == (1, 2)
    assert saved["environment"]["device"] == "cpu"
    assert saved["environment"]["torch_threads"] == torch.get_num_threads()
    assert {"processor", "torch", "cpu_count"} <= set(saved["environment"]["machine"])
    assert saved["pairs"]["steepest-muon"] == ["torch-muon", "hb-muon"]
    assert saved["pairs"]["steepest-signum"] == ["po-lion"]
    assert saved["pairs"]["steepest-adamw-fallback"] == ["adamw-foreach"]
    tiny, sensing = saved["workloads"]
    assert (tiny["name"], tiny["params"], tiny["tensors"]) == ("tiny", TINY_PARAMS, 128)
    assert (sensing["name"], sensing["params"], sensing["tensors"]) == ("matrix-sensing", 160, 1)
    for workload in saved["workloads"]:
        assert [row["optimizer"] for row in workload["rows"]] == list(DEFAULT_OPTIMIZERS)
        for row in workload["rows"]:
            assert row["status"] in ("ok", "unavailable")  # a 2 s budget is plenty for these models
            if row["status"] == "unavailable":
                assert row["side"] == "peer" and row["reason"]
            else:
                assert row["steps"] == 2 and len(row["warmup_ms"]) == 1
                # every optimizer steps every tensor of the model
                assert (row["params"], row["tensors"]) == (workload["params"], workload["tensors"])

    text = paths["report"].read_text(encoding="utf-8")
    assert text.startswith("# steepest bench overhead\n")
    assert "after 1 warm-up step (at least 2 timed steps and 0 s, at most 2 s per optimizer" in text
    assert text.count("| optimizer | ms median | ms min | params | tensors | ratio vs its peer |") == 2
    assert "## tiny\n" in text and "## matrix-sensing\n" in text and "## Environment\n" in text
    assert f": {TINY_PARAMS:,} parameters in 128 tensors." in text
    assert "- torch threads: " in text and "## Notes\n" in text
    assert "steepest-signum is compared with pytorch-optimizer's Lion, its nearest elementwise peer" in text
    assert text == overhead_report.render_markdown(results)


def test_every_steepest_row_has_a_positive_time_and_its_ratios(smoke):
    results, _ = smoke
    for workload in results["workloads"]:
        rows = {row["optimizer"]: row for row in workload["rows"]}
        steepest = [row for row in workload["rows"] if row["side"] == "steepest"]
        assert [row["optimizer"] for row in steepest] == [
            "steepest-muon", "steepest-lion", "steepest-signum", "steepest-diffgrad", "steepest-adamw-fallback"]
        for row in steepest:
            assert row["status"] == "ok"
            assert row["median_ms"] > 0 and 0 < row["min_ms"] <= row["median_ms"]
            timed_peers = [p for p in PAIRS[row["optimizer"]] if rows.get(p, {}).get("status") == "ok"]
            assert [entry["peer"] for entry in row["ratios"]] == timed_peers
            for entry in row["ratios"]:
                assert entry["ratio"] == pytest.approx(row["median_ms"] / rows[entry["peer"]]["median_ms"])
        peer_rows = [row for row in workload["rows"] if row["side"] == "peer" and row["status"] != "unavailable"]
        assert all("ratios" in row and row["ratios"] == [] for row in peer_rows)


def test_the_fallback_and_the_foreach_peers_are_what_their_names_say():
    workload = build_workload("shakespeare-char")
    fallback = build_optimizer("steepest-adamw-fallback", workload.model, workload.roles)
    (opt,) = fallback.optimizers
    assert {(g["transform"], g["geometry"]) for g in opt.param_groups} == {("adam", "identity")}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(trainable(workload.model)) == 37
    adamw = build_optimizer("adamw-foreach", workload.model, workload.roles)
    assert adamw.name == "adamw-foreach"
    assert all(g["foreach"] and g["weight_decay"] == 0.0 for g in adamw.optimizers[0].param_groups)
    if hasattr(torch.optim, "Muon"):
        torch_muon = build_optimizer("torch-muon", workload.model, workload.roles)
        aux = [o for o in torch_muon.optimizers if isinstance(o, torch.optim.AdamW)]
        assert len(aux) == 1 and all(g["foreach"] for g in aux[0].param_groups)
        assert isinstance(torch_muon.optimizers[0], torch.optim.Muon)


def test_gradients_are_seeded_and_the_same_for_every_copy():
    model = build_workload("tiny").model
    first, second = seeded_gradients(model, 3), seeded_gradients(model, 3)
    assert len(first) == 128 and all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], seeded_gradients(model, 4)[0])
    assert [g.shape for g in first] == [p.shape for p in trainable(model)]


def test_an_unavailable_peer_is_reported_with_its_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "heavyball", None)  # `import heavyball` now raises ImportError

    def broken(name, model, **kwargs):
        raise TypeError("Lion() got an unexpected keyword argument 'betas'")

    original = overhead.build_peer
    monkeypatch.setattr(overhead, "build_peer",
                        lambda name, model, **kw: broken(name, model) if name == "po-lion" else original(name, model, **kw))
    results = run_overhead(workloads=["tiny"], optimizers=["steepest-muon", "hb-muon", "po-lion"], warmup=0,
                           repeats=1, min_time_s=0.0, budget_s=5.0)
    rows = {row["optimizer"]: row for row in results["workloads"][0]["rows"]}
    assert rows["hb-muon"]["status"] == "unavailable"
    assert rows["hb-muon"]["reason"].startswith("heavyball is not installed (pip install heavyball)")
    assert rows["po-lion"] == {"optimizer": "po-lion", "side": "peer", "status": "unavailable",
                               "reason": "building it failed: TypeError: Lion() got an unexpected keyword "
                                         "argument 'betas'"}
    assert rows["steepest-muon"]["status"] == "ok" and rows["steepest-muon"]["ratios"] == []
    text = overhead_report.render_markdown(results)
    assert "| hb-muon | unavailable | – | – | – | – |" in text
    assert "- hb-muon on tiny: unavailable: heavyball is not installed" in text


def test_a_failing_steepest_optimizer_raises(monkeypatch):
    def broken(name, model, roles=None):
        raise RuntimeError("boom")

    monkeypatch.setattr(overhead, "build_optimizer", broken)
    with pytest.raises(RuntimeError, match="boom"):
        run_overhead(workloads=["tiny"], optimizers=["steepest-lion"], warmup=0, repeats=1, min_time_s=0.0)


def test_gradients_are_attached_again_before_every_step(monkeypatch):
    # heavyball drops .grad after its step; every step must still see the gradients
    seen = []

    class Dropper(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, {})

        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    seen.append(p.grad is not None)
                    p.grad = None

    monkeypatch.setattr(overhead, "build_optimizer",
                        lambda name, model, roles=None: Peer(name, [Dropper(model.parameters())], "drops .grad"))
    results = run_overhead(workloads=["matrix-sensing"], optimizers=["po-lion"], warmup=1, repeats=3,
                           min_time_s=0.0, budget_s=5.0)
    (row,) = results["workloads"][0]["rows"]
    assert (row["status"], row["steps"], row["covers"]) == ("ok", 3, "drops .grad")
    assert seen == [True] * 4


class FakeClock:
    """A clock that only the fake step moves."""

    def __init__(self) -> None:
        self.now = 0.0
        self.steps = 0

    def __call__(self) -> float:
        return self.now

    def step(self, seconds: float):
        def run() -> None:
            self.now += seconds
            self.steps += 1
        return run


def test_budget_guard_reports_a_warmup_step_over_the_budget_alone():
    clock = FakeClock()
    timing = time_steps(clock.step(5.0), warmup=3, repeats=20, min_time_s=0.5, budget_s=1.0, clock=clock)
    assert clock.steps == 1  # nothing after the step that broke the budget
    assert (timing.status, timing.samples_ms, timing.warmup_ms) == ("over-budget", [5000.0], [5000.0])
    assert timing.median_ms == timing.min_ms == 5000.0


def test_budget_guard_cuts_the_timed_steps_and_min_time_extends_them():
    clock = FakeClock()
    short = time_steps(clock.step(0.375), warmup=1, repeats=5, min_time_s=0.0, budget_s=1.0, clock=clock)
    # warm-up 0.375 s, then timed steps until 1 s has passed: 0.75, 1.125
    assert (short.status, short.samples_ms, clock.steps) == ("short", [375.0, 375.0], 3)
    clock = FakeClock()
    timing = time_steps(clock.step(0.125), warmup=2, repeats=2, min_time_s=0.5, budget_s=10.0, clock=clock)
    assert (timing.status, len(timing.samples_ms), len(timing.warmup_ms)) == ("ok", 4, 2)
    calls = []
    clock = FakeClock()
    time_steps(clock.step(0.001), before=lambda: calls.append("before"), sync=lambda: calls.append("sync"),
               warmup=1, repeats=2, min_time_s=0.0, budget_s=10.0, clock=clock)
    assert calls == ["before", "sync", "sync"] * 3


def test_a_real_run_over_a_tiny_budget_is_flagged_not_repeated():
    results = run_overhead(workloads=["matrix-sensing"], optimizers=["steepest-signum", "po-lion"], warmup=2,
                           repeats=20, min_time_s=0.0, budget_s=1e-9)
    rows = results["workloads"][0]["rows"]
    timed = [row for row in rows if row["status"] != "unavailable"]
    assert timed[0]["optimizer"] == "steepest-signum"
    for row in timed:
        assert row["status"] == "over-budget" and row["steps"] == 1 and len(row["warmup_ms"]) == 1
        assert row["median_ms"] == row["min_ms"] == row["warmup_ms"][0] > 0
    text = overhead_report.render_markdown(results)
    assert "(1 cold step, over budget)" in text
    assert "- steepest-signum on matrix-sensing: one warm-up step took " in text
    assert "over the 1e-09 s budget; the time shown is that single cold step" in text


@pytest.mark.parametrize("kwargs, message", [
    ({"workloads": ["tiny", "mnist"]}, "unknown workload 'mnist'; choose from tiny, shakespeare-char, digits-cnn, "
                                       "matrix-sensing, matrix-sensing-asym, gpt2-small"),
    ({"optimizers": ["sgd"]}, "unknown optimizer 'sgd'; choose from adamw, torch-muon, steepest-muon"),
    ({"optimizers": ["po-lion", "po-lion"]}, "optimizer 'po-lion' is listed twice"),
    ({"repeats": 0}, "repeats must be an int >= 1, got 0"),
    ({"budget_s": 0.0}, "budget_s must be > 0, got 0.0"),
])
def test_bad_settings_name_the_known_values(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_overhead(**kwargs)


def test_gpt2_small_workload_has_gpt2_shapes():
    assert overhead_workloads.default_gpt2_blocks("cpu") == 1
    assert overhead_workloads.default_gpt2_blocks("cuda") == 12
    workload = build_workload("gpt2-small", gpt2_blocks=1)
    shapes = {name: tuple(p.shape) for name, p in workload.model.named_parameters()}
    assert shapes["tok_emb.weight"] == (50257, 768) and shapes["pos_emb.weight"] == (1024, 768)
    assert shapes["blocks.0.mlp.fc.weight"] == (3072, 768) and "blocks.1.ln1.weight" not in shapes
    assert workload.model.cfg.n_head == 12
    assert "1 of its 12 blocks" in workload.description


def test_cli_parses_bench_overhead_smoke_out(tmp_path):
    args = build_parser().parse_args(["bench", "overhead", "--smoke", "--out", str(tmp_path)])
    assert (args.what, args.budget, args.out) == ("overhead", "smoke", str(tmp_path))
    args = build_parser().parse_args(["bench", "overhead", "--workloads", "tiny,gpt2-small", "--optimizers",
                                      "steepest-muon,adamw-foreach", "--repeats", "5", "--warmup", "0",
                                      "--budget", "2.5", "--min-time", "0", "--threads", "1", "--device", "cpu",
                                      "--gpt2-blocks", "2"])
    assert args.workloads == ["tiny", "gpt2-small"] and args.optimizers == ["steepest-muon", "adamw-foreach"]
    assert (args.repeats, args.warmup, args.step_budget, args.min_time, args.threads, args.device,
            args.gpt2_blocks) == (5, 0, 2.5, 0.0, 1, "cpu", 2)


def test_cli_runs_bench_overhead_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["bench", "overhead", "--smoke", "--workloads", "tiny", "--optimizers", "steepest-lion,po-lion",
            "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("# steepest bench overhead\n") and "| steepest-lion | " in stdout
    assert f"report written to {out / 'overhead.md'}" in stdout
    saved = json.loads((out / "overhead.json").read_text(encoding="utf-8"))
    assert saved["settings"]["workloads"] == ["tiny"] and saved["settings"]["repeats"] == 2
    assert [row["optimizer"] for row in saved["workloads"][0]["rows"]] == ["steepest-lion", "po-lion"]


@pytest.mark.parametrize("argv, message", [
    (["bench", "overhead", "--quick"], "`steepest bench overhead` takes --smoke (a quick check) or no size option"),
    (["bench", "--workloads", "tiny"], "--workloads does not apply to `steepest bench suite` (it applies to: overhead)"),
    (["bench", "kernels", "--budget", "3"], "--budget does not apply to `steepest bench kernels`"),
    (["bench", "overhead", "--workloads", "tiny,mnist"], "argument --workloads: unknown workload 'mnist'; choose "
                                                         "from tiny, shakespeare-char"),
    (["bench", "overhead", "--optimizers", "sgd"], "argument --optimizers: unknown optimizer 'sgd'"),
    (["bench", "overhead", "--device", "nonsense"], "--device: not a torch device: 'nonsense'"),
    (["bench", "overhead", "--task", "digits-cnn"], "--task does not apply to `steepest bench overhead`"),
])
def test_bad_overhead_arguments_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err
