"""Validation of a parameter group's keys, with exact, stable error messages (the checks
themselves are in :mod:`steepest.optim.checks`; each stage-1 transform validates its own keys).

Every check raises ``TypeError`` for a value of the wrong type and ``ValueError`` for a value out of
range; tests match these messages, so change them only on purpose.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Mapping

from ..constraints.registry import CONSTRAINT_NAMES
from ..distributed import is_dtensor
from ..geometry import GEOMETRY_NAMES, LAYOUTS, geometry_class
from ..polar import NS_DTYPE_NAMES, NS_FORMS, SCHEDULE_NAMES
from ..roles import ROLES
from .checks import MIN_EPS, _number, check_choice, check_lr, check_ns, check_nonnegative, check_ns_steps, check_positive  # noqa: F401 (MIN_EPS: public)
from .noise import NOISE_RULES, NOISE_SOURCES
from .transforms import TRANSFORMS as TRANSFORM_TABLE

#: the names the group key ``transform`` accepts (the keys of :data:`~steepest.optim.transforms.TRANSFORMS`)
TRANSFORMS = tuple(TRANSFORM_TABLE)

def check_noise_keys(group: Mapping[str, Any]) -> None:
    """The noise-adaptive layerwise rates' keys (LANTON)."""
    if not isinstance(group["noise_adaptive"], bool):
        raise TypeError(f"Invalid type for noise_adaptive: expected bool, got {type(group['noise_adaptive']).__name__}")
    if not 0.0 <= _number("noise_beta", group["noise_beta"]) < 1.0:
        raise ValueError(f"Invalid noise_beta value: {group['noise_beta']}; expected 0 <= noise_beta < 1")
    check_choice("noise_source", group["noise_source"], NOISE_SOURCES)
    check_choice("noise_rule", group["noise_rule"], NOISE_RULES)
    alpha = _number("noise_alpha", group["noise_alpha"])
    if not 0.0 <= alpha < math.inf:  # "not": NaN is rejected too
        raise ValueError(f"Invalid noise_alpha value: {group['noise_alpha']}; expected a finite number >= 0")
    every = group["noise_every"]
    if isinstance(every, bool) or not isinstance(every, numbers.Integral):
        raise TypeError(f"Invalid type for noise_every: expected int, got {type(every).__name__}")
    if every < 1:
        raise ValueError(f"Invalid noise_every value: {every}; expected an integer >= 1")
    check_ns("noise_ns", group["noise_ns"], SCHEDULE_NAMES)
    check_nonnegative("noise_eps", group["noise_eps"])


CONSTRAINT_UNITS = ("spectral", "rms")


def check_constraint_keys(group: Mapping[str, Any]) -> None:
    """The stage-4 constraint's keys: ``constraint`` (a registered name or None), ``constraint_bound``
    (> 0) and ``constraint_units``."""
    if group["constraint"] is not None:
        check_choice("constraint", group["constraint"], CONSTRAINT_NAMES)
    check_positive("constraint_bound", group["constraint_bound"])
    check_choice("constraint_units", group["constraint_units"], CONSTRAINT_UNITS)


def check_langevin_keys(group: Mapping[str, Any]) -> None:
    """Langevin dynamics' keys: ``langevin_temperature`` (a finite number >= 0) and
    ``langevin_seed`` (an integer >= 0)."""
    temperature = _number("langevin_temperature", group["langevin_temperature"])
    if not 0.0 <= temperature < math.inf:  # "not": NaN is rejected too
        raise ValueError(f"Invalid langevin_temperature value: {group['langevin_temperature']}; "
                         f"expected a finite number >= 0")
    seed = group["langevin_seed"]
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"Invalid type for langevin_seed: expected int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"Invalid langevin_seed value: {seed}; expected an integer >= 0")


def check_group(group: Mapping[str, Any], transform_of=lambda group: TRANSFORM_TABLE[group["transform"]]) -> None:
    """Validate every hyperparameter a parameter group of the engine carries; ``transform_of(group)``
    is the group's stage-1 transform, which validates its own keys."""
    if group["role"] and group["role"] not in ROLES:  # "" is the engine's "no role"
        raise ValueError(f"Unknown role {group['role']!r}; expected one of: {', '.join(ROLES)}")
    check_lr(group["lr"])
    check_nonnegative("weight_decay", group["weight_decay"])
    check_positive("radius", group["radius"])
    check_choice("transform", group["transform"], TRANSFORMS)
    transform_of(group).validate(group)
    check_choice("geometry", group["geometry"], GEOMETRY_NAMES)
    if group["geometry"] == "spectral":
        check_ns("ns", group["ns"], SCHEDULE_NAMES, "Newton-Schulz schedule")
        check_ns_steps(group["ns_steps"])
        check_choice("ns_dtype", group["ns_dtype"], NS_DTYPE_NAMES)
        check_positive("ns_eps", group["ns_eps"])
        check_choice("ns_form", group["ns_form"], NS_FORMS)
    cls = geometry_class(group["geometry"])
    if group["shape_scale"] is not None and group["shape_scale"] not in cls.shape_scales:
        raise ValueError(f"Unknown shape_scale {group['shape_scale']!r} for geometry {group['geometry']!r}; "
                         f"expected one of: {', '.join(cls.shape_scales)}")
    check_choice("layout", group.get("layout", "out_in"), LAYOUTS)
    check_noise_keys(group)
    check_constraint_keys(group)
    check_langevin_keys(group)
    if not isinstance(group["maximize"], bool):
        raise TypeError(f"Invalid type for maximize: expected bool, got {type(group['maximize']).__name__}")


def check_group_params(group: Mapping[str, Any], index: int, geometry: Any, constraint: Any, topology: Any) -> None:
    """The parameters of group ``index``: shapes its geometry accepts, enough dimensions for its
    constraint, and (distributed or not) tensors the optimizer's topology can step."""
    names = group.get("param_names")
    for i, p in enumerate(group["params"]):
        name = names[i] if names else f"param {i} of group {index}"
        geometry.check_shape(p.shape, name)
        if constraint is not None and p.ndim < constraint.min_ndim:
            raise ValueError(f"Constraint {group['constraint']!r} needs parameters with at least "
                             f"{constraint.min_ndim} dimensions, got shape {tuple(p.shape)} for "
                             f"parameter {name!r}")
        if topology is not None:
            topology.check_param(p, name)
        elif is_dtensor(p):
            raise TypeError(f"Parameter {name!r} is a DTensor; pass distributed_mesh=<its DeviceMesh> "
                            f"to the optimizer")
