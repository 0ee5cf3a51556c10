"""Micro-benchmark of the orthogonalization kernels: speed against the matmul roofline, and accuracy.

``steepest bench kernels`` times every way this library (and ``torch.optim.Muon``) turns a gradient
matrix into an update direction, on the matrix shapes the benchmark models actually train and on
square ``n x n`` matrices, and sets the times against what the machine's matrix multiply can do.

Backends (:data:`BACKEND_NAMES`):

* ``keller``, ``you``, ``quintic``, ``polar_express``, ``polar_express_8``: the library's
  Newton-Schulz schedules, called through :func:`steepest.polar.polar` in float32 with their
  default step counts, exactly as the spectral geometry calls it for a single matrix.
* ``svd``: the exact polar factor by LAPACK SVD (float32, :func:`steepest.polar.svd_polar`).
* ``auon``: AuON's direction, the Frobenius LMO ``G / ||G||_F`` times the cosh brake
  (:func:`steepest.optim.auon.cosh_brakes`); linear in the number of entries.
* ``hybrid_auon``: HybridAuON's direction, one Keller Newton-Schulz step then the brake (which
  renormalizes to unit Frobenius norm).
* ``torch_muon``: ``torch.optim._muon._zeropower_via_newtonschulz`` as shipped, with
  ``torch.optim.Muon``'s default coefficients, steps and eps. It casts to bfloat16 internally: on a
  CPU without native bf16 matmul (``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` false) it runs
  20-600x slower than float32, hence the time budget below.

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

FLOP counting: a Newton-Schulz step on the wide orientation ``X`` (``m x n``, ``m <= n``; tall
inputs are transposed first) does three matrix products, ``A = X X^T`` (``2 m^2 n``), ``A A``
inside ``addmm`` (``2 m^3``) and ``B X`` inside ``addmm`` (``2 m^2 n``): ``4 m^2 n + 2 m^3`` per
step, ``steps`` times. The Gram product is counted in full although it is symmetric, because BLAS
computes it in full; the ``addmm`` scalings, the Frobenius normalization and the transposes
(``O(m n + m^2)`` per step) are not counted. GFLOP/s for these backends is that count over the
median time. ``svd`` and ``auon`` have no matmul FLOP count (LAPACK's SVD is not a sequence of
GEMMs, AuON is elementwise): they are reported in milliseconds only. ``hybrid_auon`` counts its
one step; its brake's elementwise work is not counted.

Roofline: in the same run, right before each shape's backends (so both see the same machine
load), float32 throughput is timed for the three products a Newton-Schulz step does on that shape
(for a square ``n x n`` these are ``n x n @ n x n``, the square roofline; bfloat16 ``n x n @ n x n``
is timed too, budget-guarded, for context). GFLOP/s is ``2 m n k / t``; the machine's peak is the
maximum over everything measured. Each FLOP-counted backend is reported as a percentage of the
peak and of its own shape's three products ("% of the same-size matmul", which isolates the
iteration's overhead from BLAS efficiency at that size); for the bfloat16 ``torch_muon`` both are
relative to float32 matmul.

Accuracy: the output ``O`` of the warm-up call is compared, in float64, with the exact polar factor
``U V^T`` of the input: ``max_i |sigma_i(O) - 1|``, ``mean_i |sigma_i(O) - 1|`` and
``||O - U V^T||_F / ||U V^T||_F`` (singular values from the float64 eigenvalues of the smaller
Gram matrix; ``U V^T`` from a float64 SVD of the input). The raw normalized input ``G / ||G||_F`` is reported too as the
starting point. Caveats: a square Gaussian matrix has singular values down to ~``1/n`` of its
largest, below the ~1e-3 relative floor the schedules are designed for, so Newton-Schulz leaves
them far from 1 (max |sigma - 1| near 1 is expected there); ``keller`` is designed to land in
``[0.68, 1.13]``, not at 1; AuON's output is a unit-Frobenius matrix scaled by the brake, not an
orthogonal one, so its numbers only show how far it is from the polar factor.

Compiled against eager (``compile=True`` in the config, on in the quick and full presets): the
kernels that the optimizers' ``compile`` setting compiles (:mod:`steepest.compiled`) are timed both
ways on ``compile_shapes``, through the same process-wide compiled functions the optimizers use:
``newton_schulz`` (Keller's 5 steps in float32, :func:`steepest.polar.polar` with ``compile``) and
the elementwise state transforms of stage 1, ``momentum`` (Nesterov, 0.95), ``adam`` ((0.9, 0.95))
and ``lion`` ((0.9, 0.99)), each on a parameter-sized tensor with state of its own for each side.
The first compiled call is timed apart (it compiles, or reuses a dynamic-shape graph compiled for
an earlier shape) and not counted; then eager and compiled calls alternate, so both see the same
machine load, and the medians are compared (the run's ``deadline_s`` does not apply to this small,
fixed set of measurements) (``speedup`` = eager / compiled: above 1, compiled is
faster). The outputs of the first calls are compared too (largest difference relative to the
largest entry): inductor reorders float operations, so they agree to rounding, not bit for bit.
"""
from __future__ import annotations

