"""Putting a parameter on its geometry's sphere (Scion's initialization rules), on one process or as
the local shard of a distributed tensor."""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor

from ..distributed import is_dtensor, local


@torch.no_grad()
def init_on_sphere(p: Tensor, geometry: Any, scale: float, generator: torch.Generator | None, topology: Any) -> None:
    """Draw ``p`` on the sphere of radius ``scale`` in ``geometry``'s norm (orthogonal for spectral,
    normalized columns/rows, +-1 for sign). A sharded ``p`` gets its part of the whole tensor drawn
    on every rank (so every rank must use the same generator state)."""
    if topology is None or not is_dtensor(p):
        geometry.init_(p, scale=scale, generator=generator)
        return
    whole = torch.empty(p.shape, dtype=p.dtype, device=local(p).device)
    geometry.init_(whole, scale=scale, generator=generator)
    local(p).copy_(topology.local_part(p, whole))


@torch.no_grad()
def init_groups_(optimizer: Any, roles: Iterable[str], generator: torch.Generator | None) -> None:
    """Draw every parameter of ``optimizer``'s groups of the given ``roles`` on its geometry's
    sphere of radius ``radius * shape_scale`` (orthogonal for spectral, normalized columns/rows, +-1
    for sign). Distributed, each rank draws the whole tensor and keeps its shard, so every rank must
    use the same ``generator`` seed (or the same global RNG state)."""
    wanted = set(roles)
    for group in optimizer.param_groups:
        if group["role"] in wanted:
            geometry = optimizer.geometry(group)
            for p in group["params"]:
                init_on_sphere(p, geometry, group["radius"] * geometry.shape_scale(p.shape), generator,
                               optimizer._topology)
