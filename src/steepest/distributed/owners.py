"""Which rank orthogonalizes which matrix: a deterministic balance of the work by FLOPs.

Every rank computes the same plan from the same global shapes, so no message is needed to agree
on it. The rule is the longest-processing-time greedy: matrices in decreasing order of cost (ties
by position), each to the rank with the least work so far (ties to the lowest rank). Its largest
per-rank load is at most 4/3 of the optimum (Graham 1969) and never exceeds the mean load by more
than the largest single matrix.
"""
from __future__ import annotations

import math
from typing import Sequence


def matrix_cost(shape: Sequence[int]) -> int:
    """FLOPs of one Newton-Schulz iteration on the ``(shape[0], prod(shape[1:]))`` view, up to a
    constant: ``m * n * min(m, n)`` (a vector counts as a ``1 x n`` matrix, an empty tensor as 0)."""
    if len(shape) == 0:
        return 1
    m = int(shape[0]) if len(shape) > 1 else 1
    n = int(math.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
    return m * n * min(m, n)


def assign_owners(costs: Sequence[int], world: int) -> list[int]:
    """The owning rank of each item (same order as ``costs``), balancing the summed cost per rank."""
    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    loads = [0] * world
    owners = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world), key=lambda r: (loads[r], r))
        owners[i] = rank
        loads[rank] += costs[i]
    return owners
