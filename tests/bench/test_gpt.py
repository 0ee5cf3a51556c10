"""steepest.bench.gpt: architecture, parameter count, deterministic init, causality."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from steepest.bench.gpt import GPT, GPTConfig, count_parameters
from steepest.roles import classify


def test_default_model_matches_the_research_configuration():
    model = GPT(GPTConfig(vocab_size=84))
    # 4 layers of d_model 128: 826,624 parameters, 786,432 of them in the 16 hidden matrices
    # (4 x (384x128 + 128x128 + 512x128 + 128x512)); the lr sweeps in docs/benchmarks.md used it.
    assert count_parameters(model) == 826_624
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes["tok_emb.weight"] == (84, 128)
    assert shapes["pos_emb.weight"] == (128, 128)
    assert shapes["lm_head.weight"] == (84, 128)
    assert shapes["blocks.0.attn.qkv.weight"] == (384, 128)
    assert shapes["blocks.3.mlp.fc.weight"] == (512, 128)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 4 * 4 + 1 and all(m.bias is None for m in linears)
    assert model.lm_head.weight.data_ptr() != model.tok_emb.weight.data_ptr()  # untied


def test_roles_of_the_benchmark_model():
    model = GPT(GPTConfig(vocab_size=84))
    labels = classify(model)
    params = dict(model.named_parameters())
    hidden = [n for n, r in labels.items() if r == "hidden"]
    assert len(hidden) == 16 and sum(params[n].numel() for n in hidden) == 786_432
    assert labels["tok_emb.weight"] == labels["pos_emb.weight"] == "embedding"
    assert labels["lm_head.weight"] == "head"
    assert labels["blocks.0.ln1.bias"] == "vector"


def test_init_is_deterministic_and_leaves_global_rng_alone():
    cfg = GPTConfig(vocab_size=30, n_layer=2, d_model=32, n_head=2, ctx=16)
    rng_before = torch.get_rng_state()
    a, b, c = GPT(cfg, seed=5), GPT(cfg, seed=5), GPT(cfg, seed=6)
    assert torch.equal(torch.get_rng_state(), rng_before)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
        if pa.ndim == 2:
            assert not torch.equal(pa, pc), name
    # nanoGPT-style scales: 0.02 for matrices, 0.02/sqrt(2 n_layer) for residual projections.
    big = GPT(GPTConfig(vocab_size=84), seed=0)
    assert big.blocks[0].mlp.fc.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert big.blocks[0].mlp.proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.03)
    assert torch.equal(big.ln_f.weight, torch.ones(128)) and torch.equal(big.ln_f.bias, torch.zeros(128))


def test_forward_shapes_and_initial_loss_near_uniform():
    cfg = GPTConfig(vocab_size=40, n_layer=2, d_model=32, n_head=4, ctx=24)
    model = GPT(cfg, seed=1)
    idx = torch.randint(0, 40, (3, 24), generator=torch.Generator().manual_seed(0))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 24, 40)
    assert loss.item() == pytest.approx(math.log(40), abs=0.1)
    logits_only, none = model(idx[:, :5])
    assert logits_only.shape == (3, 5, 40) and none is None


def test_attention_is_causal():
    cfg = GPTConfig(vocab_size=20, n_layer=2, d_model=16, n_head=2, ctx=12)
    model = GPT(cfg, seed=2).eval()
    idx = torch.randint(0, 20, (1, 12), generator=torch.Generator().manual_seed(1))
    changed = idx.clone()
    changed[0, 8] = (idx[0, 8] + 1) % 20
    with torch.no_grad():
        before, after = model(idx)[0], model(changed)[0]
    assert torch.allclose(before[0, :8], after[0, :8], atol=1e-6)
    assert not torch.allclose(before[0, 8:], after[0, 8:])


def test_config_and_context_validation():
    with pytest.raises(ValueError, match="divisible by n_head"):
        GPTConfig(d_model=30, n_head=4)
    with pytest.raises(ValueError, match="n_layer must be a positive int"):
        GPTConfig(n_layer=0)
    model = GPT(GPTConfig(vocab_size=10, n_layer=1, d_model=8, n_head=2, ctx=4))
    with pytest.raises(ValueError, match="exceeds the model context 4"):
        model(torch.zeros(1, 5, dtype=torch.long))


@pytest.mark.parametrize("mixer", ["identity", "birkhoff", "spectral_sphere", "stiefel", "grassmann"])
def test_hyper_connections_widen_the_residual_stream(mixer):
    cfg = GPTConfig(vocab_size=11, n_layer=2, d_model=16, n_head=2, ctx=8, hyper_connections=3, hc_mixer=mixer)
    model = GPT(cfg, seed=0)
    plain = GPT(GPTConfig(vocab_size=11, n_layer=2, d_model=16, n_head=2, ctx=8), seed=0)
    # the same weights as the plain model (the hyper-connections keep their constant init)
    for name, p in plain.named_parameters():
        assert torch.equal(dict(model.named_parameters())[name], p)
    idx = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(0))
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 8, 11) and torch.isfinite(loss)
    loss.backward()
    hc = [n for n, _ in model.named_parameters() if ".hc_" in n]
    assert hc and all(model.get_parameter(n).grad is not None for n in hc)
    labels = classify(model)
    assert {labels[n] for n in hc} == {"vector"}  # small mixing parameters: elementwise updates
    assert model.blocks[0].hc_attn.last_h_res.shape[-2:] == (3, 3)


def test_hyper_connection_options_are_validated():
    with pytest.raises(ValueError, match="GPTConfig.hyper_connections must be an int >= 0"):
        GPTConfig(hyper_connections=-1)
    with pytest.raises(ValueError, match="GPTConfig.hc_mixer must be one of identity, birkhoff"):
        GPTConfig(hyper_connections=2, hc_mixer="sinkhorn")
