"""The report of ``steepest bench kernels``: ``kernels.md``, ``kernels.png`` and ``kernels.json``.

* ``kernels.md``: the environment (with the dtype ``ns_dtype="auto"`` picks on this machine and
  why), the matmul roofline in float32 and bfloat16 (each shape's Newton-Schulz products in both,
  or why the bfloat16 ones were skipped, and the peak with the dtype it came from), the main table
  (each backend's dtype, time, GFLOP/s, % of that peak and of the same-size matmul in the backend's
  own dtype, speed relative to ``torch.optim.Muon``'s Newton-Schulz), a milliseconds-at-a-glance
  table, the accuracy table (float32 and bfloat16 backends alike), the compiled-vs-eager table
  (when the run measured it) and the notes that explain the numbers.
* ``kernels.png``: GFLOP/s of the FLOP-counted backends against the square size (log2 axis), with
  the float32 and bfloat16 matmul curves and the peak as a horizontal line; next to it,
  milliseconds of every backend (log-log); bfloat16 backends are dashed. Drawn with matplotlib's
  Agg backend; without matplotlib the PNG is skipped and the markdown says so.
* ``kernels.json``: the results of :func:`steepest.bench.kernels.run_kernels`, strict JSON
  (non-finite floats written as ``null``).

This module reads the results dict only (it does not import :mod:`steepest.bench.kernels`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from .formatting import clean_json, markdown_table

PNG_SKIPPED = "kernels.png skipped: matplotlib is not installed (pip install 'steepest[bench]')"


def _num(value, digits: int = 3) -> str:
    """Significant-digit formatting; ``–`` for a missing or non-finite value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if value == 0:
        return "0"
    if abs(value) >= 10 ** (digits - 1):
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def _ms(value) -> str:
    if value is None:
        return "–"
    return f"{value / 1e3:.3g} s" if value >= 1000 else f"{value:.3g}"


def _sci(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.2e}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"


def _backend_labels(results: dict) -> dict[str, dict]:
    return {b["name"]: b for b in results.get("backends", [])}


def _shape_order(results: dict) -> list[str]:
    return [s["label"] for s in results.get("shapes", [])]


def _status_cell(entry: dict) -> str:
    status = entry.get("status")
    if status == "skipped":
        return "skipped"
    if status == "unavailable":
        return "unavailable"
    if status == "error":
        return "error"
    return "–"


def kernel_table(results: dict) -> str:
    """The main markdown table: one row per shape and backend.

    Columns: the dtype the backend's products run in, milliseconds (median; ``*`` marks a single
    over-budget call), the fastest call (less disturbed by other processes than the median on a
    busy machine), GFLOP/s (Newton-Schulz matmul FLOPs over the time; ``–`` for SVD and AuON), % of
    the run's matmul peak (the fastest dtype's, named in the header), % of the GFLOP/s of the same
    shape's three NS products in the backend's own dtype (``–`` where those were skipped), and how
    many times faster than ``torch.optim.Muon``'s Newton-Schulz on the same shape.
    """
    rows = []
    dtypes = {name: b.get("dtype", "–") for name, b in _backend_labels(results).items()}
    by_shape: dict[str, list[dict]] = {}
    for entry in results.get("measurements", []):
        by_shape.setdefault(entry["shape"], []).append(entry)
    for label in _shape_order(results):
        for e in by_shape.get(label, []):
            dtype = e.get("dtype") or dtypes.get(e["backend"], "–")
            if e.get("status") == "ok":
                ms = _ms(e["ms"]) + ("*" if e.get("single_call") else "")
                vs = e.get("vs_torch_muon")
                rows.append([label, e["backend"], dtype, ms, _ms(e.get("min_ms")), _num(e.get("gflops")),
                             _num(e.get("pct_peak"), 2) if e.get("pct_peak") is not None else "–",
                             _num(e.get("pct_matmul"), 2) if e.get("pct_matmul") is not None else "–",
                             f"{_num(vs)}x" if vs else "–"])
            else:
                cell = _status_cell(e)
                rows.append([label, e["backend"], dtype, cell, "–", "–", "–", "–", "–"])
    peak_dtype = results.get("roofline", {}).get("peak_dtype")
    header = ["shape", "backend", "dtype", "ms", "best ms", "GFLOP/s",
              f"% of peak ({peak_dtype} matmul)" if peak_dtype else "% of peak",
              "% of same-size matmul (own dtype)", "vs torch.optim.Muon NS"]
    return markdown_table(header, rows)


