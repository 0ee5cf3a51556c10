"""Range-safe norms and exact rescaling (steepest.numerics) and the fixes built on them: geometry
norms and LMOs, Newton-Schulz, Adam's RMS state, M-FAC's window products, and the conversion of
state saved by steepest 0.6."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import steepest
from steepest.geometry import ColNorm, Frobenius, RMS, RowNorm
from steepest.numerics import l2_norm, l2_normalize, max_abs, power_of_two_scale
from steepest.optim.fisher_window import block_products
from steepest.polar import polar

pytestmark = pytest.mark.usefixtures("one_thread")

DTYPES = (torch.float32, torch.bfloat16, torch.float64)
#: decades across float32's whole range, subnormals included
SCALES = (1e-44, 1e-38, 1e-30, 1e-20, 1e-10, 1.0, 1e10, 1e20, 1e30, 1e37)


def values(shape, scale, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
    return x.to(dtype)


def reference_norm(x, dim=None):
    """float64 norm, scaled by hand (the float64 squares of float32 numbers never overflow)."""
    return torch.linalg.vector_norm(x.double(), dim=dim)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("dim", [None, 0, 1])
def test_l2_norm_is_accurate_across_the_floating_range(dtype, scale, dim):
    x = values((6, 5), scale, dtype)
    got = l2_norm(x, dim=dim)
    want = reference_norm(x, dim)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert got.shape == want.shape
    # float32 rounding of the result, or a subnormal result's own spacing
    torch.testing.assert_close(got.double(), want, rtol=3e-6, atol=2e-45)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale", SCALES)
def test_l2_normalize_gives_unit_slices_across_the_floating_range(dtype, scale):
    x = values((6, 5), scale, dtype)
    for dim in (None, 0, 1):
        u = l2_normalize(x, dim=dim)
        norms = torch.linalg.vector_norm(u.double(), dim=dim)
        # unit where the slice is nonzero (bfloat16 rounds 1e-44 to 0: a zero slice stays zero)
        want = (torch.linalg.vector_norm(x.double(), dim=dim) > 0).double()
        torch.testing.assert_close(norms, want, rtol=1e-5, atol=0)


def test_l2_normalize_handles_each_slice_on_its_own_scale():
    """Columns 1e40 apart in size each get unit norm (a per-tensor scale would zero the small one)."""
    x = torch.tensor([[1e20, 1e-20, 0.0], [1e20, -1e-20, 0.0]])
    u = l2_normalize(x, dim=0)
    expected = torch.tensor([[1.0, 1.0, 0.0], [1.0, -1.0, 0.0]]) / torch.tensor([math.sqrt(2), math.sqrt(2), 1.0])
    torch.testing.assert_close(u, expected)
    assert torch.equal(u[:, 2], torch.zeros(2))  # a zero column stays exactly zero
    torch.testing.assert_close(l2_norm(x, dim=0), torch.tensor([math.sqrt(2) * 1e20, math.sqrt(2) * 1e-20, 0.0]))


def test_empty_reductions():
    assert l2_norm(torch.zeros(0)).item() == 0
    assert l2_norm(torch.zeros(0, 3), dim=0).shape == (3,)
    assert l2_norm(torch.zeros(0, 3), dim=1, keepdim=True).shape == (0, 1)
    assert max_abs(torch.zeros(0, 3), dim=0).shape == (3,)
    assert l2_normalize(torch.zeros(0, 3), dim=0).shape == (0, 3)


def test_max_abs_matches_abs_amax():
    x = values((7, 4), 1.0, torch.float32, seed=3)
    assert torch.equal(max_abs(x), x.abs().amax())
    assert torch.equal(max_abs(x, dim=1, keepdim=True), x.abs().amax(dim=1, keepdim=True))
    assert torch.equal(max_abs(x, keepdim=True), x.abs().amax().reshape(1, 1))
    stack = values((3, 4, 5), 1.0, torch.float32, seed=4)
    assert torch.equal(max_abs(stack, dim=(-2, -1), keepdim=True), stack.abs().amax(dim=(-2, -1), keepdim=True))
    assert max_abs(torch.zeros(2, 0, 3), dim=(-2, -1), keepdim=True).tolist() == [[[0.0]], [[0.0]]]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale", (1e-44, 1e-30, 1.0, 1e30, 5e37))
def test_power_of_two_scale_is_exact_and_lands_in_half_to_one(dtype, scale):
    x = values((3, 4), scale, dtype)
    if not x.any():
        x = torch.full((3, 4), torch.finfo(dtype).smallest_normal / 64, dtype=dtype)  # bfloat16 subnormal
    s = power_of_two_scale(x)
    mantissa, _ = torch.frexp(s.double())
    assert mantissa.item() == 0.5  # a power of two
    y = x * s
    assert torch.equal(y / s, x)  # exact both ways
    top = y.abs().amax().item()
    if x.abs().amax().item() >= 1 / torch.finfo(dtype).smallest_normal:  # s is the smallest normal power of two
        assert 1.0 <= top < 4.0
    elif x.abs().amax().item() >= torch.finfo(dtype).tiny:
        assert 0.5 <= top < 1.0
    else:  # subnormal input: the largest power of two the dtype holds lifts it into the normal range
        assert top >= torch.finfo(dtype).tiny


def test_power_of_two_scale_per_matrix_and_edge_cases():
    stack = torch.stack([torch.full((2, 2), 1e20), torch.zeros(2, 2), torch.full((2, 2), 3.0)])
    s = power_of_two_scale(stack, dims=(-2, -1))
    assert s.shape == (3, 1, 1)
    assert s.flatten().tolist() == [2.0 ** -67, 1.0, 0.25]
    assert power_of_two_scale(torch.zeros(0, 2, 2), dims=(-2, -1)).shape == (0, 1, 1)
    assert power_of_two_scale(torch.zeros(3)).item() == 1.0


# -- geometries ------------------------------------------------------------------------------------
@pytest.mark.parametrize("geometry", [ColNorm(), RowNorm(), RMS(), Frobenius()], ids=lambda g: g.name)
@pytest.mark.parametrize("scale", (1e-30, 1e-20, 1e20, 1e30))
def test_geometry_norms_and_lmos_at_extreme_scales(geometry, scale):
    """Before 0.7 these returned an infinite dual norm and a zero LMO above ~1e19, and a non-unit
    LMO below ~1e-19, for float32 inputs."""
    x = values((4, 3), scale, torch.float32, seed=5)
    u = geometry.lmo(x)
    dual = geometry.dual_norm(x)
    assert torch.isfinite(dual) and dual > 0
    torch.testing.assert_close((x.double() * u.double()).sum(), dual.double(), rtol=1e-5, atol=0)
    torch.testing.assert_close(geometry.norm(u).double(), torch.tensor(1.0, dtype=torch.float64), rtol=1e-5, atol=0)


# -- Newton-Schulz -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float16), ids=str)
def test_newton_schulz_is_invariant_to_the_gradient_scale(dtype):
    """Power-of-two scalings of the input give the bit-identical polar factor over the whole range,
    float16 iterations included (before 0.7: zero above ~1e19, too short below 1e-7, NaN in
    float16 above 65504)."""
    g = values((6, 9), 1.0, torch.float32, seed=7)
    base = polar(g, "keller", dtype=dtype)
    assert torch.isfinite(base).all()
    for k in (-100, -60, -30, 30, 60, 100):  # every entry stays a normal float32 number
        assert torch.equal(polar(g * 2.0 ** k, "keller", dtype=dtype), base), k


def test_newton_schulz_matches_torch_muon_bit_for_bit():
    """The prescale changes nothing in the normal range: the same step as torch.optim.Muon."""
    gen = torch.Generator().manual_seed(11)
    w0 = torch.randn(16, 24, generator=gen)
    ours, ref = w0.clone().requires_grad_(), w0.clone().requires_grad_()
    opt = steepest.Muon([ours], lr=0.02, momentum=0.95, weight_decay=0.0, adjust_lr="original", ns_dtype="bfloat16")
    opt_ref = torch.optim.Muon([ref], lr=0.02, momentum=0.95, weight_decay=0.0, adjust_lr_fn="original")
    for _ in range(3):
        g = torch.randn(16, 24, generator=gen)
        ours.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        opt_ref.step()
    assert torch.equal(ours, ref)


# -- Adam's second moment --------------------------------------------------------------------------
@pytest.mark.parametrize("magnitude", (1e-30, 1.0, 1e20, 1e30))
def test_adam_state_is_finite_and_matches_float64_adam(magnitude):
    """Adam's RMS state of a float32 parameter stays finite for 1e30 gradients (``v`` in float32
    overflowed at ~1e19) and its steps equal a float64 AdamW's to float32 rounding."""
    gen = torch.Generator().manual_seed(13)
    grads = [torch.randn(5, generator=gen, dtype=torch.float64) * magnitude for _ in range(4)]
    p = nn.Parameter(torch.zeros(5))
    ref = nn.Parameter(torch.zeros(5, dtype=torch.float64))
    opt = steepest.Muon([{"params": [p], "role": "vector"}], adamw_lr=1e-3, adamw_eps=1e-8, adamw_weight_decay=0.0)
    opt_ref = torch.optim.AdamW([ref], lr=1e-3, betas=opt.param_groups[0]["betas"], eps=1e-8, weight_decay=0.0)
    for g in grads:
        p.grad, ref.grad = g.float(), g.clone()
        opt.step()
        opt_ref.step()
    state = opt.state[p]
    assert "exp_avg_sq" not in state
    assert torch.isfinite(state["exp_avg_rms"]).all() and torch.isfinite(p).all()
    torch.testing.assert_close(p.double(), ref.detach(), rtol=2e-5, atol=1e-12)


