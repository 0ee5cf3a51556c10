"""Digits MLP with and without spectral constraints on its hidden matrices, and L-Lipschitz residual nets.

    .venv/bin/python benchmarks/constraints_digits.py [--steps 300] [--seeds 0,1,2]
    .venv/bin/python benchmarks/constraints_digits.py --lipschitz [--steps 300] [--seeds 0,1,2]

Trains a 64-256-256-10 ReLU MLP on scikit-learn's digits (the benchmark's fixed 1437/360 split) with
steepest Muon, unconstrained and with each spectral constraint on the hidden matrices, and prints
test accuracy and loss (mean over seeds), the largest spectral norm any hidden matrix had after any
step, and the model's Lipschitz bound (``steepest.lipschitz_bound``) at the end.

``--lipschitz``: a narrower MLP (64-64-64-10, so that LipSDP can certify it) unconstrained and with
the spectral hard cap at 1 on every matrix, next to ``steepest.nn.LipschitzResidualNet`` (two
L-Lipschitz residual blocks of width 64, L = 1, identity and learned skips), all trained with
``for_model(model, "muon")``. Columns: test accuracy, the product bound, the LipSDP certificate
(``steepest.lipschitz.certify``, MLPs only: the residual net's bound holds by construction), a lower
bound from gradient ascent on the input Jacobian (``jacobian_lower_bound``) and the median
milliseconds per training step.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import steepest
from steepest.bench.tasks.digits_cnn import load_digits_split
from steepest.lipschitz import certify, jacobian_lower_bound
from steepest.nn import LipschitzResidualNet

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


LIPSCHITZ_VARIANTS = ("mlp", "mlp + spectral_hardcap 1", "ldlt (identity skip)", "ldlt (learned skip)")


def lipschitz_model(variant: str, seed: int) -> tuple[nn.Module, dict]:
    """The model of a ``--lipschitz`` row and its ``constraints`` argument of ``for_model``."""
    torch.manual_seed(seed)
    if variant.startswith("ldlt"):
        skip = "identity" if "identity" in variant else "learned"
        return nn.Sequential(nn.Flatten(), LipschitzResidualNet(64, 10, width=64, depth=2, L=1.0, skip=skip)), {}
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    if "hardcap" in variant:
        return model, {role: ("spectral_hardcap", 1.0) for role in ("embedding", "hidden", "head")}
    return model, {}


def run_lipschitz(variant: str, seed: int, steps: int, data) -> dict:
    x_train, y_train, x_test, y_test = data
    model, constraints = lipschitz_model(variant, seed)
    opt = steepest.for_model(model, "muon", lr=0.02, adamw_lr=3e-3, constraints=constraints)
    gen = torch.Generator().manual_seed(seed)
    times = []
    for _ in range(steps):
        idx = torch.randint(0, len(y_train), (128,), generator=gen)
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    with torch.no_grad():
        acc = (model(x_test).argmax(1) == y_test).float().mean().item()
    net = model[1] if variant.startswith("ldlt") else model[1:]
    product = net.lipschitz_bound() if variant.startswith("ldlt") else steepest.lipschitz_bound(net)
    sdp = float("nan") if variant.startswith("ldlt") else certify(net.double(), method="lipsdp")
    lower = jacobian_lower_bound(net, 64, restarts=8, steps=30, scale=1.0, seed=seed)
    return {"acc": acc, "product": product, "lipsdp": sdp, "lower": lower,
            "ms": 1e3 * statistics.median(times[10:])}


def lipschitz_table(steps: int, seeds: list[int], data) -> None:
    print("| model | test acc | product bound | LipSDP certificate | Jacobian lower bound | ms / step |")
    print("| --- | --- | --- | --- | --- | --- |")
    for variant in LIPSCHITZ_VARIANTS:
        rows = [run_lipschitz(variant, seed, steps, data) for seed in seeds]
        mean = {k: statistics.mean(r[k] for r in rows) for k in rows[0]}
        sdp = "by construction" if variant.startswith("ldlt") else f"{mean['lipsdp']:.3g}"
        print(f"| {variant} | {mean['acc']:.4f} | {mean['product']:.3g} | {sdp} | {mean['lower']:.3g} | "
              f"{mean['ms']:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--lipschitz", action="store_true",
                        help="the L-Lipschitz table: capped MLPs next to LDLT residual nets")
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = load_digits_split()
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.lipschitz:
        lipschitz_table(args.steps, seeds, data)
        return
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
