"""Layers whose weights or mixing matrices live on a set: hyper-connections, stable state injection,
the delta residual and Grassmann class heads."""
from .grassmann import GrassmannClassifier, GrassmannSGD
from .hyper_connections import HyperConnections
from .injection import DeltaResidual, StableInjection

__all__ = ["HyperConnections", "StableInjection", "DeltaResidual", "GrassmannClassifier", "GrassmannSGD"]
