"""Summarize an lr x seed grid of single-optimizer ``steepest bench`` runs (benchmarks/lanton_grid.sh).

For every optimizer: the mean final validation loss per lr over seeds; the lr with the lowest mean is
its tuned lr. The target is torch.optim.AdamW's worst final loss over the seeds at its tuned lr
(so AdamW reaches it in every seed, in at most the full run). Steps to target:
the first evaluation at or below the target, averaged over seeds (a run that never reaches it
counts as missing). Ratios are against AdamW, torch.optim.Muon and LANTON's base, all at their
tuned lrs. Also the median optimizer-step time of LANTON over its base at the same lr.

Usage: python benchmarks/summarize_grid.py OUT_DIR
"""
from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def load(root: Path) -> dict:
    runs = defaultdict(lambda: defaultdict(dict))  # name -> lr -> seed -> run
    for path in sorted(root.glob("*/results.json")):
        results = json.loads(path.read_text(encoding="utf-8"))
        (name, run), = results["runs"].items()
        lr = results["config"]["lrs"][name]
        runs[name][lr][results["config"]["seed"]] = run
    return runs


def steps_to(run: dict, target: float) -> int | None:
    return next((p["step"] for p in run["curve"] if p["val_loss"] is not None and p["val_loss"] <= target), None)


def main(root: str) -> None:
    runs = load(Path(root))
    mean_final = {name: {lr: statistics.mean(r["final_val_loss"] for r in seeds.values())
                         for lr, seeds in by_lr.items()} for name, by_lr in runs.items()}
    tuned = {name: min(finals, key=finals.get) for name, finals in mean_final.items()}
    seeds = sorted({s for b in runs.values() for d in b.values() for s in d})
    print(f"mean final val loss per lr (seeds: {seeds}; * = tuned lr)")
    for name, finals in mean_final.items():
        cells = "  ".join(f"{lr:g}: {v:.3f}{'*' if lr == tuned[name] else ''}" for lr, v in sorted(finals.items()))
        print(f"  {name:22s} {cells}")
    target = max(r["final_val_loss"] for r in runs["adamw"][tuned["adamw"]].values())
    print(f"target: {target:.3f} (AdamW's worst final val over seeds at its tuned lr {tuned['adamw']:g})")
    summary = {}
    for name, lr in tuned.items():
        seeds = runs[name][lr]
        steps = [steps_to(r, target) for r in seeds.values()]
        reached = [s for s in steps if s is not None]
        summary[name] = {"lr": lr, "final": mean_final[name][lr], "steps": steps,
                         "mean_steps": statistics.mean(reached) if len(reached) == len(steps) else None,
                         "opt_ms": statistics.mean(r["opt_step_ms"] for r in seeds.values())}
    print("\n| optimizer | tuned lr | mean final val | steps to target (per seed) | mean steps | "
          "vs AdamW | vs torch.optim.Muon | vs LANTON base | ms opt.step |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, s in summary.items():
        ratios = []
        for ref in ("adamw", "torch-muon", "steepest-lanton-base"):
            r = summary.get(ref)
            ok = s["mean_steps"] is not None and r and r["mean_steps"]
            ratios.append(f"{s['mean_steps'] / r['mean_steps']:.2f}x" if ok else "-")
        print(f"| {name} | {s['lr']:g} | {s['final']:.3f} | {s['steps']} | "
              f"{s['mean_steps'] if s['mean_steps'] is not None else '-'} | " + " | ".join(ratios)
              + f" | {s['opt_ms']:.1f} |")
    if "steepest-lanton" in runs and "steepest-lanton-base" in runs:
        same = sorted(set(runs["steepest-lanton"]) & set(runs["steepest-lanton-base"]))
        ratios = [runs["steepest-lanton"][lr][seed]["opt_step_ms"] / runs["steepest-lanton-base"][lr][seed]["opt_step_ms"]
                  for lr in same for seed in runs["steepest-lanton"][lr] if seed in runs["steepest-lanton-base"][lr]]
        step_ratios = [runs["steepest-lanton"][lr][seed]["step_ms"] / runs["steepest-lanton-base"][lr][seed]["step_ms"]
                       for lr in same for seed in runs["steepest-lanton"][lr] if seed in runs["steepest-lanton-base"][lr]]
        print(f"\nLANTON optimizer step / base optimizer step (same lr and seed, {len(ratios)} pairs): "
              f"median {statistics.median(ratios):.2f}x; whole training step: median "
              f"{statistics.median(step_ratios):.3f}x")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench-out/lanton-grid")
