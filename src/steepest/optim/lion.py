"""Lion and Lion-K: sign (or another LMO) of a two-beta momentum, with decoupled weight decay."""
from __future__ import annotations

from typing import Any, Iterable

from .docs import fill_doc
from .engine import GeometryOptimizer
from .checks import as_betas, check_choice

KAPPAS = ("l1", "l2", "nuclear")
_MATRIX_ROLES = ("hidden", "conv", "embedding", "head")


class Lion(GeometryOptimizer):
    __doc__ = fill_doc(r"""Lion (Chen et al., "Symbolic Discovery of Optimization Algorithms", arXiv 2302.06675).

    Steepest descent under the max-entry (l_inf) norm with a two-beta momentum, for every parameter:

    .. math::
        c_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        W_t &= (1 - \eta\lambda) W_{t-1} - \eta\, \mathrm{sign}(c_t) \\
        m_t &= \beta_2 m_{t-1} + (1 - \beta_2) g_t

    ``sign`` is the LMO of the l_inf ball, so every entry moves by exactly ``lr`` (update RMS 1):
    use an lr 3-10x smaller than AdamW's and a weight decay 3-10x larger (the paper's advice,
    section 5), since the effective decay is ``lr * weight_decay``. With decay ``lambda`` Lion
    solves ``min f(W)`` subject to ``max |W_ij| <= 1/lambda`` (arXiv 2310.05898): iterates from any
    start enter that box and stay there. One state buffer (half of Adam's memory).

    Defaults: ``betas=(0.9, 0.99)``, ``weight_decay=0`` are the paper's and the ``lion-pytorch``
    package's; ``lr=6e-4`` is the minimax-regret choice of ``steepest bench defaults``
    (docs/benchmarks.md, "The defaults study"; the paper's 1e-4 was 0.6-0.97 nats worse on the
    study's GPTs at their short budgets); with equal hyperparameters the parameters match ``lion_pytorch.Lion``
    (a test checks 20 steps to 1e-6). ``sign(0) = 0``: an exactly zero entry of ``c`` does not move.

    Args:
        {PARAMS_DOC}
        lr: learning rate (every entry moves by ``lr`` per step, plus decay).
        betas: ``(beta1, beta2)``: interpolation for the update and momentum of the buffer.
        weight_decay: decoupled decay ``lambda`` (the parameter shrinks by ``lr * lambda``).
        {COMMON_DOC}
    """)

    def __init__(self, params: Iterable[Any], lr: float = 6e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, *, maximize: bool = False,
                 langevin_temperature: float = 0.0, langevin_seed: int = 0, on_nonfinite: str = "raise", distributed_mesh: Any = None,
                 compile: bool | str = "auto"):
        super().__init__(params, on_nonfinite=on_nonfinite, distributed_mesh=distributed_mesh,
                         compile=compile, lr=lr, betas=as_betas(betas), weight_decay=weight_decay,
                         transform="lion", geometry="sign", shape_scale="none", maximize=maximize,
                         langevin_temperature=langevin_temperature, langevin_seed=langevin_seed)

    #: every role uses the sign geometry (Lion is elementwise)
    recipes = {"*": {"geometry": "sign", "shape_scale": "none"}}


