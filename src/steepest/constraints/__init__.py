"""Weight constraints: feasible sets with their projections, applied after an optimizer step (the
group keys ``constraint``, ``constraint_bound``, ``constraint_units``; ``steepest.for_model(...,
constraints=...)``) or used directly (``make_constraint(name, ...).project_(w)``).

==========================  ==================================================================
``spectral_normalize``      ``W / max(1, sigma_1 / bound)`` (Lanczos estimate)      arXiv 2507.13338
``spectral_hammer``         top singular value set to the bound (rank-one)         arXiv 2507.13338
``spectral_hardcap``        ``U min(Sigma, bound) V^T`` (exact, via polar factors)  arXiv 2507.13338
``spectral_softcap``        two odd cubics whose strength follows the step size    arXiv 2507.13338
``hypersphere``             fixed Frobenius norm
``spectral_sphere``         ``||W||_2 = radius``                                    arXiv 2601.08393
``stiefel``                 ``W^T W = scale^2 I`` (polar, QR or Cayley retraction)  arXiv 2002.01113
``birkhoff``                doubly stochastic (Sinkhorn-Knopp, implicit backward)   arXiv 2512.24880
``spd``                     symmetric, eigenvalues ``>= eps`` (eigenvalue clamp)    Higham 1988
==========================  ==================================================================
"""
from .base import Constraint
from .birkhoff import Birkhoff, sinkhorn
from .registry import CONSTRAINT_NAMES, constraint_from_keys, make_constraint
from .spectral import SpectralHammer, SpectralHardCap, SpectralNormalize, SpectralSoftCap
from .spd import SPD
from .sphere import Hypersphere, SpectralSphere
from .stiefel import Stiefel

__all__ = ["CONSTRAINT_NAMES", "Birkhoff", "Constraint", "Hypersphere", "SPD", "SpectralHammer", "SpectralHardCap",
           "SpectralNormalize", "SpectralSoftCap", "SpectralSphere", "Stiefel", "constraint_from_keys",
           "make_constraint", "sinkhorn"]
