"""Langevin dynamics and iterate averaging on a planted direction: a CPU-sized reproduction of the
setting of Wei, Damian and Lee, "Improved high-dimensional estimation with Langevin dynamics and
stochastic weight averaging" (arXiv 2603.06028, ICLR 2026).

Task (a single-index model with information exponent ``k* = 3``): ``x ~ N(0, I_d)``, a planted
``theta* in S^{d-1}``, labels ``y = sigma(<theta*, x>)`` with ``sigma = He_3 / sqrt(6)``
(``He_3(z) = z^3 - 3z``, the first non-zero Hermite coefficient is the third). The estimator
minimizes the empirical correlation loss ``L_n(theta) = -(1/n) sum_i y_i sigma(<theta, x_i>)`` on
the sphere, full batch, from a uniformly random start, and is scored by its overlap
``<theta_hat, theta*>`` (1: recovered; ``1/sqrt(d)``: the typical overlap of a random direction).

Methods, all one steepest optimizer, ``GeometryOptimizer(geometry="identity", momentum=0,
constraint="hypersphere")``, i.e. projected gradient descent ``theta <- normalize(theta - lr *
grad)``, with ``lr = h * eps``, ``h = 1/(4d)``, the same number of steps for all:

* ``gd``: no noise, the last iterate.
* ``langevin``: the same step with ``langevin_temperature = 1/(2 eps)`` (``sqrt(2 lr T) = sqrt(h)``:
  the paper's spherical Langevin SDE ``d theta = eps b dt + P dW`` discretized with step ``h``; in
  SGLD terms the inverse temperature is ``beta = 2 eps``), the last iterate.
* ``langevin+swa``: the same run's iterates averaged by ``torch.optim.swa_utils.AveragedModel``
  (equal weights; every 4th iterate of the last 90 % of the steps), then normalized (the paper's first-order
  estimator ``theta_bar / ||theta_bar||``, which it uses for odd ``k*``).

The sweep is over the sample size ``n = c * d^2`` (``d^{k*-1} = d^2`` is where online SGD needs to
be; the paper's averaged Langevin needs ``n >~ d^{k*/2}`` with a warm start, ``d^{ceil(k*/2)}``
for its Algorithm 1 alone). ``run`` writes ``report.md`` and ``results.json``.
"""
from __future__ import annotations

import json
import math
import platform
import statistics
import time
from pathlib import Path
from typing import Iterable

import torch
from torch.optim.swa_utils import AveragedModel

from ..optim import GeometryOptimizer

METHODS = ("gd", "langevin", "langevin+swa")
#: (d, sample-size multiples c of d^2, eps values, steps) for the full and the quick study
FULL = {"d": 32, "ratios": (0.25, 0.5, 1.0, 2.0, 4.0, 10.0), "eps": (8.0,), "steps": 20000}
QUICK = {"d": 16, "ratios": (1.0, 10.0), "eps": (8.0,), "steps": 5000}
SMOKE = {"d": 8, "ratios": (2.0,), "eps": (8.0,), "steps": 200}
#: the averaged iterates: those after this fraction of the steps, every AVERAGE_EVERY-th of them
BURN_IN = 0.1
AVERAGE_EVERY = 4


def sigma(z: torch.Tensor) -> torch.Tensor:
    """The link ``He_3(z) / sqrt(6)``: unit variance under ``z ~ N(0, 1)``, information exponent 3."""
    return (z**3 - 3 * z) / math.sqrt(6.0)


def sigma_prime(z: torch.Tensor) -> torch.Tensor:
    return (3 * z**2 - 3) / math.sqrt(6.0)