def glance_table(results: dict) -> str:
    """Milliseconds per shape (rows) and backend (columns)."""
    names = [b["name"] for b in results.get("backends", [])]
    cells: dict[tuple[str, str], str] = {}
    for e in results.get("measurements", []):
        cells[(e["shape"], e["backend"])] = (_ms(e["ms"]) + ("*" if e.get("single_call") else "")
                                             if e.get("status") == "ok" else _status_cell(e))
    rows = [[label] + [cells.get((label, n), "–") for n in names] for label in _shape_order(results)]
    return markdown_table(["shape"] + names, rows)


def _products_cells(entry: dict | None) -> list[str]:
    """``ms``, ``GFLOP/s`` and the per-product GFLOP/s of one dtype's products on a shape, or the
    skip note (and dashes) where they were not timed."""
    if not entry:
        return ["–", "–", "–"]
    if entry.get("status", "ok") != "ok":
        return [entry.get("note") or entry.get("status", "–"), "–", "–"]
    star = "*" if entry.get("over_budget") else ""
    detail = ", ".join(f"{p['shape']}: {_num(p['gflops'])}" for p in entry["products"])
    return [_ms(entry["ms"]) + star, _num(entry["gflops"]), detail]


def peak_sentence(results: dict) -> str:
    """The run's matmul peak, the dtype it came from, and each dtype's own best."""
    roof = results.get("roofline", {})
    if roof.get("peak_gflops") is None:
        return "No matmul product was measured, so there is no peak."
    dtype = roof.get("peak_dtype") or "float32"
    sentence = (f"**Peak matmul: {_num(roof['peak_gflops'])} GFLOP/s, {dtype}**, at {roof.get('peak_at')}; "
                f"the `% of peak` column is relative to it, for float32 and bfloat16 backends alike.")
    by_dtype = roof.get("peak_by_dtype") or {}
    if by_dtype:
        parts = [f"{name} {_num(best['gflops'])} GFLOP/s at {best['at']}" if best else f"{name} not measured"
                 for name, best in by_dtype.items()]
        sentence += " Fastest product per dtype: " + "; ".join(parts) + "."
    return sentence


def roofline_tables(results: dict) -> str:
    """Square matmul throughput per size (float32 and bfloat16), then each shape's NS products in
    both dtypes, then the peak and the dtype it came from."""
    roof = results.get("roofline", {})
    parts = []
    square = roof.get("square", [])
    if square:
        rows = []
        for pt in square:
            bf = pt.get("bf16")
            if bf:
                duration = _ms(bf["ms"]) if bf["ms"] >= 1000 else f"{_ms(bf['ms'])} ms"
                bf_cell = f"{_num(bf['gflops'])} ({duration}{'*' if bf.get('over_budget') else ''})"
            else:
                bf_cell = pt.get("bf16_note") or "–"
            rows.append([str(pt["n"]), _ms(pt["ms"]), _num(pt["gflops"]), bf_cell])
        parts.append("Square `n x n @ n x n` (GFLOP/s = 2 n^3 / t):\n\n"
                     + markdown_table(["n", "float32 ms", "float32 GFLOP/s", "bfloat16 GFLOP/s (ms)"], rows))
    float32, bfloat16 = roof.get("shape_products", {}), roof.get("shape_products_bf16", {})
    if float32 or bfloat16:
        rows = []
        for label in _shape_order(results):
            if label in float32 or label in bfloat16:
                rows.append([label] + _products_cells(float32.get(label)) + _products_cells(bfloat16.get(label)))
        parts.append("The three products of one Newton-Schulz step on each shape, in float32 and in bfloat16 "
                     "(wide orientation `X` is `m x n`, `m <= n`: `X X^T`, `A A`, `A X`; GFLOP/s of the three "
                     "together, then each; `*`: a product took one call over the budget, after which costlier "
                     "shapes skip the bfloat16 products):\n\n"
                     + markdown_table(["shape", "float32 ms", "float32 GFLOP/s", "float32 per product",
                                       "bfloat16 ms", "bfloat16 GFLOP/s", "bfloat16 per product"], rows))
    parts.append(peak_sentence(results))
    return "\n\n".join(parts)


