"""Every preset's engine step equals the plain one-parameter definition in ``steepest.optim.reference``.

One or two parameters per role in a group per role (groups of two run the grouped kernels), float64,
Newton-Schulz in float64, decoupled weight decay, four steps with fresh gradients, ``maximize`` both
ways. The preset's own stage-3 rules and M-FAC's window are written out here from their papers'
formulas, independently of the library's kernels."""
from __future__ import annotations

import math

import pytest
import torch

from steepest.optim import PRESETS
from steepest.optim.reference import reference_step

F64 = torch.float64
SHAPES = {"hidden": (6, 4), "conv": (3, 2, 2, 2), "embedding": (10, 4), "head": (5, 4), "vector": (4,)}


def _neuron_normalize(group):
    """NorMuon (arXiv 2510.05491): per-row second moment of O, rows rescaled, then the Frobenius
    norm set back to ||O||_F (``scale="frobenius"``) or to 0.2 sqrt(mn) (``"rms"``)."""
    state = {}

    def scale(o):
        m = o.reshape(o.shape[0], -1)
        v = state["v"] = group["beta2"] * state.get("v", torch.zeros(m.shape[0], dtype=F64)) \
            + (1 - group["beta2"]) * (m * m).mean(dim=1)
        normed = m / (v.sqrt() + 1e-10).unsqueeze(1)
        target = m.norm() if group["scale"] == "frobenius" else 0.2 * math.sqrt(m.numel())
        return (normed * (target / (normed.norm() + 1e-10))).view_as(o)
    return scale


def _cosh_brake(o):
    """AuON (arXiv 2509.24320): X = O / ||O||_F, r = sqrt(1 + mean sinh(X)^2); step O X / (r + 1e-8)."""
    norm = o.norm().item()
    if norm == 0.0:
        return 0.0
    r = math.sqrt(1.0 + torch.sinh(o / norm).square().mean().item())
    return 1.0 / (norm * (r + 1e-8))


def _fisher_window(group):
    """M-FAC (arXiv 2107.03356): F = damp I + (1/m) sum of the last m g g^T (unwritten slots are
    zero); the signal is F^{-1} g, solved densely."""
    rows = []

    def precondition(g):
        m = group["ngrads"]
        rows.append(g.reshape(-1))
        window = torch.stack(rows[-m:])
        fisher = group["damp"] * torch.eye(g.numel(), dtype=F64) + window.T @ window / m
        return torch.linalg.solve(fisher, g.reshape(-1)).view_as(g)
    return precondition


def _regularized_window(group):
    """Gradient-regularized Newton (arXiv 2506.13710) on M-FAC's window, without a closure: gamma
    stays at its initial value, lambda = ||g|| / (gamma + 1e-8), H = (1/m) sum of the last m g g^T;
    the signal is (H + lambda I)^{-1} g, solved densely."""
    rows = []

    def precondition(g):
        m = group["ngrads"]
        rows.append(g.reshape(-1))
        window = torch.stack(rows[-m:])
        lam = g.norm() / (group["gamma"] + 1e-8)
        hessian = lam * torch.eye(g.numel(), dtype=F64) + window.T @ window / m
        return torch.linalg.solve(hessian, g.reshape(-1)).view_as(g)
    return precondition


def _hooks(name, group):
    hooks = {}
    if name == "normuon" and group["geometry"] == "spectral":
        hooks["scale_entries"] = _neuron_normalize(group)
    if name in ("auon", "hybrid_auon") and group["cosh_brake"]:
        hooks["step_factor"] = _cosh_brake
    if name == "mfac":
        hooks["precondition"] = _fisher_window(group)
    if name == "regnewton":
        hooks["precondition"] = _regularized_window(group)
    return hooks


#: a second parameter per role, for groups of two (the engine's grouped kernels then run)
SECOND = {"hidden": (5, 3), "conv": (2, 2, 3, 1), "embedding": (7, 4), "head": (3, 4), "vector": (6,)}


#: (preset, parameters per group): M-FAC's window spans its group, so the one-parameter reference
#: holds for its groups of one only
CASES = [(name, n) for name in sorted(PRESETS) for n in (1, 2) if not (name in ("mfac", "regnewton") and n == 2)]


@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("name, per_group", CASES)
def test_engine_step_equals_the_reference(name, per_group, maximize):
    gen = torch.Generator().manual_seed(7)
    shapes = {(role, 0): shape for role, shape in SHAPES.items()}
    if per_group == 2:
        shapes.update({(role, 1): shape for role, shape in SECOND.items()})
    params = {key: torch.randn(shape, generator=gen, dtype=F64).requires_grad_() for key, shape in shapes.items()}
    groups = [{"params": [(f"{role}.{i}", p) for (r, i), p in params.items() if r == role], "role": role,
               "ns_dtype": "float64", "maximize": maximize, "weight_decay": 0.05} for role in SHAPES]
    opt = PRESETS[name](groups, lr=0.01)  # 4 steps: LANTON's first noise measurement (step 10) is not reached
    weights = {key: p.detach().clone() for key, p in params.items()}
    states = {key: {} for key in params}
    group_of = {(g["role"], i): g for g in opt.param_groups for i in range(per_group)}
    hooks = {key: _hooks(name, group_of[key]) for key in params}
    moved = 0.0
    for _ in range(4):
        grads = {key: torch.randn(p.shape, generator=gen, dtype=F64) for key, p in params.items()}
        for key, p in params.items():
            p.grad = grads[key].clone()
        opt.step()
        for key, p in params.items():
            before = weights[key]
            weights[key] = reference_step(before, grads[key], states[key], group_of[key], **hooks[key])
            displacement = weights[key] - before
            moved = max(moved, displacement.abs().max().item())
            scale = max(displacement.abs().max().item(), 1e-300)
            err = (p.detach() - weights[key]).abs().max().item()
            assert err <= 1e-9 * scale, f"{name} {key}: engine and reference differ by {err:.3g} (step {scale:.3g})"
            weights[key] = p.detach().clone()  # the next step starts from the same point
    assert moved > 0  # every preset moves something