def test_diffgrad_state_is_finite_for_huge_gradients():
    p = nn.Parameter(torch.zeros(4, 3))
    opt = steepest.DiffGrad([p], lr=1e-3)
    for sign in (1.0, -1.0):
        p.grad = torch.full((4, 3), sign * 1e30)
        opt.step()
    state = opt.state[p]
    assert all(torch.isfinite(v).all() for v in state.values() if isinstance(v, torch.Tensor))
    assert math.isfinite(state["rms_bound"])  # the host-side bound, a float
    assert torch.isfinite(p).all() and p.abs().max() > 0


# -- M-FAC -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("magnitude", (1e-30, 1e-20, 1e20, 1e30))
def test_window_products_do_not_overflow_or_underflow(magnitude):
    gen = torch.Generator().manual_seed(17)
    w = (torch.randn(4, 50, generator=gen, dtype=torch.float64) * magnitude).float()
    x = (torch.randn(50, generator=gen, dtype=torch.float64) * magnitude).float()
    (got,) = block_products([w], [x])
    want = w.double() @ x.double()
    assert got.dtype == torch.float64 and torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)


def test_window_products_equal_plain_products_in_the_normal_range():
    gen = torch.Generator().manual_seed(19)
    w, x = torch.randn(8, 40, generator=gen), torch.randn(40, generator=gen)
    assert torch.equal(block_products([w], [x])[0], torch.mv(w, x).double())


