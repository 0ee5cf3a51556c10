"""Geometries (steepest.geometry): the norm / LMO / dual-norm triple against closed forms.

Convention (geometry/base.py): ``lmo(x)`` is the unit-norm direction maximizing ``<x, d>``, so
``<x, lmo(x)> == dual_norm(x)`` and ``norm(lmo(x)) == 1``. Every geometry of ``GEOMETRIES`` except
``identity`` (no norm ball) is checked on every shape it accepts, in float64.
"""
from __future__ import annotations

import math
import re

import pytest
import torch

from steepest.geometry import (GEOMETRIES, GEOMETRY_NAMES, ColNorm, Geometry, Identity, RowNorm, Sign,
                               Spectral, make_geometry)
from steepest.polar import SCHEDULES

F64 = torch.float64
NAMES = [n for n in GEOMETRIES if n != "identity"]
SHAPES = [(1, 1), (1, 7), (7, 1), (9, 4), (4, 9), (6, 6), (5, 3, 2, 2), (7,), ()]


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


def geometry(name: str, **kwargs) -> Geometry:
    """Exact (float64, SVD) instance of a geometry."""
    if GEOMETRIES[name] is Spectral:
        kwargs = {"ns": "svd", "ns_dtype": "float64", **kwargs}
    return GEOMETRIES[name](**kwargs)


def accepted_shapes(name: str) -> list[tuple[int, ...]]:
    return [s for s in SHAPES if len(s) >= GEOMETRIES[name].min_ndim]


CASES = [(n, s) for n in NAMES for s in accepted_shapes(n)]
CASE_IDS = [f"{n}-{'x'.join(map(str, s)) or 'scalar'}" for n, s in CASES]


