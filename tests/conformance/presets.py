"""The conformance suite's per-preset knobs, read from each preset's registry entry.

The suite runs every check over every entry of ``steepest.optim.registry.REGISTRY`` with the
entry's ``conformance`` knobs (:class:`steepest.optim.preset_spec.Knobs`; the generic defaults when
an entry gives none).

``ErrorCase.options`` are given to the preset's constructor when its signature accepts them, and
otherwise put into the parameter group (every preset is a ``GeometryOptimizer``, whose groups carry
the same flat keys), so the generic cases apply to any preset.
"""
from __future__ import annotations

from steepest.optim.preset_spec import ErrorCase, Knobs  # noqa: F401 (the suite's cases use them)
from steepest.optim.registry import REGISTRY


def knobs_for(name: str) -> Knobs:
    """The knobs of preset ``name``."""
    return REGISTRY[name].conformance
