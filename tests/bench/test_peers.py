"""steepest.bench.peers and external_peers: the documented recipes, roles, state size, skips."""
from __future__ import annotations

import pytest
import torch

from steepest.bench import external_peers, peers
from steepest.bench.gpt import GPT, GPTConfig
from steepest.optim import PRESETS

TINY = {"n_layer": 1, "d_model": 32, "n_head": 2, "ctx": 32}


def test_state_bytes_counts_adamw_moments_exactly():
    model = GPT(GPTConfig(vocab_size=11, **TINY))
    peer = peers.build_peer("adamw", model)
    model(torch.zeros(2, 8, dtype=torch.long), torch.zeros(2, 8, dtype=torch.long))[1].backward()
    peer.step()
    n_tensors = len(list(model.parameters()))
    n_elements = sum(p.numel() for p in model.parameters())
    # exp_avg and exp_avg_sq in float32, plus one float32 scalar "step" per tensor.
    assert peers.state_bytes(peer.optimizers) == 2 * 4 * n_elements + 4 * n_tensors


def test_references_follow_the_documented_recipes():
    model = GPT(GPTConfig(vocab_size=84))
    (opt,) = peers.build_peer("adamw", model).optimizers
    assert opt.defaults["lr"] == 4e-3 and opt.defaults["betas"] == (0.9, 0.95)
    decays = {g["weight_decay"]: sum(p.ndim for p in g["params"]) // len(g["params"]) for g in opt.param_groups}
    assert decays == {0.1: 2, 0.0: 1}
    (no_decay,) = peers.build_peer("adamw", model, adamw_weight_decay=0.0).optimizers
    assert {g["weight_decay"] for g in no_decay.param_groups} == {0.0}

    torch_muon, aux = peers.build_peer("torch-muon", model).optimizers
    assert isinstance(torch_muon, torch.optim.Muon) and isinstance(aux, torch.optim.AdamW)
    assert sum(p.numel() for g in torch_muon.param_groups for p in g["params"]) == 786_432
    group = torch_muon.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.02, 0.95, True, 0.0)
    assert aux.param_groups[0]["lr"] == 3e-3 and aux.param_groups[0]["weight_decay"] == 0.0
    assert peers.build_peer("torch-muon", model, lr=0.04).optimizers[0].param_groups[0]["lr"] == 0.04
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        peers.build_peer("sgd", model)


def test_roles_override_reaches_every_peer():
    class Factor(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.x = torch.nn.Parameter(torch.randn(6, 3))

    model = Factor()
    (muon,) = peers.build_peer("torch-muon", model, roles_override={"x": "hidden"}).optimizers  # no AdamW: nothing else
    assert muon.param_groups[0]["params"][0] is model.x
    (opt,) = peers.build_peer("steepest-muon", model, roles_override={"x": "hidden"}).optimizers
    assert [g.get("role") for g in opt.param_groups] == ["hidden"]


def test_every_registered_preset_is_a_bench_peer_with_its_lr():
    assert {preset for preset, _ in peers.STEEPEST_PEERS.values()} == set(PRESETS)
    model = GPT(GPTConfig(vocab_size=84))
    for name, (preset, kwargs) in peers.STEEPEST_PEERS.items():
        peer = peers.build_peer(name, model)
        (opt,) = peer.optimizers
        assert isinstance(opt, PRESETS[preset]), name
        assert opt.defaults["lr"] == kwargs["lr"] == peers.DEFAULT_LRS[name], name
        assert peers.build_peer(name, model, lr=0.5 * kwargs["lr"]).optimizers[0].defaults["lr"] == 0.5 * kwargs["lr"]
        assert "parameter" in peer.explanation  # the report shows what each parameter gets


def test_tuned_peers_keep_one_adamw_lr_and_defaults_peers_split_the_tables():
    """The tuned Muon family runs every AdamW tensor at 2e-3, as beside torch.optim.Muon; the defaults
    peer is what a user gets, embedding tables at embedding_lr."""
    model = GPT(GPTConfig(vocab_size=84, **TINY))
    for name in ("steepest-muon", "steepest-normuon", "steepest-auon", "steepest-hybrid-auon", "steepest-muon-lanton"):
        (opt,) = peers.build_peer(name, model).optimizers
        lrs = {g["role"]: g["lr"] for g in opt.param_groups}
        assert lrs["embedding"] == lrs["head"] == lrs["vector"] == peers.AUX_ADAMW_LR, name
    (opt,) = peers.build_peer("steepest-muon-defaults", model).optimizers
    assert {g["role"]: g["lr"] for g in opt.param_groups}["embedding"] == 3e-3


def test_missing_external_library_is_a_skip_with_the_install_hint(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pytorch_optimizer", None)  # makes the import fail
    monkeypatch.setitem(sys.modules, "heavyball", None)
    model = GPT(GPTConfig(vocab_size=11, **TINY))
    for name in external_peers.EXTERNAL_BUILDERS:
        ok, reason = external_peers.installed(name)
        assert not ok and "is not installed (pip install " in reason
        with pytest.raises(peers.PeerUnavailable, match="is not installed"):
            peers.build_peer(name, model)


def _one_step_update(peer, model, grads):
    before = [p.detach().clone() for p in model.parameters()]
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    peer.step()
    return [p.detach() - b for p, b in zip(model.parameters(), before)]


@pytest.mark.parametrize("external, ours", [("po-muon", "steepest-muon"), ("po-lion", "steepest-lion"),
                                            ("po-diffgrad", "steepest-diffgrad"), ("hb-muon", "steepest-muon"),
                                            ("po-scion", "steepest-scion")])
def test_external_peer_takes_the_same_first_step_as_the_steepest_preset(external, ours):
    """The lr rule of external_peers: one step from the same gradient moves every matrix alike."""
    ok, reason = external_peers.installed(external)
    if not ok:
        pytest.skip(reason)
    gen = torch.Generator().manual_seed(0)
    cfg = GPTConfig(vocab_size=11, **TINY)
    grads = [torch.randn(p.shape, generator=gen) for p in GPT(cfg).parameters()]
    updates = {}
    for name in (external, ours):
        model = GPT(cfg, seed=1)
        updates[name] = _one_step_update(peers.build_peer(name, model), model, grads)
    hidden = peers.hidden_matrix_names(GPT(cfg))
    names = [n for n, _ in GPT(cfg).named_parameters()]
    for name, a, b in zip(names, updates[external], updates[ours]):
        if external == "po-scion":  # every role has its own norm: compare the step's size in it
            size = (lambda u: torch.linalg.matrix_norm(u, ord=2).item()) if a.ndim == 2 else torch.linalg.norm
            assert float(size(a)) == pytest.approx(float(size(b)), rel=0.02), name
        elif name in hidden:
            # Newton-Schulz variants differ in detail; the step's spectral norm agrees to 15 %.
            sa, sb = (torch.linalg.matrix_norm(u, ord=2).item() for u in (a, b))
            assert sa == pytest.approx(sb, rel=0.15), (name, sa, sb)
        elif external != "po-muon" and external != "hb-muon":
            assert torch.allclose(a, b, atol=1e-6, rtol=1e-4), name
