"""AuON and HybridAuON: the cosh brake's properties, whole steps against a from-the-formulas
reference, zero gradients and the AdamW fallback."""
import copy
import math
import pickle

import pytest
import torch
from torch import nn

import steepest
import steepest.optim.auon as auon_mod
from steepest.optim.auon import AuON, HybridAuON, cosh_brakes, cosh_excess, cosh_rms

KELLER = (3.4445, -4.7750, 2.0315)
CLASSES = [AuON, HybridAuON]


def _hidden(cls, w, **kwargs):
    """``cls`` over one float64 matrix parameter (role hidden); NS in float64 for the hybrid."""
    if cls is HybridAuON:
        kwargs.setdefault("ns_dtype", "float64")
    return cls([{"params": [w], "role": "hidden"}], **kwargs)


def _run(cls, w0, grads, **kwargs):
    """Displacement ``W_T - W_0`` after feeding ``grads`` (and the directions the brake saw)."""
    w = w0.clone().requires_grad_()
    opt = _hidden(cls, w, **kwargs)
    for g in grads:
        w.grad = g.clone()
        opt.step()
    return (w.detach() - w0)


def _assert_close(actual, expected, rtol, atol=0.0):
    """|actual - expected| <= atol + rtol |expected| entrywise (the first torch.testing.assert_close
    call of a process imports torch.distributed: ~1 s, a third of this file's budget)."""
    err = (actual - expected).abs() - (atol + rtol * expected.abs())
    assert err.max().item() <= 0, f"max |diff| {(actual - expected).abs().max().item():.3g}"


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# -- the transform -----------------------------------------------------------------------------
@pytest.mark.parametrize("cls", CLASSES)
def test_brake_sees_unit_frobenius_direction_and_step_is_scale_invariant(cls, monkeypatch):
    seen = []
    real = auon_mod.cosh_brakes

    def recording(directions):
        seen.extend(d.clone() for d in directions)
        return real(directions)

    monkeypatch.setattr(auon_mod, "cosh_brakes", recording)
    w0 = _randn(6, 4)
    grads = [_randn(6, 4, seed=s) for s in range(1, 4)]
    base = _run(cls, w0, grads, lr=0.1, momentum=0.9)
    if cls is AuON:  # stage 2 is the Frobenius LMO: what the brake gets is exactly unit-Frobenius
        assert len(seen) == 3
        for d in seen:
            assert torch.linalg.vector_norm(d).item() == pytest.approx(1.0, abs=1e-12)
    # per step, ||update||_F = lr * sqrt(6/4) / (r + 1e-8) whatever the gradient's scale
    assert torch.linalg.vector_norm(base).item() > 0
    for c in (1e-4, 3.0, 1e4):
        scaled = _run(cls, w0, [c * g for g in grads], lr=0.1, momentum=0.9)
        _assert_close(scaled, base, rtol=1e-10, atol=1e-12)


