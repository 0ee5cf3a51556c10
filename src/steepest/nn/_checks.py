"""Argument checks and the working dtype shared by the modules of ``steepest.nn``."""
from __future__ import annotations

from ..constraints.base import work_dtype

__all__ = ["positive_int", "work_dtype"]


def positive_int(name: str, value) -> int:
    """``value`` if it is an int >= 1 (bools refused), else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Invalid {name}: {value!r}; expected an integer >= 1")
    return value