def accuracy_table(results: dict) -> str:
    """Singular-value errors and distance from the exact polar factor, per shape and backend."""
    by_shape: dict[str, list[dict]] = {}
    for entry in results.get("measurements", []):
        if entry.get("accuracy"):
            by_shape.setdefault(entry["shape"], []).append(entry)
    inputs = results.get("input_accuracy", {})
    rows = []
    for label in _shape_order(results):
        acc = inputs.get(label)
        if acc:
            rows.append([label, "input G/‖G‖_F", _sci(acc["max_abs_sigma_minus_1"]),
                         _sci(acc["mean_abs_sigma_minus_1"]), _sci(acc["sigma_min"]), _sci(acc["sigma_max"]),
                         _sci(acc["rel_dist_polar"])])
        for e in by_shape.get(label, []):
            a = e["accuracy"]
            rows.append([label, e["backend"], _sci(a["max_abs_sigma_minus_1"]), _sci(a["mean_abs_sigma_minus_1"]),
                         _sci(a["sigma_min"]), _sci(a["sigma_max"]), _sci(a["rel_dist_polar"])])
    if not rows:
        return "(accuracy not computed)"
    return markdown_table(["shape", "backend", "max \\|σ−1\\|", "mean \\|σ−1\\|", "σ_min", "σ_max", "‖O − UVᵀ‖_F / ‖UVᵀ‖_F"], rows)


def compile_table(results: dict) -> str:
    """Compiled against eager, one row per kernel and shape: the eager and compiled medians (and
    fastest calls), the speedup eager / compiled, the first compiled call (compilation, or reuse of
    a dynamic-shape graph) and the largest output difference relative to the largest entry."""
    section = results.get("compiled") or {}
    rows = []
    for e in section.get("entries", []):
        if e.get("status") == "ok":
            rows.append([e["shape"], e["kernel"], _ms(e["eager_ms"]), _ms(e["compiled_ms"]),
                         f"{_num(e['speedup'])}x", f"{_ms(e['eager_min_ms'])} / {_ms(e['compiled_min_ms'])}",
                         f"{e['first_call_s']:.2f}", _sci(e.get("max_rel_diff")), str(e.get("repeats", "–"))])
        else:
            rows.append([e["shape"], e["kernel"], _status_cell(e), "–", "–", "–", "–", "–", "–"])
    if not rows:
        return "(compiled kernels not measured)"
    return markdown_table(["shape", "kernel", "eager ms", "compiled ms", "speedup (eager / compiled)",
                           "best ms (eager / compiled)", "first compiled call s", "max rel. diff", "pairs"], rows)


COMPILE_EXPLANATIONS = [
    "Compiled kernels are the process-wide `torch.compile(fullgraph=True, dynamic=True)` functions the "
    "optimizers use with `compile=True` (`steepest.compiled`). Eager and compiled calls alternate, so "
    "both see the same machine load; `speedup` is the ratio of the medians (above 1: compiled is faster).",
    "`first compiled call s` is the compilation (seconds per kernel on CPU), or almost nothing when a "
    "dynamic-shape graph compiled for an earlier shape is reused. It is not in the medians.",
    "Newton-Schulz spends its time in matrix products, which are BLAS calls compiled or not, so compiling "
    "it gains little; the elementwise transforms fuse several passes over memory into one, which pays on "
    "large tensors and costs the compiled function's call overhead (guards) on small ones.",
    "On a machine busy with other processes, every multi-threaded eager op waits at its barrier for "
    "descheduled threads (milliseconds each), and an eager transform is 2-8 such ops against one fused "
    "compiled loop (often single-threaded for small tensors): the elementwise speedups are then inflated "
    "far beyond what an idle machine shows. Rerun with `--threads 1` to see the kernels' own costs.",
]


