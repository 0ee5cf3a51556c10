"""What a registry entry says about a preset besides its class: the benchmark's settings and the
conformance suite's knobs (see :mod:`steepest.optim.registry`)."""
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


@dataclass(frozen=True)
class Preset:
    """One registry entry.

    Attributes:
        cls: the optimizer class (a :class:`~steepest.optim.engine.GeometryOptimizer`); it is
            exported from ``steepest`` and ``steepest.optim`` under its own name.
        bench: constructor keywords of the benchmark's ``steepest-<name>`` peer; ``lr`` is its base
            peak lr (the suite's lr grid multiplies it). Presets with an AdamW fallback also get the
            benchmark's fallback lr.
        conformance: the conformance suite's settings for this preset.
    """

    cls: type
    bench: Mapping[str, Any]
    conformance: Knobs = Knobs()

    @property
    def export(self) -> str:
        """The public name of the class."""
        return self.cls.__name__
