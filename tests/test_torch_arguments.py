"""torch-style argument forms: a 1-element Tensor lr, a torch.dtype for ns_dtype, Newton-Schulz
coefficient tuples, and torch.optim.Muon's argument names on steepest.Muon."""
from __future__ import annotations

import io

import pytest
import torch

import steepest
from steepest.optim import PRESETS
from steepest.polar import get_schedule, polar


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_tensor_lr_steps_exactly_as_the_float(name):
    gen = torch.Generator().manual_seed(5)
    w0 = torch.randn(6, 4, generator=gen)
    a, b = w0.clone().requires_grad_(), w0.clone().requires_grad_()
    lr = 2.0 ** -7  # exact in float32, so the tensor holds the same number
    opt_a = PRESETS[name]([{"params": [a], "role": "hidden"}], lr=lr)
    opt_b = PRESETS[name]([{"params": [b], "role": "hidden"}], lr=torch.tensor(lr))
    for _ in range(3):
        g = torch.randn(6, 4, generator=gen)
        a.grad, b.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    assert (a - w0).abs().max() > 0 and torch.equal(a, b)


def test_tensor_lr_follows_a_scheduler_and_round_trips():
    w = torch.randn(6, 4, requires_grad=True)
    opt = steepest.Muon([w], lr=torch.tensor(0.02))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 ** step)
    w.grad = torch.randn(6, 4)
    opt.step()
    sched.step()
    assert torch.is_tensor(opt.param_groups[0]["lr"]) and float(opt.param_groups[0]["lr"]) == pytest.approx(0.01)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert float(state["param_groups"][0]["lr"]) == pytest.approx(0.01)


def test_tensor_lr_must_have_one_element():
    with pytest.raises(ValueError, match="^Tensor lr must be 1-element$"):
        steepest.Muon([torch.randn(3, 3, requires_grad=True)], lr=torch.tensor([0.1, 0.2]))


def test_a_torch_dtype_is_stored_as_its_name():
    opt = steepest.Muon([torch.randn(4, 4, requires_grad=True)], ns_dtype=torch.bfloat16)
    assert opt.param_groups[0]["ns_dtype"] == "bfloat16"
    opt.add_param_group({"params": [torch.randn(3, 3, requires_grad=True)], "role": "hidden",
                         "ns_dtype": torch.float64})
    assert opt.param_groups[-1]["ns_dtype"] == "float64"
    with pytest.raises(ValueError, match="^Unknown ns_dtype 'int8'"):
        steepest.Muon([torch.randn(4, 4, requires_grad=True)], ns_dtype=torch.int8)


def test_coefficient_tuples_are_schedules():
    x = torch.randn(40, 24, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert torch.equal(polar(x, ns=(3.4445, -4.7750, 2.0315), dtype=torch.float64),
                       polar(x, ns="keller", dtype=torch.float64))
    opt = steepest.Muon([torch.randn(4, 4, requires_grad=True)], ns=[3.0, -3.2, 1.2])
    assert opt.param_groups[0]["ns"] == (3.0, -3.2, 1.2)  # stored as a tuple: plain data
    with pytest.raises(ValueError, match="^Coefficients must be a tuple of exactly 3 values$"):
        steepest.Muon([torch.randn(4, 4, requires_grad=True)], ns=(1.0, 2.0))
    with pytest.raises(TypeError, match=r"^Invalid type for ns\[1\]: expected a real number, got str$"):
        steepest.Muon([torch.randn(4, 4, requires_grad=True)], ns=(1.0, "b", 2.0))
    with pytest.raises(ValueError, match=r"^Invalid ns\[2\] value: inf; expected a finite number$"):
        steepest.Muon([torch.randn(4, 4, requires_grad=True)], ns=(1.0, 2.0, float("inf")))


def test_a_coefficient_schedules_band_holds_against_the_svd():
    """The computed band of a custom (a, b, c) contains the singular values Newton-Schulz gives for
    inputs whose singular values are >= 1e-2 of the Frobenius norm (float64 SVD)."""
    coefficients = (3.0, -3.2, 1.2)
    low, high = get_schedule(coefficients).band
    gen = torch.Generator().manual_seed(4)
    for shape in [(30, 30), (50, 20), (20, 50)]:
        u, _ = torch.linalg.qr(torch.randn(shape[0], shape[0], generator=gen, dtype=torch.float64))
        v, _ = torch.linalg.qr(torch.randn(shape[1], shape[1], generator=gen, dtype=torch.float64))
        k = min(shape)
        s = torch.logspace(-1, 0, k, dtype=torch.float64)  # every s_i / ||s|| is >= 1e-2 here
        assert (s / s.norm()).min() >= 1e-2
        x = 5.0 * u[:, :k] @ torch.diag(s) @ v[:, :k].T
        out = torch.linalg.svdvals(polar(x, ns=coefficients, dtype=torch.float64))
        assert low - 1e-9 <= out.min() and out.max() <= high + 1e-9, (shape, out.min(), out.max(), low, high)


def test_muon_takes_torchs_argument_names():
    gen = torch.Generator().manual_seed(8)
    w0 = torch.randn(9, 5, generator=gen)
    a, b = w0.clone().requires_grad_(), w0.clone().requires_grad_()
    kwargs = dict(lr=0.01, weight_decay=0.1, momentum=0.9, nesterov=False, ns_coefficients=(3.0, -3.2, 1.2),
                  eps=1e-6, ns_steps=4, adjust_lr_fn="match_rms_adamw")
    reference = torch.optim.Muon([a], **kwargs)
    ours = steepest.Muon([b], ns_dtype="bfloat16", **kwargs)
    assert ours.param_groups[0]["ns_eps"] == 1e-6 and ours.param_groups[0]["shape_scale"] == "match_rms_adamw"
    for _ in range(4):
        g = torch.randn(9, 5, generator=gen)
        a.grad, b.grad = g.clone(), g.clone()
        reference.step()
        ours.step()
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="^Pass either ns or ns_coefficients, not both$"):
        steepest.Muon([torch.randn(4, 4, requires_grad=True)], ns="you", ns_coefficients=(3.0, -3.2, 1.2))
    with pytest.raises(ValueError, match="^Adjust learning rate function arbitrary is not supported$"):
        steepest.Muon([torch.randn(4, 4, requires_grad=True)], adjust_lr_fn="arbitrary")
    with pytest.raises(ValueError, match="^Pass either adjust_lr or adjust_lr_fn, not both$"):
        steepest.Muon([torch.randn(4, 4, requires_grad=True)], adjust_lr="rms_to_rms", adjust_lr_fn="original")
