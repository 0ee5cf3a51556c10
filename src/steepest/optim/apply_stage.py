"""Stage 4 of the engine: decoupled weight decay and the step, and which tensors of a group run the
four stages together (``GeometryOptimizer._parts``). Langevin noise, the optional end of stage 4,
is in ``langevin.py``."""
from __future__ import annotations

import torch
from torch import Tensor

from .transforms import split_grouped

LOW_PRECISION = (torch.bfloat16, torch.float16)


def apply_steps(params: list[Tensor], directions: list[Tensor], steps: list[float], shrink: float) -> None:
    """``W <- shrink * W - s * O`` for every parameter, in place: grouped (foreach) kernels over
    the parameters that share a step size; bfloat16/float16 parameters are updated in float32, one
    by one."""
    by_step: dict[float, tuple[list[Tensor], list[Tensor]]] = {}
    for p, d, s in zip(params, directions, steps):
        if p.dtype in LOW_PRECISION:
            w = p.float()
            w.mul_(shrink).add_(d, alpha=-s)
            p.copy_(w)
        else:
            ps, ds = by_step.setdefault(s, ([], []))
            ps.append(p)
            ds.append(d)
    for s, (ps, ds) in by_step.items():
        if shrink != 1.0:
            torch._foreach_mul_(ps, shrink)
        torch._foreach_add_(ps, ds, alpha=-s)


def stage_parts(grads: list[Tensor], *, per_tensor: bool, compile: bool) -> list[list[int]]:
    """The index sets of a group that run stages 1-4 together. The whole group unless
    ``per_tensor`` (every stage acts on each tensor alone and makes temporaries: an elementwise
    transform whose signals are new tensors, a geometry that does not batch, no group-level step
    size, one process). Then the small tensors stay together (grouped kernels) and each large one
    runs alone, so its temporaries are freed before the next tensor's are made: held for a whole
    group, they are fresh memory at every step (the allocator returns them to the system), and on
    the CPU touching fresh pages cost more than the arithmetic on the benchmark GPT."""
    if not per_tensor or len(grads) < 2:
        return [list(range(len(grads)))]
    small, large = split_grouped(compile, grads)
    return ([small] if small else []) + [[i] for i in large]
