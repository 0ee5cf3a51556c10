"""steepest.Scion against the reference semantics of Scion (arXiv 2502.07529; scion.py of
github.com/LIONS-EPFL/scion), written out here with exact polar factors."""
import math

import pytest
import torch
from torch import nn

import steepest


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(11, 8)
        self.fc = nn.Linear(8, 12)
        self.norm = nn.LayerNorm(12)
        self.lm_head = nn.Linear(12, 11, bias=False)

    def forward(self, idx):
        return self.lm_head(self.norm(torch.relu(self.fc(self.tok(idx)))))


def _reference_direction(name, g):
    """Scion's positive direction per role, times the role's radius (embedding 1, hidden 3, head 10, vector 1)."""
    if name == "tok.weight":  # ColNorm(transpose=True): unit-RMS rows
        return 1.0 * g / (g.norm(dim=1, keepdim=True) / math.sqrt(g.shape[1])).clamp(min=1e-30)
    if name == "fc.weight":  # Spectral(normalized): sqrt(d_out/d_in) * U V^T
        U, S, Vh = torch.linalg.svd(g, full_matrices=False)
        return 3.0 * math.sqrt(g.shape[0] / g.shape[1]) * (U @ Vh)
    if name == "lm_head.weight":  # Sign(normalized): sign / d_in
        return 10.0 * torch.sign(g) / g.shape[1]
    return g / (g.pow(2).mean().sqrt())  # BiasRMS


@pytest.mark.parametrize("constrained", [False, True])
def test_matches_reference_scion_update(constrained):
    torch.manual_seed(0)
    model = Tiny()
    ref = {n: p.detach().clone().double() for n, p in model.named_parameters()}
    model = model.double()
    opt = steepest.for_model(model, "scion", lr=0.05, momentum=0.9, constrained=constrained, ns="svd",
                             ns_dtype="float64")
    alpha = 1 - 0.9  # the reference code's "momentum"
    bufs = {n: torch.zeros_like(p) for n, p in ref.items()}
    idx = torch.randint(0, 11, (4, 6))
    target = torch.randint(0, 11, (4, 6))
    for _ in range(5):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(idx).flatten(0, 1), target.flatten())
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        opt.step()
        for n in ref:
            bufs[n] = (1 - alpha) * bufs[n] + alpha * grads[n]
            if constrained:
                ref[n] = (1 - 0.05) * ref[n]
            ref[n] = ref[n] - 0.05 * _reference_direction(n, bufs[n])
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), ref[n], rtol=1e-9, atol=1e-10, msg=n)
        ref = {n: p.detach().clone() for n, p in model.named_parameters()}


def test_constrained_iterates_stay_in_the_ball():
    """SCG with init_params_(): every hidden matrix keeps ||W||_2 <= radius * sqrt(m/n)."""
    torch.manual_seed(1)
    w = nn.Parameter(torch.empty(16, 32))
    h = nn.Parameter(torch.empty(10, 16))
    opt = steepest.Scion([{"params": [w], "role": "hidden"}, {"params": [h], "role": "head"}],
                         lr=0.1, constrained=True, ns="svd")
    opt.init_params_()
    bound = 3.0 * math.sqrt(16 / 32)
    assert torch.linalg.matrix_norm(w.detach(), ord=2).item() == pytest.approx(bound, rel=1e-5)
    assert h.detach().abs().max().item() == pytest.approx(10.0 / 16, rel=1e-6)  # sign ball: radius/fan_in
    for _ in range(60):
        w.grad = torch.randn_like(w) * 100
        h.grad = torch.randn_like(h) * 100
        opt.step()
        assert torch.linalg.matrix_norm(w.detach(), ord=2).item() <= bound * (1 + 1e-5)
        assert h.detach().abs().max().item() <= 10.0 / 16 * (1 + 1e-6)


def test_init_rules():
    torch.manual_seed(2)
    emb = nn.Parameter(torch.empty(7, 9))
    hid = nn.Parameter(torch.empty(12, 6))
    opt = steepest.Scion([{"params": [emb], "role": "embedding"}, {"params": [hid], "role": "hidden"}],
                         embedding_radius=2.0)
    opt.init_params_()
    row_rms = emb.detach().pow(2).mean(dim=1).sqrt()
    torch.testing.assert_close(row_rms, torch.full((7,), 2.0), rtol=1e-5, atol=0)
    sv = torch.linalg.svdvals(hid.detach())
    torch.testing.assert_close(sv, torch.full((6,), 3.0 * math.sqrt(12 / 6)), rtol=1e-5, atol=0)


def test_radius_validation():
    with pytest.raises(ValueError, match=r"Invalid head_radius value: 0.0; expected a positive number"):
        steepest.Scion([torch.zeros(2, 2, requires_grad=True)], head_radius=0.0)
    with pytest.raises(TypeError, match=r"Invalid type for constrained: expected bool, got str"):
        steepest.Scion([torch.zeros(2, 2, requires_grad=True)], constrained="yes")
