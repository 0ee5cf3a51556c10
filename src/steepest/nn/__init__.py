"""Layers whose weights or mixing matrices live on a set: hyper-connections, stable state injection,
the delta residual, Grassmann class heads and residual blocks that are L-Lipschitz by construction."""
from .grassmann import GrassmannClassifier, GrassmannSGD
from .hyper_connections import HyperConnections
from .injection import DeltaResidual, StableInjection
from .ldlt import LipschitzResidual, LipschitzResidualNet

__all__ = ["HyperConnections", "StableInjection", "DeltaResidual", "GrassmannClassifier", "GrassmannSGD",
           "LipschitzResidual", "LipschitzResidualNet"]
