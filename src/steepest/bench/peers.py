"""The optimizers a benchmark compares ("peers"), built by name for a given model.

Every builder returns a :class:`Peer`: one object with ``step()`` and ``zero_grad()`` that drives
one or more underlying ``torch.optim.Optimizer`` objects (``torch.optim.Muon`` only takes hidden
matrices, so it needs an AdamW beside it). The runner attaches one ``LambdaLR`` to each of
``peer.optimizers``, so every parameter group follows the same schedule multiplier, and it times
``peer.step()`` as "the optimizer step": that covers *all* underlying optimizers (``step_covers``
says what that is for the report).

Every builder takes ``roles_override`` (the task's ``roles=`` for :func:`steepest.roles.classify`,
so every peer agrees on which tensors are hidden matrices) and ``adamw_weight_decay`` (the AdamW
baseline's decay on >= 2-D tensors; a task such as matrix sensing sets 0).

Peers:
    adamw          torch.optim.AdamW, lr 4e-3 (the best of a 600-step lr sweep on this benchmark's
                   GPT), betas (0.9, 0.95), weight decay 0.1 (the task's ``adamw_weight_decay``) on
                   >= 2-D weights and 0 elsewhere.
    torch-muon     torch.optim.Muon on the hidden matrices (lr 0.02, momentum 0.95, Nesterov, no
                   weight decay, default lr adjustment and default Newton-Schulz, i.e. bfloat16),
                   plus torch.optim.AdamW (lr 3e-3, betas (0.9, 0.95), no weight decay) on the rest.
    steepest-*     steepest.for_model(model, <preset>, **STEEPEST_PEERS[name][1]): every preset of
                   steepest's registry, with the benchmark lrs below (presets with an AdamW
                   fallback use adamw_lr 2e-3, embedding tables included).
    steepest-*-defaults  every preset at its own defaults (``for_model(model, <preset>)``, nothing
                   else): what a user who sets no hyperparameter gets (:data:`DEFAULTS_PEERS`).
    po-*, hb-*     the same-name optimizers of pytorch-optimizer and heavyball, when installed
                   (:mod:`.external_peers`).

Base lrs (:data:`DEFAULT_LRS`: the peak of the warmup + cosine schedule; the suite multiplies them
by its lr grid, the same grid for every peer). AdamW's 4e-3 and Muon's 0.02 are the best of a
600-step sweep on this benchmark's GPT, and Scion's 2^-6 comes from its docstring. Every other
steepest preset's lr was kept from a 100-step sweep on the same model: the best lr there, except
where short runs favour a larger lr than long ones (NorMuon and Lion-K keep the smaller, as Muon
does) and for M-FAC, whose best 100-step lr spiked in the 300-step default run. The sweeps, their
losses and the reasons are in docs/benchmarks.md, "Measurements behind the defaults".

The LANTON peers:

    steepest-lanton(-base) LANTON with and without its noise-adaptive rates (the base is the same
                          preset with noise_adaptive=False, at lr 0.02, its best in the study);
                          steepest-muon-lanton is Muon with noise_adaptive=True. The
                          noise-adaptive ones run at LANTON's default lr 0.04
                          (`steepest bench lanton` tunes them all on x0.25-x8 of these lrs)
    steepest-lanton-*     the LANTON study's variants (steepest.bench.lanton_study,
                          docs/algorithms/lanton.md): one noise rule each (min-ratio, sqrt-ratio,
                          alpha-sqrt with alpha 0.3), the second-gradient noise source (-second)
                          and a measurement at every step instead of every 10th (-every-step), all
                          at LANTON's 0.04

A peer that cannot be built here (``torch.optim.Muon`` before torch 2.9) raises
:class:`PeerUnavailable`; the runner skips it and records the reason in the report.
"""
from __future__ import annotations

import inspect
from typing import Callable, Mapping

import torch
from torch import nn

from ..explain import explain
from ..factory import for_model
from ..optim.registry import REGISTRY
from .external_peers import EXTERNAL_BUILDERS, EXTERNAL_LRS, installed
from .peer_base import (AUX_ADAMW_LR, BETAS, TORCH_MUON_ADAMW_LR, Peer, PeerUnavailable,  # noqa: F401
                        hidden_matrix_names,  # noqa: F401
                        split_hidden, state_bytes)


#: The noise settings the LANTON study's peers share (each peer changes one of them).
STUDY_NOISE = {"noise_rule": "alpha_sqrt", "noise_alpha": 0.3, "noise_every": 10, "noise_beta": 0.9,
               "noise_source": "previous"}


