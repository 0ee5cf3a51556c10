"""NorMuon: Muon's orthogonalized momentum with per-neuron (row) second-moment normalization."""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import Tensor

from ..distributed import rows_like
from ..geometry import as_matrix
from .docs import fill_doc
from .muon import Muon
from .noise import NOISE_ALPHA, NOISE_EVERY, NOISE_RULE
from .checks import check_choice

SCALES = ("frobenius", "rms")
#: Guard added to sqrt(v) and to ||O_hat||_F (the reference code's 1e-10).
NEURON_EPS = 1e-10


def neuron_normalize(o: Tensor, row_sq: Tensor, beta2: float, scale: str, eps: float = NEURON_EPS) -> Tensor:
    """NorMuon's stage-3 factor for one matrix ``o`` (rows = output neurons); updates ``row_sq`` in place.

    ``v <- beta2 v + (1 - beta2) mean_cols(o * o)``; ``o_hat = o / (sqrt(v) + eps)`` row-wise; then
    ``o_hat`` is rescaled to Frobenius norm ``||o||_F`` (``scale="frobenius"``) or ``0.2 sqrt(m n)``
    (``scale="rms"``: update RMS 0.2).
    """
    normed = normalize_rows(o, row_sq, beta2, eps)
    if scale == "frobenius":
        target = torch.linalg.vector_norm(o)
    else:
        target = 0.2 * math.sqrt(o.numel())
    return normed.mul_(target / (torch.linalg.vector_norm(normed) + eps))


def normalize_rows(o: Tensor, row_sq: Tensor, beta2: float, eps: float = NEURON_EPS) -> Tensor:
    """The row-wise half of :func:`neuron_normalize` (``o / (sqrt(v) + eps)`` after updating ``v``
    in place); it needs only whole rows, so it runs on dim-0 shards as it is. A matrix without
    columns has nothing to normalize and leaves ``v`` as it is."""
    if o.shape[1] == 0:
        return o
    row_sq.mul_(beta2).add_(o.square().mean(dim=1).to(row_sq.dtype), alpha=1 - beta2)
    return o / (row_sq.sqrt() + eps).to(o.dtype).unsqueeze(1)


