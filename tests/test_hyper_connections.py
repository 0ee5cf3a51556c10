"""HyperConnections: every mixer's invariant at every forward (after randomising all parameters),
the identity map of a block with a zero branch, expand / reduce, the static-bias conventions and
gradient flow."""
import pytest
import torch
from torch import nn

from steepest.nn import HyperConnections
from steepest.nn.hyper_connections import MIXERS

N, C = 4, 8
EXACT_AT_INIT = ["identity", "spectral_sphere", "stiefel"]


def _zero(h):
    return torch.zeros_like(h)


def _randomise(hc, scale=2.0):
    with torch.no_grad():
        for p in hc.parameters():
            p.normal_(0.0, scale)


def _check_invariant(mixer, H):
    eye = torch.eye(H.shape[-1], dtype=H.dtype)
    if mixer == "identity":
        assert torch.equal(H, eye)
    elif mixer == "birkhoff":
        assert (H.sum(-1) - 1).abs().max().item() <= 1e-4
        assert (H.sum(-2) - 1).abs().max().item() <= 1e-4
        assert H.min().item() >= 0
    elif mixer == "spectral_sphere":
        assert (torch.linalg.matrix_norm(H, ord=2) - 1).abs().max().item() <= 1e-5
    elif mixer == "stiefel":
        assert (H.mT @ H - eye).abs().max().item() <= 1e-5
    elif mixer == "grassmann":
        assert torch.linalg.matrix_norm(H, ord=2).max().item() <= 1 + 1e-5
        assert (H - H.mT).abs().max().item() <= 1e-6
    else:
        raise AssertionError(mixer)