def problem(d: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(X, y, theta*)`` of one seed: ``n`` Gaussian inputs (float32) and their labels."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    truth = torch.nn.functional.normalize(torch.randn(d, generator=gen), dim=0)
    x = torch.randn(n, d, generator=gen)
    return x, sigma(x @ truth), truth


class Directions(torch.nn.Module):
    """One ``theta`` per seed, as a module, so that ``AveragedModel`` can average them."""

    def __init__(self, thetas: list[torch.Tensor]) -> None:
        super().__init__()
        self.thetas = torch.nn.ParameterList([torch.nn.Parameter(t.clone()) for t in thetas])


def train(xs: torch.Tensor, ys: torch.Tensor, truths: torch.Tensor, *, eps: float, steps: int,
          seeds: list[int]) -> list[dict]:
    """Projected gradient descent without noise (``gd``) and with Langevin noise (``langevin``) from
    the same uniform start, for every seed at once (``xs``: ``(seeds, n, d)``): one optimizer with
    a noiseless group and a Langevin group of one parameter per seed (each parameter draws its own
    noise). Returns, per seed, the overlaps of both last iterates and of the averaged Langevin
    iterate (every ``AVERAGE_EVERY``-th iterate after the burn-in, equal weights)."""
    count, n, d = xs.shape
    h = 1.0 / (4 * d)
    starts = []
    for seed in seeds:
        init = torch.Generator().manual_seed(20_000 + seed)
        starts.append(torch.nn.functional.normalize(torch.randn(d, generator=init), dim=0))
    plain, noisy = Directions(starts), Directions(starts)
    opt = GeometryOptimizer([{"params": list(plain.parameters())},
                             {"params": list(noisy.parameters()), "langevin_temperature": 1.0 / (2 * eps),
                              "langevin_seed": seeds[0]}],
                            lr=h * eps, geometry="identity", transform="momentum", momentum=0.0, nesterov=False,
                            constraint="hypersphere")
    averaged = AveragedModel(noisy)
    params = [*plain.parameters(), *noisy.parameters()]
    data, labels = [*xs, *xs], [*ys, *ys]
    xts = [x.T.contiguous() for x in data]  # matrix-vector products on contiguous rows: the fast path
    start = int(BURN_IN * steps)
    t0 = time.perf_counter()
    for step in range(steps):
        with torch.no_grad():
            for p, x, xt, y in zip(params, data, xts, labels):
                # the gradient of -(1/n) sum_i y_i sigma(<theta, x_i>)
                p.grad = (xt @ (y * sigma_prime(x @ p))).mul_(-1.0 / n)
        opt.step()
        if step >= start and (step - start) % AVERAGE_EVERY == 0:
            averaged.update_parameters(noisy)
    seconds = time.perf_counter() - t0
    out = []
    for i in range(count):
        mean = averaged.module.thetas[i].detach()
        out.append({"start": float(starts[i] @ truths[i]), "gd": float(plain.thetas[i].detach() @ truths[i]),
                    "langevin": float(noisy.thetas[i].detach() @ truths[i]),
                    "langevin+swa": float(torch.nn.functional.normalize(mean, dim=0) @ truths[i]),
                    "averaged_norm": float(mean.norm()), "seconds": seconds / count})
    return out


def _spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "values": values}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(out_dir: str | Path, quick: bool = False, seeds: Iterable[int] = (0, 1, 2), *, smoke: bool = False) -> dict:
    """Run the study (``quick``: d = 16, two sample sizes, under a minute on one core; ``smoke``: a
    few seconds, for tests) and write ``report.md`` and ``results.json`` into ``out_dir``."""
    setting = SMOKE if smoke else QUICK if quick else FULL
    seeds = [int(s) for s in seeds]
    d, steps = setting["d"], setting["steps"]
    started, cpu_started = time.perf_counter(), time.process_time()
    runs, rows = [], []
    for eps in setting["eps"]:
        for ratio in setting["ratios"]:
            n = int(round(ratio * d * d))
            problems = [problem(d, n, seed) for seed in seeds]
            xs, ys, truths = (torch.stack(parts) for parts in zip(*problems))
            outs = train(xs, ys, truths, eps=eps, steps=steps, seeds=seeds)
            per_method = {m: [o[m] for o in outs] for m in METHODS}
            runs += [{"eps": eps, "n": n, "ratio": ratio, "seed": seed, **o} for seed, o in zip(seeds, outs)]
            positive = sum(o["start"] > 0 for o in outs)
            for method in METHODS:
                rows.append({"method": method, "eps": eps, "n": n, "n_over_d2": ratio, "starts_positive": positive,
                             "overlap": statistics.fmean(per_method[method]), **_spread(per_method[method])})
    results = {"paper": "arXiv 2603.06028", "task": "single-index, sigma = He_3/sqrt(6), k* = 3",
               "d": d, "steps": steps, "h": 1.0 / (4 * d), "burn_in": BURN_IN, "average_every": AVERAGE_EVERY, "seeds": seeds,
               "equator": 1.0 / math.sqrt(d), "rows": rows, "runs": runs,
               "seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu_started,
               "torch_threads": torch.get_num_threads(),
               "cpu": _cpu_name(), "torch": str(torch.__version__),
               "mode": "smoke" if smoke else "quick" if quick else "full"}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    (out / "report.md").write_text(render(results), encoding="utf-8")
    return results


