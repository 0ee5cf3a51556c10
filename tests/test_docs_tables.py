"""The generated tables of ``docs/choosing.md`` match the code.

The page holds the code that builds each table (a ``role_table()`` over every registered preset and
role, read from ``steepest.explain_rows``; a ``benchmark_table()`` of the benchmark suite's preset
settings) and a static copy of each table between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``
markers. Here the page's own code runs again and its output must equal the static copy, so a change
to a preset's defaults or to the benchmark's settings fails until the page is updated (``make docs``
rewrites it).
"""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import steepest
from steepest.roles import ROLES

PAGE = Path(__file__).resolve().parents[1] / "docs" / "choosing.md"


@pytest.fixture(scope="module")
def page(generator) -> tuple[str, dict]:
    """The page's text and the namespace its runnable blocks leave behind (run in a scratch
    directory by ``make docs``'s own runner)."""
    text = PAGE.read_text(encoding="utf-8")
    return text, generator.run_page(text, PAGE)


def static_table(text: str, name: str) -> str:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    assert text.count(begin) == 1 and text.count(end) == 1, f"{PAGE.name} needs one {begin} ... {end} block"
    return text.split(begin, 1)[1].split(end, 1)[0].strip()


@pytest.mark.parametrize("name, function", [("role-table", "role_table"), ("bench-table", "benchmark_table")])
def test_static_table_equals_the_generated_one(page, name, function):
    text, namespace = page
    generated = namespace[function]().strip()
    assert static_table(text, name) == generated, (
        f"docs/choosing.md's {name} is stale; run `make docs`")


def test_role_table_lists_every_preset_and_role(page):
    text, _ = page
    rows = [line.split("|")[1:-1] for line in static_table(text, "role-table").splitlines()[2:]]
    for name in steepest.names():
        roles = [role.strip() for preset, roles, *_ in rows if preset.strip().startswith(f"`{name}`")
                 for role in roles.split(",")]
        assert sorted(roles) == sorted(ROLES), f"preset {name!r}: roles {roles}"


def test_role_table_lrs_are_the_constructors_defaults(page):
    """Independent of explain_rows: the table's lr for hidden matrices is each preset's ``lr`` default."""
    text, _ = page
    rows = [[cell.strip() for cell in line.split("|")[1:-1]]
            for line in static_table(text, "role-table").splitlines()[2:]]
    for name in steepest.names():
        default_lr = inspect.signature(steepest.PRESETS[name]).parameters["lr"].default
        listed = [float(lr) for preset, roles, _, _, lr in rows
                  if preset.startswith(f"`{name}`") and "hidden" in roles.split(", ")]
        assert listed == [pytest.approx(default_lr, rel=1e-6)], f"{name}: table says {listed}, constructor {default_lr}"
