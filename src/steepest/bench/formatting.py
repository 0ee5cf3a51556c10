"""Shared output helpers of the benchmark reports: strict JSON and markdown tables."""
from __future__ import annotations

import math


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