import inspect
import os
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Callable

import torch
from torch import Tensor

from ..geometry.base import matrix_dims
from ..geometry.frobenius import Frobenius
from ..optim.auon import cosh_brakes
from ..polar import SCHEDULES, polar
from .environment import machine_info
from .kernel_report import kernel_table, write_kernel_report  # noqa: F401  (re-exported)

NS_SCHEDULES: tuple[str, ...] = ("keller", "you", "quintic", "polar_express", "polar_express_8")
#: every backend, in report order
BACKEND_NAMES: tuple[str, ...] = NS_SCHEDULES + ("svd", "auon", "hybrid_auon", "torch_muon")
QUICK_SIZES = (128, 256, 512, 1024)
FULL_SIZES = (128, 256, 512, 1024, 2048)
#: the kernels timed compiled against eager, in report order
COMPILE_KERNELS: tuple[str, ...] = ("newton_schulz", "momentum", "adam", "lion")
#: a GPT matrix (tall, 49k entries) and a square with a million entries
COMPILE_SHAPES = [(384, 128), (1024, 1024)]
#: the settings of ``KernelConfig.quick_default()`` and ``full_default()``
PRESET_SETTINGS = {
    "quick": dict(quick=True, sizes=list(QUICK_SIZES), repeats=5, min_time_s=0.05, budget_s=2.0, deadline_s=120.0,
                  compile=True),
    "full": dict(quick=False, sizes=list(FULL_SIZES), repeats=7, min_time_s=0.2, budget_s=8.0, deadline_s=600.0,
                 compile=True, compile_shapes=COMPILE_SHAPES + [(4096, 1024)]),
}
#: task classes whose model is the benchmark GPT, already covered by ``GPT(GPTConfig())``
#: torch.optim.Muon's defaults, used when its signature cannot be read
TORCH_MUON_DEFAULTS = {"ns_coefficients": (3.4445, -4.775, 2.0315), "ns_steps": 5, "eps": 1e-7}
NS_EPS = 1e-7
#: the most timed calls of one measurement (cheap kernels are repeated until ``min_time_s``)
MAX_REPEATS = 200