def registry_peers() -> dict[str, tuple[str, dict]]:
    """``steepest-<name>`` for every registered preset, with its registry entry's ``bench`` keywords;
    presets with an AdamW fallback also get :data:`AUX_ADAMW_LR` on every fallback tensor, embedding
    tables included (``embedding_lr=None``), as the AdamW beside torch.optim.Muon."""
    peers = {}
    for name, entry in REGISTRY.items():
        kwargs = dict(entry.bench)
        parameters = inspect.signature(entry.cls).parameters
        if "adamw_lr" in parameters:
            kwargs["adamw_lr"] = AUX_ADAMW_LR
        if "embedding_lr" in parameters:
            kwargs["embedding_lr"] = None
        peers[f"steepest-{name.replace('_', '-')}"] = (name, kwargs)
    return peers


#: peer name -> (steepest preset, constructor keywords). ``lr`` is the benchmark's base peak lr;
#: ``build_peer(..., lr=x)`` replaces it. The registry's presets, then variants of them.
STEEPEST_PEERS: dict[str, tuple[str, dict]] = {
    **registry_peers(),
    "steepest-lanton-base": ("lanton", {"lr": 0.02, "sign_lr": 5e-4, "noise_adaptive": False}),
    # the LANTON study (steepest.bench.lanton_study): each noise rule and option spelled out, so that
    # a change of the preset's defaults leaves these peers (and their recorded cells) as they are
    "steepest-lanton-min-ratio": ("lanton", {"lr": 0.04, "sign_lr": 5e-4, **STUDY_NOISE, "noise_rule": "min_ratio"}),
    "steepest-lanton-sqrt-ratio": ("lanton", {"lr": 0.04, "sign_lr": 5e-4, **STUDY_NOISE,
                                              "noise_rule": "sqrt_ratio"}),
    "steepest-lanton-alpha-sqrt": ("lanton", {"lr": 0.04, "sign_lr": 5e-4, **STUDY_NOISE}),
    "steepest-lanton-second": ("lanton", {"lr": 0.04, "sign_lr": 5e-4, **STUDY_NOISE, "noise_source": "second"}),
    "steepest-lanton-every-step": ("lanton", {"lr": 0.04, "sign_lr": 5e-4, **STUDY_NOISE, "noise_every": 1}),
    "steepest-muon-lanton": ("muon", {"lr": 0.04, "adamw_lr": AUX_ADAMW_LR, "embedding_lr": None,
                                      "noise_adaptive": True}),
}


def default_lr(preset: str) -> float:
    """The preset constructor's default lr."""
    return float(inspect.signature(REGISTRY[preset].cls.__init__).parameters["lr"].default)


#: ``steepest-<name>-defaults``: every preset exactly as ``for_model(model, name)`` builds it (the
#: lr it is given is its default lr, so the suite's multiplier x1 is what a user gets)
DEFAULTS_PEERS: dict[str, tuple[str, dict]] = {
    f"steepest-{name.replace('_', '-')}-defaults": (name, {"lr": default_lr(name)}) for name in REGISTRY}
STEEPEST_PEERS.update(DEFAULTS_PEERS)


def tuned_peer(name: str) -> str | None:
    """The benchmark's tuned peer of a defaults peer (``steepest-muon`` for ``steepest-muon-defaults``)."""
    return name.removesuffix("-defaults") if name in DEFAULTS_PEERS else None


def defaults_are_tuned(tuned: str) -> bool:
    """Whether the tuned peer ``tuned`` (``steepest-<preset>``) runs its preset at its defaults: every
    keyword it sets equals the constructor's default."""
    preset, kwargs = STEEPEST_PEERS[tuned]
    params = inspect.signature(REGISTRY[preset].cls.__init__).parameters
    return all(k in params and params[k].default == v for k, v in kwargs.items())

#: The base learning rate of every peer (the suite's lr grid multiplies it).
DEFAULT_LRS: dict[str, float] = {
    "adamw": 4e-3,
    "torch-muon": 0.02,
    **{name: kwargs["lr"] for name, (_, kwargs) in STEEPEST_PEERS.items()},
}


