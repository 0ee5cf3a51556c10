"""The models that ``steepest bench overhead`` steps, and the fixed gradients it gives them.

A workload is a model and its ``roles=`` overrides (the ones the benchmark's task uses, so every
optimizer agrees on which tensors are hidden matrices). No data is loaded: the step under test
reads only the parameters and their ``.grad``, which :func:`seeded_gradients` fills with a
Gaussian drawn from a generator seeded with the run's seed, the same values for every optimizer.

================  ==================================================================================
``tiny``          64 small matrices (8x8, 16x8 and 8x16 in turn) and 64 vectors of 16 entries, bare
                  parameters in two ``nn.ParameterList``: 7,808 numbers in 128 tensors, so the
                  per-tensor Python work of a step is most of its time
quick-suite       the models of the suite's tasks, built through their task definitions:
                  ``shakespeare-char`` (the 4-block, width-128 character GPT; vocabulary 84, the
                  corpus's, without reading the corpus), ``digits-cnn`` (two convolutions and two
                  linear layers), ``matrix-sensing`` (one 20x8 factor) and ``matrix-sensing-asym``
                  (two), the last two with their task's roles (every factor is a hidden matrix)
``gpt2-small``    the benchmark GPT at GPT-2 small's shape: width 768, MLP 3072, 12 heads,
                  vocabulary 50257, context 1024, with ``gpt2_blocks`` of its 12 blocks (default
                  1 on a CPU, 12 on CUDA; 85 M parameters with one block, most of them in the
                  untied embedding and head)
================  ==================================================================================
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from .gpt import GPT, GPTConfig
from .tasks import make_task
from .tasks.char_lm import MODEL_OPTIONS, CharLMTask
from .tasks.digits_cnn import DigitsCNN, DigitsNet
from .tasks.matrix_sensing import MatrixSensing

#: the quick suite's tasks, whose models are workloads of the same name
SUITE_WORKLOADS = ("shakespeare-char", "digits-cnn", "matrix-sensing", "matrix-sensing-asym")
#: every workload, in report order
WORKLOAD_NAMES = ("tiny", *SUITE_WORKLOADS, "gpt2-small")
#: the workloads of ``--smoke``: the tiny one and the cheapest quick-suite model
SMOKE_WORKLOADS = ("tiny", "matrix-sensing")

#: the Shakespeare corpus's vocabulary (:mod:`steepest.bench.data`), so the GPT is built without it
SHAKESPEARE_VOCAB = 84
#: GPT-2 small: the shape of each of its 12 blocks, its vocabulary and context
GPT2_SMALL = {"vocab_size": 50257, "d_model": 768, "n_head": 12, "ctx": 1024}
GPT2_BLOCKS = 12
TINY_SHAPES = ((8, 8), (16, 8), (8, 16))
TINY_COUNT = 64
TINY_VECTOR = 16


@dataclass
class Workload:
    """A built workload: the model (on its device), its role overrides and a one-line description."""

    name: str
    model: nn.Module
    roles: Mapping[str, str] | None
    description: str


class TinyParameters(nn.Module):
    """Many tiny tensors: ``count`` matrices cycling through ``TINY_SHAPES`` and ``count`` vectors."""

    def __init__(self, count: int = TINY_COUNT, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.matrices = nn.ParameterList(
            nn.Parameter(0.1 * torch.randn(*TINY_SHAPES[i % len(TINY_SHAPES)], generator=gen)) for i in range(count))
        self.vectors = nn.ParameterList(nn.Parameter(torch.ones(TINY_VECTOR)) for _ in range(count))


def default_gpt2_blocks(device: str | torch.device) -> int:
    """GPT-2 small's 12 blocks on CUDA, one on anything else (so a CPU run stays in memory and time)."""
    return GPT2_BLOCKS if torch.device(device).type == "cuda" else 1


