"""Build an optimizer for a model in one line: roles -> param groups -> preset; or by name
(``create``) for config-driven trainers.

``for_model(model, "muon")`` labels every parameter with :func:`steepest.roles.classify`, puts each
role in its own named param group (``role`` key set, ``param_names`` filled), applies per-role and
per-parameter overrides, and hands the groups to the preset, which gives each role its documented
recipe (geometry, lr, weight decay). Every preset has default hyperparameters, so ``lr`` is optional.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from torch import nn

from .optim.engine import GeometryOptimizer
from .optim.registry import PRESETS, preset_class
from .roles import ROLES, classify, declared_constraints, in_out_weights


def for_model(model: nn.Module, preset: str = "muon", *, lr: float | None = None,
              roles: Mapping[str, str] | None = None,
              overrides: Mapping[str, Mapping[str, Any]] | None = None,
              constraints: Mapping[str, Any] | None = None,
              **preset_kwargs: Any) -> GeometryOptimizer:
    """Build a steepest optimizer for ``model`` with one param group per role.

    Weights stored ``(in, out)`` instead of ``nn.Linear``'s ``(out, in)`` (Hugging Face's ``Conv1D``
    in GPT-2 and its relatives, or attributes a module lists in ``steepest_layouts``; see
    :func:`steepest.roles.in_out_weights`) get a group of their own with ``layout="in_out"``, so their
    geometry acts on ``W^T`` and shape factors use the true fan-in and fan-out.

    Parameters whose module declares a constraint (``steepest_constraints``, see
    :func:`steepest.roles.declared_constraints`: BiMap weights ``"stiefel"``, SPD batch-norm
    parameters ``"spd"``) get a group of their own with that constraint. The declaration is part of
    the layer's definition, so a role-wide ``constraints=``/``overrides=`` constraint does not replace
    it (the role's other keys apply); a per-parameter entry does.

    Args:
        model: the model to optimize; only parameters with ``requires_grad`` are included.
        preset: a registered preset name (``steepest.optim.PRESETS``), e.g. ``"muon"``, ``"scion"``.
        lr: the preset's main learning rate (``None``: the preset's documented default).
        roles: role overrides, parameter name -> role (see :func:`steepest.roles.classify`).
        overrides: extra group keys per role name or per parameter name, e.g.
            ``{"embedding": {"lr": 1e-3}, "lm_head.weight": {"weight_decay": 0.0}}``. A parameter
            named here gets a group of its own.
        constraints: a stage-4 constraint per role or parameter name (``steepest.constraints``):
            a name, ``(name, bound)`` or ``(name, bound, units)``, e.g.
            ``{"hidden": ("spectral_hardcap", 1.0)}`` keeps every hidden matrix's spectral norm at
            most 1 after every step (the constrained presets of arXiv 2507.13338). Shorthand for
            the group keys ``constraint``, ``constraint_bound`` and ``constraint_units`` in
            ``overrides``.
        **preset_kwargs: any other keyword of the preset's constructor (every preset takes
            ``langevin_temperature`` and ``langevin_seed``, Langevin noise: ``docs/averaging.md``).

    Returns:
        The preset optimizer; ``steepest.explain(optimizer)`` shows what each parameter gets.
    """
    cls = preset_class(preset)
    labels = classify(model, roles)
    params = dict(model.named_parameters())
    overrides = {key: dict(value) for key, value in (overrides or {}).items()}
    for key, spec in (constraints or {}).items():
        overrides.setdefault(key, {}).update(constraint_keys(spec))
    unknown = sorted(k for k in overrides if k not in ROLES and k not in labels)
    if unknown:
        raise ValueError(f"overrides= keys must be role names ({', '.join(ROLES)}) or parameter names; "
                         f"unknown: {', '.join(unknown)}")
    transposed = {n for n in in_out_weights(model) if labels.get(n) in ("hidden", "head", "embedding")}
    declared = declared_constraints(model)

    def role_keys(role: str, constraint: str | None) -> dict[str, Any]:
        keys = dict(overrides.get(role, {}))
        if constraint is not None:  # the module's own constraint wins over a role-wide one
            keys = {k: v for k, v in keys.items() if k not in _CONSTRAINT_KEYS}
            keys["constraint"] = constraint
        return keys

    groups: list[dict[str, Any]] = []
    by_role: dict[tuple[str, bool, str | None], list] = {}
    for name, role in labels.items():
        p = params[name]
        if not p.requires_grad:
            continue
        if name in overrides:
            group = {"params": [(name, p)], "role": role}
            if name in transposed:
                group["layout"] = "in_out"
            group.update(role_keys(role, declared.get(name)))
            group.update(overrides[name])
            groups.append(group)
        else:
            by_role.setdefault((role, name in transposed, declared.get(name)), []).append((name, p))
    role_groups = []
    order = {role: i for i, role in enumerate(ROLES)}
    for (role, flip, constraint), items in sorted(by_role.items(), key=lambda kv: (
            order[kv[0][0]], kv[0][1], kv[0][2] is not None, kv[0][2] or "")):
        group = {"params": items, "role": role}
        if flip:  # weights stored (in, out), e.g. GPT-2's Conv1D: geometry on W^T
            group["layout"] = "in_out"
        group.update(role_keys(role, constraint))
        role_groups.append(group)
    kwargs = dict(preset_kwargs)
    if lr is not None:
        kwargs["lr"] = lr
    return cls(role_groups + groups, **kwargs)


_CONSTRAINT_KEYS = ("constraint", "constraint_bound", "constraint_units")


def constraint_keys(spec: Any) -> dict[str, Any]:
    """The group keys of a ``constraints=`` entry: ``name``, ``(name, bound)`` or ``(name, bound, units)``."""
    if isinstance(spec, str):
        return {"constraint": spec}
    if isinstance(spec, tuple) and 1 <= len(spec) <= 3 and isinstance(spec[0], str):
        keys = {"constraint": spec[0]}
        if len(spec) > 1:
            keys["constraint_bound"] = spec[1]
        if len(spec) > 2:
            keys["constraint_units"] = spec[2]
        return keys
    raise TypeError(f"constraints= values must be a constraint name, (name, bound) or (name, bound, units); "
                    f"got {spec!r}")



def names() -> list[str]:
    """The optimizer names that :func:`create` accepts (the registered presets), in registry order."""
    return list(PRESETS)


def canonical_name(name: str) -> str:
    """``name`` as registered: case-insensitive, with ``-`` and ``_`` interchangeable (``"Lion-K"`` ->
    ``"lion_k"``); ``ValueError`` listing :func:`names` when it names no preset."""
    if not isinstance(name, str):
        raise TypeError(f"optimizer name must be a string, got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_")
    if key not in PRESETS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(PRESETS)}")
    return key


def create(name: str, model: nn.Module | Iterable[Any], **kwargs: Any) -> GeometryOptimizer:
    """Build the optimizer called ``name`` (:func:`names`) for ``model``: the entry point for trainers
    that pick optimizers by a string in a config file.

    With an ``nn.Module`` this is ``for_model(model, name, **kwargs)``: every parameter gets its role's
    recipe, and ``lr``, ``roles``, ``overrides``, ``constraints`` and the preset's keywords pass
    through. With parameters or param groups (``model.parameters()``, a list of dicts) the preset is
    called directly, ``Preset(params, **kwargs)``, as with any ``torch.optim`` class; groups then
    need their ``role`` key set for role-specific recipes (see the preset's docstring).

    >>> import torch, steepest
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    >>> opt = steepest.create("Lion-K", model, lr=1e-4)
    >>> type(opt).__name__, opt.param_groups[0]["lr"]
    ('LionK', 0.0001)
    """
    cls = PRESETS[canonical_name(name)]
    if isinstance(model, nn.Module):
        return for_model(model, canonical_name(name), **kwargs)
    return cls(model, **kwargs)
