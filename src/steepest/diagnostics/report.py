"""Write the results of :func:`steepest.diagnostics.run.run_diagnostics`: ``diagnostics.json``
(strict JSON), ``diagnostics.md`` (per optimizer: a layer table at the last checkpoint and the
metric curve) and ``diagnostics.png`` (sharpness and gradient noise over steps, one line per layer,
one column per optimizer; skipped with a note when matplotlib is missing)."""
from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["write_diagnostics_report", "diagnostics_markdown"]

COLUMNS = (("sharpness", "sharpness"), ("noise", "noise (dual norm)"), ("update_rms", "update RMS"),
           ("update_spectral", "update spectral norm"), ("orthogonality_error", "orthogonality error"))


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def diagnostics_markdown(results: dict, notes: list[str] | None = None) -> str:
    """The markdown summary of a diagnostics run."""
    lines = [f"# steepest diagnose: {results['task']}", "",
             f"{results['steps']} steps ({results['budget']} budget, batch {results['batch_size']}), "
             f"checkpoints every {results['every']} steps, seed {results['seed']}, "
             f"sharpness from {results['sharpness_iters']} power iterations; lr: {results['lr_schedule']}.", ""]
    for name, res in results["optimizers"].items():
        lines += [f"## {name}", ""]
        status = res["status"]
        lines.append(f"status {status}; training {res['train_seconds']:.2f} s, diagnostics "
                     f"{res['diagnostics_seconds']:.2f} s")
        lines.append("")
        if res["checkpoints"]:
            last = res["checkpoints"][-1]
            lines.append(f"Layers at the last checkpoint (step {last['step']}; noise in the layer's dual norm, "
                         f"orthogonality error for spectral layers only):")
            lines.append("")
            lines.append("| layer | geometry | " + " | ".join(h for _, h in COLUMNS) + " |")
            lines.append("|---|---|" + "---|" * len(COLUMNS))
            for layer, row in last["layers"].items():
                lines.append(f"| {layer} | {res['geometry'].get(layer, '-')} | "
                             + " | ".join(_fmt(row.get(k)) for k, _ in COLUMNS) + " |")
            lines.append("")
        lines.append(f"Metric curve ({results['metric_label']}):")
        lines.append("")
        lines.append(f"| step | {results['metric']} |")
        lines.append("|---|---|")
        for point in res["curve"]:
            lines.append(f"| {point['step']} | {_fmt(point.get(results['metric']))} |")
        lines.append("")
    for note in notes or []:
        lines.append(f"note: {note}")
    return "\n".join(lines).rstrip() + "\n"


def _plot(results: dict, path: Path) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: diagnostics.png was not written"
    names = list(results["optimizers"])
    fig, axes = plt.subplots(2, len(names), figsize=(5 * len(names), 7), squeeze=False)
    for col, name in enumerate(names):
        res = results["optimizers"][name]
        cps = res["checkpoints"]
        for r, (key, label) in enumerate((("sharpness", "sharpness (top Hessian-block eigenvalue)"),
                                          ("noise", "gradient noise (dual norm)"))):
            ax = axes[r][col]
            for layer in res["layers"]:
                xs = [c["step"] for c in cps if c["layers"][layer].get(key) is not None]
                ys = [c["layers"][layer][key] for c in cps if c["layers"][layer].get(key) is not None]
                ax.plot(xs, ys, marker="o", ms=3, label=layer)
            positive = [c["layers"][l][key] for c in cps for l in res["layers"]
                        if c["layers"][l].get(key) is not None]
            if key == "noise" and positive and all(v > 0 for v in positive):
                ax.set_yscale("log")
            ax.set_title(f"{name}: {key}")
            ax.set_xlabel("step")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        axes[0][col].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def write_diagnostics_report(results: dict, out_dir) -> dict[str, Path]:
    """Write the JSON, markdown and PNG into ``out_dir``; returns ``{"json", "report", "plot"?}``
    (``plot`` missing when matplotlib is not installed; the markdown then carries a note)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "diagnostics.json", "report": out / "diagnostics.md"}
    paths["json"].write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    notes = []
    note = _plot(results, out / "diagnostics.png")
    if note is None:
        paths["plot"] = out / "diagnostics.png"
    else:
        notes.append(note)
    text = diagnostics_markdown(results, notes)
    if "plot" in paths:
        text += "\n![sharpness and noise per layer](diagnostics.png)\n"
    paths["report"].write_text(text)
    return paths
