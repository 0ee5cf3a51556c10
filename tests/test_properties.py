"""Property-based tests (hypothesis) over every preset, geometry and Newton-Schulz schedule (issue 10).

Five properties, each over generated shapes (1x1, 1xn, nx1, tall, wide, square, conv 3-D/4-D,
vectors, scalars, zero-size), dtypes (float32, bfloat16, float64), value regimes (gradients whose
largest entry is 1e-30 .. 1e30, exact zeros, rank-1, low-rank, repeated singular values, spikes,
sparse and integer tensors) and hyperparameters in their valid ranges:

- ``finite_updates``: from finite gradients no NaN or Inf ever appears in parameters or state;
- ``lmo_identity``: ``<x, lmo(x)> == dual_norm(x)`` (and the dual norm equals its float64 closed
  form) and ``norm(lmo(x)) == 1``, for every geometry, both layouts and every shape-factor mode;
  a zero input gives a zero direction; zero-size tensors work;
- ``polar_band``: Newton-Schulz polar factors have singular values inside each schedule's
  documented band (``Schedule.band``, for singular values >= 1e-2 of the Frobenius norm) on the
  input's numerical rank, exact zero singular values stay (near) zero, and the spectral LMO's
  ``<x, lmo(x)>`` lies in ``band * ||x||_nuc``; the exact ``svd`` factor is checked by the
  dual-norm identity in ``lmo_identity``;
- ``state_dict_resume``: saving and loading the state dict at a random step continues bit-identically;
- ``invalid_hyperparameters``: invalid values raise the documented error type with the exact
  message (validation.py's formats; the presets' own cases from tests/conformance/presets.py), and
  nothing is mutated: the caller's groups and tensors, and on ``add_param_group`` the optimizer's
  groups, state and parameters, which then step exactly like a twin that never saw the bad group.

Every property runs derandomized (``tests/properties/runner.py``): the cases are the same on every
run and machine, so CI is reproducible. The number of generated cases per property is printed in
the terminal summary (``tests/conftest.py``).

A library bug these properties find is marked ``xfail(strict=True)`` on exactly the parametrizations
it breaks (``KNOWN_BUGS`` below, one entry per bug with its cause) until it is fixed: the properties
stay strict, the suite stays green, and the fix turns the marked cases into XPASS failures that ask
for the mark's removal. The 15 bugs found so far are all fixed (CHANGELOG 0.6.0 and 0.7.0).
"""
from __future__ import annotations

import copy
import io
import math
import pickle
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import pytest
import torch
from hypothesis import note
from hypothesis import strategies as st
from torch import nn

from steepest.constraints.registry import CONSTRAINT_NAMES
from steepest.geometry import GEOMETRIES, GEOMETRY_NAMES, LAYOUTS, Spectral, Transposed
from steepest.optim import MFAC, PRESETS
from steepest.optim.noise import NOISE_RULES, NOISE_SOURCES
from steepest.optim.validation import CONSTRAINT_UNITS, MIN_EPS, TRANSFORMS
from steepest.polar import NS_DTYPE_NAMES, SCHEDULE_NAMES, SCHEDULES, polar
from steepest.roles import ROLES

from conformance.presets import ErrorCase, knobs_for
from properties.runner import run_property
from properties.strategies import (BAND_FLOOR, DTYPES, F64, REGIMES, band_inputs, band_matrix, constructor_args,
                                   empty_shapes, group_overrides, make_tensor, param_specs, preset_kwargs,
                                   regime_grid, scaled, seeds, shapes, tensor_kinds, TENSOR_KINDS)

pytestmark = pytest.mark.usefixtures("one_thread")

BF16 = torch.bfloat16
NAN = float("nan")


# == known bugs ====================================================================================
@dataclass(frozen=True)
class Bug:
    """A library bug found by these properties.

    Attributes:
        reason: cause (the xfail reason).
        raises: what the failing parametrizations raise (an assertion of the property, or the bug's
            own exception).
        cases: the parametrizations ``(test, id)`` it breaks; they are marked ``xfail(strict=True)``.
        repro: a minimal reproducer (``import torch, steepest; from torch import nn`` assumed).
        fix: the suggested fix.
    """

    reason: str
    raises: tuple[type[BaseException], ...]
    cases: tuple[tuple[str, str], ...]
    repro: str = ""
    fix: str = ""


