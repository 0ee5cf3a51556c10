"""``steepest bench distributed``: a real two-world launch on a tiny GPT, and the summary maths."""
from __future__ import annotations

import json

import pytest
import torch.distributed as dist

from steepest.bench.distributed import render, summarize
from steepest.bench.distributed_worker import MODES, OPTIMIZERS
from steepest.cli import main

requires_gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                   reason="torch.distributed with gloo is not available")


@requires_gloo
def test_cli_times_every_optimizer_and_mode_at_each_world_size(tmp_path, capsys):
    out = tmp_path / "dist"
    argv = ["bench", "distributed", "--ranks", "1,2", "--steps", "1", "--d-model", "16", "--layers", "1",
            "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "| optimizer | mode | 1 rank (ms) | 2 ranks (ms) | 2 vs 1 rank | vs torch-muon at 1 | vs torch-muon at 2 |" in stdout
    saved = json.loads((out / "distributed.json").read_text(encoding="utf-8"))
    assert [run["world"] for run in saved["runs"]] == [1, 2]
    assert {(r["optimizer"], r["mode"]) for r in saved["summary"]} == {(o, m) for o in OPTIMIZERS for m in MODES}
    assert saved["runs"][0]["matrices"] == 4  # one block: qkv, attention proj, MLP fc and proj
    assert all(r["median_ms"] > 0 for run in saved["runs"] for r in run["rows"])


def _results(times: dict[tuple[str, str, int], float]) -> dict:
    runs = {}
    for (name, mode, world), ms in times.items():
        runs.setdefault(world, {"world": world, "rows": [], "matrices": 2, "shapes": [[4, 4]],
                                "threads_per_rank": 1, "config": {"d_model": 4, "n_layer": 1}})
        runs[world]["rows"].append({"optimizer": name, "mode": mode, "median_ms": ms})
    return {"runs": [runs[w] for w in sorted(runs)], "config": {"steps": 3, "warmup": 1},
            "environment": {"processor": "cpu", "cpu_count": 2, "torch": "x"}}


def test_summary_ratios_are_against_one_rank_and_torch_muon_in_the_same_mode():
    results = _results({("steepest-muon", "fsdp", 1): 10.0, ("steepest-muon", "fsdp", 2): 6.0,
                        ("torch-muon", "fsdp", 1): 20.0, ("torch-muon", "fsdp", 2): 30.0})
    rows = {r["optimizer"]: r for r in summarize(results)}
    assert rows["steepest-muon"]["vs_one_rank"] == {1: 1.0, 2: pytest.approx(0.6)}
    assert rows["steepest-muon"]["vs_torch_muon"] == {1: 0.5, 2: pytest.approx(0.2)}
    assert rows["torch-muon"]["vs_one_rank"][2] == pytest.approx(1.5)
    assert "| steepest-muon | fsdp | 10.00 | 6.00 | 0.60x | 0.50x | 0.20x |" in render(results)
