"""Optimizers of the same name from other libraries, benchmarked when they are installed.

Each builder imports its library on use and raises :class:`PeerUnavailable` (the runner then skips
the peer with a note) when the library is missing. Parameters are split exactly as for
``torch-muon``: ``steepest.roles.classify`` picks the hidden matrices, and everything else goes to the
library's own AdamW branch or to ``torch.optim.AdamW`` (lr 2e-3, betas (0.9, 0.95), no decay).
Learning rates follow the rule of the steepest preset of the same name, because the update rules
and their lr scales agree (checked on a single step for each: the update's spectral norm, sign
entries or Adam-style magnitude match the steepest preset's at the same lr):

=============  ==============================================================================
``po-muon``    ``pytorch_optimizer.Muon``: hidden matrices with ``use_muon=True`` (lr 0.02,
               momentum 0.95, Nesterov), the rest in its AdamW groups (lr 2e-3)
``po-lion``    ``pytorch_optimizer.Lion`` on every parameter (lr 6e-4, betas (0.9, 0.99))
``po-diffgrad`` ``pytorch_optimizer.DiffGrad`` on every parameter (lr 4e-3, betas (0.9, 0.999))
``po-scion``   ``pytorch_optimizer.SCION`` with steepest Scion's recipe mapped onto its norms:
               spectral (radius 3) for hidden and conv, row norm (1 x the row length, since its
               rows get unit l2 norm where steepest's get unit RMS) for embeddings, sign (10) for
               the head, bias (1) for vectors; lr 2^-6, momentum weight 0.1 (= 1 - 0.9)
``hb-muon``    ``heavyball.Muon`` on the hidden matrices (lr 0.02) + ``torch.optim.AdamW`` on the
               rest. heavyball compiles its kernels with ``torch.compile`` by default; inductor
               compilation on a CPU takes minutes per shape, so the builder sets
               ``heavyball.utils.compile_mode = None`` (eager kernels) and ``compile_step=False``
=============  ==============================================================================
"""
from __future__ import annotations

import importlib
import importlib.metadata

import torch
from torch import nn

from .. import roles
from .peer_base import AUX_ADAMW_LR, BETAS, Peer, PeerUnavailable, split_hidden

SCION_LR = 2.0 ** -6
SCION_RADII = {"hidden": 3.0, "conv": 3.0, "embedding": 1.0, "head": 10.0, "vector": 1.0}


