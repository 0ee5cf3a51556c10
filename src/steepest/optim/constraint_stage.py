"""The end of stage 4: project every parameter of a group back onto its constraint set
(``constraint``, ``constraint_bound``, ``constraint_units``; the sets are in ``steepest.constraints``)."""
from __future__ import annotations

from typing import Any

from torch import Tensor

from ..constraints.registry import constraint_from_keys
from ..distributed import local


class ConstraintStage:
    """The constraints of one optimizer's groups, built once per setting."""

    def __init__(self) -> None:
        self.cache: dict[tuple, Any] = {}

    def get(self, group: dict[str, Any]):
        """The (cached) constraint of ``group`` (``None`` without one)."""
        if group["constraint"] is None:
            return None
        key = (group["constraint"], group["constraint_bound"], group["constraint_units"])
        found = self.cache.get(key)
        if found is None:
            found = self.cache[key] = constraint_from_keys(*key)
        return found

    def project(self, group: dict[str, Any], params: list[Tensor], steps: list[float], geometry: Any,
                topology: Any) -> None:
        """Put every parameter back on the group's constraint set, telling it the largest spectral
        norm the step just taken can have (step size times the geometry's ``lmo_spectral_norm``;
        ``None`` when the geometry has no such bound); the spectral soft cap couples its strength
        to it. Distributed, each whole matrix is projected once, on its owner rank."""
        constraint = self.get(group)
        if constraint is None:
            return
        scale = geometry.lmo_spectral_norm()  # the update's spectral norm per unit step
        steps = [None if scale is None else s * scale for s in steps]
        transposed = group.get("layout", "out_in") == "in_out"
        if transposed:  # the constraint sees the (out, in) matrix W^T
            def project(w: Tensor, step_size: float | None) -> Tensor:
                return constraint.project(w.mT, step_size=step_size).mT
        else:
            project = constraint.project
        if topology is None:
            for p, s in zip(params, steps):
                if transposed:
                    p.copy_(project(p, s))
                else:
                    constraint.project_(p, step_size=s)
            return
        step_of = dict(enumerate(steps))
        projected = topology.map_whole(
            params, [local(p) for p in params],
            lambda owned, wholes: [project(w, step_of[i]) for i, w in zip(owned, wholes)],
            with_index=True)
        for p, w in zip(params, projected):
            local(p).copy_(w)
