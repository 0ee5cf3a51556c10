"""RegularizedNewton with the paper's adaptive search (a closure) next to M-FAC on matrix sensing.

The benchmark suite's trainer calls ``optimizer.step()`` without a closure, so the suite runs
``RegularizedNewton`` in its closure-free mode (Fisher window, gamma fixed). This script runs the
modes that need a closure, ``search="loss"`` (arXiv 2506.13710, Algorithm 1) with the Fisher window
and with exact Hessian-vector products, on the suite's matrix-sensing task (full batch, so the
closure is the deterministic loss the paper's theory assumes), with the same instance (seed) and
step count as the suite's quick budget, at a constant lr (the search has no schedule).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/regnewton_tasks.py [--steps 600] [--seeds 0,1]
        [--task matrix-sensing|matrix-sensing-asym] [--out bench-out/regnewton/tasks.json]

Prints a markdown table: final relative error ||XX^T - M*||_F / ||M*||_F, the largest one seen
(divergence shows there), loss evaluations (closure calls) and gradient evaluations per run, and
wall seconds (other jobs may share the machine: timings are indicative only).
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import time

import torch

import steepest
from steepest.bench.tasks.matrix_sensing import MatrixSensing, MatrixSensingAsym

#: (label, preset, constructor keywords, closure convention: None (plain step), "backward" or "loss")
RUNS = [
    ("mfac (default lr 6e-3)", "mfac", {}, None),
    ("mfac (suite lr 3e-3)", "mfac", {"lr": 3e-3}, None),
    ("regnewton fisher, no search (lr 1)", "regnewton", {}, None),
    ("regnewton fisher, no search (lr 0.03)", "regnewton", {"lr": 0.03}, None),
    ("regnewton fisher, search=loss", "regnewton", {"search": "loss"}, "backward"),
    ("regnewton hvp, no search", "regnewton", {"hessian": "hvp"}, "loss"),
    ("regnewton hvp, search=loss", "regnewton", {"hessian": "hvp", "search": "loss"}, "loss"),
]


def run(task, seed: int, steps: int, preset: str, kwargs: dict, closure_kind: str | None) -> dict:
    trial = task.trial(seed, task.m)
    model = trial.model.double()
    trial.measurements, trial.targets = trial.measurements.double(), trial.targets.double()
    trial.truth = trial.truth.double()
    opt = steepest.create(preset, model.parameters(), **kwargs)
    calls = {"loss": 0, "grad": 0}

    def closure():
        calls["loss"] += 1
        calls["grad"] += 1  # "loss": the optimizer differentiates it (plus CG's Hessian-vector products)
        loss = trial.train_loss()
        if closure_kind == "backward":
            opt.zero_grad()
            loss.backward()
        return loss

    worst, start = 0.0, time.perf_counter()
    for _ in range(steps):
        if closure_kind is None:
            opt.zero_grad()
            trial.train_loss().backward()
            calls["grad"] += 1
            opt.step()
        else:
            opt.step(closure)
        error = trial.evaluate()["rel_error"]
        worst = max(worst, error) if math.isfinite(error) else math.inf
        if not math.isfinite(error):
            break
    seconds = time.perf_counter() - start
    result = {"rel_error": trial.evaluate()["rel_error"], "worst_rel_error": worst, "seconds": seconds,
              "loss_evals": calls["loss"], "grad_evals": calls["grad"]}
    if preset == "regnewton":
        result["gamma"] = float(opt.state[next(model.parameters())]["gamma"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--task", default="matrix-sensing", choices=["matrix-sensing", "matrix-sensing-asym"])
    parser.add_argument("--out", default="bench-out/regnewton/tasks.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = MatrixSensing() if args.task == "matrix-sensing" else MatrixSensingAsym()
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {}
    for label, preset, kwargs, kind in RUNS:
        results[label] = [run(task, seed, args.steps, preset, kwargs, kind) for seed in seeds]
        print(label, results[label], flush=True)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"task": args.task, "steps": args.steps, "seeds": seeds, "results": results}, indent=1))
    print(f"\n{args.task}, {args.steps} steps, float64, seeds {args.seeds} (mean over seeds)\n")
    print("| run | final rel_error | worst rel_error | loss evals | gradient evals | s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, rows in results.items():
        def mean(key):
            return sum(r[key] for r in rows) / len(rows)
        print(f"| {label} | {mean('rel_error'):.3g} | {mean('worst_rel_error'):.3g} | {mean('loss_evals'):.0f} | "
              f"{mean('grad_evals'):.0f} | {mean('seconds'):.1f} |")


if __name__ == "__main__":
    main()