class LionK(GeometryOptimizer):
    __doc__ = fill_doc(r"""Lion-K (Chen, Liu, Liang, Liu, "Lion Secretly Solves Constrained Optimization: As
    Lyapunov Predicts", arXiv 2310.05898).

    Lion with ``sign`` replaced by the (sub)gradient of a convex function ``K``:

    .. math::
        c_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        W_t &= (1 - \eta\lambda) W_{t-1} - \eta\, \nabla K(c_t) \\
        m_t &= \beta_2 m_{t-1} + (1 - \beta_2) g_t

    and solves ``min f(W) + K*(lambda W)``, where ``K*`` is the convex conjugate. For a norm ``K``,
    ``grad K`` is the LMO of the dual norm's unit ball and ``K*(lambda W)`` is the indicator of
    ``||W||_dual <= 1/lambda``, so decoupled weight decay *is* a norm constraint:

    ============ =============================== ====================================== ==========
    ``kappa``    ``K(x)``                        ``grad K(x)``                           constraint
    ============ =============================== ====================================== ==========
    ``l1``       ``sum |x_i|``                   ``sign(x)`` (this is :class:`Lion`)      ``max |W_ij| <= 1/lambda``
    ``l2``       ``||x||_2`` (whole tensor)      ``x / ||x||_2``                          ``||W||_F <= 1/lambda``
    ``nuclear``  ``sum_i sigma_i(x)``            polar factor ``U V^T``                   ``sigma_max(W) <= 1/lambda``
    ============ =============================== ====================================== ==========

    ``nuclear`` is "Muon with Lion's momentum": it applies to every matrix (hidden, conv filters
    viewed as ``out x in*k*k``, embeddings, heads); vectors get ``l2``, which is the nuclear norm of
    a vector seen as a one-column matrix. The polar factor uses Newton-Schulz with the ``you``
    schedule by default, whose output singular values stay in [0.99, 1.0], so the constraint radius
    stays ``1/lambda`` (Keller's coefficients reach 1.14 and would loosen it by up to 14%).
    No shape factor is applied: the constraint is on the plain norm, as in the paper.

    Defaults: ``betas=(0.9, 0.99)`` as :class:`Lion`, ``kappa="nuclear"``, and ``lr=0.03``, the
    minimax-regret choice of ``steepest bench defaults`` (docs/benchmarks.md, "The defaults study";
    a nuclear-norm step has a fixed spectral size, so Lion's 1e-4 barely moves the weights).

    Args:
        {PARAMS_DOC}
        lr: learning rate.
        betas: ``(beta1, beta2)`` as in Lion.
        weight_decay: decoupled decay ``lambda``; the iterates converge into the ball of radius
            ``1/lambda`` of the constraint above.
        kappa: ``l1``, ``l2`` or ``nuclear``.
        {NS_DOC}
        {COMMON_DOC}
    """)

    def __init__(self, params: Iterable[Any], lr: float = 0.03, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, kappa: str = "nuclear", ns: str = "you", ns_steps: int | None = None,
                 ns_dtype: str = "auto", *, maximize: bool = False,
                 langevin_temperature: float = 0.0, langevin_seed: int = 0, on_nonfinite: str = "raise", distributed_mesh: Any = None,
                 compile: bool | str = "auto"):
        check_choice("kappa", kappa, KAPPAS)
        self.recipes = lionk_recipes(kappa)
        super().__init__(params, on_nonfinite=on_nonfinite, distributed_mesh=distributed_mesh,
                         compile=compile, lr=lr, betas=as_betas(betas), weight_decay=weight_decay,
                         transform="lion", geometry="sign", shape_scale="none", ns=ns, ns_steps=ns_steps,
                         ns_dtype=ns_dtype, maximize=maximize,
                         langevin_temperature=langevin_temperature, langevin_seed=langevin_seed)

    @property
    def kappa(self) -> str:
        """The ``K`` of this optimizer (``l1``, ``l2`` or ``nuclear``), read from its recipes."""
        geometry = self.recipes.get("hidden", self.recipes["*"])["geometry"]
        return {"sign": "l1", "frobenius": "l2", "spectral": "nuclear"}[geometry]


def lionk_recipes(kappa: str) -> dict[str, dict[str, Any]]:
    """Geometry of ``grad K`` for each role (see :class:`LionK`'s table)."""
    if kappa == "l1":
        return {"*": {"geometry": "sign", "shape_scale": "none"}}
    if kappa == "nuclear":
        matrix = {"geometry": "spectral", "shape_scale": "none"}
        return {role: matrix for role in _MATRIX_ROLES} | {"*": {"geometry": "frobenius", "shape_scale": "none"}}
    return {"*": {"geometry": "frobenius", "shape_scale": "none"}}
