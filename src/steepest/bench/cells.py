"""The unit of a benchmark run: one (task, optimizer, learning rate, seed) "cell", saved as it ends.

A run directory holds ``cells/<task>/<optimizer>/lrx<multiplier>-seed<seed>.json``, one file per
finished cell, written atomically (a temporary file renamed into place), so a run killed at any
moment loses at most the cell in progress. Each file stores the cell's full specification and the
steepest version that ran it; a cell counts as finished only when its stored specification equals
the planned one and it was recorded by the running version, so changing a budget or a learning
rate, or upgrading steepest, re-runs the affected cells instead of mixing old numbers into new
tables.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .formatting import clean_json


@dataclass(frozen=True)
class Cell:
    """What one cell trains: ``optimizer`` at ``lr`` (= ``lr_multiplier`` x its base lr) on ``task``."""

    task_key: str
    task: dict          # Task.spec()
    optimizer: str
    lr_multiplier: float
    lr: float
    seed: int
    budget: dict        # Budget.to_dict()
    #: record per-layer sharpness and noise (``steepest bench --diagnostics``: the first seed of each lr)
    diagnostics: bool = False
    #: constructor keywords added to the peer's own (``SuiteConfig.peer_options``: a study's candidates)
    options: dict = field(default_factory=dict)
    #: iterate averaging (``SuiteConfig.average``: ``"ema"`` or ``"swa"``), ``None`` without
    average: str | None = None

    @property
    def name(self) -> str:
        return f"{self.task_key}/{self.optimizer}/lrx{self.lr_multiplier:g}-seed{self.seed}"

    def to_dict(self) -> dict:
        values = asdict(self)
        for key in ("diagnostics", "options", "average"):
            if not values[key]:
                del values[key]  # cells planned without them keep matching their saved records
        return values


def library_version() -> str:
    """The running steepest's version (recorded with every cell and partial checkpoint)."""
    from .. import __version__

    return __version__


def write_json_atomic(path: Path, value) -> None:
    """Write ``value`` as strict JSON to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    partial.write_text(json.dumps(clean_json(value), indent=1), encoding="utf-8")
    os.replace(partial, path)


class CellStore:
    """The finished cells of one run directory."""

    def __init__(self, run_dir: str | Path) -> None:
        self.root = Path(run_dir) / "cells"

    def path(self, cell: Cell) -> Path:
        return self.root / cell.task_key / cell.optimizer / f"lrx{cell.lr_multiplier:g}-seed{cell.seed}.json"

    def _read(self, cell: Cell) -> dict | None:
        """The saved record of ``cell`` as planned now, whichever steepest version recorded it."""
        try:
            record = json.loads(self.path(cell).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and record.get("cell") == clean_json(cell.to_dict()) else None

    def load(self, cell: Cell) -> dict | None:
        """The saved record of ``cell``, or ``None`` when it has not finished, was planned
        differently or was recorded by another steepest version."""
        record = self._read(cell)
        return record if record is not None and record.get("steepest") == library_version() else None

    def other_versions(self, cells: list[Cell]) -> dict[str, int]:
        """``{version: count}`` of the cells whose saved record matches its plan but was recorded by
        another steepest version (``"before 0.7"`` for records without one): they run again."""
        counts: dict[str, int] = {}
        for cell in cells:
            record = self._read(cell)
            if record is not None and record.get("steepest") != library_version():
                version = str(record.get("steepest", "before 0.7"))
                counts[version] = counts.get(version, 0) + 1
        return counts

    def save(self, cell: Cell, record: dict) -> Path:
        """Save ``record`` (a dict with the measurements) as ``cell``'s result."""
        path = self.path(cell)
        write_json_atomic(path, {**record, "cell": cell.to_dict(), "steepest": library_version()})
        return path

    def pending(self, cells: list[Cell]) -> list[Cell]:
        """The cells of ``cells`` without a finished record."""
        return [c for c in cells if self.load(c) is None]
