"""Langevin dynamics, the optional end of stage 4: ``W <- W + sqrt(2 * lr * T) * xi``, ``xi ~ N(0, I)``.

With the group key ``langevin_temperature`` T > 0 (``docs/averaging.md``), after stage 4's step and
before the constraint's projection every parameter gets ``sqrt(2 * lr * T) * xi``, ``xi ~ N(0, I)``,
with the group's unadjusted ``lr`` (as weight decay). For the plain gradient step (``transform=
"momentum"`` with ``momentum=0``, ``geometry="identity"``, radius 1) this is SGLD,
``W <- W - lr grad + sqrt(2 lr / beta) xi`` with inverse temperature ``beta = 1 / T``. The noise of
a parameter's k-th Langevin step is drawn from a generator seeded with a mix of
(``langevin_seed``, the parameter's index in the optimizer, k, and the rank for a shard): its
state is the counter ``langevin_step`` (a CPU int64 tensor in the parameter's state), so a run
resumed from ``state_dict`` is bit-identical to an uninterrupted one, and replicated parameters
get the same noise on every rank. With T = 0 nothing is drawn and no state is added.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..distributed import local

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



class LangevinNoise:
    """The engine's Langevin component: one reusable generator per device, and the index of every
    parameter in the optimizer (a seed word), built once and extended when groups are added."""

    def __init__(self) -> None:
        self.generators: dict[torch.device, torch.Generator] = {}
        self.index: dict[int, int] = {}

    @staticmethod
    def ensure_state(state: dict[str, Any]) -> None:
        """The draw counter ``langevin_step``, on the CPU (read on the host, no device sync)."""
        if "langevin_step" not in state:
            state["langevin_step"] = torch.zeros((), dtype=torch.int64)

    def _index_of(self, optimizer, p: Tensor) -> int:
        i = self.index.get(id(p))
        if i is None:  # a group was added since: indices of the earlier parameters do not change
            self.index = {id(q): j for j, q in enumerate(q for g in optimizer.param_groups for q in g["params"])}
            i = self.index[id(p)]
        return i

    def add(self, optimizer, group: dict[str, Any], params: list[Tensor]) -> None:
        """``W <- W + sqrt(2 * lr * langevin_temperature) * xi`` for ``params`` of ``group``; every
        parameter's ``langevin_step`` counts its draws."""
        scale = math.sqrt(2.0 * float(group["lr"]) * float(group["langevin_temperature"]))
        seed = int(group["langevin_seed"])
        seeds = []
        for p in params:
            counter = optimizer.state[p]["langevin_step"]
            rank = optimizer._topology.rank if optimizer._sharded([p]) else 0
            seeds.append(langevin_seed(seed, self._index_of(optimizer, p), int(counter), rank))
            counter.add_(1)
        dtypes = [optimizer.state_dtype(p) for p in params]
        if optimizer._topology is not None:
            params = [local(p) for p in params]
        add_langevin_noise(params, seeds, scale, dtypes, self.generators)
