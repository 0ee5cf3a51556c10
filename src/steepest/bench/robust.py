"""``steepest bench robust``: robust gradient aggregation as DDP communication hooks, measured.

Two parts:

* **Training under attack** (:func:`run_training`): one ``torchrun`` launch of
  ``steepest.bench.robust_worker`` on ``world`` gloo ranks trains the digits MLP with each rule
  (mean, coordinate-wise median, trimmed mean, Flag) under each attack sent by one rank (none,
  sign flip, ``-10 g``, Gaussian noise). Reported: test accuracy, final training loss, and the
  median step time with the hook against the mean's (DDP's default all-reduce).
* **Cost of a rule** (:func:`aggregation_cost`): each rule's pure function on a ``(p, n)`` matrix of
  random worker gradients, timed in this process for a grid of workers ``p`` and dimensions ``n``,
  with the growth exponents fitted from the grid (``time ~ p^a`` at the largest ``n``,
  ``time ~ n^b`` at the largest ``p``). The hooks add the all-gather (``(p - 1) n`` values received
  per rank, against about ``2 n`` for a ring all-reduce) to these costs.
"""
from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..distributed.aggregation import flag_aggregate, mean_aggregate, median_aggregate, trimmed_mean_aggregate
from .environment import machine_info
from .rank_launch import launch_ranks
from .formatting import markdown_table, write_markdown_and_json

RULES = ("mean", "median", "trimmed_mean", "flag")
ATTACKS = ("none", "sign_flip", "scale", "noise")


@dataclass
class RobustConfig:
    world: int = 4
    steps: int = 60
    hidden: int = 32
    rules: tuple[str, ...] = RULES
    attacks: tuple[str, ...] = ATTACKS
    #: the cost grid: workers p and gradient dimensions n
    workers: tuple[int, ...] = (4, 8, 16, 32)
    dims: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    repeats: int = 5
    timeout_s: int = 900

    def __post_init__(self) -> None:
        unknown = [r for r in self.rules if r not in RULES]
        if unknown:
            raise ValueError(f"unknown aggregation rule(s) {', '.join(unknown)}; choose from {', '.join(RULES)}")
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown:
            raise ValueError(f"unknown attack(s) {', '.join(unknown)}; choose from {', '.join(ATTACKS)}")
        if self.world < 3:
            raise ValueError(f"robust aggregation needs world >= 3 (one attacker, trimmed mean trim=1); got {self.world}")


def _rule(name: str):
    if name == "mean":
        return mean_aggregate
    if name == "median":
        return median_aggregate
    if name == "trimmed_mean":
        return lambda G: trimmed_mean_aggregate(G, 1)
    return lambda G: flag_aggregate(G, subspace_dim=1, iters=5)


def run_training(config: RobustConfig, progress: bool = True) -> dict:
    """Every ``rule:attack`` run on ``config.world`` ranks in one launch; the worker's JSON."""
    runs = [f"{rule}:{attack}" for rule in config.rules for attack in config.attacks]
    if progress:
        print(f"steepest bench robust: {len(runs)} runs on {config.world} ranks ...", file=sys.stderr, flush=True)
    args = ["--steps", str(config.steps), "--hidden", str(config.hidden), *runs]
    return launch_ranks("steepest.bench.robust_worker", config.world, args, threads=1,
                        timeout_s=config.timeout_s, what="the robust aggregation worker")


def aggregation_cost(workers, dims, rules=RULES, repeats: int = 5, progress: bool = False) -> list[dict]:
    """Median milliseconds of each rule's pure function on a random float32 ``(p, n)`` matrix, one row
    per ``(p, n)``."""
    rows = []
    g = torch.Generator().manual_seed(0)
    for n in dims:
        for p in workers:
            G = torch.randn(p, n, generator=g)
            row = {"workers": p, "dim": n, "ms": {}}
            for name in rules:
                fn = _rule(name)
                fn(G)  # warm-up
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    fn(G)
                    times.append(time.perf_counter() - start)
                row["ms"][name] = 1e3 * statistics.median(times)
            if progress:
                print(f"steepest bench robust: cost at p={p}, n={n}", file=sys.stderr, flush=True)
            rows.append(row)
            del G
    return rows


