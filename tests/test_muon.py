"""steepest.Muon against torch.optim.Muon and torch.optim.AdamW (references, not "loss goes down")."""
import math

import pytest
import torch
from torch import nn

import steepest

SHAPES = [(8, 16), (24, 8), (16, 16), (5, 7)]


def _step_both(ref, ours, opt_ref, opt_ours, gen, steps):
    """Feed both optimizers the same random gradients for ``steps`` steps."""
    for _ in range(steps):
        grads = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in ref]
        for p, q, g in zip(ref, ours, grads):
            p.grad = g.clone()
            q.grad = g.clone()
        opt_ref.step()
        opt_ours.step()


def _run_pair(ref_cls, ref_kwargs, ours_kwargs, shapes=SHAPES, steps=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ref = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
    ours = [p.detach().clone().requires_grad_() for p in ref]
    opt_ref = ref_cls(ref, **ref_kwargs)
    opt_ours = steepest.Muon([{"params": ours, "role": "hidden"}], **ours_kwargs)
    _step_both(ref, ours, opt_ref, opt_ours, gen, steps)
    return ref, ours


def _max_rel(a, b):
    return ((a - b).abs().max() / a.abs().max()).item()


@pytest.mark.parametrize("adjust", [None, "original", "match_rms_adamw"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_matches_torch_muon_for_ten_steps(adjust, nesterov):
    """Same coefficients, steps and dtype (bfloat16, torch's fixed choice): within 1e-6 relative."""
    ref, ours = _run_pair(
        torch.optim.Muon,
        dict(lr=0.02, weight_decay=0.1, momentum=0.9, nesterov=nesterov, adjust_lr_fn=adjust),
        dict(lr=0.02, weight_decay=0.1, momentum=0.9, nesterov=nesterov, adjust_lr=adjust or "original",
             ns="keller", ns_steps=5, ns_dtype="bfloat16"),
    )
    for a, b in zip(ref, ours):
        assert _max_rel(a, b) <= 1e-6


def test_float32_default_tracks_torch_muon_closely():
    """The CPU default (float32 iteration) differs from torch's bfloat16 only by rounding."""
    ref, ours = _run_pair(torch.optim.Muon, dict(lr=0.02, weight_decay=0.0), dict(lr=0.02))
    for a, b in zip(ref, ours):
        assert _max_rel(a, b) < 2e-2
        assert not torch.equal(a, b)  # really a different dtype path


def test_same_shape_matrices_are_batched_and_match_single_calls(monkeypatch):
    import steepest.geometry.spectral as spectral

    calls = []
    real = spectral.polar

    def counting(G, *args, **kwargs):
        calls.append(tuple(G.shape))
        return real(G, *args, **kwargs)

    monkeypatch.setattr(spectral, "polar", counting)
    shapes = [(16, 32)] * 4 + [(32, 16)]
    ref, ours = _run_pair(torch.optim.Muon, dict(lr=0.02, weight_decay=0.0),
                          dict(lr=0.02, ns_dtype="float32"), shapes=shapes, steps=3)
    assert calls.count((4, 16, 32)) == 3 and calls.count((32, 16)) == 3
    # batched float32 path vs torch's bfloat16 single calls: rounding-level agreement only
    for a, b in zip(ref, ours):
        assert _max_rel(a, b) < 2e-2


def test_conv_weights_are_flattened_with_fan_in_of_the_flattened_view():
    w = torch.randn(8, 2, 3, 3, requires_grad=True)
    g = torch.randn(8, 2, 3, 3)
    w.grad = g
    before = w.detach().clone()
    opt = steepest.Muon([w], lr=0.1, momentum=0.0, ns="svd")
    opt.step()
    expected_dir = steepest.polar.polar(g.reshape(8, 18), ns="svd").reshape(8, 2, 3, 3)
    # shape factor sqrt(max(1, 8/18)) = 1 (the (out, in*k*k) view, not the kernel dims)
    torch.testing.assert_close(w.detach(), before - 0.1 * expected_dir, rtol=0, atol=1e-6)


def test_fallback_groups_match_torch_adamw():
    gen = torch.Generator().manual_seed(3)
    shapes = [(10,), (6, 4), ()]
    ref = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
    ours = [p.detach().clone().requires_grad_() for p in ref]
    opt_ref = torch.optim.AdamW(ref, lr=3e-3, betas=(0.8, 0.95), eps=1e-8, weight_decay=0.05, foreach=False)
    opt_ours = steepest.Muon([{"params": ours, "role": "embedding"}], adamw_lr=3e-3, adamw_betas=(0.8, 0.95),
                             adamw_eps=1e-8, adamw_weight_decay=0.05)
    _step_both(ref, ours, opt_ref, opt_ours, gen, 20)
    for a, b in zip(ref, ours):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


def test_unlabelled_parameters_are_split_by_shape():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Conv1d(8, 8, 3))
    opt = steepest.Muon(model.parameters())
    roles = {g["role"]: len(g["params"]) for g in opt.param_groups}
    assert roles == {"hidden": 1, "vector": 4, "conv": 1}
    kinds = {g["role"]: (g["geometry"], g["transform"]) for g in opt.param_groups}
    assert kinds["hidden"] == ("spectral", "momentum") and kinds["conv"] == ("spectral", "momentum")
    assert kinds["vector"] == ("identity", "adam")


def test_match_rms_adamw_gives_update_rms_0_2():
    w = torch.zeros(64, 256, requires_grad=True)
    w.grad = torch.randn(64, 256)
    opt = steepest.Muon([w], lr=1.0, momentum=0.0, adjust_lr="match_rms_adamw", ns="svd")
    opt.step()
    rms = w.detach().pow(2).mean().sqrt().item()
    assert math.isclose(rms, 0.2, rel_tol=1e-5)


def test_adjust_lr_unknown_raises():
    with pytest.raises(ValueError, match="Unknown adjust_lr 'nope'; expected one of: original, match_rms_adamw, rms_to_rms, none"):
        steepest.Muon([torch.zeros(2, 2, requires_grad=True)], adjust_lr="nope")
