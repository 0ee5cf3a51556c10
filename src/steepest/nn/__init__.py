"""Layers whose weights or mixing matrices live on a set: hyper-connections, stable state injection,
the delta residual, Grassmann class heads, residual blocks that are L-Lipschitz by construction and SPD
networks (BiMap, ReEig, LogEig, Riemannian batch norm under BW/GBW/AIM/LEM geometry)."""
from .grassmann import GrassmannClassifier, GrassmannSGD
from .hyper_connections import HyperConnections
from .injection import DeltaResidual, StableInjection
from .ldlt import LipschitzResidual, LipschitzResidualNet
from .spd import BiMap, LogEig, ReEig, SPDBatchNorm

__all__ = ["HyperConnections", "StableInjection", "DeltaResidual", "GrassmannClassifier", "GrassmannSGD",
           "LipschitzResidual", "LipschitzResidualNet", "BiMap", "ReEig", "LogEig", "SPDBatchNorm"]