@dataclass
class KernelConfig:
    """What one ``steepest bench kernels`` run measures (saved verbatim in ``kernels.json``).

    Attributes:
        quick: the quick preset (informational; the constructors set the sizes and budgets).
        sizes: square sizes ``n`` (``n x n`` inputs and ``n x n @ n x n`` roofline points).
        shapes: explicit ``(m, n)`` matrix shapes; ``None`` discovers the hidden/conv shapes of the
            benchmark models (the GPT plus every registered non-char-LM task).
        tasks: which registered tasks to scan for shapes when ``shapes`` is ``None`` (``None``: all
            but the char-LM ones; ``[]``: the GPT only).
        backends: which backends to run (default: all of :data:`BACKEND_NAMES`).
        repeats: timed calls after the warm-up (the median is reported).
        min_time_s: cheap calls are repeated further (up to 200 calls) until the timed calls add
            up to this many seconds.
        budget_s: per-measurement time budget in seconds (see the module docstring).
        deadline_s: once the run has taken this long, the remaining measurements (the costliest
            shapes) are skipped with a note (``None``: no limit). A measurement already started is
            finished.
        threads: ``torch.set_num_threads`` for the run (``None``: leave torch's default).
        seed: seed of the Gaussian inputs.
        accuracy: compute the singular-value and polar-distance errors (float64 SVDs).
        bf16_matmul: also time bfloat16 square matmuls (budget-guarded) for the roofline table.
        compile: also time the compiled kernels against eager ones (see the module docstring; off
            by default, on in the quick and full presets). Compiling costs seconds per kernel.
        compile_shapes: the ``(m, n)`` shapes of that comparison.
    """

    quick: bool = True
    sizes: list[int] = field(default_factory=lambda: list(QUICK_SIZES))
    shapes: list[tuple[int, int]] | None = None
    tasks: list[str] | None = None
    backends: list[str] = field(default_factory=lambda: list(BACKEND_NAMES))
    repeats: int = 5
    min_time_s: float = 0.05
    budget_s: float = 2.0
    deadline_s: float | None = 120.0
    threads: int | None = None
    seed: int = 0
    accuracy: bool = True
    bf16_matmul: bool = True
    compile: bool = False
    compile_shapes: list[tuple[int, int]] = field(default_factory=lambda: list(COMPILE_SHAPES))

    def __post_init__(self) -> None:
        self.sizes = [int(s) for s in self.sizes]
        if any(s < 1 for s in self.sizes):
            raise ValueError(f"sizes must be positive, got {self.sizes}")
        if self.shapes is not None:
            self.shapes = [(int(m), int(n)) for m, n in self.shapes]
            if any(m < 1 or n < 1 for m, n in self.shapes):
                raise ValueError(f"shapes must be positive, got {self.shapes}")
        if self.tasks is not None:
            self.tasks = list(self.tasks)
        self.backends = list(self.backends)
        unknown = [b for b in self.backends if b not in BACKEND_NAMES]
        if unknown:
            raise ValueError(f"unknown kernel backend {unknown[0]!r}; choose from {', '.join(BACKEND_NAMES)}")
        if len(set(self.backends)) != len(self.backends):
            raise ValueError("a kernel backend is listed twice")
        if not isinstance(self.repeats, int) or self.repeats < 1:
            raise ValueError(f"repeats must be a positive int, got {self.repeats!r}")
        if not self.min_time_s >= 0:
            raise ValueError(f"min_time_s must be >= 0, got {self.min_time_s!r}")
        if not self.budget_s > 0:
            raise ValueError(f"budget_s must be > 0, got {self.budget_s!r}")
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise ValueError(f"deadline_s must be > 0 or None, got {self.deadline_s!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be a positive int or None, got {self.threads!r}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be a bool, got {self.compile!r}")
        self.compile_shapes = [(int(m), int(n)) for m, n in self.compile_shapes]
        if any(m < 1 or n < 1 for m, n in self.compile_shapes):
            raise ValueError(f"compile_shapes must be positive, got {self.compile_shapes}")

    @classmethod
    def quick_default(cls, **overrides) -> "KernelConfig":
        """Squares up to 1024, 5 repeats, 2 s per measurement, and the compiled-vs-eager comparison:
        about a minute on 2 idle cores (most of it compiling)."""
        return cls(**{**PRESET_SETTINGS["quick"], **overrides})

    @classmethod
    def full_default(cls, **overrides) -> "KernelConfig":
        """Squares up to 2048, 7 repeats, 8 s per measurement, compiled vs eager also on a 4096 x 1024
        tensor: a few minutes on 2 cores."""
        return cls(**{**PRESET_SETTINGS["full"], **overrides})

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["shapes"] is not None:
            d["shapes"] = [list(s) for s in d["shapes"]]
        d["compile_shapes"] = [list(s) for s in d["compile_shapes"]]
        return d


# ------------------------------------------------------------------------------------------------
# shapes


def ns_flops(m: int, n: int, steps: int) -> int:
    """Matmul FLOPs of ``steps`` Newton-Schulz steps on an ``m x n`` input (see the module docstring)."""
    p, q = min(m, n), max(m, n)
    return steps * (4 * p * p * q + 2 * p ** 3)


def _label(m: int, n: int) -> str:
    return f"{m}x{n}"


def _param_pattern(name: str) -> str:
    """``blocks.3.attn.qkv.weight`` -> ``blocks.*.attn.qkv.weight`` (collapse layer indices)."""
    return re.sub(r"(^|\.)\d+(?=\.|$)", r"\1*", name)


def _matrix_params(model: torch.nn.Module, roles) -> list[tuple[str, int, int]]:
    from ..roles import classify

    labels = classify(model, roles)
    params = dict(model.named_parameters())
    out = []
    for name, role in labels.items():
        if role in ("hidden", "conv") and params[name].ndim >= 2:
            m, n = matrix_dims(tuple(params[name].shape))
            out.append((name, m, n))
    return out


def discover_model_shapes(tasks: list[str] | None = None) -> tuple[list[dict], list[str]]:
    """The hidden/conv matrix shapes of the benchmark models, and notes on tasks that failed.

    Always includes ``GPT(GPTConfig())`` (the char-LM tasks' model). Then every task in ``tasks``
    (default: every registered task except the char-LM ones, whose model is that GPT) is built with
    ``make_task(name).trial(seed=0, batch_size=1)`` and its parameters labelled ``hidden`` or
    ``conv`` by :func:`steepest.roles.classify` are added (conv filters as ``out x in*kh*kw``).
    A task that cannot be built becomes a note. Returns ``[{"m", "n", "sources"}]`` in first-seen
    order (one entry per distinct shape) and the notes.
    """
    from . import tasks as task_registry
    from .gpt import GPT, GPTConfig
    from .tasks.char_lm import CharLMTask

    found: dict[tuple[int, int], dict[str, list[str]]] = {}  # shape -> "source: pattern" -> names
    notes: list[str] = []

    def add(source: str, params: list[tuple[str, int, int]]) -> None:
        for name, m, n in params:
            found.setdefault((m, n), {}).setdefault(f"{source}: {_param_pattern(name)}", []).append(f"{source}: {name}")

    add("gpt", _matrix_params(GPT(GPTConfig()), None))
    if tasks is None:
        names = [n for n, cls in task_registry.TASK_CLASSES.items() if not issubclass(cls, CharLMTask)]
    else:
        names = list(tasks)
    for name in names:
        try:
            task = task_registry.make_task(name)
            task.prepare()
            trial = task.trial(seed=0, batch_size=1)
            add(name, _matrix_params(trial.model, trial.roles))
        except Exception as exc:
            notes.append(f"task {name}: shapes unavailable ({type(exc).__name__}: {exc})")
    # a layer index is collapsed to * only where several layers share the shape
    shapes = [{"m": m, "n": n, "sources": [f"{k} (x{len(v)})" if len(v) > 1 else v[0] for k, v in srcs.items()]}
              for (m, n), srcs in found.items()]
    return shapes, notes