def _library(module: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise PeerUnavailable(f"{package} is not installed (pip install {package}): {exc}") from None


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:  # importable but not installed as a distribution
        return "unknown version"


def _aux_adamw(params: list) -> list[torch.optim.Optimizer]:
    return [torch.optim.AdamW(params, lr=AUX_ADAMW_LR, betas=BETAS, weight_decay=0.0)] if params else []


def build_po_muon(model: nn.Module, lr: float | None = None, roles_override=None, **_) -> Peer:
    po = _library("pytorch_optimizer", "pytorch-optimizer")
    lr = 0.02 if lr is None else lr
    hidden, other = split_hidden(model, roles_override)
    groups = [{"params": hidden, "use_muon": True}] + ([{"params": other, "use_muon": False}] if other else [])
    opt = po.Muon(groups, lr=lr, momentum=0.95, nesterov=True, weight_decay=0.0, adamw_lr=AUX_ADAMW_LR,
                  adamw_betas=BETAS, adamw_wd=0.0)
    version = _version("pytorch-optimizer")
    return Peer("po-muon", [opt], step_covers=f"pytorch_optimizer.Muon {version} (Muon + its AdamW)",
                hyperparameters={"lr": lr, "momentum": 0.95, "nesterov": True, "adamw_lr": AUX_ADAMW_LR,
                                 "library": f"pytorch-optimizer {version}"})


def _po_elementwise(name: str, cls_name: str, default_lr: float, betas: tuple):
    def build(model: nn.Module, lr: float | None = None, roles_override=None, **_) -> Peer:
        po = _library("pytorch_optimizer", "pytorch-optimizer")
        lr = default_lr if lr is None else lr
        opt = getattr(po, cls_name)([p for p in model.parameters() if p.requires_grad], lr=lr,
                                    betas=betas, weight_decay=0.0)
        version = _version("pytorch-optimizer")
        return Peer(name, [opt], step_covers=f"pytorch_optimizer.{cls_name} {version} on every parameter",
                    hyperparameters={"lr": lr, "betas": betas, "library": f"pytorch-optimizer {version}"})

    build.__name__ = f"build_{name.replace('-', '_')}"
    return build


def build_po_scion(model: nn.Module, lr: float | None = None, roles_override=None, **_) -> Peer:
    po = _library("pytorch_optimizer", "pytorch-optimizer")
    from pytorch_optimizer.optimizer.scion import LMONorm

    norms = {"hidden": LMONorm.SPECTRAL, "conv": LMONorm.SPECTRALCONV, "embedding": LMONorm.ROW,
             "head": LMONorm.SIGN, "vector": LMONorm.BIAS}
    lr = SCION_LR if lr is None else lr
    by_role: dict[str, list] = {}
    params = dict(model.named_parameters())
    for name, role in roles.classify(model, roles_override).items():
        if params[name].requires_grad:
            by_role.setdefault(role, []).append(params[name])
    groups = [{"params": ps, "norm_type": norms[role], "scale": SCION_RADII[role]} for role, ps in by_role.items()
              if role != "embedding"]
    # Its row-norm LMO gives rows of unit l2 norm, steepest's rows of unit RMS: scale by the row length.
    groups += [{"params": [p], "norm_type": norms["embedding"], "scale": SCION_RADII["embedding"] * p.shape[-1]}
               for p in by_role.get("embedding", [])]
    opt = po.SCION(groups, lr=lr, momentum=0.1, weight_decay=0.0)
    version = _version("pytorch-optimizer")
    return Peer("po-scion", [opt], step_covers=f"pytorch_optimizer.SCION {version}, one group per role",
                hyperparameters={"lr": lr, "momentum": 0.1, "radii": SCION_RADII,
                                 "library": f"pytorch-optimizer {version}"})


def build_hb_muon(model: nn.Module, lr: float | None = None, roles_override=None, **_) -> Peer:
    hb = _library("heavyball", "heavyball")
    hb.utils.compile_mode = None  # eager kernels: inductor compilation on CPU takes minutes
    lr = 0.02 if lr is None else lr
    hidden, other = split_hidden(model, roles_override)
    if not hidden:
        raise PeerUnavailable("the model has no hidden 2-D matrix for heavyball.Muon")
    opt = hb.Muon(hidden, lr=lr, compile_step=False)
    version = _version("heavyball")
    return Peer("hb-muon", [opt, *_aux_adamw(other)],
                step_covers=f"heavyball.Muon {version} (eager) + torch.optim.AdamW on the rest",
                hyperparameters={"lr": lr, "aux_adamw_lr": AUX_ADAMW_LR, "library": f"heavyball {version}"})


EXTERNAL_BUILDERS = {
    "po-muon": build_po_muon,
    "po-lion": _po_elementwise("po-lion", "Lion", 6e-4, (0.9, 0.99)),
    "po-diffgrad": _po_elementwise("po-diffgrad", "DiffGrad", 4e-3, (0.9, 0.999)),
    "po-scion": build_po_scion,
    "hb-muon": build_hb_muon,
}
#: the default learning rate of each external peer (the steepest preset's of the same name)
EXTERNAL_LRS = {"po-muon": 0.02, "po-lion": 6e-4, "po-diffgrad": 4e-3, "po-scion": SCION_LR, "hb-muon": 0.02}


def installed(name: str) -> tuple[bool, str]:
    """Whether the library behind external peer ``name`` can be imported, and why not."""
    module, package = ("heavyball", "heavyball") if name.startswith("hb-") else ("pytorch_optimizer", "pytorch-optimizer")
    try:
        _library(module, package)
    except PeerUnavailable as exc:
        return False, str(exc)
    return True, ""
