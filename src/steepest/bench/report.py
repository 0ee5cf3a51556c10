"""Write a suite's results: ``report.md``, ``results.json`` and PNG plots in one directory.

* ``results.json``: every number (configuration, machine, each task's data and model, each
  optimizer's lr grid, best lr, curves, targets, ratios, and every cell's record without its
  per-step losses and timings, which stay in ``cells/``). Non-finite floats are written as ``null``.
* ``report.md``: headline sentences, then per task the results table at each optimizer's best lr
  (mean ± sample std over seeds), the ratios against torch.optim.AdamW and torch.optim.Muon, and
  the lr grid; then the optimizers' settings, configuration, machine and notes.
* ``curves-<task>.png``: the task's metric against steps and against training seconds (best lr,
  mean over seeds, a band for the spread). ``lr-sensitivity.png``: final metric against the lr
  multiplier, one panel per task. ``layer_lr.png``: the layerwise lr factors of noise-adaptive
  optimizers (LANTON) over training. ``diagnostics-<task>.png`` (with ``--diagnostics``): each hidden
  layer's sharpness and gradient noise over training (:mod:`.diagnostics_report`).

Without matplotlib the PNGs are skipped and the report says so.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from .config import REFERENCES
from .diagnostics_report import diagnostics_lines, plot_diagnostics
from .formatting import clean_json, markdown_table
from .summary import label, ratio_key

#: what ``--average`` did, for the report
_AVERAGE_TEXT = {
    "swa": "Iterate averaging (`--average swa`): every cell kept a `torch.optim.swa_utils.AveragedModel` with equal "
           "weights over the iterates of the last 25 % of the steps; the \"averaged\" column is its final metric at the "
           "raw model's best lr (the raw training run is unchanged: no SWALR).",
    "ema": "Iterate averaging (`--average ema`): every cell kept a `torch.optim.swa_utils.AveragedModel` with "
           "`get_ema_multi_avg_fn(decay)`, decay 1 - 1/h over a horizon h of 10 % of the steps; the \"averaged\" column "
           "is its final metric at the raw model's best lr (the raw training run is unchanged).",
}

NO_MATPLOTLIB = "plots skipped: matplotlib is not installed (pip install 'steepest[bench]')"


def _fmt(value, digits: int = 4, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int):
        return f"{value}{suffix}"
    return f"{value:.{digits}g}{suffix}"


def task_table(task: dict) -> str:
    """One row per optimizer at its best lr (the main table of a task); with ``--average`` the
    averaged model's final metric follows the raw one."""
    extras = task["extra_metrics"]
    kinds = sorted({s["averaged_kind"] for s in task["optimizers"].values() if s.get("averaged_kind")})
    averaged = [f"averaged ({'/'.join(kinds)}) final {task['metric']}"] if kinds else []
    header = (["optimizer", "best lr", f"final {task['metric']}", *averaged, "@25%", "@50%", *extras,
               "steps to target", "s to target", "ms/step", "ms opt.step", "opt.step mean", "state MiB",
               "peak RSS MiB"])
    rows = [header]
    for name, s in task["optimizers"].items():
        if s["status"] != "ok":
            reason = "; ".join(s.get("reasons", []))[:120]
            rows.append([name, s["status"] + (f": {reason}" if reason else "")] + [""] * (len(header) - 2))
            continue
        final = _fmt(s["final"]) + (f" ± {_fmt(s['final_std'], 2)}" if s.get("final_std") is not None else "")
        steps = _fmt(s.get("steps_to_target"), 4) + (f" ({s['reached']} seeds)" if s.get("reached") else "")
        if averaged:
            final = [final, _fmt(s.get("averaged_final")) + (f" ± {_fmt(s['averaged_final_std'], 2)}"
                                                           if s.get("averaged_final_std") is not None else "")]
        else:
            final = [final]
        rows.append([name, f"{s['best_lr']:.3g} (x{s['best_lr_multiplier']:g})", *final,
                     _fmt(s["at_budget"].get("0.25")), _fmt(s["at_budget"].get("0.5")),
                     *[_fmt(s["extras"].get(m)) for m in extras],
                     steps, _fmt(s.get("seconds_to_target"), 3), _fmt(s["step_ms"], 3),
                     _fmt(s["opt_step_ms"], 3), _fmt(s.get("opt_step_mean_ms"), 3), _fmt(s["state_mib"], 3),
                     _fmt(s["peak_rss_mib"], 4)])
    return markdown_table(rows[0], rows[1:])


