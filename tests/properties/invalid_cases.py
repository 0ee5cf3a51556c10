"""The invalid hyperparameters of property ``invalid_hyperparameters``: generated invalid values of
every validated key, each with the documented error type and its exact message (validation.py's
formats), and the presets' own cases (tests/conformance/presets.py)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from hypothesis import strategies as st

from steepest.constraints.registry import CONSTRAINT_NAMES
from steepest.geometry import GEOMETRIES, GEOMETRY_NAMES, LAYOUTS
from steepest.optim import PRESETS
from steepest.optim.noise import NOISE_RULES, NOISE_SOURCES
from steepest.optim.validation import CONSTRAINT_UNITS, MIN_EPS, TRANSFORMS
from steepest.polar import NS_DTYPE_NAMES, NS_FORMS, SCHEDULE_NAMES
from steepest.roles import ROLES

from conformance.presets import knobs_for

NAN = float("nan")


@dataclass(frozen=True)
class Invalid:
    """Invalid setting(s) and the documented error they must raise.

    Attributes:
        settings: draws ``{key: invalid value}`` (one key, or a geometry with its invalid mode).
        error, message: the exception type and its exact message for the drawn settings.
        group: valid keys the check needs in the group (the transform or geometry it applies to).
        presets: the presets it applies to (``None``: every preset).
        paths: ``constructor`` (keys the constructor takes go to it, the rest into its groups) and/or
            ``add_param_group`` (a group with the keys added to a stepped optimizer).
    """

    settings: st.SearchStrategy[dict[str, Any]]
    error: type[Exception]
    message: Callable[[dict[str, Any]], str]
    group: Mapping[str, Any] = field(default_factory=dict)
    presets: tuple[str, ...] | None = None
    paths: tuple[str, ...] = ("constructor", "add_param_group")


def _one(key: str, values: st.SearchStrategy) -> st.SearchStrategy[dict[str, Any]]:
    return values.map(lambda v: {key: v})


def _type_name(settings: dict[str, Any]) -> str:
    return type(next(iter(settings.values()))).__name__


def _value(settings: dict[str, Any]) -> Any:
    return next(iter(settings.values()))


_negative = st.one_of(st.floats(max_value=0.0, exclude_max=True), st.integers(max_value=-1))
_nonpositive = st.one_of(st.floats(max_value=0.0), st.integers(max_value=0), st.just(NAN))
_out_of_unit = st.one_of(st.floats(min_value=1.0), st.floats(max_value=0.0, exclude_max=True), st.just(NAN),
                         st.integers(min_value=1), st.integers(max_value=-1))
_not_real = st.one_of(st.text(max_size=4), st.booleans(), st.none(), st.lists(st.floats(0, 1), max_size=2),
                      st.complex_numbers(max_magnitude=1.0, allow_nan=False))
_not_bool = st.one_of(st.integers(), st.text(max_size=4), st.none(), st.floats(allow_nan=False))


def _unknown(choices) -> st.SearchStrategy[str]:
    return st.text(max_size=8).filter(lambda s: s not in choices)


def _choice_message(key: str, choices) -> Callable[[dict[str, Any]], str]:
    return lambda s: f"Unknown {key} {_value(s)!r}; expected one of: {', '.join(choices)}"


@st.composite
def _bad_betas(draw) -> dict[str, Any]:
    bad = st.one_of(st.floats(min_value=1.0), st.floats(max_value=0.0, exclude_max=True), st.just(NAN))
    good = st.floats(0.0, 0.9999)
    which = draw(st.sampled_from(("first", "second", "both")))
    b0 = draw(bad if which in ("first", "both") else good)
    b1 = draw(bad if which in ("second", "both") else good)
    return {"betas": (b0, b1)}


def _bad_betas_message(s: dict[str, Any]) -> str:
    b0, b1 = s["betas"]
    index, value = (0, b0) if not 0.0 <= b0 < 1.0 else (1, b1)
    return f"Invalid beta parameter at index {index}: {value}"


@st.composite
def _betas_with_non_real(draw) -> dict[str, Any]:
    index = draw(st.integers(0, 1))
    pair = [draw(st.floats(0.0, 0.9999)), draw(st.floats(0.0, 0.9999))]
    pair[index] = draw(st.one_of(st.text(max_size=3), st.none(), st.booleans()))
    return {"betas": tuple(pair)}


def _betas_type_message(s: dict[str, Any]) -> str:
    index = next(i for i, b in enumerate(s["betas"]) if isinstance(b, bool) or not isinstance(b, (int, float)))
    return f"Invalid type for betas[{index}]: expected a real number, got {type(s['betas'][index]).__name__}"


@st.composite
def _bad_shape_scale(draw) -> dict[str, Any]:
    geometry = draw(st.sampled_from(GEOMETRY_NAMES))
    return {"geometry": geometry, "shape_scale": draw(_unknown(GEOMETRIES[geometry].shape_scales + (None,)))}


_SPECTRAL = {"geometry": "spectral"}
_MOMENTUM = {"transform": "momentum"}
_ADAM = {"transform": "adam"}

INVALID: dict[str, Invalid] = {
    "lr_negative": Invalid(_one("lr", _negative), ValueError, lambda s: f"Invalid learning rate: {s['lr']}"),
    "lr_nan": Invalid(_one("lr", st.just(NAN)), ValueError, lambda s: "Invalid learning rate: nan"),
    "lr_type": Invalid(_one("lr", _not_real), TypeError,
                       lambda s: f"Invalid type for lr: expected a real number, got {_type_name(s)}"),
    "weight_decay_negative": Invalid(_one("weight_decay", _negative), ValueError,
                                     lambda s: f"Invalid weight_decay value: {_value(s)}"),
    "weight_decay_nan": Invalid(_one("weight_decay", st.just(NAN)), ValueError,
                                lambda s: "Invalid weight_decay value: nan"),
    "weight_decay_type": Invalid(_one("weight_decay", _not_real), TypeError,
                                 lambda s: f"Invalid type for weight_decay: expected a real number, got {_type_name(s)}"),
    "radius_nonpositive": Invalid(_one("radius", _nonpositive), ValueError,
                                  lambda s: f"Invalid radius value: {_value(s)}; expected a positive number"),
    "momentum_out_of_range": Invalid(_one("momentum", _out_of_unit), ValueError,
                                     lambda s: f"Invalid momentum value: {_value(s)}; expected 0 <= momentum < 1",
                                     group=_MOMENTUM),
    "momentum_type": Invalid(_one("momentum", _not_real), TypeError,
                             lambda s: f"Invalid type for momentum: expected a real number, got {_type_name(s)}",
                             group=_MOMENTUM),
    "nesterov_type": Invalid(_one("nesterov", _not_bool), TypeError,
                             lambda s: f"Invalid type for nesterov: expected bool, got {_type_name(s)}", group=_MOMENTUM),
    "betas_out_of_range": Invalid(_bad_betas(), ValueError, _bad_betas_message, group=_ADAM),
    "betas_wrong_length": Invalid(
        _one("betas", st.one_of(st.just(()), st.tuples(st.floats(0, 0.9)),
                                st.tuples(st.floats(0, 0.9), st.floats(0, 0.9), st.floats(0, 0.9)))),
        TypeError, lambda s: f"Invalid betas: expected a pair of numbers, got {s['betas']!r}", group=_ADAM),
    "betas_not_a_sequence": Invalid(
        _one("betas", st.one_of(st.floats(0, 0.9), st.integers(0, 1), st.none())),
        TypeError, lambda s: f"Invalid betas: expected a pair of numbers, got {s['betas']!r}", group=_ADAM),
    "adamw_betas_not_a_sequence": Invalid(
        _one("adamw_betas", st.one_of(st.floats(0, 0.9), st.integers(0, 1), st.none())),
        TypeError, lambda s: f"Invalid betas: expected a pair of numbers, got {s['adamw_betas']!r}",
        presets=("muon", "normuon", "auon", "hybrid_auon"), paths=("constructor",)),
    "betas_type": Invalid(_betas_with_non_real(), TypeError, _betas_type_message, group=_ADAM),
    "eps_nonpositive": Invalid(_one("eps", _nonpositive), ValueError,
                               lambda s: f"Invalid eps value: {_value(s)}; expected a positive number", group=_ADAM),
    "eps_below_float32": Invalid(
        _one("eps", st.one_of(st.sampled_from([5e-324, 1e-300, 1e-45, MIN_EPS / 2]), st.floats(5e-324, MIN_EPS,
                                                                                              exclude_max=True))),
        ValueError, lambda s: (f"Invalid eps value: {_value(s)}; expected at least {MIN_EPS!r} (float32's smallest "
                               f"normal number: a smaller eps rounds to 0 in float32 optimizer state)"), group=_ADAM),
    "transform_unknown": Invalid(_one("transform", _unknown(TRANSFORMS)), ValueError,
                                 _choice_message("transform", TRANSFORMS)),
    "geometry_unknown": Invalid(_one("geometry", _unknown(GEOMETRY_NAMES)), ValueError,
                                _choice_message("geometry", GEOMETRY_NAMES)),
    "shape_scale_unknown": Invalid(
        _bad_shape_scale(), ValueError,
        lambda s: (f"Unknown shape_scale {s['shape_scale']!r} for geometry {s['geometry']!r}; expected one of: "
                   f"{', '.join(GEOMETRIES[s['geometry']].shape_scales)}")),
    "ns_unknown": Invalid(_one("ns", _unknown(SCHEDULE_NAMES)), ValueError,
                          _choice_message("Newton-Schulz schedule", SCHEDULE_NAMES), group=_SPECTRAL),
    "ns_steps_out_of_range": Invalid(
        _one("ns_steps", st.one_of(st.integers(max_value=0), st.integers(min_value=100))), ValueError,
        lambda s: f"Invalid ns_steps: {_value(s)}; expected an integer in [1, 100)", group=_SPECTRAL),
    "ns_steps_type": Invalid(
        _one("ns_steps", st.one_of(st.floats(), st.text(max_size=3), st.booleans())), TypeError,
        lambda s: f"Invalid type for ns_steps: expected an int or None, got {_type_name(s)}", group=_SPECTRAL),
    "ns_dtype_unknown": Invalid(_one("ns_dtype", _unknown(NS_DTYPE_NAMES)), ValueError,
                                _choice_message("ns_dtype", NS_DTYPE_NAMES), group=_SPECTRAL),
    "ns_form_unknown": Invalid(_one("ns_form", _unknown(NS_FORMS)), ValueError,
                               _choice_message("ns_form", NS_FORMS), group=_SPECTRAL),
    "ns_eps_invalid": Invalid(_one("ns_eps", _nonpositive), ValueError,
                              lambda s: f"Invalid ns_eps value: {_value(s)}; expected a positive number",
                              group=_SPECTRAL),
    "layout_unknown": Invalid(_one("layout", _unknown(LAYOUTS)), ValueError, _choice_message("layout", LAYOUTS)),
    "role_unknown": Invalid(_one("role", _unknown(ROLES + ("",))), ValueError, _choice_message("role", ROLES)),
    "maximize_type": Invalid(_one("maximize", _not_bool), TypeError,
                             lambda s: f"Invalid type for maximize: expected bool, got {_type_name(s)}"),
    "noise_adaptive_type": Invalid(_one("noise_adaptive", _not_bool), TypeError,
                                   lambda s: f"Invalid type for noise_adaptive: expected bool, got {_type_name(s)}"),
    "noise_beta_out_of_range": Invalid(
        _one("noise_beta", _out_of_unit), ValueError,
        lambda s: f"Invalid noise_beta value: {_value(s)}; expected 0 <= noise_beta < 1"),
    "noise_source_unknown": Invalid(_one("noise_source", _unknown(NOISE_SOURCES)), ValueError,
                                    _choice_message("noise_source", NOISE_SOURCES)),
    "noise_rule_unknown": Invalid(_one("noise_rule", _unknown(NOISE_RULES)), ValueError,
                                  _choice_message("noise_rule", NOISE_RULES)),
    "noise_alpha_out_of_range": Invalid(
        _one("noise_alpha", st.one_of(_negative, st.sampled_from((NAN, math.inf)))), ValueError,
        lambda s: f"Invalid noise_alpha value: {_value(s)}; expected a finite number >= 0"),
    "noise_alpha_type": Invalid(
        _one("noise_alpha", st.one_of(st.text(max_size=3), st.none(), st.booleans())), TypeError,
        lambda s: f"Invalid type for noise_alpha: expected a real number, got {_type_name(s)}"),
    "noise_every_below_one": Invalid(
        _one("noise_every", st.integers(max_value=0)), ValueError,
        lambda s: f"Invalid noise_every value: {_value(s)}; expected an integer >= 1"),
    "noise_every_type": Invalid(
        _one("noise_every", st.one_of(st.floats(), st.text(max_size=3), st.booleans(), st.none())), TypeError,
        lambda s: f"Invalid type for noise_every: expected int, got {_type_name(s)}"),
    "noise_ns_unknown": Invalid(_one("noise_ns", _unknown(SCHEDULE_NAMES)), ValueError,
                                _choice_message("noise_ns", SCHEDULE_NAMES)),
    "noise_eps_negative": Invalid(_one("noise_eps", _negative), ValueError,
                                  lambda s: f"Invalid noise_eps value: {_value(s)}"),
    "noise_eps_nan": Invalid(_one("noise_eps", st.just(NAN)), ValueError, lambda s: "Invalid noise_eps value: nan"),
    "langevin_temperature_negative": Invalid(
        _one("langevin_temperature", st.one_of(_negative, st.just(NAN), st.just(math.inf))), ValueError,
        lambda s: f"Invalid langevin_temperature value: {_value(s)}; expected a finite number >= 0"),
    "langevin_seed_negative": Invalid(
        _one("langevin_seed", st.integers(max_value=-1)), ValueError,
        lambda s: f"Invalid langevin_seed value: {_value(s)}; expected an integer >= 0"),
    "langevin_seed_type": Invalid(
        _one("langevin_seed", st.one_of(st.floats(), st.text(max_size=3), st.booleans(), st.none())), TypeError,
        lambda s: f"Invalid type for langevin_seed: expected int, got {_type_name(s)}"),
    "constraint_unknown": Invalid(_one("constraint", _unknown(CONSTRAINT_NAMES)), ValueError,
                                  _choice_message("constraint", CONSTRAINT_NAMES)),
    "constraint_bound_nonpositive": Invalid(
        _one("constraint_bound", _nonpositive), ValueError,
        lambda s: f"Invalid constraint_bound value: {_value(s)}; expected a positive number"),
    "constraint_units_unknown": Invalid(_one("constraint_units", _unknown(CONSTRAINT_UNITS)), ValueError,
                                        _choice_message("constraint_units", CONSTRAINT_UNITS)),
    "on_nonfinite_unknown": Invalid(_one("on_nonfinite", _unknown(("raise", "skip"))), ValueError,
                                    _choice_message("on_nonfinite", ("raise", "skip")), paths=("constructor",)),
    "compile_unknown": Invalid(_one("compile", _unknown(("auto",))), ValueError,
                               lambda s: f"Unknown compile {_value(s)!r}; expected True, False or 'auto'",
                               paths=("constructor",)),
    "compile_type": Invalid(_one("compile", st.one_of(st.integers(), st.none(), st.floats(allow_nan=False))),
                            TypeError, lambda s: f"Invalid type for compile: expected bool or 'auto', got {_type_name(s)}",
                            paths=("constructor",)),
    # the presets' own arguments (generated values; tests/conformance/presets.py has fixed ones)
    "beta2_out_of_range": Invalid(_one("beta2", _out_of_unit), ValueError,
                                  lambda s: f"Invalid beta2 value: {_value(s)}; expected 0 <= beta2 < 1",
                                  presets=("normuon",)),
    "ngrads_invalid": Invalid(_one("ngrads", st.integers(max_value=0)), ValueError,
                              lambda s: f"Invalid ngrads: {_value(s)}; expected an integer >= 1", presets=("mfac",)),
    "damp_nonpositive": Invalid(_one("damp", _nonpositive), ValueError,
                                lambda s: f"Invalid damp value: {_value(s)}; expected a positive number",
                                presets=("mfac",)),
    "radius_argument_nonpositive": Invalid(
        st.tuples(st.sampled_from(("hidden", "embedding", "head", "vector")), _nonpositive).map(
            lambda kv: {f"{kv[0]}_radius": kv[1]}),
        ValueError, lambda s: f"Invalid {next(iter(s))} value: {_value(s)}; expected a positive number",
        presets=("scion",), paths=("constructor",)),
    "adjust_lr_unknown": Invalid(_one("adjust_lr", _unknown(("original", "match_rms_adamw", "rms_to_rms", "none"))),
                                 ValueError, _choice_message("adjust_lr", ("original", "match_rms_adamw",
                                                                           "rms_to_rms", "none")),
                                 presets=("muon", "normuon"), paths=("constructor",)),
    "kappa_unknown": Invalid(_one("kappa", _unknown(("l1", "l2", "nuclear"))), ValueError,
                             _choice_message("kappa", ("l1", "l2", "nuclear")), presets=("lion_k",),
                             paths=("constructor",)),
    "cosh_brake_type": Invalid(_one("cosh_brake", _not_bool), TypeError,
                               lambda s: f"Invalid type for cosh_brake: expected bool, got {_type_name(s)}",
                               presets=("auon", "hybrid_auon")),
}

INVALID_COMBOS = [(name, path) for name, case in INVALID.items() for path in case.paths]
KNOB_CASES = {name: knobs_for(name).error_cases for name in PRESETS if knobs_for(name).error_cases}
