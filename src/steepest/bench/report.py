"""Write benchmark results: ``report.md``, ``val_loss.png`` and ``results.json`` in one directory.

* ``results.json`` holds every number (configuration, machine, per-evaluation curves, per-step
  training losses, timings, memory, targets and ratios). Non-finite floats are written as ``null``.
* ``report.md`` is the human summary: the metrics table, the ratios against ``torch.optim.AdamW`` and
  ``torch.optim.Muon`` measured in the same run, the headline sentences, configuration, machine and
  notes (skipped peers, caveats).
* ``val_loss.png`` plots validation loss against steps and against training seconds (matplotlib,
  Agg backend). Without matplotlib the PNG is skipped and the report says so.
* ``layer_lr.png`` (when a run has noise-adaptive layerwise rates, e.g. LANTON) plots every
  layer's lr factor and noise estimate at each evaluation.
"""
from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

from .runner import REFERENCES, ratio_key

PEER_LABELS = {
    "adamw": "torch.optim.AdamW",
    "torch-muon": "torch.optim.Muon (+AdamW)",
    "steepest-muon": "steepest muon",
    "steepest-scion": "steepest scion",
}


def default_out_dir(task: str, now: datetime | None = None) -> Path:
    """``./bench-out/<task>-<YYYYmmdd-HHMMSS>``."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return Path("bench-out") / f"{task}-{stamp}"


def _clean(value):
    """Make ``value`` strict-JSON safe: non-finite floats become ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _fmt(value, digits: int = 3, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int):
        return f"{value}{suffix}"
    return f"{value:.{digits}f}{suffix}"


def _eval_columns(results: dict) -> list[int]:
    """Up to four evaluation steps to show as columns: the first evaluation at or after each
    quarter of the run (so 300 steps evaluated every 25 give 75, 150, 225 and 300)."""
    steps = sorted({p["step"] for r in results["runs"].values() for p in r.get("curve", [])} - {0})
    if len(steps) <= 4:
        return steps
    total = results["config"]["steps"]
    picks = {next((s for s in steps if s >= total * k / 4), steps[-1]) for k in range(1, 5)}
    return sorted(picks)


