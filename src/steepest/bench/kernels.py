"""Micro-benchmark of the orthogonalization kernels: speed against the matmul roofline, and accuracy.

``steepest bench kernels`` times every way this library (and ``torch.optim.Muon``) turns a gradient
matrix into an update direction, on the matrix shapes the benchmark models actually train and on
square ``n x n`` matrices, and sets the times against what the machine's matrix multiply can do.
Newton-Schulz is timed in both iteration dtypes: each schedule in float32 under its own name, the
``keller`` and ``polar_express`` schedules also in bfloat16 (``keller_bf16``, ...), and ``auto``,
``keller`` in the dtype ``ns_dtype="auto"`` picks here; the environment section says which dtype
that is and why (:func:`steepest.polar.dtype.auto_ns_dtype`), so the choice can be checked against
the two dtypes' times on the same machine.

Timing: each shape gets a seeded Gaussian input, the same for every backend. Per (shape, backend)
one warm-up call is timed first. If it takes longer than ``budget_s`` the pair is not repeated
(its single, warm-up-inclusive time is reported and flagged) and every later, costlier shape is
skipped for that backend with a note (this keeps the bfloat16 backends affordable on a CPU
without native bfloat16 matmul, where they run one to several hundred times slower than float32).
Otherwise the call is repeated ``repeats`` times (cheap calls more, until ``min_time_s`` is filled;
stopping early once the pair has used ``budget_s``) and the median is reported, with the fastest
call beside it. Shapes are measured cheapest first (by Newton-Schulz FLOPs), so "later" means "at
least as costly". Once the whole run has taken ``deadline_s``, the remaining shapes are skipped
with a note. The load average before the run is recorded: on a machine shared with other
processes (and with as many torch threads as cores) times are inflated and very noisy, and the
report says so.

Roofline: in the same run, right before each shape's backends (so both see the same machine
load), the three products a Newton-Schulz step does on that shape are timed in float32 and in
bfloat16 (for a square ``n x n`` one of them is ``n x n @ n x n``, the square roofline). The
bfloat16 products are budget-guarded like a backend: once one of them takes a single call over
the budget, costlier shapes record a skip note instead (as does every shape when
``bf16_matmul`` is off). GFLOP/s is ``2 m n k / t``. The run's peak is the fastest product measured
in either dtype, and the results name the dtype it came from (``peak_dtype``; each dtype's own
peak is kept beside it). Each FLOP-counted backend is reported as a percentage of that peak, and
of its own shape's three products in the backend's own dtype ("% of the same-size matmul", which
isolates the iteration's overhead from BLAS efficiency at that size and dtype): the bfloat16
backends and ``torch_muon`` (bfloat16 inside) against the bfloat16 products, the others against
the float32 ones.

The parts: :mod:`.kernel_config` (what a run measures), :mod:`.kernel_shapes` (the shapes and the
FLOP count), :mod:`.kernel_backends` (the backends), :mod:`.kernel_measure` (timing, the roofline
products, accuracy), :mod:`.kernel_compiled` (compiled against eager) and :mod:`.kernel_report`
(``kernels.md``, ``kernels.png``, ``kernels.json``); this module runs them in order.
"""
from __future__ import annotations

import os
import time
from datetime import datetime, timezone

import torch
from torch import Tensor

from .environment import machine_info
from .kernel_backends import Backend, build_backends
from .kernel_compiled import measure_compiled, run_compiled
from .kernel_config import BACKEND_NAMES, BF16_BACKENDS, COMPILE_KERNELS, NS_SCHEDULES, KernelConfig
from .kernel_measure import (exact_polar64, fmt_ms, gaussian, measure_products, orthogonality_error, say,
                             singular_values64, time_call, time_pair)
from .kernel_report import kernel_table, write_kernel_report
from .kernel_shapes import discover_model_shapes, ns_flops, shape_list

