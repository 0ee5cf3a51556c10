"""Constraint names -> classes: ``make_constraint(name, **kwargs)`` and the engine's ``constraint_from_keys``.

To add a constraint, import its class here and add one ``_Entry`` to ``_REGISTRY`` (its registry
name, the class, the keyword that receives the engine's ``constraint_bound`` and whether it takes
``units``). ``CONSTRAINT_NAMES`` follows the table.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from .base import Constraint, choice
from .birkhoff import Birkhoff
from .spectral import SpectralHammer, SpectralHardCap, SpectralNormalize, SpectralSoftCap
from .spd import SPD
from .spectral_norm import SPECTRAL_UNITS
from .sphere import Hypersphere, SpectralSphere
from .stiefel import Stiefel

__all__ = ["CONSTRAINT_NAMES", "make_constraint", "constraint_class", "constraint_from_keys", "takes_bound"]


@dataclass(frozen=True)
class _Entry:
    """One registered constraint: its class, the keyword its bound/radius/scale goes to, and whether
    it takes ``units``."""

    cls: type[Constraint]
    bound_keyword: str | None
    takes_units: bool


_REGISTRY: Mapping[str, _Entry] = MappingProxyType({
    "spectral_normalize": _Entry(SpectralNormalize, "bound", True),
    "spectral_hammer": _Entry(SpectralHammer, "bound", True),
    "spectral_hardcap": _Entry(SpectralHardCap, "bound", True),
    "spectral_softcap": _Entry(SpectralSoftCap, "bound", True),
    "hypersphere": _Entry(Hypersphere, "radius", False),
    "spectral_sphere": _Entry(SpectralSphere, "radius", True),
    "stiefel": _Entry(Stiefel, "scale", False),
    "birkhoff": _Entry(Birkhoff, None, False),
    "spd": _Entry(SPD, None, False),
})

#: every registered constraint name
CONSTRAINT_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def _entry(name: Any) -> _Entry:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown constraint {name!r}; expected one of: {', '.join(CONSTRAINT_NAMES)}") from None


def constraint_class(name: str) -> type[Constraint]:
    """The class registered as ``name``."""
    return _entry(name).cls


def takes_bound(name: str) -> bool:
    """Whether the constraint ``name`` uses the group key ``constraint_bound`` (``birkhoff`` and
    ``spd`` do not)."""
    return _entry(name).bound_keyword is not None


def make_constraint(name: str, **kwargs: Any) -> Constraint:
    """A new constraint: ``make_constraint("spectral_hardcap", bound=2.0, units="rms")``."""
    return _entry(name).cls(**kwargs)


def constraint_from_keys(name: str, bound: float, units: str) -> Constraint:
    """The constraint of an optimizer group's keys ``constraint``, ``constraint_bound`` and
    ``constraint_units``.

    ``bound`` is the spectral bound of the balls, the radius of the spheres and the scale of
    ``stiefel``; ``birkhoff`` (rows and columns summing to 1) and ``spd`` (eigenvalues at least
    ``eps = 1e-6``) have none and ignore it. ``units`` goes
    to the constraints that take it; ``hypersphere``, ``stiefel`` and ``birkhoff`` have no RMS form
    here (nor ``spd``), so they accept only ``units="spectral"`` (the plain value).
    """
    entry = _entry(name)
    choice("units", units, SPECTRAL_UNITS)
    kwargs: dict[str, Any] = {} if entry.bound_keyword is None else {entry.bound_keyword: bound}
    if entry.takes_units:
        kwargs["units"] = units
    elif units != "spectral":
        raise ValueError(f"Constraint {name!r} takes no units; got constraint_units={units!r} "
                         f"(use 'spectral': the {entry.bound_keyword or 'constraint'} is taken as given)")
    return entry.cls(**kwargs)
