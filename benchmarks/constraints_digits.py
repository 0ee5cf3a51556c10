"""Digits MLP with and without spectral constraints on its hidden matrices (the issue-7 experiment).

    .venv/bin/python benchmarks/constraints_digits.py [--steps 300] [--seeds 0,1,2]

Trains a 64-256-256-10 ReLU MLP on scikit-learn's digits (the benchmark's fixed 1437/360 split) with
steepest Muon, unconstrained and with each spectral constraint on the hidden matrices, and prints
test accuracy and loss (mean over seeds), the largest spectral norm any hidden matrix had after any
step, and the model's Lipschitz bound (``steepest.lipschitz_bound``) at the end.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import steepest
from steepest.bench.tasks.digits_cnn import load_digits_split

VARIANTS = [("unconstrained", None), ("spectral_hardcap", 1.0), ("spectral_softcap", 1.0),
            ("spectral_normalize", 1.0), ("spectral_hardcap", 2.0)]


def mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 10))


def run(name: str, bound: float | None, seed: int, steps: int, data) -> dict:
    x_train, y_train, x_test, y_test = data
    model = mlp(seed)
    constraints = {} if bound is None else {"hidden": (name, bound)}
    opt = steepest.for_model(model, "muon", lr=0.02, adamw_lr=3e-3, constraints=constraints)
    hidden = [model[1].weight, model[3].weight]
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for _ in range(steps):
        idx = torch.randint(0, len(y_train), (128,), generator=gen)
        loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        worst = max(worst, max(torch.linalg.matrix_norm(w.detach().double(), ord=2).item() for w in hidden))
    with torch.no_grad():
        logits = model(x_test)
        acc = (logits.argmax(1) == y_test).float().mean().item()
        test_loss = nn.functional.cross_entropy(logits, y_test).item()
    return {"acc": acc, "loss": test_loss, "sigma_max": worst, "lipschitz": steepest.lipschitz_bound(model[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = load_digits_split()
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"| constraint on hidden | bound | test acc | test loss | max sigma_1 over steps | Lipschitz bound | s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, bound in VARIANTS:
        start = time.perf_counter()
        rows = [run(name, bound, seed, args.steps, data) for seed in seeds]
        mean = {k: statistics.mean(r[k] for r in rows) for k in rows[0]}
        worst = max(r["sigma_max"] for r in rows)
        print(f"| {name} | {'-' if bound is None else bound} | {mean['acc']:.4f} | {mean['loss']:.4f} | "
              f"{worst:.4f} | {mean['lipschitz']:.3g} | {time.perf_counter() - start:.1f} |")


if __name__ == "__main__":
    main()