__all__ = ["BACKEND_NAMES", "BF16_BACKENDS", "Backend", "COMPILE_KERNELS", "KernelConfig", "NS_SCHEDULES",
           "build_backends", "discover_model_shapes", "exact_polar64", "kernel_table", "measure_compiled",
           "measure_products", "ns_flops", "orthogonality_error", "run_compiled", "run_kernels", "singular_values64",
           "time_call", "time_pair", "write_kernel_report"]


def run_kernels(config: KernelConfig, progress: bool = True) -> dict:
    """Run the kernel benchmark described by ``config``; return JSON-able results.

    See the module docstring for what is measured. Shapes are measured cheapest first; for each,
    the matmul roofline points (its Newton-Schulz products in float32, then in bfloat16 while the
    budget allows) are timed right before its backends, so that the ratios compare numbers taken
    under the same machine load.

    The result has ``config``, ``environment`` (:func:`steepest.bench.environment.machine_info`,
    which includes the dtype ``ns_dtype="auto"`` picks and why, plus the load average before and
    after: other processes inflate and scatter the times), ``shapes``, ``backends`` (each with its
    ``dtype``), ``roofline``, ``measurements`` (one per shape and backend, with the backend's
    ``dtype``; ``status`` ``ok``, ``skipped``, ``unavailable`` or ``error``), ``input_accuracy``
    (the normalized input's singular-value errors per shape), ``notes`` and ``seconds``.

    ``roofline`` has ``shape_products`` (float32) and ``shape_products_bf16`` (bfloat16), both
    ``{shape: entry}`` with an entry for every shape: ``status`` ``ok`` with the products'
    timings (:func:`measure_products`), or ``skipped`` with a ``note``; ``square`` (the float32
    ``n x n @ n x n`` points with the bfloat16 one, or its skip note, beside each);
    ``peak_gflops``, ``peak_at`` and ``peak_dtype`` (the fastest product of either dtype); and
    ``peak_by_dtype`` (``{dtype: {"gflops", "at"}}``, ``None`` for a dtype never measured).
    """
    started = time.perf_counter()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    previous_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _run(config, progress, started, started_at)
    finally:
        if config.threads is not None:
            torch.set_num_threads(previous_threads)


def _environment() -> dict:
    """:func:`steepest.bench.environment.machine_info` plus the thread count."""
    return {**machine_info(), "threads": torch.get_num_threads()}


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _measure_backend(backend: Backend, G: Tensor, config: KernelConfig) -> dict:
    """Time one backend on ``G`` (see :func:`time_call`); the output is kept for the accuracy."""
    try:
        timing = time_call(lambda: backend.fn(G), config.repeats, config.budget_s, config.min_time_s)
    except Exception as exc:  # e.g. an SVD that fails to converge
        return {"status": "error", "note": f"{type(exc).__name__}: {exc}"}
    seconds = timing["seconds"]
    entry = {"status": "ok", "ms": seconds * 1e3, "min_ms": min(timing["times_s"], default=seconds) * 1e3,
             "warmup_ms": timing["warmup_s"] * 1e3, "times_ms": [t * 1e3 for t in timing["times_s"]],
             "repeats": len(timing["times_s"]), "single_call": timing["over_budget"], "output": timing["output"]}
    flops = backend.flops(G.shape[0], G.shape[1])
    if flops:
        entry["gflops"] = flops / seconds / 1e9
    return entry


