"""AuON and Hybrid-AuON: Frobenius-normalized momentum with a hyperbolic-cosine RMS brake."""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from .docs import fill_doc
from .engine import GeometryOptimizer
from .muon import adamw_recipes

#: additive guard of the brake's denominator ``r + 1e-8`` (the paper's constant).
BRAKE_EPS = 1e-8
_TINY = 1e-30


def cosh_excess(x: Tensor) -> Tensor:
    """``r^2 - 1`` for the unit-Frobenius ``X = x / ||x||_F``, as a 0-d tensor (0 for a zero ``x``).

    ``r = sqrt(mean_i cosh(X_i)^2)`` is AuON's hyperbolic-cosine RMS. Since
    ``cosh^2 = 1 + sinh^2``, ``r^2 - 1 = mean_i sinh(X_i)^2`` is computed directly: a float32 mean
    of ``N`` values ``cosh^2 ~ 1`` resolves the ``~1/N`` excess, the whole signal, only to the
    rounding of 1 (6e-8), coarse for large layers. Every ``|X_i| <= 1``, so nothing overflows.
    """
    w = x if x.dtype in (torch.float32, torch.float64) else x.float()
    unit = w / torch.linalg.vector_norm(w).clamp(min=_TINY)
    return torch.sinh(unit).square().mean()


def cosh_rms(x: Tensor) -> float:
    """AuON's ``r = sqrt(mean_i cosh(X_i)^2)`` of the unit-Frobenius ``X = x / ||x||_F``."""
    return math.sqrt(1.0 + float(cosh_excess(x)))


def cosh_brakes(directions: list[Tensor]) -> list[float]:
    """The brake ``1 / (||O||_F (r(O / ||O||_F) + 1e-8))`` of every direction ``O`` (0 for a zero ``O``).

    Multiplying ``O`` by it gives ``X / (r + 1e-8)`` with ``X = O / ||O||_F``. The per-tensor
    reductions stay on the device and come back in one transfer per (device, dtype) (one host sync
    per group, not one per parameter); the scalar arithmetic is done in float64 on the host.
    """
    stats: list[Tensor | None] = [None] * len(directions)
    buckets: dict[tuple, list[int]] = {}
    for i, d in enumerate(directions):
        w = d if d.dtype in (torch.float32, torch.float64) else d.float()
        stats[i] = torch.stack([torch.linalg.vector_norm(w), cosh_excess(w)])
        buckets.setdefault((w.device, w.dtype), []).append(i)
    host: list[tuple[float, float]] = [(0.0, 0.0)] * len(directions)
    for idx in buckets.values():
        for i, pair in zip(idx, torch.stack([stats[i] for i in idx]).tolist()):
            host[i] = (pair[0], pair[1])
    brakes = []
    for norm, excess in host:
        brakes.append(0.0 if norm == 0.0 else 1.0 / (norm * (math.sqrt(1.0 + excess) + BRAKE_EPS)))
    return brakes


def cosh_brakes_from_sums(directions: list[Tensor], numels: list[int],
                           whole_sums: Callable[[Tensor], Tensor]) -> list[float]:
    """:func:`cosh_brakes` of tensors held as parts (the shards of a distributed run).

    ``whole_sums`` turns a ``(len(directions),)`` float64 vector of sums over each local part into
    the sums over the whole tensors; ``numels`` are the whole tensors' sizes. Two reductions: the
    Frobenius norms, then ``sum_i sinh(X_i)^2`` of the unit tensors.
    """
    work = [d if d.dtype in (torch.float32, torch.float64) else d.float() for d in directions]
    norms = whole_sums(torch.stack([w.square().sum().double() for w in work])).sqrt().tolist()
    sinh_sq = whole_sums(torch.stack([torch.sinh(w / max(n, _TINY)).square().sum().double()
                                      for w, n in zip(work, norms)])).tolist()
    return [0.0 if n == 0.0 else 1.0 / (n * (math.sqrt(1.0 + s / k) + BRAKE_EPS))
            for n, s, k in zip(norms, sinh_sq, numels)]


#: The constructor arguments AuON and HybridAuON share, for their docstrings.
_AUON_ARGS = fill_doc("""{PARAMS_DOC}
        lr: learning rate ``eta`` of the matrix groups.
        momentum: EMA coefficient ``mu`` in [0, 1).
        nesterov: use the Nesterov signal.
        weight_decay: decoupled weight decay ``lambda`` of the matrix groups.
        adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay: the fallback AdamW's hyperparameters.
        embedding_lr: the fallback AdamW's lr on embedding tables (``None``, the default: ``adamw_lr``;
            the defaults study did not test a split for AuON, see :class:`Muon`).""")


