"""LANTON: noise-adaptive layerwise learning rates on top of per-group LMO updates."""
from __future__ import annotations

from typing import Any, Iterable

from .docs import fill_doc
from .engine import GeometryOptimizer
from .noise import NOISE_ALPHA, NOISE_EVERY, NOISE_RULE



class LANTON(GeometryOptimizer):
    __doc__ = fill_doc(r"""LANTON (Hao, Gong, Xu, Wang, Liu; "Noise-Adaptive Layerwise Learning Rates", arXiv 2510.14009).

    Steepest descent with an LMO per group of layers that share a norm (as Scion / D-Muon), where
    each layer ``l`` of a group gets its own time-varying lr from its gradient noise measured in
    the dual norm of its LMO; noisier layers take smaller steps:

    .. math::
        B_t^l &= \beta_1 B_{t-1}^l + (1-\beta_1) G_t^l \\
        H^l &\leftarrow b H^l + (1-b) \| G_t^l - \tilde G_t^l \|_{(l)*}^2, \quad b = \beta_2^k
                 \quad(\text{every } k = \text{``noise\_every''} \text{ steps; bias-corrected}) \\
        \eta_t^l &= \eta_t \cdot \Big(\frac{\alpha^2 + \min_{j} H^j}{\alpha^2 + H^l}\Big)^{1/4}
                 \quad(\text{``noise\_rule="alpha\_sqrt"``}) \\
        W_{t+1}^l &= (1 - \eta_t\lambda) W_t^l - \eta_t^l\, s^l\, \mathrm{lmo}_l(B_t^l)

    ``G~`` is the previous step's gradient (``noise_source="previous"``, no extra backward) or a
    second, independent mini-batch gradient at the same point (``noise_source="second"``:
    ``optimizer.step(second_grads=...)``). The dual norms: for the spectral (hidden) layers
    ``s * ||Delta||_nuc``, estimated as ``<Delta, polar(Delta)>`` with a Newton-Schulz polar factor
    (``noise_ns``, default ``quintic``; ``"svd"`` for the exact value); for sign layers (embeddings,
    head, vectors) the l1 norm, exact. The noise is measured every ``noise_every`` steps and the
    factors are held in between. The rules (``noise_rule``: ``alpha_sqrt``, ``sqrt_ratio``,
    ``min_ratio``, ``gmean_ratio``) are in ``steepest.optim.noise``; ``alpha = noise_alpha`` is in
    the units of :meth:`layer_stats`' ``noise``. When every layer of a group has the same noise the
    factors are exactly 1 and LANTON is exactly its base (``noise_adaptive=False``).

    Geometry per role (the paper's Table 1, as reported: hidden matrices RMS->RMS, embedding and
    LM head l1->l_inf, i.e. Signum, unlike Muon's AdamW): hidden/conv ``spectral`` with
    ``sqrt(fan_out/fan_in)``; embedding, head and vector ``sign``, at ``sign_lr``. Layers share a
    noise ratio within one param group (:func:`steepest.for_model` makes one group per role).

    **Reconstruction.** Algorithm 1 of the paper could not be read from the public copies; what is
    known from the paper's abstract and from public reviews and summaries (quoted, with what is
    not verified, in ``docs/algorithms/lanton.md``) is the structure: noise in the dual norm of each
    layer's LMO, time-varying layerwise rates within each group, two noise options, the momentum
    line above, the per-role geometries and the EMA of the noise. The ``alpha_sqrt`` rule is one
    public reimplementation's, not verified against the paper; the bias correction, the floor
    ``noise_eps`` (relative to the group's largest ``H``), the other rules and the measurement
    interval are this library's choices.

    Defaults: ``noise_rule="alpha_sqrt"``, ``noise_alpha=0.3`` and ``noise_every=10`` were chosen
    by the LANTON study (``steepest bench lanton``; the rule that came closest to the base at tuned
    lr on every task of the study); ``lr=0.02`` and ``sign_lr=3e-3`` by the defaults study
    (``steepest bench defaults``, docs/benchmarks.md, "The defaults study": its minimax-regret
    choice over three character GPTs and a CNN; the previous ``lr=0.04, sign_lr=5e-4`` was up to
    0.52 nats worse), ``momentum=0.95`` without Nesterov (the verified momentum
    line), ``weight_decay=0``, ``noise_beta=0.9`` (per step), ``noise_source="previous"``, 5
    Keller Newton-Schulz steps for the update. The study's numbers, including where LANTON loses
    to its base, are in ``docs/algorithms/lanton.md``.

    Args:
        {PARAMS_DOC}
        lr: base learning rate ``eta`` of the hidden (spectral) groups.
        sign_lr: base learning rate of the embedding, head and vector (sign) groups.
        momentum: EMA coefficient ``beta_1`` in [0, 1).
        nesterov: use the Nesterov signal (off in the paper's update).
        weight_decay: decoupled weight decay ``lambda``.
        {NS_DOC}
        {NOISE_DOC}
        {COMMON_DOC}
    """)

    def __init__(self, params: Iterable[Any], lr: float = 0.02, sign_lr: float = 3e-3, momentum: float = 0.95,
                 nesterov: bool = False, weight_decay: float = 0.0, ns: str = "keller", ns_steps: int | None = None,
                 ns_dtype: str = "auto", *, noise_adaptive: bool = True, noise_beta: float = 0.9,
                 noise_source: str = "previous", noise_rule: str = NOISE_RULE, noise_alpha: float = NOISE_ALPHA,
                 noise_every: int = NOISE_EVERY, noise_ns: str = "quintic",
                 maximize: bool = False,
                 langevin_temperature: float = 0.0, langevin_seed: int = 0, on_nonfinite: str = "raise", distributed_mesh: Any = None,
                 compile: bool | str = "auto"):
        # spectral (RMS->RMS) for hidden and conv; Signum at sign_lr for every other role
        self.recipes = {"hidden": {}, "conv": {}, "*": {"geometry": "sign", "shape_scale": "none", "lr": sign_lr}}
        super().__init__(params, on_nonfinite=on_nonfinite, distributed_mesh=distributed_mesh,
                         compile=compile, lr=lr, momentum=momentum, nesterov=nesterov,
                         weight_decay=weight_decay, transform="momentum", geometry="spectral",
                         shape_scale="rms_to_rms", ns=ns, ns_steps=ns_steps, ns_dtype=ns_dtype,
                         noise_adaptive=noise_adaptive, noise_beta=noise_beta, noise_source=noise_source,
                         noise_rule=noise_rule, noise_alpha=noise_alpha, noise_every=noise_every, noise_ns=noise_ns, maximize=maximize,
                         langevin_temperature=langevin_temperature, langevin_seed=langevin_seed)

