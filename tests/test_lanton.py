"""LANTON's noise-adaptive layerwise rates (arXiv 2510.14009; reconstruction, see steepest.optim.noise)."""
import copy
import math

import pytest
import torch

import steepest
from steepest.optim import LANTON
from steepest.optim.noise import layer_factors, noise_stds, nuclear_norm_estimate

F64 = torch.float64


def _low_rank(m, n, rank, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(m, rank, generator=gen) @ torch.randn(rank, n, generator=gen)


# -- the nuclear-norm estimator ----------------------------------------------------------------
@pytest.mark.parametrize("ns,rel", [("quintic", 0.05), ("polar_express_8", 0.01), ("svd", 1e-6)])
def test_nuclear_norm_estimate_against_svd(ns, rel):
    gen = torch.Generator().manual_seed(0)
    mats = [torch.randn(32, 48, generator=gen), torch.randn(64, 16, generator=gen),
            _low_rank(40, 40, 3, 1), _low_rank(24, 96, 1, 2),
            torch.randn(8, 4, 3, 3, generator=gen)]  # a conv filter: nuclear norm of the 8 x 36 view
    estimates = nuclear_norm_estimate(mats, ns)
    for x, est in zip(mats, estimates):
        exact = torch.linalg.matrix_norm(x.reshape(x.shape[0], -1).double(), ord="nuc").item()
        assert est.item() == pytest.approx(exact, rel=rel), (tuple(x.shape), ns)


def test_nuclear_norm_estimate_batches_same_shapes_like_single_calls():
    gen = torch.Generator().manual_seed(3)
    mats = [torch.randn(16, 24, generator=gen) for _ in range(3)]
    batched = nuclear_norm_estimate(mats, "quintic")
    single = [nuclear_norm_estimate([m], "quintic")[0] for m in mats]
    for a, b in zip(batched, single):
        assert a.item() == pytest.approx(b.item(), rel=1e-5)


# -- the rule ------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ["min_ratio", "gmean_ratio"])
def test_rule_is_exactly_one_for_equal_noise_and_decreasing_in_noise(rule):
    assert layer_factors([0.3, 0.3, 0.3], rule) == [1.0, 1.0, 1.0]
    assert layer_factors([0.0, 0.0], rule) == [1.0, 1.0]
    stds = [0.5, 2.0, 1.0, 4.0]
    factors = layer_factors(stds, rule)
    order = sorted(range(4), key=lambda i: stds[i])
    assert all(factors[a] > factors[b] for a, b in zip(order, order[1:])), "noisier must mean smaller"
    if rule == "min_ratio":
        assert max(factors) == 1.0 and factors == pytest.approx([1.0, 0.25, 0.5, 0.125])
    else:
        assert math.prod(factors) == pytest.approx(1.0)


def test_noise_floor_is_relative_to_the_largest_estimate():
    assert noise_stds([0.0, 4.0], eps=1e-2) == pytest.approx([0.2, math.sqrt(4.04)])
    assert noise_stds([1e-8, 1e-8], eps=1e-6) == pytest.approx([1e-4 * math.sqrt(1 + 1e-6)] * 2)


# -- the optimizer -------------------------------------------------------------------------------
def _two_layer_setup(noise_adaptive, **kwargs):
    gen = torch.Generator().manual_seed(5)
    w1 = torch.randn(6, 4, generator=gen, dtype=F64).requires_grad_()
    w2 = torch.randn(6, 4, generator=gen, dtype=F64).requires_grad_()
    emb = torch.randn(10, 4, generator=gen, dtype=F64).requires_grad_()
    groups = [{"params": [("w1", w1), ("w2", w2)], "role": "hidden"},
              {"params": [("emb", emb)], "role": "embedding"}]
    return [w1, w2, emb], LANTON(groups, lr=0.05, sign_lr=0.01, noise_adaptive=noise_adaptive, **kwargs)


def test_equal_noise_reduces_exactly_to_the_base_optimizer():
    """w2's gradient is always -w1's: both layers have the same dual-norm noise at every step, so
    every factor is exactly 1 and LANTON equals its base (noise_adaptive=False) bit for bit."""
    params_a, opt_a = _two_layer_setup(True)
    params_b, opt_b = _two_layer_setup(False)
    gen = torch.Generator().manual_seed(6)
    for _ in range(10):
        g = torch.randn(6, 4, generator=gen, dtype=F64)
        ge = torch.randn(10, 4, generator=gen, dtype=F64)
        for params in (params_a, params_b):
            params[0].grad, params[1].grad, params[2].grad = g.clone(), -g.clone(), ge.clone()
        opt_a.step()
        opt_b.step()
    for a, b in zip(params_a, params_b):
        assert torch.equal(a, b)
    stats = opt_a.layer_stats()
    assert [r["parameter"] for r in stats] == ["w1", "w2", "emb"]
    assert stats[0]["noise"] == stats[1]["noise"] > 0 and all(r["factor"] == 1.0 for r in stats)
    assert opt_b.layer_stats() == []


def test_noisier_layer_gets_a_smaller_lr():
    params, opt = _two_layer_setup(True, ns="svd", ns_dtype="float64")
    gen = torch.Generator().manual_seed(7)
    mean = torch.randn(6, 4, generator=gen, dtype=F64)
    for _ in range(20):
        before = [p.detach().clone() for p in params]
        params[0].grad = mean + 0.1 * torch.randn(6, 4, generator=gen, dtype=F64)   # quiet
        params[1].grad = mean + 2.0 * torch.randn(6, 4, generator=gen, dtype=F64)   # noisy
        params[2].grad = torch.randn(10, 4, generator=gen, dtype=F64)
        opt.step()
    quiet, noisy, emb = opt.layer_stats()
    assert noisy["noise"] > 5 * quiet["noise"]
    assert quiet["factor"] == 1.0 and noisy["factor"] < 0.2
    assert noisy["lr"] == pytest.approx(noisy["factor"] * quiet["lr"])
    assert emb["factor"] == 1.0  # alone in its group
    # The factor really scales the step: with exact polar factors every hidden step has Frobenius
    # norm lr * sqrt(6/4) * factor * sqrt(4), so the last steps' norms are in the factors' ratio.
    moved = [(p.detach() - b).norm().item() for p, b in zip(params[:2], before[:2])]
    assert moved[0] == pytest.approx(0.05 * math.sqrt(6 / 4) * 2, rel=1e-9)
    assert moved[1] / moved[0] == pytest.approx(noisy["factor"], rel=1e-9)


def test_previous_gradient_noise_value():
    """Option 'previous': no estimate at the first step; then sqrt(bias-corrected H) is exactly the
    scaled dual norm of the gradient difference (one measurement)."""
    w = torch.zeros(5, 3, dtype=F64, requires_grad=True)
    e = torch.zeros(7, 3, dtype=F64, requires_grad=True)
    opt = LANTON([{"params": [("w", w)], "role": "hidden"}, {"params": [("e", e)], "role": "embedding"}],
                 noise_ns="svd", ns_dtype="float64")
    g1, g2 = torch.randn(5, 3, dtype=F64), torch.randn(5, 3, dtype=F64)
    h1, h2 = torch.randn(7, 3, dtype=F64), torch.randn(7, 3, dtype=F64)
    w.grad, e.grad = g1, h1
    opt.step()
    assert [r["noise"] for r in opt.layer_stats()] == [None, None]
    w.grad, e.grad = g2, h2
    opt.step()
    stats = opt.layer_stats()
    nuclear = torch.linalg.matrix_norm(g2 - g1, ord="nuc").item()
    assert stats[0]["noise"] == pytest.approx(math.sqrt(5 / 3) * nuclear, rel=1e-6)  # rms_to_rms scale
    assert stats[1]["noise"] == pytest.approx((h2 - h1).abs().sum().item(), rel=1e-6)  # l1, scale 1


def test_second_gradient_option():
    w = torch.zeros(4, 4, requires_grad=True)
    b = torch.zeros(4, requires_grad=True)
    opt = LANTON([{"params": [w], "role": "hidden"}, {"params": [b], "role": "vector"}], noise_source="second")
    initial = copy.deepcopy(opt.state_dict())
    w.grad, b.grad = torch.randn(4, 4), torch.randn(4)
    with pytest.raises(ValueError, match="noise_source='second' but step\\(\\) got no second gradient"):
        opt.step()
    assert torch.equal(w, torch.zeros(4, 4))  # nothing was modified
    assert str(opt.state_dict()) == str(initial)
    w2, b2 = torch.randn(4, 4), torch.randn(4)
    opt.step(second_grads={w: w2, b: b2})
    stats = opt.layer_stats()
    assert stats[1]["noise"] == pytest.approx((b.grad - b2).abs().sum().item(), rel=1e-6)
    assert stats[0]["noise"] is not None
    opt.step(second_grads=[w2, b2])  # the sequence form, in param-group order
    with pytest.raises(ValueError, match="second_grads has 1 tensors but the optimizer has 2 parameters"):
        opt.step(second_grads=[w2])
    with pytest.raises(ValueError, match="has shape \\(3,\\), expected \\(4,\\)"):
        opt.step(second_grads={w: w2, b: torch.zeros(3)})


def test_noise_flag_on_muon_scion_normuon():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 10))
    for preset in ("muon", "scion", "normuon"):
        opt = steepest.for_model(model, preset, noise_adaptive=True)
        active = {g["role"]: opt._noise_active(g) for g in opt.param_groups}
        if preset == "scion":
            assert all(active.values())
        else:  # the AdamW fallback groups have no LMO, hence no dual-norm noise
            assert active == {"embedding": False, "head": False, "hidden": True, "vector": False}
        assert "noise(previous, min_ratio" in steepest.explain(opt)
        assert not any(g["noise_adaptive"] for g in steepest.for_model(model, preset).param_groups)


def test_custom_rule_by_overriding_layer_rule():
    class Halving(LANTON):
        def layer_rule(self, group, stds):
            return [0.5] * len(stds)

    params, _ = _two_layer_setup(True)
    opt = Halving([{"params": params[:2], "role": "hidden"}], lr=0.05)
    for _ in range(2):
        params[0].grad, params[1].grad = torch.randn(6, 4, dtype=F64), torch.randn(6, 4, dtype=F64)
        opt.step()
    assert [r["factor"] for r in opt.layer_stats()] == [0.5, 0.5]