@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("dynamic", [True, False])
def test_invariant_at_every_forward(mixer, dynamic):
    torch.manual_seed(0)
    hc = HyperConnections(C, N, mixer=mixer, layer_index=1, dynamic=dynamic, grassmann_rank=2)
    branch = nn.Linear(C, C)
    for trial in range(3):
        _randomise(hc, scale=[0.5, 2.0, 5.0][trial])
        x = torch.randn(2, 3, N, C) * (trial + 1)
        out = hc(x, branch)
        H = hc.last_h_res
        assert H.shape == ((2, 3, N, N) if dynamic and mixer != "identity" else (N, N))
        assert not H.requires_grad
        _check_invariant(mixer, H)
        # the block really computes x' = H_res x + H_post^T F(H_pre x)
        h_pre, h_post, _ = hc.mappings(x)
        expected = H @ x + h_post.unsqueeze(-1) * branch((h_pre.unsqueeze(-1) * x).sum(-2)).unsqueeze(-2)
        assert torch.allclose(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mixer", MIXERS)
def test_gradients_reach_every_parameter(mixer):
    torch.manual_seed(1)
    hc = HyperConnections(C, N, mixer=mixer, grassmann_rank=2)
    _randomise(hc, scale=0.5)
    x = torch.randn(2, 3, N, C)
    hc(x, nn.Linear(C, C)).square().sum().backward()
    names = {name for name, _ in hc.named_parameters()}
    assert {"phi_pre", "phi_post", "alpha_pre", "alpha_post", "b_pre", "b_post"} <= names
    if mixer != "identity":
        assert {"phi_res", "alpha_res", "b_res"} <= names
    for name, p in hc.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max().item() > 0, name


@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("shape", [(N, C), (5, N, C), (2, 3, N, C)])
def test_zero_branch_is_the_identity_map(mixer, shape):
    """Whatever H_pre and H_post are, a zero branch leaves x' = H_res x = x at init."""
    torch.manual_seed(2)
    x = torch.randn(*shape)
    hc = HyperConnections(C, N, mixer=mixer, layer_index=2)
    with torch.no_grad():  # randomise the read / write gates only
        for name in ["phi_pre", "phi_post", "alpha_pre", "alpha_post", "b_pre", "b_post"]:
            getattr(hc, name).normal_()
    out = hc(x, _zero)
    H = hc.last_h_res
    if mixer in EXACT_AT_INIT:
        assert torch.equal(out, x)
        assert torch.equal(H, torch.eye(N).expand_as(H))
    else:
        # birkhoff: diagonal 1 / (1 + 3 e^-8), off-diagonal e^-8 / (1 + 3 e^-8); grassmann: I - 1e-3 e e^T
        bound = 2 * (N - 1) * torch.exp(torch.tensor(-8.0)).item() if mixer == "birkhoff" else 1e-3
        dev = torch.linalg.matrix_norm(H - torch.eye(N), ord=2).max().item()
        assert 0 < dev <= bound * 1.001
        token_err = torch.linalg.vector_norm(out - x, dim=(-2, -1))
        assert (token_err <= dev * torch.linalg.vector_norm(x, dim=(-2, -1)) + 1e-6).all()
    # the near-identity mixers reach 1e-6 with the tighter init offsets
    tight = HyperConnections(C, N, mixer=mixer, layer_index=2, birkhoff_off_diagonal=-20.0,
                             grassmann_beta_init=1e-9)
    assert (tight(x, _zero) - x).abs().max().item() <= 1e-6


@pytest.mark.parametrize("mixer", MIXERS)
def test_expand_blocks_reduce_gives_n_times_h(mixer):
    """expand copies h to n streams; reduce sums them: zero-branch blocks give n * h."""
    torch.manual_seed(3)
    h = torch.randn(2, 5, C)
    x = HyperConnections.expand(h, N)
    assert x.shape == (2, 5, N, C) and torch.equal(x[:, :, 2], h)
    blocks = [HyperConnections(C, N, mixer=mixer, layer_index=i, birkhoff_off_diagonal=-20.0,
                               grassmann_beta_init=1e-9) for i in range(3)]
    for block in blocks:
        x = block(x, _zero)
    assert (HyperConnections.reduce(x) - N * h).abs().max().item() <= 1e-5
    if mixer == "birkhoff":  # columns sum to 1: the stream sum is preserved even with the -8 offset
        y = HyperConnections(C, N, mixer=mixer)(HyperConnections.expand(h, N), _zero)
        assert (HyperConnections.reduce(y) - N * h).abs().max().item() <= 1e-5


@pytest.mark.parametrize("mixer", EXACT_AT_INIT)
def test_init_stack_is_n_times_a_prenorm_residual_network(mixer):
    """At init the streams stay equal: each block reads one copy (H_pre sums to 1), adds F to every
    stream (H_post = 1), so reduce(stack(expand(h))) = n * (the plain residual network)(h)."""
    torch.manual_seed(4)
    branches = [nn.Sequential(nn.LayerNorm(C), nn.Linear(C, C), nn.Tanh()) for _ in range(3)]
    blocks = [HyperConnections(C, N, mixer=mixer, layer_index=i) for i in range(3)]
    h = torch.randn(2, 5, C)
    x, plain = HyperConnections.expand(h, N), h
    for block, f in zip(blocks, branches):
        x = block(x, f)
        plain = plain + f(plain)
    # 0.95 + 3 * (0.05 / 3) rounds to 1 within float32
    assert torch.allclose(HyperConnections.reduce(x), N * plain, atol=1e-5, rtol=1e-5)


def test_static_bias_conventions():
    torch.manual_seed(10)
    for layer_index in range(6):
        hc = HyperConnections(C, N, mixer="stiefel", layer_index=layer_index)
        h_pre, h_post, h_res = hc.mappings(torch.randn(3, N, C))
        k = layer_index % N
        assert torch.allclose(h_pre.sum(-1), torch.ones(3), atol=1e-6)
        assert torch.allclose(h_pre[:, k], torch.full((3,), 0.95), atol=1e-6)
        assert torch.equal(h_post, torch.ones(3, N))
    b = HyperConnections(C, N, mixer="birkhoff").b_res
    assert torch.equal(b.diagonal(), torch.zeros(N)) and (b - torch.diag(b.diagonal())).sum() == -8.0 * N * (N - 1)
    assert torch.equal(HyperConnections(C, N, mixer="spectral_sphere").b_res, torch.eye(N))
    g = HyperConnections(C, N, mixer="grassmann", layer_index=3, grassmann_rank=2)
    assert torch.equal(g.b_res, torch.eye(N)[:, [3, 0]])
    assert abs(2 * torch.sigmoid(g.b_beta).item() - 1e-3) <= 1e-9
    static = HyperConnections(C, N, mixer="birkhoff", dynamic=False)
    assert not any(name.startswith(("phi", "alpha")) for name, _ in static.named_parameters())
    for name, p in HyperConnections(C, N, mixer="birkhoff", alpha_init=0.25).named_parameters():
        if name.startswith("phi"):
            assert torch.equal(p, torch.zeros_like(p))
        if name.startswith("alpha"):
            assert p.item() == 0.25


def test_low_precision_state_keeps_dtype_and_mixes_in_float32():
    torch.manual_seed(5)
    hc = HyperConnections(C, N, mixer="birkhoff")
    _randomise(hc, 0.5)
    x = torch.randn(2, N, C).to(torch.bfloat16)
    out = hc(x, nn.Linear(C, C).to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and hc.last_h_res.dtype == torch.float32
    _check_invariant("birkhoff", hc.last_h_res)
    x64 = torch.randn(2, N, C, dtype=torch.float64)
    assert hc(x64, _zero).dtype == torch.float64 and hc.last_h_res.dtype == torch.float64


def test_argument_errors():
    with pytest.raises(ValueError, match="Unknown mixer 'orthogonal'; expected one of: identity, birkhoff, "
                                         "spectral_sphere, stiefel, grassmann"):
        HyperConnections(C, N, mixer="orthogonal")
    with pytest.raises(ValueError, match=r"Invalid grassmann_rank: 5; expected an integer in \[1, n_streams=4\]"):
        HyperConnections(C, N, mixer="grassmann", grassmann_rank=5)
    with pytest.raises(ValueError, match="Invalid n_streams: 0; expected an integer >= 1"):
        HyperConnections(C, 0)
    with pytest.raises(ValueError, match=r"Invalid grassmann_beta_init: 2; expected a number in \(0, 2\)"):
        HyperConnections(C, N, grassmann_beta_init=2)
    with pytest.raises(TypeError, match="dynamic must be a bool, got int"):
        HyperConnections(C, N, dynamic=1)
    hc = HyperConnections(C, N)
    with pytest.raises(ValueError,
                       match=r"HyperConnections expects a state of shape \[\.\.\., 4, 8\], got \(2, 3, 8\)"):
        hc(torch.zeros(2, 3, C), _zero)
    with pytest.raises(ValueError, match=r"branch must return a tensor of shape \(2, 8\), got \(2, 4\)"):
        hc(torch.zeros(2, N, C), lambda h: h[..., :4])
