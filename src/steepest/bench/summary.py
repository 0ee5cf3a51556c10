"""Turn benchmark cells into the numbers people compare: best lr, mean and spread, targets, ratios.

For each task and optimizer:

* **grid**: for every lr multiplier, the final metric of each seed, its mean and spread (sample
  standard deviation over seeds, and min/max). A seed that diverged or failed counts as ``inf``; a cell
  with no record yet (its worker died) is left out and its status says ``missing``.
* **best lr**: the multiplier with the lowest mean final metric (every metric is lower-is-better).
  Everything else below is reported at the best lr.
* **metric at fixed budgets**: the mean metric at the first evaluation at or after 25 %, 50 % and
  100 % of the steps.
* **target**: ``SuiteConfig.targets[task]`` when given, else torch.optim.AdamW's mean final metric
  at its best lr (else the worst optimizer's). **Steps / seconds to target**: the first evaluation
  at which the seed-mean curve is at or below the target, and its seed-mean training seconds
  (evaluation excluded). The mean curve is used because the default target is itself a mean: each
  seed alone reaches it about half the time. ``reached = k/n`` counts the seeds whose own curve
  reached it.
* **speed and memory**: median ms per training step, per forward+backward and per optimizer step
  (each cell's median over its steps after the first three, averaged over seeds), exact optimizer
  state MiB, and the worker process's peak RSS.
* **averaged** (``--average ema|swa``): the averaged model's mean final metric (and spread) at
  the same best lr, chosen by the raw metric, next to the raw one (``averaged_final``).
* **ratios** against torch.optim.AdamW and torch.optim.Muon from the same run: this optimizer's value
  over the reference's, for steps and seconds to target,
  ms per step, ms per optimizer step, state, peak RSS, and the final metric.
"""
from __future__ import annotations

import math
import statistics

from ..optim import PRESETS
from .cells import Cell
from .config import REFERENCES, SuiteConfig
from .peers import DEFAULTS_PEERS, STEEPEST_PEERS, defaults_are_tuned, tuned_peer
from .tasks import Task

BUDGET_FRACTIONS = (0.25, 0.5, 1.0)
RATIO_METRICS = ("final", "steps_to_target", "seconds_to_target", "step_ms", "opt_step_ms",
                 "state_mib", "peak_rss_mib")


def ratio_key(reference: str) -> str:
    """``vs_adamw``, ``vs_torch_muon``: the key of the ratios against ``reference``."""
    return "vs_" + reference.replace("-", "_")


def label(name: str) -> str:
    """How an optimizer is named in sentences."""
    if name in REFERENCES:
        return REFERENCES[name]
    if name.startswith("steepest-"):
        preset, kwargs = STEEPEST_PEERS[name]
        text = f"steepest.{PRESETS[preset].__name__}"
        shown = [f"{key}={kwargs[key]!r}" for key in ("noise_adaptive", "noise_rule", "noise_alpha", "noise_source",
                                                       "noise_every") if key in kwargs]
        return text + (f"({', '.join(shown)})" if shown else "")
    return name


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _spread(values: list[float]) -> dict:
    """Mean, sample std, min and max of a non-empty list; a non-finite value makes the mean ``inf``."""
    finite = all(math.isfinite(v) for v in values)
    return {"mean": sum(values) / len(values) if finite else math.inf,
            "std": statistics.stdev(values) if finite and len(values) > 1 else None,
            "min": min(values), "max": max(values)}


def final_metric(record: dict | None, metric: str) -> float:
    """A cell's final ``metric`` (infinite when it diverged, failed, is missing or is not finite)."""
    if not record or record.get("status") != "ok":
        return math.inf
    value = record["final"].get(metric)
    return value if value is not None and math.isfinite(value) else math.inf


def _at_or_after(curve: list[dict], step: int, metric: str):
    for point in curve:
        if point["step"] >= step:
            return point.get(metric)
    return None


