"""LANTON's noise-adaptive layerwise rates (arXiv 2510.14009; reconstruction, see steepest.optim.noise)."""
import copy
import math

import pytest
import torch

import steepest
from steepest.optim import LANTON
from steepest.optim.noise import layer_factors, noise_stds, nuclear_norm_estimate
from steepest.optim.noise_rates import noise_active

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
RULES = [("min_ratio", 0.0), ("sqrt_ratio", 0.0), ("alpha_sqrt", 0.3), ("alpha_sqrt", 0.0), ("gmean_ratio", 0.0)]


@pytest.mark.parametrize("rule,alpha", RULES)
def test_rule_is_exactly_one_for_equal_noise_and_decreasing_in_noise(rule, alpha):
    assert layer_factors([0.3, 0.3, 0.3], rule, alpha) == [1.0, 1.0, 1.0]
    assert layer_factors([0.0, 0.0], rule, alpha) == [1.0, 1.0]
    stds = [0.5, 2.0, 1.0, 4.0]
    factors = layer_factors(stds, rule, alpha)
    order = sorted(range(4), key=lambda i: stds[i])
    assert all(factors[a] > factors[b] for a, b in zip(order, order[1:])), "noisier must mean smaller"
    if rule == "min_ratio":
        assert max(factors) == 1.0 and factors == pytest.approx([1.0, 0.25, 0.5, 0.125])
    elif rule == "gmean_ratio":
        assert math.prod(factors) == pytest.approx(1.0)
    else:  # sqrt_ratio, alpha_sqrt: the least noisy layer runs at the base lr, the others slower
        assert max(factors) == 1.0 and all(0 < f <= 1 for f in factors)


def test_rule_values_by_hand():
    """sqrt_ratio = sqrt(s_min / s); alpha_sqrt = ((alpha^2 + s_min^2) / (alpha^2 + s^2))^(1/4), i.e.
    sqrt(a_l / max_j a_j) with a_l = alpha / sqrt(alpha^2 + H_l) and H = s^2."""
    assert layer_factors([1.0, 2.0, 4.0], "sqrt_ratio") == pytest.approx([1.0, 0.7071067811865476, 0.5], abs=1e-15)
    # alpha = 2: (5/5)^(1/4), (5/8)^(1/4), (5/20)^(1/4)
    assert layer_factors([1.0, 2.0, 4.0], "alpha_sqrt", 2.0) == pytest.approx(
        [1.0, 0.8891397050194614, 0.7071067811865476], abs=1e-15)
    # alpha = 0.3, stds 1 and 2: ((0.09 + 1) / (0.09 + 4))^(1/4)
    assert layer_factors([1.0, 2.0], "alpha_sqrt", 0.3) == pytest.approx([1.0, 0.718498386976239], abs=1e-15)
    # the limits: alpha -> 0 is sqrt_ratio, alpha -> infinity is the base (every factor -> 1)
    assert layer_factors([1.0, 3.0, 9.0], "alpha_sqrt", 0.0) == pytest.approx(layer_factors([1.0, 3.0, 9.0],
                                                                                            "sqrt_ratio"), abs=1e-15)
    assert layer_factors([1.0, 3.0, 9.0], "alpha_sqrt", 1e6) == pytest.approx([1.0, 1.0, 1.0], abs=1e-10)
    # each step of the alpha_sqrt factors lies between sqrt_ratio's and 1
    for alpha in (0.1, 1.0, 10.0):
        for f, lo in zip(layer_factors([1.0, 3.0, 9.0], "alpha_sqrt", alpha), layer_factors([1.0, 3.0, 9.0],
                                                                                          "sqrt_ratio")):
            assert lo <= f <= 1.0


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


@pytest.mark.parametrize("rule,alpha,every", [("min_ratio", 0.0, 1), ("sqrt_ratio", 0.0, 1), ("alpha_sqrt", 0.3, 1),
                                              ("alpha_sqrt", 0.3, 3), ("gmean_ratio", 0.0, 2)])
