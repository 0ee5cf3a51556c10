"""Registry of presets by name: ``steepest.create``/``for_model`` look names up here, and the
conformance suite runs every check over every entry."""
from __future__ import annotations

from .engine import GeometryOptimizer
from .muon import Muon
from .scion import Scion

PRESETS: dict[str, type[GeometryOptimizer]] = {
    "muon": Muon,
    "scion": Scion,
}


def preset_class(name: str) -> type[GeometryOptimizer]:
    """The preset class registered under ``name`` (case-insensitive)."""
    key = name.lower() if isinstance(name, str) else name
    try:
        return PRESETS[key]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown optimizer preset {name!r}; expected one of: {', '.join(PRESETS)}") from None
