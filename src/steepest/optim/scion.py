"""Scion: a norm-constrained LMO per layer (Pethick et al., arXiv 2502.07529)."""
from __future__ import annotations

from typing import Any, Iterable

from .docs import fill_doc
from .engine import GeometryOptimizer
from .noise import NOISE_ALPHA, NOISE_EVERY, NOISE_RULE
from .checks import check_positive

#: role -> (geometry, shape_scale) of Scion's recipe for that role.
SCION_ROLE_GEOMETRY: dict[str, tuple[str, str | None]] = {
    "hidden": ("spectral", "rms_to_rms"),
    "conv": ("spectral", "rms_to_rms"),
    "embedding": ("rownorm", "rms"),
    "head": ("sign", "fan_in"),
    "vector": ("rms", None),
}


class Scion(GeometryOptimizer):
    __doc__ = fill_doc(r"""Scion (Pethick, Xie, Antonakopoulos, Zhu, Silveti-Falls, Cevher; arXiv 2502.07529).

    Stochastic conditional gradient with a norm ball chosen per layer. With the averaged gradient
    ``d`` and the LMO of the layer's ball of radius ``rho`` (times the geometry's shape factor):

    .. math::
        d_t &= \beta d_{t-1} + (1 - \beta) g_t \\
        \text{uSCG (default):}\quad W_t &= W_{t-1} - \eta\,\rho\, s\, \mathrm{lmo}(d_t) \\
        \text{SCG (constrained=True):}\quad W_t &= (1 - \eta) W_{t-1} - \eta\,\rho\, s\, \mathrm{lmo}(d_t)

    SCG is decoupled weight decay with coefficient 1: iterates that start inside the ball
    ``||W|| <= rho s`` stay inside it, so call ``init_params_()`` (Scion's init rules) first.

    Geometry per role (the reference code, github.com/LIONS-EPFL/scion, ``scion.py``):

    =========== ================================ =======================================
    role        geometry (shape factor)          paper's name
    =========== ================================ =======================================
    hidden/conv spectral, ``sqrt(fan_out/fan_in)`` ``Spectral`` (RMS->RMS operator norm)
    embedding   rownorm, ``sqrt(dim)``           ``ColNorm(transpose=True)``: unit-RMS token vectors
    head        sign, ``1/fan_in``               ``Sign(normalized=True)``
    vector      rms                              ``BiasRMS``
    =========== ================================ =======================================

    ``momentum`` here is the usual EMA coefficient ``beta``; the reference code's ``momentum`` is
    ``alpha = 1 - beta`` (its recommended 0.1 is our default 0.9). Radii default to the untied
    nanoGPT recipe of the Scion repository (embedding 1, hidden 3, head 10). The default ``lr``
    (2^-6) was picked on the benchmark's character-level GPT (150 steps, batch 16: validation loss
    2.549 / 2.452 / 2.365 / 2.419 / 2.606 for lr 2^-8 ... 2^-4).

    Conv filters use the flattened view's ``sqrt(out / (in*kh*kw))``; the reference
    ``SpectralConv`` uses ``sqrt(out/in) / k^2`` instead (pass ``shape_scale`` per group to change).

    Args:
        {PARAMS_DOC}
        lr: learning rate ``eta`` (every role; radii set the per-role scale).
        momentum: EMA coefficient ``beta`` in [0, 1).
        nesterov: use the Nesterov signal (the paper does not).
        constrained: SCG (``(1 - lr)`` blend) instead of uSCG.
        hidden_radius, embedding_radius, head_radius, vector_radius: per-role radii ``rho``.
        {NS_DOC}
        {NOISE_DOC}
        {COMMON_DOC}
    """)

    def __init__(self, params: Iterable[Any], lr: float = 2**-6, momentum: float = 0.9, nesterov: bool = False,
                 constrained: bool = False, hidden_radius: float = 3.0, embedding_radius: float = 1.0,
                 head_radius: float = 10.0, vector_radius: float = 1.0, ns: str = "keller",
                 ns_steps: int | None = None, ns_dtype: str = "auto", *, noise_adaptive: bool = False,
                 noise_beta: float = 0.9, noise_source: str = "previous", noise_rule: str = NOISE_RULE, noise_alpha: float = NOISE_ALPHA,
                 noise_every: int = NOISE_EVERY,
                 maximize: bool = False,
                 langevin_temperature: float = 0.0, langevin_seed: int = 0, on_nonfinite: str = "raise", distributed_mesh: Any = None,
                 compile: bool | str = "auto"):
        radii = {"hidden": hidden_radius, "conv": hidden_radius, "embedding": embedding_radius,
                 "head": head_radius, "vector": vector_radius}
        for role in ("hidden", "embedding", "head", "vector"):
            check_positive(f"{role}_radius", radii[role])
        if not isinstance(constrained, bool):
            raise TypeError(f"Invalid type for constrained: expected bool, got {type(constrained).__name__}")
        self.recipes = {role: scion_recipe(role, radius) for role, radius in radii.items()}
        self.recipes["*"] = self.recipes["vector"]
        super().__init__(params, on_nonfinite=on_nonfinite, distributed_mesh=distributed_mesh,
                         compile=compile, lr=lr, momentum=momentum, nesterov=nesterov,
                         weight_decay=1.0 if constrained else 0.0, transform="momentum", geometry="spectral",
                         shape_scale="rms_to_rms", ns=ns, ns_steps=ns_steps, ns_dtype=ns_dtype,
                         noise_adaptive=noise_adaptive, noise_beta=noise_beta, noise_source=noise_source,
                         noise_rule=noise_rule, noise_alpha=noise_alpha, noise_every=noise_every, maximize=maximize,
                         langevin_temperature=langevin_temperature, langevin_seed=langevin_seed)


def scion_recipe(role: str, radius: float) -> dict[str, Any]:
    """Geometry, shape factor and radius of Scion's recipe for ``role``."""
    geometry, shape_scale = SCION_ROLE_GEOMETRY.get(role, SCION_ROLE_GEOMETRY["vector"])
    return {"geometry": geometry, "shape_scale": shape_scale, "radius": radius}
