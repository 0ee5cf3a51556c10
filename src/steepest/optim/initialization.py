"""Putting a parameter on its geometry's sphere (Scion's initialization rules), on one process or as
the local shard of a distributed tensor."""
from __future__ import annotations

from typing import Any

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
