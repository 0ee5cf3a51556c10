"""Property ``invalid_hyperparameters``: invalid values (``invalid_cases``) raise the documented error
type with the exact message, and nothing is mutated: the caller's groups and tensors, and on
``add_param_group`` the optimizer's groups, state and parameters, which then step exactly like a
twin that never saw the bad group."""
from __future__ import annotations

import copy
import re
from typing import Any, Mapping

import pytest
import torch
from hypothesis import note
from hypothesis import strategies as st
from torch import nn

from steepest.optim import PRESETS

from conformance.presets import ErrorCase
from properties.invalid_cases import INVALID, INVALID_COMBOS, KNOB_CASES, Invalid
from properties.known_bugs import parametrized
from properties.models import assert_same_state
from properties.runner import run_property
from properties.strategies import constructor_args, preset_kwargs, seeds

pytestmark = pytest.mark.usefixtures("one_thread")


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


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