def _without_count(description: str) -> str:
    """A task's model description without its closing ``: N parameters`` (the report counts them)."""
    head, sep, tail = description.rpartition(": ")
    return head if sep and tail.endswith(" parameters") else description


def _suite_model(name: str, seed: int) -> tuple[nn.Module, Mapping[str, str] | None, str]:
    """The model of the suite's task ``name`` and its roles, without loading the task's data."""
    task = make_task(name)
    if isinstance(task, CharLMTask):
        # the task reads the vocabulary from its corpus; the Shakespeare corpus's is known
        shape = {key: task.options[key] for key in MODEL_OPTIONS if key in task.options}
        cfg = GPTConfig(vocab_size=SHAKESPEARE_VOCAB, **shape)
        return GPT(cfg, seed=seed), None, (f"the {name} task's GPT: {cfg.n_layer} blocks, width {cfg.d_model}, "
                                           f"{cfg.n_head} heads, context {cfg.ctx}, vocabulary {cfg.vocab_size}")
    if isinstance(task, DigitsCNN):
        # a DigitsTrial holds the scikit-learn images as well; the model alone needs no data
        return DigitsNet(seed), None, f"the {name} task's {_without_count(task.describe_model())}"
    if isinstance(task, MatrixSensing):
        # its trial draws the instance from the seed (no data to load) and carries the task's roles
        trial = task.trial(seed, task.budget("quick").batch_size)
        return trial.model, trial.roles, f"the {name} task's model, {_without_count(task.describe_model())}"
    raise ValueError(f"workload {name!r}: no model builder for task class {type(task).__name__}")


def build_workload(name: str, *, device: str | torch.device = "cpu", gpt2_blocks: int | None = None,
                   seed: int = 0) -> Workload:
    """Build workload ``name`` (one of :data:`WORKLOAD_NAMES`) on ``device``; ``gpt2_blocks`` is the
    number of GPT-2-small blocks (``None``: :func:`default_gpt2_blocks`)."""
    if name == "tiny":
        model, roles = TinyParameters(seed=seed), None
        shapes = ", ".join("x".join(map(str, s)) for s in TINY_SHAPES)
        description = (f"{TINY_COUNT} tiny matrices ({shapes} in turn) and {TINY_COUNT} vectors of "
                       f"{TINY_VECTOR} entries")
    elif name in SUITE_WORKLOADS:
        model, roles, description = _suite_model(name, seed)
    elif name == "gpt2-small":
        blocks = default_gpt2_blocks(device) if gpt2_blocks is None else gpt2_blocks
        if not isinstance(blocks, int) or blocks < 1:
            raise ValueError(f"gpt2_blocks must be a positive int, got {blocks!r}")
        model, roles = GPT(GPTConfig(n_layer=blocks, **GPT2_SMALL), seed=seed), None
        description = (f"GPT-2 small's shape with {blocks} of its {GPT2_BLOCKS} blocks: width 768, MLP 3072, "
                       f"12 heads, vocabulary 50257, context 1024")
    else:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOAD_NAMES)}")
    return Workload(name, model.to(device), roles, description)


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """The distinct parameters that need a gradient, in ``parameters()`` order."""
    return [p for p in model.parameters() if p.requires_grad]


@torch.no_grad()
def seeded_gradients(model: nn.Module, seed: int) -> list[torch.Tensor]:
    """A standard Gaussian for each of :func:`trainable`'s parameters, drawn in order from one
    generator seeded with ``seed`` on the parameters' device (the same values on every call)."""
    params = trainable(model)
    if not params:
        return []
    gen = torch.Generator(device=params[0].device).manual_seed(seed)
    return [torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype) for p in params]


__all__ = ["GPT2_SMALL", "SMOKE_WORKLOADS", "SUITE_WORKLOADS", "TinyParameters", "WORKLOAD_NAMES", "Workload",
           "build_workload", "default_gpt2_blocks", "seeded_gradients", "trainable"]