def table(results: dict) -> str:
    """Overlap ``<theta_hat, theta*>`` (mean ± std over seeds) per sample size and method."""
    methods = list(dict.fromkeys(r["method"] for r in results["rows"]))
    keys = list(dict.fromkeys((r["eps"], r["n"], r["n_over_d2"]) for r in results["rows"]))
    lines = ["| eps | n | n / d^2 | " + " | ".join(methods) + " | starts with overlap > 0 |",
             "| --- | --- | --- | " + " | ".join("---" for _ in methods) + " | --- |"]
    for eps, n, ratio in keys:
        cells = []
        for method in methods:
            row = next(r for r in results["rows"] if (r["eps"], r["n"], r["method"]) == (eps, n, method))
            std = f" ± {row['std']:.2f}" if row["std"] is not None else ""
            cells.append(f"{row['mean']:.3f}{std}")
        positive = next(r["starts_positive"] for r in results["rows"] if (r["eps"], r["n"]) == (eps, n))
        lines.append(f"| {eps:g} | {n} | {ratio:g} | " + " | ".join(cells) + f" | {positive}/{len(results['seeds'])} |")
    return "\n".join(lines)


def render(results: dict) -> str:
    d = results["d"]
    return "\n".join([
        "# Langevin dynamics and iterate averaging on a planted direction", "",
        f"Single-index model `y = He_3(<theta*, x>)/sqrt(6)` (information exponent 3), `x ~ N(0, I_{d})`, "
        f"full-batch correlation loss on the sphere S^{d - 1}, {results['steps']} steps of `h = 1/(4d)` "
        f"(lr = h eps), uniform random start, seeds {', '.join(map(str, results['seeds']))}. "
        f"Entries: overlap `<theta_hat, theta*>`, mean ± std over seeds (1 = recovered; a random "
        f"direction has |overlap| about 1/sqrt(d) = {results['equator']:.3f}). `gd`: no noise, last iterate; "
        f"`langevin`: `langevin_temperature = 1/(2 eps)`, last iterate; `langevin+swa`: the same run's "
        f"iterates after the first {results['burn_in']:.0%} (every {results['average_every']}th) averaged by "
        f"`torch.optim.swa_utils.AveragedModel`, normalized. The last column counts the seeds whose random "
        f"start has a positive overlap: without noise, the population dynamics of this odd link, "
        f"`dm/dt = 3 eps m^2 (1 - m^2)` for `m = <theta, theta*>`, move a negative start only up to the "
        f"equator m = 0 and never past it; on the empirical loss the finite-n fluctuations of the gradient "
        f"can carry it across.", "",
        table(results), "",
        f"Mode {results['mode']}; {results['seconds']:.0f} s wall, {results['cpu_seconds']:.0f} s CPU on {results['cpu']} with "
        f"{results['torch_threads']} torch thread(s), torch {results['torch']}.", ""])
