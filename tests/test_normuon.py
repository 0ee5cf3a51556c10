"""NorMuon (arXiv 2510.05491) against frozen values from its formulas, and its row-RMS property."""
import math

import pytest
import torch

from steepest.optim import NorMuon
from steepest.optim.normuon import neuron_normalize

F64 = torch.float64

# Frozen values. Problem: W0 (4x3) and three gradients drawn, in this order, from
# torch.Generator().manual_seed(0) with torch.randn(..., dtype=float64); lr 0.1, momentum 0.9
# (Nesterov), beta2 0.8, weight_decay 0.05, exact polar factor (ns="svd" in float64). Derivation,
# with O = polar(D) (computed by SVD, U V^T):
#   M_t = 0.9 M_{t-1} + 0.1 g_t ;  D_t = 0.1 g_t + 0.9 M_t ;  O_t = polar(D_t)
#   v_t = 0.8 v_{t-1} + 0.2 mean_cols(O_t^2)           (v_0 = 0, one value per row)
#   O^_t = O_t / (sqrt(v_t) + 1e-10)                   (row-wise)
#   frobenius: U_t = O^_t ||O_t||_F / (||O^_t||_F + 1e-10) * sqrt(max(1, 4/3))
#   rms:       U_t = O^_t 0.2 sqrt(4*3) / (||O^_t||_F + 1e-10)
#   W_t = (1 - 0.1 * 0.05) W_{t-1} - 0.1 U_t
# computed once in float64 with torch.linalg.svd and written down here.
FROZEN = {
    "frobenius": [[1.6218117563, -0.4265914603, -1.9655444029],
                  [0.7210263366, -0.9014157693, -1.4283415798],
                  [0.4825724915, 1.0410579988, -0.6974784746],
                  [-0.5380378421, -0.5631478927, 0.0854996135]],
    "rms": [[1.5539591915, -0.3366953952, -2.0836652600],
            [0.6157467605, -1.0105129470, -1.3952566037],
            [0.4268568035, 0.9001836937, -0.7046967826],
            [-0.4460684253, -0.5792148385, 0.1468193822]],
}


@pytest.mark.parametrize("scale", ["frobenius", "rms"])
def test_matches_frozen_values(scale):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(4, 3, generator=gen, dtype=F64).requires_grad_()
    grads = [torch.randn(4, 3, generator=gen, dtype=F64) for _ in range(3)]
    opt = NorMuon([{"params": [w], "role": "hidden"}], lr=0.1, momentum=0.9, beta2=0.8, weight_decay=0.05,
                  scale=scale, ns="svd", ns_dtype="float64")
    for g in grads:
        w.grad = g.clone()
        opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor(FROZEN[scale], dtype=F64), rtol=0, atol=1e-9)


def _rows(x):
    return x.reshape(x.shape[0], -1)


@pytest.mark.parametrize("shape", [(6, 4), (4, 9), (5, 3, 2, 2)])
def test_rows_have_equal_rms_before_the_frobenius_rescale(shape):
    """At the first step (any beta2) and at every step with beta2 = 0, v is exactly the rows' mean
    square of O times a common factor, so every row of O / sqrt(v) has the same RMS."""
    gen = torch.Generator().manual_seed(1)
    for beta2, steps in ((0.95, 1), (0.0, 4)):
        v = torch.zeros(shape[0], dtype=F64)
        for _ in range(steps):
            o = _rows(torch.randn(shape, generator=gen, dtype=F64)) * torch.linspace(0.1, 3, shape[0], dtype=F64)[:, None]
            v_before = v.clone()
            out = neuron_normalize(o, v, beta2, "frobenius")
            expected_v = beta2 * v_before + (1 - beta2) * o.square().mean(dim=1)
            torch.testing.assert_close(v, expected_v)
            row_rms = out.square().mean(dim=1).sqrt()
            torch.testing.assert_close(row_rms, row_rms.mean().expand_as(row_rms), rtol=1e-7, atol=0)  # eps 1e-10 vs sqrt(v)
            # The Frobenius rescale keeps Muon's norm.
            torch.testing.assert_close(out.norm(), o.norm(), rtol=1e-9, atol=0)


def test_rms_scale_gives_update_rms_point_two():
    torch.manual_seed(10)
    o = torch.randn(8, 5, dtype=F64)
    out = neuron_normalize(o, torch.zeros(8, dtype=F64), 0.9, "rms")
    assert out.square().mean().sqrt().item() == pytest.approx(0.2, rel=1e-9)