def rand(shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def matrix(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1) if x.ndim >= 2 else x.reshape(1, -1)


def inner(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a * b).sum().item()


# Closed forms of (lmo, dual norm, primal norm) for the library's geometries (matrix view for >= 2-D).
def _spectral_lmo(x):
    U, _, Vh = torch.linalg.svd(matrix(x), full_matrices=False)
    return (U @ Vh).reshape(x.shape)


CLOSED = {
    "spectral": (_spectral_lmo,
                 lambda x: torch.linalg.svdvals(matrix(x)).sum(),
                 lambda x: torch.linalg.svdvals(matrix(x)).max()),
    "sign": (torch.sign, lambda x: x.abs().sum(), lambda x: x.abs().max()),
    "colnorm": (lambda x: (matrix(x) / matrix(x).norm(dim=0, keepdim=True)).reshape(x.shape),
                lambda x: matrix(x).norm(dim=0).sum(), lambda x: matrix(x).norm(dim=0).max()),
    "rownorm": (lambda x: (matrix(x) / matrix(x).norm(dim=1, keepdim=True)).reshape(x.shape),
                lambda x: matrix(x).norm(dim=1).sum(), lambda x: matrix(x).norm(dim=1).max()),
    "rms": (lambda x: x * math.sqrt(x.numel()) / x.norm(),
            lambda x: x.norm() * math.sqrt(x.numel()), lambda x: x.norm() / math.sqrt(x.numel())),
    "frobenius": (lambda x: x / x.norm(), lambda x: x.norm(), lambda x: x.norm()),
}


# -- the LMO / dual-norm identities ------------------------------------------------------------
@pytest.mark.parametrize("name,shape", CASES, ids=CASE_IDS)
def test_lmo_identities(name, shape):
    geom = geometry(name)
    x = rand(shape, seed=len(shape) + sum(shape))
    d = geom.lmo(x)
    assert d.shape == x.shape and d.dtype == F64
    dual = geom.dual_norm(x).item()
    assert dual > 0
    assert inner(x, d) == pytest.approx(dual, rel=1e-8)  # <x, lmo(x)> = ||x||_*
    assert geom.norm(d).item() == pytest.approx(1.0, rel=1e-8)  # unit primal norm
    if name in CLOSED:
        lmo_ref, dual_ref, norm_ref = CLOSED[name]
        torch.testing.assert_close(d, lmo_ref(x), rtol=0, atol=1e-10)
        assert dual == pytest.approx(dual_ref(x).item(), rel=1e-10)
        assert geom.norm(x).item() == pytest.approx(norm_ref(x).item(), rel=1e-10)


@pytest.mark.parametrize("name,shape", CASES, ids=CASE_IDS)
def test_zero_input_gives_zero_direction(name, shape):
    geom = geometry(name)
    for dtype in (torch.float32, F64):
        z = torch.zeros(shape, dtype=dtype)
        d = geom.lmo(z)
        assert d.shape == z.shape
        assert not torch.isnan(d).any()
        assert torch.equal(d, torch.zeros_like(d))
        assert geom.dual_norm(z).item() == 0.0


@pytest.mark.parametrize("name,shape", CASES, ids=CASE_IDS)
def test_lmo_is_scale_invariant(name, shape):
    geom = geometry(name)
    x = rand(shape, seed=1)
    d = geom.lmo(x)
    for c in (1e-3, 0.5, 7.25, 1e4):
        torch.testing.assert_close(geom.lmo(c * x), d, rtol=0, atol=1e-10)
        # and the dual norm is positively homogeneous
        assert geom.dual_norm(c * x).item() == pytest.approx(c * geom.dual_norm(x).item(), rel=1e-10)


RANK1_SHAPES = [(6, 4), (3, 8), (5, 2, 2, 2)]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", RANK1_SHAPES)
def test_rank_one_input(name, shape):
    geom = geometry(name)
    u = rand((shape[0],), seed=2)
    v = rand((math.prod(shape[1:]),), seed=3)
    x = torch.outer(u, v).reshape(shape)
    d = geom.lmo(x)
    dual = geom.dual_norm(x).item()
    assert inner(x, d) == pytest.approx(dual, rel=1e-8)
    assert geom.norm(d).item() == pytest.approx(1.0, rel=1e-8)
    nu, nv = u.norm(), v.norm()
    expected = {  # closed forms for x = u v^T
        "spectral": (torch.outer(u / nu, v / nv), nu * nv),
        "sign": (torch.outer(torch.sign(u), torch.sign(v)), u.abs().sum() * v.abs().sum()),
        "colnorm": (torch.outer(u / nu, torch.sign(v)), nu * v.abs().sum()),
        "rownorm": (torch.outer(torch.sign(u), v / nv), u.abs().sum() * nv),
        "rms": (x.reshape(shape[0], -1) * math.sqrt(x.numel()) / (nu * nv), nu * nv * math.sqrt(x.numel())),
    }
    if name in expected:
        lmo_ref, dual_ref = expected[name]
        torch.testing.assert_close(d, lmo_ref.reshape(shape), rtol=0, atol=1e-10)
        assert dual == pytest.approx(dual_ref.item(), rel=1e-10)
    if name == "spectral":
        assert torch.linalg.matrix_rank(matrix(d)).item() == 1


# -- brute force -------------------------------------------------------------------------------
@pytest.mark.parametrize("name,shape", CASES, ids=CASE_IDS)
def test_dual_norm_is_max_over_unit_ball(name, shape):
    geom = geometry(name)
    x = rand(shape, seed=4)
    dual = geom.dual_norm(x).item()
    gen = torch.Generator().manual_seed(5)
    best = -math.inf
    lmo = geom.lmo(x)
    for k in range(96):
        if k < 48:  # random directions
            d = torch.randn(shape, generator=gen, dtype=F64)
        else:  # perturbations of the maximizer
            d = lmo + 0.05 * torch.randn(shape, generator=gen, dtype=F64)
        d = d / geom.norm(d)
        assert geom.norm(d).item() == pytest.approx(1.0, rel=1e-10)
        value = inner(x, d)
        assert value <= dual * (1 + 1e-10), f"<x, d> = {value} exceeds the dual norm {dual}"
        best = max(best, value)
    # Perturbing the maximizer by 5% loses only a little: the bound is tight.
    assert best >= 0.8 * dual
    assert inner(x, lmo) == pytest.approx(dual, rel=1e-8)


# -- Newton-Schulz spectral LMOs ---------------------------------------------------------------
@pytest.mark.parametrize("ns", list(SCHEDULES))
@pytest.mark.parametrize("shape", [(1, 7), (7, 1), (9, 4), (4, 9), (6, 6), (5, 3, 2, 2)])
def test_spectral_newton_schulz_identities_within_band(ns, shape):
    # Inputs with singular values in [0.1, 1]: sigma / ||x||_F >= 0.1 / 3 > 1e-2 for rank <= 9, so
    # every output singular value p(sigma) lies in the schedule's band [lo, hi]. Hence
    # lo * ||x||_nuc <= <x, lmo(x)> <= hi * ||x||_nuc and lo <= ||lmo(x)||_2 <= hi.
    lo, hi = SCHEDULES[ns].band
    m, n = shape[0], math.prod(shape[1:])
    k = min(m, n)
    gen = torch.Generator().manual_seed(6)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=gen, dtype=F64))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=F64))
    s = torch.linspace(1.0, 0.1, k, dtype=F64)
    x = (U @ torch.diag(s) @ V.T).reshape(shape)
    geom = Spectral(ns=ns, ns_dtype="float64")
    d = geom.lmo(x)
    assert d.shape == x.shape and d.dtype == F64
    nuclear = s.sum().item()
    assert geom.dual_norm(x).item() == pytest.approx(nuclear, rel=1e-12)
    assert lo * nuclear - 1e-12 <= inner(x, d) <= hi * nuclear + 1e-12
    assert lo - 1e-12 <= geom.norm(d).item() <= hi + 1e-12
    sv = torch.linalg.svdvals(matrix(d))
    assert sv.min().item() >= lo - 1e-12


