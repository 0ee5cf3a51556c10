"""Which role each parameter of a model plays, decided once from module types and names.

Roles: ``embedding`` (token/position tables), ``head`` (the output layer, including a head tied to
an embedding: the shared tensor appears once, as ``head``), ``hidden`` (2-D matrices), ``conv``
(>= 3-D filters of convolution modules) and ``vector`` (biases, norm gains, scalars).

Rules, in order, for each distinct parameter tensor. A tensor is never routed by ``ndim`` alone:
embeddings and heads are 2-D too, and the reference implementations keep them out of the matrix
optimizer (the Muon README, github.com/KellerJordan/Muon, and Dion's, github.com/microsoft/dion,
which asks for explicit parameter groups):

1. ``roles=`` overrides given by the caller win; then a module that declares the roles of its own
   parameters in a class attribute ``steepest_roles = {attribute: role}`` (the hyper-connections'
   small mixing parameters are ``vector``, say) gets those.
2. A tensor owned by an ``nn.Embedding``/``nn.EmbeddingBag`` is ``embedding``; if it is also the
   weight of an ``nn.Linear`` (tied input/output embedding) it is ``head``.
3. The weight of an ``nn.Linear`` whose attribute name is one of ``HEAD_NAMES`` is ``head``. With no
   such module, the last ``nn.Linear`` registered in the model is the head (a classifier's last
   layer); the projections inside ``nn.MultiheadAttention`` never are. Two or more name matches are ambiguous and raise.
4. Weights of convolution modules are ``conv``; other 2-D tensors are ``hidden`` (a bare
   ``nn.Parameter`` whose name contains an ``EMBEDDING_HINTS`` word is ``embedding``); < 2-D
   tensors are ``vector``. A >= 3-D tensor outside a convolution (an expert stack, say) is
   ambiguous and raises.

Ambiguous cases raise ``ValueError`` with the ``roles={...}`` override that resolves them.

A module may also declare the constraint set of some of its parameters in a class attribute
``steepest_constraints = {attribute: constraint name}`` (:func:`declared_constraints`): the SPD
network layers of :mod:`steepest.nn.spd` keep BiMap weights on the Stiefel manifold (``"stiefel"``)
and batch-norm congruences and biases symmetric positive definite (``"spd"``).
:func:`steepest.for_model` puts such parameters in groups of their own with that stage-4 constraint.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

ROLES: tuple[str, ...] = ("embedding", "head", "hidden", "conv", "vector")
HEAD_NAMES: tuple[str, ...] = ("lm_head", "head", "classifier", "fc_out", "output", "output_layer", "unembed")
EMBEDDING_HINTS: tuple[str, ...] = ("embed", "emb", "wte", "wpe", "pos_enc")

_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)
_CONVS = (nn.modules.conv._ConvNd,)


def _owners(model: nn.Module) -> tuple[dict[int, str], dict[int, list[tuple[str, str, nn.Module]]]]:
    """First name of every distinct tensor, and every (module path, attribute, module) owning it."""
    first_name: dict[int, str] = {}
    owners: dict[int, list[tuple[str, str, nn.Module]]] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for attr, p in module.named_parameters(recurse=False):
            full = f"{mod_name}.{attr}" if mod_name else attr
            first_name.setdefault(id(p), full)
            owners.setdefault(id(p), []).append((mod_name, attr, module))
    return first_name, owners


def _check_overrides(overrides: Mapping[str, str], names: set[str]) -> None:
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"roles= names unknown parameters: {', '.join(unknown)}; "
                         f"parameter names are those of model.named_parameters()")
    for name, role in overrides.items():
        if role not in ROLES:
            raise ValueError(f"Unknown role {role!r} for parameter {name!r}; expected one of: {', '.join(ROLES)}")


def classify(model: nn.Module, roles: Mapping[str, str] | None = None) -> dict[str, str]:
    """Label every distinct parameter of ``model`` with a role (see the module docstring).

    Args:
        model: the module whose parameters to label.
        roles: overrides, parameter name (as in ``model.named_parameters()``) -> role.

    Returns:
        An ordered dict ``name -> role`` with one entry per distinct tensor, in
        ``named_parameters()`` order (a tied tensor appears once, under its first name).
    """
    overrides = dict(roles or {})
    first_name, owners = _owners(model)
    params = dict(model.named_parameters())
    all_names = set(params) | {f"{m}.{a}" if m else a for os in owners.values() for m, a, _ in os}
    _check_overrides(overrides, all_names)
    by_any_name = {}
    for pid, os in owners.items():
        for m, a, _ in os:
            by_any_name[f"{m}.{a}" if m else a] = first_name[pid]
    overrides = {by_any_name[k]: v for k, v in overrides.items()}

    internal = {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    linear_weights = [(first_name[id(mod.weight)], mod_name) for mod_name, mod in model.named_modules()
                      if isinstance(mod, nn.Linear) and id(mod) not in internal]
    named_heads = [(pname, mod_name) for pname, mod_name in linear_weights
                   if mod_name.rsplit(".", 1)[-1] in HEAD_NAMES]
    named_heads = [h for h in named_heads if h[0] not in overrides]
    if len(named_heads) > 1:
        listed = ", ".join(f"{m!r}" for _, m in named_heads)
        example = ", ".join(f"'{p}': 'hidden'" for p, _ in named_heads[1:])
        raise ValueError(f"Ambiguous output head: modules {listed} all look like heads; pass "
                         f"roles={{{example}}} (or 'head' for the one that is) to say which is the head")
    head_names = {p for p, _ in named_heads}
    tied = any(any(isinstance(m, _EMBEDDINGS) for _, _, m in os)
               and any(isinstance(m, nn.Linear) and a == "weight" for _, a, m in os) for os in owners.values())
    if not named_heads and linear_weights and not tied and not any(r == "head" for r in overrides.values()):
        # the last *trainable* Linear: a frozen teacher or EMA copy registered after the model must not
        # take the head label from the model's own output layer
        trainable = [w for w in linear_weights if params[w[0]].requires_grad]
        head_names = {(trainable or linear_weights)[-1][0]}

    result: dict[str, str] = {}
    for name, p in params.items():
        if name in overrides:
            result[name] = overrides[name]
            continue
        os = owners[id(p)]
        declared = [getattr(m, "steepest_roles", {}).get(a) for _, a, m in os]
        declared = [r for r in declared if r is not None]
        if declared:
            if declared[0] not in ROLES:
                raise ValueError(f"Unknown role {declared[0]!r} declared for parameter {name!r}; expected one of: "
                                 f"{', '.join(ROLES)}")
            result[name] = declared[0]
            continue
        kinds = {type(m) for _, _, m in os}
        is_embedding = any(isinstance(m, _EMBEDDINGS) for _, _, m in os)
        is_linear = any(isinstance(m, nn.Linear) and a == "weight" for _, a, m in os)
        if is_embedding:
            result[name] = "head" if is_linear else "embedding"
        elif name in head_names:
            result[name] = "head"
        elif p.ndim >= 3:
            if any(isinstance(m, _CONVS) and a == "weight" for _, a, m in os):
                result[name] = "conv"
            else:
                raise ValueError(
                    f"Ambiguous role for parameter {name!r} of shape {tuple(p.shape)} (owned by "
                    f"{', '.join(sorted(k.__name__ for k in kinds))}): it has >= 3 dimensions but is not a "
                    f"convolution weight; pass roles={{'{name}': 'conv'}} to treat it as a matrix "
                    f"(flattened to out x rest) or roles={{'{name}': 'vector'}}")
        elif p.ndim == 2:
            bare = not any(isinstance(m, (nn.Linear, nn.MultiheadAttention)) for _, _, m in os)
            leaf = name.rsplit(".", 1)[-1].lower()
            result[name] = "embedding" if bare and any(h in leaf for h in EMBEDDING_HINTS) else "hidden"
        else:
            result[name] = "vector"
    return result


def _is_hf_conv1d(module: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2 family): ``y = x W + b`` with ``W`` stored ``(nx, nf)`` = (in, out)."""
    weight = getattr(module, "weight", None)
    return (type(module).__name__ == "Conv1D" and isinstance(getattr(module, "nx", None), int)
            and isinstance(getattr(module, "nf", None), int) and isinstance(weight, torch.Tensor)
            and tuple(weight.shape) == (module.nx, module.nf))


