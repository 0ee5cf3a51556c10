"""Character-level language modelling with the benchmark GPT: ``shakespeare-char`` and ``text``.

``shakespeare-char`` trains :class:`steepest.bench.gpt.GPT` (4 layers, width 128, 4 heads, context
128, 0.83 M parameters) on Shakespeare's works (:mod:`steepest.bench.data`: 5.06 M characters,
vocabulary 84, 90/10 positional split). ``text`` does the same on any UTF-8 file the user names
(``--task text:PATH``).

A trial with seed ``s`` initialises the GPT from ``s`` and draws random training windows from a
generator seeded with ``s + 1`` (a second, independent stream for optimizers that ask for a
second gradient is seeded ``s + SECOND_STREAM``). The validation set is the same for every seed:
``eval_batches`` batches of 16 random windows of the validation split drawn with the fixed seed
:data:`VAL_SEED`. The metric is the mean validation cross-entropy in nats per character.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..data import CharData, fixed_batches, load_data, random_batch
from ..gpt import GPT, GPTConfig, count_parameters
from .base import SECOND_STREAM, Budget, Task, Trial

VAL_SEED = 4321
VAL_BATCH_SIZE = 16
MODEL_OPTIONS = ("n_layer", "d_model", "n_head", "ctx", "hyper_connections", "hc_mixer")


class CharTrial(Trial):
    def __init__(self, data: CharData, cfg: GPTConfig, seed: int, batch_size: int,
                 val_batches: list) -> None:
        self.model = GPT(cfg, seed=seed)
        self.roles = None
        self._data = data
        self._ctx = cfg.ctx
        self._batch_size = batch_size
        self._generator = torch.Generator().manual_seed(seed + 1)
        self._second_generator = torch.Generator().manual_seed(seed + SECOND_STREAM)
        self._val = val_batches

    def train_loss(self) -> torch.Tensor:
        x, y = random_batch(self._data.train, self._batch_size, self._ctx, self._generator)
        return self.model(x, y)[1]

    def second_loss(self) -> torch.Tensor:
        x, y = random_batch(self._data.train, self._batch_size, self._ctx, self._second_generator)
        return self.model(x, y)[1]

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        losses = [self.model(x, y)[1].item() for x, y in self._val]
        self.model.train()
        return {"val_loss": sum(losses) / len(losses)}


class CharLMTask(Task):
    """A character-level GPT on a text corpus (see the module docstring).

    Options: ``n_layer``, ``d_model``, ``n_head``, ``ctx`` (the GPT's shape, defaults as
    :class:`GPTConfig`) and ``eval_batches`` (validation batches of 16 windows, default 8).
    """

    metric = "val_loss"
    metric_label = "validation loss (nats/char)"
    budgets = {
        "smoke": Budget(steps=6, batch_size=2, eval_every=3),
        "quick": Budget(steps=100, batch_size=16, eval_every=20),
        "full": Budget(steps=200, batch_size=16, eval_every=20),
    }

    def __init__(self, **options) -> None:
        unknown = sorted(set(options) - {*MODEL_OPTIONS, "eval_batches", "path"})
        if unknown:
            raise ValueError(f"{self.name}: unknown option {unknown[0]!r}; expected one of "
                             f"{', '.join((*MODEL_OPTIONS, 'eval_batches'))}")
        super().__init__(**options)
        self._data: CharData | None = None

    def _load(self) -> CharData:
        return load_data(self.name)

    @property
    def data(self) -> CharData:
        if self._data is None:
            self._data = self._load()
        return self._data

    def model_config(self) -> GPTConfig:
        shape = {k: self.options[k] for k in MODEL_OPTIONS if k in self.options}
        return GPTConfig(vocab_size=self.data.vocab_size, **shape)

    def prepare(self) -> dict:
        data, cfg = self.data, self.model_config()
        if len(data.val) <= cfg.ctx + 1 or len(data.train) <= cfg.ctx + 1:
            raise ValueError(f"{data.name}: {len(data.train)} train / {len(data.val)} val tokens are "
                             f"too few for a context of {cfg.ctx}; use a longer text or a smaller ctx")
        return {"source": data.name, "n_chars": data.n_chars, "vocab_size": data.vocab_size,
                "sha256_prefix": data.sha256, "train_tokens": len(data.train),
                "val_tokens": len(data.val), "split": "first 90 % train, last 10 % validation",
                "val_windows": self.options.get("eval_batches", 8) * VAL_BATCH_SIZE}

    def trial(self, seed: int, batch_size: int) -> Trial:
        cfg = self.model_config()
        val = fixed_batches(self.data.val, int(self.options.get("eval_batches", 8)), VAL_BATCH_SIZE,
                            cfg.ctx, seed=VAL_SEED)
        return CharTrial(self.data, cfg, seed, batch_size, val)

    def describe_model(self) -> str:
        cfg = self.model_config()
        params = count_parameters(GPT(cfg))
        streams = (f", {cfg.hyper_connections} residual streams ({cfg.hc_mixer} hyper-connections)"
                   if cfg.hyper_connections else "")
        return (f"GPT {cfg.n_layer} layers, d_model {cfg.d_model}, {cfg.n_head} heads, ctx {cfg.ctx}, "
                f"vocab {cfg.vocab_size}{streams}: {params:,} parameters")


class ShakespeareChar(CharLMTask):
    name = "shakespeare-char"


class TextFile(CharLMTask):
    """``text:PATH``: the same GPT on the user's own UTF-8 file (option ``path``)."""

    name = "text"

    def __init__(self, **options) -> None:
        if "path" not in options:
            raise ValueError("the text task needs a file: use --task text:PATH")
        super().__init__(**options)

    @property
    def key(self) -> str:
        return f"text-{Path(self.options['path']).stem}"

    def _load(self) -> CharData:
        return load_data(text_file=self.options["path"])
