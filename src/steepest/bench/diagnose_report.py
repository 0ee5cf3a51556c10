"""Write the results of :func:`steepest.bench.diagnose.run_diagnostics` (``steepest diagnose``):
``diagnostics.json`` (strict JSON), ``diagnostics.md`` (per optimizer: a layer table at the last
checkpoint and the metric curve) and ``diagnostics.png`` (sharpness and gradient noise over steps,
one line per layer, one column per optimizer, colour by depth (dark: first layer), a shared y-range
per row, and a third row with NC1-NC4 for classifier tasks; skipped with a note when matplotlib is
missing)."""
from __future__ import annotations

import json
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
             f"sharpness from {results['sharpness_iters']} power iterations; lr: {results['lr_schedule']}."
             + (f" Every optimizer starts from the weights in {results['checkpoint']}." if results.get("checkpoint")
                else ""), ""]
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
        collapse = [c for c in res["checkpoints"] if c.get("collapse")]
        if collapse:
            keys = list(collapse[0]["collapse"])
            lines.append("Neural collapse of the last layer on the training set (arXiv 2008.08186; 0 is "
                         "perfect collapse):")
            lines.append("")
            lines.append("| step | " + " | ".join(keys) + " |")
            lines.append("|---|" + "---|" * len(keys))
            for c in collapse:
                lines.append(f"| {c['step']} | " + " | ".join(_fmt(c["collapse"].get(k)) for k in keys) + " |")
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
    has_collapse = any(c.get("collapse") for res in results["optimizers"].values() for c in res["checkpoints"])
    rows = 3 if has_collapse else 2
    fig, axes = plt.subplots(rows, len(names), figsize=(5.5 * len(names), 3.6 * rows), squeeze=False)
    cmap = plt.get_cmap("viridis")
    styles = ("-", "--", ":", "-.")
    for r in range(2):  # one y-range per metric across optimizers, so columns compare at a glance
        values = [c["layers"][l][key] for res in results["optimizers"].values() for c in res["checkpoints"]
                  for l in res["layers"] for key in (("sharpness", "noise")[r],)
                  if c["layers"][l].get(key) is not None]
        if values:
            low, high = min(values), max(values)
            pad = 0.05 * (high - low or abs(high) or 1.0)
            for ax in axes[r]:
                if r == 1 and low > 0:
                    ax.set_yscale("log")
                    ax.set_ylim(low / 1.2, high * 1.2)
                else:
                    ax.set_ylim(low - pad, high + pad)
    for col, name in enumerate(names):
        res = results["optimizers"][name]
        cps = res["checkpoints"]
        layers = res["layers"]
        for r, (key, label) in enumerate((("sharpness", "sharpness (top Hessian-block eigenvalue)"),
                                          ("noise", "gradient noise (dual norm)"))):
            ax = axes[r][col]
            for i, layer in enumerate(layers):
                xs = [c["step"] for c in cps if c["layers"][layer].get(key) is not None]
                ys = [c["layers"][layer][key] for c in cps if c["layers"][layer].get(key) is not None]
                ax.plot(xs, ys, styles[i % len(styles)], color=cmap(i / max(1, len(layers) - 1)), marker="o",
                        ms=2.5, linewidth=1.1, label=layer)
            ax.set_title(f"{name}: {key}")
            ax.set_xlabel("step")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        axes[0][col].legend(fontsize=6)
        if has_collapse:
            ax = axes[2][col]
            cps_nc = [c for c in cps if c.get("collapse")]
            for key in ("nc1", "nc2", "nc3", "nc4"):
                values = [(c["step"], c["collapse"].get(key)) for c in cps_nc]
                values = [(x, y) for x, y in values if y is not None and y > 0]
                if values:
                    ax.plot(*zip(*values), marker="o", ms=3, label=key)
            ax.set_yscale("log")
            ax.set_title(f"{name}: neural collapse (last layer)")
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
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