def test_mfac_stays_finite_for_huge_gradients():
    p = nn.Parameter(torch.zeros(6))
    opt = steepest.MFAC([p], ngrads=4)
    gen = torch.Generator().manual_seed(23)
    for _ in range(5):
        p.grad = torch.randn(6, generator=gen) * 1e20
        opt.step()
    assert torch.isfinite(p).all()
    assert all(torch.isfinite(v).all() for v in opt.state[p].values() if isinstance(v, torch.Tensor))
    assert opt.state[p]["gram"].dtype == torch.float64


# -- state saved by 0.6 ----------------------------------------------------------------------------
def _model():
    torch.manual_seed(29)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _train(model, opt, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(5, 6, generator=gen)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()


def _as_saved_by_0_6(state_dict):
    """The layout steepest 0.6 wrote: ``exp_avg_sq = exp_avg_rms ** 2`` and float32 ``noise_sq``/``gram``."""
    old = {"param_groups": state_dict["param_groups"], "state": {}}
    for i, state in state_dict["state"].items():
        state = dict(state)
        if "exp_avg_rms" in state:
            state["exp_avg_sq"] = state.pop("exp_avg_rms").square()
        for key in ("noise_sq", "gram"):
            if key in state:
                state[key] = state[key].float()
        old["state"][i] = state
    return old


@pytest.mark.parametrize("preset", ["muon", "lanton", "diffgrad", "mfac"])
def test_state_saved_by_0_6_loads_into_the_new_layout(preset):
    model = _model()
    opt = steepest.for_model(model, preset)
    _train(model, opt, 3, seed=31)
    saved = _as_saved_by_0_6(copy.deepcopy(opt.state_dict()))  # torch's loader may alias saved tensors
    twin = _model()
    twin.load_state_dict(model.state_dict())
    opt_twin = steepest.for_model(twin, preset)
    opt_twin.load_state_dict(saved)
    for p, q in zip(model.parameters(), twin.parameters()):
        now, loaded = opt.state[p], opt_twin.state[q]
        assert set(loaded) == set(now)
        for key, value in now.items():
            if isinstance(value, torch.Tensor):
                assert loaded[key].dtype == value.dtype, key
                torch.testing.assert_close(loaded[key], value, rtol=1e-6, atol=0)
    _train(model, opt, 2, seed=37)
    _train(twin, opt_twin, 2, seed=37)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7)


