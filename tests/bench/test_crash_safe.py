"""Crash-safe cells (steepest.bench.checkpoint): a killed worker resumes mid-cell with the exact curve.

The main test SIGKILLs a real benchmark worker at a step drawn by a seeded generator, restarts it
with ``python -m steepest.bench.worker`` and compares the finished cell with an uninterrupted
worker's, float for float. The others cover the atomic-write protocol, unusable checkpoints and a
replanned cell in process.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import steepest

from steepest.bench import checkpoint as ckpt
from steepest.bench import runner
from steepest.bench.cells import CellStore, write_json_atomic
from steepest.bench.runner import SuiteConfig

from . import TINY_MODEL, Interrupted, train_cell as _train, write_tiny_text

OPTIMIZER = "steepest-muon"

#: a worker whose progress hook reports every finished step on stdout and waits for a line on stdin
#: before the next one, so the test can SIGKILL it at an exact step
HELD_WORKER = textwrap.dedent("""
    import sys
    from steepest.bench import progress, runner

    real = progress.Progress.update

    def update(self, step, *args, **kwargs):
        real(self, step, *args, **kwargs)
        print(f"step {step}", flush=True)
        sys.stdin.readline()

    progress.Progress.update = update
    sys.exit(runner.worker_main(sys.argv[1:]))
""")


def _config(tmp_path, **overrides) -> SuiteConfig:
    text = tmp_path / "tiny.txt"
    if not text.exists():
        write_tiny_text(text)
    values = dict(budget="smoke", tasks=[f"text:{text}"], optimizers=[OPTIMIZER], lr_multipliers=[1.0],
                  seeds=[0], steps=30, eval_every=10, threads=1, gpt_options=dict(TINY_MODEL))
    values.update(overrides)
    return SuiteConfig(**values)


def _plan(config: SuiteConfig, run_dir):
    """Write ``plan.json`` as ``run_suite`` does; return the task and the (single) cell."""
    tasks = runner.load_tasks(config)
    for task in tasks.values():
        task.prepare()
    (cell,) = runner.plan_cells(config, tasks, config.optimizers)
    write_json_atomic(run_dir / "plan.json", {"config": config.to_dict(), "cells": [cell.to_dict()]})
    return tasks[cell.task_key], cell


def _worker(run_dir, cell) -> list[str]:
    return ["--run-dir", str(run_dir), "--task", cell.task_key, "--optimizer", cell.optimizer, "--quiet"]


def _curve(record: dict) -> list[dict]:
    """The evaluation curve without its timings."""
    return [{k: v for k, v in point.items() if k != "train_seconds"} for point in record["curve"]]


def test_a_worker_killed_at_a_random_step_resumes_with_the_exact_loss_curve(tmp_path):
    env = runner._child_env()
    ref_dir, crash_dir = tmp_path / "reference", tmp_path / "crashed"
    _, cell = _plan(_config(tmp_path, checkpoint_every=0), ref_dir)  # uninterrupted, no checkpoints
    _, crash_cell = _plan(_config(tmp_path, checkpoint_every=4), crash_dir)
    assert crash_cell == cell
    module = [sys.executable, "-m", "steepest.bench.worker"]
    reference = subprocess.Popen(module + _worker(ref_dir, cell), env=env)  # runs beside the held one
    try:
        kill_at = random.Random(20240610).randrange(11, 30)  # after an evaluation and a checkpoint
        held = subprocess.Popen([sys.executable, "-c", HELD_WORKER, *_worker(crash_dir, cell)], env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        with held:
            for line in held.stdout:
                step = int(line.split()[1])
                if step == kill_at:  # step kill_at is done, its checkpoint (if due) not yet written
                    os.kill(held.pid, signal.SIGKILL)
                    break
                held.stdin.write("go\n")
                held.stdin.flush()
            assert held.wait(timeout=60) == -signal.SIGKILL
        partial = ckpt.partial_path(crash_dir, cell)
        saved = torch.load(partial, weights_only=True)
        last_checkpoint = 4 * ((kill_at - 1) // 4)
        assert saved["step"] == last_checkpoint and len(saved["records"]["train_loss"]) == last_checkpoint
        assert CellStore(crash_dir).load(cell) is None  # the cell is unfinished

        done = subprocess.run(module + _worker(crash_dir, cell), env=env, timeout=120)
        assert done.returncode == 0 and reference.wait(timeout=120) == 0
    finally:
        if reference.poll() is None:
            reference.kill()
            reference.wait()
    ref, resumed = CellStore(ref_dir).load(cell), CellStore(crash_dir).load(cell)
    assert ref["status"] == resumed["status"] == "ok" and len(resumed["train_loss"]) == 30
    assert resumed["train_loss"] == ref["train_loss"]  # bitwise: JSON keeps every float exactly
    assert _curve(resumed) == _curve(ref) and [p["step"] for p in ref["curve"]] == [0, 10, 20, 30]
    assert resumed["resumed_from_step"] == last_checkpoint and "checkpoint" not in ref
    assert resumed["checkpoint"]["segments"] == 2 and resumed["checkpoint"]["notes"] == []
    assert len(resumed["per_step_ms"]["step"]) == 30  # the kept steps of both segments
    assert not partial.exists() and not (crash_dir / "partial").exists()  # deleted once saved


def _tiny(tmp_path, optimizer: str, steps: int = 12, **options):
    config = _config(tmp_path, optimizers=[optimizer], steps=steps, eval_every=4, **options)
    tasks = runner.load_tasks(config)
    (task,) = tasks.values()
    task.prepare()
    (cell,) = runner.plan_cells(config, tasks, config.optimizers)
    return task, cell




@pytest.mark.parametrize("optimizer, diagnostics", [("adamw", False), ("torch-muon", False),
                                                     ("steepest-lanton", True), ("steepest-mfac", False)])
def test_every_kind_of_state_resumes_bit_for_bit(tmp_path, optimizer, diagnostics):
    """Moments, Muon's momentum, LANTON's noise EMAs (``layer_stats``), M-FAC's gradient window and
    the diagnostics' snapshots all come back: the resumed record equals the uninterrupted one."""
    task, cell = _tiny(tmp_path, optimizer, diagnostics=diagnostics)
    ref = _train(task, cell)
    path = ckpt.partial_path(tmp_path / "run", cell)
    with pytest.raises(Interrupted):
        _train(task, cell, ckpt.CellCheckpoint(path, cell.to_dict(), every=3), stop_at=8)
    resumed = _train(task, cell, ckpt.CellCheckpoint(path, cell.to_dict(), every=3))
    assert resumed["resumed_from_step"] == 6 and resumed["checkpoint"]["saves"] == 3  # steps 3, 6, 9
    for key in ("train_loss", "layer_stats", "final", "steps_done", "status"):
        assert resumed[key] == ref[key], key
    assert _curve(resumed) == _curve(ref)
    if diagnostics:
        assert resumed["diagnostics"]["snapshots"] == ref["diagnostics"]["snapshots"]
        assert [s["step"] for s in ref["diagnostics"]["snapshots"]] == [0, 4, 8, 12]
    if optimizer == "steepest-lanton":
        assert ref["layer_stats"]  # the noise-adaptive rates were recorded (and compared above)


