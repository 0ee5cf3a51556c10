"""The README's torchrun example (examples/distributed_train.py) runs under DDP and FSDP2 and resumes."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .harness import TIMEOUT_S, requires_gloo

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "distributed_train.py"
pytestmark = requires_gloo


def run_example(nprocs: int, *args: str) -> list[float]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nprocs}",
               str(EXAMPLE), *args]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [float(v) for v in re.findall(r"loss (\d+\.\d+)", proc.stdout)]


def test_ddp_and_fsdp2_train_alike_and_a_two_rank_checkpoint_resumes_on_one(tmp_path):
    ddp = run_example(2, "--mode", "ddp", "--steps", "21")
    ckpt = tmp_path / "ckpt"
    fsdp = run_example(2, "--mode", "fsdp2", "--steps", "21", "--checkpoint", str(ckpt))
    assert len(ddp) == 3 and ddp[-1] < ddp[0]
    assert fsdp == pytest.approx(ddp, rel=1e-5)  # printed to 3 decimals
    resumed = run_example(1, "--mode", "fsdp2", "--steps", "1", "--checkpoint", str(ckpt))
    assert resumed[0] < ddp[0]  # starts from the trained weights, not from the initialization