def ratio_table(task: dict) -> str:
    """This optimizer over each reference, same run (below 1: fewer steps, less time or memory)."""
    columns = {"final": "final metric", "steps_to_target": "steps to target",
               "seconds_to_target": "s to target", "step_ms": "ms/step", "opt_step_ms": "opt.step",
               "peak_rss_mib": "peak RSS"}
    rows = [["optimizer", "vs", *columns.values()]]
    for name, s in task["optimizers"].items():
        for ref in REFERENCES:
            values = s.get("ratios", {}).get(ratio_key(ref))
            if values:
                rows.append([name, label(ref), *[_fmt(values.get(k), 3, "x") for k in columns]])
    return markdown_table(rows[0], rows[1:]) if len(rows) > 1 else ""


def grid_table(task: dict) -> str:
    """Mean ± std of the final metric at every lr multiplier (the lr sensitivity)."""
    mults = sorted({row["lr_multiplier"] for s in task["optimizers"].values() for row in s["grid"]})
    rows = [["optimizer", *[f"lr x{m:g}" for m in mults]]]
    for name, s in task["optimizers"].items():
        by_mult = {row["lr_multiplier"]: row for row in s["grid"]}
        cells = []
        for m in mults:
            row = by_mult.get(m)
            if row is None:
                cells.append("")
            elif row["mean"] is None or not math.isfinite(row["mean"]):
                cells.append("/".join(row["status"]))
            else:
                cells.append(_fmt(row["mean"]) + (f" ± {_fmt(row['std'], 2)}" if row["std"] is not None else ""))
        rows.append([name, *cells])
    return markdown_table(rows[0], rows[1:])


def overview_table(results: dict) -> str:
    """Every optimizer's mean final metric at its best lr on every task, with its rank there."""
    tasks = results["tasks"]
    names = list(dict.fromkeys(n for t in tasks.values() for n in t["optimizers"]))
    ranks = {}
    for key, task in tasks.items():
        ok = sorted((s["final"], n) for n, s in task["optimizers"].items() if s["status"] == "ok")
        ranks[key] = {n: i + 1 for i, (_, n) in enumerate(ok)}
    rows = []
    for name in names:
        row = [name]
        for key, task in tasks.items():
            s = task["optimizers"].get(name)
            if s is None:
                row.append("")
            elif s["status"] != "ok":
                row.append(s["status"])
            else:
                row.append(f"{_fmt(s['final'])} ({ranks[key][name]})")
        rows.append(row)
    header = ["optimizer", *[f"{key}: final {task['metric']} (rank)" for key, task in tasks.items()]]
    return markdown_table(header, rows)


def defaults_table(results: dict) -> str:
    """Each preset at its own defaults against its tuned benchmark settings, on every task, with the
    regret (nats for language models, relative excess otherwise); empty when no preset ran both ways."""
    tasks = {k: t for k, t in results["tasks"].items() if t.get("defaults")}
    presets = list(dict.fromkeys(r["preset"] for t in tasks.values() for r in t["defaults"]))
    if not presets:
        return ""
    rows = []
    for preset in presets:
        row = [f"`{preset}`"]
        for task in tasks.values():
            found = [r for r in task["defaults"] if r["preset"] == preset]
            if not found:
                row.append("")
                continue
            r = found[0]
            if r["same"]:
                row.append(f"{_fmt(r['defaults'])} (the tuned settings)")
                continue
            regret = (f"{r['regret']:+.3f} nats" if r["unit"] == "nats" else f"{100 * r['regret']:+.0f} %") \
                if math.isfinite(r["regret"]) else "-"
            row.append(f"{_fmt(r['defaults'])} vs {_fmt(r['tuned_value'])} ({regret})")
        rows.append(row)
    return markdown_table(["preset", *[f"{k}: defaults vs tuned (regret)" for k in tasks]], rows)


