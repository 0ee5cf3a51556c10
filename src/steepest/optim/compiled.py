"""Stage 2 with a compiled Newton-Schulz: the spectral LMO of a group when ``compile`` is on.

The spectral geometry (``steepest.geometry.spectral``) calls :func:`steepest.polar.polar` eagerly
and has no ``compile`` argument of its own (geometries are built from a group's flat keys, and
``compile`` is an optimizer setting, not a group key). :func:`compiled_lmo_many` is what the engine
calls instead of ``geometry.lmo_many`` when its ``compile`` setting is not ``False``: the same
per-(shape, dtype, device) batching, with ``polar(..., compile=True)`` for the buckets whose device
compiles. Every other case (other geometries, the exact ``svd`` polar factor, devices that do not
compile under ``"auto"``) is ``geometry.lmo_many`` itself, so the eager path is unchanged.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..geometry import Geometry, as_matrix
from ..geometry.spectral import Spectral
from ..polar import polar, resolve_ns_dtype


def compiled_lmo_many(geometry: Geometry, compiles: Callable[[Tensor], bool], xs: list[Tensor]) -> list[Tensor]:
    """``geometry.lmo_many(xs)``, with Newton-Schulz compiled for the tensors where ``compiles(x)``."""
    if not isinstance(geometry, Spectral) or geometry.ns == "svd" or not any(compiles(x) for x in xs):
        return geometry.lmo_many(xs)
    out: list[Tensor | None] = [None] * len(xs)
    buckets: dict[tuple, list[int]] = {}
    for i, x in enumerate(xs):
        buckets.setdefault((tuple(x.shape), x.dtype, x.device), []).append(i)
    for idx in buckets.values():
        first = xs[idx[0]]
        if len(idx) == 1:
            matrix = as_matrix(first)
        else:
            matrix = torch.stack([as_matrix(xs[i]) for i in idx])
        result = polar(matrix, geometry.ns, geometry.ns_steps, resolve_ns_dtype(geometry.ns_dtype, first.device),
                       geometry.eps, compile=compiles(first))
        if len(idx) == 1:
            out[idx[0]] = result.reshape(first.shape)
        else:
            for k, i in enumerate(idx):
                out[i] = result[k].reshape(first.shape)
    return out  # type: ignore[return-value]