def declared_constraints(model: nn.Module) -> dict[str, str]:
    """Names (as in ``named_parameters``) of the parameters whose module declares their constraint in a
    class attribute ``steepest_constraints = {attribute: constraint name}``, mapped to that name, in
    ``named_parameters()`` order. A tensor shared by modules that declare different constraints raises
    ``ValueError``; the names themselves are checked where the optimizer builds the constraint."""
    first_name, owners = _owners(model)
    found: dict[str, str] = {}
    for pid, os in owners.items():
        declared = {getattr(module, "steepest_constraints", {}).get(attr) for _, attr, module in os} - {None}
        if len(declared) > 1:
            raise ValueError(f"Conflicting constraints declared for parameter {first_name[pid]!r}: "
                             f"{', '.join(sorted(map(str, declared)))}")
        if declared:
            name = declared.pop()
            if not isinstance(name, str):
                raise ValueError(f"Constraint declared for parameter {first_name[pid]!r} must be a constraint "
                                 f"name (str), got {name!r}")
            found[first_name[pid]] = name
    return found


def in_out_weights(model: nn.Module) -> set[str]:
    """Names (as in ``named_parameters``) of the 2-D weights stored ``(in, out)`` rather than
    ``nn.Linear``'s ``(out, in)``: those of Hugging Face ``Conv1D`` modules (GPT-2, its relatives),
    and those a module declares in a class attribute ``steepest_layouts = {attribute: "in_out"}``.
    :func:`steepest.for_model` gives them ``layout="in_out"`` (:mod:`steepest.geometry.transposed`),
    so shape factors and row/column geometries use the true fan-in and fan-out."""
    first_name, owners = _owners(model)
    found = set()
    for pid, os in owners.items():
        for _, attr, module in os:
            declared = getattr(module, "steepest_layouts", {}).get(attr)
            if declared not in (None, "in_out", "out_in"):
                raise ValueError(f"Unknown layout {declared!r} declared for parameter {first_name[pid]!r}; "
                                 f"expected one of: out_in, in_out")
            if declared == "in_out" or (declared is None and attr == "weight" and _is_hf_conv1d(module)):
                found.add(first_name[pid])
    return found
