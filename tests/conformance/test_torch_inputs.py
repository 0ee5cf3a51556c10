"""steepest.Muon against torch.optim.Muon on torch's own optimizer test inputs
(``torch.testing._internal.common_optimizers``), so a change on either side is caught.

- Every valid input (``optim_inputs_func_muon``: Tensor lr, weight decay, momentum, ns_steps,
  ns_coefficients, ...) with torch's argument names and torch's defaults for the rest gives
  torch's update bit for bit (steepest's Newton-Schulz in bfloat16, as torch's).
- Every error input (``optim_error_inputs_func_muon``) raises the exception type torch raises, at
  the same point (construction or step); the one deliberate difference, steepest's support for
  conv filters and other >= 3-D tensors, is listed in ``ACCEPTED``.
"""
from __future__ import annotations

import inspect
import warnings

import pytest
import torch

import steepest

from torch.testing._internal import common_optimizers as common  # noqa: E402 (torch's test inputs; needs expecttest)

TORCH_DEFAULTS = {name: p.default for name, p in inspect.signature(torch.optim.Muon.__init__).parameters.items()
                  if p.default is not inspect.Parameter.empty}
#: torch's error inputs that steepest accepts on purpose
ACCEPTED = {"only support 2D parameters": "steepest.Muon orthogonalizes conv filters (>= 3-D) as matrices"}
VALID = common.optim_inputs_func_muon("cpu")
ERRORS = common.optim_error_inputs_func_muon("cpu", torch.float32)


@pytest.mark.parametrize("case", VALID, ids=[c.desc for c in VALID])
def test_valid_inputs_give_torchs_update(case):
    gen = torch.Generator().manual_seed(3)
    w0 = torch.randn(7, 4, generator=gen)
    a, b = w0.clone().requires_grad_(), w0.clone().requires_grad_()
    kwargs = {**TORCH_DEFAULTS, **case.kwargs}
    reference = torch.optim.Muon([a], **case.kwargs)
    ours = steepest.Muon([b], ns_dtype=torch.bfloat16, **{k: v.clone() if torch.is_tensor(v) else v
                                                            for k, v in kwargs.items()})
    for _ in range(4):
        g = torch.randn(7, 4, generator=gen)
        a.grad, b.grad = g.clone(), g.clone()
        reference.step()
        ours.step()
    assert (a - w0).abs().max() > 0
    assert torch.equal(a, b), f"{case.desc}: differs by {(a - b).abs().max().item():.3g}"


def _build(case):
    inputs = case.optimizer_error_input
    params = inputs.params
    if params is None:
        params = [torch.rand(2, 3, requires_grad=True)]
    return lambda: steepest.Muon(params, **inputs.kwargs), params


@pytest.mark.parametrize("case", ERRORS, ids=[c.optimizer_error_input.desc for c in ERRORS])
def test_error_inputs_raise_torchs_exception_type(case):
    desc = case.optimizer_error_input.desc
    if desc in ACCEPTED:
        build, _ = _build(case)
        build()  # accepted (see ACCEPTED)
        return
    build, params = _build(case)
    if issubclass(case.error_type, Warning):
        with pytest.warns(case.error_type):
            build()
        return
    if case.error_on == common.OptimizerErrorEnum.CONSTRUCTION_ERROR:
        with pytest.raises(case.error_type):
            build()
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer = build()
    with pytest.raises(case.error_type):
        optimizer.step()