def _to_target(curve: list[dict], metric: str, target: float):
    for point in curve:
        if point["step"] > 0 and point.get(metric) is not None and point[metric] <= target:
            return point["step"], point["train_seconds"]
    return None, None


def _ratio(a, b):
    return a / b if a is not None and b not in (None, 0) and math.isfinite(a) and math.isfinite(b) else None


def _mean_curve(records: list[dict], metric: str) -> list[dict]:
    """Mean (and spread) of the metric and training seconds over seeds, at the shared eval steps."""
    curves = [r["curve"] for r in records]
    steps = sorted(set.intersection(*(set(p["step"] for p in c) for c in curves)))
    out = []
    for step in steps:
        points = [next(p for p in c if p["step"] == step) for c in curves]
        values = [p[metric] for p in points if p.get(metric) is not None]
        out.append({"step": step, "mean": _mean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else None,
                    "train_seconds": _mean([p["train_seconds"] for p in points])})
    return out


def summarize_optimizer(task: Task, cells: list[tuple[Cell, dict | None]], budget_steps: int) -> dict:
    """The grid, best lr and best-lr measurements of one optimizer on one task (target comes later)."""
    metric = task.metric
    by_mult: dict[float, list[tuple[Cell, dict | None]]] = {}
    for cell, record in cells:
        by_mult.setdefault(cell.lr_multiplier, []).append((cell, record))
    grid = []
    for mult, items in sorted(by_mult.items()):
        present = [(c, r) for c, r in items if r is not None]  # a missing cell has not run yet
        finals = [final_metric(r, metric) for _, r in present] or [math.inf]
        grid.append({"lr_multiplier": mult, "lr": items[0][0].lr,
                     "seeds": [c.seed for c, _ in items],
                     "status": [r.get("status") if r else "missing" for _, r in items],
                     "final": finals, **_spread(finals)})
    statuses = {s for row in grid for s in row["status"]}
    reasons = sorted({r.get("reason") for _, r in cells if r and r.get("reason")})
    out = {"base_lr": cells[0][0].lr / cells[0][0].lr_multiplier, "grid": grid,
           "statuses": sorted(statuses), "reasons": reasons}
    best = min(grid, key=lambda row: (row["mean"], row["lr_multiplier"]))
    if not math.isfinite(best["mean"]):
        out["status"] = "skipped" if statuses == {"skipped"} else (
            "diverged" if "diverged" in statuses else "failed" if "failed" in statuses else "missing")
        return out
    ok = [r for c, r in by_mult[best["lr_multiplier"]] if r and r.get("status") == "ok"]
    out.update(status="ok", best_lr_multiplier=best["lr_multiplier"], best_lr=best["lr"],
               final=best["mean"], final_std=best["std"], final_min=best["min"], final_max=best["max"],
               seeds=len(ok))
    out["extras"] = {m: _mean([r["final"].get(m) for r in ok]) for m in task.extra_metrics}
    averaged = [r["averaged"] for r in ok if (r.get("averaged") or {}).get("final")]
    if averaged:  # --average: the averaged model's final metric at the same (raw-best) lr
        values = [a["final"].get(metric) for a in averaged]
        values = [v if v is not None and math.isfinite(v) else math.inf for v in values]
        spread = _spread(values)
        out.update(averaged_kind=averaged[0]["kind"], averaged_final=spread["mean"], averaged_final_std=spread["std"],
                   averaged_extras={m: _mean([a["final"].get(m) for a in averaged]) for m in task.extra_metrics})
    out["at_budget"] = {f"{frac:g}": _mean([_at_or_after(r["curve"], math.ceil(frac * budget_steps), metric)
                                            for r in ok]) for frac in BUDGET_FRACTIONS}
    for key in ("step_ms", "fwd_bwd_ms", "opt_step_ms", "opt_step_mean_ms", "state_mib", "train_seconds"):
        out[key] = _mean([r.get(key) for r in ok])
    out["peak_rss_mib"] = max(r.get("peak_rss_mib") or 0.0 for r in ok)
    out["curve"] = _mean_curve(ok, metric)
    out["_records"] = ok
    return out


