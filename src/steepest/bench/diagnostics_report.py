"""The benchmark report's per-layer panel (``steepest bench --diagnostics``).

For every task and optimizer, the cell picked is the first seed at the optimizer's best lr multiplier
(the cells that record diagnostics; :func:`steepest.bench.runner.plan_cells`). ``diagnostics-<task>.png``
draws each hidden layer's sharpness and gradient noise over training, one column per optimizer, one
line per layer coloured by depth (dark: the first block); the markdown table summarizes the last
snapshot. Sharpness and noise are measured as :mod:`steepest.bench.train` describes, in the same norm
for every optimizer, so columns compare directly.
"""
from __future__ import annotations

import statistics
from pathlib import Path

__all__ = ["diagnostic_records", "diagnostics_lines", "plot_diagnostics"]


def diagnostic_records(task_key: str, task: dict, cells: list[dict]) -> dict[str, dict]:
    """``{optimizer: record}``: per optimizer the diagnosed cell at its best lr multiplier (any
    diagnosed cell when the best lr's was not diagnosed or the optimizer diverged everywhere)."""
    picked: dict[str, dict] = {}
    for name, summary in task["optimizers"].items():
        candidates = [r for r in cells if r["cell"]["task_key"] == task_key and r["cell"]["optimizer"] == name
                      and r.get("diagnostics") and r["diagnostics"]["snapshots"]]
        best = summary.get("best_lr_multiplier")
        preferred = [r for r in candidates if r["cell"]["lr_multiplier"] == best]
        if preferred or candidates:
            picked[name] = (preferred or candidates)[0]
    return picked


def _last_values(record: dict, key: str) -> list[tuple[float, str]]:
    last = record["diagnostics"]["snapshots"][-1]["layers"]
    return [(row[key], layer) for layer, row in last.items() if row.get(key) is not None]


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def diagnostics_lines(results: dict) -> list[str]:
    """The markdown section: per task, a table of the last snapshot and the panel's image."""
    lines = []
    for key, task in results["tasks"].items():
        records = diagnostic_records(key, task, results["cells"])
        if not records:
            continue
        first = next(iter(records.values()))["diagnostics"]
        norms = sorted(set(first["norms"].values()))
        lines += [f"### {key}", "",
                  f"{len(first['layers'])} hidden layers; sharpness is the top eigenvalue of each layer's "
                  f"Hessian block on the next training batch ({first['iters']} power iterations), noise "
                  f"the distance between two independent mini-batch gradients in the layer's dual norm "
                  f"({', '.join(norms)}), the same for every optimizer. Values at the last snapshot:", "",
                  "| optimizer | lr | step | median sharpness | sharpest layer | median noise | noisiest layer "
                  "| diagnostics s |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, record in records.items():
            diag = record["diagnostics"]
            sharp = _last_values(record, "sharpness")
            noise = _last_values(record, "noise")
            step = diag["snapshots"][-1]["step"]
            cells = [name, f"x{record['cell']['lr_multiplier']:g}", str(step)]
            for values in (sharp, noise):
                if values:
                    top = max(values)
                    cells += [_fmt(statistics.median(v for v, _ in values)), f"{top[1]} ({_fmt(top[0])})"]
                else:
                    cells += ["-", "-"]
            cells.append(f"{diag['seconds']:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if task.get("diagnostics_plot"):
            lines += [f"![per-layer diagnostics on {key}]({task['diagnostics_plot']})", ""]
    return lines


def plot_diagnostics(task_key: str, task: dict, cells: list[dict], path: Path, plt) -> bool:
    """Write the task's panel to ``path``; ``False`` (nothing written) when no cell has diagnostics."""
    records = diagnostic_records(task_key, task, cells)
    if not records:
        return False
    names = list(records)
    n_layers = max(len(r["diagnostics"]["layers"]) for r in records.values())
    width = max(9.0, 4.2 * len(names))
    ncol = max(1, min(n_layers, int(width // 2.2)))
    legend_rows = -(-n_layers // ncol)
    height = 7.0 + 0.18 * legend_rows
    fig, axes = plt.subplots(2, len(names), figsize=(width, height), squeeze=False, sharey="row")
    cmap = plt.get_cmap("viridis")
    for col, name in enumerate(names):
        diag = records[name]["diagnostics"]
        snapshots = diag["snapshots"]
        steps = [snap["step"] for snap in snapshots]
        layers = diag["layers"]
        for i, layer in enumerate(layers):
            colour = cmap(i / max(1, len(layers) - 1))
            for row, key in enumerate(("sharpness", "noise")):
                values = [snap["layers"][layer].get(key) for snap in snapshots]
                axes[row][col].plot(steps, [float("nan") if v is None else v for v in values],
                                    color=colour, linewidth=1, label=layer if col == 0 else None)
        axes[0][col].set_title(f"{name}\n(lr x{records[name]['cell']['lr_multiplier']:g})", fontsize=9)
        axes[1][col].set_xlabel("step")
    positive = [snap["layers"][layer]["noise"] for r in records.values() for snap in r["diagnostics"]["snapshots"]
                for layer in r["diagnostics"]["layers"] if snap["layers"][layer].get("noise") is not None]
    sharp = [abs(snap["layers"][layer]["sharpness"]) for r in records.values()
             for snap in r["diagnostics"]["snapshots"] for layer in r["diagnostics"]["layers"]
             if snap["layers"][layer].get("sharpness") is not None]
    wide_range = sharp and max(sharp) > 50 * max(statistics.median(sharp), 1e-12)
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        if wide_range:  # one outlier would flatten every other line; symlog keeps signs (saddles)
            ax.set_yscale("symlog", linthresh=max(statistics.median(sharp), 1e-6))
    for ax in axes[1]:
        ax.grid(alpha=0.3)
        if positive and min(positive) > 0:
            ax.set_yscale("log")
    axes[0][0].set_ylabel("sharpness (top eigenvalue of the layer's Hessian block)", fontsize=8)
    axes[1][0].set_ylabel("gradient noise (dual norm)", fontsize=8)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=ncol, fontsize=6,
               frameon=False)
    fig.suptitle(f"{task_key}: per-layer sharpness and gradient noise (dark: first layer)", fontsize=10)
    fig.tight_layout(rect=(0, (0.18 * legend_rows + 0.2) / height, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
