"""Launch a benchmark worker module on ``world`` local ranks with ``torch.distributed.run`` and read
the JSON it writes (``steepest bench distributed`` and ``steepest bench robust``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def launch_ranks(module: str, world: int, args: list[str], *, threads: int, timeout_s: float, what: str) -> dict:
    """Run ``python -m torch.distributed.run --standalone --nproc-per-node=<world> -m <module> --out
    <file> <args>`` with ``OMP_NUM_THREADS=<threads>`` and return the JSON the worker wrote to
    ``<file>``. A failed launch raises ``RuntimeError`` naming ``what`` (e.g. "the distributed worker")
    with the last 4000 characters of its output, torchrun's warning lines left out;
    ``subprocess.TimeoutExpired`` after ``timeout_s``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
                   "-m", module, "--out", str(out), *args]
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0:
            lines = [line for line in (proc.stdout + proc.stderr).splitlines() if not line.startswith("W")]
            raise RuntimeError(f"{what} failed on {world} rank(s):\n" + "\n".join(lines)[-4000:])
        return json.loads(out.read_text(encoding="utf-8"))
