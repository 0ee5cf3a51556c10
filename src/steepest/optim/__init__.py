"""Optimizers: the four-stage engine and the presets built on it."""
from .engine import ENGINE_DEFAULTS, GeometryOptimizer
from .muon import Muon
from .registry import PRESETS, preset_class
from .scion import Scion

__all__ = ["GeometryOptimizer", "Muon", "Scion", "ENGINE_DEFAULTS", "PRESETS", "preset_class"]