class _Sweep:
    """The shape-by-shape part of a run: its measurements, and what it learns on the way (backends
    too slow for costlier shapes, whether bfloat16 matmul is too, whether the time limit has passed)."""

    #: the dtypes of the roofline products, in the order they are timed
    MATMUL_DTYPES = ("float32", "bfloat16")

    def __init__(self, config: KernelConfig, backends: dict[str, Backend], notes: list[str], started: float,
                 progress: bool) -> None:
        self.config, self.backends, self.notes = config, backends, notes
        self.started, self.progress = started, progress
        self.deadline = None if config.deadline_s is None else started + config.deadline_s
        self.measurements: list[dict] = []
        self.input_accuracy: dict[str, dict] = {}
        self.products: dict[str, dict[str, dict]] = {dtype: {} for dtype in self.MATMUL_DTYPES}
        self.square: list[dict] = []
        self.blocked: dict[str, str] = {}  # backend -> why its costlier shapes are skipped
        self.bf16_blocked: str | None = None
        self.late = False

    def _past_deadline(self) -> bool:
        return self.deadline is not None and time.perf_counter() > self.deadline

    def _late_note(self) -> str:
        return f"skipped: the run's time limit ({self.config.deadline_s:g} s) was reached"

    def measure_shape(self, index: int, count: int, s: dict) -> None:
        """The roofline products of one shape, then every backend on it (all skipped once late)."""
        m, n, label = s["m"], s["n"], s["label"]
        if self._past_deadline():
            self.late = True
        if self.late:
            self._skip_shape(m, n, label)
            say(self.progress, f"kernels {index}/{count} {label}: {self._late_note()}")
            return
        self.products["float32"][label] = measure_products(m, n, self.config)
        self.products["bfloat16"][label] = self._bf16_products(m, n, label)
        if s["square"]:
            self.square.append(self._square_point(label, n))
        G = gaussian(m, n, self.config.seed)
        reference = self._reference(G, label)
        row: dict[str, dict] = {}
        for name, backend in self.backends.items():
            row[name] = self._backend_entry(name, backend, G, reference, m, n, label)
            self.measurements.append(row[name])
        _relative_to_torch_muon(row)
        if self.progress:
            parts = [f"{k} {fmt_ms(v['ms'])}" if v.get("ms") else f"{k} {v['status']}" for k, v in row.items()]
            say(True, f"kernels {index}/{count} {label} ({time.perf_counter() - self.started:.0f} s): matmul "
                      f"{self._matmul_progress(label)}; " + ", ".join(parts))

    def _matmul_progress(self, label: str) -> str:
        """``155 GFLOP/s float32, 1.2 bfloat16`` for a progress line."""
        cells = [f"{entry[label]['gflops']:.3g}" if entry[label]["status"] == "ok" else "skipped"
                 for entry in self.products.values()]
        return f"{cells[0]} GFLOP/s float32, {cells[1]} bfloat16"

    def _skip_shape(self, m: int, n: int, label: str) -> None:
        for dtype in self.MATMUL_DTYPES:
            self.products[dtype][label] = _skipped_products(dtype, self._late_note())
        for name, backend in self.backends.items():
            flops = backend.flops(m, n)
            self.measurements.append({"shape": label, "m": m, "n": n, "backend": name, "dtype": backend.dtype,
                                      "status": "skipped", "note": self._late_note(),
                                      "gflop": flops / 1e9 if flops else None})

    def _bf16_products(self, m: int, n: int, label: str) -> dict:
        """The shape's products in bfloat16, or why not: ``bf16_matmul`` is off, or a bfloat16
        product of a cheaper shape took one call over the budget. A product over the budget here
        blocks the costlier shapes."""
        if not self.config.bf16_matmul:
            return _skipped_products("bfloat16", "not measured: bf16_matmul is off")
        if self.bf16_blocked:
            return _skipped_products("bfloat16", self.bf16_blocked)
        entry = measure_products(m, n, self.config, torch.bfloat16)
        if entry["over_budget"]:
            slowest = max(entry["products"], key=lambda pt: pt["ms"])
            took = f"{slowest['shape']} took {fmt_ms(slowest['ms'])}"
            self.bf16_blocked = f"skipped: bfloat16 {took} (on {label})"
            self.notes.append(f"bfloat16 matmul: {took} for {label}, over the {self.config.budget_s:g} s "
                              "budget; costlier shapes skip the bfloat16 products")
        return entry

    def _square_point(self, label: str, n: int) -> dict:
        """The square roofline point ``n x n @ n x n``: the shape's float32 ``A A`` product, with the
        bfloat16 one (or why it is missing) beside it."""
        point = dict(self.products["float32"][label]["products"][1], n=n)  # A A is n x n @ n x n
        bf16 = self.products["bfloat16"][label]
        if bf16["status"] == "ok":
            point["bf16"] = {k: bf16["products"][1][k] for k in ("ms", "min_ms", "gflops", "repeats", "over_budget")}
        else:
            point["bf16"], point["bf16_note"] = None, bf16["note"]
        return point

    def _reference(self, G: Tensor, label: str) -> Tensor | None:
        """The exact polar factor of ``G`` (float64), and the normalized input's own errors; ``None``
        without ``accuracy``."""
        if not self.config.accuracy:
            return None
        reference = exact_polar64(G)
        self.input_accuracy[label] = orthogonality_error(G.double() / torch.linalg.vector_norm(G.double()), reference)
        return reference

    def _backend_entry(self, name: str, backend: Backend, G: Tensor, reference: Tensor | None, m: int, n: int,
                       label: str) -> dict:
        """One backend on one shape: measured, or why not."""
        entry = {"shape": label, "m": m, "n": n, "backend": name, "dtype": backend.dtype}
        flops = backend.flops(m, n)
        entry["gflop"] = flops / 1e9 if flops else None
        if not backend.available:
            entry.update(status="unavailable", note=backend.reason)
        elif name in self.blocked:
            entry.update(status="skipped", note=self.blocked[name])
        elif self._past_deadline():
            self.late = True
            entry.update(status="skipped", note=self._late_note())
        else:
            self._measure(entry, backend, G, reference, label)
        return entry

    def _measure(self, entry: dict, backend: Backend, G: Tensor, reference: Tensor | None, label: str) -> None:
        """Time the backend into ``entry``; a call over the budget blocks its costlier shapes. Its
        GFLOP/s is set against the shape's products in the backend's dtype (when measured)."""
        name, budget = backend.name, self.config.budget_s
        entry.update(_measure_backend(backend, G, self.config))
        output = entry.pop("output", None)
        if entry["status"] == "error":
            self.notes.append(f"{name} on {label}: error {entry['note']}")
        elif entry["single_call"]:
            took = fmt_ms(entry["ms"])
            self.blocked[name] = f"skipped: {label} took {took}"
            entry["note"] = f"one call only: {took} is over the {budget:g} s budget (includes first-call overhead)"
            self.notes.append(f"{name}: one call on {label} took {took} (budget {budget:g} s); "
                              "costlier shapes are skipped for it")
        if output is not None and reference is not None:
            entry["accuracy"] = orthogonality_error(output, reference)
        same_size = self.products.get(backend.dtype, {}).get(label)
        if entry.get("gflops") and same_size and same_size["status"] == "ok":
            entry["pct_matmul"] = 100.0 * entry["gflops"] / same_size["gflops"]

    def peak(self) -> dict:
        """The fastest matmul product of the run in each dtype and over both (``peak_gflops``,
        ``peak_at``, ``peak_dtype``, ``peak_by_dtype``); every FLOP-counted measurement gets its
        percentage of the overall peak (``pct_peak``)."""
        by_dtype: dict[str, dict | None] = {}
        for dtype, table in self.products.items():
            candidates = [(pt["gflops"], f"{pt['shape']} (for {label})") for label, entry in table.items()
                          if entry["status"] == "ok" for pt in entry["products"]]
            best = max(candidates) if candidates else None
            by_dtype[dtype] = {"gflops": best[0], "at": best[1]} if best else None
        measured = [(v["gflops"], dtype) for dtype, v in by_dtype.items() if v]
        if not measured:
            return {"peak_gflops": None, "peak_at": None, "peak_dtype": None, "peak_by_dtype": by_dtype}
        peak, dtype = max(measured)
        for entry in self.measurements:
            if entry.get("gflops"):
                entry["pct_peak"] = 100.0 * entry["gflops"] / peak
        return {"peak_gflops": peak, "peak_at": by_dtype[dtype]["at"], "peak_dtype": dtype, "peak_by_dtype": by_dtype}


