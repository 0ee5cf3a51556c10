"""diffGrad: Adam whose step shrinks where the gradient barely changes."""
from __future__ import annotations

from typing import Any, Iterable

from .docs import fill_doc
from .checks import as_betas
from .engine import GeometryOptimizer


class DiffGrad(GeometryOptimizer):
    __doc__ = fill_doc(r"""diffGrad (Dubey, Chakraborty, Roy, Mukherjee, Singh, Chaudhuri; arXiv 1909.11015).

    Adam with an elementwise "friction" coefficient from the change of the gradient, for every
    parameter:

    .. math::
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        \xi_t &= \sigma(|g_{t-1} - g_t|) = 1 / (1 + e^{-|g_{t-1} - g_t|}) \in [0.5, 1) \\
        W_t &= (1 - \eta\lambda) W_{t-1} - \eta\, \frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\,
              \frac{\xi_t \odot m_t}{\sqrt{v_t} + \epsilon}

    with ``g_0 = 0``. Entries whose gradient is steady get about half of Adam's step, entries whose
    gradient changes fast get the full step. ``xi`` reads the raw gradient scale: for tiny
    gradients it is ~0.5 everywhere (diffGrad ~ Adam at half the lr).

    The published code stored a reference to the gradient tensor instead of a copy, so with
    in-place gradient accumulation ``g_{t-1}`` aliased ``g_t`` and ``xi`` stayed at 0.5; here the
    previous gradient is a buffer of its own (three state tensors: ``m``, ``v``, ``g_{t-1}``).

    Defaults: ``betas=(0.9, 0.999)``, ``eps=1e-8`` (paper and reference code); ``lr=4e-3``, the
    minimax-regret choice of ``steepest bench defaults`` (docs/benchmarks.md, "The defaults
    study"; the reference's 1e-3 was 0.13-0.40 nats worse on the study's GPTs). Weight
    decay is decoupled (AdamW-style); the reference adds ``lambda W`` to the gradient instead.
    The geometry is ``identity``: diffGrad is a diagonal (per-coordinate) method.

    Args:
        {PARAMS_DOC}
        lr: learning rate.
        betas: Adam's ``(beta1, beta2)``.
        eps: added to ``sqrt(v)``.
        weight_decay: decoupled weight decay.
        {COMMON_DOC}
    """)

    def __init__(self, params: Iterable[Any], lr: float = 4e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, maximize: bool = False,
                 langevin_temperature: float = 0.0, langevin_seed: int = 0,
                 on_nonfinite: str = "raise", distributed_mesh: Any = None,
                 compile: bool | str = "auto"):
        super().__init__(params, on_nonfinite=on_nonfinite, distributed_mesh=distributed_mesh,
                         compile=compile, lr=lr, betas=as_betas(betas), eps=eps,
                         weight_decay=weight_decay, transform="diffgrad", geometry="identity",
                         shape_scale=None, maximize=maximize,
                         langevin_temperature=langevin_temperature, langevin_seed=langevin_seed)

    #: every role gets the same elementwise update
    recipes = {"*": {"geometry": "identity", "shape_scale": None}}