def summarize_task(task: Task, config: SuiteConfig, cells: list[tuple[Cell, dict | None]],
                   data: dict) -> dict:
    """Everything about one task: per-optimizer summaries, target, steps to target, ratios."""
    budget = config.task_budget(task)
    optimizers = {}
    for name in dict.fromkeys(c.optimizer for c, _ in cells):
        optimizers[name] = summarize_optimizer(task, [(c, r) for c, r in cells if c.optimizer == name],
                                               budget.steps)
    ok = {n: s for n, s in optimizers.items() if s["status"] == "ok"}
    if task.key in config.targets:
        target, source = config.targets[task.key], "given with --target"
    elif "adamw" in ok:
        target, source = ok["adamw"]["final"], "torch.optim.AdamW's mean final metric at its best lr"
    elif ok:
        worst = max(ok, key=lambda n: ok[n]["final"])
        target, source = ok[worst]["final"], f"the worst mean final metric ({worst})"
    else:
        target, source = None, "no optimizer finished"
    for summary in ok.values():
        records = summary.pop("_records")
        hits = [_to_target(r["curve"], task.metric, target)[0] for r in records] if target is not None else []
        summary["reached"] = f"{sum(h is not None for h in hits)}/{len(records)}"
        mean_curve = [{"step": p["step"], "train_seconds": p["train_seconds"], task.metric: p["mean"]}
                      for p in summary["curve"]]
        summary["steps_to_target"], summary["seconds_to_target"] = (
            _to_target(mean_curve, task.metric, target) if target is not None else (None, None))
    for summary in optimizers.values():
        summary.pop("_records", None)
    for name, summary in ok.items():
        summary["ratios"] = {}
        for ref in REFERENCES:
            if ref not in ok or ref == name:
                continue
            other = ok[ref]
            summary["ratios"][ratio_key(ref)] = {m: _ratio(summary.get(m), other.get(m)) for m in RATIO_METRICS}
    return {"spec": task.spec(), "metric": task.metric, "metric_label": task.metric_label,
            "metric_log_scale": task.metric_log_scale, "extra_metrics": list(task.extra_metrics),
            "budget": budget.to_dict(), "data": data, "model": task.describe_model(),
            "target": target, "target_source": source, "optimizers": optimizers,
            "defaults": defaults_rows(task, optimizers), "headlines": headlines(task, ok, target)}


def defaults_rows(task: Task, optimizers: dict[str, dict]) -> list[dict]:
    """What the defaults give on this task: for every steepest preset run both ways
    (``steepest-<p>`` tuned and ``steepest-<p>-defaults``), the defaults' mean final metric at x1
    (the defaults exactly), the tuned peer's at its best lr, and the regret: the difference in
    nats for a language model (metric ``val_loss``), else the relative excess. A tuned peer whose
    settings are its preset's defaults counts as both (regret 0)."""
    rows = []
    for name, summary in optimizers.items():
        tuned = tuned_peer(name)
        if tuned is not None and tuned in optimizers:
            at_one = [g for g in summary["grid"] if g["lr_multiplier"] == 1.0]
            value = at_one[0]["mean"] if at_one else math.inf
        elif name.startswith("steepest-") and name not in DEFAULTS_PEERS and defaults_are_tuned(name):
            tuned, value = name, summary.get("final", math.inf)
        else:
            continue
        best = optimizers[tuned].get("final", math.inf)
        if not (math.isfinite(value) and math.isfinite(best)):
            regret = math.inf
        else:
            regret = value - best if task.metric == "val_loss" else value / best - 1.0
        rows.append({"preset": STEEPEST_PEERS[tuned][0], "tuned": tuned, "defaults": value, "tuned_value": best,
                     "regret": regret, "unit": "nats" if task.metric == "val_loss" else "relative",
                     "same": name == tuned})
    return rows


