"""Launch a scenario of ``scenarios.py`` under torchrun and read its result."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

SCENARIOS = Path(__file__).with_name("scenarios.py")
#: a multi-process scenario that runs longer than this is a hang (each takes about 10 s)
TIMEOUT_S = 120


def gloo_available() -> bool:
    return dist.is_available() and dist.is_gloo_available()


requires_gloo = pytest.mark.skipif(not gloo_available(), reason="torch.distributed with gloo is not available")


def launch(scenario: str, nprocs: int, out: Path, *args: str) -> dict:
    """Run ``scenario`` on ``nprocs`` CPU ranks (gloo) and return rank 0's result."""
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nprocs}",
               str(SCENARIOS), scenario, str(out), *args]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    if proc.returncode != 0:
        lines = [line for line in (proc.stdout + proc.stderr).splitlines() if not line[:1] == "W"]  # launcher noise
        raise AssertionError(f"scenario {scenario!r} on {nprocs} ranks failed (exit {proc.returncode}):\n"
                             + "\n".join(lines)[-8000:])
    return torch.load(out / "result.pt", weights_only=False)


def max_relative_error(params: dict, reference: dict) -> float:
    """Largest ``max|a - b| / max|b|`` over the parameters (0 for identical tensors)."""
    worst = 0.0
    for name, ref in reference.items():
        scale = ref.abs().max().item() or 1.0
        worst = max(worst, (params[name] - ref).abs().max().item() / scale)
    return worst
