"""Property ``state_dict_resume``: saving and loading the state dict at a random step continues
bit-identically (parameters and every state tensor), through a deep copy, ``torch.save`` /
``torch.load(weights_only=True)`` or pickle."""
from __future__ import annotations

import copy
import io
import pickle
from typing import Any

import pytest
import torch
from hypothesis import strategies as st
from torch import nn

from steepest.geometry import GEOMETRIES, GEOMETRY_NAMES
from steepest.optim import MFAC, PRESETS, RegularizedNewton
from steepest.roles import ROLES

from properties.known_bugs import parametrized
from properties.models import assert_same_state, build_groups, gradient, make_params
from properties.runner import run_property
from properties.strategies import DTYPES, TENSOR_KINDS, group_overrides, param_specs, preset_kwargs, seeds

pytestmark = pytest.mark.usefixtures("one_thread")


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
        keys = draw(group_overrides(role_shapes, allow_transform=cls not in (MFAC, RegularizedNewton)))
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