def test_a_write_that_fails_midway_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "partial" / "cell.pt"
    check = ckpt.CellCheckpoint(path, {"lr": 1.0})
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(ckpt.os, "fsync", lambda fd: calls.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(ckpt.os, "replace", lambda a, b: calls.append("replace") or real_replace(a, b))
    check.save(4, {"w": torch.ones(3)}, {"train_loss": [1.0]})
    assert calls == ["fsync", "replace", "fsync"]  # the file's data, the rename, the directory

    real_save = torch.save

    def dies_midway(obj, handle):  # half the bytes reach the temp file, then the disk "fills up"
        real_save(obj, handle)
        handle.flush()
        handle.truncate(handle.tell() // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", dies_midway)
    with pytest.raises(OSError, match="No space left"):
        check.save(8, {"w": torch.zeros(3)}, {"train_loss": [1.0, 0.5]})
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    assert sorted(p.name for p in path.parent.iterdir()) == ["cell.pt"]  # no temp file left behind
    payload = check.load()
    assert payload["step"] == 4 and torch.equal(payload["state"]["w"], torch.ones(3))

    # A writer SIGKILLed mid-write leaves only its temp file: never read, cleaned up on load.
    (path.parent / f".{path.name}.99999.tmp").write_bytes(b"\x80\x02 half a pickle")
    assert check.load()["step"] == 4 and sorted(p.name for p in path.parent.iterdir()) == ["cell.pt"]
    assert check.notes == []
    ckpt.discard(path)
    assert not path.parent.exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign"])
def test_an_unusable_checkpoint_starts_the_cell_over_with_a_note(tmp_path, damage):
    task, cell = _tiny(tmp_path, OPTIMIZER)
    ref = _train(task, cell)
    path = ckpt.partial_path(tmp_path / "run", cell)
    with pytest.raises(Interrupted):
        _train(task, cell, ckpt.CellCheckpoint(path, cell.to_dict(), every=3), stop_at=8)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(4096))
    else:  # readable, right format and spec, but the records and state do not fit this cell
        payload = torch.load(path, weights_only=True)
        payload["state"]["model"] = {"weight": torch.zeros(2)}
        torch.save(payload, path)
    record = _train(task, cell, ckpt.CellCheckpoint(path, cell.to_dict(), every=3))
    assert record["resumed_from_step"] is None and record["checkpoint"]["segments"] == 1
    (note,) = record["checkpoint"]["notes"]
    assert ("cannot be resumed" if damage == "foreign" else "is unreadable") in note
    assert note.endswith("the cell started over")
    assert record["train_loss"] == ref["train_loss"] and _curve(record) == _curve(ref)


def test_a_replanned_cell_ignores_the_old_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    task, old = _tiny(tmp_path, OPTIMIZER)
    _, new = _tiny(tmp_path, OPTIMIZER, lrs={OPTIMIZER: 0.01})  # another base lr, same file name
    assert ckpt.partial_path(run_dir, new) == ckpt.partial_path(run_dir, old) and new.lr != old.lr
    with pytest.raises(Interrupted):
        _train(task, old, ckpt.CellCheckpoint(ckpt.partial_path(run_dir, old), old.to_dict(), every=3),
               stop_at=8)
    runner.run_pair(run_dir, [new], task, checkpoint_every=3)
    record = CellStore(run_dir).load(new)
    assert record["resumed_from_step"] is None
    assert "differently planned cell" in record["checkpoint"]["notes"][0]
    assert record["train_loss"] == _train(task, new)["train_loss"]
    assert not (run_dir / "partial").exists()


def test_a_checkpoint_saved_by_another_steepest_version_is_not_resumed(tmp_path):
    task, cell = _tiny(tmp_path, OPTIMIZER)
    path = ckpt.partial_path(tmp_path / "run", cell)
    with pytest.raises(Interrupted):
        _train(task, cell, ckpt.CellCheckpoint(path, cell.to_dict(), every=3), stop_at=8)
    payload = torch.load(path, weights_only=True)
    assert payload["steepest"] == steepest.__version__
    payload["steepest"] = "0.0.1"
    torch.save(payload, path)
    record = _train(task, cell, ckpt.CellCheckpoint(path, cell.to_dict(), every=3))
    assert record["resumed_from_step"] is None
    (note,) = record["checkpoint"]["notes"]
    assert note == (f"partial checkpoint {path} was saved by steepest 0.0.1, not {steepest.__version__}; "
                    f"ignored, the cell started over")
    assert record["train_loss"] == _train(task, cell)["train_loss"]


def test_checkpoint_every_is_validated_and_leaves_the_run_directory_alone(tmp_path):
    with pytest.raises(ValueError, match="checkpoint_every must be >= 0"):
        SuiteConfig(checkpoint_every=-1)
    quick = SuiteConfig.preset("quick")
    assert "checkpoint_every" not in quick.to_dict()  # the default: after every evaluation
    every5 = SuiteConfig.preset("quick", checkpoint_every=5)
    assert runner.default_run_dir(every5) == runner.default_run_dir(quick)
    assert SuiteConfig.from_dict(json.loads(json.dumps(every5.to_dict()))) == every5
    assert ckpt.CellCheckpoint(tmp_path / "x.pt", {}).due(20, 100, {0, 20, 40, 100})
    assert not ckpt.CellCheckpoint(tmp_path / "x.pt", {}).due(100, 100, {0, 20, 40, 100})
    assert not ckpt.CellCheckpoint(tmp_path / "x.pt", {}).due(21, 100, {0, 20, 40, 100})
    _, cell = _tiny(tmp_path, OPTIMIZER)
    assert ckpt.for_cell(tmp_path, cell, None).path == tmp_path / "partial" / "text-tiny" / OPTIMIZER / "lrx1-seed0.pt"
    assert ckpt.for_cell(tmp_path, cell, 5).every == 5
    assert ckpt.for_cell(tmp_path, cell, 0) is None  # 0: checkpoints off


def test_cli_checkpoint_every_reaches_the_config(capsys):
    from steepest.cli import build_parser, main, suite_config

    assert suite_config(build_parser().parse_args(["bench", "--checkpoint-every", "5"])).checkpoint_every == 5
    assert suite_config(build_parser().parse_args(["bench", "--checkpoint-every", "0"])).checkpoint_every == 0
    assert suite_config(build_parser().parse_args(["bench"])).checkpoint_every is None
    with pytest.raises(SystemExit):
        main(["bench", "--checkpoint-every", "-1"])
    assert "argument --checkpoint-every: expected a non-negative integer, got -1" in capsys.readouterr().err
