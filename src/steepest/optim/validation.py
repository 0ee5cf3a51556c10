"""Validation of hyperparameters with exact, stable error messages.

Every check raises ``TypeError`` for a value of the wrong type and ``ValueError`` for a value out of
range; tests match these messages, so change them only on purpose.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Mapping

from ..geometry import GEOMETRY_NAMES, LAYOUTS, geometry_class
from ..polar import NS_DTYPE_NAMES, SCHEDULE_NAMES
from ..roles import ROLES
from .noise import NOISE_RULES, NOISE_SOURCES

TRANSFORMS = ("momentum", "adam", "lion", "diffgrad")
ON_NONFINITE = ("raise", "skip")

#: The smallest Adam/diffGrad ``eps``: float32's smallest normal number, 2**-126. A smaller eps is
#: added to the float32 state of float32/bfloat16 parameters as 0 (below float32's smallest
#: subnormal) or as a subnormal that GPUs flush to 0, and a zero gradient entry then gives 0/0.
MIN_EPS = 2.0 ** -126


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Invalid type for {name}: expected a real number, got {type(value).__name__}")
    return float(value)


def check_lr(lr: Any) -> None:
    if not _number("lr", lr) >= 0.0:  # "not >=": NaN is rejected too
        raise ValueError(f"Invalid learning rate: {lr}")


def check_momentum(momentum: Any) -> None:
    if not 0.0 <= _number("momentum", momentum) < 1.0:
        raise ValueError(f"Invalid momentum value: {momentum}; expected 0 <= momentum < 1")


def check_betas(betas: Any) -> None:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"Invalid betas: expected a pair of numbers, got {betas!r}")
    for i, b in enumerate(betas):
        if not 0.0 <= _number(f"betas[{i}]", b) < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {b}")


def as_betas(betas: Any) -> tuple[float, float]:
    """``betas`` validated (:func:`check_betas`), as a tuple."""
    check_betas(betas)
    return tuple(betas)


def check_nonnegative(name: str, value: Any) -> None:
    if not _number(name, value) >= 0.0:  # "not >=": NaN is rejected too
        raise ValueError(f"Invalid {name} value: {value}")


def check_positive(name: str, value: Any) -> None:
    if not _number(name, value) > 0.0:
        raise ValueError(f"Invalid {name} value: {value}; expected a positive number")


def check_eps(name: str, value: Any) -> None:
    """A denominator guard added to float32 state: positive and at least :data:`MIN_EPS`."""
    check_positive(name, value)
    if float(value) < MIN_EPS:
        raise ValueError(f"Invalid {name} value: {value}; expected at least {MIN_EPS!r} (float32's smallest "
                         f"normal number: a smaller eps rounds to 0 in float32 optimizer state)")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; expected one of: {', '.join(choices)}")


def check_compile(value: Any) -> None:
    """The optimizers' ``compile`` setting: ``True``, ``False`` or ``"auto"``."""
    if value is True or value is False or (isinstance(value, str) and value == "auto"):
        return
    if isinstance(value, str):
        raise ValueError(f"Unknown compile {value!r}; expected True, False or 'auto'")
    raise TypeError(f"Invalid type for compile: expected bool or 'auto', got {type(value).__name__}")


def check_ns_steps(steps: Any) -> None:
    if steps is None:
        return
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"Invalid type for ns_steps: expected an int or None, got {type(steps).__name__}")
    if not 1 <= steps < 100:
        raise ValueError(f"Invalid ns_steps: {steps}; expected an integer in [1, 100)")


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
    check_choice("noise_ns", group["noise_ns"], SCHEDULE_NAMES)
    check_nonnegative("noise_eps", group["noise_eps"])


CONSTRAINT_UNITS = ("spectral", "rms")


def check_constraint_keys(group: Mapping[str, Any]) -> None:
    """The stage-4 constraint's keys: ``constraint`` (a registered name or None), ``constraint_bound``
    (> 0) and ``constraint_units``."""
    from ..constraints.registry import CONSTRAINT_NAMES  # the constraints package imports the engine's deps

    if group["constraint"] is not None:
        check_choice("constraint", group["constraint"], CONSTRAINT_NAMES)
    check_positive("constraint_bound", group["constraint_bound"])
    check_choice("constraint_units", group["constraint_units"], CONSTRAINT_UNITS)


def check_group(group: Mapping[str, Any]) -> None:
    """Validate every hyperparameter a parameter group of the engine carries."""
    if group["role"] and group["role"] not in ROLES:  # "" is the engine's "no role"
        raise ValueError(f"Unknown role {group['role']!r}; expected one of: {', '.join(ROLES)}")
    check_lr(group["lr"])
    check_nonnegative("weight_decay", group["weight_decay"])
    check_positive("radius", group["radius"])
    check_choice("transform", group["transform"], TRANSFORMS)
    if group["transform"] == "momentum":
        check_momentum(group["momentum"])
        if not isinstance(group["nesterov"], bool):
            raise TypeError(f"Invalid type for nesterov: expected bool, got {type(group['nesterov']).__name__}")
    else:
        check_betas(group["betas"])
        if group["transform"] != "lion":
            check_eps("eps", group["eps"])  # eps = 0 would turn a zero gradient into 0/0
    check_choice("geometry", group["geometry"], GEOMETRY_NAMES)
    if group["geometry"] == "spectral":
        check_choice("Newton-Schulz schedule", group["ns"], SCHEDULE_NAMES)
        check_ns_steps(group["ns_steps"])
        check_choice("ns_dtype", group["ns_dtype"], NS_DTYPE_NAMES)
        check_positive("ns_eps", group["ns_eps"])
    cls = geometry_class(group["geometry"])
    if group["shape_scale"] is not None and group["shape_scale"] not in cls.shape_scales:
        raise ValueError(f"Unknown shape_scale {group['shape_scale']!r} for geometry {group['geometry']!r}; "
                         f"expected one of: {', '.join(cls.shape_scales)}")
    check_choice("layout", group.get("layout", "out_in"), LAYOUTS)
    check_noise_keys(group)
    check_constraint_keys(group)
    if not isinstance(group["maximize"], bool):
        raise TypeError(f"Invalid type for maximize: expected bool, got {type(group['maximize']).__name__}")