EXPLANATIONS = [
    "Times are medians of the repeated calls after one warm-up call, on a seeded Gaussian input "
    "(the same input for every backend). `*` marks a single call that exceeded the per-measurement "
    "budget (its time includes first-call overhead); costlier shapes are then skipped for that backend.",
    "FLOPs of a Newton-Schulz (NS) backend: steps × (4 m² n + 2 m³) for an m × n input with m ≤ n "
    "(tall inputs are transposed): `X Xᵀ` (2 m² n), `A A` (2 m³) and `B X` (2 m² n) per step. The "
    "symmetric Gram product is counted in full (BLAS computes it in full); the normalization, the "
    "`addmm` scalings and AuON's brake are not counted. `hybrid_auon` counts its single step.",
    "`svd` and `auon` do no matmul work to count: they are reported in milliseconds only. AuON is "
    "elementwise (linear time in m n): beyond the smallest shapes, where every backend costs mostly "
    "call overhead, it is far cheaper than any NS backend.",
    "`% of peak` divides by the fastest matmul product of the run in either dtype (the peak line of "
    "the roofline names it), so float32 and bfloat16 backends are set against the same ceiling: what "
    "the machine's matrix multiply can do at best.",
    "`% of same-size matmul` divides by the throughput of the three products an NS step does on the same "
    "shape in the backend's own dtype (bfloat16 for the `_bf16` backends, for `torch_muon`, and for "
    "`auto` where it resolved to bfloat16), so it isolates the overhead of the iteration (dispatch, "
    "`addmm` scaling, normalization, the casts) from the BLAS efficiency at that size and dtype; `–` "
    "where the bfloat16 products were skipped. Small matrices are dispatch-bound.",
    "The `_bf16` backends run the same schedule as their float32 namesakes with every product in "
    "bfloat16; `auto` runs `keller` with `ns_dtype=\"auto\"`, in the dtype the Environment section "
    "names, so it should match `keller` or `keller_bf16`. Their accuracy rows show what bfloat16's "
    "8-bit significand costs: singular values within a few hundredths of where float32 puts them.",
    "`torch_muon` is `torch.optim._muon._zeropower_via_newtonschulz` with `torch.optim.Muon`'s defaults; "
    "it casts to bfloat16, so its `% of same-size matmul` is relative to the bfloat16 products. On a CPU "
    "without native bfloat16 matmul (neither AMX-BF16 nor AVX512-BF16) bfloat16 is one to several "
    "hundred times slower than float32, for torch's iteration and the `_bf16` backends alike; with "
    "AVX512-BF16 (and no AMX) bfloat16 GEMM may reach only about half the float32 rate, so float32 NS "
    "can still be faster (compare the roofline's two dtypes).",
    "`vs torch.optim.Muon NS` is torch's time divided by the backend's time on the same shape "
    "(above 1: faster than torch's).",
    "Accuracy: the singular values σ of each output, and its relative Frobenius distance from the exact "
    "polar factor U Vᵀ of the input (computed by SVD in float64). A square Gaussian matrix has singular "
    "values down to about 1/n of its largest, below the ~1e-3 relative floor the NS schedules are tuned "
    "for, so NS leaves them well short of 1: a max |σ−1| near 1 on squares is expected, and the mean "
    "and the polar distance tell more. Wide or tall Gaussian matrices are well conditioned.",
    "`keller` (and torch's NS, which uses the same coefficients) is designed to land in about "
    "[0.68, 1.13], not at 1, for singular values ≥ 1e-2 ‖G‖_F; those near 4e-3 ‖G‖_F, common in square "
    "matrices, overshoot to 1.20 (the 5-fold composition of its polynomial peaks there). `you`, `quintic` "
    "and `polar_express` converge further; `polar_express_8` reaches the polar factor for σ ≥ 1e-3 ‖G‖_F.",
    "AuON's output is the unit-Frobenius input times the cosh brake (≈ 1), not an orthogonal matrix: its "
    "singular values are about 1/√min(m, n) and its numbers only say how far it is from the polar factor "
    "(nearly the same as the input row). HybridAuON's one Keller step partly whitens the spectrum before "
    "the renormalization, so it lies in between.",
]


def auto_dtype_sentences(env: dict) -> list[str]:
    """What ``ns_dtype="auto"`` chose on the CPU (and on CUDA, where there was one), and why."""
    sentences = []
    for device, key in (("the CPU", "ns_dtype_auto"), ("CUDA", "ns_dtype_auto_cuda")):
        if env.get(key):
            sentences.append(f'`ns_dtype="auto"` picks **{env[key]}** on {device} ("{env.get(key + "_reason")}").')
    return sentences


def render_markdown(results: dict) -> str:
    """The whole ``kernels.md``."""
    env = results.get("environment", {})
    config = results.get("config", {})
    lines = ["# Orthogonalization kernels: speed and accuracy", ""]
    lines.append(f"Run started {results.get('started', '?')}, took {results.get('seconds', 0):.1f} s "
                 f"({'quick' if config.get('quick') else 'full'} configuration: squares "
                 f"{config.get('sizes')}, {config.get('repeats')} repeats, "
                 f"{config.get('budget_s')} s budget per measurement, seed {config.get('seed')}).")
    lines += ["", "## Environment", ""]
    for key in ("processor", "cpu_count", "threads", "torch", "cpu_capability", "mkldnn_bf16_supported",
                "bf16_matmul_feature", "python", "platform"):
        if key in env:
            lines.append(f"- {key}: {env[key]}")
    lines += [f"- {sentence}" for sentence in auto_dtype_sentences(env)]
    lines += ["", "## Backends", ""]
    for b in results.get("backends", []):
        extra = "" if b.get("available", True) else f" — {b.get('reason')}"
        lines.append(f"- `{b['name']}`: {b['label']}{extra}")
    lines += ["", "## Shapes", ""]
    for s in results.get("shapes", []):
        src = "; ".join(s.get("sources") or []) or "square"
        lines.append(f"- {s['label']} ({s.get('kind')}): {src}")
    lines += ["", "## Matmul roofline", "", roofline_tables(results)]
    lines += ["", "## Time and throughput", "", kernel_table(results)]
    lines += ["", "### Milliseconds at a glance", "", glance_table(results)]
    lines += ["", "## Accuracy", "", accuracy_table(results)]
    if results.get("compiled"):
        lines += ["", "## Compiled against eager (torch.compile)", "", compile_table(results), ""]
        lines += [f"- {n}" for n in COMPILE_EXPLANATIONS]
    lines += ["", "## Notes", ""]
    lines += [f"- {n}" for n in results.get("notes", [])]
    lines += [f"- {n}" for n in EXPLANATIONS]
    return "\n".join(lines) + "\n"


