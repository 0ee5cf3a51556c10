"""The defaults study's report (``report.md``): the chosen defaults, the out-of-the-box ranking and
every candidate's regret, from :func:`steepest.bench.defaults_study.analyse_preset`'s results."""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from .environment import machine_info
from .formatting import markdown_table


def options_text(options: dict | None) -> str:
    """``lr=0.02, adamw_lr=0.003`` (the studied keys of a candidate, lr first)."""
    if options is None:
        return "-"
    keys = ["lr", *sorted(k for k in options if k != "lr")]
    return ", ".join(f"{k}={options[k]:g}" if isinstance(options[k], float) else f"{k}={options[k]}"
                     for k in keys if k in options)


def _num(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}g}" if value is not None and math.isfinite(value) else "diverged"


def _score(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else "inf"


def worst_task(row: dict, keys=None) -> str:
    key = max(keys or row["tasks"], key=lambda k: row["tasks"][k]["regret"])
    return f"{key} ({_score(row['tasks'][key]['regret'])})"


def chosen_table(results: dict) -> str:
    rows = []
    for preset, res in results.items():
        old, now, new = res["previous"], res["current"], res["chosen"]
        rows.append([f"`{preset}`", options_text(old and old["options"]), _score(old["score"]) if old else "-",
                     _score(now["score"]) if now else "-", options_text(new["options"]), _score(new["score"]),
                     worst_task(new, res["scored"]), _score(new["raw_score"])])
    return markdown_table(["preset", "0.9 default", "its score", "the code's default: score",
                           "minimax-regret choice", "its score", "its worst scored task (regret)",
                           "its raw worst regret, every task"], rows)


def ranking(results: dict, which: str = "chosen") -> list[tuple[str, float, dict]]:
    """``(preset, mean rank, {task: value})`` at each preset's ``which`` settings, best mean rank first
    (per scored task, presets are ranked by their value; a diverged value ranks last; the values of
    unscored tasks are listed, not ranked). A preset whose ``which`` settings were not a candidate
    (a study given its own grid) is left out."""
    first = next(iter(results.values()))
    tasks = list(first["chosen"]["tasks"])
    values = {p: {t: r[which]["tasks"][t]["value"] for t in tasks} for p, r in results.items() if r[which]}
    ranks: dict[str, list[float]] = {p: [] for p in values}
    for task in first["scored"]:
        order = sorted(values, key=lambda p: values[p][task])
        for i, preset in enumerate(order, 1):
            ranks[preset].append(i)
    out = [(p, statistics.fmean(ranks[p]), values[p]) for p in values]
    return sorted(out, key=lambda item: item[1])


def ranking_table(results: dict, which: str = "chosen") -> str:
    tasks = list(next(iter(results.values()))["chosen"]["tasks"])
    scored = next(iter(results.values()))["scored"]
    rows = [[f"`{p}`", f"{rank:.1f}", *[_num(values[t]) for t in tasks]] for p, rank, values in ranking(results, which)]
    if not rows:
        label = "0.9 defaults" if which == "previous" else f"{which} settings"
        return f"No preset's {label} were among this study's candidates."
    return markdown_table(["preset", "mean rank (scored tasks)",
                           *[t if t in scored else f"{t} (not ranked)" for t in tasks]], rows)


def candidates_table(res: dict) -> str:
    tasks = list(res["chosen"]["tasks"])
    rows = []
    for row in sorted(res["candidates"], key=lambda r: (r["score"], r["mean_regret"])):
        mark = " (chosen)" if row["options"] == res["chosen"]["options"] else ""
        mark += " (0.9 default)" if res["previous"] and row["options"] == res["previous"]["options"] else ""
        mark += " (the code's default)" if res["current"] and row["options"] == res["current"]["options"] else ""
        cells = [f"{_num(t['value'])} ({_score(t['regret'])}; raw {_score(t['raw_regret'])})"
                 for t in row["tasks"].values()]
        rows.append([options_text(row["options"]) + mark, _score(row["score"]), *cells])
    noise = ", ".join(f"{k} {v:.3g}" for k, v in res["noise"].items())
    scored = [f"{t}{'' if t in res['scored'] else ' (not scored)'} (regret)" for t in tasks]
    return (markdown_table(["candidate", "score", *scored], rows)
            + f"\n\nSeed noise (standard error of a difference of seed means): {noise}.")


def failures(results: dict) -> list[str]:
    """The (preset, task) pairs where the chosen default misses the tolerance."""
    lines = []
    for preset, res in results.items():
        for task, cell in res["chosen"]["tasks"].items():
            if not cell["raw_regret"] <= 1.0:
                best = res["best"][task]
                lines.append(f"- `{preset}` on {task}: {_num(cell['value'])} against the best "
                             f"{_num(cell['best'])} ({options_text(best)}): regret {_score(cell['raw_regret'])} "
                             f"tolerances, {_score(cell['regret'])} counting the seed noise"
                             f"{'' if task in res['scored'] else ' (not scored)'}")
    return lines


def write_report(study, results: dict, out: Path, seconds: float, lm_tolerance: float,
                 rel_tolerance: float) -> Path:
    """Write ``out/report.md`` for ``study`` (a :class:`~steepest.bench.defaults_study.DefaultsStudy`)
    from :func:`~steepest.bench.defaults_study.analyse_preset`'s ``results``; the tolerances are the
    study's regret units."""
    machine = machine_info()
    tasks = ", ".join(f"{t.key} ({t.task.split(':')[0]}{', ' + str(t.gpt_options) if t.gpt_options else ''})"
                      for t in study.tasks)
    lines = ["# The defaults study", "",
             f"Machine: {machine['processor']} ({machine['cpu_count']} cores), Python {machine['python']}, "
             f"torch {machine['torch']}, "
             f"{study.threads or 'default'} torch thread(s) per cell. Tasks: {tasks}; budget {study.budget}; "
             f"seeds {', '.join(map(str, study.seeds))}.", "",
             f"Regret is the candidate's seed-mean final metric against the preset's best candidate on the "
             f"same task, divided by the tolerance ({lm_tolerance} nats for language models, "
             f"{rel_tolerance:.0%} of the metric otherwise): a worst regret <= 1 keeps the promise on "
             f"every task. The score of a candidate is its worst regret over the scored tasks, where the "
             f"tolerance is at least twice the seed noise (the standard error of a difference of two seed "
             f"means); the raw regret uses the tolerance alone. Matrix sensing is reported, not scored: "
             f"there a fixed-size step stops at an error floor proportional to the lr, so its best is "
             f"always the grid's smallest lr.", "",
             "## Chosen defaults", "", chosen_table(results), "",
             "## Out-of-the-box ranking (each preset at its chosen defaults)", "", ranking_table(results), "",
             "## Out-of-the-box ranking at the 0.9 defaults", "", ranking_table(results, "previous"), ""]
    missed = failures(results)
    lines += ["## Where the chosen default misses the tolerance (raw regret > 1)", "",
              *(missed or ["None: every chosen default is within the tolerance on every task."]), ""]
    for preset, res in results.items():
        lines += [f"## {preset}", "", candidates_table(res), ""]
    lines += [f"Study wall time (this invocation): {seconds:.0f} s."]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
