"""Engine details the conformance suite does not cover: stage kernels, state dtypes, grads untouched."""
import math

import pytest
import torch

import steepest
from steepest.optim.transforms import adam_transform, momentum_transform


def test_momentum_transform_is_the_ema_with_nesterov():
    buf = torch.tensor([1.0, 2.0])
    g = torch.tensor([3.0, -1.0])
    d = momentum_transform(buf, g, 0.9, nesterov=True)
    m = 0.9 * torch.tensor([1.0, 2.0]) + 0.1 * g
    torch.testing.assert_close(buf, m)
    torch.testing.assert_close(d, 0.1 * g + 0.9 * m)
    assert momentum_transform(None, g, 0.0, nesterov=True) is g


def test_adam_transform_first_step_is_sign_like():
    m, v, t = torch.zeros(3), torch.zeros(3), torch.tensor(0.0)
    g = torch.tensor([2.0, -0.5, 0.0])
    d = adam_transform(m, v, t, g, 0.9, 0.999, 1e-12)
    torch.testing.assert_close(d, torch.tensor([1.0, -1.0, 0.0]))
    assert t.item() == 1.0


def test_gradients_are_never_mutated():
    torch.manual_seed(10)
    p = torch.randn(6, 4, requires_grad=True)
    v = torch.randn(4, requires_grad=True)
    opt = steepest.Muon([p, v], maximize=True)
    for _ in range(3):
        p.grad = torch.randn(6, 4)
        v.grad = torch.randn(4)
        gp, gv = p.grad.clone(), v.grad.clone()
        opt.step()
        assert torch.equal(p.grad, gp) and torch.equal(v.grad, gv)


def test_no_momentum_means_no_buffer():
    torch.manual_seed(11)
    p = torch.randn(4, 4, requires_grad=True)
    p.grad = torch.randn(4, 4)
    opt = steepest.Muon([p], momentum=0.0)
    opt.step()
    assert "momentum_buffer" not in opt.state[p]


def test_unknown_engine_option_is_a_type_error():
    with pytest.raises(TypeError, match="Unknown optimizer option\\(s\\): colour"):
        steepest.GeometryOptimizer([torch.zeros(2, 2, requires_grad=True)], colour="red")


def test_engine_accepts_any_geometry_per_group():
    """Signum is the sign geometry with momentum: one engine, flat keys."""
    p = torch.zeros(3, 5, requires_grad=True)
    opt = steepest.GeometryOptimizer([p], lr=0.1, geometry="sign", momentum=0.0)
    p.grad = torch.tensor([[1.0, -2.0, 0.0, 3.0, -0.1]] * 3)
    opt.step()
    torch.testing.assert_close(p.detach(), -0.1 * torch.sign(p.grad))


def test_identity_geometry_is_the_documented_pass_through():
    torch.manual_seed(12)
    g = steepest.geometry.Identity()
    x = torch.randn(3, 4)
    assert g.lmo(x) is x
    assert g.dual_norm(x).item() == pytest.approx(x.norm().item())


def test_effective_lr_formula():
    w = torch.zeros(8, 2, requires_grad=True)
    opt = steepest.GeometryOptimizer([w], lr=0.5, radius=2.0, shape_scale="rms_to_rms")
    assert opt.effective_lr(opt.param_groups[0], w) == pytest.approx(0.5 * 2.0 * math.sqrt(8 / 2))


def test_adam_eps_must_be_positive_so_zero_grads_stay_finite():
    with pytest.raises(ValueError, match="Invalid eps value: 0.0; expected a positive number"):
        steepest.Muon([torch.zeros(3, requires_grad=True)], adamw_eps=0.0)


def test_overriding_the_geometry_brings_its_default_shape_factor():
    """Scion's per-group norm choice: a sign embedding inside Muon/Scion needs no shape_scale."""
    emb = torch.zeros(5, 4, requires_grad=True)
    hid = torch.zeros(4, 4, requires_grad=True)
    opt = steepest.Muon([{"params": [emb], "role": "hidden", "geometry": "sign"}, {"params": [hid]}])
    assert opt.param_groups[0]["shape_scale"] is None and opt.param_groups[1]["shape_scale"] == "original"
    opt2 = steepest.Scion([{"params": [emb], "role": "embedding", "geometry": "colnorm", "shape_scale": "none"}])
    assert opt2.param_groups[0]["geometry"] == "colnorm" and opt2.param_groups[0]["shape_scale"] == "none"


def test_lion_transform_uses_beta1_for_the_update_and_beta2_for_the_buffer():
    from steepest.optim.transforms import lion_transform

    buf = torch.tensor([1.0, -2.0])
    g = torch.tensor([3.0, 1.0])
    d = lion_transform(buf, g, 0.9, 0.99)
    torch.testing.assert_close(d, 0.9 * torch.tensor([1.0, -2.0]) + 0.1 * g)
    torch.testing.assert_close(buf, 0.99 * torch.tensor([1.0, -2.0]) + 0.01 * g)


def test_presets_are_compositions_of_flat_engine_keys():
    """Lion and diffGrad are the engine with their transform and geometry named in the group."""
    for preset, keys in ((steepest.Lion, dict(transform="lion", geometry="sign", betas=(0.9, 0.99), lr=1e-3)),
                         (steepest.DiffGrad, dict(transform="diffgrad", geometry="identity", betas=(0.9, 0.999),
                                                  eps=1e-8, lr=1e-3))):
        a = torch.randn(4, 5, requires_grad=True)
        b = a.detach().clone().requires_grad_()
        opt_a = preset([a], lr=1e-3)
        opt_b = steepest.GeometryOptimizer([{"params": [b], "role": "hidden", **keys}])
        for seed in range(3):
            g = torch.randn(4, 5, generator=torch.Generator().manual_seed(seed))
            a.grad, b.grad = g.clone(), g.clone()
            opt_a.step()
            opt_b.step()
        assert torch.equal(a, b), preset.__name__


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["big", "small1"])
def test_nonfinite_check_covers_grouped_and_large_tensors(value, where):
    """The check reduces small tensors with one grouped inf-norm and large ones (> 2^14 entries)
    one by one; a NaN or +-Inf is found in either, in any entry, and named."""
    params = {"big": torch.nn.Parameter(torch.zeros(200, 100)),  # 20,000 entries: the per-tensor path
              "small0": torch.nn.Parameter(torch.zeros(8, 8)), "small1": torch.nn.Parameter(torch.zeros(8)),
              "small2": torch.nn.Parameter(torch.zeros(4, 4))}
    opt = steepest.Lion([{"params": list(params.values()), "param_names": list(params)}], lr=0.1)
    for p in params.values():
        p.grad = torch.ones_like(p)
    params[where].grad.view(-1)[-1] = value
    with pytest.raises(FloatingPointError, match=f"in parameter '{where}'"):
        opt.step()
    assert all(bool((p == 0).all()) for p in params.values())
