"""One rank of ``steepest bench robust`` (run under ``torchrun``, gloo on CPU).

Usage: ``python -m torch.distributed.run --nproc-per-node 4 -m steepest.bench.robust_worker --out FILE
[--steps N] [--hidden H] RUN [RUN ...]`` with each RUN ``rule:attack`` (``mean:none``, ``flag:scale``,
``median:noise``...). Every run trains the same MLP (64-H-10, H=32 by default) on scikit-learn's digits
with DDP and a steepest optimizer (``for_model(model, "muon")``: Muon on the hidden matrix, AdamW on
the head and biases); each rank draws its batches from its own shard of the training set, rank
``ATTACKER`` sends an attacked bucket when the run names an attack, and the run's hook aggregates.
Rank 0 writes ``FILE`` (JSON): per run the final training loss (full training set), the test
accuracy, the loss curve, the median wall time of a training step (forward, backward with the hook,
optimizer step; the slowest rank's, between barriers) and the largest parameter difference between
replicas (0: every rank computed the same aggregate).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import time

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..distributed.aggregation import HOOKS, AggregationState, attacked
from ..distributed.shutdown import exit_process_group

#: the rank that sends attacked gradients
ATTACKER = 1
BATCH = 32
#: attack name -> (attack kind, scale) sent by the attacker: "scale" is FA's "reverse" attack (-10 g)
ATTACK_SPECS = {"sign_flip": ("sign_flip", 1.0), "scale": ("scale", -10.0), "noise": ("noise", 1.0)}
#: hook options per rule (flag: a one-dimensional subspace of the workers' gradients)
RULE_OPTIONS = {"flag": {"subspace_dim": 1, "iters": 5}, "trimmed_mean": {"trim": 1}}
#: AdamW on the head and biases at 1e-2 (set explicitly: the numbers must not move with the defaults)
OVERRIDES = {"head": {"lr": 1e-2}, "vector": {"lr": 1e-2}}


def digits() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """scikit-learn's digits (1797 8x8 images): 1500 to train, 297 to test. Read from the csv that
    ships with scikit-learn (the same array as ``load_digits``) to spare each rank the ~2 s import."""
    path = os.path.join(os.path.dirname(importlib.util.find_spec("sklearn").origin), "datasets", "data",
                        "digits.csv.gz")
    if os.path.exists(path):
        table = torch.from_numpy(np.loadtxt(path, delimiter=","))
        images, labels = table[:, :-1], table[:, -1]
    else:
        from sklearn.datasets import load_digits
        data = load_digits()
        images, labels = torch.from_numpy(data.data), torch.from_numpy(data.target)
    x = images.float() / 16.0
    y = labels.long()
    return (x[:1500], y[:1500]), (x[1500:], y[1500:])


def make_model(hidden: int = 32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def parse_run(spec: str) -> tuple[str, str]:
    """``"rule:attack"`` -> ``(rule, attack)``, with exact errors for unknown names."""
    rule, _, attack_name = spec.partition(":")
    if rule not in HOOKS:
        raise ValueError(f"unknown aggregation rule {rule!r} in run {spec!r}; choose one of {', '.join(sorted(HOOKS))}")
    if attack_name not in ("none", *ATTACK_SPECS):
        raise ValueError(f"unknown attack {attack_name!r} in run {spec!r}; choose one of none, "
                         f"{', '.join(ATTACK_SPECS)}")
    return rule, attack_name


def run(rule: str, attack_name: str, steps: int, hidden: int, train, test) -> dict:
    import steepest

    rank, world = dist.get_rank(), dist.get_world_size()
    model = DDP(make_model(hidden))
    hook = HOOKS[rule]
    if attack_name != "none":
        kind, scale = ATTACK_SPECS[attack_name]
        hook = attacked(hook, ATTACKER, kind, scale, seed=7)
    state = AggregationState(**RULE_OPTIONS.get(rule, {}))
    state.validate(world)
    model.register_comm_hook(state, hook)
    opt = steepest.for_model(model.module, "muon", overrides=OVERRIDES)
    xs, ys = train[0][rank::world], train[1][rank::world]
    g = torch.Generator().manual_seed(100 + rank)
    losses, times = [], []
    for _ in range(steps):
        idx = torch.randint(0, len(xs), (BATCH,), generator=g)
        dist.barrier()
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(model(xs[idx]), ys[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        dist.barrier()
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    net = model.module
    with torch.no_grad():
        final = nn.functional.cross_entropy(net(train[0]), train[1]).item()
        acc = (net(test[0]).argmax(1) == test[1]).float().mean().item()
        flat = torch.cat([p.detach().flatten() for p in net.parameters()])
    copies = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(copies, flat)
    spread = max((c - copies[0]).abs().max().item() for c in copies)
    warm = times[min(3, len(times) - 1):]
    return {"final_loss": final, "test_accuracy": acc, "losses": losses, "replica_spread": spread,
            "step_ms": 1e3 * statistics.median(warm), "parameters": flat.numel()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="steepest.bench.robust_worker")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("runs", nargs="+")
    args = parser.parse_args(argv)
    specs = [(spec, *parse_run(spec)) for spec in args.runs]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    train, test = digits()
    result = {"world": dist.get_world_size(), "steps": args.steps, "hidden": args.hidden, "attacker": ATTACKER,
              "runs": {}}
    for spec, rule, attack_name in specs:
        result["runs"][spec] = run(rule, attack_name, args.steps, args.hidden, train, test)
    if dist.get_rank() == 0:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f)
    exit_process_group()


if __name__ == "__main__":
    main()