def layer_stats_lines(results: dict) -> list[str]:
    """For noise-adaptive runs (seed of the best lr, first seed), hidden layers' lr factors over time."""
    lines = []
    for record in _layer_stat_records(results):
        snapshots = record["layer_stats"]
        cell = record["cell"]
        picks = sorted({snapshots[len(snapshots) // 4]["step"], snapshots[len(snapshots) // 2]["step"],
                        snapshots[-1]["step"]})
        by_step = {snap["step"]: snap["layers"] for snap in snapshots}
        lines += [f"### Layerwise lr factors: {cell['optimizer']} on {cell['task_key']} "
                  f"(lr x{cell['lr_multiplier']:g}, seed {cell['seed']})", "",
                  "| layer | role | " + " | ".join(f"step {s}" for s in picks) + " |",
                  "| --- | --- | " + " | ".join("---" for _ in picks) + " |"]
        for i, row in enumerate(snapshots[-1]["layers"]):
            lines.append(f"| {row['parameter']} | {row['role']} | "
                         + " | ".join(f"{by_step[s][i]['factor']:.3f}" for s in picks) + " |")
        lines += ["", "(1.000: the least noisy layer of its group, at the base lr; layer_lr.png plots "
                      "every evaluation.)", ""]
    return lines


def _layer_stat_records(results: dict) -> list[dict]:
    picked = []
    for key, task in results["tasks"].items():
        for name, s in task["optimizers"].items():
            if s["status"] != "ok":
                continue
            for record in results["cells"]:
                cell = record["cell"]
                if (cell["task_key"], cell["optimizer"], cell["lr_multiplier"]) == \
                        (key, name, s["best_lr_multiplier"]) and record.get("layer_stats"):
                    picked.append(record)
                    break
    return picked


def render_markdown(results: dict) -> str:
    """The whole ``report.md``."""
    cfg = results["config"]
    lines = [f"# steepest bench ({cfg['budget']})", ""]
    if results.get("headlines"):
        lines += [f"- {h}" for h in results["headlines"]] + [""]
    lines += [f"Each optimizer ran at lr multipliers {', '.join(f'x{m:g}' for m in cfg['lr_multipliers'])} "
              f"of its base lr with seeds {', '.join(map(str, cfg['seeds']))}; tables show its best lr "
              f"(lowest mean final metric), mean ± sample std over seeds. Every metric is lower-is-better. "
              f"Steps to target are those of the seed-mean curve, quantised to the evaluation interval "
              f"(k/n seeds: how many reached it on their own); seconds count training steps only. Timings are medians "
              f"over each cell's steps after the first three, averaged over seeds, except \"opt.step mean\": the mean over "
              f"the same steps, which counts work done at some steps only (LANTON measures its noise every "
              f"noise_every steps); \"opt.step\" covers every optimizer object of the peer.", ""]
    if cfg.get("average"):
        lines += [_AVERAGE_TEXT[cfg["average"]], ""]
    if len(results["tasks"]) > 1:
        lines += ["## Overview", "", "Mean final metric at each optimizer's best lr (rank on the task; 1 is best):",
                  "", overview_table(results), ""]
    defaults = defaults_table(results)
    if defaults:
        lines += ["## Out of the box", "", "Each preset at its own defaults (`steepest.for_model(model, preset)`, "
                  "nothing else set; the `-defaults` rows) against its tuned benchmark settings at their best lr; "
                  "the regret is the difference in nats for language models and the relative excess of the "
                  "metric otherwise:", "", defaults, ""]
    for key, task in results["tasks"].items():
        budget = task["budget"]
        lines += [f"## {key}", "",
                  f"{task['model']}. Data: {_data_line(task['data'])}. Budget: {budget['steps']} steps, "
                  f"batch {budget['batch_size']}, warm-up {budget['warmup_fraction']:g} of the steps then "
                  f"cosine to {budget['final_lr_fraction']:g} of the peak, evaluated every "
                  f"{budget['eval_every']} steps. Metric: {task['metric_label']}. Target "
                  f"{_fmt(task['target'])} ({task['target_source']}).", "",
                  task_table(task), ""]
        ratios = ratio_table(task)
        if ratios:
            lines += ["Ratios (this / reference, same run):", "", ratios, ""]
        lines += ["Final metric at every lr multiplier:", "", grid_table(task), ""]
        if task.get("plot"):
            lines += [f"![{key}]({task['plot']})", ""]
    if results.get("lr_plot"):
        lines += ["## Learning-rate sensitivity", "", f"![lr sensitivity]({results['lr_plot']})", ""]
    layer_lines = layer_stats_lines(results)
    if layer_lines:
        lines += ["## Noise-adaptive layerwise rates", ""] + layer_lines
    diag_lines = diagnostics_lines(results)
    if diag_lines:
        lines += ["## Per-layer diagnostics", ""] + diag_lines
    lines += ["## Optimizers", ""]
    seen = set()
    for record in results["cells"]:
        name = record["cell"]["optimizer"]
        if name in seen or record.get("status") not in ("ok", "diverged"):
            continue
        seen.add(name)
        settings = {k: v for k, v in record["hyperparameters"].items() if k != "lr"}
        lines.append(f"- **{name}** (base lr {record['cell']['lr'] / record['cell']['lr_multiplier']:.3g}): "
                     f"{record['step_covers']}; `{json.dumps(clean_json(settings))}`")
    machine = results["machine"]
    lines += ["", "## Configuration and machine", "",
              f"- suite: `{json.dumps(clean_json(cfg))}`",
              f"- run directory {results['run_dir']} ({results['cells_total']} cells, "
              f"{results['cells_resumed']} resumed from an earlier run)",
              f"- {machine['processor']}, {machine['cpu_count']} CPUs, {machine['platform']}",
              f"- Python {machine['python']}, torch {machine['torch']}, {machine['torch_threads']} torch threads, "
              f"CPU capability {machine['cpu_capability']}, oneDNN bf16 "
              f"{'supported' if machine['mkldnn_bf16_supported'] else 'not supported'}",
              f"- wall time of this invocation {results['total_wall_seconds']:.1f} s; the cells took "
              f"{results['cell_seconds']:.1f} s of training, evaluation and setup in all"]
    if results.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"


def _data_line(data: dict) -> str:
    return ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in data.items())


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_task_curves(task_key: str, task: dict, path: Path, plt) -> bool:
    """Metric against steps and against training seconds at each optimizer's best lr."""
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(12, 4.4))
    drawn = False
    for name, s in task["optimizers"].items():
        curve = [p for p in s.get("curve", []) if p["mean"] is not None and math.isfinite(p["mean"])]
        if not curve:
            continue
        drawn = True
        style = "-" if name.startswith("steepest") else "--"
        steps = [p["step"] for p in curve]
        means = [p["mean"] for p in curve]
        line, = by_step.plot(steps, means, style, linewidth=1.2, label=f"{name} (x{s['best_lr_multiplier']:g})")
        spreads = [p["std"] for p in curve]
        if all(v is not None for v in spreads):
            low = [max(m - v, 1e-12) if task["metric_log_scale"] else m - v for m, v in zip(means, spreads)]
            by_step.fill_between(steps, low, [m + v for m, v in zip(means, spreads)], color=line.get_color(),
                                 alpha=0.15, linewidth=0)
        by_time.plot([p["train_seconds"] for p in curve], means, style, linewidth=1.2, color=line.get_color())
    if not drawn:
        plt.close(fig)
        return False
    for axis, xlabel in ((by_step, "step"), (by_time, "training seconds")):
        if task.get("target") is not None:
            axis.axhline(task["target"], color="grey", linestyle=":", linewidth=1)
        axis.set_xlabel(xlabel)
        axis.set_ylabel(task["metric_label"])
        if task["metric_log_scale"]:
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
    by_step.legend(fontsize=6, ncol=2)
    fig.suptitle(f"{task_key}: best lr per optimizer, mean over seeds (dotted: target)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_lr_sensitivity(results: dict, path: Path, plt) -> bool:
    """Final metric (mean over seeds) against the lr multiplier, one panel per task."""
    tasks = results["tasks"]
    if not tasks or max(len(s["grid"]) for t in tasks.values() for s in t["optimizers"].values()) < 2:
        return False
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.8), squeeze=False)
    for axis, (key, task) in zip(axes[0], tasks.items()):
        for name, s in task["optimizers"].items():
            points = [(row["lr_multiplier"], row["mean"]) for row in s["grid"]
                      if row["mean"] is not None and math.isfinite(row["mean"])]
            if points:
                style = "-o" if name.startswith("steepest") else "--s"
                axis.plot(*zip(*points), style, markersize=3, linewidth=1, label=name)
        axis.set_xscale("log", base=2)
        if task["metric_log_scale"]:
            axis.set_yscale("log")
        axis.set_title(key)
        axis.set_xlabel("lr multiplier")
        axis.set_ylabel(f"final {task['metric']}")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=5, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_layer_stats(results: dict, path: Path, plt) -> bool:
    """lr factor and noise per layer over training for the noise-adaptive runs."""
    records = _layer_stat_records(results)
    if not records:
        return False
    fig, axes = plt.subplots(len(records), 2, figsize=(11, 3.8 * len(records)), squeeze=False)
    for record, (factor_ax, noise_ax) in zip(records, axes):
        snapshots = record["layer_stats"]
        steps = [snap["step"] for snap in snapshots]
        for i, row in enumerate(snapshots[0]["layers"]):
            style = "-" if row["role"] in ("hidden", "conv") else "--"
            factor_ax.plot(steps, [snap["layers"][i]["factor"] for snap in snapshots], style, linewidth=1,
                           label=row["parameter"])
            noise_ax.plot(steps, [snap["layers"][i]["noise"] if snap["layers"][i]["noise"] is not None
                                  else float("nan") for snap in snapshots], style, linewidth=1)
        cell = record["cell"]
        factor_ax.set_title(f"{cell['optimizer']} on {cell['task_key']}: lr factor per layer")
        noise_ax.set_title("noise estimate (dual norm, std)")
        noise_ax.set_yscale("log")
        for axis in (factor_ax, noise_ax):
            axis.set_xlabel("step")
            axis.grid(alpha=0.3)
        factor_ax.legend(fontsize=5, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write the report files into ``out_dir`` (created if needed); return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"results": out / "results.json", "report": out / "report.md"}
    plt = _pyplot()
    if plt is None:
        results.setdefault("notes", []).append(NO_MATPLOTLIB)
    else:
        for key, task in results["tasks"].items():
            name = f"curves-{key}.png"
            if plot_task_curves(key, task, out / name, plt):
                task["plot"] = name
                paths[f"curves-{key}"] = out / name
        if plot_lr_sensitivity(results, out / "lr-sensitivity.png", plt):
            results["lr_plot"] = "lr-sensitivity.png"
            paths["lr_plot"] = out / "lr-sensitivity.png"
        if plot_layer_stats(results, out / "layer_lr.png", plt):
            paths["layer_plot"] = out / "layer_lr.png"
        for key, task in results["tasks"].items():
            name = f"diagnostics-{key}.png"
            if plot_diagnostics(key, task, results["cells"], out / name, plt):
                task["diagnostics_plot"] = name
                paths[f"diagnostics-{key}"] = out / name
    paths["results"].write_text(json.dumps(clean_json(results), indent=1), encoding="utf-8")
    paths["report"].write_text(render_markdown(results), encoding="utf-8")
    return paths


def summary_text(results: dict) -> str:
    """What the command line prints: each task's main table and the headlines."""
    parts = []
    for key, task in results["tasks"].items():
        parts += [f"{key} ({task['metric_label']}, target {_fmt(task['target'])}):", task_table(task), ""]
    parts += results.get("headlines", [])
    return "\n".join(parts)