def metrics_table(results: dict) -> str:
    """The main markdown table: one row per optimizer that ran."""
    evals = _eval_columns(results)
    target = results.get("target_loss")
    header = (["optimizer"] + [f"val@{s}" for s in evals] +
              ["final val", f"steps to {_fmt(target)}", "train s to target", "ms/step",
               "ms fwd+bwd", "ms opt.step", "state MiB", "peak RSS MiB"])
    rows = [header, ["---"] * len(header)]
    for name, run in results["runs"].items():
        if run.get("status") not in ("ok", "diverged"):
            rows.append([name] + [run.get("status", "?")] + [""] * (len(header) - 2))
            continue
        by_step = {p["step"]: p["val_loss"] for p in run["curve"]}
        rows.append(
            [name] + [_fmt(by_step.get(s)) for s in evals] +
            [_fmt(run["final_val_loss"]), _fmt(run.get("steps_to_target")),
             _fmt(run.get("seconds_to_target"), 1), _fmt(run["step_ms"], 1), _fmt(run["fwd_bwd_ms"], 1),
             _fmt(run["opt_step_ms"], 1), _fmt(run["state_mib"], 2), _fmt(run["peak_rss_mib"], 0)])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def ratios_table(results: dict) -> str:
    """Markdown table of ratios (this optimizer / reference); below 1 means less time or steps."""
    labels = {"step_ms": "ms/step", "opt_step_ms": "opt.step", "steps_to_target": "steps to target",
              "seconds_to_target": "s to target", "state_mib": "state"}
    header = ["optimizer", "reference"] + list(labels.values())
    rows = [header, ["---"] * len(header)]
    for name, per_ref in results.get("ratios", {}).items():
        for ref in REFERENCES:
            values = per_ref.get(ratio_key(ref))
            if values is not None:
                rows.append([name, PEER_LABELS.get(ref, ref)] +
                            [_fmt(values.get(k), 2, "x") for k in labels])
    if len(rows) == 2:
        return ""
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def layer_stats_section(results: dict) -> list[str]:
    """Markdown lines: for each run with noise-adaptive layerwise rates, the hidden layers' lr factor
    at a quarter, half and the end of training (every layer and evaluation is in results.json and
    layer_lr.png)."""
    lines = []
    for name, run in results["runs"].items():
        snapshots = run.get("layer_stats")
        if not snapshots:
            continue
        picks = sorted({snapshots[len(snapshots) // 4]["step"], snapshots[len(snapshots) // 2]["step"],
                        snapshots[-1]["step"]})
        by_step = {snap["step"]: snap["layers"] for snap in snapshots}
        lines += [f"## Layerwise lr factors: {name}", "",
                  "| layer | role | " + " | ".join(f"step {s}" for s in picks) + " |",
                  "| --- | --- | " + " | ".join("---" for _ in picks) + " |"]
        for i, row in enumerate(snapshots[-1]["layers"]):
            lines.append(f"| {row['parameter']} | {row['role']} | "
                         + " | ".join(f"{by_step[s][i]['factor']:.3f}" for s in picks) + " |")
        lines += ["", "(1.000: the least noisy layer of its group, at the base lr; layer_lr.png plots "
                      "every evaluation.)", ""]
    return lines


def render_markdown(results: dict) -> str:
    """The whole ``report.md``."""
    cfg, machine, data, model = results["config"], results["machine"], results["data"], results["model"]
    lines = [f"# steepest bench: {data['name']}", ""]
    if results.get("headlines"):
        lines += [f"- {h}" for h in results["headlines"]] + [""]
    lines += ["## Results", "", metrics_table(results), ""]
    target = results.get("target_loss")
    lines += [f"Target val loss {_fmt(target)} ({results.get('target_source')}). Steps to target are "
              f"quantised to the evaluation interval ({cfg['eval_every']} steps); seconds count "
              f"training steps only (no evaluation). Timings are medians over steps after the first "
              f"{cfg['timing_skip']}; \"opt.step\" covers every optimizer object of the peer.", ""]
    ratios = ratios_table(results)
    if ratios:
        lines += ["## Ratios (this / reference, same run)", "", ratios, ""]
    lines += layer_stats_section(results)
    lines += ["## Optimizers", ""]
    for name, run in results["runs"].items():
        if run.get("status") in ("ok", "diverged"):
            settings = json.dumps(_clean(run["hyperparameters"]))
            lines.append(f"- **{name}**: {run['step_covers']}; hyper-parameters `{settings}`")
        else:
            lines.append(f"- **{name}**: {run.get('status')}: {run.get('reason', '')}")
    lines += ["", "## Configuration", ""]
    lines.append(f"- data: {data['name']} ({data['n_chars']:,} chars, vocab {data['vocab_size']}, "
                 f"sha256 {data['sha256_prefix']}, {data['train_tokens']:,} train / "
                 f"{data['val_tokens']:,} val tokens, split 90/10 by position)")
    lines.append(f"- model: GPT {model['n_layer']} layers, d_model {model['d_model']}, {model['n_head']} "
                 f"heads, ctx {model['ctx']}, {model['params']:,} parameters")
    lines.append(f"- training: {cfg['steps']} steps, batch {cfg['batch_size']} "
                 f"({data['tokens_per_step']:,} tokens/step), seed {cfg['seed']}, warm-up "
                 f"{results['warmup_steps']} steps then cosine to {cfg['final_lr_fraction']:g} of peak; "
                 f"eval every {cfg['eval_every']} steps on {cfg['eval_batches']} fixed batches")
    lines.append(f"- isolation: {'one process per optimizer' if cfg['isolate'] else 'single process'}; "
                 f"torch threads {cfg['threads'] if cfg['threads'] else 'default'}")
    lines += ["", "## Machine", ""]
    lines.append(f"- {machine['processor']}, {machine['cpu_count']} CPUs, {machine['platform']}")
    lines.append(f"- Python {machine['python']}, torch {machine['torch']}, {machine['torch_threads']} "
                 f"torch threads, CPU capability {machine['cpu_capability']}, oneDNN bf16 "
                 f"{'supported' if machine['mkldnn_bf16_supported'] else 'not supported'}")
    lines.append(f"- total wall time {results['total_wall_seconds']:.1f} s")
    notes = results.get("notes", [])
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def plot_curves(results: dict, path: Path) -> str | None:
    """Draw ``val_loss.png``; return a note instead when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "val_loss.png skipped: matplotlib is not installed (pip install 'steepest[bench]')"
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, run in results["runs"].items():
        curve = [p for p in run.get("curve", []) if p["val_loss"] is not None
                 and math.isfinite(p["val_loss"])]
        if not curve:
            continue
        label = PEER_LABELS.get(name, name)
        by_step.plot([p["step"] for p in curve], [p["val_loss"] for p in curve], marker=".", label=label)
        by_time.plot([p["train_seconds"] for p in curve], [p["val_loss"] for p in curve], marker=".",
                     label=label)
    target = results.get("target_loss")
    for axis, xlabel in ((by_step, "step"), (by_time, "training seconds")):
        if target is not None:
            axis.axhline(target, color="grey", linestyle=":", linewidth=1)
        axis.set_xlabel(xlabel)
        axis.set_ylabel("validation loss (nats/char)")
        axis.grid(alpha=0.3)
    by_step.legend()
    fig.suptitle(f"{results['data']['name']}: validation loss")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def plot_layer_stats(results: dict, path: Path) -> bool:
    """Draw ``layer_lr.png`` (lr factor and noise per layer over training) for the runs that recorded
    layer statistics; return whether anything was drawn (False also without matplotlib)."""
    runs = {name: run["layer_stats"] for name, run in results["runs"].items() if run.get("layer_stats")}
    if not runs:
        return False
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(len(runs), 2, figsize=(11, 3.8 * len(runs)), squeeze=False)
    for (name, snapshots), (factor_ax, noise_ax) in zip(runs.items(), axes):
        names = [row["parameter"] for row in snapshots[0]["layers"]]
        steps = [snap["step"] for snap in snapshots]
        for i, layer in enumerate(names):
            factors = [snap["layers"][i]["factor"] for snap in snapshots]
            noise = [snap["layers"][i]["noise"] if snap["layers"][i]["noise"] is not None else float("nan")
                     for snap in snapshots]
            role = snapshots[0]["layers"][i]["role"]
            style = "-" if role in ("hidden", "conv") else "--"
            factor_ax.plot(steps, factors, style, linewidth=1, label=layer)
            noise_ax.plot(steps, noise, style, linewidth=1)
        factor_ax.set_title(f"{PEER_LABELS.get(name, name)}: lr factor per layer")
        noise_ax.set_title("noise estimate (dual norm, std)")
        noise_ax.set_yscale("log")
        for axis in (factor_ax, noise_ax):
            axis.set_xlabel("step")
            axis.grid(alpha=0.3)
        factor_ax.legend(fontsize=5, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_report(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write the files into ``out_dir`` (created if needed); return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"results": out / "results.json", "report": out / "report.md"}
    png = out / "val_loss.png"
    png_note = plot_curves(results, png)
    if png_note is None:
        paths["plot"] = png
    else:
        results.setdefault("notes", []).append(png_note)
    if plot_layer_stats(results, out / "layer_lr.png"):
        paths["layer_plot"] = out / "layer_lr.png"
    paths["results"].write_text(json.dumps(_clean(results), indent=1), encoding="utf-8")
    paths["report"].write_text(render_markdown(results), encoding="utf-8")
    return paths
