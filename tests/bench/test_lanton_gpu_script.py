"""benchmarks/lanton_gpu.py's CPU path at a tiny size (the GPU run itself needs a CUDA device)."""
from __future__ import annotations

import json
import runpy
from pathlib import Path

from . import write_tiny_text

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "lanton_gpu.py"


def test_script_runs_tiny_on_cpu_and_writes_its_report(tmp_path):
    main = runpy.run_path(str(SCRIPT))["main"]
    text = write_tiny_text(tmp_path / "tiny.txt")
    out = tmp_path / "out"
    argv = ["--tiny", "--device", "cpu", "--text", str(text), "--optimizers", "adamw,steepest-lanton-alpha-sqrt",
            "--lr-mults", "1", "--steps", "12", "--out", str(out)]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert [r["optimizer"] for r in results["runs"]] == ["adamw", "steepest-lanton-alpha-sqrt"]
    for run in results["runs"]:
        assert run["status"] == "ok" and run["final"] < run["curve"][0]["val_loss"]
        assert run["opt_step_mean_ms"] > 0 and [p["step"] for p in run["curve"]] == [0, 3, 6, 9, 12]
    lanton = results["runs"][1]
    assert lanton["factors"] and any(f["factor"] < 1.0 for f in lanton["factors"])  # measured at step 10
    assert results["environment"]["tokens"] == 12 * 4 * 16 and results["skipped"] == []
    assert (out / "report.md").read_text(encoding="utf-8").startswith("# LANTON on one GPU")


def test_script_skips_runs_past_its_time_budget(tmp_path):
    main = runpy.run_path(str(SCRIPT))["main"]
    text = write_tiny_text(tmp_path / "tiny.txt")
    argv = ["--tiny", "--device", "cpu", "--text", str(text), "--optimizers", "adamw", "--lr-mults", "1,2",
            "--max-minutes", "0", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    assert results["runs"] == [] and results["skipped"] == ["adamw x1", "adamw x2"]