class AuON(GeometryOptimizer):
    __doc__ = fill_doc(r"""AuON (Dipan Maity, arXiv 2509.24320, paper form v1).

    "Alternative unit-norm momentum updates by normalized nonlinear scaling": the momentum matrix is
    normalized to unit Frobenius norm and shrunk by the RMS of its elementwise hyperbolic cosine, an
    O(mn) replacement for Muon's Newton-Schulz. For each matrix ``W`` (conv filters viewed as
    ``out x in*kh*kw``, ``N = m n`` entries) with gradient ``g``:

    .. math::
        M_t &= \mu M_{t-1} + (1-\mu) g_t, \qquad
        D_t = (1-\mu) g_t + \mu M_t \quad\text{(Nesterov; } D_t = M_t \text{ otherwise)} \\
        X_t &= D_t / \|D_t\|_F \\
        r_t &= \sqrt{\tfrac{1}{N} \textstyle\sum_i \cosh(X_{t,i})^2} \\
        W_t &= (1 - \eta\lambda) W_{t-1} - \eta\, \sqrt{\max(1, m/n)}\; X_t / (r_t + 10^{-8})

    In the engine's stages: the momentum transform, the Frobenius LMO with Keller Jordan's shape
    factor ``sqrt(max(1, m/n))`` (steepest descent under ``||.||_F``), and the cosh brake as a
    per-parameter factor of stage 3 (``_step_sizes``). The brake only rescales: signs and ratios of
    ``D`` are kept; a zero ``D`` gives a zero step.

    Numerical reality (a derivation, not from the paper): every entry of a unit-Frobenius ``X`` is of
    order ``1/sqrt(N)``, so ``r^2 = 1 + mean sinh(X_i)^2 ~ 1 + 1/N``; for realistic layers
    (``N >= 1e4``) ``r`` is within ~1e-4 of 1, and the brake only acts when a few entries carry a
    sizeable fraction of the Frobenius mass (``max |X_i| >~ 0.1``). AuON is therefore close to
    per-layer normalized SGD with Nesterov momentum. Its update has Frobenius norm
    ``eta sqrt(max(1, m/n))``, i.e. RMS about ``sqrt(min(m, n))`` times smaller than Muon's at the
    same lr (32x for 1024 x 1024), so it needs a much larger lr than Muon.

    Embeddings, output heads and vectors (roles ``embedding``, ``head``, ``vector``, and < 2-D
    tensors of unlabelled groups) get AdamW inside the same optimizer, without the brake, exactly
    as in :class:`Muon`. Whether a group is braked is its flat key ``cosh_brake`` (True for the
    matrix roles, False for the AdamW fallback); set it per group to change that.

    Defaults: ``lr=0.4`` and ``adamw_lr=1e-2``, the minimax-regret choice of ``steepest bench
    defaults`` (docs/benchmarks.md, "The defaults study"; the paper's GPT experiment used 0.055, the
    v1 code's class default is 0.02 and the same file's training config 0.24: on the study's
    GPTs 0.055 was 0.17-0.41 nats worse), ``momentum=0.95``, Nesterov, ``weight_decay=0``
    (v1 code); the rest of the AdamW side as in :class:`Muon` (``betas=(0.9, 0.95)``,
    ``eps=1e-10``). Differences from the public code: the v1 code normalizes a bfloat16 copy of
    ``D`` by ``||D||_F + 1e-7`` and has no weight decay; here ``X`` is exactly unit-Frobenius in
    the state dtype (the ``1e-7`` changes the step by a relative ``1e-7 / ||D||_F``) and weight
    decay is decoupled, with the unadjusted lr, as in :class:`Muon`. The later repository
    version (``auon/optimizer.py``, 2026) is a different algorithm: it divides the *raw* momentum
    by ``r`` of ``1.5 X`` (no Frobenius normalization, so close to plain SGD-momentum), has no
    shape factor and uses lr 0.24; it is not implemented here.

    Args:
        {AUON_ARGS}
        {COMMON_DOC}
    """).replace("{AUON_ARGS}", _AUON_ARGS)

    PRESET_KEYS = {"cosh_brake": True}
    GROUP_STEP_SIZES = True  # the brakes of all matrices are read from the device together

    def __init__(self, params: Iterable[Any], lr: float = 0.4, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, adamw_lr: float = 1e-2, adamw_betas: tuple[float, float] = (0.9, 0.95),
                 adamw_eps: float = 1e-10, adamw_weight_decay: float = 0.0, *, embedding_lr: float | None = None,
                 maximize: bool = False,
                 langevin_temperature: float = 0.0, langevin_seed: int = 0, on_nonfinite: str = "raise", distributed_mesh: Any = None,
                 compile: bool | str = "auto", **stage2_keys: Any):
        # stage2_keys: HybridAuON's spectral geometry (AuON's stage 2 is the Frobenius LMO)
        fallback = adamw_recipes(adamw_lr, embedding_lr, adamw_betas, adamw_eps, adamw_weight_decay)
        self.recipes = {"hidden": {}, "conv": {},
                        **{role: {**keys, "cosh_brake": False} for role, keys in fallback.items()}}
        geometry = stage2_keys or {"geometry": "frobenius", "shape_scale": "original"}
        super().__init__(params, on_nonfinite=on_nonfinite, distributed_mesh=distributed_mesh, compile=compile,
                         lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                         transform="momentum", maximize=maximize,
                         langevin_temperature=langevin_temperature, langevin_seed=langevin_seed, cosh_brake=True, **geometry)

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        if not isinstance(group["cosh_brake"], bool):
            raise TypeError(f"Invalid type for cosh_brake: expected bool, got {type(group['cosh_brake']).__name__}")

    def _step_sizes(self, group: dict[str, Any], params: list[Tensor], directions: list[Tensor]) -> list[float]:
        """The engine's ``lr * radius * shape`` times the cosh brake (braked groups only)."""
        steps = super()._step_sizes(group, params, directions)
        if not group["cosh_brake"]:
            return steps
        if not self._sharded(params):
            brakes = cosh_brakes(directions)
        else:
            brakes = cosh_brakes_from_sums(directions, [p.numel() for p in params],
                                           lambda partial: self._whole_sums(params, partial))
        return [s * b for s, b in zip(steps, brakes)]

    def describe_update(self, group: dict[str, Any]) -> str:
        base = super().describe_update(group)
        return f"{base} + cosh brake" if group["cosh_brake"] else base


