"""Property ``finite_updates``: from finite gradients no NaN or Inf ever appears in parameters or
state, for every preset, dtype and value regime (and at the edges of the valid hyperparameters)."""
from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
from hypothesis import strategies as st

from steepest.optim import MFAC, PRESETS, RegularizedNewton
from steepest.optim.validation import MIN_EPS
from steepest.roles import ROLES

from properties.known_bugs import parametrized
from properties.models import build_groups, gradient, make_params, state_problems
from properties.runner import run_property
from properties.strategies import (DTYPES, group_overrides, param_specs, preset_kwargs, regime_grid, seeds,
                                   tensor_kinds)

pytestmark = pytest.mark.usefixtures("one_thread")


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
            overrides[role] = draw(group_overrides(role_shapes, allow_transform=cls not in (MFAC, RegularizedNewton)))
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
    presets = [p for p in PRESETS if p not in ("mfac", "regnewton")] if edge == "adam_eps_tiny" else list(PRESETS)
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
