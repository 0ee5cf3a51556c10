"""Geometries: one small object per norm with ``lmo``, ``dual_norm``, ``norm``, ``shape_scale``
and ``init_``. ``make_geometry`` builds one from a parameter group's flat keys."""
from __future__ import annotations

from typing import Any, Mapping

from .base import Geometry, as_matrix, matrix_dims
from .colrow import ColNorm, RowNorm
from .frobenius import Frobenius
from .rms import RMS, Identity
from .sign import Sign
from .spectral import Spectral
from .transposed import LAYOUTS, Transposed

GEOMETRIES: dict[str, type[Geometry]] = {
    "spectral": Spectral,
    "sign": Sign,
    "colnorm": ColNorm,
    "rownorm": RowNorm,
    "rms": RMS,
    "frobenius": Frobenius,
    "identity": Identity,
}
GEOMETRY_NAMES: tuple[str, ...] = tuple(GEOMETRIES)

__all__ = [
    "Geometry", "Spectral", "Sign", "ColNorm", "RowNorm", "RMS", "Frobenius", "Identity",
    "GEOMETRIES", "GEOMETRY_NAMES", "make_geometry", "as_matrix", "matrix_dims", "Transposed", "LAYOUTS",
]


def geometry_class(name: str) -> type[Geometry]:
    """The geometry class registered under ``name``."""
    try:
        return GEOMETRIES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown geometry {name!r}; expected one of: {', '.join(GEOMETRY_NAMES)}"
        ) from None


def make_geometry(group: Mapping[str, Any]) -> Geometry:
    """Build the geometry a parameter group describes with its flat keys.

    Keys read: ``geometry`` (name), ``shape_scale`` (mode or ``None`` for the geometry's default),
    for ``spectral`` also ``ns``, ``ns_steps``, ``ns_dtype``, ``ns_eps``, ``ns_form``, and ``layout``
    (``"in_out"``: weights stored ``(in, out)`` get :class:`Transposed`).
    """
    layout = group.get("layout", "out_in")
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown layout {layout!r}; expected one of: {', '.join(LAYOUTS)}")
    geometry = _make(group)
    return Transposed(geometry) if layout == "in_out" else geometry


def _make(group: Mapping[str, Any]) -> Geometry:
    cls = geometry_class(group["geometry"])
    shape_scale = group.get("shape_scale")
    if cls is Spectral:
        return Spectral(
            ns=group.get("ns", "keller"),
            ns_steps=group.get("ns_steps"),
            ns_dtype=group.get("ns_dtype", "auto"),
            eps=group.get("ns_eps", 1e-7),
            shape_scale=shape_scale,
            ns_form=group.get("ns_form", "auto"),
        )
    return cls(shape_scale=shape_scale)