def _shape_list(config: KernelConfig) -> tuple[list[dict], list[str]]:
    """Model (or explicit) shapes first, then the squares; one entry per distinct ``(m, n)``."""
    notes: list[str] = []
    if config.shapes is None:
        model, notes = discover_model_shapes(config.tasks)
        for s in model:
            s["kind"] = "model"
    else:
        model = [{"m": m, "n": n, "sources": ["config"], "kind": "custom"} for m, n in config.shapes]
    entries: dict[tuple[int, int], dict] = {}
    for s in model:
        entries.setdefault((s["m"], s["n"]), s)
    for n in config.sizes:
        if (n, n) in entries:
            entries[(n, n)]["kind"] += "+square"
            entries[(n, n)]["square"] = True
        else:
            entries[(n, n)] = {"m": n, "n": n, "sources": [], "kind": "square", "square": True}
    out = []
    for (m, n), s in entries.items():
        s.setdefault("square", False)
        s["label"] = _label(m, n)
        s["ns_flops_per_step"] = ns_flops(m, n, 1)
        out.append(s)
    return out, notes


# ------------------------------------------------------------------------------------------------
# backends


@dataclass
class Backend:
    """One way of computing an update direction from a float32 matrix.

    Attributes:
        name: key in the results.
        label: human-readable description for the report.
        fn: ``G -> O`` (must not modify ``G``).
        steps: Newton-Schulz steps whose matmuls are counted (0: no FLOP count, ms only).
        dtype: the iteration dtype, for the report.
        available: False when the backend cannot run here (``reason`` says why).
    """

    name: str
    label: str
    fn: Callable[[Tensor], Tensor] | None
    steps: int
    dtype: str
    available: bool = True
    reason: str | None = None

    def flops(self, m: int, n: int) -> int | None:
        return ns_flops(m, n, self.steps) if self.steps else None

    def describe(self) -> dict:
        return {"name": self.name, "label": self.label, "steps": self.steps, "dtype": self.dtype,
                "flops_counted": bool(self.steps), "available": self.available, "reason": self.reason}


def _ns_backend(name: str) -> Backend:
    schedule = SCHEDULES[name]
    steps = schedule.default_steps

    def run(G: Tensor) -> Tensor:
        return polar(G, name, steps, torch.float32, NS_EPS)

    return Backend(name, f"steepest NS `{name}` ({steps} steps, float32)", run, steps, "float32")


_FROBENIUS = Frobenius()


def _auon(G: Tensor) -> Tensor:
    X = _FROBENIUS.lmo(G)
    return X.mul_(cosh_brakes([X])[0])


def _hybrid_auon(G: Tensor) -> Tensor:
    Y = polar(G, "keller", 1, torch.float32, NS_EPS)
    return Y.mul_(cosh_brakes([Y])[0])


def _torch_muon_backend() -> Backend:
    """``torch.optim.Muon``'s Newton-Schulz with the optimizer's default arguments, or why not."""
    label = "torch.optim.Muon NS (bfloat16 inside)"
    try:
        from torch.optim import _muon
        fn = _muon._zeropower_via_newtonschulz
    except (ImportError, AttributeError) as exc:
        return Backend("torch_muon", label, None, 0, "bfloat16", False,
                       f"unavailable: torch {torch.__version__} has no "
                       f"torch.optim._muon._zeropower_via_newtonschulz ({type(exc).__name__})")
    params = list(inspect.signature(fn).parameters)
    if params[:4] != ["grad", "ns_coefficients", "ns_steps", "eps"]:
        return Backend("torch_muon", label, None, 0, "bfloat16", False,
                       f"unavailable: unexpected signature _zeropower_via_newtonschulz({', '.join(params)})")
    defaults = dict(TORCH_MUON_DEFAULTS)
    try:
        sig = inspect.signature(torch.optim.Muon).parameters
        for key in defaults:
            if key in sig and sig[key].default is not inspect.Parameter.empty:
                defaults[key] = sig[key].default
    except (AttributeError, TypeError, ValueError):
        pass
    coefficients = tuple(float(c) for c in defaults["ns_coefficients"])
    steps, eps = int(defaults["ns_steps"]), float(defaults["eps"])

    def run(G: Tensor) -> Tensor:
        return fn(G, coefficients, steps, eps)

    return Backend("torch_muon", f"torch.optim.Muon NS ({steps} steps, bfloat16 inside)", run, steps,
                   "bfloat16")


