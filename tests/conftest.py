"""Fixtures shared by the test modules."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Run a module on one torch thread: tiny models run several times faster (two threads spin
    on 2 cores), and results do not depend on the thread count. The count is restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def generator():
    """``tools/generate.py`` (``make docs``) as a module: what the registry generates."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("generate", Path(__file__).resolve().parents[1] / "tools" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- property-based tests (tests/properties) ------------------------------------------------------
_PROPERTY_CASES = pytest.StashKey[dict]()


@pytest.fixture(scope="session")
def property_cases(request):
    """``{property: [generated cases, parametrizations]}`` of the property-based tests
    (tests/properties), filled as its properties run and printed in the terminal summary below."""
    return request.config.stash.setdefault(_PROPERTY_CASES, {})


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    counts = config.stash.get(_PROPERTY_CASES, None)
    if counts:
        parts = [f"{name} {cases} cases ({runs} parametrizations)" for name, (cases, runs) in counts.items()]
        terminalreporter.write_line("properties (hypothesis, derandomized): " + ", ".join(parts))
