"""Argument checks and the working dtype shared by the modules of ``steepest.nn``."""
from __future__ import annotations

import torch
from torch import Tensor


def positive_int(name: str, value) -> int:
    """``value`` if it is an int >= 1 (bools refused), else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Invalid {name}: {value!r}; expected an integer >= 1")
    return value


def work_dtype(t: Tensor) -> torch.dtype:
    """float64 for float64 tensors, float32 otherwise (constrained maps are computed in float32)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32