class NorMuon(Muon):
    __doc__ = fill_doc(r"""NorMuon (Li, Liu, Liang, Chen, Zhao; arXiv 2510.05491).

    Muon's orthogonalized momentum, then a per-neuron second-moment normalization so that every
    output neuron (row) gets an update of the same RMS. For each hidden matrix (conv filters viewed
    as ``m x n = out x in*kh*kw``; rows are output neurons):

    .. math::
        M_t &= \mu M_{t-1} + (1-\mu) g_t, \qquad D_t = (1-\mu) g_t + \mu M_t \ \text{(Nesterov)} \\
        O_t &= \mathrm{NS}(D_t) \\
        v_t &= \beta_2 v_{t-1} + (1-\beta_2)\, \mathrm{mean}_{\text{cols}}(O_t \odot O_t) \in \mathbb{R}^m \\
        \hat O_t &= O_t \oslash (\sqrt{v_t} + \epsilon) \quad \text{(row-wise)} \\
        W_t &= (1 - \eta\lambda) W_{t-1} - \eta\, s\, c_t\, \hat O_t

    with ``scale="frobenius"`` (the reference code): ``c_t = ||O_t||_F / (||\hat O_t||_F + eps)``
    (the update keeps Muon's Frobenius norm) and ``s`` the ``adjust_lr`` factor (default Keller's
    ``sqrt(max(1, m/n))``); or ``scale="rms"`` (the paper's form): ``c_t = 0.2 sqrt(mn) / ||\hat O_t||_F``,
    update RMS ``0.2 eta`` like AdamW's, and ``adjust_lr`` defaults to ``none``. ``eps = 1e-10``.
    ``v`` starts at zero without bias correction (the Frobenius rescale makes the step
    scale-free, so the zero start only changes relative row weights in the first steps). Extra
    state: one float per row. Conv filters are normalized on the flattened ``out x in*k*k`` view
    (the reference code takes row statistics of the 4-D tensor's last axis).

    Embeddings, heads and vectors get AdamW inside the same optimizer, as in :class:`Muon`. The
    neuron normalization applies to every group whose geometry is ``spectral``.

    Defaults: ``momentum=0.95``, ``beta2=0.95``, Nesterov, 5 Keller Newton-Schulz steps,
    ``weight_decay=0`` (reference repository); ``lr=0.04`` and AdamW side ``adamw_lr=1e-2``, the
    minimax-regret choice of ``steepest bench defaults`` (docs/benchmarks.md, "The defaults
    study"; the reference's lr 0.02 is there too); otherwise the AdamW side is :class:`Muon`'s.

    Args:
        {PARAMS_DOC}
        lr: learning rate of the matrix groups.
        momentum: EMA coefficient ``mu`` in [0, 1).
        beta2: EMA coefficient of the per-row second moment, in [0, 1).
        scale: ``frobenius`` (keep Muon's Frobenius norm) or ``rms`` (update RMS 0.2).
        nesterov: use the Nesterov signal.
        weight_decay: decoupled weight decay of the matrix groups.
        adjust_lr: shape factor (see :class:`Muon`); ``None`` picks ``original`` for
            ``scale="frobenius"`` and ``none`` for ``scale="rms"``.
        {NS_DOC}
        adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay: the fallback AdamW's hyperparameters.
        embedding_lr: the fallback AdamW's lr on embedding tables (``None``, the default: ``adamw_lr``;
            with six seeds, tables at 3e-3 lost the defaults study's minimax for NorMuon, score 0.51
            against 0.25: docs/benchmarks.md, "Embedding tables").
        {NOISE_DOC}
        {COMMON_DOC}
    """)

    PRESET_KEYS = {"beta2": 0.95, "scale": "frobenius"}

    def __init__(self, params: Iterable[Any], lr: float = 0.04, momentum: float = 0.95, beta2: float = 0.95,
                 scale: str = "frobenius", nesterov: bool = True, weight_decay: float = 0.0,
                 adjust_lr: str | None = None, ns: str = "keller", ns_steps: int | None = None,
                 ns_dtype: str = "auto", adamw_lr: float = 1e-2, adamw_betas: tuple[float, float] = (0.9, 0.95),
                 adamw_eps: float = 1e-10, adamw_weight_decay: float = 0.0, *, embedding_lr: float | None = None,
                 noise_adaptive: bool = False,
                 noise_beta: float = 0.9, noise_source: str = "previous", noise_rule: str = NOISE_RULE, noise_alpha: float = NOISE_ALPHA,
                 noise_every: int = NOISE_EVERY,
                 maximize: bool = False,
                 langevin_temperature: float = 0.0, langevin_seed: int = 0, on_nonfinite: str = "raise", distributed_mesh: Any = None,
                 compile: bool | str = "auto"):
        check_choice("scale", scale, SCALES)
        if adjust_lr is None:
            adjust_lr = "original" if scale == "frobenius" else "none"
        super().__init__(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                         adjust_lr=adjust_lr, ns=ns, ns_steps=ns_steps, ns_dtype=ns_dtype, adamw_lr=adamw_lr,
                         adamw_betas=adamw_betas, adamw_eps=adamw_eps, adamw_weight_decay=adamw_weight_decay,
                         embedding_lr=embedding_lr, noise_adaptive=noise_adaptive, noise_beta=noise_beta,
                         noise_source=noise_source,
                         noise_rule=noise_rule, noise_alpha=noise_alpha, noise_every=noise_every, maximize=maximize,
                         langevin_temperature=langevin_temperature, langevin_seed=langevin_seed, on_nonfinite=on_nonfinite, distributed_mesh=distributed_mesh,
                         compile=compile, beta2=beta2, scale=scale)

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        if group.get("layout", "out_in") == "in_out" and self._topology is not None and group["geometry"] == "spectral":
            raise ValueError("NorMuon's neuron statistics of layout='in_out' weights run on one process only; "
                             "distributed_mesh supports layout='out_in' (nn.Linear) weights")
        beta2 = group["beta2"]
        if isinstance(beta2, bool) or not isinstance(beta2, (int, float)):
            raise TypeError(f"Invalid type for beta2: expected a real number, got {type(beta2).__name__}")
        if not 0.0 <= beta2 < 1.0:
            raise ValueError(f"Invalid beta2 value: {beta2}; expected 0 <= beta2 < 1")
        check_choice("scale", group["scale"], SCALES)

    def _scale_entries(self, group: dict[str, Any], params: list[Tensor], directions: list[Tensor]) -> list[Tensor]:
        """Stage 3's per-entry factor: the neuron normalization of every spectral group."""
        if group["geometry"] != "spectral":
            return directions
        if group.get("layout", "out_in") == "in_out":  # neurons are the columns of a (in, out) weight
            return [neuron_normalize(d.mT, self.state[p]["row_sq"], group["beta2"], group["scale"]).mT
                    for p, d in zip(params, directions)]
        if not self._sharded(params):
            return [neuron_normalize(as_matrix(d), self.state[p]["row_sq"], group["beta2"], group["scale"]).view_as(d)
                    for p, d in zip(params, directions)]
        # distributed: rows are whole on every shard; the two Frobenius norms are summed over shards
        outs = [as_matrix(d) for d in directions]
        normed = [normalize_rows(o, self._state_view(p)["row_sq"], group["beta2"]) for p, o in zip(params, outs)]
        partial = torch.stack([torch.stack([o.float().square().sum(), n.float().square().sum()])
                               for o, n in zip(outs, normed)]).double()
        totals = self._whole_sums(params, partial).tolist()
        for p, n, (o_sq, n_sq) in zip(params, normed, totals):
            target = math.sqrt(o_sq) if group["scale"] == "frobenius" else 0.2 * math.sqrt(p.numel())
            n.mul_(target / (math.sqrt(n_sq) + NEURON_EPS))
        return [n.view_as(d) for n, d in zip(normed, directions)]

    def _ensure_state(self, group: dict[str, Any], p: Tensor) -> None:
        super()._ensure_state(group, p)
        if group["geometry"] == "spectral" and "row_sq" not in self.state[p]:
            if group.get("layout", "out_in") == "in_out":  # one entry per output neuron: dim 1
                self.state[p]["row_sq"] = torch.zeros(p.shape[1], dtype=self.state_dtype(p), device=p.device)
            else:
                self.state[p]["row_sq"] = rows_like(p, self.state_dtype(p))

    def describe_update(self, group: dict[str, Any]) -> str:
        base = super().describe_update(group)
        if group["geometry"] != "spectral":
            return base
        return f"{base} + neurons(beta2={group['beta2']}, {group['scale']})"