def test_equal_noise_reduces_exactly_to_the_base_optimizer(rule, alpha, every):
    """w2's gradient is always -w1's: both layers have the same dual-norm noise at every step, so
    every factor is exactly 1 and LANTON equals its base (noise_adaptive=False) bit for bit."""
    params_a, opt_a = _two_layer_setup(True, noise_rule=rule, noise_alpha=alpha, noise_every=every)
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
    params, opt = _two_layer_setup(True, ns="svd", ns_dtype="float64", noise_rule="min_ratio", noise_every=1)
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
    torch.manual_seed(30)
    w = torch.zeros(5, 3, dtype=F64, requires_grad=True)
    e = torch.zeros(7, 3, dtype=F64, requires_grad=True)
    opt = LANTON([{"params": [("w", w)], "role": "hidden"}, {"params": [("e", e)], "role": "embedding"}],
                 noise_ns="svd", ns_dtype="float64", noise_every=1)
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
    torch.manual_seed(31)
    w = torch.zeros(4, 4, requires_grad=True)
    b = torch.zeros(4, requires_grad=True)
    opt = LANTON([{"params": [w], "role": "hidden"}, {"params": [b], "role": "vector"}], noise_source="second",
                 noise_every=1)
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
    torch.manual_seed(32)
    model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 10))
    for preset in ("muon", "scion", "normuon"):
        opt = steepest.for_model(model, preset, noise_adaptive=True)
        active = {g["role"]: noise_active(g) for g in opt.param_groups}
        if preset == "scion":
            assert all(active.values())
        else:  # the AdamW fallback groups have no LMO, hence no dual-norm noise
            assert active == {"embedding": False, "head": False, "hidden": True, "vector": False}
        assert "noise(previous, alpha_sqrt(alpha=0.3), beta=0.9, every 10 steps)" in steepest.explain(opt)
        assert not any(g["noise_adaptive"] for g in steepest.for_model(model, preset).param_groups)


def test_custom_rule_by_overriding_layer_rule():
    torch.manual_seed(33)
    class Halving(LANTON):
        def layer_rule(self, group, stds):
            return [0.5] * len(stds)

    params, _ = _two_layer_setup(True)
    opt = Halving([{"params": params[:2], "role": "hidden"}], lr=0.05, noise_every=1)
    for _ in range(2):
        params[0].grad, params[1].grad = torch.randn(6, 4, dtype=F64), torch.randn(6, 4, dtype=F64)
        opt.step()
    assert [r["factor"] for r in opt.layer_stats()] == [0.5, 0.5]


# -- noise_every: measure every k-th step --------------------------------------------------------
def _counting_dual_norms(monkeypatch):
    from steepest.optim import noise_rates as engine

    calls = []
    real = engine.dual_norms

    def counted(geometry, deltas, ns, ns_dtype="auto"):
        calls.append(len(deltas))
        return real(geometry, deltas, ns, ns_dtype)

    monkeypatch.setattr(engine, "dual_norms", counted)
    return calls


@pytest.mark.parametrize("every", [1, 3, 4])
def test_noise_every_measures_at_every_kth_step_only(every, monkeypatch):
    """The dual norms run at steps k, 2k, ... only (the estimator's cost divided by k); with
    noise_source='previous' each measurement is the difference of two consecutive gradients."""
    calls = _counting_dual_norms(monkeypatch)
    w = torch.zeros(5, 3, dtype=F64, requires_grad=True)
    opt = LANTON([{"params": [("w", w)], "role": "hidden"}], noise_ns="svd", ns_dtype="float64", noise_every=every,
                 noise_beta=0.0)
    gen = torch.Generator().manual_seed(11)
    grads = [torch.randn(5, 3, generator=gen, dtype=F64) for _ in range(12)]
    counts = []
    for t, g in enumerate(grads, start=1):
        w.grad = g.clone()
        opt.step()
        counts.append(int(opt.state[w]["noise_count"]))
        if t % every == 0 and t > 1:  # noise_beta=0: the estimate is the last measurement alone
            nuclear = torch.linalg.matrix_norm(grads[t - 1] - grads[t - 2], ord="nuc").item()
            assert opt.layer_stats()[0]["noise"] == pytest.approx(math.sqrt(5 / 3) * nuclear, rel=1e-9)
    expected = [sum(1 for s in range(2, t + 1) if s % every == 0) for t in range(1, 13)]
    assert counts == expected
    assert len(calls) == expected[-1] and int(opt.state[w]["noise_step"]) == 12


def test_noise_every_holds_the_factors_between_measurements():
    params, opt = _two_layer_setup(True, ns="svd", ns_dtype="float64", noise_every=4)
    gen = torch.Generator().manual_seed(12)
    seen = []
    for t in range(1, 13):
        params[0].grad = 0.1 * torch.randn(6, 4, generator=gen, dtype=F64)
        params[1].grad = (1.0 + t) * torch.randn(6, 4, generator=gen, dtype=F64)
        params[2].grad = torch.randn(10, 4, generator=gen, dtype=F64)
        opt.step()
        seen.append(opt.layer_stats()[1]["factor"])
    # layer_stats() after step t gives the factor of step t + 1: the first estimate comes at step 4
    assert seen[:3] == [1.0] * 3
    assert len(set(seen[3:7])) == 1 and len(set(seen[7:11])) == 1 and seen[3] != seen[7] != seen[11]
    assert seen[3] < 1.0


