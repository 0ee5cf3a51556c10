"""Run a hypothesis property inside a (parametrized) pytest test and count its generated cases.

Every property runs derandomized (``derandomize=True``, no example database): the same cases on
every run and every machine, so CI is reproducible and a strict ``xfail`` of a known bug fails the
same way each time. ``deadline=None``: one case may build several optimizers; the budget is set by
``max_examples`` per parametrization instead.

Shrinking is on for parametrizations expected to pass, so a regression reports a minimal falsifying
example; it is off for those marked ``xfail`` (known bugs), whose failure is already understood and
whose shrinking would only cost time.
"""
from __future__ import annotations

from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

SUPPRESSED = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
              HealthCheck.large_base_example]


def property_settings(max_examples: int, shrink: bool) -> settings:
    phases = (Phase.explicit, Phase.generate) + ((Phase.shrink,) if shrink else ())
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None, phases=phases,
                    suppress_health_check=SUPPRESSED, report_multiple_bugs=False, print_blob=False)


def run_property(request: pytest.FixtureRequest, counts: dict[str, list[int]], name: str,
                 strategy: st.SearchStrategy[Any], check: Callable[[Any], None], *, max_examples: int) -> None:
    """Check ``check(case)`` for ``max_examples`` cases drawn from ``strategy``; count them under
    ``name`` (``counts[name] = [cases, parametrizations]``, printed by tests/conftest.py)."""
    expected_failure = request.node.get_closest_marker("xfail") is not None
    entry = counts.setdefault(name, [0, 0])
    entry[1] += 1

    @property_settings(max_examples, shrink=not expected_failure)
    @given(strategy)
    def prop(case):
        entry[0] += 1
        check(case)

    prop()
