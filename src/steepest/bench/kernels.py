"""Micro-benchmark of the orthogonalization kernels: speed against the matmul roofline, and accuracy.

``steepest bench kernels`` times every way this library (and ``torch.optim.Muon``) turns a gradient
matrix into an update direction, on the matrix shapes the benchmark models actually train and on
square ``n x n`` matrices, and sets the times against what the machine's matrix multiply can do.

Timing: each shape gets a seeded Gaussian input, the same for every backend. Per (shape, backend)
one warm-up call is timed first. If it takes longer than ``budget_s`` the pair is not repeated
(its single, warm-up-inclusive time is reported and flagged) and every later, costlier shape is
skipped for that backend with a note. Otherwise the call is repeated ``repeats`` times (cheap
calls more, until ``min_time_s`` is filled; stopping early once the pair has used ``budget_s``)
and the median is reported, with the fastest call beside it. Shapes are measured cheapest first
(by Newton-Schulz FLOPs), so "later" means "at least as costly". Once the whole run has taken
``deadline_s``, the remaining shapes are skipped with a note. The load average before the run is
recorded: on a machine shared with other processes (and with as many torch threads as cores)
times are inflated and very noisy, and the report says so.

Roofline: in the same run, right before each shape's backends (so both see the same machine
load), float32 throughput is timed for the three products a Newton-Schulz step does on that shape
(for a square ``n x n`` these are ``n x n @ n x n``, the square roofline; bfloat16 ``n x n @ n x n``
is timed too, budget-guarded, for context). GFLOP/s is ``2 m n k / t``; the machine's peak is the
maximum over everything measured. Each FLOP-counted backend is reported as a percentage of the
peak and of its own shape's three products ("% of the same-size matmul", which isolates the
iteration's overhead from BLAS efficiency at that size); for the bfloat16 ``torch_muon`` both are
relative to float32 matmul.

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
from .kernel_config import BACKEND_NAMES, COMPILE_KERNELS, NS_SCHEDULES, KernelConfig
from .kernel_measure import (exact_polar64, fmt_ms, gaussian, matmul_point, measure_products, orthogonality_error,
                             say, singular_values64, time_call, time_pair)
from .kernel_report import kernel_table, write_kernel_report
from .kernel_shapes import discover_model_shapes, ns_flops, shape_list

__all__ = ["BACKEND_NAMES", "Backend", "COMPILE_KERNELS", "KernelConfig", "NS_SCHEDULES", "build_backends",
           "discover_model_shapes", "exact_polar64", "kernel_table", "measure_compiled", "measure_products", "ns_flops",
           "orthogonality_error", "run_compiled", "run_kernels", "singular_values64", "time_call", "time_pair",
           "write_kernel_report"]


def run_kernels(config: KernelConfig, progress: bool = True) -> dict:
    """Run the kernel benchmark described by ``config``; return JSON-able results.

    See the module docstring for what is measured. Shapes are measured cheapest first; for each,
    the float32 matmul roofline points (its Newton-Schulz products, and for a square ``n x n``
    also bfloat16 ``n x n @ n x n``) are timed right before its backends, so that the ratios
    compare numbers taken under the same machine load.

    The result has ``config``, ``environment`` (with the load average before and after: other
    processes inflate and scatter the times), ``shapes``, ``backends``, ``roofline`` (``square``,
    ``shape_products``, ``peak_gflops``, ``peak_at``), ``measurements`` (one per shape and
    backend, ``status`` ``ok``, ``skipped``, ``unavailable`` or ``error``), ``input_accuracy``
    (the normalized input's singular-value errors per shape), ``notes`` and ``seconds``.
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
    too slow for costlier shapes, whether bfloat16 matmul is, whether the time limit has passed)."""

    def __init__(self, config: KernelConfig, backends: dict[str, Backend], notes: list[str], started: float,
                 progress: bool) -> None:
        self.config, self.backends, self.notes = config, backends, notes
        self.started, self.progress = started, progress
        self.deadline = None if config.deadline_s is None else started + config.deadline_s
        self.measurements: list[dict] = []
        self.input_accuracy: dict[str, dict] = {}
        self.products: dict[str, dict] = {}
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
        self.products[label] = measure_products(m, n, self.config)
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
                      f"{self.products[label]['gflops']:.0f} GFLOP/s; " + ", ".join(parts))

    def _skip_shape(self, m: int, n: int, label: str) -> None:
        for name, backend in self.backends.items():
            flops = backend.flops(m, n)
            self.measurements.append({"shape": label, "m": m, "n": n, "backend": name, "status": "skipped",
                                      "note": self._late_note(), "gflop": flops / 1e9 if flops else None})

    def _square_point(self, label: str, n: int) -> dict:
        """The square roofline point ``n x n @ n x n`` (float32, timed with the shape's products), and
        bfloat16 beside it until one bfloat16 product is over the budget."""
        point = dict(self.products[label]["products"][1], n=n)  # A A is n x n @ n x n
        if not self.config.bf16_matmul:
            return point
        if self.bf16_blocked:
            point["bf16"], point["bf16_note"] = None, self.bf16_blocked
            return point
        gen = torch.Generator().manual_seed(self.config.seed + 2)
        a = torch.randn(n, n, generator=gen).bfloat16()
        bf = matmul_point(a, a, self.config)
        point["bf16"] = {k: bf[k] for k in ("ms", "min_ms", "gflops", "repeats", "over_budget")}
        if bf["over_budget"]:
            self.bf16_blocked = f"skipped: n={n} took {fmt_ms(bf['ms'])}"
            self.notes.append(f"bfloat16 matmul: n={n} took {fmt_ms(bf['ms'])} (over the "
                              f"{self.config.budget_s:g} s budget); larger squares skipped")
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
        entry = {"shape": label, "m": m, "n": n, "backend": name}
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
            self._measure(entry, name, backend, G, reference, label)
        return entry

    def _measure(self, entry: dict, name: str, backend: Backend, G: Tensor, reference: Tensor | None,
                 label: str) -> None:
        """Time the backend into ``entry``; a call over the budget blocks its costlier shapes."""
        budget = self.config.budget_s
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
        if entry.get("gflops"):
            entry["pct_matmul"] = 100.0 * entry["gflops"] / self.products[label]["gflops"]

    def peak(self) -> tuple[float | None, str | None]:
        """The fastest float32 matmul of the run (GFLOP/s) and where it was measured; every
        FLOP-counted measurement gets its percentage of it."""
        candidates = [(pt["gflops"], f"{pt['shape']} (square)") for pt in self.square]
        for label, entry in self.products.items():
            candidates += [(pt["gflops"], f"{pt['shape']} (for {label})") for pt in entry["products"]]
        peak, peak_at = max(candidates) if candidates else (None, None)
        for entry in self.measurements:
            if entry.get("gflops") and peak:
                entry["pct_peak"] = 100.0 * entry["gflops"] / peak
        return peak, peak_at


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
    peak, peak_at = sweep.peak()
    if sweep.late:
        notes.append(f"the run's time limit ({config.deadline_s:g} s) was reached: the costliest shapes were skipped")
    compiled = _compiled_section(config, progress, notes)
    environment["loadavg_start"], environment["loadavg_end"] = load_start, _loadavg()
    if busy:
        notes.append(_busy_note(load_start, cores))
    seconds = time.perf_counter() - started
    say(progress, f"kernels: done in {seconds:.1f} s (matmul peak {peak or 0:.1f} GFLOP/s at {peak_at})")
    return {
        "kind": "kernels",
        "started": started_at,
        "seconds": seconds,
        "config": config.to_dict(),
        "environment": environment,
        "flop_formula": "steps * (4 m^2 n + 2 m^3) for an m x n input with m <= n (tall inputs transposed)",
        "shapes": shapes,
        "backends": [b.describe() for b in backends.values()],
        "roofline": {"square": sweep.square, "shape_products": sweep.products, "peak_gflops": peak,
                     "peak_at": peak_at},
        "measurements": sweep.measurements,
        "input_accuracy": sweep.input_accuracy,
        "compiled": compiled,
        "notes": notes,
    }
