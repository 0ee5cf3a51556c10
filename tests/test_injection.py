"""StableInjection (a state matrix of spectral norm < 1 for any parameters, in floating point) and
DeltaResidual (beta in [0, 2]; identity, replacement and reflection at beta = 0, 1, 2)."""
import math

import pytest
import torch

from steepest.nn import DeltaResidual, StableInjection
from steepest.nn.injection import RATE_EPS, delta_update

D = 6


# -- StableInjection -----------------------------------------------------------------------------

@pytest.mark.parametrize("decay_init", [math.sqrt(1 / 5), 0.01, 0.5, 0.99])
def test_init_decay(decay_init):
    inj = StableInjection(D, decay_init=decay_init)
    assert torch.equal(inj.A_log, torch.zeros(D)) and torch.equal(inj.B, torch.eye(D))
    assert (inj.decay() - decay_init).abs().max().item() <= 1e-6
    assert abs(inj.spectral_norm() - decay_init) <= 1e-6 and abs(inj.contraction() - decay_init) <= 1e-6


def test_default_decay_is_sqrt_one_fifth():
    assert abs(StableInjection(D).spectral_norm() - math.sqrt(0.2)) <= 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spectral_norm_below_one_for_any_parameters(dtype):
    values = torch.tensor([-80.0, -50.0, -20.0, -5.0, -1.0, 0.0, 1.0, 5.0, 20.0, 50.0, 80.0], dtype=dtype)
    grid_a, grid_dt = torch.meshgrid(values, values, indexing="ij")
    inj = StableInjection(grid_a.numel()).to(dtype)
    with torch.no_grad():
        inj.A_log.copy_(grid_a.flatten())
        inj.dt_bias.copy_(grid_dt.flatten())
    decay = inj.decay()
    assert torch.isfinite(decay).all() and decay.min().item() >= 0 and decay.max().item() < 1
    assert inj.spectral_norm() < 1 and inj.spectral_norm() == decay.max().item()
    assert decay.max().item() <= math.exp(-RATE_EPS) * (1 + 1e-7)
    torch.manual_seed(0)
    wide = StableInjection(4096).to(dtype)
    with torch.no_grad():
        wide.A_log.uniform_(-20, 20)
        wide.dt_bias.uniform_(-20, 20)
    assert wide.spectral_norm() < 1


def test_clamp_is_what_keeps_float32_below_one():
    """At A_log = dt_bias = -20, Delta * A ~ 4e-18: the unclamped exp rounds to exactly 1.0."""
    inj = StableInjection(1)
    with torch.no_grad():
        inj.A_log.fill_(-20.0)
        inj.dt_bias.fill_(-20.0)
    raw = torch.exp(-(torch.nn.functional.softplus(inj.dt_bias) * torch.exp(inj.A_log)))
    assert raw.item() == 1.0
    assert inj.spectral_norm() < 1


def test_forward_formula_and_contraction():
    torch.manual_seed(1)
    inj = StableInjection(D)
    with torch.no_grad():
        inj.A_log.normal_()
        inj.dt_bias.normal_()
        inj.B.normal_()
    h, e = torch.randn(3, 5, D), torch.randn(3, 5, D)
    delta = torch.nn.functional.softplus(inj.dt_bias)
    a_bar = torch.exp(-delta * torch.exp(inj.A_log))
    assert torch.allclose(inj(h, e), a_bar * h + delta * (e @ inj.B.T), atol=1e-6)
    # iterating with a fixed input converges to the fixed point h* = Delta B e / (1 - A_bar)
    with torch.no_grad():
        x = torch.randn(3, 5, D) * 100
        for _ in range(2000):
            x = inj(x, e)
        fixed = delta * (e @ inj.B.T) / (1 - a_bar)
    assert torch.allclose(x, fixed, atol=1e-3, rtol=1e-4)


def test_injection_gradients_and_dtype():
    torch.manual_seed(2)
    inj = StableInjection(D)
    h, e = torch.randn(4, D), torch.randn(4, D)
    inj(h, e).square().sum().backward()
    for name, p in inj.named_parameters():
        assert torch.isfinite(p.grad).all() and p.grad.abs().max() > 0, name
    assert inj(h.to(torch.bfloat16), e.to(torch.bfloat16)).dtype == torch.bfloat16


def test_injection_errors():
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=rf"Invalid decay_init: {bad}; expected a number in \(0, 1\)"):
            StableInjection(D, decay_init=bad)
    with pytest.raises(ValueError, match=r"StableInjection expects h and e of shape \[\.\.\., 6\]"):
        StableInjection(D)(torch.zeros(2, D), torch.zeros(2, D + 1))


# -- DeltaResidual -------------------------------------------------------------------------------

def _unit(*shape):
    k = torch.randn(*shape, dtype=torch.float64)
    return k / k.norm(dim=-1, keepdim=True)


