"""Shared output helpers of the benchmark reports: strict JSON, markdown tables, and writing both."""
from __future__ import annotations

import json
import math
from pathlib import Path


def clean_json(value):
    """``value`` made strict-JSON safe: non-finite floats become ``None``, tuples lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return value


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table with ``header`` and ``rows`` (cells already formatted)."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_markdown_and_json(out_dir: Path, stem: str, markdown: str, data: dict) -> dict[str, Path]:
    """Write ``<stem>.md`` (``markdown``) and ``<stem>.json`` (``data`` through :func:`clean_json`)
    into ``out_dir`` (created); returns their paths under ``report`` and ``json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"report": out_dir / f"{stem}.md", "json": out_dir / f"{stem}.json"}
    paths["report"].write_text(markdown, encoding="utf-8")
    paths["json"].write_text(json.dumps(clean_json(data), indent=1), encoding="utf-8")
    return paths
