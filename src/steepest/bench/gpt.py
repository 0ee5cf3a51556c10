"""A small character-level GPT for benchmarks (pre-LayerNorm transformer decoder).

Shape of the default model (``GPTConfig()``, vocabulary 84): 4 blocks, width 128, 4 heads, context
128, GELU MLP of width 4x, no biases in the Linear layers, one fused ``qkv`` projection per block,
learned position embeddings and an untied output head: 826,624 parameters, 786,432 of them in the
16 hidden matrices. Parameter names follow what :func:`steepest.roles.classify` expects:
``tok_emb`` and ``pos_emb`` are embeddings, ``lm_head`` is the head, the block matrices are hidden
and the LayerNorm weights and biases are vectors.

Initialisation is deterministic given ``seed`` and does not touch torch's global RNG: weights are
normal with std 0.02, and the two residual output projections of each block are scaled down by
``1/sqrt(2 * n_layer)`` so that the residual stream does not grow with depth.

With ``hyper_connections = n > 0`` the residual stream is widened to ``n`` streams
(:class:`steepest.nn.HyperConnections`, mixer ``hc_mixer``): the embedding is copied into every
stream, each attention and MLP branch reads and writes the streams through its own hyper-connection,
and the streams are summed before the final LayerNorm. The hyper-connections start as the plain
residual (their mixing parameters are constants at init, untouched by ``seed``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GPTConfig:
    """Model hyper-parameters. ``vocab_size`` is set from the data."""

    vocab_size: int = 84
    n_layer: int = 4
    d_model: int = 128
    n_head: int = 4
    ctx: int = 128
    hyper_connections: int = 0
    hc_mixer: str = "birkhoff"

    def __post_init__(self) -> None:
        for field in ("vocab_size", "n_layer", "d_model", "n_head", "ctx"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{field} must be a positive int, got {value!r}")
        if not isinstance(self.hyper_connections, int) or self.hyper_connections < 0:
            raise ValueError(f"GPTConfig.hyper_connections must be an int >= 0 (0: a plain residual), got "
                             f"{self.hyper_connections!r}")
        from ..nn.hyper_connections import MIXERS

        if self.hc_mixer not in MIXERS:
            raise ValueError(f"GPTConfig.hc_mixer must be one of {', '.join(MIXERS)}, got {self.hc_mixer!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")

    def as_dict(self) -> dict:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention with a fused query/key/value projection."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        # (B, T, C) -> (B, heads, T, C / heads)
        q, k, v = (t.view(batch, time, self.n_head, width // self.n_head).transpose(1, 2)
                   for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(batch, time, width))


class MLP(nn.Module):
    """Two-layer GELU feed-forward network, hidden width ``4 * d_model``."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, 4 * cfg.d_model, bias=False)
        self.proj = nn.Linear(4 * cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``."""

    def __init__(self, cfg: GPTConfig, index: int = 0) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)
        if cfg.hyper_connections:
            from ..nn.hyper_connections import HyperConnections

            n, mixer = cfg.hyper_connections, cfg.hc_mixer
            self.hc_attn = HyperConnections(cfg.d_model, n, mixer=mixer, layer_index=2 * index)
            self.hc_mlp = HyperConnections(cfg.d_model, n, mixer=mixer, layer_index=2 * index + 1)

    def _attn_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(self.ln1(x))

    def _mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln2(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, T, C]``, or ``[B, T, n, C]`` streams with hyper-connections."""
        if hasattr(self, "hc_attn"):
            x = self.hc_attn(x, self._attn_branch)
            return self.hc_mlp(x, self._mlp_branch)
        x = x + self._attn_branch(x)
        return x + self._mlp_branch(x)


class GPT(nn.Module):
    """Character-level GPT; ``forward(idx, targets)`` returns ``(logits, loss)``."""

    def __init__(self, cfg: GPTConfig, seed: int = 1234) -> None:
        super().__init__()
        self.cfg = cfg
        # torch's module constructors draw their default init from the global RNG; fork it so that
        # building a model leaves the caller's random stream exactly as it was.
        with torch.random.fork_rng(devices=[]):
            self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
            self.pos_emb = nn.Embedding(cfg.ctx, cfg.d_model)
            self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
            self.ln_f = nn.LayerNorm(cfg.d_model)
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters(seed)

    @torch.no_grad()
    def reset_parameters(self, seed: int) -> None:
        """Re-initialise every weight from ``seed`` alone (the global RNG is left untouched)."""
        gen = torch.Generator().manual_seed(seed)
        residual_std = 0.02 / math.sqrt(2 * self.cfg.n_layer)
        for name, p in self.named_parameters():
            if ".hc_" in name:  # hyper-connections keep their own (constant) initialisation
                continue
            if name.endswith(("attn.proj.weight", "mlp.proj.weight")):
                nn.init.normal_(p, 0.0, residual_std, generator=gen)
            elif p.ndim >= 2:
                nn.init.normal_(p, 0.0, 0.02, generator=gen)
            elif name.endswith(".weight"):  # LayerNorm gains
                p.fill_(1.0)
            else:  # LayerNorm biases
                p.zero_()

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        time = idx.shape[1]
        if time > self.cfg.ctx:
            raise ValueError(f"sequence length {time} exceeds the model context {self.cfg.ctx}")
        positions = torch.arange(time, device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(positions)
        if self.cfg.hyper_connections:
            from ..nn.hyper_connections import HyperConnections

            x = HyperConnections.expand(x, self.cfg.hyper_connections)
        for block in self.blocks:
            x = block(x)
        if self.cfg.hyper_connections:
            x = HyperConnections.reduce(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss


def count_parameters(model: nn.Module) -> int:
    """Total number of parameter elements."""
    return sum(p.numel() for p in model.parameters())
