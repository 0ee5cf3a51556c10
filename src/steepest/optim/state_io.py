"""Optimizer state on the way in: dtypes kept as saved, host counters on the CPU, old layouts
converted. The engine's ``load_state_dict`` calls :func:`restore_saved_state` after torch's loader."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..numerics import wide_float

#: state kept on the CPU whatever the parameter's device (counters read on the host every step),
#: restored exactly as saved (torch's loader casts state tensors to the parameter's dtype and device)
HOST_STATE = ("noise_count", "noise_prev_valid", "noise_step", "langevin_step")


def upgrade_state(state: dict[str, Any]) -> None:
    """Convert one parameter's state from the layout of steepest 0.7 and earlier in place:
    ``exp_avg_sq`` (Adam/diffGrad's ``v``, up to 0.6) to ``exp_avg_rms = sqrt(v)``; a float32
    ``noise_sq`` (LANTON) or ``gram`` (M-FAC) to :func:`steepest.numerics.wide_float`; and a
    missing ``noise_step`` (0.7 measured noise at every step) rebuilt from the counts."""
    if "exp_avg_sq" in state:
        state["exp_avg_rms"] = state.pop("exp_avg_sq").sqrt()
    for key in ("noise_sq", "gram"):
        value = state.get(key)
        if isinstance(value, Tensor) and value.dtype != wide_float(value.device):
            state[key] = value.to(wide_float(value.device))
    if "noise_count" in state and "noise_step" not in state:
        # 0.7 and earlier measured at every step: the layer has stepped once more than it measured
        # with noise_source="previous" (its first step only kept the gradient), as often with "second"
        steps = state["noise_count"] + state.get("noise_prev_valid", torch.zeros(()))
        state["noise_step"] = steps.to(device="cpu", dtype=torch.float32)


def restore_saved_state(optimizer: Any, saved_groups: list[dict], saved_state: dict) -> None:
    """After torch's loader: give every floating state tensor back the dtype it was saved with
    (torch casts floating state to the parameter's dtype), keep :data:`HOST_STATE` on the CPU with
    its saved dtype (Langevin's integer step counter included), and upgrade old layouts
    (:func:`upgrade_state`)."""
    saved_ids = [i for g in saved_groups for i in g["params"]]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for saved_id, p in zip(saved_ids, params):
        if saved_id not in saved_state:
            continue
        for key, value in saved_state[saved_id].items():
            if isinstance(value, Tensor) and key in HOST_STATE:
                optimizer.state[p][key] = value.to(device="cpu", copy=True)
                continue
            if not isinstance(value, Tensor) or key == "step" or not value.is_floating_point():
                continue
            loaded = optimizer.state[p].get(key)
            if isinstance(loaded, Tensor) and loaded.dtype != value.dtype:
                optimizer.state[p][key] = value.to(device=loaded.device, copy=True)
    for p in params:
        if p in optimizer.state:
            upgrade_state(optimizer.state[p])
