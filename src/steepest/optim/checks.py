"""The checks every hyperparameter goes through, with exact, stable error messages.

Every check raises ``TypeError`` for a value of the wrong type and ``ValueError`` for a value out of
range; tests match these messages, so change them only on purpose. The group-level validation that
combines them is :mod:`steepest.optim.validation`.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import torch

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
    """A learning rate: a real number >= 0, or a 1-element Tensor holding one (as torch's
    optimizers accept, for compiled and capturable loops)."""
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        value = float(lr)
    else:
        value = _number("lr", lr)
    if not value >= 0.0:  # "not >=": NaN is rejected too
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


def check_count(name: str, value: Any) -> None:
    """An int ``>= 1`` (not a bool): ``TypeError`` / ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Invalid type for {name}: expected an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"Invalid {name}: {value}; expected an integer >= 1")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; expected one of: {', '.join(choices)}")


def check_ns(key: str, value: Any, schedules: tuple[str, ...], label: str | None = None) -> None:
    """The group key ``key``, a Newton-Schulz schedule: one of ``schedules`` (an unknown name is
    reported as an unknown ``label``) or a tuple of three finite reals ``(a, b, c)``
    (``torch.optim.Muon``'s ``ns_coefficients``, with its error for another length)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 3:
            raise ValueError("Coefficients must be a tuple of exactly 3 values")
        for i, v in enumerate(value):
            if not math.isfinite(_number(f"{key}[{i}]", v)):
                raise ValueError(f"Invalid {key}[{i}] value: {v}; expected a finite number")
        return
    check_choice(label or key, value, schedules)


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