def _reference_conv_run(w0, grads, lr, momentum, beta2, weight_decay, scale):
    """NorMuon's formulas (the class docstring) on the ``out x in*k*k`` matrix of a conv filter, in
    float64 with the exact polar factor: the weights after the steps and the per-row ``v``."""
    m = w0.shape[0]
    w = w0.reshape(m, -1).clone()
    n = w.shape[1]
    buf, v = torch.zeros_like(w), torch.zeros(m, dtype=F64)
    for g in grads:
        g = g.reshape(m, -1)
        buf = momentum * buf + (1 - momentum) * g
        d = (1 - momentum) * g + momentum * buf  # Nesterov
        u, _, vh = torch.linalg.svd(d, full_matrices=False)
        o = u @ vh
        v = beta2 * v + (1 - beta2) * o.square().mean(dim=1)
        o_hat = o / (v.sqrt() + 1e-10)[:, None]
        if scale == "frobenius":  # Muon's Frobenius norm, times Keller's sqrt(max(1, m/n))
            update = o_hat * o.norm() / (o_hat.norm() + 1e-10) * math.sqrt(max(1.0, m / n))
        else:  # update RMS 0.2, adjust_lr "none"
            update = o_hat * 0.2 * math.sqrt(m * n) / (o_hat.norm() + 1e-10)
        w = (1 - lr * weight_decay) * w - lr * update
    return w.reshape(w0.shape), v


@pytest.mark.parametrize("scale", ["frobenius", "rms"])
@pytest.mark.parametrize("shape", [(5, 3, 2, 2), (8, 1, 2, 2), (6, 2, 3)], ids=["wide", "tall", "conv1d"])
def test_conv_rows_are_output_channels(shape, scale):
    """Conv filters are normalized on the out x in*k*k view: one second moment per output channel,
    and the weights and moments equal the float64 reference above (``tall``: the view is 8 x 4, so
    the Frobenius scale's shape factor is sqrt(2), not the kernel's)."""
    gen = torch.Generator().manual_seed(5)
    w0 = torch.randn(shape, generator=gen, dtype=F64)
    row_sizes = torch.linspace(0.1, 3, shape[0], dtype=F64).reshape(-1, *[1] * (len(shape) - 1))
    grads = [torch.randn(shape, generator=gen, dtype=F64) * row_sizes for _ in range(3)]  # the row factor matters
    hyper = dict(lr=0.05, momentum=0.9, beta2=0.8, weight_decay=0.1)
    w = w0.clone().requires_grad_()
    opt = NorMuon([{"params": [w], "role": "conv"}], scale=scale, ns="svd", ns_dtype="float64", **hyper)
    for g in grads:
        w.grad = g.clone()
        opt.step()
    want_w, want_v = _reference_conv_run(w0, grads, scale=scale, **hyper)
    assert opt.state[w]["row_sq"].shape == (shape[0],)
    torch.testing.assert_close(opt.state[w]["row_sq"].double(), want_v, rtol=1e-10, atol=0)
    torch.testing.assert_close(w.detach(), want_w, rtol=0, atol=1e-12)
    moved = (want_w - w0).abs().max().item()
    assert moved > 1e-2  # the comparison is not vacuous: the weights moved


def test_conv_rows_default_float32_path():
    """The default (float32 Newton-Schulz) path keeps one second moment per output channel."""
    gen = torch.Generator().manual_seed(6)
    w = torch.randn(5, 3, 2, 2, generator=gen).requires_grad_()
    opt = NorMuon([{"params": [w], "role": "conv"}], lr=0.01)
    w.grad = torch.randn(5, 3, 2, 2, generator=gen)
    opt.step()
    assert opt.state[w]["row_sq"].shape == (5,)


def test_fallback_groups_have_no_row_state_and_adjust_lr_defaults():
    torch.manual_seed(11)
    b = torch.zeros(4, requires_grad=True)
    w = torch.randn(4, 3, requires_grad=True)
    opt = NorMuon([{"params": [w], "role": "hidden"}, {"params": [b], "role": "vector"}], scale="rms")
    assert opt.param_groups[0]["shape_scale"] == "none"
    assert NorMuon([w]).param_groups[0]["shape_scale"] == "original"
    w.grad, b.grad = torch.randn(4, 3), torch.randn(4)
    opt.step()
    assert "row_sq" in opt.state[w] and "row_sq" not in opt.state[b]


def test_differs_from_muon_only_by_the_row_factor():
    """With beta2 = 0, every row of the NorMuon update has the same RMS; Muon's rows do not."""
    gen = torch.Generator().manual_seed(2)
    w0 = torch.randn(6, 4, generator=gen) * torch.linspace(0.1, 5, 6)[:, None]
    g = torch.randn(6, 4, generator=gen) * torch.linspace(0.1, 5, 6)[:, None]
    w = w0.clone().requires_grad_()
    opt = NorMuon([{"params": [w], "role": "hidden"}], lr=1.0, beta2=0.0, momentum=0.0, ns="svd")
    w.grad = g
    opt.step()
    delta = (w0 - w.detach())
    row_rms = delta.square().mean(dim=1).sqrt()
    torch.testing.assert_close(row_rms, row_rms.mean().expand_as(row_rms), rtol=1e-5, atol=0)
    # ||polar||_F = sqrt(min(m, n)) = 2, times Keller's factor sqrt(max(1, 6/4)).
    assert delta.norm().item() == pytest.approx(2 * math.sqrt(6 / 4), rel=1e-5)
