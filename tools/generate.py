"""Write the files generated from the preset registry (``make docs``); ``--check`` only compares.

Generated, each between ``<generated: NAME>`` markers (``# <generated: NAME>`` lines in Python,
``<!-- NAME:begin -->`` / ``<!-- NAME:end -->`` in markdown):

- ``src/steepest/optim/__init__.py`` and ``src/steepest/__init__.py``: the imports of every
  registered preset class and the tuple ``PRESET_EXPORTS`` of their names (used in ``__all__``);
- ``docs/choosing.md``: the role table and the benchmark table, built by the page's own code blocks.

``tests/test_generated.py`` runs the check, so a registry change fails the tests until
``make docs`` has run.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNNABLE = re.compile(r"^```python\n(.*?)^```\s*$", re.S | re.M)  # blocks without fence info run


def export_block(package: str) -> str:
    """The import lines of the preset classes, relative to ``package``, and ``PRESET_EXPORTS``."""
    from steepest.optim.registry import REGISTRY

    modules: dict[str, list[str]] = defaultdict(list)
    for entry in REGISTRY.values():
        modules[entry.cls.__module__].append(entry.export)
    lines = []
    for module in sorted(modules):
        relative = "." + module[len(package) + 1:] if module.startswith(package + ".") else module
        lines.append(f"from {relative} import {', '.join(sorted(modules[module]))}")
    names = ", ".join(f'"{entry.export}"' for entry in REGISTRY.values())
    lines.append(f"PRESET_EXPORTS = ({names})")
    return "\n".join(lines)


def replace_python_block(text: str, name: str, body: str) -> str:
    begin, end = f"# <generated: {name}>", f"# </generated: {name}>"
    head, rest = text.split(begin + "\n", 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def run_page(text: str, page: Path) -> dict:
    """The namespace a markdown page's runnable blocks leave behind, run in a scratch directory."""
    namespace: dict = {"__name__": "docs_choosing_tables"}
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)
        try:
            for code in RUNNABLE.findall(text):
                exec(compile(code, str(page), "exec"), namespace)
        finally:
            os.chdir(cwd)
    return namespace


def choosing_tables(text: str, page: Path) -> str:
    """``docs/choosing.md`` with its tables rebuilt by the page's own code."""
    namespace = run_page(text, page)
    for name, function in (("role-table", "role_table"), ("bench-table", "benchmark_table")):
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{begin}\n{namespace[function]().strip()}\n{end}{tail}"
    return text


def generated() -> dict[Path, str]:
    """Every generated file's path and the text it must have."""
    out = {}
    for path, package in ((ROOT / "src/steepest/optim/__init__.py", "steepest.optim"),
                          (ROOT / "src/steepest/__init__.py", "steepest")):
        out[path] = replace_python_block(path.read_text(encoding="utf-8"), "presets", export_block(package))
    page = ROOT / "docs" / "choosing.md"
    out[page] = choosing_tables(page.read_text(encoding="utf-8"), page)
    return out


def stale() -> list[Path]:
    """The generated files whose text differs from what the registry gives."""
    return [path for path, text in generated().items() if path.read_text(encoding="utf-8") != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only list the stale files (exit 1 if any)")
    args = parser.parse_args(argv)
    if args.check:
        files = stale()
        for path in files:
            print(f"stale: {path.relative_to(ROOT)}")
        return 1 if files else 0
    for path, text in generated().items():
        if path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