def test_spectral_default_dtype_is_float32_on_cpu():
    d = Spectral().lmo(rand((4, 6)))
    assert d.dtype == torch.float32
    exact_d = Spectral(ns="svd").lmo(rand((4, 6)))
    torch.testing.assert_close(exact_d, _spectral_lmo(rand((4, 6))).float(), rtol=0, atol=1e-5)


# -- lmo_many ----------------------------------------------------------------------------------
@pytest.mark.parametrize("ns,dtype,atol", [("svd", "float64", 1e-12), ("keller", "float64", 1e-12),
                                           ("polar_express", "float32", 2e-5), ("quintic", "float32", 2e-5)])
def test_spectral_lmo_many_equals_per_tensor(ns, dtype, atol):
    # float32: batched (baddbmm) and single (addmm) Newton-Schulz round differently; the iteration
    # amplifies that to a few 1e-6 (see test_polar.py::test_batched_equals_per_matrix_in_float32).
    geom = Spectral(ns=ns, ns_dtype=dtype)
    shapes = [(4, 8), (8, 4), (4, 8), (3, 2, 3, 3), (4, 8, 1)]
    xs = [rand(s, seed=10 + i) for i, s in enumerate(shapes)]
    outs = geom.lmo_many(xs)
    assert len(outs) == len(xs)
    for x, out in zip(xs, outs):
        assert out.shape == x.shape
        torch.testing.assert_close(out, geom.lmo(x), rtol=0, atol=atol)
    # The batched pair really is the pair's own polar factor (not swapped or mixed up).
    if ns == "svd":
        for x, out in zip(xs, outs):
            torch.testing.assert_close(out, _spectral_lmo(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_lmo_many_default_is_per_tensor(name):
    geom = geometry(name)
    xs = [rand(s, seed=20 + i) for i, s in enumerate([(3, 5), (5, 3), (3, 5)])]
    for x, out in zip(xs, geom.lmo_many(xs)):
        torch.testing.assert_close(out, geom.lmo(x), rtol=0, atol=1e-12)


# -- shape factors -----------------------------------------------------------------------------
R2, R3, R6 = math.sqrt(2), math.sqrt(3), math.sqrt(6)
# shape -> (fan_out, fan_in): (6, 3) -> (6, 3); (3, 6) -> (3, 6); (8, 4, 3, 3) -> (8, 36).
SHAPE_SCALES = {
    "spectral": {
        "original": (R2, 1.0, 1.0),                    # sqrt(max(1, m/n))
        "match_rms_adamw": (0.2 * R6, 0.2 * R6, 1.2),  # 0.2 sqrt(max(m, n))
        "rms_to_rms": (R2, 1 / R2, R2 / 3),            # sqrt(m/n)
        "none": (1.0, 1.0, 1.0),
    },
    "sign": {"none": (1.0, 1.0, 1.0), "fan_in": (1 / 3, 1 / 6, 1 / 36)},
    "colnorm": {"rms": (R6, R3, 2 * R2), "none": (1.0, 1.0, 1.0)},  # sqrt(fan_out)
    "rownorm": {"rms": (R3, R6, 6.0), "rms_to_linf": (1 / R3, 1 / R6, 1 / 6), "none": (1.0, 1.0, 1.0)},
    "rms": {"none": (1.0, 1.0, 1.0)},
    "frobenius": {"none": (1.0, 1.0, 1.0), "original": (R2, 1.0, 1.0)},  # sqrt(max(1, fan_out/fan_in))
    "identity": {"none": (1.0, 1.0, 1.0)},
}
DEFAULT_MODES = {"spectral": "original", "sign": "none", "colnorm": "rms", "rownorm": "rms", "rms": "none",
                 "frobenius": "none", "identity": "none"}


@pytest.mark.parametrize("name", list(SHAPE_SCALES))
def test_shape_scale_values(name):
    cls = GEOMETRIES[name]
    assert set(cls.shape_scales) == set(SHAPE_SCALES[name]), "every mode needs an expected value here"
    for mode, expected in SHAPE_SCALES[name].items():
        geom = cls(shape_scale=mode)
        got = tuple(geom.shape_scale(s) for s in [(6, 3), (3, 6), (8, 4, 3, 3)])
        assert got == pytest.approx(expected, rel=1e-15), mode
        assert geom.shape_scale(torch.Size([6, 3])) == pytest.approx(expected[0], rel=1e-15)
    assert cls().shape_scale_mode == DEFAULT_MODES[name] == cls.shape_scales[0]


def test_shape_scale_of_vectors():
    assert Sign(shape_scale="fan_in").shape_scale((5,)) == pytest.approx(1 / 5)
    assert Sign(shape_scale="fan_in").shape_scale(()) == 1.0
    assert RowNorm(shape_scale="rms").shape_scale((4, 9)) == 3.0


def test_unknown_shape_scale_mode():
    with pytest.raises(ValueError, match=exact("Unknown shape_scale 'nope' for geometry 'sign'; expected one of: "
                                               "none, fan_in")):
        Sign(shape_scale="nope")


# -- init_ -------------------------------------------------------------------------------------
INIT_CASES = [(n, s) for n in NAMES for s in accepted_shapes(n) if s != ()]


@pytest.mark.parametrize("name,shape", INIT_CASES, ids=[f"{n}-{'x'.join(map(str, s))}" for n, s in INIT_CASES])
def test_init_has_norm_scale(name, shape):
    geom = geometry(name)
    for scale in (0.5, 3.0):
        w = torch.full(shape, 123.0, dtype=F64)
        out = geom.init_(w, scale=scale, generator=torch.Generator().manual_seed(7))
        assert out is w
        assert geom.norm(w).item() == pytest.approx(scale, rel=1e-6)  # initialized in float32
        m = matrix(w)
        if name == "spectral":
            torch.testing.assert_close(torch.linalg.svdvals(m), torch.full((min(m.shape),), scale, dtype=F64),
                                       rtol=1e-6, atol=0)
        elif name == "colnorm":
            torch.testing.assert_close(m.norm(dim=0), torch.full((m.shape[1],), scale, dtype=F64), rtol=1e-6, atol=0)
        elif name == "rownorm":
            torch.testing.assert_close(m.norm(dim=1), torch.full((m.shape[0],), scale, dtype=F64), rtol=1e-6, atol=0)
        elif name == "sign":
            assert torch.equal(w.abs(), torch.full(shape, scale, dtype=F64))
        elif name == "rms":
            assert torch.equal(w, torch.full(shape, scale, dtype=F64))
        elif name == "frobenius":
            assert w.numel() == 1 or w.std() > 0  # random, not constant
    # Deterministic under a generator.
    a = geom.init_(torch.empty(shape, dtype=F64), generator=torch.Generator().manual_seed(8))
    b = geom.init_(torch.empty(shape, dtype=F64), generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)


def test_identity_geometry():
    x = rand((3, 4))
    geom = Identity()
    assert geom.lmo(x) is x
    assert geom.dual_norm(x).item() == pytest.approx(x.norm().item())
    w = x.clone()
    geom.init_(w, scale=5.0)
    assert torch.equal(w, x)


# -- validation --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["spectral", "colnorm", "rownorm"])
@pytest.mark.parametrize("shape", [(5,), ()])
def test_check_shape_rejects_vectors(name, shape):
    geom = geometry(name)
    msg = (f"Geometry {name!r} needs parameters with at least 2 dimensions, got shape {shape} for parameter "
           f"'fc.bias' (use geometry 'rms', 'sign' or an AdamW-style group for vectors)")
    with pytest.raises(ValueError, match=exact(msg)):
        geom.check_shape(torch.Size(shape), "fc.bias")
    geom.check_shape((5, 3), "fc.weight")  # matrices and conv filters are fine
    geom.check_shape((5, 3, 2, 2), "conv.weight")


@pytest.mark.parametrize("name", ["sign", "rms", "frobenius", "identity"])
def test_vector_geometries_accept_any_shape(name):
    geom = GEOMETRIES[name]()
    for shape in [(), (5,), (5, 3), (5, 3, 2, 2)]:
        geom.check_shape(shape, "p")


def test_make_geometry():
    geom = make_geometry({"geometry": "spectral", "shape_scale": "rms_to_rms", "ns": "polar_express",
                          "ns_steps": 7, "ns_dtype": "float64", "ns_eps": 1e-9})
    assert isinstance(geom, Spectral)
    assert (geom.ns, geom.ns_steps, geom.ns_dtype, geom.eps, geom.shape_scale_mode) == \
        ("polar_express", 7, "float64", 1e-9, "rms_to_rms")
    sign = make_geometry({"geometry": "sign", "shape_scale": None})
    assert isinstance(sign, Sign) and sign.shape_scale_mode == "none"
    assert isinstance(make_geometry({"geometry": "colnorm"}), ColNorm)
    assert GEOMETRY_NAMES == tuple(GEOMETRIES)


def test_make_geometry_unknown_name():
    msg = "Unknown geometry 'nope'; expected one of: spectral, sign, colnorm, rownorm, rms, frobenius, identity"
    with pytest.raises(ValueError, match=exact(msg)):
        make_geometry({"geometry": "nope"})