def build_backends(names=BACKEND_NAMES) -> dict[str, Backend]:
    """The backends named, in the given order."""
    out: dict[str, Backend] = {}
    for name in names:
        if name in NS_SCHEDULES:
            out[name] = _ns_backend(name)
        elif name == "svd":
            out[name] = Backend("svd", "steepest exact polar by SVD (float32)",
                                lambda G: polar(G, "svd", dtype=torch.float32), 0, "float32")
        elif name == "auon":
            out[name] = Backend("auon", "AuON: G/||G||_F times the cosh brake (float32)", _auon, 0, "float32")
        elif name == "hybrid_auon":
            out[name] = Backend("hybrid_auon", "HybridAuON: 1 Keller NS step + renormalize + brake (float32)",
                                _hybrid_auon, 1, "float32")
        elif name == "torch_muon":
            out[name] = _torch_muon_backend()
        else:
            raise ValueError(f"unknown kernel backend {name!r}")
    return out


# ------------------------------------------------------------------------------------------------
# timing and accuracy


def time_call(fn: Callable[[], object], repeats: int, budget_s: float, min_time_s: float = 0.0) -> dict:
    """Time ``fn``: one warm-up call, then ``repeats`` timed calls (median reported).

    Cheap calls are repeated further, up to :data:`MAX_REPEATS`, until the timed calls add up to
    ``min_time_s`` (a steadier median for sub-millisecond kernels). Repeating stops as soon as the
    warm-up plus the timed calls exceed ``budget_s`` (after at least one timed call); if the
    warm-up alone exceeds it nothing is repeated.

    Returns ``{"output", "warmup_s", "times_s", "seconds", "over_budget"}``: ``output`` is the
    warm-up call's result; ``seconds`` is the median of the timed calls, or the warm-up time when
    ``over_budget`` is True.
    """
    start = time.perf_counter()
    output = fn()
    warmup = time.perf_counter() - start
    if warmup > budget_s:
        return {"output": output, "warmup_s": warmup, "times_s": [], "seconds": warmup, "over_budget": True}
    timed, times = 0.0, []
    while len(times) < repeats or (timed < min_time_s and len(times) < MAX_REPEATS):
        start = time.perf_counter()
        fn()
        dt = time.perf_counter() - start
        times.append(dt)
        timed += dt
        if warmup + timed > budget_s:
            break
    return {"output": output, "warmup_s": warmup, "times_s": times, "seconds": statistics.median(times),
            "over_budget": False}


def _gaussian(m: int, n: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * m + n)
    return torch.randn(m, n, generator=generator, dtype=torch.float32)


def exact_polar64(G: Tensor) -> Tensor:
    """``U V^T`` of ``G`` in float64 (the accuracy reference): steepest's own SVD polar factor."""
    return polar(G, "svd", dtype=torch.float64)


def singular_values64(O: Tensor) -> Tensor:
    """Singular values of ``O`` in float64, ascending, as square roots of the eigenvalues of the
    smaller Gram matrix (``O O^T`` on the wide orientation): several times cheaper than ``svdvals``
    and, in float64, accurate to ~1e-8 absolute even for singular values near 0."""
    X = O.detach().double()
    if X.size(0) > X.size(1):
        X = X.T
    return torch.linalg.eigvalsh(X @ X.T).clamp(min=0.0).sqrt()


def orthogonality_error(O: Tensor, reference: Tensor) -> dict:
    """Singular-value errors of ``O`` and its relative Frobenius distance from ``reference``."""
    sv = singular_values64(O)
    dev = (sv - 1.0).abs()
    O64 = O.detach().double()
    return {
        "max_abs_sigma_minus_1": float(dev.max()),
        "mean_abs_sigma_minus_1": float(dev.mean()),
        "sigma_min": float(sv.min()),
        "sigma_max": float(sv.max()),
        "rel_dist_polar": float(torch.linalg.vector_norm(O64 - reference) / torch.linalg.vector_norm(reference)),
    }


