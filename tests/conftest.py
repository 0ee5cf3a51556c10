"""Fixtures shared by the test modules, and the set-up of parallel runs (``pytest -n N``, pytest-xdist)."""
from __future__ import annotations

import os

import pytest
import torch


def pytest_configure(config):
    """Under pytest-xdist every worker runs torch on one thread, and so do the processes it starts
    (``OMP_NUM_THREADS``): N workers then share N cores instead of each spinning on all of them."""
    if hasattr(config, "workerinput"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


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


def pytest_sessionfinish(session):
    """An xdist worker sends its property counts to the controller (:func:`pytest_testnodedown`)."""
    config = session.config
    if hasattr(config, "workeroutput"):
        config.workeroutput["property_cases"] = {k: list(v) for k, v in config.stash.get(_PROPERTY_CASES, {}).items()}


@pytest.hookimpl(optionalhook=True)  # an xdist hook: absent without pytest-xdist
def pytest_testnodedown(node, error):
    """The controller adds up the property counts of its workers."""
    counts = node.config.stash.setdefault(_PROPERTY_CASES, {})
    for name, (cases, runs) in getattr(node, "workeroutput", {}).get("property_cases", {}).items():
        before = counts.get(name, [0, 0])
        counts[name] = [before[0] + cases, before[1] + runs]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    counts = config.stash.get(_PROPERTY_CASES, None)
    if counts:
        parts = [f"{name} {cases} cases ({runs} parametrizations)" for name, (cases, runs) in counts.items()]
        terminalreporter.write_line("properties (hypothesis, derandomized): " + ", ".join(parts))
