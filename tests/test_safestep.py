"""SafeStep and the softmax radii of "Ghosts of Softmax" (arXiv 2603.13552)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import steepest
from steepest.safestep import SafeStep, binary_radius, logit_spread, softmax_radius


# ------------------------------------------------------------------------------------------------
# The radii against numerically found complex zeros of the partition function
# ------------------------------------------------------------------------------------------------
def _newton_zeros(z, a, box=8.0, n=41, iters=60):
    """Zeros of F(t) = sum_k exp(z_k + t a_k) found by complex Newton from an n x n grid of starts."""
    z = np.asarray(z, dtype=np.float64)
    a = np.asarray(a, dtype=np.float64)
    g = np.linspace(-box, box, n)
    t = (g[:, None] + 1j * g[None, :]).ravel()
    for _ in range(iters):
        e = np.exp(z[None, :] + t[:, None] * a[None, :])
        f, df = e.sum(1), (e * a[None, :]).sum(1)
        with np.errstate(all="ignore"):
            t = t - f / df
        t = np.where(np.isfinite(t), t, 0.0)
        t = np.clip(t.real, -4 * box, 4 * box) + 1j * np.clip(t.imag, -4 * box, 4 * box)
    e = np.exp(z[None, :] + t[:, None] * a[None, :])
    rel = np.abs(e.sum(1)) / np.abs(e).sum(1)
    return t[rel < 1e-12]


@pytest.mark.parametrize("z1,z2,a1,a2", [(0.0, 0.0, 1.0, -1.0), (1.5, -0.3, 2.0, 0.5), (-2.0, 1.0, -0.7, 1.3),
                                         (3.0, 0.0, 4.0, 1.0), (0.2, 0.1, 0.9, 0.1)])
def test_binary_radius_is_the_nearest_complex_zero(z1, z2, a1, a2):
    zeros = _newton_zeros([z1, z2], [a1, a2])
    assert zeros.size > 0
    nearest = np.abs(zeros).min()
    expected = binary_radius(z1 - z2, a1, a2)
    assert abs(nearest - expected) <= 1e-6 * expected
    # The formula's zero itself: t = (-delta + i pi) / (a1 - a2) makes F vanish.
    t0 = (-(z1 - z2) + 1j * math.pi) / (a1 - a2)
    assert abs(np.exp(z1 + t0 * a1) + np.exp(z2 + t0 * a2)) < 1e-9 * (abs(np.exp(z1 + t0 * a1)) + 1)
    # Tensor form agrees, and the multiclass bound is exact at delta = 0 and below it otherwise.
    assert torch.allclose(binary_radius(torch.tensor(z1 - z2), torch.tensor(a1), torch.tensor(a2)),
                          torch.tensor(expected, dtype=torch.float32))
    rho_a = float(softmax_radius(torch.tensor([a1, a2], dtype=torch.float64)))
    assert rho_a <= expected + 1e-12
    if z1 == z2:
        assert rho_a == pytest.approx(expected, rel=1e-12)


def test_multiclass_bound_below_every_zero_integer_slopes():
    # With integer slopes a_k in {0..4}, F(t) = sum_k c_k w^{a_k} is a polynomial in w = e^t: every zero
    # is t = log w_j + 2 pi i m, and the nearest one has modulus min_j |Log w_j| (principal log).
    gen = np.random.default_rng(0)
    tight = []
    for trial in range(200):
        K = int(gen.integers(3, 5))
        a = gen.integers(0, 5, size=K)
        if a.max() == a.min():
            continue
        z = gen.normal(scale=2.0, size=K)
        coeffs = np.zeros(a.max() + 1)
        for k in range(K):
            coeffs[a[k]] += np.exp(z[k])
        w = np.roots(coeffs[::-1])
        w = w[np.abs(w) > 0]
        nearest = np.abs(np.log(w.astype(np.complex128))).min()
        rho_a = float(softmax_radius(torch.tensor(a, dtype=torch.float64)))
        assert rho_a <= nearest + 1e-9, (a, z)
        tight.append(rho_a / nearest)
    assert max(tight) > 0.9  # the bound is not vacuous: it comes close on some examples


def test_multiclass_bound_below_every_zero_real_slopes():
    gen = np.random.default_rng(1)
    found = 0
    for trial in range(12):
        K = 3 + trial % 2
        a = gen.normal(size=K) * 1.5
        z = gen.normal(size=K)
        zeros = _newton_zeros(z, a, box=6.0, n=25, iters=50)
        rho_a = float(softmax_radius(torch.tensor(a, dtype=torch.float64)))
        if zeros.size:
            found += 1
            assert np.abs(zeros).min() >= rho_a - 1e-9
            # the argument: every zero has |Im t| >= pi / spread
            assert np.abs(zeros.imag).min() >= rho_a - 1e-9
    assert found >= 10


def test_softmax_radius_takes_the_worst_row_over_all_leading_axes():
    a = torch.randn(4, 7, 11, generator=torch.Generator().manual_seed(0))
    spread = (a.amax(-1) - a.amin(-1))
    assert torch.equal(logit_spread(a), spread)
    assert float(softmax_radius(a)) == pytest.approx(math.pi / float(spread.max()), rel=1e-6)
    assert float(softmax_radius(torch.zeros(3, 5))) == pytest.approx(math.pi / 1e-12)


# ------------------------------------------------------------------------------------------------
# The learning-rate spike (the paper's MLP-on-digits experiment, full batch, Adam)
# ------------------------------------------------------------------------------------------------
def _digits():
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    return X[:1437], y[:1437], X[-360:], y[-360:]


def _spike_run(safe, S=50, k=3, steps=80, base_lr=1e-3, spike=1000.0):
    Xtr, ytr, _, _ = _digits()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=base_lr)
    wrapper = SafeStep(opt, model, r_target=1.0, mode="cap") if safe else None
    losses = []
    for t in range(steps):
        for group in opt.param_groups:
            group["lr"] = base_lr * (spike if S <= t < S + k else 1.0)
        opt.zero_grad()
        F.cross_entropy(model(Xtr), ytr).backward()
        if wrapper is not None:
            wrapper.step(Xtr)
        else:
            opt.step()
        with torch.no_grad():
            losses.append(F.cross_entropy(model(Xtr), ytr).item())  # training loss after step t
    return losses, wrapper


def test_lr_spike_diverges_without_and_recovers_with_safestep():
    # Measured (torch 2.13 CPU, seed 0; 1000x spike at steps 50-52, base lr 1e-3, full batch):
    #   pre-spike loss (after step 49) 1.198 for both runs.
    #   plain Adam:   1127, 12385, 1514 during the spike, still 1203 after step 79 (diverged, ~1000x).
    #   with SafeStep: 0.780, 0.565, 0.443 during the spike (r_raw 78-127, scaled by 0.008-0.013),
    #                  0.238 after step 79; it never rises above the pre-spike loss (0 recovery steps).
    S, k = 50, 3
    plain, _ = _spike_run(False, S, k)
    safe, wrapper = _spike_run(True, S, k)
    pre = plain[S - 1]
    assert safe[S - 1] == pytest.approx(pre, rel=1e-4)  # no capping before the spike: same trajectory
    assert not (plain[S + k - 1] < 3 * pre)             # exploded (or went non-finite)
    assert not (plain[-1] < 3 * pre)                    # and did not come back in 27 steps
    assert all(math.isfinite(v) for v in safe)
    assert max(safe[S:]) < 2 * pre                      # no explosion at all
    recovery = next(i for i in range(S, len(safe)) if safe[i] < pre) - (S + k - 1)
    assert recovery <= 5                                # measured: below pre already during the spike
    assert safe[-1] < pre
    spiked = list(wrapper.history)[S:S + k]
    assert all(h["scale"] < 0.1 and h["r_raw"] > 10 and h["r"] <= 1.0 + 1e-6 for h in spiked)


# ------------------------------------------------------------------------------------------------
# The wrapper's contract
# ------------------------------------------------------------------------------------------------
def _mlp(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 5))


def _batch(seed=1, n=32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=gen), torch.randint(0, 5, (n,), generator=gen)


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_zero_step_leaves_everything_unchanged():
    model = _mlp()
    x, y = _batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    safe = SafeStep(opt, model)
    before = _flat(model).clone()
    F.cross_entropy(model(x), y).backward()
    safe.step(x)
    assert torch.equal(_flat(model), before)
    assert safe.last["tau"] == 0.0 and safe.last["scale"] == 1.0 and safe.last["cost"] == 0.0
    assert len(safe.history) == 1


@pytest.mark.parametrize("make_opt", [lambda m: torch.optim.Adam(m.parameters(), lr=0.5),
                                      lambda m: torch.optim.SGD(m.parameters(), lr=5.0, momentum=0.9),
                                      lambda m: steepest.for_model(m, "muon", lr=2.0)])
def test_capped_steps_have_normalized_length_at_most_r_target(make_opt):
    model = _mlp()
    x, y = _batch()
    opt = make_opt(model)
    safe = SafeStep(opt, model, r_target=0.5, mode="cap")
    capped = 0
    for _ in range(6):
        old = _flat(model).clone()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        safe.step(x)
        last = safe.last
        moved = float((_flat(model) - old).double().norm())
        assert last["r"] <= 0.5 + 1e-6
        assert moved == pytest.approx(last["r"] * last["rho"], rel=1e-4)  # r is the step actually taken
        capped += last["scale"] < 1.0
    assert capped >= 1


def test_set_mode_always_scales_to_r_target():
    model = _mlp()
    x, y = _batch()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    safe = SafeStep(opt, model, r_target=0.3, mode="set")
    for _ in range(3):
        old = _flat(model).clone()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        safe.step(x)
        assert safe.last["r"] == pytest.approx(0.3, rel=1e-9)
        assert float((_flat(model) - old).double().norm()) == pytest.approx(0.3 * safe.last["rho"], rel=1e-4)
        assert safe.last["scale"] > 1.0  # a tiny lr gets stretched


def test_scale_equals_a_step_with_scaled_lr_for_sgd():
    model, twin = _mlp(), _mlp()
    x, y = _batch()
    safe = SafeStep(torch.optim.SGD(model.parameters(), lr=10.0), model, r_target=0.2)
    F.cross_entropy(model(x), y).backward()
    safe.step(x)
    s = safe.last["scale"]
    assert s < 1.0
    F.cross_entropy(twin(x), y).backward()
    # rho was taken at theta_old (= twin, not yet stepped) along Delta = -lr g: check by finite differences.
    delta = {n: -10.0 * p.grad for n, p in twin.named_parameters()}
    tau = math.sqrt(sum(float(d.double().pow(2).sum()) for d in delta.values()))
    assert tau == pytest.approx(safe.last["tau"], rel=1e-5)
    eps = 1e-3
    with torch.no_grad():
        def at(sign):
            return torch.func.functional_call(twin, {n: p + sign * eps * delta[n] / tau
                                                     for n, p in twin.named_parameters()}, (x,))
        fd = (at(1) - at(-1)).double() / (2 * eps)
    assert safe.last["rho"] == pytest.approx(float(softmax_radius(fd)), rel=1e-2)
    torch.optim.SGD(twin.parameters(), lr=10.0 * s).step()
    assert torch.allclose(_flat(model), _flat(twin), atol=1e-6)


def test_uncapped_wrapper_matches_plain_optimizer_with_param_groups_and_scheduler():
    def groups(m):
        return [{"params": m[0].parameters(), "lr": 1e-3}, {"params": m[3].parameters(), "lr": 3e-3}]
    model, twin = _mlp(), _mlp()
    x, y = _batch()
    opt, opt2 = torch.optim.Adam(groups(model)), torch.optim.Adam(groups(twin))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=2, gamma=0.5)
    safe = SafeStep(opt, model, r_target=1.0, history_size=3)
    for _ in range(5):
        for m, o, step in ((model, opt, lambda: safe.step(x)), (twin, opt2, opt2.step)):
            o.zero_grad()
            F.cross_entropy(m(x), y).backward()
            step()
        sched.step()
        sched2.step()
        assert safe.last["r"] < 1.0 and safe.last["scale"] == 1.0
    assert torch.equal(_flat(model), _flat(twin))
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2.5e-4, 7.5e-4])
    assert len(safe.history) == 3  # bounded history keeps the newest records


def test_jvp_spread_matches_finite_differences_and_mode_is_restored():
    model = _mlp(dropout=0.5).double()
    model.train()
    x, _ = _batch()
    x = x.double()
    safe = SafeStep(torch.optim.SGD(model.parameters(), lr=1.0), model)
    gen = torch.Generator().manual_seed(3)
    v = {n: torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in model.named_parameters()}
    norm = math.sqrt(sum(float(t.pow(2).sum()) for t in v.values()))
    v = {n: t / norm for n, t in v.items()}
    rho = safe.radius(x, v)
    assert model.training  # restored
    model.eval()
    eps = 1e-6
    with torch.no_grad():
        plus = torch.func.functional_call(model, {n: p + eps * v[n] for n, p in model.named_parameters()}, (x,))
        minus = torch.func.functional_call(model, {n: p - eps * v[n] for n, p in model.named_parameters()}, (x,))
    fd = (plus - minus) / (2 * eps)
    assert rho == pytest.approx(float(softmax_radius(fd)), rel=1e-6)
    safe.chunk_size = 5  # chunking changes nothing
    assert safe.radius(x, v) == pytest.approx(rho, rel=1e-12)


def test_sequence_model_counts_every_position():
    torch.manual_seed(0)
    head = nn.Linear(8, 7)
    x = torch.randn(3, 4, 8)  # (batch, seq, features) -> logits (batch, seq, vocab)
    safe = SafeStep(torch.optim.SGD(head.parameters(), lr=1.0), head)
    vw, vb = torch.randn(7, 8), torch.randn(7)
    norm = float(torch.cat([vw.reshape(-1), vb]).norm())
    rho = safe.radius(x, {"weight": vw / norm, "bias": vb / norm})
    a = (x @ vw.T + vb) / norm  # logits are linear in the parameters: J v exactly
    assert rho == pytest.approx(math.pi / float((a.amax(-1) - a.amin(-1)).max()), rel=1e-5)


def test_bad_arguments():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    with pytest.raises(ValueError):
        SafeStep(opt, model, mode="clip")
    with pytest.raises(ValueError):
        SafeStep(opt, model, r_target=0.0)
