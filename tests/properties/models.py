"""Models, gradients and state checks shared by the optimizer properties (``finite_updates``,
``state_dict_resume``, ``invalid_hyperparameters``): one named param group per role built from
``strategies.param_specs``, gradients from ``strategies.make_tensor``."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from steepest.roles import ROLES

from properties.strategies import F64, make_tensor, scaled


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
