"""The measurements of ``steepest bench kernels``: timed calls, the matmul roofline of a shape (its
Newton-Schulz products in float32 or bfloat16), and the accuracy of a backend's output against the
exact polar factor.

Timing: :func:`time_call` times one warm-up call, then repeats (the median is reported, with the
fastest call beside it) until ``repeats`` calls and ``min_time_s`` are reached or the warm-up and
the calls have used ``budget_s``; :func:`time_pair` alternates two calls so both see the same
machine load.

Accuracy: the output ``O`` of the warm-up call is compared, in float64, with the exact polar factor
``U V^T`` of the input: ``max_i |sigma_i(O) - 1|``, ``mean_i |sigma_i(O) - 1|`` and
``||O - U V^T||_F / ||U V^T||_F`` (singular values from the float64 eigenvalues of the smaller
Gram matrix; ``U V^T`` from a float64 SVD of the input), so a bfloat16 output is measured the same
way as a float32 one. The raw normalized input ``G / ||G||_F``
is reported too as the starting point. Caveats: a square Gaussian matrix has singular values down to ~``1/n`` of its
largest, below the ~1e-3 relative floor the schedules are designed for, so Newton-Schulz leaves
them far from 1 (max |sigma - 1| near 1 is expected there); ``keller`` is designed to land in
``[0.68, 1.13]``, not at 1; AuON's output is a unit-Frobenius matrix scaled by the brake, not an
orthogonal one, so its numbers only show how far it is from the polar factor.
"""
from __future__ import annotations

import statistics
import sys
import time
from typing import Callable

import torch
from torch import Tensor

from ..polar import polar
from .kernel_config import MAX_REPEATS, KernelConfig
from .kernel_shapes import ns_flops

__all__ = ["time_call", "time_pair", "gaussian", "exact_polar64", "singular_values64", "orthogonality_error",
           "matmul_point", "measure_products", "dtype_name", "fmt_ms", "say"]


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


def gaussian(m: int, n: int, seed: int) -> Tensor:
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


def matmul_point(a: Tensor, b: Tensor, config: KernelConfig) -> dict:
    timing = time_call(lambda: a @ b, config.repeats, config.budget_s, config.min_time_s)
    flops = 2 * a.shape[0] * a.shape[1] * b.shape[1]
    seconds = timing["seconds"]
    return {"shape": f"{a.shape[0]}x{a.shape[1]} @ {b.shape[0]}x{b.shape[1]}", "flops": flops,
            "ms": seconds * 1e3, "min_ms": min(timing["times_s"], default=seconds) * 1e3,
            "gflops": flops / seconds / 1e9, "repeats": len(timing["times_s"]), "over_budget": timing["over_budget"]}


def measure_products(m: int, n: int, config: KernelConfig, dtype: torch.dtype = torch.float32) -> dict:
    """Throughput of the three products of one Newton-Schulz step on an ``m x n`` input, in ``dtype``
    (the same values in every dtype: float32 Gaussians, cast).

    Returns ``{"dtype", "status": "ok", "products", "flops", "ms", "gflops", "over_budget"}``:
    ``products`` holds each product's :func:`matmul_point`, ``ms`` and ``gflops`` are the three
    together, and ``over_budget`` says that at least one product took a single call over
    ``config.budget_s``.
    """
    p, q = min(m, n), max(m, n)
    gen = torch.Generator().manual_seed(config.seed + 1)
    X = torch.randn(p, q, generator=gen).to(dtype)
    A = torch.randn(p, p, generator=gen).to(dtype)
    parts = [matmul_point(X, X.T, config), matmul_point(A, A, config), matmul_point(A, X, config)]
    seconds = sum(pt["ms"] for pt in parts) / 1e3
    return {"dtype": dtype_name(dtype), "status": "ok", "products": parts,
            "flops": ns_flops(p, q, 1), "ms": seconds * 1e3, "gflops": ns_flops(p, q, 1) / seconds / 1e9,
            "over_budget": any(pt["over_budget"] for pt in parts)}


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


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (the spelling of the results and the report)."""
    return str(dtype).removeprefix("torch.")


def fmt_ms(ms: float) -> str:
    """Milliseconds for progress lines and notes: ``0.89 ms``, ``2.1 s``."""
    return f"{ms / 1e3:.3g} s" if ms >= 1000 else f"{ms:.3g} ms"


def say(progress: bool, message: str) -> None:
    """Print a progress line on stderr when ``progress``."""
    if progress:
        print(message, file=sys.stderr, flush=True)