def growth_exponents(cost: list[dict]) -> dict[str, dict[str, float]]:
    """Least-squares slopes of log time against log p (at the largest n) and log n (at the largest p)."""
    def slope(points: list[tuple[float, float]]) -> float:
        if len(points) < 2:
            return float("nan")
        xs = [math.log(x) for x, _ in points]
        ys = [math.log(max(y, 1e-9)) for _, y in points]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        den = sum((x - mx) ** 2 for x in xs)
        return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else float("nan")

    n_max = max(r["dim"] for r in cost)
    p_max = max(r["workers"] for r in cost)
    out = {}
    for name in cost[0]["ms"]:
        out[name] = {"workers": slope([(r["workers"], r["ms"][name]) for r in cost if r["dim"] == n_max]),
                     "dim": slope([(r["dim"], r["ms"][name]) for r in cost if r["workers"] == p_max])}
    return out


def run_robust(config: RobustConfig, progress: bool = True, training: bool = True, cost: bool = True) -> dict:
    results: dict = {"config": asdict(config), "environment": machine_info(), "threads": torch.get_num_threads()}
    if training:
        results["training"] = run_training(config, progress)
    if cost:
        results["cost"] = aggregation_cost(config.workers, config.dims, config.rules, config.repeats, progress)
        results["growth"] = growth_exponents(results["cost"])
    return results


def render(results: dict) -> str:
    config, env = results["config"], results["environment"]
    text = ["# steepest bench robust", ""]
    training = results.get("training")
    if training:
        runs = training["runs"]
        rules = [r for r in config["rules"] if any(k.startswith(r + ":") for k in runs)]
        attacks = [a for a in config["attacks"] if any(k.endswith(":" + a) for k in runs)]
        text += [f"Digits MLP (64-{training['hidden']}-10), DDP on {training['world']} gloo ranks, "
                 f"{training['steps']} steps of batch 32 per rank, `for_model(model, \"muon\")` with AdamW at 1e-2 on "
                 f"the head and biases; rank {training['attacker']} attacks: `sign_flip` sends -g, `scale` sends "
                 f"-10 g, `noise` sends N(0, I). Test accuracy (final training loss):", ""]
        table = []
        for rule in rules:
            cells = [rule]
            for attack in attacks:
                run = runs.get(f"{rule}:{attack}")
                cells.append(f"{run['test_accuracy']:.3f} ({run['final_loss']:.3f})" if run else "")
            table.append(cells)
        text += [markdown_table(["rule"] + attacks, table), ""]
        step = {rule: statistics.median(runs[k]["step_ms"] for k in runs if k.startswith(rule + ":")) for rule in rules}
        base = step.get("mean")
        table = [[rule, f"{ms:.2f}", f"{ms / base:.2f}x" if base else ""] for rule, ms in step.items()]
        text += ["Median training step (forward, backward with the hook, optimizer step; slowest rank, between "
                 "barriers), median over the attacks:", "",
                 markdown_table(["rule", "step (ms)", "vs mean"], table), ""]
        spread = max(run["replica_spread"] for run in runs.values())
        text += [f"Largest parameter difference between replicas over all runs: {spread:.3g}.", ""]
    cost = results.get("cost")
    if cost:
        rules = list(cost[0]["ms"])
        table = [[str(r["workers"]), f"{r['dim']:,}"] + [f"{r['ms'][name]:.2f}" for name in rules]
                 + [f"{r['ms']['flag'] / r['ms']['mean']:.1f}x" if "flag" in r["ms"] and "mean" in r["ms"] else ""]
                 for r in cost]
        text += ["Cost of each rule's pure function (median ms over "
                 f"{config['repeats']} calls, float32, {results['threads']} thread(s)) on a (p, n) "
                 "matrix of worker gradients:", "",
                 markdown_table(["workers p", "dim n"] + [f"{name} (ms)" for name in rules] + ["flag vs mean"], table),
                 ""]
        growth = results["growth"]

        def fitted(value: float) -> str:
            return f"{value:.2f}" if value == value else "n/a (one point)"

        text += ["Fitted growth (time ~ p^a at the largest n, time ~ n^b at the largest p): "
                 + "; ".join(f"{name} a={fitted(g['workers'])}, b={fitted(g['dim'])}" for name, g in growth.items())
                 + ". The Flag rule's Gram matrix costs O(p^2 n) and its IRLS iterations O(p^3) each, "
                 "independent of n; the median and trimmed mean sort p values per coordinate, O(p n log p); "
                 "the mean is O(p n). The hooks also all-gather the bucket: (p - 1) n values received per rank.",
                 ""]
    text.append(f"Machine: {env['processor']}, {env['cpu_count']} cores, torch {env['torch']}.")
    return "\n".join(text) + "\n"


def write_robust_report(results: dict, out_dir: Path) -> dict[str, Path]:
    return write_markdown_and_json(out_dir, "robust", render(results), results)
