"""The report of ``steepest bench overhead``: ``overhead.md`` and ``overhead.json``.

``overhead.md`` has one table per workload (optimizer, median and minimum milliseconds per step,
the numbers and tensors it steps, and for a steepest optimizer its ratio to each peer it is paired
with), then the environment (device, torch threads, library versions, the machine) and notes: the
pairing rules, what each optimizer's step covers, the rows that were cut by the budget and the
peers that could not run here, with the reason. ``overhead.json`` is the results dict of
:func:`steepest.bench.overhead.run_overhead`, strict JSON.

This module reads the results dict only (it does not import :mod:`steepest.bench.overhead`, which
imports it for :func:`format_ms`).
"""
from __future__ import annotations

import json
from pathlib import Path

from .formatting import clean_json, markdown_table

HEADER = ["optimizer", "ms median", "ms min", "params", "tensors", "ratio vs its peer"]


def format_ms(value: float) -> str:
    """Milliseconds with three significant digits (no exponent)."""
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _ratio_cell(row: dict) -> str:
    parts = []
    for entry in row.get("ratios", []):
        text = f"{entry['ratio']:.3g}x {entry['peer']}"
        if entry["peer_status"] == "over-budget":
            text += " (its single cold step)"
        parts.append(text)
    return ", ".join(parts) or "–"


def _median_cell(row: dict) -> str:
    text = format_ms(row["median_ms"])
    if row["status"] == "over-budget":
        return f"{text} (1 cold step, over budget)"
    if row["status"] == "short":
        return f"{text} ({row['steps']} steps, budget)"
    return text


def workload_table(workload: dict) -> str:
    """The markdown table of one workload's rows."""
    rows = []
    for row in workload["rows"]:
        if row["status"] == "unavailable":
            rows.append([row["optimizer"], "unavailable", "–", "–", "–", "–"])
        else:
            rows.append([row["optimizer"], _median_cell(row), format_ms(row["min_ms"]), f"{row['params']:,}",
                         str(row["tensors"]), _ratio_cell(row)])
    return markdown_table(HEADER, rows)


def _notes(results: dict) -> list[str]:
    settings = results["settings"]
    notes = []
    if "steepest-signum" in results.get("pairs", {}) and results["pairs"]["steepest-signum"]:
        notes.append("steepest-signum is compared with pytorch-optimizer's Lion, its nearest elementwise peer "
                     "(both step by the sign of a momentum; pytorch-optimizer has no Signum).")
    if results.get("pairs", {}).get("steepest-adamw-fallback"):
        notes.append("steepest-adamw-fallback (steepest Muon's AdamW fallback on every tensor: Adam transform, "
                     "eps 1e-10, no weight decay) is compared with torch.optim.AdamW(foreach=True) without "
                     "weight decay.")
    if "gpt2-small" in settings["workloads"]:
        notes.append(f"gpt2-small ran with {settings['gpt2_blocks']} of GPT-2 small's 12 blocks.")
    covers = {}
    for workload in results["workloads"]:
        for row in workload["rows"]:
            if "covers" in row:
                covers.setdefault(row["optimizer"], row["covers"])
    notes += [f"{name} steps: {text}." for name, text in covers.items()]
    for workload in results["workloads"]:
        for row in workload["rows"]:
            where = f"{row['optimizer']} on {workload['name']}"
            if row["status"] == "unavailable":
                notes.append(f"{where}: unavailable: {row['reason']}")
            elif row["status"] == "over-budget":
                notes.append(f"{where}: one warm-up step took {row['median_ms'] / 1e3:.3g} s, over the "
                             f"{settings['budget_s']:g} s budget; the time shown is that single cold step (its "
                             f"first-step costs included).")
            elif row["status"] == "short":
                notes.append(f"{where}: the {settings['budget_s']:g} s budget ended it after {row['steps']} of "
                             f"{settings['repeats']} timed steps.")
    return notes


def render_markdown(results: dict) -> str:
    """``overhead.md``'s text."""
    settings, env = results["settings"], results["environment"]
    lines = [
        "# steepest bench overhead", "",
        f"Milliseconds per `optimizer.step()` with every gradient already set (no forward or backward): median "
        f"and minimum of the timed steps after {_count(settings['warmup'], 'warm-up step')} (at least "
        f"{_count(settings['repeats'], 'timed step')} and {settings['min_time_s']:g} s, at most "
        f"{settings['budget_s']:g} s per optimizer and workload), on {env['device']} with "
        f"{_count(env['torch_threads'], 'torch thread')}. The ratio is a steepest optimizer's median over its "
        f"peer's, both measured in this run.", "",
    ]
    for workload in results["workloads"]:
        size = f"{workload['params']:,} parameters in {_count(workload['tensors'], 'tensor')}"
        lines += [f"## {workload['name']}", "", f"{workload['description']}: {size}.",
                  "", workload_table(workload), ""]
    lines += ["## Environment", "", f"- device: {env['device']}"
              + (f" ({env['device_name']})" if env.get("device_name") else ""),
              f"- torch threads: {env['torch_threads']}", f"- steepest {results['steepest']}"]
    lines += [f"- {package} {version or 'not installed'}" for package, version in env["libraries"].items()]
    lines += [f"- {key}: {value}" for key, value in env["machine"].items()]
    lines += ["", "## Notes", ""] + [f"- {note}" for note in _notes(results)]
    lines += ["", f"Wall time {results['wall_seconds']:.1f} s."]
    return "\n".join(lines) + "\n"


def write_overhead_report(results: dict, out_dir) -> dict[str, Path]:
    """Write ``overhead.md`` and ``overhead.json`` into ``out_dir``; their paths under ``report`` and
    ``results``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"report": out / "overhead.md", "results": out / "overhead.json"}
    paths["results"].write_text(json.dumps(clean_json(results), indent=1, allow_nan=False), encoding="utf-8")
    paths["report"].write_text(render_markdown(results), encoding="utf-8")
    return paths


__all__ = ["format_ms", "render_markdown", "workload_table", "write_overhead_report"]