def _decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on parameters with 2 or more dims, none on vectors."""
    matrices = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    vectors = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": matrices, "weight_decay": weight_decay}, {"params": vectors, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_adamw(model: nn.Module, lr: float | None = None, roles_override=None,
                adamw_weight_decay: float = 0.1) -> Peer:
    lr = DEFAULT_LRS["adamw"] if lr is None else lr
    wd = adamw_weight_decay
    opt = torch.optim.AdamW(_decay_groups(model, wd), lr=lr, betas=BETAS)
    return Peer("adamw", [opt], step_covers="torch.optim.AdamW on every parameter",
                hyperparameters={"lr": lr, "betas": BETAS, "weight_decay": f"{wd:g} on >= 2-D, 0 on 1-D"})


def build_torch_muon(model: nn.Module, lr: float | None = None, roles_override=None,
                     adamw_weight_decay: float = 0.1) -> Peer:
    reason = unavailable_reason("torch-muon")
    if reason:
        raise PeerUnavailable(reason)
    lr = DEFAULT_LRS["torch-muon"] if lr is None else lr
    muon_params, other_params = split_hidden(model, roles_override)
    if not muon_params:
        raise PeerUnavailable("the model has no hidden 2-D matrix for torch.optim.Muon")
    muon = torch.optim.Muon(muon_params, lr=lr, momentum=0.95, nesterov=True, weight_decay=0.0)
    optimizers = [muon]
    if other_params:
        optimizers.append(torch.optim.AdamW(other_params, lr=TORCH_MUON_ADAMW_LR, betas=BETAS, weight_decay=0.0))
    return Peer(
        "torch-muon", optimizers,
        step_covers=(f"torch.optim.Muon ({len(muon_params)} hidden matrices, bfloat16 Newton-Schulz) "
                     f"+ torch.optim.AdamW ({len(other_params)} other tensors)"),
        hyperparameters={"lr": lr, "momentum": 0.95, "nesterov": True, "weight_decay": 0.0,
                         "adjust_lr_fn": "original (default)", "aux_adamw_lr": TORCH_MUON_ADAMW_LR,
                         "aux_betas": BETAS, "aux_weight_decay": 0.0, "hidden_chosen_by": "steepest.roles.classify"},
    )


def _steepest_peer(name: str, model: nn.Module, preset: str, roles_override=None, **kwargs) -> Peer:
    opt = for_model(model, preset, roles=roles_override, **kwargs)
    return Peer(name, [opt], step_covers=f"steepest.for_model(model, {preset!r}): one optimizer",
                hyperparameters={**kwargs, "lr": opt.defaults["lr"]}, explanation=explain(opt))


def steepest_builder(name: str) -> Callable[..., Peer]:
    """The builder of the steepest peer ``name`` (see ``STEEPEST_PEERS``)."""
    preset, defaults = STEEPEST_PEERS[name]

    def build(model: nn.Module, lr: float | None = None, roles_override=None,
              adamw_weight_decay: float = 0.1, options: Mapping | None = None) -> Peer:
        kwargs = {**defaults, **(options or {})}
        if lr is not None:
            kwargs["lr"] = lr
        return _steepest_peer(name, model, preset, roles_override=roles_override, **kwargs)

    build.__name__ = f"build_{name.replace('-', '_')}"
    return build



#: torch's references and every steepest peer but the defaults ones (the full suite's lr grid would
#: move them off their defaults)
CORE_PEERS: tuple[str, ...] = ("adamw", "torch-muon", *[n for n in STEEPEST_PEERS if n not in DEFAULTS_PEERS])
BUILDERS: dict[str, Callable[..., Peer]] = {
    "adamw": build_adamw,
    "torch-muon": build_torch_muon,
    **{name: steepest_builder(name) for name in STEEPEST_PEERS},
    **EXTERNAL_BUILDERS,
}
DEFAULT_LRS.update(EXTERNAL_LRS)
PEER_NAMES = tuple(BUILDERS)


def unavailable_reason(name: str) -> str | None:
    """Why peer ``name`` cannot be built here (a missing library or torch API), or ``None``."""
    if name in EXTERNAL_BUILDERS:
        ok, reason = installed(name)
        return None if ok else reason
    if name == "torch-muon" and not hasattr(torch.optim, "Muon"):
        return f"torch {torch.__version__} has no torch.optim.Muon (added in 2.9)"
    return None


def build_peer(name: str, model: nn.Module, lr: float | None = None,
               roles_override: Mapping[str, str] | None = None, adamw_weight_decay: float = 0.1,
               options: Mapping | None = None) -> Peer:
    """Build the peer ``name`` for ``model``.

    ``lr`` overrides its default learning rate; ``roles_override`` is passed to
    :func:`steepest.roles.classify` (so every peer agrees on the hidden matrices);
    ``adamw_weight_decay`` is the AdamW baseline's decay on >= 2-D tensors (a task may set 0);
    ``options`` (steepest peers only) replaces constructor keywords of the peer's own.
    """
    try:
        builder = BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(PEER_NAMES)}") from None
    if options:
        if name not in STEEPEST_PEERS:
            raise ValueError(f"options apply to steepest peers only; {name!r} is not one")
        return builder(model, lr=lr, roles_override=roles_override, adamw_weight_decay=adamw_weight_decay,
                       options=options)
    return builder(model, lr=lr, roles_override=roles_override, adamw_weight_decay=adamw_weight_decay)
