"""The matrix shapes ``steepest bench kernels`` measures, and the Newton-Schulz FLOP count of each.

Shapes: the hidden and convolution matrices of the benchmark models (:func:`discover_model_shapes`)
or the config's explicit ``shapes``, then the config's squares ``n x n``; one entry per distinct
``(m, n)``.

FLOP counting: a Newton-Schulz step on the wide orientation ``X`` (``m x n``, ``m <= n``; tall
inputs are transposed first) does three matrix products, ``A = X X^T`` (``2 m^2 n``), ``A A``
inside ``addmm`` (``2 m^3``) and ``B X`` inside ``addmm`` (``2 m^2 n``): ``4 m^2 n + 2 m^3`` per
step, ``steps`` times. The Gram product is counted in full although it is symmetric, because BLAS
computes it in full; the ``addmm`` scalings, the Frobenius normalization and the transposes
(``O(m n + m^2)`` per step) are not counted. GFLOP/s for these backends is that count over the
median time. ``svd`` and ``auon`` have no matmul FLOP count (LAPACK's SVD is not a sequence of
GEMMs, AuON is elementwise): they are reported in milliseconds only. ``hybrid_auon`` counts its
one step; its brake's elementwise work is not counted.
"""
from __future__ import annotations

import re

import torch

from ..geometry.base import matrix_dims
from ..roles import classify
from . import tasks as task_registry
from .gpt import GPT, GPTConfig
from .kernel_config import KernelConfig
from .tasks.char_lm import CharLMTask

__all__ = ["ns_flops", "shape_label", "discover_model_shapes", "shape_list"]


def ns_flops(m: int, n: int, steps: int) -> int:
    """Matmul FLOPs of ``steps`` Newton-Schulz steps on an ``m x n`` input (the module docstring)."""
    p, q = min(m, n), max(m, n)
    return steps * (4 * p * p * q + 2 * p ** 3)


def shape_label(m: int, n: int) -> str:
    return f"{m}x{n}"


def _param_pattern(name: str) -> str:
    """``blocks.3.attn.qkv.weight`` -> ``blocks.*.attn.qkv.weight`` (collapse layer indices)."""
    return re.sub(r"(^|\.)\d+(?=\.|$)", r"\1*", name)


def _matrix_params(model: torch.nn.Module, roles) -> list[tuple[str, int, int]]:
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


def shape_list(config: KernelConfig) -> tuple[list[dict], list[str]]:
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
        s["label"] = shape_label(m, n)
        s["ns_flops_per_step"] = ns_flops(m, n, 1)
        out.append(s)
    return out, notes
