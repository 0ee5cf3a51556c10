"""Optimizers: the four-stage engine and the presets built on it."""
from .engine import GeometryOptimizer
from .group_keys import ENGINE_DEFAULTS
from .registry import PRESETS, REGISTRY, preset_class

# The preset classes, generated from the registry by `make docs` (tools/generate.py):
# <generated: presets>
from .auon import AuON, HybridAuON
from .diffgrad import DiffGrad
from .lanton import LANTON
from .lion import Lion, LionK
from .mfac import MFAC
from .muon import Muon
from .normuon import NorMuon
from .regnewton import RegularizedNewton
from .scion import Scion
from .signum import Signum
PRESET_EXPORTS = ("Muon", "Scion", "AuON", "HybridAuON", "NorMuon", "Lion", "LionK", "Signum", "DiffGrad", "MFAC", "LANTON", "RegularizedNewton")
# </generated: presets>

__all__ = ["GeometryOptimizer", *PRESET_EXPORTS, "ENGINE_DEFAULTS", "PRESETS", "REGISTRY", "preset_class"]
