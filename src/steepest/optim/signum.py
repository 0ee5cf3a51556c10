"""Signum: the sign of an EMA momentum (steepest descent under the max-entry norm)."""
from __future__ import annotations

from typing import Any, Iterable

from .docs import fill_doc
from .engine import GeometryOptimizer


class Signum(GeometryOptimizer):
    __doc__ = fill_doc(r"""Signum (Bernstein, Wang, Azizzadenesheli, Anandkumar, "signSGD", arXiv 1802.04434).

    Steepest descent under the max-entry (l_inf) norm on momentum, for every parameter:

    .. math::
        M_t &= \beta M_{t-1} + (1 - \beta) g_t \\
        W_t &= (1 - \eta\lambda) W_{t-1} - \eta\, \mathrm{sign}(M_t)

    (``nesterov=True`` takes the sign of ``(1-beta) g_t + beta M_t`` instead; ``momentum=0`` is
    signSGD.) It is the engine's momentum transform followed by the ``sign`` geometry; Lion differs
    only in using two betas. Every entry moves by exactly ``lr``, so lrs are Lion-sized.

    Defaults: ``momentum=0.9`` (the paper's beta); ``lr=1e-3``, the minimax-regret choice of
    ``steepest bench defaults`` (docs/benchmarks.md, "The defaults study"; 1e-4 was 0.52-0.96 nats
    worse on the study's GPTs). Weight decay is decoupled here (the paper adds it to the gradient before the
    sign).

    Args:
        {PARAMS_DOC}
        lr: learning rate (every entry moves by ``lr`` per step, plus decay).
        momentum: EMA coefficient ``beta`` in [0, 1).
        nesterov: take the sign of the Nesterov signal.
        weight_decay: decoupled weight decay.
        {COMMON_DOC}
    """)

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, momentum: float = 0.9, nesterov: bool = False,
                 weight_decay: float = 0.0, *, maximize: bool = False,
                 langevin_temperature: float = 0.0, langevin_seed: int = 0, on_nonfinite: str = "raise", distributed_mesh: Any = None,
                 compile: bool | str = "auto"):
        super().__init__(params, on_nonfinite=on_nonfinite, distributed_mesh=distributed_mesh,
                         compile=compile, lr=lr, momentum=momentum, nesterov=nesterov,
                         weight_decay=weight_decay, transform="momentum", geometry="sign", shape_scale="none",
                         maximize=maximize,
                         langevin_temperature=langevin_temperature, langevin_seed=langevin_seed)

    #: every role uses the sign geometry (Signum is elementwise)
    recipes = {"*": {"geometry": "sign", "shape_scale": "none"}}