def test_cosh_brake_on_concentrated_matrix_matches_closed_form():
    """One dominant entry: r is clearly above 1, and the step is lr * sqrt(m/n) * X / (r + 1e-8)."""
    g = torch.tensor([[5.0, 0.1], [-0.2, 0.05], [0.3, -0.1]], dtype=torch.float64)  # 3 x 2: tall
    norm = math.sqrt(sum(v * v for v in g.flatten().tolist()))
    x = [v / norm for v in g.flatten().tolist()]
    r = math.sqrt(sum(math.cosh(v) ** 2 for v in x) / len(x))
    assert r > 1.08  # cosh(0.99)^2 = 2.35 in one of six entries
    assert cosh_rms(g) == pytest.approx(r, rel=1e-14)
    lr = 0.3
    step = -_run(AuON, torch.zeros(3, 2, dtype=torch.float64), [g], lr=lr, momentum=0.0)
    expected = lr * math.sqrt(3 / 2) * torch.tensor(x, dtype=torch.float64).reshape(3, 2) / (r + 1e-8)
    _assert_close(step, expected, rtol=1e-12)
    # the brake is what made the difference: without it the step would be 10% longer
    assert torch.linalg.vector_norm(step).item() < 0.95 * lr * math.sqrt(3 / 2)
    # signs and ratios of X are preserved: the step is a positive multiple of g, entry by entry
    ratio = step / g
    assert (ratio > 0).all()
    _assert_close(ratio, torch.full_like(ratio, ratio[0, 0].item()), rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cosh_brake_is_inactive_on_large_dense_gaussian(dtype):
    """Every entry of a unit-Frobenius X is O(1/sqrt(N)), so r^2 = 1 + mean sinh(X_i)^2 =
    1 + mean X_i^2 + O(mean X_i^4) = 1 + 1/N + O(1/N^2): r is 1 to within ~1/(2N) (4e-6 here)."""
    m, n = 256, 512
    g = _randn(m, n, seed=7).to(dtype)
    r = cosh_rms(g)
    assert 0 < r - 1 < 1e-3
    assert r == pytest.approx(math.sqrt(1 + 1 / (m * n)), abs=1e-9)
    # the excess r^2 - 1 = 1/N is resolved even in float32 (it is computed as mean sinh^2,
    # not as mean cosh^2 - 1, which would drown it in the rounding of N values near 1)
    assert cosh_excess(g).item() == pytest.approx(1 / (m * n), rel=1e-3)


def test_cosh_brakes_of_zero_and_low_precision_directions():
    assert cosh_brakes([torch.zeros(3, 4), torch.zeros(2, 2, dtype=torch.float64)]) == [0.0, 0.0]
    d = torch.tensor([[3.0, 4.0]])
    # ||d|| = 5; X = (0.6, 0.8); r = sqrt((cosh(0.6)^2 + cosh(0.8)^2) / 2)
    r = math.sqrt((math.cosh(0.6) ** 2 + math.cosh(0.8) ** 2) / 2)
    assert cosh_brakes([d])[0] == pytest.approx(1 / (5 * (r + 1e-8)), rel=1e-6)
    assert cosh_brakes([d.bfloat16()])[0] == pytest.approx(1 / (5 * (r + 1e-8)), rel=1e-6)  # 3, 4 exact


# -- whole steps against a straightforward reference ---------------------------------------------
def _keller_step(x):
    """One Keller Newton-Schulz step on ``x`` (already Frobenius-normalized), wide orientation."""
    a, b, c = KELLER
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    A = x @ x.T
    x = a * x + (b * A + c * A @ A) @ x
    return x.T if tall else x


def _reference(w0, grads, lr, mu, nesterov, wd, hybrid):
    """The paper's update from the formulas, one matrix, float64."""
    w = w0.clone()
    m = w.shape[0]
    n = w[0].numel()
    buf = torch.zeros_like(w)
    for g in grads:
        buf = mu * buf + (1 - mu) * g
        d = ((1 - mu) * g + mu * buf if nesterov else buf).reshape(m, n)
        if hybrid:
            x = _keller_step(d / max(d.norm().item(), 1e-7))  # the library's NS input guard
            x = x / x.norm()
        else:
            x = d / (d.norm() + 1e-7)  # the paper's guard; the library's LMO is exact (1e-7/||D|| apart)
        r = torch.sqrt(torch.mean(torch.cosh(x) ** 2))
        u = x / (r + 1e-8)
        w = (1 - lr * wd) * w - lr * math.sqrt(max(1.0, m / n)) * u.reshape(w.shape)
    return w - w0


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("shape", [(8, 16), (24, 8), (6, 2, 3)])
@pytest.mark.parametrize("nesterov", [True, False])
def test_steps_match_reference(cls, shape, nesterov):
    w0 = _randn(*shape, seed=11)
    grads = [_randn(*shape, seed=20 + s) for s in range(4)]
    lr, mu, wd = 0.07, 0.9, 0.1
    ours = _run(cls, w0, grads, lr=lr, momentum=mu, nesterov=nesterov, weight_decay=wd)
    ref = _reference(w0, grads, lr, mu, nesterov, wd, hybrid=cls is HybridAuON)
    assert ((ours - ref).abs().max() / ref.abs().max()).item() < 1e-6


def test_hybrid_differs_from_auon():
    """The single Newton-Schulz step really changes the direction (the reference test above would
    not notice if both classes ran the same code with the same reference)."""
    w0 = _randn(8, 16, seed=3)
    grads = [_randn(8, 16, seed=4)]
    a = _run(AuON, w0, grads, lr=0.1)
    h = _run(HybridAuON, w0, grads, lr=0.1)
    cos = (a * h).sum() / (a.norm() * h.norm())
    assert cos.item() < 0.99
    assert h.norm().item() == pytest.approx(a.norm().item(), rel=1e-3)  # same Frobenius step length


# -- zero gradients, fallback, groups ----------------------------------------------------------
@pytest.mark.parametrize("cls", CLASSES)
def test_zero_gradient_gives_zero_step(cls):
    w = _randn(5, 3, seed=1).requires_grad_()
    before = w.detach().clone()
    opt = _hidden(cls, w, lr=0.1)
    for _ in range(2):
        w.grad = torch.zeros_like(w)
        opt.step()
    assert torch.equal(w.detach(), before)
    assert torch.isfinite(opt.state[w]["momentum_buffer"]).all()


@pytest.mark.parametrize("cls", CLASSES)
def test_fallback_groups_are_plain_adamw(cls):
    gen = torch.Generator().manual_seed(5)
    ref = torch.randn(10, generator=gen).requires_grad_()
    ours = ref.detach().clone().requires_grad_()
    opt_ref = torch.optim.AdamW([ref], lr=3e-3, betas=(0.8, 0.95), eps=1e-8, weight_decay=0.05, foreach=False)
    opt_ours = cls([ours], adamw_lr=3e-3, adamw_betas=(0.8, 0.95), adamw_eps=1e-8, adamw_weight_decay=0.05)
    (group,) = opt_ours.param_groups
    assert (group["role"], group["geometry"], group["transform"], group["cosh_brake"]) == \
        ("vector", "identity", "adam", False)
    for _ in range(5):
        g = torch.randn(10, generator=gen)
        ref.grad, ours.grad = g.clone(), g.clone()
        opt_ref.step()
        opt_ours.step()
    _assert_close(ours.detach(), ref.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_groups_recipes_and_copies(cls, how):
    torch.manual_seed(10)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Conv1d(8, 8, 3))
    opt = cls(model.parameters())
    kinds = {g["role"]: (g["geometry"], g["transform"], g["cosh_brake"]) for g in opt.param_groups}
    matrix = ("frobenius" if cls is AuON else "spectral", "momentum", True)
    assert kinds == {"hidden": matrix, "conv": matrix, "vector": ("identity", "adam", False)}
    if cls is HybridAuON:
        hidden = next(g for g in opt.param_groups if g["role"] == "hidden")
        assert (hidden["ns"], hidden["ns_steps"], hidden["shape_scale"]) == ("keller", 1, "original")
    clone = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    clone.add_param_group({"params": [torch.zeros(6, 4, requires_grad=True)], "role": "embedding"})
    clone.add_param_group({"params": [torch.zeros(6, 4, requires_grad=True)], "role": "hidden"})
    assert [g["cosh_brake"] for g in clone.param_groups[-2:]] == [False, True]
    table = steepest.explain(opt)
    assert table.count("+ cosh brake") == 2  # the two matrices, not the four vectors
