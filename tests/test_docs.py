"""Every code example in ``docs/*.md`` runs.

Each page's fenced ```` ```python ```` blocks are executed in order in one namespace (so a later block
may use an earlier block's names), in a temporary working directory. A block fenced as
```` ```python no-run ```` is shown but not executed (torchrun scripts, multi-GPU recipes); every
such block must say why on the fence line (``no-run: <reason>``), so skipping is never silent. A page whose examples need an optional extra
starts a block with ```` ```python requires: transformers, accelerate ````: the page is skipped
(``pytest.importorskip``) when one of those packages is missing; the test set-up installs them all.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```\s*$", re.S | re.M)


def blocks(page: Path) -> list[tuple[str, str, int]]:
    """``(info, code, line)`` of every python block of ``page``."""
    text = page.read_text(encoding="utf-8")
    return [(m.group(1).strip(), m.group(2), text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)]


PAGES = sorted(DOCS.rglob("*.md"))


def test_docs_exist_and_have_examples():
    assert (DOCS / "index.md").exists(), "docs/index.md is the docs' entry page"
    assert sum(len(blocks(p)) for p in PAGES) > 0


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_page_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for info, code, line in blocks(page):
        if info.startswith("no-run"):
            assert info.startswith("no-run:") and len(info) > len("no-run:") + 3, \
                f"{page.name}:{line}: a no-run block must give its reason (```python no-run: why)"
            compile(code, f"{page.name}:{line}", "exec")  # still valid Python
            continue
        if info.startswith("requires:"):
            for module in info[len("requires:"):].split(","):
                pytest.importorskip(module.strip())
        else:
            assert info == "", f"{page.name}:{line}: unknown fence info {info!r}"
        exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
