"""Library bugs found by the properties, and the parametrization that marks the cases they break.

A library bug these properties find is marked ``xfail(strict=True)`` on exactly the parametrizations
it breaks (``KNOWN_BUGS``, one entry per bug with its cause) until it is fixed: the properties stay
strict, the suite stays green, and the fix turns the marked cases into XPASS failures that ask for
the mark's removal. The 15 bugs found so far are all fixed (CHANGELOG 0.6.0 and 0.7.0).
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest


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