def test_noise_beta_is_per_step_whatever_noise_every():
    """Each measurement enters the EMA with weight 1 - beta**k (and the bias correction uses beta**k)."""
    w = torch.zeros(4, 4, dtype=F64, requires_grad=True)
    opt = LANTON([{"params": [w], "role": "hidden"}], noise_ns="svd", ns_dtype="float64", noise_every=2,
                 noise_beta=0.8)
    gen = torch.Generator().manual_seed(13)
    grads = [torch.randn(4, 4, generator=gen, dtype=F64) for _ in range(4)]
    for g in grads:
        w.grad = g.clone()
        opt.step()
    d1 = 1.0 * torch.linalg.matrix_norm(grads[1] - grads[0], ord="nuc").item()  # square: shape factor 1
    d2 = 1.0 * torch.linalg.matrix_norm(grads[3] - grads[2], ord="nuc").item()
    b = 0.8 ** 2
    h = (b * (1 - b) * d1 ** 2 + (1 - b) * d2 ** 2) / (1 - b ** 2)
    assert opt.layer_stats()[0]["noise"] == pytest.approx(math.sqrt(h), rel=1e-12)


def test_second_gradients_are_needed_only_at_measuring_steps():
    torch.manual_seed(34)
    w = torch.zeros(4, 4, requires_grad=True)
    opt = LANTON([{"params": [w], "role": "hidden"}], noise_source="second", noise_every=3)
    needed = []
    for t in range(1, 8):
        needed.append(opt.needs_second_grads())
        w.grad = torch.randn(4, 4)
        if needed[-1]:
            with pytest.raises(ValueError, match="got no second gradient"):
                opt.step()
            opt.step(second_grads={w: torch.randn(4, 4)})
        else:
            opt.step()  # no second gradient needed: none is checked
    assert needed == [False, False, True, False, False, True, False]
    assert int(opt.state[w]["noise_count"]) == 2
    assert not LANTON([torch.zeros(2, 2, requires_grad=True)]).needs_second_grads()  # noise_source="previous"


@pytest.mark.parametrize("source", ["previous", "second"])
def test_state_dict_round_trip_with_new_rules_and_noise_every(source):
    """Save after 5 steps (between two measurements of noise_every=3), load into a fresh optimizer,
    and continue: parameters, every state tensor and the factors equal the uninterrupted run's."""
    def run(steps, opt, params, gen):
        for _ in range(steps):
            grads = [torch.randn(p.shape, generator=gen, dtype=F64) for p in params]
            for p, g in zip(params, grads):
                p.grad = g
            second = {p: torch.randn(p.shape, generator=gen, dtype=F64) for p in params}
            opt.step(second_grads=second if source == "second" else None)

    kwargs = dict(noise_rule="alpha_sqrt", noise_alpha=0.7, noise_every=3, noise_source=source)
    params_a, opt_a = _two_layer_setup(True, **kwargs)
    gen_a = torch.Generator().manual_seed(21)
    run(5, opt_a, params_a, gen_a)
    saved = copy.deepcopy(opt_a.state_dict())
    params_b, opt_b = _two_layer_setup(True, **kwargs)
    with torch.no_grad():
        for a, b in zip(params_a, params_b):
            b.copy_(a)
    opt_b.load_state_dict(saved)
    assert [g["noise_alpha"] for g in opt_b.param_groups] == [0.7, 0.7]
    assert [g["noise_every"] for g in opt_b.param_groups] == [3, 3]
    assert opt_b.layer_stats() == opt_a.layer_stats()
    gen_b = torch.Generator().manual_seed(0)
    gen_b.set_state(gen_a.get_state())
    run(5, opt_a, params_a, gen_a)
    run(5, opt_b, params_b, gen_b)
    for a, b in zip(params_a, params_b):
        assert torch.equal(a, b)
    for a, b in zip(params_a, params_b):
        sa, sb = opt_a.state[a], opt_b.state[b]
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key
    assert opt_b.layer_stats() == opt_a.layer_stats()


