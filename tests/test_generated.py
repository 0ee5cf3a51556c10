"""The files generated from the preset registry are up to date (``make docs`` rewrites them)."""
from __future__ import annotations

from pathlib import Path

import steepest

ROOT = Path(__file__).resolve().parents[1]


def test_generated_files_match_the_registry(generator):
    stale = [str(path.relative_to(ROOT)) for path in generator.stale()]
    assert not stale, f"generated from the preset registry and stale: {stale}; run `make docs`"


def test_every_registered_preset_is_exported_under_its_class_name():
    from steepest.optim.registry import REGISTRY

    for name, entry in REGISTRY.items():
        assert getattr(steepest, entry.export) is entry.cls, name
        assert entry.export in steepest.__all__ and entry.export in steepest.optim.__all__, name
