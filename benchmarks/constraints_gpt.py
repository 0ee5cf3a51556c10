"""shakespeare-char with steepest Muon: plain, with spectral constraints on the hidden matrices, and with
hyper-connections (the issue-7 experiment).

    .venv/bin/python benchmarks/constraints_gpt.py [--budget quick] [--seeds 0,1]

Every variant uses the suite's quick budget (100 steps of batch 16, warm-up + cosine), the suite's
lrs for steepest Muon (0.02, AdamW side 2e-3), the same init and batches per seed. Prints the final
validation loss (mean over seeds), ms per training step, the largest RMS->RMS norm of a hidden
matrix at the end and the parameter count.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from steepest import for_model
from steepest.bench.peer_base import AUX_ADAMW_LR, Peer
from steepest.bench.tasks.char_lm import ShakespeareChar
from steepest.bench.train import train_trial

VARIANTS = [
    ("plain residual", {}, {}),
    ("hidden: spectral_hardcap 1 (rms)", {}, {"hidden": ("spectral_hardcap", 1.0, "rms")}),
    ("hidden: spectral_softcap 1 (rms)", {}, {"hidden": ("spectral_softcap", 1.0, "rms")}),
    ("hidden: spectral_hardcap 2 (rms)", {}, {"hidden": ("spectral_hardcap", 2.0, "rms")}),
    ("4 streams, birkhoff (mHC)", {"hyper_connections": 4, "hc_mixer": "birkhoff"}, {}),
    ("4 streams, stiefel (Cayley)", {"hyper_connections": 4, "hc_mixer": "stiefel"}, {}),
    ("4 streams, spectral_sphere (sHC)", {"hyper_connections": 4, "hc_mixer": "spectral_sphere"}, {}),
]


def rms_norm(w: torch.Tensor) -> float:
    m, n = w.shape[0], w[0].numel()
    return torch.linalg.matrix_norm(w.detach().double().reshape(m, n), ord=2).item() * math.sqrt(n / m)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budget", default="quick")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--only", default=None, help="comma-separated variant numbers (1-based)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    seeds = [int(s) for s in args.seeds.split(",")]
    chosen = VARIANTS if args.only is None else [VARIANTS[int(i) - 1] for i in args.only.split(",")]
    print("| variant | val loss | ms/step | max RMS->RMS norm of a hidden matrix | parameters |")
    print("| --- | --- | --- | --- | --- |")
    for label, options, constraints in chosen:
        task = ShakespeareChar(**options)
        budget = task.budget(args.budget)
        losses, steps_ms, norms = [], [], []
        for seed in seeds:
            trial = task.trial(seed, budget.batch_size)
            opt = for_model(trial.model, "muon", lr=0.02, adamw_lr=AUX_ADAMW_LR, embedding_lr=None,
                            constraints=constraints)
            record = train_trial(task, trial, Peer("steepest-muon", [opt], step_covers="muon"), budget)
            losses.append(record["final"][task.metric])
            steps_ms.append(record["step_ms"])
            norms.append(max(rms_norm(p) for n, p in trial.model.named_parameters()
                             if n.startswith("blocks.") and p.ndim == 2 and ".hc_" not in n))
        params = sum(p.numel() for p in trial.model.parameters())
        spread = f" ± {statistics.stdev(losses):.3f}" if len(losses) > 1 else ""
        print(f"| {label} | {statistics.mean(losses):.3f}{spread} | {statistics.mean(steps_ms):.0f} | "
              f"{max(norms):.3f} | {params:,} |", flush=True)


if __name__ == "__main__":
    main()