def _skipped_products(dtype: str, note: str) -> dict:
    """A roofline entry for products that were not timed, and why."""
    return {"dtype": dtype, "status": "skipped", "note": note}


def _relative_to_torch_muon(row: dict[str, dict]) -> None:
    """``vs_torch_muon``: torch.optim.Muon's time over each backend's, on the same shape."""
    torch_ms = row.get("torch_muon", {}).get("ms")
    for entry in row.values():
        if entry.get("ms") and torch_ms:
            entry["vs_torch_muon"] = torch_ms / entry["ms"]


def _is_busy(load: list[float] | None, cores: int, progress: bool) -> bool:
    """Whether other processes keep the machine busy (1-minute load average above half the CPUs)."""
    busy = bool(load and load[0] > 0.5 * cores)
    if busy:
        say(progress, f"kernels: warning: the machine is busy (load average {load[0]:g} on {cores} CPUs); "
                      "times will be inflated and noisy")
    return busy


def _busy_note(load: list[float], cores: int) -> str:
    return (f"the machine was busy before this run started (1-minute load average {load[0]:g} on "
            f"{cores} CPUs): other processes inflate and scatter the times (a multi-threaded matmul "
            "waits at every barrier for its descheduled threads, so small kernels can take "
            "milliseconds instead of microseconds); treat these numbers with care and rerun on an idle "
            "machine, or with fewer threads than idle cores, for reference numbers")


