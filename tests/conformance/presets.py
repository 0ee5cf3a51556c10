"""Optional per-preset knobs for the conformance suite.

The suite runs every check over every entry of ``steepest.optim.PRESETS``; a preset with no entry in
``KNOBS`` gets ``Knobs()`` (the generic defaults) and must pass with them. Add an entry only to tune
a check (a faster learning rate for the "goes the right direction" problem) or to add error cases
for the preset's own constructor arguments.

``ErrorCase.options`` are given to the preset's constructor when its signature accepts them, and
otherwise put into the parameter group (every preset is a ``GeometryOptimizer``, whose groups carry
the same flat keys), so the generic cases apply to any preset.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class ErrorCase:
    """A construction that must raise ``error`` with exactly ``message``.

    Attributes:
        id: test id.
        options: constructor keywords (group keys when the constructor does not take them).
        error: the exception type.
        message: the full expected message.
        group: keys always put into the parameter group(s).
        roles: which parameter groups to build (``hidden``: a 4x3 matrix ``hidden.weight``,
            ``vector``: a length-4 ``hidden.bias``).
    """

    id: str
    options: Mapping[str, Any]
    error: type[Exception]
    message: str
    group: Mapping[str, Any] = field(default_factory=dict)
    roles: tuple[str, ...] = ("hidden",)


@dataclass(frozen=True)
class Knobs:
    """Per-preset settings of the conformance checks.

    Attributes:
        direction_kwargs: constructor keywords for the "goes the right direction" problem.
        direction_max_ratio: final loss / initial loss must be below this after the steps.
        bf16_max_rel_diff: bound on ||W_bf16 - W_fp32|| / ||W_fp32 - W_0|| per parameter after 5
            steps with ``direction_kwargs`` (bfloat16 parameters vs the float32 run from the same
            start; measured 0.16 for muon and 0.06 for scion). Updates smaller than half a bf16 ulp
            of the weight are rounded away, so a preset whose default lr is tiny needs
            ``direction_kwargs`` with a realistic lr for this check to say anything.
        error_cases: extra construction errors specific to the preset's arguments.
    """

    direction_kwargs: Mapping[str, Any] = field(default_factory=dict)
    direction_max_ratio: float = 0.5
    bf16_max_rel_diff: float = 0.3
    error_cases: tuple[ErrorCase, ...] = ()


KNOBS: dict[str, Knobs] = {
    # The AdamW fallback's default lr (3e-4) is tuned for long runs; on a 40-step problem the
    # embedding/head/vector groups need a faster one. Measured ratio with these: ~0.05.
    "muon": Knobs(
        direction_kwargs={"lr": 0.05, "adamw_lr": 1e-2},
        direction_max_ratio=0.2,
        error_cases=(
            ErrorCase("adjust_lr", {"adjust_lr": "nope"}, ValueError,
                      "Unknown adjust_lr 'nope'; expected one of: original, match_rms_adamw, rms_to_rms, none"),
            ErrorCase("adamw_beta1", {"adamw_betas": (1.0, 0.95)}, ValueError,
                      "Invalid beta parameter at index 0: 1.0", roles=("hidden", "vector")),
            ErrorCase("adamw_lr", {"adamw_lr": -1e-3}, ValueError,
                      "Invalid learning rate: -0.001", roles=("hidden", "vector")),
            ErrorCase("adamw_eps", {"adamw_eps": -1.0}, ValueError,
                      "Invalid eps value: -1.0; expected a positive number", roles=("hidden", "vector")),
        ),
    ),
    # Measured ratio with lr 2^-6: ~0.05 (the default 2^-7 gives ~0.45).
    "scion": Knobs(
        direction_kwargs={"lr": 2**-6},
        direction_max_ratio=0.2,
        error_cases=(
            ErrorCase("hidden_radius", {"hidden_radius": 0.0}, ValueError,
                      "Invalid hidden_radius value: 0.0; expected a positive number"),
            ErrorCase("head_radius", {"head_radius": -1}, ValueError,
                      "Invalid head_radius value: -1; expected a positive number"),
            ErrorCase("constrained_type", {"constrained": "yes"}, TypeError,
                      "Invalid type for constrained: expected bool, got str"),
        ),
    ),
}


def knobs_for(name: str) -> Knobs:
    """The knobs of preset ``name`` (generic defaults when it has no entry)."""
    return KNOBS.get(name, Knobs())
