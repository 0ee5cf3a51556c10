"""Registry of presets by name: ``steepest.create``/``for_model`` look names up here, and the
conformance suite runs every check over every entry."""
from __future__ import annotations

from .auon import AuON, HybridAuON
from .engine import GeometryOptimizer
from .diffgrad import DiffGrad
from .lanton import LANTON
from .lion import Lion, LionK
from .mfac import MFAC
from .muon import Muon
from .normuon import NorMuon
from .scion import Scion
from .signum import Signum

PRESETS: dict[str, type[GeometryOptimizer]] = {
    "muon": Muon,
    "scion": Scion,
    "auon": AuON,
    "hybrid_auon": HybridAuON,
    "normuon": NorMuon,
    "lion": Lion,
    "lion_k": LionK,
    "signum": Signum,
    "diffgrad": DiffGrad,
    "mfac": MFAC,
    "lanton": LANTON,
}


def preset_class(name: str) -> type[GeometryOptimizer]:
    """The preset class registered under ``name`` (case-insensitive)."""
    key = name.lower() if isinstance(name, str) else name
    try:
        return PRESETS[key]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown optimizer preset {name!r}; expected one of: {', '.join(PRESETS)}") from None
