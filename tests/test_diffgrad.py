"""diffGrad (arXiv 1909.11015) against its formula written out here, with the friction computed from
a real copy of the previous gradient (the published code's aliasing fixed it at 0.5)."""
import pytest
import torch

from steepest.optim import DiffGrad
from steepest.optim.transforms import diffgrad_transform

F64 = torch.float64


def reference(w0, grads, lr, betas, eps, wd, friction_fixed=None):
    """diffGrad step by step; ``friction_fixed=0.5`` reproduces the aliasing bug."""
    w = w0.clone()
    m, v, prev = torch.zeros_like(w), torch.zeros_like(w), torch.zeros_like(w)
    b1, b2 = betas
    frictions = []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        xi = 1 / (1 + torch.exp(-(prev - g).abs())) if friction_fixed is None else torch.full_like(g, friction_fixed)
        frictions.append(xi)
        prev = g.clone()
        step = lr * (1 - b2**t) ** 0.5 / (1 - b1**t)
        w = (1 - lr * wd) * w - step * xi * m / (v.sqrt() + eps)
    return w, frictions


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_matches_formula_with_gradients_modified_in_place(wd):
    """Gradients are written into the same ``.grad`` tensor every step (as in-place accumulation
    does); the friction must still see the previous step's values."""
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(5, 4, generator=gen, dtype=F64)
    grads = [torch.randn(5, 4, generator=gen, dtype=F64) * s for s in (1.0, 3.0, 0.5, 2.0, 1.0)]
    w = w0.clone().requires_grad_()
    opt = DiffGrad([w], lr=0.01, weight_decay=wd)
    w.grad = torch.zeros_like(w)
    for g in grads:
        w.grad.copy_(g)  # the same tensor object every step
        opt.step()
    expected, frictions = reference(w0, grads, 0.01, (0.9, 0.999), 1e-8, wd)
    torch.testing.assert_close(w.detach(), expected, rtol=1e-12, atol=1e-14)
    # The friction really varies across entries and steps, and the aliased variant differs.
    xi = torch.stack(frictions)
    assert xi.min() < 0.6 and xi.max() > 0.95
    aliased, _ = reference(w0, grads, 0.01, (0.9, 0.999), 1e-8, wd, friction_fixed=0.5)
    assert (w.detach() - aliased).abs().max() > 1e-3


def test_first_step_friction_is_sigmoid_of_abs_grad():
    g = torch.tensor([0.0, 1.0, -2.0, 10.0], dtype=F64)
    m, v, prev = torch.zeros(4, dtype=F64), torch.zeros(4, dtype=F64), torch.zeros(4, dtype=F64)
    step = torch.tensor(0.0)
    out = diffgrad_transform(m, v, prev, step, g, 0.9, 0.999, 1e-8)
    xi = torch.sigmoid(g.abs())
    # First step: m = 0.1 g, v = 0.001 g^2, step scale sqrt(1 - 0.999) / (1 - 0.9).
    expected = (0.001**0.5 / 0.1) * xi * (0.1 * g) / ((0.001 * g * g).sqrt() + 1e-8)
    torch.testing.assert_close(out, expected)
    assert torch.equal(prev, g) and prev.data_ptr() != g.data_ptr()
    assert step.item() == 1.0


def test_steady_gradient_gets_half_of_adams_step():
    """With the same gradient twice, xi = sigmoid(0) = 0.5 at the second step: diffGrad's second
    update is half of Adam's (in the folded-eps form)."""
    # entries of size 0.5..1.5 (seeded): for a tiny entry the folded eps = 1e-12 is no longer
    # negligible at rtol 1e-9 (|g| = 1e-3 makes it a 2e-8 relative change)
    gen = torch.Generator().manual_seed(0)
    g = (torch.rand(3, 3, dtype=F64, generator=gen) + 0.5) * torch.randn(3, 3, dtype=F64, generator=gen).sign()
    w_d = torch.zeros(3, 3, dtype=F64, requires_grad=True)
    opt = DiffGrad([w_d], lr=0.1, eps=1e-12)
    w_d.grad = g.clone()
    opt.step()
    before = w_d.detach().clone()
    opt.step()
    second = before - w_d.detach()
    # Adam's second step with folded eps: lr sqrt(1-b2^2)/(1-b1^2) m / sqrt(v) with m, v of g twice.
    m = (1 - 0.9**2) * g
    v = (1 - 0.999**2) * g * g
    adam = 0.1 * (1 - 0.999**2) ** 0.5 / (1 - 0.9**2) * m / v.sqrt()
    torch.testing.assert_close(second, 0.5 * adam, rtol=1e-9, atol=1e-12)
