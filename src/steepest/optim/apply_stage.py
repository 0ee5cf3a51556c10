"""Stage 4 of the engine: decoupled weight decay and the step, Langevin noise (the group key
``langevin_temperature``), and which tensors of a group run the four stages together
(``GeometryOptimizer._parts``)."""
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


_MASK64 = (1 << 64) - 1


def langevin_seed(*words: int) -> int:
    """A 63-bit seed that mixes ``words`` (the group's ``langevin_seed``, the parameter's index, its
    Langevin step and, for a shard, its rank): each word is xored in, then the state is multiplied
    by an odd 64-bit constant and its high bits are folded down, so that nearby words give
    unrelated seeds. The noise of one draw is a pure function of these words: no generator state
    has to be saved, a resumed run draws what an uninterrupted one draws, and every rank that holds
    the same replicated parameter draws the same noise."""
    h = 0x243F6A8885A308D3  # the fractional digits of pi
    for word in words:
        h ^= int(word) & _MASK64
        h = (h * 0x9E3779B97F4A7C15) & _MASK64
        h ^= h >> 31
        h = (h * 0xD6E8FEB86659FD93) & _MASK64
        h ^= h >> 29
    return h >> 1


def add_langevin_noise(params: list[Tensor], seeds: list[int], scale: float, dtypes: list[torch.dtype],
                       generators: dict[torch.device, torch.Generator]) -> None:
    """``W <- W + scale * xi`` for every parameter, ``xi`` standard normal of ``W``'s shape drawn
    in ``dtypes[i]`` (the state dtype: float32 for bfloat16/float16 parameters, which are then
    updated in float32) on ``W``'s device, from a generator seeded with ``seeds[i]``
    (``generators``: one reusable generator per device, created on first use)."""
    for p, seed, dtype in zip(params, seeds, dtypes):
        generator = generators.get(p.device)
        if generator is None:
            generator = generators[p.device] = torch.Generator(device=p.device)
        generator.manual_seed(seed)
        xi = torch.randn(p.shape, generator=generator, device=p.device, dtype=dtype)
        if p.dtype == dtype:
            p.add_(xi, alpha=scale)
        else:
            p.copy_(p.to(dtype).add_(xi, alpha=scale))


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
