"""What every benchmark peer is: a named set of optimizers stepped together, and shared helpers."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

from .. import roles


class PeerUnavailable(RuntimeError):
    """The peer cannot be built here (its library is missing or lacks the needed API)."""


@dataclass
class Peer:
    """A named optimizer setup; ``step()`` and ``zero_grad()`` act on every underlying optimizer."""

    name: str
    optimizers: list[torch.optim.Optimizer]
    step_covers: str
    hyperparameters: dict = field(default_factory=dict)
    explanation: str | None = None

    def step(self, second_grads: dict | None = None) -> None:
        """Step every optimizer; ``second_grads`` (``{param: gradient}`` of a second batch) goes to
        the optimizers that asked for it (:meth:`needs_second_grads`)."""
        for opt in self.optimizers:
            if second_grads is not None and getattr(opt, "needs_second_grads", lambda: False)():
                opt.step(second_grads=second_grads)
            else:
                opt.step()

    def needs_second_grads(self) -> bool:
        """Whether the next step needs a second gradient at the same point (LANTON's
        ``noise_source="second"`` at a measuring step)."""
        return any(getattr(opt, "needs_second_grads", lambda: False)() for opt in self.optimizers)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)


AUX_ADAMW_LR = 2e-3  # the AdamW that handles non-matrix parameters beside the tuned steepest presets
#: the AdamW lr beside torch.optim.Muon in the ``torch-muon`` reference (torch.optim.Muon at 0.02 on
#: the hidden matrices, torch.optim.AdamW at 3e-3 on the rest: the recipe the defaults are held to)
TORCH_MUON_ADAMW_LR = 3e-3
BETAS = (0.9, 0.95)

def hidden_matrix_names(model: nn.Module, overrides: Mapping[str, str] | None = None) -> set[str]:
    """Names of the parameters ``steepest.roles.classify`` labels ``hidden`` (torch.optim.Muon's share)."""
    return {name for name, role in roles.classify(model, overrides).items() if role == "hidden"}


def split_hidden(model: nn.Module, overrides: Mapping[str, str] | None = None):
    """(hidden matrices, every other trainable tensor), in ``named_parameters`` order."""
    hidden = hidden_matrix_names(model, overrides)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [p for n, p in named if n in hidden], [p for n, p in named if n not in hidden]


def state_bytes(optimizers: list[torch.optim.Optimizer]) -> int:
    """Exact bytes of every tensor held in the optimizers' ``.state`` (each storage counted once)."""
    seen: set[int] = set()
    total = 0

    def visit(value) -> None:
        nonlocal total
        if isinstance(value, torch.Tensor):
            key = value.untyped_storage().data_ptr() if value.numel() else id(value)
            if key not in seen:
                seen.add(key)
                total += value.untyped_storage().nbytes()
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)

    for opt in optimizers:
        visit(dict(opt.state))
    return total