def _matmul_point(a: Tensor, b: Tensor, config: KernelConfig) -> dict:
    timing = time_call(lambda: a @ b, config.repeats, config.budget_s, config.min_time_s)
    flops = 2 * a.shape[0] * a.shape[1] * b.shape[1]
    seconds = timing["seconds"]
    return {"shape": f"{a.shape[0]}x{a.shape[1]} @ {b.shape[0]}x{b.shape[1]}", "flops": flops,
            "ms": seconds * 1e3, "min_ms": min(timing["times_s"], default=seconds) * 1e3,
            "gflops": flops / seconds / 1e9, "repeats": len(timing["times_s"]), "over_budget": timing["over_budget"]}


def measure_products(m: int, n: int, config: KernelConfig) -> dict:
    """float32 throughput of the three products of one Newton-Schulz step on an ``m x n`` input."""
    p, q = min(m, n), max(m, n)
    gen = torch.Generator().manual_seed(config.seed + 1)
    X = torch.randn(p, q, generator=gen)
    A = torch.randn(p, p, generator=gen)
    parts = [_matmul_point(X, X.T, config), _matmul_point(A, A, config), _matmul_point(A, X, config)]
    seconds = sum(pt["ms"] for pt in parts) / 1e3
    return {"products": parts, "flops": ns_flops(p, q, 1), "ms": seconds * 1e3,
            "gflops": ns_flops(p, q, 1) / seconds / 1e9}


def time_pair(first: Callable[[], object], second: Callable[[], object], repeats: int, budget_s: float,
              min_time_s: float = 0.0) -> dict:
    """Time two already warmed-up calls alternately (``first``, ``second``, ``first``, ...), so both
    see the same machine load: at least ``repeats`` pairs, more (up to :data:`MAX_REPEATS`) until
    the pairs add up to ``min_time_s``, stopping once they have used ``budget_s`` (after one pair).
    Returns the medians ``first_s`` and ``second_s``, the fastest calls and the pair count."""
    a: list[float] = []
    b: list[float] = []
    spent = 0.0
    while len(a) < repeats or (spent < min_time_s and len(a) < MAX_REPEATS):
        start = time.perf_counter()
        first()
        middle = time.perf_counter()
        second()
        end = time.perf_counter()
        a.append(middle - start)
        b.append(end - middle)
        spent += end - start
        if spent > budget_s:
            break
    return {"first_s": statistics.median(a), "second_s": statistics.median(b), "first_min_s": min(a),
            "second_min_s": min(b), "repeats": len(a)}


def _transform_case(name: str, m: int, n: int, seed: int) -> tuple[Callable[[bool], Callable[[], Tensor]], str]:
    """``make(compile) -> call`` for one elementwise state transform on an ``m x n`` tensor (each call
    of ``make`` gets state of its own, so eager and compiled runs do not share buffers), and a label."""
    from ..optim.transforms import adam_signal, lion_signal, momentum_signal

    grad = _gaussian(m, n, seed)

    def make(compile: bool) -> Callable[[], Tensor]:
        buf, buf_sq = torch.zeros_like(grad), torch.zeros_like(grad)
        step = torch.tensor(0.0)
        if name == "momentum":
            return lambda: momentum_signal(buf, grad, 0.95, True, compile=compile)
        if name == "adam":
            return lambda: adam_signal(buf, buf_sq, step, grad, 0.9, 0.95, 1e-8, compile=compile)
        return lambda: lion_signal(buf, grad, 0.9, 0.99, compile=compile)

    labels = {"momentum": "momentum (Nesterov, 0.95)", "adam": "adam ((0.9, 0.95), eps 1e-8)",
              "lion": "lion ((0.9, 0.99))"}
    return make, labels[name]


def _compile_case(name: str, m: int, n: int, seed: int) -> tuple[Callable[[bool], Callable[[], Tensor]], str]:
    if name == "newton_schulz":
        G = _gaussian(m, n, seed)

        def make(compile: bool) -> Callable[[], Tensor]:
            return lambda: polar(G, "keller", 5, torch.float32, NS_EPS, compile=compile)

        return make, "Newton-Schulz (keller, 5 steps, float32)"
    return _transform_case(name, m, n, seed)