def _ids(test: str, *parts: list[str] | tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """(test, id) for every combination of the given id parts."""
    out = [()]
    for options in parts:
        out = [prefix + (o,) for prefix in out for o in options]
    return tuple((test, "-".join(combo)) for combo in out)


KNOWN_BUGS: dict[str, Bug] = {}  # every bug these properties found is fixed (CHANGELOG 0.6.0, 0.7.0)

_XFAIL: dict[tuple[str, str], Bug] = {case: bug for bug in KNOWN_BUGS.values() for case in bug.cases}


def parametrized(test: str, names: str, combos: list[tuple]) -> pytest.MarkDecorator:
    """``pytest.mark.parametrize`` over ``combos`` with ids ``a-b-c``; known bugs become strict xfails."""
    params = []
    for combo in combos:
        pid = "-".join(map(str, combo))
        bug = _XFAIL.get((test, pid))
        marks = [pytest.mark.xfail(strict=True, raises=bug.raises, reason=bug.reason)] if bug else []
        params.append(pytest.param(*combo, id=pid, marks=marks))
    return pytest.mark.parametrize(names, params)


def test_known_bug_ids_exist():
    """Every (test, id) of KNOWN_BUGS names a real parametrization (a typo would silently unmark it)."""
    real = {(test, "-".join(map(str, combo))) for test, combos in ALL_COMBOS.items() for combo in combos}
    unknown = sorted(case for case in _XFAIL if case not in real)
    assert not unknown, unknown


# == helpers =======================================================================================
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


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


def state_problems(opt, params: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of parameters and state entries holding NaN or Inf."""
    bad = []
    for name, p in params.items():
        if not bool(torch.isfinite(p).all()):
            bad.append(f"parameter {name}")
        for key, value in opt.state.get(p, {}).items():
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad.append(f"state {key!r} of {name}")
    return bad


def build_groups(specs, params, overrides: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One named param group per role, with that role's overrides."""
    groups = []
    for role in ROLES:
        items = [(name, params[name]) for name, r, _ in specs if r == role]
        if items:
            groups.append({"params": items, "role": role, **overrides.get(role, {})})
    return groups


def make_params(specs, dtype: torch.dtype, seed: int) -> dict[str, nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return {name: nn.Parameter(torch.randn(shape, generator=gen, dtype=F64).to(dtype)) for name, _, shape in specs}


def gradient(kind: str, shape, seed: int, exponent: float, dtype: torch.dtype) -> torch.Tensor:
    return scaled(make_tensor(kind, tuple(shape), seed), exponent, dtype)


# == lmo_identity ==================================================================================
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


# == polar_band ====================================================================================
POLAR_COMBOS = [(s, d) for s in SCHEDULES for d in DTYPES]  # schedule x iteration dtype
#: Allowance outside the documented band, by iteration dtype: float64 1e-9 (the iteration is the
#: scalar map to ~1e-14); float32 1e-4 (rounding; measured: never outside the band); bfloat16 0.06
#: (each step rounds to 8 bits and the quintic amplifies it: measured worst 0.023, polar_express_8).
BAND_TOL = {"float64": 1e-9, "float32": 1e-4, "bfloat16": 0.06}


def null_tol(schedule, iteration: str) -> float:
    """How far an exact zero singular value may rise: rounding the input to the iteration dtype
    leaves ~eps ||X||_F there, and each step multiplies small values by its ``a``; so 8 eps prod(a)
    (float32, 5 Keller steps: 4.6e-4, measured 3e-5; polar_express_8: 6.5e-3, measured 3.3e-4)."""
    growth = math.prod(abs(a) for a, _, _ in schedule.coefficients_for(schedule.default_steps))
    return 8 * torch.finfo(DTYPES[iteration]).eps * growth


def check_band(schedule_name: str, iteration: str, x: torch.Tensor, o: torch.Tensor, rank: int) -> None:
    """``o = polar(x)`` of one matrix: its singular values on ``x``'s numerical rank lie in the band."""
    schedule = SCHEDULES[schedule_name]
    lo, hi = schedule.band
    tol = BAND_TOL[iteration]
    xd, od = x.double(), o.double()
    U, S, Vh = torch.linalg.svd(xd, full_matrices=False)
    # o = U p(S) V^T: the diagonal of U^T o V pairs every input singular value with its image, also
    # for inputs rounded to float32/bfloat16 (whose tiny singular values are outside the domain).
    images = torch.diagonal(U.T @ od @ Vh.T)
    domain = S >= BAND_FLOOR * torch.linalg.vector_norm(S)
    assert bool(domain.any())
    inside = images[domain]
    assert float(inside.min()) >= lo - tol and float(inside.max()) <= hi + tol, \
        (f"singular values {inside.tolist()} of the output for inputs {S[domain].tolist()} leave the band "
         f"[{lo}, {hi}] of {schedule_name!r}")
    if x.dtype == F64 and iteration != "bfloat16":
        # The input has exact rank ``rank`` (float64): the output's top singular values are the
        # images, the rest stay near zero. (Rounding to bfloat16 puts the zero singular values at
        # ~2^-9 ||X||_F, below the documented domain, and the iteration lifts them toward 1.)
        sv = torch.linalg.svdvals(od)
        assert float(sv[:rank].min()) >= lo - tol and float(sv[:rank].max()) <= hi + tol, sv.tolist()
        if rank < len(sv):
            assert float(sv[rank:].max()) <= null_tol(schedule, iteration), sv.tolist()
        # ... hence the spectral LMO's dual-norm identity holds within the band:
        # lo ||x||_nuc <= <x, lmo(x)> <= hi ||x||_nuc.
        nuclear = float(S.sum())
        inner = float((xd * od).sum())
        assert (lo - tol) * nuclear <= inner <= (hi + tol) * nuclear, (inner, nuclear)


@st.composite
def polar_cases(draw, exponents: tuple[float, float]) -> dict[str, Any]:
    case = draw(band_inputs())
    case.update(input=draw(st.sampled_from(list(DTYPES))), exponent=draw(st.floats(*exponents)),
                path=draw(st.sampled_from(("polar", "lmo", "lmo_many"))))
    return case


def run_polar_case(schedule_name: str, iteration: str, case: dict[str, Any], exponent: float) -> None:
    x = scaled(band_matrix(case), exponent, DTYPES[case["input"]])
    if case["path"] == "polar":
        o = polar(x, ns=schedule_name, dtype=DTYPES[iteration])
    else:  # the spectral geometry's LMO; a stack goes through the batched lmo_many
        geom = Spectral(ns=schedule_name, ns_dtype=iteration, shape_scale="none")
        mats = list(x) if x.ndim == 3 else [x]
        outs = geom.lmo_many(mats) if case["path"] == "lmo_many" else [geom.lmo(m) for m in mats]
        o = torch.stack(outs) if x.ndim == 3 else outs[0]
    assert o.shape == x.shape
    assert bool(torch.isfinite(o).all()), "polar factor holds NaN/Inf for a finite input"
    for xb, ob in zip(x.reshape(-1, *x.shape[-2:]), o.reshape(-1, *o.shape[-2:])):
        check_band(schedule_name, iteration, xb, ob, case["rank"])


@parametrized("polar", "schedule,iteration", POLAR_COMBOS)
def test_polar_band(schedule, iteration, request, property_cases):
    # ||X||_F = 10^e with e in [-6, 6]: the unit regime of a polar factor. Below ns_eps = 1e-7 the
    # result depends on the scale (a bug: test_polar_band_extreme_scales), so this stays above it.
    run_property(request, property_cases, "polar_band", polar_cases((-6.0, 6.0)),
                 lambda case: run_polar_case(schedule, iteration, case, case["exponent"]), max_examples=40)


POLAR_SCALE_COMBOS = [(d, r) for d in DTYPES for r in ("tiny", "huge")]


@parametrized("polar_scale", "iteration,regime", POLAR_SCALE_COMBOS)
def test_polar_band_extreme_scales(iteration, regime, request, property_cases):
    """The band at ||X||_F = 1e-30 .. 1e-10 and 1e10 .. 1e30 (every 5th decade of the regime)."""
    strategy = st.tuples(st.sampled_from(list(SCHEDULES)), polar_cases((0.0, 0.0)))

    def check(drawn):
        schedule, case = drawn
        case = {**case, "path": "polar"}
        for exponent in regime_grid(regime):
            note(f"||X||_F = 1e{exponent}")
            run_polar_case(schedule, iteration, case, exponent)

    run_property(request, property_cases, "polar_band", strategy, check, max_examples=8)


# == finite_updates ================================================================================
FINITE_REGIMES = ("unit", "tiny", "huge", "empty")
FINITE_COMBOS = [(p, d, r) for p in PRESETS for d in DTYPES for r in FINITE_REGIMES]
FINITE_STEPS = 3
FINITE_EXAMPLES = {"unit": 20, "tiny": 8, "huge": 5, "empty": 5}


@st.composite
def finite_cases(draw, preset: str, regime: str) -> dict[str, Any]:
    """A small model with every role, the preset's hyperparameters, and three steps of gradients.

    In the ``unit`` and ``tiny`` regimes the recipe varies too: constructor choices (``adjust_lr``,
    ``ns`` incl. ``svd``, ``scale``, noise adaptivity) and per-group overrides (every geometry the
    tensors accept, every shape-factor mode, the ``in_out`` layout, every state transform). In the
    ``huge`` and ``empty`` regimes only numeric hyperparameters vary, so that each parametrization
    keeps its preset's recipe and a known bug either always or never applies to it."""
    cls = PRESETS[preset]
    structural = regime in ("unit", "tiny")
    specs = draw(param_specs(empty=regime == "empty"))
    overrides = {}
    if structural:
        for role in ROLES:
            role_shapes = [shape for _, r, shape in specs if r == role]
            overrides[role] = draw(group_overrides(role_shapes, allow_transform=cls is not MFAC))
    grid = regime_grid("unit" if regime == "empty" else regime, step=10)  # 3 decades: both ends and the middle
    return {"specs": specs, "kwargs": draw(preset_kwargs(cls, structural=structural)), "overrides": overrides,
            "exponents": draw(st.permutations(grid)),
            "kinds": draw(st.lists(st.lists(tensor_kinds, min_size=len(specs), max_size=len(specs)),
                                   min_size=FINITE_STEPS, max_size=FINITE_STEPS)),
            "seed": draw(seeds)}


def run_finite_case(preset: str, dtype: torch.dtype, case: dict[str, Any],
                    edit_groups: Callable[[list[dict]], None] | None = None) -> None:
    specs, seed = case["specs"], case["seed"]
    params = make_params(specs, dtype, seed)
    groups = build_groups(specs, params, case["overrides"])
    if edit_groups is not None:
        edit_groups(groups)
    opt = PRESETS[preset](groups, **case["kwargs"])
    gen = torch.Generator().manual_seed(seed)
    for t, exponent in enumerate(case["exponents"]):
        for j, (name, _, shape) in enumerate(specs):
            jitter = float(torch.rand((), generator=gen))  # largest entry in [10^(e-1), 10^e]
            params[name].grad = gradient(case["kinds"][t][j], shape, seed + 7919 * t + j, exponent - jitter, dtype)
        second = {p: gradient("gaussian", p.shape, seed + 104729 + i, exponent, dtype)
                  for i, p in enumerate(params.values())}
        opt.step(second_grads=second)
        bad = state_problems(opt, params)
        assert not bad, f"step {t} (gradients up to 1e{exponent}): NaN/Inf in {', '.join(bad)}"


@parametrized("finite", "preset,dtype,regime", FINITE_COMBOS)
def test_finite_updates(preset, dtype, regime, request, property_cases):
    run_property(request, property_cases, "finite_updates", finite_cases(preset, regime),
                 lambda case: run_finite_case(preset, DTYPES[dtype], case), max_examples=FINITE_EXAMPLES[regime])


ZERO_SIZE_COMBOS = [(p, d) for p in PRESETS for d in DTYPES]


@parametrized("zero_size", "preset,dtype", ZERO_SIZE_COMBOS)
def test_finite_updates_zero_size_without_shape_factor(preset, dtype, request, property_cases):
    """Zero-size parameters with every group's shape factor set to ``none``: what is left once the
    shape factor's division by ``fan_in`` (a known bug, ``empty_shape_scale``) is out of the way."""
    def edit(groups):
        for g in groups:
            g["shape_scale"] = "none"

    run_property(request, property_cases, "finite_updates", finite_cases(preset, "empty"),
                 lambda case: run_finite_case(preset, DTYPES[dtype], case, edit), max_examples=3)


EDGE_COMBOS = [(e, d) for e in ("adam_eps_tiny", "ns_dtype_float16") for d in DTYPES]
#: eps >= MIN_EPS (float32's smallest normal number) is the documented range: its smallest values
#: first (they are the simplest cases).
TINY_EPS = st.one_of(st.sampled_from([MIN_EPS, 1e-37]), st.floats(MIN_EPS, 1e-12))


@parametrized("finite_edge", "edge,dtype", EDGE_COMBOS)
def test_finite_updates_edge_hyperparameters(edge, dtype, request, property_cases):
    """Valid hyperparameters at the edge of their range, which the main strategy leaves out: an
    Adam/diffGrad eps down to float32's smallest normal number (with some zero gradients: 0/0
    without eps), and ``ns_dtype="float16"`` on every matrix group (with gradients up to 1e10, far
    above float16's 65504)."""
    presets = [p for p in PRESETS if p != "mfac"] if edge == "adam_eps_tiny" else list(PRESETS)
    strategy = st.tuples(st.sampled_from(presets), st.data())

    def check(drawn):
        preset, data = drawn
        case = data.draw(finite_cases(preset, "unit"))
        if edge == "adam_eps_tiny":
            eps, transform = data.draw(TINY_EPS), data.draw(st.sampled_from(("adam", "diffgrad")))
            kinds = case["kinds"]  # the first parameter's first gradient is exactly zero (0/0 without eps)
            case = {**case, "kinds": [["zeros", *kinds[0][1:]], *kinds[1:]]}

            def edit(groups):
                for g in groups:
                    g.update(transform=transform, eps=eps)
        else:
            def edit(groups):
                for g in groups:
                    if g["role"] in ("hidden", "conv"):
                        g.update(geometry="spectral", shape_scale=None, layout="out_in", ns_dtype="float16")
        run_finite_case(preset, DTYPES[dtype], case, edit)

    run_property(request, property_cases, "finite_updates", strategy, check, max_examples=6)


# == state_dict_resume =============================================================================
RESUME_COMBOS = [(p, d, n) for p in PRESETS for d in DTYPES for n in ("noise_off", "noise_on")]
NON_IDENTITY = [g for g in GEOMETRY_NAMES if g != "identity"]


@st.composite
def resume_cases(draw, preset: str, noise: bool) -> dict[str, Any]:
    """A model, the preset's hyperparameters and group overrides with noise adaptivity fixed by the
    parametrization (``noise_on``: every group noise-adaptive, with a geometry that has a dual
    norm, so the noise state always exists), steps before the save and after the load."""
    cls = PRESETS[preset]
    specs = draw(param_specs())
    overrides = {}
    for role in ROLES:
        role_shapes = [shape for _, r, shape in specs if r == role]
        keys = draw(group_overrides(role_shapes, allow_transform=cls is not MFAC))
        keys["noise_adaptive"] = noise
        if noise and keys.get("geometry", "identity") == "identity":
            min_ndim = min(len(s) for s in role_shapes)
            keys["geometry"] = draw(st.sampled_from([g for g in NON_IDENTITY if GEOMETRIES[g].min_ndim <= min_ndim]))
            keys["shape_scale"] = None
            keys.pop("layout", None)
        overrides[role] = keys
    return {"specs": specs, "overrides": overrides,
            "kwargs": draw(preset_kwargs(cls, structural=True, exclude=("noise_adaptive",))),
            "before": draw(st.integers(0, 4)), "after": draw(st.integers(1, 3)),
            "transport": draw(st.sampled_from(("state_dict", "torch_save_weights_only", "pickle"))),
            "seed": draw(seeds)}


def transported(state_dict: dict, how: str) -> dict:
    if how == "torch_save_weights_only":
        buf = io.BytesIO()
        torch.save(state_dict, buf)
        buf.seek(0)
        return torch.load(buf, weights_only=True)
    if how == "pickle":
        return pickle.loads(pickle.dumps(state_dict))
    return copy.deepcopy(state_dict)


def set_grads(specs, params_list, seed: int, t: int, dtype: torch.dtype) -> dict:
    """The same gradients (and second gradients) on every copy of the model, for step ``t``."""
    gen = torch.Generator().manual_seed(seed + 31 * t)
    second = [{} for _ in params_list]
    for j, (name, _, shape) in enumerate(specs):
        kind = TENSOR_KINDS[int(torch.randint(0, len(TENSOR_KINDS), (), generator=gen))]
        exponent = float(torch.empty(()).uniform_(-3, 3, generator=gen))
        g = gradient(kind, shape, seed + 1000 * t + j, exponent, dtype)
        g2 = gradient("gaussian", shape, seed + 1000 * t + j + 500, exponent, dtype)
        for params, sec in zip(params_list, second):
            params[name].grad = g.clone()
            sec[params[name]] = g2.clone()
    return second


def assert_same_state(opt_a, params_a, opt_b, params_b) -> None:
    for name in params_a:
        sa, sb = opt_a.state.get(params_a[name], {}), opt_b.state.get(params_b[name], {})
        assert sa.keys() == sb.keys(), (name, sorted(sa), sorted(sb))
        for key, va in sa.items():
            vb = sb[key]
            if isinstance(va, torch.Tensor):
                assert va.dtype == vb.dtype, f"state {key!r} of {name}: {va.dtype} became {vb.dtype}"
                assert torch.equal(va, vb), f"state {key!r} of {name} differs"
            else:
                assert va == vb, (name, key)


def run_resume_case(preset: str, dtype: torch.dtype, case: dict[str, Any]) -> None:
    cls, specs, seed = PRESETS[preset], case["specs"], case["seed"]
    params_a = make_params(specs, dtype, seed)
    opt_a = cls(build_groups(specs, params_a, case["overrides"]), **case["kwargs"])
    for t in range(case["before"]):
        opt_a.step(second_grads=set_grads(specs, [params_a], seed, t, dtype)[0])
    saved = transported(opt_a.state_dict(), case["transport"])
    params_b = {name: nn.Parameter(p.detach().clone()) for name, p in params_a.items()}
    opt_b = cls(build_groups(specs, params_b, case["overrides"]), **case["kwargs"])
    opt_b.load_state_dict(saved)
    assert_same_state(opt_a, params_a, opt_b, params_b)
    strip = [{k: v for k, v in g.items() if k != "params"} for g in opt_a.param_groups]
    assert strip == [{k: v for k, v in g.items() if k != "params"} for g in opt_b.param_groups]
    for t in range(case["before"], case["before"] + case["after"]):
        second_a, second_b = set_grads(specs, [params_a, params_b], seed, t, dtype)
        opt_a.step(second_grads=second_a)
        opt_b.step(second_grads=second_b)
    for name in params_a:
        assert torch.equal(params_a[name], params_b[name]), \
            f"{name} differs after the reload: max |diff| {(params_a[name] - params_b[name]).abs().max().item()}"
    assert_same_state(opt_a, params_a, opt_b, params_b)


@parametrized("resume", "preset,dtype,noise", RESUME_COMBOS)
def test_state_dict_resume(preset, dtype, noise, request, property_cases):
    run_property(request, property_cases, "state_dict_resume", resume_cases(preset, noise == "noise_on"),
                 lambda case: run_resume_case(preset, DTYPES[dtype], case), max_examples=8)


# == invalid_hyperparameters =======================================================================
@dataclass(frozen=True)
class Invalid:
    """Invalid setting(s) and the documented error they must raise.

    Attributes:
        settings: draws ``{key: invalid value}`` (one key, or a geometry with its invalid mode).
        error, message: the exception type and its exact message for the drawn settings.
        group: valid keys the check needs in the group (the transform or geometry it applies to).
        presets: the presets it applies to (``None``: every preset).
        paths: ``constructor`` (keys the constructor takes go to it, the rest into its groups) and/or
            ``add_param_group`` (a group with the keys added to a stepped optimizer).
    """

    settings: st.SearchStrategy[dict[str, Any]]
    error: type[Exception]
    message: Callable[[dict[str, Any]], str]
    group: Mapping[str, Any] = field(default_factory=dict)
    presets: tuple[str, ...] | None = None
    paths: tuple[str, ...] = ("constructor", "add_param_group")


def _one(key: str, values: st.SearchStrategy) -> st.SearchStrategy[dict[str, Any]]:
    return values.map(lambda v: {key: v})


def _type_name(settings: dict[str, Any]) -> str:
    return type(next(iter(settings.values()))).__name__


def _value(settings: dict[str, Any]) -> Any:
    return next(iter(settings.values()))


_negative = st.one_of(st.floats(max_value=0.0, exclude_max=True), st.integers(max_value=-1))
_nonpositive = st.one_of(st.floats(max_value=0.0), st.integers(max_value=0), st.just(NAN))
_out_of_unit = st.one_of(st.floats(min_value=1.0), st.floats(max_value=0.0, exclude_max=True), st.just(NAN),
                         st.integers(min_value=1), st.integers(max_value=-1))
_not_real = st.one_of(st.text(max_size=4), st.booleans(), st.none(), st.lists(st.floats(0, 1), max_size=2),
                      st.complex_numbers(max_magnitude=1.0, allow_nan=False))
_not_bool = st.one_of(st.integers(), st.text(max_size=4), st.none(), st.floats(allow_nan=False))


def _unknown(choices) -> st.SearchStrategy[str]:
    return st.text(max_size=8).filter(lambda s: s not in choices)


def _choice_message(key: str, choices) -> Callable[[dict[str, Any]], str]:
    return lambda s: f"Unknown {key} {_value(s)!r}; expected one of: {', '.join(choices)}"


@st.composite
def _bad_betas(draw) -> dict[str, Any]:
    bad = st.one_of(st.floats(min_value=1.0), st.floats(max_value=0.0, exclude_max=True), st.just(NAN))
    good = st.floats(0.0, 0.9999)
    which = draw(st.sampled_from(("first", "second", "both")))
    b0 = draw(bad if which in ("first", "both") else good)
    b1 = draw(bad if which in ("second", "both") else good)
    return {"betas": (b0, b1)}


def _bad_betas_message(s: dict[str, Any]) -> str:
    b0, b1 = s["betas"]
    index, value = (0, b0) if not 0.0 <= b0 < 1.0 else (1, b1)
    return f"Invalid beta parameter at index {index}: {value}"


@st.composite
def _betas_with_non_real(draw) -> dict[str, Any]:
    index = draw(st.integers(0, 1))
    pair = [draw(st.floats(0.0, 0.9999)), draw(st.floats(0.0, 0.9999))]
    pair[index] = draw(st.one_of(st.text(max_size=3), st.none(), st.booleans()))
    return {"betas": tuple(pair)}


def _betas_type_message(s: dict[str, Any]) -> str:
    index = next(i for i, b in enumerate(s["betas"]) if isinstance(b, bool) or not isinstance(b, (int, float)))
    return f"Invalid type for betas[{index}]: expected a real number, got {type(s['betas'][index]).__name__}"


@st.composite
def _bad_shape_scale(draw) -> dict[str, Any]:
    geometry = draw(st.sampled_from(GEOMETRY_NAMES))
    return {"geometry": geometry, "shape_scale": draw(_unknown(GEOMETRIES[geometry].shape_scales + (None,)))}


_SPECTRAL = {"geometry": "spectral"}
_MOMENTUM = {"transform": "momentum"}
_ADAM = {"transform": "adam"}

INVALID: dict[str, Invalid] = {
    "lr_negative": Invalid(_one("lr", _negative), ValueError, lambda s: f"Invalid learning rate: {s['lr']}"),
    "lr_nan": Invalid(_one("lr", st.just(NAN)), ValueError, lambda s: "Invalid learning rate: nan"),
    "lr_type": Invalid(_one("lr", _not_real), TypeError,
                       lambda s: f"Invalid type for lr: expected a real number, got {_type_name(s)}"),
    "weight_decay_negative": Invalid(_one("weight_decay", _negative), ValueError,
                                     lambda s: f"Invalid weight_decay value: {_value(s)}"),
    "weight_decay_nan": Invalid(_one("weight_decay", st.just(NAN)), ValueError,
                                lambda s: "Invalid weight_decay value: nan"),
    "weight_decay_type": Invalid(_one("weight_decay", _not_real), TypeError,
                                 lambda s: f"Invalid type for weight_decay: expected a real number, got {_type_name(s)}"),
    "radius_nonpositive": Invalid(_one("radius", _nonpositive), ValueError,
                                  lambda s: f"Invalid radius value: {_value(s)}; expected a positive number"),
    "momentum_out_of_range": Invalid(_one("momentum", _out_of_unit), ValueError,
                                     lambda s: f"Invalid momentum value: {_value(s)}; expected 0 <= momentum < 1",
                                     group=_MOMENTUM),
    "momentum_type": Invalid(_one("momentum", _not_real), TypeError,
                             lambda s: f"Invalid type for momentum: expected a real number, got {_type_name(s)}",
                             group=_MOMENTUM),
    "nesterov_type": Invalid(_one("nesterov", _not_bool), TypeError,
                             lambda s: f"Invalid type for nesterov: expected bool, got {_type_name(s)}", group=_MOMENTUM),
    "betas_out_of_range": Invalid(_bad_betas(), ValueError, _bad_betas_message, group=_ADAM),
    "betas_wrong_length": Invalid(
        _one("betas", st.one_of(st.just(()), st.tuples(st.floats(0, 0.9)),
                                st.tuples(st.floats(0, 0.9), st.floats(0, 0.9), st.floats(0, 0.9)))),
        TypeError, lambda s: f"Invalid betas: expected a pair of numbers, got {s['betas']!r}", group=_ADAM),
    "betas_not_a_sequence": Invalid(
        _one("betas", st.one_of(st.floats(0, 0.9), st.integers(0, 1), st.none())),
        TypeError, lambda s: f"Invalid betas: expected a pair of numbers, got {s['betas']!r}", group=_ADAM),
    "adamw_betas_not_a_sequence": Invalid(
        _one("adamw_betas", st.one_of(st.floats(0, 0.9), st.integers(0, 1), st.none())),
        TypeError, lambda s: f"Invalid betas: expected a pair of numbers, got {s['adamw_betas']!r}",
        presets=("muon", "normuon", "auon", "hybrid_auon"), paths=("constructor",)),
    "betas_type": Invalid(_betas_with_non_real(), TypeError, _betas_type_message, group=_ADAM),
    "eps_nonpositive": Invalid(_one("eps", _nonpositive), ValueError,
                               lambda s: f"Invalid eps value: {_value(s)}; expected a positive number", group=_ADAM),
    "eps_below_float32": Invalid(
        _one("eps", st.one_of(st.sampled_from([5e-324, 1e-300, 1e-45, MIN_EPS / 2]), st.floats(5e-324, MIN_EPS,
                                                                                              exclude_max=True))),
        ValueError, lambda s: (f"Invalid eps value: {_value(s)}; expected at least {MIN_EPS!r} (float32's smallest "
                               f"normal number: a smaller eps rounds to 0 in float32 optimizer state)"), group=_ADAM),
    "transform_unknown": Invalid(_one("transform", _unknown(TRANSFORMS)), ValueError,
                                 _choice_message("transform", TRANSFORMS)),
    "geometry_unknown": Invalid(_one("geometry", _unknown(GEOMETRY_NAMES)), ValueError,
                                _choice_message("geometry", GEOMETRY_NAMES)),
    "shape_scale_unknown": Invalid(
        _bad_shape_scale(), ValueError,
        lambda s: (f"Unknown shape_scale {s['shape_scale']!r} for geometry {s['geometry']!r}; expected one of: "
                   f"{', '.join(GEOMETRIES[s['geometry']].shape_scales)}")),
    "ns_unknown": Invalid(_one("ns", _unknown(SCHEDULE_NAMES)), ValueError,
                          _choice_message("Newton-Schulz schedule", SCHEDULE_NAMES), group=_SPECTRAL),
    "ns_steps_out_of_range": Invalid(
        _one("ns_steps", st.one_of(st.integers(max_value=0), st.integers(min_value=100))), ValueError,
        lambda s: f"Invalid ns_steps: {_value(s)}; expected an integer in [1, 100)", group=_SPECTRAL),
    "ns_steps_type": Invalid(
        _one("ns_steps", st.one_of(st.floats(), st.text(max_size=3), st.booleans())), TypeError,
        lambda s: f"Invalid type for ns_steps: expected an int or None, got {_type_name(s)}", group=_SPECTRAL),
    "ns_dtype_unknown": Invalid(_one("ns_dtype", _unknown(NS_DTYPE_NAMES)), ValueError,
                                _choice_message("ns_dtype", NS_DTYPE_NAMES), group=_SPECTRAL),
    "ns_eps_invalid": Invalid(_one("ns_eps", _nonpositive), ValueError,
                              lambda s: f"Invalid ns_eps value: {_value(s)}; expected a positive number",
                              group=_SPECTRAL),
    "layout_unknown": Invalid(_one("layout", _unknown(LAYOUTS)), ValueError, _choice_message("layout", LAYOUTS)),
    "role_unknown": Invalid(_one("role", _unknown(ROLES + ("",))), ValueError, _choice_message("role", ROLES)),
    "maximize_type": Invalid(_one("maximize", _not_bool), TypeError,
                             lambda s: f"Invalid type for maximize: expected bool, got {_type_name(s)}"),
    "noise_adaptive_type": Invalid(_one("noise_adaptive", _not_bool), TypeError,
                                   lambda s: f"Invalid type for noise_adaptive: expected bool, got {_type_name(s)}"),
    "noise_beta_out_of_range": Invalid(
        _one("noise_beta", _out_of_unit), ValueError,
        lambda s: f"Invalid noise_beta value: {_value(s)}; expected 0 <= noise_beta < 1"),
    "noise_source_unknown": Invalid(_one("noise_source", _unknown(NOISE_SOURCES)), ValueError,
                                    _choice_message("noise_source", NOISE_SOURCES)),
    "noise_rule_unknown": Invalid(_one("noise_rule", _unknown(NOISE_RULES)), ValueError,
                                  _choice_message("noise_rule", NOISE_RULES)),
    "noise_alpha_out_of_range": Invalid(
        _one("noise_alpha", st.one_of(_negative, st.sampled_from((NAN, math.inf)))), ValueError,
        lambda s: f"Invalid noise_alpha value: {_value(s)}; expected a finite number >= 0"),
    "noise_alpha_type": Invalid(
        _one("noise_alpha", st.one_of(st.text(max_size=3), st.none(), st.booleans())), TypeError,
        lambda s: f"Invalid type for noise_alpha: expected a real number, got {_type_name(s)}"),
    "noise_every_below_one": Invalid(
        _one("noise_every", st.integers(max_value=0)), ValueError,
        lambda s: f"Invalid noise_every value: {_value(s)}; expected an integer >= 1"),
    "noise_every_type": Invalid(
        _one("noise_every", st.one_of(st.floats(), st.text(max_size=3), st.booleans(), st.none())), TypeError,
        lambda s: f"Invalid type for noise_every: expected int, got {_type_name(s)}"),
    "noise_ns_unknown": Invalid(_one("noise_ns", _unknown(SCHEDULE_NAMES)), ValueError,
                                _choice_message("noise_ns", SCHEDULE_NAMES)),
    "noise_eps_negative": Invalid(_one("noise_eps", _negative), ValueError,
                                  lambda s: f"Invalid noise_eps value: {_value(s)}"),
    "noise_eps_nan": Invalid(_one("noise_eps", st.just(NAN)), ValueError, lambda s: "Invalid noise_eps value: nan"),
    "constraint_unknown": Invalid(_one("constraint", _unknown(CONSTRAINT_NAMES)), ValueError,
                                  _choice_message("constraint", CONSTRAINT_NAMES)),
    "constraint_bound_nonpositive": Invalid(
        _one("constraint_bound", _nonpositive), ValueError,
        lambda s: f"Invalid constraint_bound value: {_value(s)}; expected a positive number"),
    "constraint_units_unknown": Invalid(_one("constraint_units", _unknown(CONSTRAINT_UNITS)), ValueError,
                                        _choice_message("constraint_units", CONSTRAINT_UNITS)),
    "on_nonfinite_unknown": Invalid(_one("on_nonfinite", _unknown(("raise", "skip"))), ValueError,
                                    _choice_message("on_nonfinite", ("raise", "skip")), paths=("constructor",)),
    "compile_unknown": Invalid(_one("compile", _unknown(("auto",))), ValueError,
                               lambda s: f"Unknown compile {_value(s)!r}; expected True, False or 'auto'",
                               paths=("constructor",)),
    "compile_type": Invalid(_one("compile", st.one_of(st.integers(), st.none(), st.floats(allow_nan=False))),
                            TypeError, lambda s: f"Invalid type for compile: expected bool or 'auto', got {_type_name(s)}",
                            paths=("constructor",)),
    # the presets' own arguments (generated values; tests/conformance/presets.py has fixed ones)
    "beta2_out_of_range": Invalid(_one("beta2", _out_of_unit), ValueError,
                                  lambda s: f"Invalid beta2 value: {_value(s)}; expected 0 <= beta2 < 1",
                                  presets=("normuon",)),
    "ngrads_invalid": Invalid(_one("ngrads", st.integers(max_value=0)), ValueError,
                              lambda s: f"Invalid ngrads: {_value(s)}; expected an integer >= 1", presets=("mfac",)),
    "damp_nonpositive": Invalid(_one("damp", _nonpositive), ValueError,
                                lambda s: f"Invalid damp value: {_value(s)}; expected a positive number",
                                presets=("mfac",)),
    "radius_argument_nonpositive": Invalid(
        st.tuples(st.sampled_from(("hidden", "embedding", "head", "vector")), _nonpositive).map(
            lambda kv: {f"{kv[0]}_radius": kv[1]}),
        ValueError, lambda s: f"Invalid {next(iter(s))} value: {_value(s)}; expected a positive number",
        presets=("scion",), paths=("constructor",)),
    "adjust_lr_unknown": Invalid(_one("adjust_lr", _unknown(("original", "match_rms_adamw", "rms_to_rms", "none"))),
                                 ValueError, _choice_message("adjust_lr", ("original", "match_rms_adamw",
                                                                           "rms_to_rms", "none")),
                                 presets=("muon", "normuon"), paths=("constructor",)),
    "kappa_unknown": Invalid(_one("kappa", _unknown(("l1", "l2", "nuclear"))), ValueError,
                             _choice_message("kappa", ("l1", "l2", "nuclear")), presets=("lion_k",),
                             paths=("constructor",)),
    "cosh_brake_type": Invalid(_one("cosh_brake", _not_bool), TypeError,
                               lambda s: f"Invalid type for cosh_brake: expected bool, got {_type_name(s)}",
                               presets=("auon", "hybrid_auon")),
}

INVALID_COMBOS = [(name, path) for name, case in INVALID.items() for path in case.paths]
KNOB_CASES = {name: knobs_for(name).error_cases for name in PRESETS if knobs_for(name).error_cases}


def _snapshot(obj: Any) -> str:
    """A comparable picture of a group dict / param_groups list: tensors by identity, the rest by repr
    (repr, so that NaN values compare equal to themselves)."""
    def walk(o):
        if isinstance(o, torch.Tensor):
            return f"<tensor {id(o)}>"
        if isinstance(o, dict):
            return {k: walk(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return type(o)(walk(v) for v in o)
        return o
    return repr(walk(obj))


def _invalid_presets(case: Invalid, path: str, keys: tuple[str, ...] = ()) -> list[str]:
    presets = list(case.presets or PRESETS)
    if path == "constructor" and keys and case.presets is None:
        # prefer presets whose constructor takes the key (the path under test), when there are any
        taking = [p for p in presets if all(k in constructor_args(PRESETS[p]) for k in keys)]
        presets = taking or presets
    return presets


def _split(cls, settings: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Settings the constructor takes, and the rest (group keys)."""
    args = constructor_args(cls)
    return {k: v for k, v in settings.items() if k in args}, {k: v for k, v in settings.items() if k not in args}


def _base_optimizer(cls, context: dict[str, Any], seed: int):
    """A stepped optimizer over a hidden matrix and a vector, with its parameters."""
    gen = torch.Generator().manual_seed(seed)
    params = {"hidden.weight": nn.Parameter(torch.randn(4, 3, generator=gen)),
              "hidden.bias": nn.Parameter(torch.randn(4, generator=gen))}
    opt = cls([{"params": [("hidden.weight", params["hidden.weight"])], "role": "hidden"},
               {"params": [("hidden.bias", params["hidden.bias"])], "role": "vector"}], **context)
    return opt, params


def _step(opts_params, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    grads = {name: torch.randn(p.shape, generator=gen) for name, p in opts_params[0][1].items()}
    for opt, params in opts_params:
        second = {}
        for name, p in params.items():
            p.grad = grads[name].clone()
            second[p] = grads[name].clone() * 0.5
        opt.step(second_grads=second)


def check_invalid(cls, settings: dict[str, Any], group_keys: Mapping[str, Any], roles: tuple[str, ...],
                  error: type[Exception], message: str, path: str, context: dict[str, Any], seed: int) -> None:
    if path == "constructor":
        ctor, in_group = _split(cls, settings)
        gen = torch.Generator().manual_seed(seed)
        tensors = {"hidden": ("hidden.weight", nn.Parameter(torch.randn(4, 3, generator=gen))),
                   "vector": ("hidden.bias", nn.Parameter(torch.randn(4, generator=gen)))}
        groups = [{"params": [tensors[role]], "role": role, **group_keys, **in_group} for role in roles]
        before, values = _snapshot(groups), {r: t[1].detach().clone() for r, t in tensors.items()}
        with pytest.raises(error, match=exact(message)):
            cls(groups, **context, **ctor)
        assert _snapshot(groups) == before, "the constructor modified the caller's groups"
        for role, (_, t) in tensors.items():
            assert torch.equal(t, values[role]) and t.grad is None, f"the constructor modified {role}'s tensor"
        return
    # add_param_group on an optimizer that has stepped; a twin never sees the bad group
    opt, params = _base_optimizer(cls, context, seed)
    twin, twin_params = _base_optimizer(cls, context, seed)
    _step([(opt, params), (twin, twin_params)], seed + 1)
    _step([(opt, params), (twin, twin_params)], seed + 2)
    groups_before, state_before = _snapshot(opt.param_groups), copy.deepcopy(
        {name: dict(opt.state[p]) for name, p in params.items()})
    values_before = {name: p.detach().clone() for name, p in params.items()}
    new = nn.Parameter(torch.randn(5, 3, generator=torch.Generator().manual_seed(seed + 3)))
    new_before = new.detach().clone()
    group = {"params": [("new.weight", new)], "role": "hidden", **group_keys, **settings}
    group_before = _snapshot(group)
    with pytest.raises(error, match=exact(message)):
        opt.add_param_group(group)
    assert _snapshot(group) == group_before, "add_param_group modified the caller's group"
    assert torch.equal(new, new_before) and new not in opt.state
    assert _snapshot(opt.param_groups) == groups_before, "a rejected group changed param_groups"
    for name, p in params.items():
        assert torch.equal(p, values_before[name]), f"a rejected group changed {name}"
        state = opt.state[p]
        assert state.keys() == state_before[name].keys()
        for key, value in state.items():
            assert not isinstance(value, torch.Tensor) or torch.equal(value, state_before[name][key]), (name, key)
    _step([(opt, params), (twin, twin_params)], seed + 4)  # ... and it steps exactly like the twin
    for name in params:
        assert torch.equal(params[name], twin_params[name]), f"{name} differs from the twin's"
    assert_same_state(opt, params, twin, twin_params)


@parametrized("invalid", "case_name,path", INVALID_COMBOS)
def test_invalid_hyperparameters(case_name, path, request, property_cases):
    case = INVALID[case_name]

    @st.composite
    def cases(draw):
        settings = draw(case.settings)
        preset = draw(st.sampled_from(_invalid_presets(case, path, tuple(settings))))
        cls = PRESETS[preset]
        # other, valid hyperparameters of the preset around the invalid one
        context = draw(preset_kwargs(cls, structural=True, exclude=tuple(settings) + ("noise_adaptive",)))
        return preset, settings, context, draw(seeds)

    def check(drawn):
        preset, settings, context, seed = drawn
        note(f"preset {preset!r}, invalid settings {settings!r}, other arguments {context!r}")
        check_invalid(PRESETS[preset], settings, case.group, ("hidden",), case.error, case.message(settings), path,
                      context, seed)

    run_property(request, property_cases, "invalid_hyperparameters", cases(), check, max_examples=12)


@parametrized("invalid_knobs", "preset", [(name,) for name in KNOB_CASES])
def test_invalid_preset_arguments_from_conformance_knobs(preset, request, property_cases):
    """The conformance suite's own error cases of each preset (tests/conformance/presets.py), each
    with generated valid hyperparameters around it: exact message, nothing mutated."""
    cls = PRESETS[preset]

    @st.composite
    def cases(draw):
        error_case: ErrorCase = draw(st.sampled_from(KNOB_CASES[preset]))
        keys = tuple(error_case.options) + tuple(error_case.group)
        context = draw(preset_kwargs(cls, structural=True, exclude=keys + ("noise_adaptive",)))
        return error_case, context, draw(seeds)

    def check(drawn):
        error_case, context, seed = drawn
        note(f"error case {error_case.id!r}")
        check_invalid(cls, dict(error_case.options), error_case.group, error_case.roles, error_case.error,
                      error_case.message, "constructor", context, seed)

    run_property(request, property_cases, "invalid_hyperparameters", cases(), check, max_examples=8)


ALL_COMBOS: dict[str, list[tuple]] = {
    "lmo": LMO_COMBOS, "polar": POLAR_COMBOS, "polar_scale": POLAR_SCALE_COMBOS, "finite": FINITE_COMBOS,
    "finite_edge": EDGE_COMBOS, "zero_size": ZERO_SIZE_COMBOS, "resume": RESUME_COMBOS, "invalid": INVALID_COMBOS,
    "invalid_knobs": [(name,) for name in KNOB_CASES],
}