# -- Adam's squared second-moment update and its host-side bound ------------------------------------
def _adam_param(eps: float = 1e-8):
    p = nn.Parameter(torch.zeros(64))
    return p, steepest.Muon([{"params": [p], "role": "vector"}], adamw_lr=1e-3, adamw_eps=eps, adamw_weight_decay=0.0)


def test_fast_rms_form_matches_hypot_form():
    """The squared update (taken for ordinary gradients) equals the hypot update to float32 rounding."""
    from steepest.optim.transforms import rms_kernel
    gen = torch.Generator().manual_seed(5)
    r = torch.rand(4096, generator=gen)
    g = torch.randn(4096, generator=gen) * 3
    fast, safe = r.clone(), r.clone()
    rms_kernel(fast, g, 0.95, fast=True)
    rms_kernel(safe, g, 0.95, fast=False)
    assert not torch.equal(fast, safe)  # two computations ...
    torch.testing.assert_close(fast, safe, rtol=3e-7, atol=0)  # ... of the same value


def test_rms_bound_bounds_the_state_and_decays_after_a_huge_gradient(monkeypatch):
    import steepest.optim.transforms as transforms
    taken = []
    real = transforms.fast_rms

    def spy(*args, **kwargs):
        taken.append(real(*args, **kwargs))
        return taken[-1]

    monkeypatch.setattr(transforms, "fast_rms", spy)
    p, opt = _adam_param()
    gen = torch.Generator().manual_seed(7)
    scales = [1.0] * 3 + [1e30] + [1.0] * 1200
    bounds = []
    for scale in scales:
        p.grad = torch.randn(64, generator=gen) * scale
        opt.step()
        state = opt.state[p]
        assert torch.isfinite(state["exp_avg_rms"]).all()
        assert float(state["exp_avg_rms"].max()) <= float(state["rms_bound"])  # a bound, always
        bounds.append(float(state["rms_bound"]))
    assert taken[:3] == [True] * 3  # ordinary gradients: the squared form
    assert taken[3] is False  # 1e30: hypot (its square would overflow float32)
    after = taken[4:]
    assert after[0] is False  # the state holds ~1e29: hypot until the bound decays below 2^60
    first_fast = after.index(True)
    assert all(after[first_fast:])
    # B_t ~ sqrt(beta2)^t B_spike falls below 2^60 after 2 ln(B_spike / 2^60) / ln(1 / beta2) steps
    beta2 = opt.param_groups[0]["betas"][1]
    expected = 2 * math.log(bounds[3] / 2 ** 60) / math.log(1 / beta2)
    assert first_fast == pytest.approx(expected, abs=2)


def test_tiny_eps_keeps_the_hypot_form(monkeypatch):
    import steepest.optim.transforms as transforms
    taken = []
    real = transforms.fast_rms
    monkeypatch.setattr(transforms, "fast_rms", lambda *a, **k: taken.append(real(*a, **k)) or taken[-1])
    p, opt = _adam_param(eps=1e-30)  # below 2^-50: underflowed squares would matter
    p.grad = torch.randn(64)
    opt.step()
    assert taken == [False]


def test_state_saved_without_rms_bound_reads_it_once():
    p, opt = _adam_param()
    p.grad = torch.randn(64) * 5
    opt.step()
    saved = opt.state_dict()
    del saved["state"][0]["rms_bound"]  # as a state from steepest 0.8 and earlier
    q, opt2 = _adam_param()
    q.data.copy_(p.data)
    opt2.load_state_dict(saved)
    q.grad = torch.randn(64)
    opt2.step()
    bound = opt2.state[q]["rms_bound"]
    assert isinstance(bound, float)  # host-side by construction
    assert float(opt2.state[q]["exp_avg_rms"].max()) <= bound <= 10 * float(opt2.state[q]["exp_avg_rms"].max())