def test_state_saved_before_noise_step_existed_continues_the_schedule():
    """A 0.7 state dict has no noise_step: it is rebuilt from the counts (measurements + the first
    kept gradient), so a 0.7 run (measuring every step) continues exactly."""
    params_a, opt_a = _two_layer_setup(True, noise_every=1)
    gen = torch.Generator().manual_seed(31)
    for _ in range(4):
        for p in params_a:
            p.grad = torch.randn(p.shape, generator=gen, dtype=F64)
        opt_a.step()
    old = copy.deepcopy(opt_a.state_dict())
    for state in old["state"].values():
        assert int(state.pop("noise_step")) == 4
    params_b, opt_b = _two_layer_setup(True, noise_every=1)
    with torch.no_grad():
        for a, b in zip(params_a, params_b):
            b.copy_(a)
    opt_b.load_state_dict(old)
    assert [int(opt_b.state[p]["noise_step"]) for p in params_b] == [4, 4, 4]
    assert all(opt_b.state[p]["noise_step"].device.type == "cpu" for p in params_b)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=gen, dtype=F64) for p in params_a]
        for pa, pb, g in zip(params_a, params_b, grads):
            pa.grad, pb.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    for a, b in zip(params_a, params_b):
        assert torch.equal(a, b)


def test_factor_cache_follows_changed_settings():
    """The factors are cached between measurements, but a changed rule or alpha applies at once."""
    params, opt = _two_layer_setup(True, ns="svd", ns_dtype="float64", noise_every=100, noise_rule="min_ratio")
    gen = torch.Generator().manual_seed(41)
    for t in range(2):
        params[0].grad = 0.1 * torch.randn(6, 4, generator=gen, dtype=F64)
        params[1].grad = 3.0 * torch.randn(6, 4, generator=gen, dtype=F64)
        params[2].grad = torch.randn(10, 4, generator=gen, dtype=F64)
        opt.step()
    assert [r["noise"] for r in opt.layer_stats()] == [None, None, None]
    opt.param_groups[0]["noise_every"] = 1  # keep the gradient at the next step, measure at the one after
    for t in range(2):
        params[0].grad = 0.1 * torch.randn(6, 4, generator=gen, dtype=F64)
        params[1].grad = 3.0 * torch.randn(6, 4, generator=gen, dtype=F64)
        params[2].grad = torch.randn(10, 4, generator=gen, dtype=F64)
        opt.step()
    noise_sq = [r["noise"] ** 2 for r in opt.layer_stats()[:2]]
    stds = noise_stds(noise_sq, 1e-6)  # with the default relative floor noise_eps
    assert opt.layer_stats()[1]["factor"] == pytest.approx(stds[0] / stds[1], rel=1e-6)  # min_ratio
    opt.param_groups[0]["noise_rule"] = "alpha_sqrt"
    opt.param_groups[0]["noise_alpha"] = 2.0
    want = ((4 + stds[0] ** 2) / (4 + stds[1] ** 2)) ** 0.25
    assert opt.layer_stats()[1]["factor"] == pytest.approx(want, rel=1e-6)
    opt.param_groups[0]["noise_alpha"] = 0.5  # alpha alone
    want = ((0.25 + stds[0] ** 2) / (0.25 + stds[1] ** 2)) ** 0.25
    assert opt.layer_stats()[1]["factor"] == pytest.approx(want, rel=1e-6)
    opt.param_groups[0]["noise_eps"] = 0.5  # the floor alone
    assert opt.layer_stats()[1]["factor"] == pytest.approx(layer_factors(
        noise_stds(noise_sq, 0.5), "alpha_sqrt", 0.5)[1], rel=1e-6)


def test_explain_names_the_rule_alpha_and_interval():
    torch.manual_seed(35)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    text = steepest.explain(steepest.for_model(model, "lanton", noise_rule="alpha_sqrt", noise_alpha=0.25,
                                               noise_every=7))
    assert "noise(previous, alpha_sqrt(alpha=0.25), beta=0.9, every 7 steps)" in text


def test_defaults_are_the_studys_choice():
    """The LANTON study (steepest bench lanton, docs/algorithms/lanton.md) chose these defaults;
    Muon, Scion and NorMuon's noise_adaptive=True share the noise ones."""
    import inspect

    for cls in (LANTON, steepest.Muon, steepest.Scion, steepest.NorMuon):
        params = inspect.signature(cls.__init__).parameters
        assert (params["noise_rule"].default, params["noise_alpha"].default, params["noise_every"].default,
                params["noise_beta"].default, params["noise_source"].default) == ("alpha_sqrt", 0.3, 10, 0.9,
                                                                                  "previous"), cls
    assert inspect.signature(LANTON.__init__).parameters["lr"].default == 0.02  # the defaults study's choice