def _compiled_section(config: KernelConfig, progress: bool, notes: list[str]) -> dict | None:
    """The compiled-vs-eager results (``None`` unless ``config.compile``); errors become notes."""
    compiled = run_compiled(config, progress) if config.compile else None
    if compiled:
        for e in compiled["entries"]:
            if e["status"] == "error":
                notes.append(f"compiled {e['kernel']} on {e['shape']}: error {e['note']}")
    return compiled


@torch.no_grad()
def _run(config: KernelConfig, progress: bool, started: float, started_at: str) -> dict:
    load_start = _loadavg()
    environment = _environment()
    shapes, notes = shape_list(config)
    shapes.sort(key=lambda s: (s["ns_flops_per_step"], s["m"]))
    backends = build_backends(config.backends)
    for b in backends.values():
        if not b.available:
            notes.append(f"{b.name}: {b.reason}")

    # a first matmul so that library initialization is not charged to the first measurement
    torch.randn(64, 64) @ torch.randn(64, 64)
    say(progress, f"kernels: {len(shapes)} shapes x {len(backends)} backends, "
                  f"{environment['threads']} threads, budget {config.budget_s:g} s per measurement")
    cores = os.cpu_count() or 1
    busy = _is_busy(load_start, cores, progress)

    sweep = _Sweep(config, backends, notes, started, progress)
    for index, s in enumerate(shapes, 1):
        sweep.measure_shape(index, len(shapes), s)
    peak = sweep.peak()
    if sweep.late:
        notes.append(f"the run's time limit ({config.deadline_s:g} s) was reached: the costliest shapes were skipped")
    compiled = _compiled_section(config, progress, notes)
    environment["loadavg_start"], environment["loadavg_end"] = load_start, _loadavg()
    if busy:
        notes.append(_busy_note(load_start, cores))
    seconds = time.perf_counter() - started
    say(progress, f"kernels: done in {seconds:.1f} s (matmul peak {peak['peak_gflops'] or 0:.1f} GFLOP/s, "
                  f"{peak['peak_dtype']}, at {peak['peak_at']})")
    return {
        "kind": "kernels",
        "started": started_at,
        "seconds": seconds,
        "config": config.to_dict(),
        "environment": environment,
        "flop_formula": "steps * (4 m^2 n + 2 m^3) for an m x n input with m <= n (tall inputs transposed)",
        "shapes": shapes,
        "backends": [b.describe() for b in backends.values()],
        "roofline": {"square": sweep.square, "shape_products": sweep.products["float32"],
                     "shape_products_bf16": sweep.products["bfloat16"], **peak},
        "measurements": sweep.measurements,
        "input_accuracy": sweep.input_accuracy,
        "compiled": compiled,
        "notes": notes,
    }
