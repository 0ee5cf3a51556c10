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
from .optim import (LANTON, MFAC, PRESETS, AuON, DiffGrad, GeometryOptimizer, HybridAuON, Lion, LionK, Muon,
                    NorMuon, Scion, Signum)

__version__ = "0.8.0"


def __getattr__(name: str):
    """``steepest.hf`` loads on first use, so ``import steepest`` never imports transformers."""
    if name == "hf":
        import importlib

        return importlib.import_module(".hf", __name__)
    raise AttributeError(f"module 'steepest' has no attribute {name!r}")


__all__ = ["Muon", "NorMuon", "Scion", "AuON", "HybridAuON", "Lion", "LionK", "Signum", "DiffGrad", "MFAC", "LANTON",
           "GeometryOptimizer", "PRESETS", "create", "names", "for_model", "explain", "explain_rows", "geometry", "polar", "roles",
           "constraints", "nn", "diagnostics", "lipschitz_bound", "SafeStep", "__version__"]
