"""The keys of an engine parameter group, their defaults, and how an unlabelled group is split by role.

Group keys: ``lr``, ``weight_decay``, ``radius``, ``transform`` (``momentum`` | ``adam`` | ``lion`` |
``diffgrad``; see ``transforms.py``),
``momentum``, ``nesterov``, ``betas``, ``eps``, ``geometry`` (``spectral`` | ``sign`` | ``colnorm``
| ``rownorm`` | ``rms`` | ``frobenius`` | ``identity``), ``shape_scale`` (a mode of the geometry,
``None`` for its default; a group that names its ``geometry`` without a ``shape_scale`` gets the
geometry's default), ``ns``, ``ns_steps``, ``ns_dtype``, ``ns_eps``, ``ns_form`` (``auto`` | ``direct`` |
``gram``: Newton-Schulz on the matrix or on its short side's Gram matrix, ``steepest.polar``), ``layout`` (``out_in``, as
``nn.Linear`` stores weights, or ``in_out`` for weights stored transposed, such as GPT-2's ``Conv1D``:
the geometry then acts on ``W^T``, ``steepest.geometry.transposed``), ``maximize``, ``role`` (informational:
``hidden``, ``conv``, ``embedding``, ``head``, ``vector`` or ``""``), and the noise-adaptive
layerwise rates of LANTON (``noise.py``): ``noise_adaptive`` (bool), ``noise_beta`` (EMA of the
squared noise), ``noise_source`` (``previous`` | ``second``), ``noise_rule`` (``min_ratio`` |
``sqrt_ratio`` | ``alpha_sqrt`` | ``gmean_ratio``), ``noise_alpha`` (``alpha_sqrt``'s noise scale),
``noise_every`` (measure the noise at every k-th step and hold the factors in between),
``noise_ns`` (the nuclear-norm estimator's Newton-Schulz schedule, or ``svd``) and ``noise_eps``
(relative floor). Noise adaptivity applies to groups whose geometry is not
``identity``. Stage 4 can end with a projection onto a constraint set (``steepest.constraints``):
``constraint`` (a registered name such as ``spectral_hardcap``, or None), ``constraint_bound`` (the
spectral bound, sphere radius or Stiefel scale) and ``constraint_units`` (``spectral`` or ``rms``:
the bound on the RMS->RMS norm, ``sigma_1 <= bound * sqrt(fan_out / fan_in)``). Langevin dynamics
(``docs/averaging.md``): ``langevin_temperature`` (``T >= 0``; 0, the default, is off) adds
``sqrt(2 * lr * T) * xi``, ``xi ~ N(0, I)``, to every parameter after the step and before the
constraint's projection, with the group's (unadjusted) ``lr``; ``langevin_seed`` (an integer >= 0)
seeds it. Presets may add keys of their own (``PRESET_KEYS``), which are carried the same way.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .noise import NOISE_ALPHA, NOISE_EVERY, NOISE_RULE

#: Keys every engine group has, with the engine's own defaults (presets override them).
ENGINE_DEFAULTS: dict[str, Any] = {
    "lr": 0.02,
    "weight_decay": 0.0,
    "radius": 1.0,
    "transform": "momentum",
    "momentum": 0.95,
    "nesterov": True,
    "betas": (0.9, 0.95),
    "eps": 1e-8,
    "geometry": "spectral",
    "shape_scale": None,
    "ns": "keller",
    "ns_steps": None,
    "ns_dtype": "auto",
    "ns_eps": 1e-7,
    "ns_form": "auto",
    "layout": "out_in",
    "maximize": False,
    "role": "",
    "noise_adaptive": False,
    "noise_beta": 0.9,
    "noise_source": "previous",
    "noise_rule": NOISE_RULE,
    "noise_alpha": NOISE_ALPHA,
    "noise_every": NOISE_EVERY,
    "noise_ns": "quintic",
    "noise_eps": 1e-6,
    "constraint": None,
    "constraint_bound": 1.0,
    "constraint_units": "spectral",
    "langevin_temperature": 0.0,
    "langevin_seed": 0,
}

GEOMETRY_KEYS = ("geometry", "shape_scale", "ns", "ns_steps", "ns_dtype", "ns_eps", "ns_form", "layout")


def default_role(p: Tensor) -> str:
    """Role of a parameter that arrives without one: ``conv`` (>= 3-D), ``hidden`` (2-D), ``vector``."""
    return "conv" if p.ndim >= 3 else "hidden" if p.ndim == 2 else "vector"


#: group keys that name a dtype (a ``torch.dtype`` is stored as its name, so groups stay plain data)
DTYPE_KEYS = ("ns_dtype",)
#: group keys that take a Newton-Schulz schedule (a list of coefficients is stored as a tuple)
SCHEDULE_KEYS = ("ns", "noise_ns")


def plain_keys(group: dict[str, Any]) -> None:
    """Store the torch-style forms of a group's keys as plain data, in place: a ``torch.dtype`` as
    its name (``torch.bfloat16`` -> ``"bfloat16"``), a list of Newton-Schulz coefficients as a
    tuple."""
    for key in DTYPE_KEYS:
        if isinstance(group.get(key), torch.dtype):
            group[key] = str(group[key]).removeprefix("torch.")
    for key in SCHEDULE_KEYS:
        if isinstance(group.get(key), list):
            group[key] = tuple(group[key])


def split_by_role(params: Any, group: dict[str, Any]) -> list[tuple[Any, list]]:
    """``[(role, items)]`` of a group's ``params`` (tensors or ``(name, tensor)`` pairs): the
    ``group``'s own ``role`` when it has one (or no parameters), else one part per :func:`default_role`.
    A split group's ``param_names`` (one per tensor) are taken out of ``group`` and paired with its
    tensors, so each part carries its own names (torch builds ``param_names`` from the pairs)."""
    if isinstance(params, Tensor):
        params = [params]
    params = list(params)
    if "role" in group or not params:
        return [(group.get("role", ""), params)]
    names = group.get("param_names")
    if names is not None and len(names) == len(params) and all(isinstance(t, Tensor) for t in params):
        params = list(zip(group.pop("param_names"), params))
    by_role: dict[str, list] = {}
    for item in params:
        tensor = item[1] if isinstance(item, tuple) else item
        by_role.setdefault(default_role(tensor) if isinstance(tensor, Tensor) else "", []).append(item)
    return list(by_role.items())
