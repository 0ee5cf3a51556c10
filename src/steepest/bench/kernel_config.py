"""What one ``steepest bench kernels`` run measures: :class:`KernelConfig`, its quick and full
presets, and the names of the backends and of the kernels timed compiled against eager
(:mod:`steepest.bench.kernels` runs it).

Backend names: a Newton-Schulz schedule's own name (``keller``, ...) is that schedule in float32,
the names earlier runs used; ``<schedule>_bf16`` is the same schedule iterating in bfloat16
(:data:`BF16_SCHEDULES` have one); ``auto`` is ``keller`` in the dtype ``ns_dtype="auto"`` picks
on this machine (:func:`steepest.polar.dtype.auto_ns_dtype`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

#: the Newton-Schulz schedules timed in float32, under their own names
NS_SCHEDULES: tuple[str, ...] = ("keller", "you", "quintic", "polar_express", "polar_express_8")
#: the schedules also timed in bfloat16, as ``<schedule>_bf16``. Without native bfloat16 matmul
#: each of them costs about as much as ``torch_muon`` (one call over the budget, then skipped), so
#: only the one torch.optim.Muon shares its coefficients with and the most accurate five-step one.
BF16_SCHEDULES: tuple[str, ...] = ("keller", "polar_express")
BF16_SUFFIX = "_bf16"
#: the bfloat16 backends' names, in :data:`BF16_SCHEDULES` order
BF16_BACKENDS: tuple[str, ...] = tuple(schedule + BF16_SUFFIX for schedule in BF16_SCHEDULES)
#: the schedule the ``auto`` backend runs in the dtype ``ns_dtype="auto"`` picks
AUTO_SCHEDULE = "keller"
#: ``keller`` in float32 and the direct form on every shape (``keller`` itself takes the Gram form
#: where that is cheaper: :func:`steepest.polar.choose_form`)
DIRECT_BACKEND = "keller_direct"
#: every backend, in report order
BACKEND_NAMES: tuple[str, ...] = (NS_SCHEDULES[:1] + (DIRECT_BACKEND,) + NS_SCHEDULES[1:] + BF16_BACKENDS
                                  + ("auto", "svd", "auon", "hybrid_auon", "torch_muon"))
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
        budget_s: per-measurement time budget in seconds (see :mod:`steepest.bench.kernels`).
        deadline_s: once the run has taken this long, the remaining measurements (the costliest
            shapes) are skipped with a note (``None``: no limit). A measurement already started is
            finished.
        threads: ``torch.set_num_threads`` for the run (``None``: leave torch's default).
        seed: seed of the Gaussian inputs.
        accuracy: compute the singular-value and polar-distance errors (float64 SVDs).
        bf16_matmul: also time each shape's Newton-Schulz products in bfloat16 for the roofline
            (budget-guarded like a backend: once one is over ``budget_s``, costlier shapes skip
            them with a note). Off: only float32 products, and the peak is float32's.
        compile: also time the compiled kernels against eager ones (:mod:`.kernel_compiled`; off
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
        about a minute on 2 idle cores (most of it compiling), plus about 20 s on a CPU without
        native bfloat16 matmul, where the bfloat16 backends and products each run into the budget
        once (512x512 for a backend, 1024x1024 for the products)."""
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