def test_delta_update_beta_zero_is_identity():
    torch.manual_seed(3)
    X, k, v = torch.randn(5, D, 3), _unit(5, D).float(), torch.randn(5, 3)
    assert torch.equal(delta_update(X, k, 0.0, v), X)


def test_delta_update_beta_one_replaces_the_component_along_k():
    torch.manual_seed(4)
    X, k, v = torch.randn(5, D, 3, dtype=torch.float64), _unit(5, D), torch.randn(5, 3, dtype=torch.float64)
    Xn = delta_update(X, k, torch.ones(5, dtype=torch.float64), v)
    assert (torch.einsum("bd,bdv->bv", k, Xn) - v).abs().max().item() <= 1e-12
    # and leaves the part orthogonal to k alone
    proj = torch.eye(D, dtype=torch.float64) - k.unsqueeze(-1) * k.unsqueeze(-2)
    assert torch.allclose(proj @ Xn, proj @ X, atol=1e-12)


def test_delta_update_beta_two_without_values_is_a_reflection():
    torch.manual_seed(5)
    X, k = torch.randn(5, D, 3, dtype=torch.float64), _unit(5, D)
    Xn = delta_update(X, k, 2.0, torch.zeros(5, 3, dtype=torch.float64))
    assert torch.allclose(torch.linalg.matrix_norm(Xn), torch.linalg.matrix_norm(X), atol=1e-12, rtol=0)
    householder = torch.eye(D, dtype=torch.float64) - 2 * k.unsqueeze(-1) * k.unsqueeze(-2)
    assert torch.allclose(Xn, householder @ X, atol=1e-12)
    assert torch.allclose(householder @ householder.mT, torch.eye(D, dtype=torch.float64).expand(5, D, D), atol=1e-12)
    assert torch.allclose(delta_update(Xn, k, 2.0, torch.zeros(5, 3, dtype=torch.float64)), X, atol=1e-12)


def test_beta_in_zero_two_for_any_parameters():
    torch.manual_seed(6)
    dr = DeltaResidual(D)
    x = torch.randn(64, D) * 10
    for scale in (0.1, 10.0, 1e3):
        with torch.no_grad():
            dr.w_beta.normal_(0, scale)
            dr.b_beta.normal_(0, scale)
            dr.W_v.normal_(0, scale)
        beta, v = dr.gates(x)
        assert beta.min().item() >= 0 and beta.max().item() <= 2
        assert v.min().item() >= 0 and v.max().item() <= dr.v_scale
    with torch.no_grad():
        dr.W_v.normal_(0, 0.1)
    _, v = dr.gates(torch.randn(8, D))
    assert v.min().item() > 0 and v.max().item() < dr.v_scale


@pytest.mark.parametrize("beta_init", [0.25, 1.0, 1.9])
def test_beta_init(beta_init):
    torch.manual_seed(10)
    dr = DeltaResidual(D, beta_init=beta_init)
    beta, _ = dr.gates(torch.randn(7, D) * 5)
    assert torch.allclose(beta, torch.full((7,), beta_init), atol=1e-6)


def test_module_replaces_along_normalized_key_at_beta_one():
    torch.manual_seed(7)
    dr = DeltaResidual(D, d_v=3, beta_init=1.0)
    X, k_in, x_in = torch.randn(4, D, 3), torch.randn(4, D) * 7, torch.randn(4, D)
    Xn = dr(X, k_in, x_in)
    k = k_in / k_in.norm(dim=-1, keepdim=True)
    _, v = dr.gates(x_in)
    assert (torch.einsum("bd,bdv->bv", k, Xn) - v).abs().max().item() <= 1e-5
    # a zero key changes nothing; gradients reach every parameter
    assert torch.equal(dr(X, torch.zeros(4, D), x_in), X)
    dr(X, k_in, x_in).square().sum().backward()
    for name, p in dr.named_parameters():
        assert torch.isfinite(p.grad).all() and p.grad.abs().max() > 0, name


def test_read_and_expand():
    torch.manual_seed(11)
    x = torch.randn(2, 3, D)
    X = DeltaResidual.expand(x, 4)
    assert X.shape == (2, 3, D, 4)
    assert torch.allclose(DeltaResidual.read(X), x, atol=1e-7)


def test_delta_residual_errors():
    with pytest.raises(ValueError, match=r"Invalid beta_init: 2.0; expected a number in \(0, 2\)"):
        DeltaResidual(D, beta_init=2.0)
    with pytest.raises(ValueError, match="Invalid d_v: 0; expected an integer >= 1"):
        DeltaResidual(D, d_v=0)
    with pytest.raises(ValueError, match="Invalid v_scale: -1.0; expected a positive number"):
        DeltaResidual(D, v_scale=-1.0)
    dr = DeltaResidual(D, d_v=3)
    with pytest.raises(ValueError, match=r"DeltaResidual expects a state of shape \[\.\.\., 6, 3\], got \(2, 6, 4\)"):
        dr(torch.zeros(2, D, 4), torch.zeros(2, D), torch.zeros(2, D))
