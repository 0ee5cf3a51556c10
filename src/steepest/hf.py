"""Hugging Face ``Trainer`` integration: a steepest optimizer built by roles, in one line.

    import steepest.hf
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      optimizer_cls_and_kwargs=steepest.hf.optimizer_cls_and_kwargs("lanton"))

Why this module exists. ``transformers.Trainer`` ships AdamW, Adafactor, Lion, GaLore and others,
but no Muon-style optimizer: transformers issue 39495 ("Add Muon Optimiser") asks for one and notes
that Muon is only meant for 2-D hidden matrices, so it has to be paired with AdamW for everything
else. steepest already makes that split, per parameter role (``steepest.roles``), inside one
``torch.optim.Optimizer``; what is missing is a way to hand Trainer such an optimizer without
losing the roles.

Design. Trainer's usual route, ``optimizer_cls(grouped_params, **kwargs)``, passes two groups
(decay / no decay) of bare tensors: the parameter names are gone, so an embedding, a tied LM head
and a hidden matrix can no longer be told apart. Recent transformers releases (those with
``transformers.trainer_optimizer.is_optimizer_factory``, added with transformers PR 43738) also
accept an optimizer *factory*: when the first element of
``optimizer_cls_and_kwargs`` is not a ``torch.optim.Optimizer`` subclass, ``create_optimizer``
calls ``factory_cls()(model, **kwargs)`` with Trainer's own model. :func:`optimizer_cls_and_kwargs`
returns such a factory (:class:`TrainerOptimizerFactory`), which calls :func:`steepest.create` on
the model, so every parameter gets its role's recipe and appears in exactly one group (GPT-2's
tied ``wte``/``lm_head`` tensor once, as ``head``). This route, rather than
``optimizers=(optimizer, None)``:

- needs no model at the call site, so it also works with ``model_init`` (hyperparameter search);
- builds the optimizer when training starts, after Trainer has moved the model to its device;
- builds it again, identically, on ``train(resume_from_checkpoint=...)``: the groups depend only
  on the model's structure and the options given here, so Trainer's ``optimizer.pt`` (a plain
  ``state_dict``) loads back group by group and the resumed run is bit-identical to an
  uninterrupted one (``tests/integrations/test_hf.py`` checks losses and parameters).

What Trainer still does, and what steepest decides instead:

- Learning rate: each role keeps its preset lr (Muon: 0.02 for hidden matrices, ``adamw_lr`` for
  the AdamW side, ``embedding_lr`` for embedding tables). ``TrainingArguments.learning_rate`` is
  not used; pass ``lr=`` (and the preset's other lr options) here. Trainer's scheduler (``lr_scheduler_type``, warmup) is a ``LambdaLR``
  that multiplies every group's own initial lr by the same factor, so the ratios between roles are
  kept. The ``learning_rate`` Trainer logs is the first group's (the embedding group's) lr.
- Weight decay: steepest's per-role recipe wins. ``TrainingArguments.weight_decay`` only shapes
  the two groups Trainer builds for a plain optimizer class, which a factory never sees; pass
  ``weight_decay=`` (and ``adamw_weight_decay=`` for Muon's AdamW side) here.
- Gradient accumulation, gradient clipping (``max_grad_norm``) and mixed precision stay
  Trainer's: the optimizer sees the accumulated, clipped gradient once per optimizer step.
- ``optim``, ``optim_args`` and the ``adam_*`` arguments are ignored, as for any
  ``optimizer_cls_and_kwargs``.

Known limitation (a core matter, not this module's): GPT-2's ``transformers.pytorch_utils.Conv1D``
stores its weight as ``in x out``, and steepest reads dimension 0 as fan-out, so those matrices get
the shape factor of the transposed layer (docs/huggingface.md shows the numbers).

With a transformers that has no factory support, pass ``optimizers=(steepest.create("lanton",
model), None)`` instead (Trainer then still creates the scheduler).

``import steepest`` does not import transformers, and neither does importing this module; the
check that transformers is installed (``pip install 'steepest[hf]'``) runs when
:func:`optimizer_cls_and_kwargs` is called.
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping

from torch import nn

from .factory import canonical_name, create, for_model
from .optim.engine import GeometryOptimizer
from .optim.registry import PRESETS

__all__ = ["optimizer_cls_and_kwargs", "TrainerOptimizerFactory", "unwrap"]

INSTALL_HINT = "pip install 'steepest[hf]'"

#: Keywords of :func:`steepest.for_model` that every preset accepts on top of its own.
_FOR_MODEL_KEYWORDS: tuple[str, ...] = tuple(
    name for name, p in inspect.signature(for_model).parameters.items() if p.kind is p.KEYWORD_ONLY)


class TrainerOptimizerFactory:
    """The optimizer factory Trainer instantiates and calls: ``TrainerOptimizerFactory()(model,
    preset=..., **options)`` is ``steepest.create(preset, model, **options)``.

    It is deliberately not a ``torch.optim.Optimizer`` subclass: that is how Trainer tells a
    factory (called with the model) from an optimizer class (called with its own two
    weight-decay groups, which carry no parameter names). Use :func:`optimizer_cls_and_kwargs`
    rather than this class directly; it validates the options first.
    """

    def __call__(self, model: nn.Module, *, preset: str, **options: Any) -> GeometryOptimizer:
        if not isinstance(model, nn.Module):
            raise TypeError(f"TrainerOptimizerFactory needs the model (an nn.Module), got "
                            f"{type(model).__name__}; is this transformers' Trainer calling it?")
        return create(preset, model, **options)


def optimizer_cls_and_kwargs(preset: str = "muon", **options: Any) -> tuple[type[TrainerOptimizerFactory],
                                                                           dict[str, Any]]:
    """The value for ``Trainer(..., optimizer_cls_and_kwargs=...)`` that builds the steepest optimizer
    ``preset`` from Trainer's model, one param group per role.

    Args:
        preset: an optimizer name of :func:`steepest.names` (``"muon"``, ``"lanton"``, ...;
            case-insensitive, ``-`` and ``_`` alike).
        **options: what :func:`steepest.create` takes for a model: ``lr``, ``roles``,
            ``overrides``, ``constraints`` and the preset's own keywords (``weight_decay``,
            ``adamw_lr``, ``sign_lr``, ...). Checked now, so a typo fails before training starts.

    Returns:
        ``(TrainerOptimizerFactory, {"preset": name, **options})``.

    Raises:
        TypeError: ``preset`` is not a string (a model passed by mistake), or an option is not one
            the preset takes.
        ValueError: unknown preset name (the message of :func:`steepest.create`), or
            ``noise_source="second"``, which needs ``step(second_grads=...)``: Trainer never
            passes it.
        ImportError: transformers is missing, or too old to accept optimizer factories.
    """
    if isinstance(preset, nn.Module):
        raise TypeError("optimizer_cls_and_kwargs() takes the optimizer name, not the model: Trainer passes "
                        "its own model to the factory; write steepest.hf.optimizer_cls_and_kwargs('lanton')")
    name = canonical_name(preset)
    check_options(name, options)
    require_factory_support()
    return TrainerOptimizerFactory, {"preset": name, **options}


def check_options(name: str, options: Mapping[str, Any]) -> None:
    """Reject options that preset ``name`` would reject when Trainer builds it (as early as possible)."""
    signature = inspect.signature(PRESETS[name].__init__)
    accepted = set(signature.parameters) - {"self", "params"}
    accepted.update(_FOR_MODEL_KEYWORDS)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise TypeError(f"steepest optimizer {name!r} takes no option(s) {', '.join(unknown)}; "
                        f"its options: {', '.join(sorted(accepted))}")
    overrides = options.get("overrides") or {}
    sources = [options.get("noise_source")] + [dict(keys).get("noise_source") for keys in overrides.values()]
    if "second" in sources:
        raise ValueError("noise_source='second' needs optimizer.step(second_grads=...), which Trainer never "
                         "passes; use the default noise_source='previous' with Trainer")


def require_factory_support() -> None:
    """Raise ``ImportError`` unless transformers is installed and its Trainer accepts optimizer
    factories (``transformers.trainer_optimizer.is_optimizer_factory``)."""
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(f"steepest.hf needs transformers and accelerate: {INSTALL_HINT}") from exc
    try:
        from transformers.trainer_optimizer import is_optimizer_factory  # noqa: F401 (the feature test)
    except ImportError as exc:
        raise ImportError(
            f"transformers {transformers.__version__} has no optimizer factories in Trainer "
            f"(transformers.trainer_optimizer.is_optimizer_factory); upgrade it ({INSTALL_HINT}), or pass "
            f"optimizers=(steepest.create(name, model), None) to Trainer instead") from exc


def unwrap(obj: Any) -> GeometryOptimizer:
    """The steepest optimizer of a Trainer, or inside accelerate's ``AcceleratedOptimizer`` wrapper
    (Trainer wraps its optimizer when training starts), e.g. for ``steepest.explain(unwrap(trainer))``."""
    optimizer = obj.optimizer if hasattr(obj, "create_optimizer") else obj
    if optimizer is None:
        raise ValueError("trainer.optimizer is None: Trainer builds the optimizer when train() starts; call "
                         "trainer.create_optimizer() first to inspect it before training")
    while not isinstance(optimizer, GeometryOptimizer) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    if not isinstance(optimizer, GeometryOptimizer):
        raise TypeError(f"no steepest optimizer inside {type(obj).__name__} (found {type(optimizer).__name__})")
    return optimizer
