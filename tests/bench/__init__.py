"""Tests of the benchmark package (steepest.bench) and the command line.

Shared helpers live here: a deterministic small text file and a tiny model configuration, so that
end-to-end runs finish in seconds and never touch the network.
"""
from __future__ import annotations

import random
from pathlib import Path

TINY_MODEL = {"n_layer": 1, "d_model": 32, "n_head": 2, "ctx": 32}


def write_tiny_text(path: Path, n_lines: int = 400, seed: int = 0) -> Path:
    """A deterministic pseudo-English text (about 25 kB, a vocabulary of about 25 characters)."""
    rng = random.Random(seed)
    words = ("to be or not that is the question whether tis nobler in mind suffer slings and "
             "arrows of outrageous fortune").split()
    lines = [" ".join(rng.choice(words) for _ in range(10)).capitalize() + "." for _ in range(n_lines)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
