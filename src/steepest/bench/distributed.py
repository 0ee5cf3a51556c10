"""``steepest bench distributed``: optimizer step time per rank at 1, 2, ... ranks (gloo, CPU).

For each world size the worker (``distributed_worker.py``) is launched with ``torchrun`` and times
``optimizer.step()`` on the benchmark GPT's hidden matrices under DDP and FSDP2. The report gives
each optimizer's median step time per world size, the ratio to one rank (steepest shards the
orthogonalization across ranks, so it should fall with the world size) and the ratio to
``torch.optim.Muon`` in the same mode and world size. Each rank uses ``threads`` CPU threads, so
a world of ``w`` ranks uses ``w * threads`` cores: on a machine with fewer cores the ranks compete
and the ratios understate the scaling.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from .environment import machine_info
from .rank_launch import launch_ranks
from .formatting import markdown_table, write_markdown_and_json


@dataclass
class DistributedConfig:
    ranks: list[int] = field(default_factory=lambda: [1, 2])
    d_model: int = 128
    layers: int = 4
    steps: int = 20
    warmup: int = 3
    threads: int = 1
    timeout_s: int = 900


def run_distributed(config: DistributedConfig, progress: bool = True) -> dict:
    """Launch the worker at every world size and collect its timings."""
    runs = []
    for world in config.ranks:
        if progress:
            print(f"steepest bench distributed: {world} rank(s) ...", file=sys.stderr, flush=True)
        args = ["--d-model", str(config.d_model), "--layers", str(config.layers), "--steps", str(config.steps),
                "--warmup", str(config.warmup), "--threads", str(config.threads)]
        runs.append(launch_ranks("steepest.bench.distributed_worker", world, args, threads=config.threads,
                                 timeout_s=config.timeout_s, what="the distributed worker"))
    return {"config": vars(config), "runs": runs, "environment": machine_info()}


def summarize(results: dict) -> list[dict]:
    """One row per (optimizer, mode): median ms per world size, ratios to 1 rank and to torch-muon."""
    by_key: dict[tuple[str, str], dict[int, float]] = {}
    for run in results["runs"]:
        for row in run["rows"]:
            by_key.setdefault((row["optimizer"], row["mode"]), {})[run["world"]] = row["median_ms"]
    rows = []
    for (name, mode), times in by_key.items():
        base = times.get(min(times))
        torch_times = by_key.get(("torch-muon", mode), {})
        rows.append({"optimizer": name, "mode": mode, "ms": times,
                     "vs_one_rank": {w: t / base for w, t in times.items()} if base else {},
                     "vs_torch_muon": {w: t / torch_times[w] for w, t in times.items() if torch_times.get(w)}})
    return rows


def render(results: dict) -> str:
    rows = summarize(results)
    worlds = sorted({w for r in rows for w in r["ms"]})
    header = ["optimizer", "mode"] + [f"{w} rank{'s' if w > 1 else ''} (ms)" for w in worlds]
    header += [f"{w} vs {worlds[0]} rank" for w in worlds[1:]] + [f"vs torch-muon at {w}" for w in worlds]
    table = []
    for r in rows:
        cells = [r["optimizer"], r["mode"]] + [f"{r['ms'][w]:.2f}" if w in r["ms"] else "" for w in worlds]
        cells += [f"{r['vs_one_rank'][w]:.2f}x" if w in r["vs_one_rank"] else "" for w in worlds[1:]]
        cells += [f"{r['vs_torch_muon'][w]:.2f}x" if w in r["vs_torch_muon"] else "" for w in worlds]
        table.append(cells)
    run = results["runs"][0]
    cfg = run["config"]
    env = results["environment"]
    text = [
        "# steepest bench distributed",
        "",
        f"Median `optimizer.step()` time per rank (the slowest rank's, between barriers) on the "
        f"{run['matrices']} hidden matrices of the benchmark GPT (d_model {cfg['d_model']}, {cfg['n_layer']} "
        f"layers; shapes {', '.join('x'.join(map(str, s)) for s in run['shapes'])}), "
        f"{results['config']['steps']} timed steps after {results['config']['warmup']} warm-up steps, gloo on "
        f"CPU, {run['threads_per_rank']} thread(s) per rank. `ddp`: replicated parameters, the optimizer gets "
        f"the process group; `fsdp`: FSDP2 `fully_shard`, the optimizer gets the 1-D mesh. torch-muon is "
        f"`torch.optim.Muon` as shipped (bfloat16 Newton-Schulz, every rank orthogonalizes every matrix; on "
        f"FSDP2 it runs on the sharded DTensors).",
        "",
        markdown_table(header, table),
        "",
        f"Machine: {env['processor']}, {env['cpu_count']} cores, torch {env['torch']}.",
    ]
    return "\n".join(text) + "\n"


def write_distributed_report(results: dict, out_dir: Path) -> dict[str, Path]:
    return write_markdown_and_json(out_dir, "distributed", render(results), {**results, "summary": summarize(results)})