def plot_kernels(results: dict, path: Path) -> str | None:
    """Draw ``kernels.png``; return a note instead when it cannot be drawn."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return PNG_SKIPPED
    square = {s["label"]: s["m"] for s in results.get("shapes", []) if s.get("square")}
    if not square:
        return "kernels.png skipped: no square sizes were measured"
    series: dict[str, list[tuple[int, float, float | None]]] = {}
    for e in results.get("measurements", []):
        if e.get("status") == "ok" and e["shape"] in square:
            series.setdefault(e["backend"], []).append((square[e["shape"]], e["ms"], e.get("gflops")))
    roof = results.get("roofline", {})
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    pts = sorted((p["n"], p["gflops"]) for p in roof.get("square", []))
    if pts:
        left.plot([p[0] for p in pts], [p[1] for p in pts], "k-", lw=2.5, label="float32 matmul n×n")
    bf_pts = sorted((p["n"], p["bf16"]["gflops"]) for p in roof.get("square", []) if p.get("bf16"))
    if bf_pts:
        left.plot([p[0] for p in bf_pts], [p[1] for p in bf_pts], "k:", lw=2.5, label="bfloat16 matmul n×n")
    if roof.get("peak_gflops"):
        left.axhline(roof["peak_gflops"], color="k", ls="--", lw=1,
                     label=f"peak {roof['peak_gflops']:.0f} ({roof.get('peak_dtype') or 'float32'})")
    names = [b["name"] for b in results.get("backends", [])]
    dtypes = {b["name"]: b.get("dtype") for b in results.get("backends", [])}
    palette = plt.get_cmap("tab20")
    for name, values in series.items():
        values.sort()
        color = palette(names.index(name) % 20 if name in names else 19)
        style = "s--" if dtypes.get(name) == "bfloat16" else "o-"
        gf = [(n, g) for n, _, g in values if g]
        if gf:
            left.plot([p[0] for p in gf], [p[1] for p in gf], style, ms=4, color=color, label=name)
        right.plot([v[0] for v in values], [v[1] for v in values], style, ms=4, color=color, label=name)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("n (n × n input)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    left.set_ylabel("GFLOP/s (NS matmul FLOPs / time)")
    left.set_title("Throughput against the matmul roofline")
    left.set_ylim(bottom=0)
    right.set_yscale("log")
    right.set_ylabel("ms per call (median)")
    right.set_title("Time per call")
    env = results.get("environment", {})
    fig.suptitle(f"{env.get('processor', '')}, {env.get('threads', '?')} threads, torch {env.get('torch', '')}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write_kernel_report(results: dict, out_dir) -> dict[str, Path]:
    """Write ``kernels.md``, ``kernels.json`` and (with matplotlib) ``kernels.png`` into ``out_dir``.

    Returns the written paths under the keys ``report``, ``results`` and ``plot`` (the last only when
    the PNG was drawn; otherwise a note is added to the results and the markdown).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"report": out / "kernels.md", "results": out / "kernels.json"}
    png = out / "kernels.png"
    note = plot_kernels(results, png)
    if note is None:
        paths["plot"] = png
    elif note not in results.setdefault("notes", []):
        results["notes"].append(note)
    paths["results"].write_text(json.dumps(clean_json(results), indent=1, allow_nan=False), encoding="utf-8")
    paths["report"].write_text(render_markdown(results), encoding="utf-8")
    return paths


__all__ = ["accuracy_table", "auto_dtype_sentences", "compile_table", "glance_table", "kernel_table", "peak_sentence",
           "plot_kernels", "render_markdown", "roofline_tables", "write_kernel_report"]
