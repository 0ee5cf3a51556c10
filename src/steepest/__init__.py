"""steepest: geometry-aware optimizers for PyTorch.

Every optimizer is steepest descent under a norm chosen per layer: a state transform, the linear
minimization oracle of the layer's norm ball, a step size, and decay. Start with
``steepest.for_model(model, "muon")`` and ``print(steepest.explain(optimizer))``.
"""
from . import constraints, diagnostics, geometry, nn, polar, roles
from .explain import explain, explain_rows
from .factory import create, for_model, names
from .lipschitz import lipschitz_bound
from .safestep import SafeStep
from .optim import PRESETS, GeometryOptimizer

# The preset classes, generated from the registry by `make docs` (tools/generate.py):
# <generated: presets>
from .optim.auon import AuON, HybridAuON
from .optim.diffgrad import DiffGrad
from .optim.lanton import LANTON
from .optim.lion import Lion, LionK
from .optim.mfac import MFAC
from .optim.muon import Muon
from .optim.normuon import NorMuon
from .optim.regnewton import RegularizedNewton
from .optim.scion import Scion
from .optim.signum import Signum
PRESET_EXPORTS = ("Muon", "Scion", "AuON", "HybridAuON", "NorMuon", "Lion", "LionK", "Signum", "DiffGrad", "MFAC", "LANTON", "RegularizedNewton")
# </generated: presets>

__version__ = "0.11.0"


def __getattr__(name: str):
    """``steepest.hf`` loads on first use, so ``import steepest`` never imports transformers."""
    if name == "hf":
        import importlib

        return importlib.import_module(".hf", __name__)
    raise AttributeError(f"module 'steepest' has no attribute {name!r}")


__all__ = [*PRESET_EXPORTS, "GeometryOptimizer", "PRESETS", "create", "names", "for_model", "explain", "explain_rows", "geometry", "polar", "roles",
           "constraints", "nn", "diagnostics", "lipschitz_bound", "SafeStep", "__version__"]
