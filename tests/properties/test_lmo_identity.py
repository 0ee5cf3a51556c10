"""Property ``lmo_identity``: ``<x, lmo(x)> == dual_norm(x)`` (and the dual norm equals its float64
closed form) and ``norm(lmo(x)) == 1``, for every geometry, both layouts and every shape-factor mode;
a zero input gives a zero direction; zero-size tensors work."""
from __future__ import annotations

import math
from typing import Any, Callable

import pytest
import torch
from hypothesis import note
from hypothesis import strategies as st

from steepest.geometry import GEOMETRIES, GEOMETRY_NAMES, LAYOUTS, Spectral, Transposed

from properties.known_bugs import parametrized
from properties.runner import run_property
from properties.strategies import (DTYPES, F64, REGIMES, empty_shapes, make_tensor, regime_grid, scaled, seeds,
                                   shapes, tensor_kinds)

pytestmark = pytest.mark.usefixtures("one_thread")

BF16 = torch.bfloat16


def matrix(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1) if x.ndim >= 2 else x.reshape(1, -1)


#: float64 closed forms of the dual norms (test_geometry.py checks them against the library on fixed
#: inputs; here they are the reference that a generated input's dual norm must match).
REF_DUAL: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "spectral": lambda x: torch.linalg.svdvals(matrix(x)).sum(),
    "sign": lambda x: x.abs().sum(),
    "colnorm": lambda x: torch.linalg.vector_norm(matrix(x), dim=0).sum(),
    "rownorm": lambda x: torch.linalg.vector_norm(matrix(x), dim=1).sum(),
    "rms": lambda x: torch.linalg.vector_norm(x) * math.sqrt(x.numel()),
    "frobenius": lambda x: torch.linalg.vector_norm(x),
    "identity": lambda x: torch.linalg.vector_norm(x),
}


def close(got: float, want: float, rtol: float) -> bool:
    return abs(got - want) <= rtol * abs(want)


LMO_REGIMES = ("unit", "tiny", "huge", "empty")
LMO_COMBOS = [(g, d, r) for g in GEOMETRY_NAMES for d in DTYPES for r in LMO_REGIMES]
LMO_EXAMPLES = {"unit": 40, "tiny": 15, "huge": 15, "empty": 4}


def lmo_rtol(name: str, dtype: torch.dtype, ns_dtype: str | None) -> float:
    """Relative tolerance of the LMO identities for an input of ``dtype``.

    - 1e-2 for ``sign`` on bfloat16: its LMO and dual norm stay in bfloat16, and the l1 sum is
      rounded to bfloat16's 8-bit significand (relative 2^-8 = 3.9e-3; measured 3.8e-3);
    - 1e-10 when everything is computed in float64 (measured 7e-16);
    - 1e-5 otherwise: float32 arithmetic (every other geometry computes bfloat16 inputs in float32,
      and the spectral LMO iterates in float32 unless ``ns_dtype="float64"``): sums of up to a few
      hundred rounded terms, and SVD's relative accuracy; measured worst 1e-6.
    """
    if dtype == BF16 and name == "sign":
        return 1e-2
    if dtype == F64 and (name != "spectral" or ns_dtype == "float64"):
        return 1e-10
    return 1e-5


def make_lmo_geometry(name: str, mode: str, layout: str, ns_dtype: str | None):
    cls = GEOMETRIES[name]
    kwargs: dict[str, Any] = {"shape_scale": mode}
    if cls is Spectral:
        kwargs.update(ns="svd", ns_dtype=ns_dtype)  # the exact polar factor: Newton-Schulz is polar_band's
    geom = cls(**kwargs)
    return Transposed(geom) if layout == "in_out" else geom


@st.composite
def lmo_cases(draw, name: str, regime: str) -> dict[str, Any]:
    cls = GEOMETRIES[name]
    case: dict[str, Any] = {"mode": draw(st.sampled_from(cls.shape_scales)),
                            "ns_dtype": draw(st.sampled_from(("auto", "float32", "float64", "bfloat16")))
                            if cls is Spectral else None}
    if regime == "empty":
        case["shapes"] = draw(empty_shapes(min_ndim=cls.min_ndim))
        return case
    shape = draw(shapes(min_ndim=cls.min_ndim))
    case.update(shape=shape, kind=draw(tensor_kinds), seed=draw(seeds),
                layout=draw(st.sampled_from(LAYOUTS)) if len(shape) == 2 else "out_in",
                exponent=draw(st.floats(*REGIMES[regime])))
    return case


def check_lmo(geom, name: str, x: torch.Tensor, rtol: float) -> None:
    xd = x.double()
    d = geom.lmo(x)
    assert d.shape == x.shape, (d.shape, x.shape)
    assert bool(torch.isfinite(d).all()), "lmo(x) holds NaN/Inf for a finite x"
    dual_t = geom.dual_norm(x)
    assert dual_t.ndim == 0
    dual = float(dual_t.double())
    reference = float(REF_DUAL[name](xd.mT if isinstance(geom, Transposed) else xd))
    assert math.isfinite(dual), f"dual_norm(x) = {dual} for a finite x"
    assert close(dual, reference, rtol), f"dual_norm {dual!r} != closed form {reference!r}"
    scale = geom.shape_scale(x.shape)
    assert math.isfinite(scale) and scale > 0, scale
    if name == "identity":  # no norm ball: the direction is the input itself (rms.py)
        assert torch.equal(d, x)
        return
    if reference == 0.0:
        assert torch.count_nonzero(d) == 0, "lmo(0) must be 0"
        assert dual == 0.0
        return
    inner = float((xd * d.double()).sum())
    assert close(inner, dual, rtol), f"<x, lmo(x)> = {inner!r} != dual_norm(x) = {dual!r}"
    unit = float(geom.norm(d).double())
    assert close(unit, 1.0, rtol), f"||lmo(x)|| = {unit!r} != 1"


def check_lmo_case(name: str, dtype: torch.dtype, regime: str, case: dict[str, Any]) -> None:
    if regime == "empty":
        modes = GEOMETRIES[name].shape_scales
        for shape in case["shapes"]:
            for layout in (LAYOUTS if len(shape) == 2 else ("out_in",)):
                for mode in modes:
                    geom = make_lmo_geometry(name, mode, layout, case["ns_dtype"])
                    x = torch.zeros(shape, dtype=dtype)
                    note(f"shape {shape}, layout {layout}, shape_scale {mode}")
                    assert geom.lmo(x).shape == x.shape
                    assert float(geom.dual_norm(x)) == 0.0
                    assert float(geom.norm(x)) == 0.0
                    scale = geom.shape_scale(shape)
                    assert math.isfinite(scale) and scale >= 0.0, scale
        return
    geom = make_lmo_geometry(name, case["mode"], case["layout"], case["ns_dtype"])
    base = make_tensor(case["kind"], case["shape"], case["seed"])
    rtol = lmo_rtol(name, dtype, case["ns_dtype"])
    # The drawn scale, then a sweep of the whole regime (every 5th decade): an extreme-scale failure
    # is found on every case, not only when the draw lands on it.
    for exponent in [case["exponent"]] + regime_grid(regime):
        note(f"max |x| = 1e{exponent:g}")
        check_lmo(geom, name, scaled(base, exponent, dtype), rtol)


@parametrized("lmo", "name,dtype,regime", LMO_COMBOS)
def test_lmo_identity(name, dtype, regime, request, property_cases):
    run_property(request, property_cases, "lmo_identity", lmo_cases(name, regime),
                 lambda case: check_lmo_case(name, DTYPES[dtype], regime, case), max_examples=LMO_EXAMPLES[regime])