def measure_compiled(name: str, m: int, n: int, config: KernelConfig) -> dict:
    """One kernel on one ``m x n`` shape, compiled against eager (see the module docstring)."""
    entry: dict = {"kernel": name, "shape": _label(m, n), "m": m, "n": n}
    make, entry["label"] = _compile_case(name, m, n, config.seed)
    eager, fast = make(False), make(True)
    try:
        out_eager = eager()
        start = time.perf_counter()
        out_compiled = fast()
        entry["first_call_s"] = time.perf_counter() - start
    except Exception as exc:  # no C++ compiler, an unsupported platform, ...
        entry.update(status="error", note=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return entry
    scale = out_eager.abs().max().item() or 1.0
    entry["max_rel_diff"] = (out_eager.double() - out_compiled.double()).abs().max().item() / scale
    timing = time_pair(eager, fast, config.repeats, config.budget_s, config.min_time_s)
    entry.update(status="ok", eager_ms=timing["first_s"] * 1e3, compiled_ms=timing["second_s"] * 1e3,
                 eager_min_ms=timing["first_min_s"] * 1e3, compiled_min_ms=timing["second_min_s"] * 1e3,
                 repeats=timing["repeats"], speedup=timing["first_s"] / timing["second_s"])
    return entry


def run_compiled(config: KernelConfig, progress: bool = True) -> dict:
    """The compiled-vs-eager section of the results (``entries`` in shape, then kernel order). It is
    not cut short by ``deadline_s``: it is a fixed, small set (each measurement stops repeating at
    ``budget_s``), and its ratios are the point of running it."""
    entries = []
    for m, n in config.compile_shapes:
        for name in COMPILE_KERNELS:
            entry = measure_compiled(name, m, n, config)
            entries.append(entry)
            if entry["status"] == "ok":
                _say(progress, f"compile {name} {entry['shape']}: eager {_fmt_ms(entry['eager_ms'])}, compiled "
                               f"{_fmt_ms(entry['compiled_ms'])} ({entry['speedup']:.2f}x), first compiled call "
                               f"{entry['first_call_s']:.1f} s")
            else:
                _say(progress, f"compile {name} {entry['shape']}: {entry['status']} {entry.get('note', '')}")
    return {"kernels": list(COMPILE_KERNELS), "settings": {"fullgraph": True, "dynamic": True},
            "entries": entries}


def _fmt_ms(ms: float) -> str:
    return f"{ms / 1e3:.3g} s" if ms >= 1000 else f"{ms:.3g} ms"


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


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


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


@torch.no_grad()
def _run(config: KernelConfig, progress: bool, started: float, started_at: str) -> dict:
    load_start = _loadavg()
    environment = _environment()
    shapes, notes = _shape_list(config)
    shapes.sort(key=lambda s: (s["ns_flops_per_step"], s["m"]))
    backends = build_backends(config.backends)
    for b in backends.values():
        if not b.available:
            notes.append(f"{b.name}: {b.reason}")
    deadline = None if config.deadline_s is None else started + config.deadline_s

    # a first matmul so that library initialization is not charged to the first measurement
    torch.randn(64, 64) @ torch.randn(64, 64)
    _say(progress, f"kernels: {len(shapes)} shapes x {len(backends)} backends, "
                   f"{environment['threads']} threads, budget {config.budget_s:g} s per measurement")
    cores = os.cpu_count() or 1
    busy = bool(load_start and load_start[0] > 0.5 * cores)
    if busy:
        _say(progress, f"kernels: warning: the machine is busy (load average {load_start[0]:g} on {cores} CPUs); "
                       "times will be inflated and noisy")

    measurements: list[dict] = []
    input_accuracy: dict[str, dict] = {}
    products: dict[str, dict] = {}
    square: list[dict] = []
    blocked: dict[str, str] = {}  # backend -> why its costlier shapes are skipped
    bf16_blocked: str | None = None
    late = False
    for index, s in enumerate(shapes, 1):
        m, n, label = s["m"], s["n"], s["label"]
        if deadline is not None and time.perf_counter() > deadline:
            late = True
        if late:
            why = f"skipped: the run's time limit ({config.deadline_s:g} s) was reached"
            for name, backend in backends.items():
                flops = backend.flops(m, n)
                measurements.append({"shape": label, "m": m, "n": n, "backend": name, "status": "skipped",
                                     "note": why, "gflop": flops / 1e9 if flops else None})
            _say(progress, f"kernels {index}/{len(shapes)} {label}: {why}")
            continue
        products[label] = measure_products(m, n, config)
        if s["square"]:
            point = dict(products[label]["products"][1], n=n)  # A A is n x n @ n x n
            if config.bf16_matmul:
                if bf16_blocked:
                    point["bf16"], point["bf16_note"] = None, bf16_blocked
                else:
                    gen = torch.Generator().manual_seed(config.seed + 2)
                    a = torch.randn(n, n, generator=gen).bfloat16()
                    bf = _matmul_point(a, a, config)
                    point["bf16"] = {k: bf[k] for k in ("ms", "min_ms", "gflops", "repeats", "over_budget")}
                    if bf["over_budget"]:
                        bf16_blocked = f"skipped: n={n} took {_fmt_ms(bf['ms'])}"
                        notes.append(f"bfloat16 matmul: n={n} took {_fmt_ms(bf['ms'])} (over the "
                                     f"{config.budget_s:g} s budget); larger squares skipped")
            square.append(point)
        G = _gaussian(m, n, config.seed)
        reference = None
        if config.accuracy:
            reference = exact_polar64(G)
            input_accuracy[label] = orthogonality_error(G.double() / torch.linalg.vector_norm(G.double()), reference)
        row: dict[str, dict] = {}
        for name, backend in backends.items():
            entry = {"shape": label, "m": m, "n": n, "backend": name}
            flops = backend.flops(m, n)
            entry["gflop"] = flops / 1e9 if flops else None
            if not backend.available:
                entry.update(status="unavailable", note=backend.reason)
            elif name in blocked:
                entry.update(status="skipped", note=blocked[name])
            elif deadline is not None and time.perf_counter() > deadline:
                late = True
                entry.update(status="skipped", note=f"skipped: the run's time limit ({config.deadline_s:g} s) "
                                                    "was reached")
            else:
                entry.update(_measure_backend(backend, G, config))
                output = entry.pop("output", None)
                if entry["status"] == "error":
                    notes.append(f"{name} on {label}: error {entry['note']}")
                elif entry["single_call"]:
                    took = _fmt_ms(entry["ms"])
                    blocked[name] = f"skipped: {label} took {took}"
                    entry["note"] = (f"one call only: {took} is over the {config.budget_s:g} s budget "
                                     "(includes first-call overhead)")
                    notes.append(f"{name}: one call on {label} took {took} (budget {config.budget_s:g} s); "
                                 "costlier shapes are skipped for it")
                if output is not None and reference is not None:
                    entry["accuracy"] = orthogonality_error(output, reference)
                if entry.get("gflops"):
                    entry["pct_matmul"] = 100.0 * entry["gflops"] / products[label]["gflops"]
            row[name] = entry
            measurements.append(entry)
        torch_ms = row.get("torch_muon", {}).get("ms")
        for entry in row.values():
            if entry.get("ms") and torch_ms:
                entry["vs_torch_muon"] = torch_ms / entry["ms"]
        if progress:
            parts = [f"{k} {_fmt_ms(v['ms'])}" if v.get("ms") else f"{k} {v['status']}" for k, v in row.items()]
            _say(True, f"kernels {index}/{len(shapes)} {label} ({time.perf_counter() - started:.0f} s): matmul "
                       f"{products[label]['gflops']:.0f} GFLOP/s; " + ", ".join(parts))

    candidates = [(pt["gflops"], f"{pt['shape']} (square)") for pt in square]
    for label, entry in products.items():
        candidates += [(pt["gflops"], f"{pt['shape']} (for {label})") for pt in entry["products"]]
    peak, peak_at = max(candidates) if candidates else (None, None)
    for entry in measurements:
        if entry.get("gflops") and peak:
            entry["pct_peak"] = 100.0 * entry["gflops"] / peak
    if late:
        notes.append(f"the run's time limit ({config.deadline_s:g} s) was reached: the costliest shapes were skipped")
    compiled = run_compiled(config, progress) if config.compile else None
    if compiled:
        for e in compiled["entries"]:
            if e["status"] == "error":
                notes.append(f"compiled {e['kernel']} on {e['shape']}: error {e['note']}")
    load_end = _loadavg()
    environment["loadavg_start"], environment["loadavg_end"] = load_start, load_end
    if busy:
        notes.append(f"the machine was busy before this run started (1-minute load average {load_start[0]:g} on "
                     f"{cores} CPUs): other processes inflate and scatter the times (a multi-threaded matmul "
                     "waits at every barrier for its descheduled threads, so small kernels can take "
                     "milliseconds instead of microseconds); treat these numbers with care and rerun on an idle "
                     "machine, or with fewer threads than idle cores, for reference numbers")
    seconds = time.perf_counter() - started
    _say(progress, f"kernels: done in {seconds:.1f} s (matmul peak {peak or 0:.1f} GFLOP/s at {peak_at})")
    return {
        "kind": "kernels",
        "started": started_at,
        "seconds": seconds,
        "config": config.to_dict(),
        "environment": environment,
        "flop_formula": "steps * (4 m^2 n + 2 m^3) for an m x n input with m <= n (tall inputs transposed)",
        "shapes": shapes,
        "backends": [b.describe() for b in backends.values()],
        "roofline": {"square": square, "shape_products": products, "peak_gflops": peak, "peak_at": peak_at},
        "measurements": measurements,
        "input_accuracy": input_accuracy,
        "compiled": compiled,
        "notes": notes,
    }


__all__ = ["BACKEND_NAMES", "Backend", "COMPILE_KERNELS", "KernelConfig", "NS_SCHEDULES", "build_backends",
           "discover_model_shapes", "exact_polar64", "kernel_table", "measure_compiled", "measure_products", "ns_flops",
           "orthogonality_error", "run_compiled", "run_kernels", "singular_values64", "time_call", "time_pair",
           "write_kernel_report"]
