"""Compiled against eager: the part of ``steepest bench kernels`` that times the kernels the
optimizers' ``compile`` setting compiles.

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

import time
from typing import Callable

import torch
from torch import Tensor

from ..optim.transforms import adam_transform, lion_transform, momentum_transform
from ..polar import polar
from .kernel_config import COMPILE_KERNELS, NS_EPS, KernelConfig
from .kernel_measure import fmt_ms, gaussian, say, time_pair
from .kernel_shapes import shape_label

__all__ = ["measure_compiled", "run_compiled"]


def _transform_case(name: str, m: int, n: int, seed: int) -> tuple[Callable[[bool], Callable[[], Tensor]], str]:
    """``make(compile) -> call`` for one elementwise state transform on an ``m x n`` tensor (each call
    of ``make`` gets state of its own, so eager and compiled runs do not share buffers), and a label."""
    grad = gaussian(m, n, seed)

    def make(compile: bool) -> Callable[[], Tensor]:
        buf, buf_sq = torch.zeros_like(grad), torch.zeros_like(grad)
        step = torch.tensor(0.0)
        if name == "momentum":
            return lambda: momentum_transform(buf, grad, 0.95, True, compile=compile)
        if name == "adam":
            return lambda: adam_transform(buf, buf_sq, step, grad, 0.9, 0.95, 1e-8, compile=compile)
        return lambda: lion_transform(buf, grad, 0.9, 0.99, compile=compile)

    labels = {"momentum": "momentum (Nesterov, 0.95)", "adam": "adam ((0.9, 0.95), eps 1e-8)",
              "lion": "lion ((0.9, 0.99))"}
    return make, labels[name]


def _compile_case(name: str, m: int, n: int, seed: int) -> tuple[Callable[[bool], Callable[[], Tensor]], str]:
    if name == "newton_schulz":
        G = gaussian(m, n, seed)

        def make(compile: bool) -> Callable[[], Tensor]:
            return lambda: polar(G, "keller", 5, torch.float32, NS_EPS, compile=compile)

        return make, "Newton-Schulz (keller, 5 steps, float32)"
    return _transform_case(name, m, n, seed)


def measure_compiled(name: str, m: int, n: int, config: KernelConfig) -> dict:
    """One kernel on one ``m x n`` shape, compiled against eager (the module docstring)."""
    entry: dict = {"kernel": name, "shape": shape_label(m, n), "m": m, "n": n}
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
                say(progress, f"compile {name} {entry['shape']}: eager {fmt_ms(entry['eager_ms'])}, compiled "
                              f"{fmt_ms(entry['compiled_ms'])} ({entry['speedup']:.2f}x), first compiled call "
                              f"{entry['first_call_s']:.1f} s")
            else:
                say(progress, f"compile {name} {entry['shape']}: {entry['status']} {entry.get('note', '')}")
    return {"kernels": list(COMPILE_KERNELS), "settings": {"fullgraph": True, "dynamic": True},
            "entries": entries}
