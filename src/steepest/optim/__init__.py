"""Optimizers: the four-stage engine and the presets built on it."""
from .auon import AuON, HybridAuON
from .diffgrad import DiffGrad
from .engine import GeometryOptimizer
from .group_keys import ENGINE_DEFAULTS
from .lanton import LANTON
from .lion import Lion, LionK
from .mfac import MFAC
from .muon import Muon
from .normuon import NorMuon
from .registry import PRESETS, preset_class
from .scion import Scion
from .signum import Signum

__all__ = ["GeometryOptimizer", "Muon", "NorMuon", "Scion", "AuON", "HybridAuON", "Lion", "LionK", "Signum",
           "DiffGrad", "MFAC", "LANTON", "ENGINE_DEFAULTS", "PRESETS", "preset_class"]
