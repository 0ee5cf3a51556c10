"""Byzantine-robust DDP training scenario, run under ``torchrun`` (gloo, CPU).

Usage: ``python -m torch.distributed.run --nproc-per-node 4 robust_scenarios.py OUT_DIR [STEPS] [RUN ...]``
with each RUN ``rule:attack`` (``mean:none``, ``flag:scale``, ``median:noise``...). Every run trains
the same tiny MLP (64-32-10) on scikit-learn's digits with DDP and a steepest optimizer
(``for_model(model, "muon")``: Muon on the hidden matrix, AdamW on the head and biases); each rank
draws its batches from its own shard of the training set, rank ``ATTACKER`` sends an attacked
bucket when the run names an attack, and the run's hook aggregates. Rank 0 writes
``OUT_DIR/result.json``: per run the final training loss (full training set), the test accuracy,
the loss curve, and the largest parameter difference between replicas (0: every rank computed the
same aggregate).
"""
import importlib.util
import json
import os
import sys

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import steepest
from steepest.distributed.aggregation import HOOKS, AggregationState, attacked
from steepest.distributed.shutdown import exit_process_group

ATTACKER = 1
BATCH = 32
#: attack name -> (attack kind, scale) sent by the attacker: "scale" is FA's "reverse" attack
ATTACK_SPECS = {"scale": ("scale", -10.0), "sign_flip": ("sign_flip", 1.0), "noise": ("noise", 1.0)}
#: hook options per rule (flag: a one-dimensional subspace of the four workers' gradients)
RULE_OPTIONS = {"flag": {"subspace_dim": 1, "iters": 5}, "trimmed_mean": {"trim": 1}}
#: AdamW on the head and biases at 1e-2 (set explicitly: the scenario's numbers must not move with the defaults)
OVERRIDES = {"head": {"lr": 1e-2}, "vector": {"lr": 1e-2}}
DEFAULT_RUNS = ("mean:none", "mean:scale", "flag:scale", "flag:none")


def data():
    """scikit-learn's digits (1797 8x8 images): 1500 to train, 297 to test. Read from the csv that
    ships with scikit-learn (the same array as ``load_digits``) to spare each rank the ~2 s import."""
    path = os.path.join(os.path.dirname(importlib.util.find_spec("sklearn").origin), "datasets", "data",
                        "digits.csv.gz")
    if os.path.exists(path):
        table = torch.from_numpy(np.loadtxt(path, delimiter=","))
        images, labels = table[:, :-1], table[:, -1]
    else:
        from sklearn.datasets import load_digits
        digits = load_digits()
        images, labels = torch.from_numpy(digits.data), torch.from_numpy(digits.target)
    x = images.float() / 16.0
    y = labels.long()
    return (x[:1500], y[:1500]), (x[1500:], y[1500:])


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def run(rule: str, attack_name: str, steps: int, train, test) -> dict:
    rank, world = dist.get_rank(), dist.get_world_size()
    model = DDP(make_model())
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
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(xs), (BATCH,), generator=g)
        loss = nn.functional.cross_entropy(model(xs[idx]), ys[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    net = model.module
    with torch.no_grad():
        final = nn.functional.cross_entropy(net(train[0]), train[1]).item()
        acc = (net(test[0]).argmax(1) == test[1]).float().mean().item()
        flat = torch.cat([p.detach().flatten() for p in net.parameters()])
    copies = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(copies, flat)
    spread = max((c - copies[0]).abs().max().item() for c in copies)
    return {"final_loss": final, "test_accuracy": acc, "losses": losses, "replica_spread": spread}


def main() -> None:
    out, *rest = sys.argv[1:]
    steps = int(rest[0]) if rest else 60
    runs = rest[1:] or DEFAULT_RUNS
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    train, test = data()
    result = {"world": dist.get_world_size(), "steps": steps, "attacker": ATTACKER, "runs": {}}
    for spec in runs:
        rule, attack_name = spec.split(":")
        result["runs"][spec] = run(rule, attack_name, steps, train, test)
    if dist.get_rank() == 0:
        with open(os.path.join(out, "result.json"), "w") as f:
            json.dump(result, f)
    exit_process_group()


if __name__ == "__main__":
    main()
