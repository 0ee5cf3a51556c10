"""Lipschitz constants of networks: upper bounds from the layers' weights (:mod:`.bounds`, the
product and residual rules) and certificates by semidefinite programming (:mod:`.sdp`, LipSDP,
arXiv 1906.04893; the solver is the optional extra ``pip install 'steepest[sdp]'``).

``certify(model, method="lipsdp" | "product")`` is the one entry point for both; ``lipschitz_bound``
is the product bound alone.
"""
from .bounds import (GELU_MAX_SLOPE, LipschitzAttention, Residual, gelu_max_slope, lipschitz_bound, module_bound,
                     output_bound)
from .sdp import (DEFAULT_MAX_NEURONS, GroupSort, LipSDPResult, MaxMin, Network, certify, extract_network,
                  jacobian_lower_bound, lipsdp)

__all__ = ["lipschitz_bound", "module_bound", "output_bound", "Residual", "LipschitzAttention", "gelu_max_slope",
           "GELU_MAX_SLOPE", "certify", "lipsdp", "extract_network", "jacobian_lower_bound", "LipSDPResult",
           "Network", "GroupSort", "MaxMin", "DEFAULT_MAX_NEURONS"]
