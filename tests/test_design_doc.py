"""docs/design.md stays true: every file and folder it names exists, and each checklist has at most
three steps."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "design.md"
PATH = re.compile(r"`((?:src|tests|tools|docs)/[^`<>\s]*)`")


def test_every_named_path_exists():
    text = PAGE.read_text(encoding="utf-8")
    paths = PATH.findall(text)
    assert len(paths) > 20
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"docs/design.md names paths that do not exist: {missing}"


def test_checklists_have_at_most_three_steps():
    text = PAGE.read_text(encoding="utf-8").split("## Checklists", 1)[1].split("\n## ", 1)[0]
    lists = re.split(r"\n\*\*Add a ", text)[1:]
    assert [item.split("**", 1)[0] for item in lists] == ["preset", "geometry", "transform", "constraint"]
    for item in lists:
        steps = re.findall(r"^(\d+)\. ", item, re.M)
        assert steps and int(steps[-1]) <= 3, item[:40]