def headlines(task: Task, ok: dict[str, dict], target: float | None) -> list[str]:
    """Plain sentences: who wins the task and by how much, and the questions people ask first."""
    if not ok:
        return []
    metric = task.metric
    ranked = sorted(ok, key=lambda n: ok[n]["final"])
    first = ranked[0]
    lines = []
    spread = ok[first]["final_std"]
    text = (f"{task.key}: {label(first)} wins with {metric} {ok[first]['final']:.4g}"
            + (f" ± {spread:.2g}" if spread is not None else "") + f" (lr x{ok[first]['best_lr_multiplier']:g})")
    if len(ranked) > 1:
        second = ranked[1]
        text += f"; next {label(second)} {ok[second]['final']:.4g}"
    for ref in REFERENCES:
        if ref in ok and ref not in ranked[:2]:
            text += f"; {REFERENCES[ref]} {ok[ref]['final']:.4g}"
    lines.append(text)
    for name in ("steepest-muon", "steepest-lanton"):
        if name not in ok:
            continue
        for ref in REFERENCES:
            ratios = ok[name].get("ratios", {}).get(ratio_key(ref))
            if not ratios:
                continue
            if ratios.get("steps_to_target") is not None:
                lines.append(f"{task.key}: {label(name)} reaches {metric} {target:.4g} in "
                             f"{ratios['steps_to_target']:.2f}x {REFERENCES[ref]}'s steps and "
                             f"{ratios['seconds_to_target']:.2f}x its training seconds")
            if ref == "torch-muon" and ratios.get("opt_step_ms") is not None and name == "steepest-muon":
                lines.append(f"{task.key}: {label(name)} optimizer step {ratios['opt_step_ms']:.2f}x "
                             f"torch.optim.Muon's ({ok[name]['opt_step_ms']:.2f} ms vs "
                             f"{ok[ref]['opt_step_ms']:.2f} ms)")
    lanton, base = ok.get("steepest-lanton"), ok.get("steepest-lanton-base")
    if lanton and base and lanton.get("opt_step_mean_ms") and base.get("opt_step_mean_ms"):
        # the mean counts the noise measurement every noise_every steps, which the median skips
        lines.append(f"{task.key}: {label('steepest-lanton')} optimizer step {lanton['opt_step_mean_ms'] / base['opt_step_mean_ms']:.2f}x "
                     f"its base's, mean over steps ({lanton['opt_step_mean_ms']:.2f} ms vs "
                     f"{base['opt_step_mean_ms']:.2f} ms; medians {lanton['opt_step_ms']:.2f} vs "
                     f"{base['opt_step_ms']:.2f} ms)")
    return lines


def summarize(config: SuiteConfig, tasks: dict[str, Task], data: dict[str, dict],
              records: list[tuple[Cell, dict | None]], notes: list[str]) -> dict:
    """The whole results document (``results.json``) minus the machine facts the runner adds."""
    per_task = {}
    for key, task in tasks.items():
        cells = [(c, r) for c, r in records if c.task_key == key]
        if cells:
            per_task[key] = summarize_task(task, config, cells, data[key])
    missing = [c.name for c, r in records if r is None]
    if missing:
        notes = notes + [f"{len(missing)} cells have no result (first: {missing[0]})"]
    failed = sorted({f"{c.optimizer} on {c.task_key}: {r['reason']}" for c, r in records
                     if r and r.get("status") == "failed"})
    notes = notes + [f"failed: {f}" for f in failed]
    cells_out = []
    for cell, record in records:
        if record is not None:
            slim = {k: v for k, v in record.items() if k not in ("per_step_ms", "train_loss", "traceback")}
            cells_out.append(slim)
    return {"schema": 2, "config": config.to_dict(), "tasks": per_task,
            "headlines": [line for t in per_task.values() for line in t["headlines"]],
            "notes": notes, "cells": cells_out}
