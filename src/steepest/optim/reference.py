"""The engine's update for one parameter, in plain code: the readable definition of a step.

:class:`~steepest.optim.engine.GeometryOptimizer` runs the same four stages over whole groups, with
batching, distribution, dtype policies, compiled kernels and numeric-range care that this function
leaves out. The conformance suite checks every preset's step against this one in float64
(``tests/conformance/test_reference.py``). A preset's own stage-3 rule enters as a hook:
``scale_entries(O)`` (per-entry factor, NorMuon's neuron normalization) and ``step_factor(O)`` (one
scalar, AuON's brake); M-FAC's window replaces the gradient through ``precondition(g)``.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from ..geometry import make_geometry


def reference_step(w: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any], *,
                   precondition: Callable[[Tensor], Tensor] | None = None,
                   scale_entries: Callable[[Tensor], Tensor] | None = None,
                   step_factor: Callable[[Tensor], float] | None = None) -> Tensor:
    """``w`` after one step with gradient ``grad`` under ``group``'s keys; ``state`` (a dict of
    this function's own, empty at the first step) is updated in place."""
    g = -grad if group["maximize"] else grad
    if precondition is not None:
        g = precondition(g)
    # (1) state transform: the signal D
    kind = group["transform"]
    if kind == "momentum":
        beta = group["momentum"]
        state["m"] = beta * state.get("m", torch.zeros_like(g)) + (1 - beta) * g
        d = ((1 - beta) * g + beta * state["m"] if group["nesterov"] else state["m"]) if beta > 0 else g
    elif kind == "lion":
        beta1, beta2 = group["betas"]
        m = state.get("m", torch.zeros_like(g))
        d = beta1 * m + (1 - beta1) * g
        state["m"] = beta2 * m + (1 - beta2) * g
    else:  # adam, diffgrad
        beta1, beta2 = group["betas"]
        t = state["t"] = state.get("t", 0) + 1
        state["m"] = beta1 * state.get("m", torch.zeros_like(g)) + (1 - beta1) * g
        state["v"] = beta2 * state.get("v", torch.zeros_like(g)) + (1 - beta2) * g * g
        if kind == "adam":
            d = (state["m"] / (1 - beta1**t)) / (state["v"].sqrt() / math.sqrt(1 - beta2**t) + group["eps"])
        else:
            friction = torch.sigmoid((state.get("prev", torch.zeros_like(g)) - g).abs())
            state["prev"] = g
            d = math.sqrt(1 - beta2**t) / (1 - beta1**t) * friction * state["m"] / (state["v"].sqrt() + group["eps"])
    # (2) direction: the LMO of the group's geometry
    geometry = make_geometry(group)
    o = geometry.lmo(d)
    # (3) step size, with the preset's hooks
    if scale_entries is not None:
        o = scale_entries(o)
    s = group["lr"] * group["radius"] * geometry.shape_scale(w.shape)
    if step_factor is not None:
        s *= step_factor(o)
    # (4) decay with the unadjusted lr, then the step
    return (1 - group["lr"] * group["weight_decay"]) * w - s * o
