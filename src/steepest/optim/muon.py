"""Muon: momentum orthogonalized by Newton-Schulz, with an AdamW-style fallback in the same object."""
from __future__ import annotations

from typing import Any, Iterable

from .docs import fill_doc
from .engine import GeometryOptimizer
from .noise import NOISE_ALPHA, NOISE_EVERY, NOISE_RULE
from .checks import as_betas, check_choice, check_eps, check_lr

ADJUST_LR = ("original", "match_rms_adamw", "rms_to_rms", "none")
MATRIX_ROLES = ("hidden", "conv")


def adamw_fallback(lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> dict[str, Any]:
    """Group keys of the AdamW-style fallback that matrix presets give embeddings, heads and vectors."""
    return {"transform": "adam", "geometry": "identity", "shape_scale": None, "lr": lr,
            "betas": as_betas(betas), "eps": eps, "weight_decay": weight_decay}


def adamw_recipes(lr: float, embedding_lr: float | None, betas: tuple[float, float], eps: float,
                  weight_decay: float) -> dict[str, dict[str, Any]]:
    """The fallback's recipes by role: ``"*"`` (heads, vectors, unlabelled < 2-D tensors) at ``lr``,
    and ``"embedding"`` at ``embedding_lr`` where it is given (``None``: embeddings take ``lr`` too)."""
    recipes = {"*": adamw_fallback(lr, betas, eps, weight_decay)}
    if embedding_lr is not None:
        check_lr(embedding_lr)  # checked now: a model without embeddings never builds that group
        recipes["embedding"] = adamw_fallback(embedding_lr, betas, eps, weight_decay)
    return recipes


def torch_muon_arguments(ns: Any, adjust_lr: str, ns_coefficients: Any, eps: Any,
                         adjust_lr_fn: Any) -> tuple[Any, str, dict[str, Any]]:
    """``torch.optim.Muon``'s argument names in steepest's terms: ``(ns, adjust_lr, extra keys)``."""
    if eps is not None:
        check_eps("eps", eps)  # reported under torch's name, with the group key eps's rules
    extra = {} if eps is None else {"ns_eps": eps}
    if ns_coefficients is not None:
        if ns != "keller":
            raise ValueError("Pass either ns or ns_coefficients, not both")
        ns = ns_coefficients  # a list is stored as a tuple with the group (group_keys.plain_keys)
    if adjust_lr_fn is not None:
        if adjust_lr_fn not in ("original", "match_rms_adamw"):
            raise ValueError(f"Adjust learning rate function {adjust_lr_fn} is not supported")
        if adjust_lr not in ("original", adjust_lr_fn):
            raise ValueError("Pass either adjust_lr or adjust_lr_fn, not both")
        adjust_lr = adjust_lr_fn
    return ns, adjust_lr, extra


class Muon(GeometryOptimizer):
    __doc__ = fill_doc(r"""Muon (Keller Jordan et al., 2024; arXiv 2502.16982 for the RMS-matched variant).

    Steepest descent under the spectral norm for hidden matrices. For each matrix ``W`` (conv
    filters viewed as ``out x in*kh*kw``) with gradient ``g``:

    .. math::
        M_t &= \mu M_{t-1} + (1-\mu) g_t \\
        D_t &= (1-\mu) g_t + \mu M_t \quad\text{(Nesterov; } D_t = M_t \text{ otherwise)} \\
        O_t &= \mathrm{NS}(D_t) \approx \mathrm{polar}(D_t) = U V^\top \\
        W_t &= (1 - \eta\lambda) W_{t-1} - \eta\, s(m, n)\, O_t

    ``s`` is ``sqrt(max(1, m/n))`` for ``adjust_lr="original"`` (Keller) or ``0.2 sqrt(max(m, n))``
    for ``"match_rms_adamw"`` (Moonlight: update RMS 0.2, so AdamW's lr and weight decay carry
    over); ``"rms_to_rms"`` gives ``sqrt(m/n)``. Weight decay uses the unadjusted ``lr``, exactly as
    ``torch.optim.Muon``. With ``ns="keller"``, ``ns_dtype="bfloat16"`` and the same
    hyperparameters the update equals ``torch.optim.Muon``'s (a test checks 10 steps to 1e-6).

    Embeddings, output heads and vectors (groups with role ``embedding``, ``head`` or ``vector``,
    and every < 2-D tensor of an unlabelled group) get AdamW inside the same optimizer, so one LR
    scheduler drives every group; their lr is ``adamw_lr``, except on embedding tables (role
    ``embedding``: token and position tables), which take ``embedding_lr``.

    Defaults: ``lr=0.02``, ``momentum=0.95``, Nesterov, 5 Keller steps, ``weight_decay=0`` (Keller
    Jordan's reference); AdamW side ``lr=1e-2`` (embedding tables ``3e-3``), ``betas=(0.9, 0.95)``,
    ``eps=1e-10``, ``weight_decay=0``. ``lr``, ``adamw_lr`` and ``embedding_lr`` are the
    minimax-regret choice of the defaults study, ``steepest bench defaults`` (docs/benchmarks.md,
    "The defaults study": three character GPTs and a CNN; the reference's AdamW lr 3e-4 was
    0.29-0.97 nats worse on the GPTs, and one AdamW lr of 1e-2 for the tables too cost the width-128
    GPT 0.017 nats over six seeds, docs/benchmarks.md "Embedding tables").

    Differences from ``torch.optim.Muon``: Newton-Schulz
    runs in float32 on CPUs without native bfloat16 matmul (there it is 60-600x slower than
    float32) and in bfloat16 on CPUs with AMX-BF16 or AVX512-BF16 and on CUDA, conv
    and other >= 3-D tensors are accepted, same-shape matrices are orthogonalized in one batched
    call, and lr defaults to 0.02 rather than 1e-3.

    Args:
        {PARAMS_DOC}
        lr: learning rate of the matrix groups.
        momentum: EMA coefficient ``mu`` in [0, 1).
        nesterov: use the Nesterov signal.
        weight_decay: decoupled weight decay of the matrix groups.
        adjust_lr: shape factor: ``original``, ``match_rms_adamw``, ``rms_to_rms`` or ``none``.
        {NS_DOC}
        adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay: the fallback AdamW's hyperparameters.
        embedding_lr: the fallback AdamW's lr on embedding tables (role ``embedding``); ``None``
            gives them ``adamw_lr``, as ``torch.optim.Muon``'s usual recipe does.
        {NOISE_DOC}
        ns_coefficients, eps, adjust_lr_fn: ``torch.optim.Muon``'s names, with its meaning: a fixed
            ``(a, b, c)`` Newton-Schulz step (the same as ``ns=(a, b, c)``), the Newton-Schulz
            epsilon (group key ``ns_eps``) and the shape factor (``None`` or ``"original"``, or
            ``"match_rms_adamw"``). Each conflicts with a different value of steepest's own name.
        {COMMON_DOC}
    """)

    def __init__(self, params: Iterable[Any], lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, adjust_lr: str = "original", ns: str = "keller",
                 ns_steps: int | None = None, ns_dtype: str = "auto", adamw_lr: float = 1e-2,
                 adamw_betas: tuple[float, float] = (0.9, 0.95), adamw_eps: float = 1e-10,
                 adamw_weight_decay: float = 0.0, *, embedding_lr: float | None = 3e-3,
                 noise_adaptive: bool = False, noise_beta: float = 0.9,
                 noise_source: str = "previous", noise_rule: str = NOISE_RULE, noise_alpha: float = NOISE_ALPHA,
                 noise_every: int = NOISE_EVERY, maximize: bool = False,
                 langevin_temperature: float = 0.0, langevin_seed: int = 0,
                 on_nonfinite: str = "raise", distributed_mesh: Any = None,
                 compile: bool | str = "auto", ns_coefficients: tuple[float, float, float] | None = None,
                 eps: float | None = None, adjust_lr_fn: str | None = None, **preset_keys: Any):
        # preset_keys: a subclass's PRESET_KEYS values (NorMuon's beta2 and scale), checked by the engine
        ns, adjust_lr, torch_keys = torch_muon_arguments(ns, adjust_lr, ns_coefficients, eps, adjust_lr_fn)
        preset_keys.update(torch_keys)
        check_choice("adjust_lr", adjust_lr, ADJUST_LR)
        self.recipes = {"hidden": {}, "conv": {}, **adamw_recipes(adamw_lr, embedding_lr, adamw_betas, adamw_eps,
                                                                   adamw_weight_decay)}
        super().__init__(params, on_nonfinite=on_nonfinite, distributed_mesh=distributed_mesh,
                         compile=compile, lr=lr, momentum=momentum, nesterov=nesterov,
                         weight_decay=weight_decay, transform="momentum", geometry="spectral",
                         shape_scale=adjust_lr, ns=ns, ns_steps=ns_steps, ns_dtype=ns_dtype, maximize=maximize,
                         langevin_temperature=langevin_temperature, langevin_seed=langevin_seed,
                         noise_adaptive=noise_adaptive, noise_beta=noise_beta, noise_source=noise_source,
                         noise_rule=noise_rule, noise_alpha=noise_alpha, noise_every=noise_every, **preset_keys)