class HybridAuON(AuON):
    __doc__ = fill_doc(r"""Hybrid-AuON (Dipan Maity, arXiv 2509.24320, paper form v1).

    AuON with "a single Newton-Schulz iteration prepended before the cosh-RMS scaling". With the
    (Nesterov) momentum ``D`` as in :class:`AuON` and Keller Jordan's coefficients
    ``(a, b, c) = (3.4445, -4.7750, 2.0315)``:

    .. math::
        X &= D / \|D\|_F, \qquad A = X X^\top \quad\text{(on the wide orientation of } X) \\
        Y &= a X + (b A + c A^2) X \\
        W &\leftarrow (1 - \eta\lambda) W - \eta\, \sqrt{\max(1, m/n)}\;
              \frac{Y / \|Y\|_F}{r(Y / \|Y\|_F) + 10^{-8}}

    with ``r`` AuON's hyperbolic-cosine RMS. Stage 2 is the spectral geometry with
    ``ns="keller", ns_steps=1`` (the library's Newton-Schulz divides by ``max(||D||_F, 1e-7)``);
    stage 3 is AuON's brake, which renormalizes ``Y`` to unit Frobenius norm before computing
    ``r``. That renormalization is this library's reading of "the same cosh-RMS scaling": the
    brake always sees a unit-Frobenius input, and the update has the same Frobenius norm
    ``eta sqrt(max(1, m/n)) / (r + 1e-8)`` as AuON's, so one lr means the same step size for both.
    (Without it the step would be ``||Y||_F`` times larger, between 0.70 for a rank-1 ``D`` and
    3.44 for a flat spectrum.) One Keller step from a unit-Frobenius input is far from
    orthogonal: it multiplies each singular value ``s`` by ``a + b s^2 + c s^4``, which falls from
    3.44 (small ``s``) to 0.70 (``s = 1``), so small singular values gain up to 4.9x relative to
    the top one, a partial whitening. ``ns``/``ns_steps`` select another schedule or more steps.

    Defaults: ``lr=0.4`` and ``adamw_lr=1e-2``, the minimax-regret choice of ``steepest bench
    defaults`` (the paper gives no separate Hybrid-AuON lr; with the renormalized brake the update
    has AuON's Frobenius norm, and the study picked AuON's lr for it too), momentum 0.95,
    Nesterov, one Keller step; AdamW fallback as in :class:`AuON`. The later public repository
    version of ``HybridAuON`` runs a full 5-step Newton-Schulz on the raw (not Frobenius
    normalized) momentum before the brake, with lr 0.24 and no shape factor; this class implements
    the paper's form instead (``ns_steps=5`` gets the 5-step direction, with this class's scaling).

    Args:
        {AUON_ARGS}
        {NS_DOC}
        {COMMON_DOC}
    """).replace("{AUON_ARGS}", _AUON_ARGS)

    def __init__(self, params: Iterable[Any], lr: float = 0.4, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, ns: str = "keller", ns_steps: int | None = 1, ns_dtype: str = "auto",
                 adamw_lr: float = 1e-2, adamw_betas: tuple[float, float] = (0.9, 0.95), adamw_eps: float = 1e-10,
                 adamw_weight_decay: float = 0.0, *, embedding_lr: float | None = None, maximize: bool = False,
                 langevin_temperature: float = 0.0, langevin_seed: int = 0,
                 on_nonfinite: str = "raise", distributed_mesh: Any = None, compile: bool | str = "auto"):
        super().__init__(params, lr, momentum, nesterov, weight_decay, adamw_lr, adamw_betas, adamw_eps,
                         adamw_weight_decay, embedding_lr=embedding_lr, maximize=maximize,
                         langevin_temperature=langevin_temperature, langevin_seed=langevin_seed, on_nonfinite=on_nonfinite,
                         distributed_mesh=distributed_mesh, compile=compile, geometry="spectral",
                         shape_scale="original", ns=ns, ns_steps=ns_steps, ns_dtype=ns_dtype)
