"""steepest.Muon against torch.optim.Muon and torch.optim.AdamW (references, not "loss goes down").

Updates are compared as displacements ``W_t - W_0`` with an error relative to the displacement: an
lr of a few hundredths moves the weights by about 1% of their size in a few steps, so an error
relative to the weights would pass with any update at all (even none)."""
import copy
import inspect
import math
import re

import pytest
import torch
import torch.optim._muon as torch_muon
from torch import nn

import steepest
from steepest.polar import SCHEDULES

SHAPES = [(8, 16), (24, 8), (16, 16), (5, 7)]


def _step_both(ref, ours, opt_ref, opt_ours, gen, steps):
    """Feed both optimizers the same random gradients for ``steps`` steps."""
    for _ in range(steps):
        grads = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in ref]
        for p, q, g in zip(ref, ours, grads):
            p.grad = g.clone()
            q.grad = g.clone()
        opt_ref.step()
        opt_ours.step()


def _run_pair(ref_cls, ref_kwargs, ours_kwargs, shapes=SHAPES, steps=10, seed=0):
    """Both optimizers from the same start with the same gradients: ``(start, ref, ours)``."""
    gen = torch.Generator().manual_seed(seed)
    ref = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
    start = [p.detach().clone() for p in ref]
    ours = [p.detach().clone().requires_grad_() for p in ref]
    opt_ref = ref_cls(ref, **ref_kwargs)
    opt_ours = steepest.Muon([{"params": ours, "role": "hidden"}], **ours_kwargs)
    _step_both(ref, ours, opt_ref, opt_ours, gen, steps)
    return start, ref, ours


def _max_rel(a, b):
    return ((a - b).abs().max() / a.abs().max()).item()


def _displacement_error(start, a, b):
    """``max |(b - W0) - (a - W0)| / max |a - W0|``: the error of ``b``'s update relative to ``a``'s
    update (``a`` must have moved)."""
    da, db = a.detach() - start, b.detach() - start
    assert da.abs().max() > 0, "the reference did not move: the comparison would say nothing"
    return ((db - da).abs().max() / da.abs().max()).item()


@pytest.mark.parametrize("adjust", [None, "original", "match_rms_adamw"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_matches_torch_muon_for_ten_steps(adjust, nesterov):
    """Same coefficients, steps and dtype (bfloat16, torch's fixed choice): within 1e-6 relative."""
    start, ref, ours = _run_pair(
        torch.optim.Muon,
        dict(lr=0.02, weight_decay=0.1, momentum=0.9, nesterov=nesterov, adjust_lr_fn=adjust),
        dict(lr=0.02, weight_decay=0.1, momentum=0.9, nesterov=nesterov, adjust_lr=adjust or "original",
             ns="keller", ns_steps=5, ns_dtype="bfloat16"),
    )
    for w0, a, b in zip(start, ref, ours):
        assert _max_rel(a, b) <= 1e-6
        assert _displacement_error(w0, a, b) <= 1e-6


# torch.optim.Muon's defaults that steepest.Muon shares (lr and weight_decay differ on purpose: 0.02
# and 0, Keller Jordan's reference, against torch's 1e-3 and 0.1; see steepest.Muon's docstring).
TORCH_DEFAULTS = {name: p.default for name, p in inspect.signature(torch.optim.Muon).parameters.items()
                  if p.default is not inspect.Parameter.empty}
#: steepest's documented defaults where they differ from torch's, passed to torch.optim.Muon.
DOCUMENTED = dict(lr=0.02, weight_decay=0.0)


def _default_hidden_group() -> dict:
    """The settings a hidden matrix gets from ``steepest.Muon`` with no arguments."""
    return steepest.Muon([torch.zeros(4, 3, requires_grad=True)]).param_groups[0]


def test_defaults_are_torch_muons():
    """Momentum, Nesterov, the Newton-Schulz coefficients, step count and eps, and the shape factor
    are torch.optim.Muon's; lr and weight decay are the documented exceptions."""
    group = _default_hidden_group()
    assert group["role"] == "hidden" and group["geometry"] == "spectral" and group["transform"] == "momentum"
    assert {k: group[k] for k in DOCUMENTED} == DOCUMENTED
    assert group["momentum"] == TORCH_DEFAULTS["momentum"] == 0.95
    assert group["nesterov"] is TORCH_DEFAULTS["nesterov"] is True
    keller = SCHEDULES[group["ns"]]
    assert group["ns_steps"] is None and keller.default_steps == TORCH_DEFAULTS["ns_steps"]
    assert keller.coefficients_for(keller.default_steps) == [TORCH_DEFAULTS["ns_coefficients"]] * 5
    assert keller.input_scale == 1.0
    assert group["ns_eps"] == TORCH_DEFAULTS["eps"]
    assert group["shape_scale"] == "original" and TORCH_DEFAULTS["adjust_lr_fn"] is None  # torch: None = original
    # ... and they act as torch's: only the iteration dtype (torch's fixed bfloat16) is named.
    start, ref, ours = _run_pair(torch.optim.Muon, DOCUMENTED, dict(ns_dtype="bfloat16"))
    for w0, a, b in zip(start, ref, ours):
        assert _displacement_error(w0, a, b) <= 1e-6


def _newton_schulz_float32(grad, ns_coefficients, ns_steps, eps):
    """torch.optim.Muon's Newton-Schulz iteration (torch/optim/_muon.py) in float32 instead of bfloat16."""
    a, b, c = ns_coefficients
    x = grad.float()
    if grad.size(0) > grad.size(1):
        x = x.T
    x = x.div(x.norm().clamp(min=eps))
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if grad.size(0) > grad.size(1) else x


def test_float32_default_tracks_torch_muon_closely(monkeypatch):
    """The CPU default (float32 iteration) is torch.optim.Muon's algorithm at torch's defaults (but
    the documented lr and weight decay) with its iteration run in float32; it differs from torch's
    bfloat16 iteration only by rounding."""
    assert _default_hidden_group()["ns_dtype"] == "auto"
    start, ref16, ours = _run_pair(torch.optim.Muon, DOCUMENTED, {})
    for a, b in zip(ref16, ours):
        assert _max_rel(a, b) < 2e-2
        assert not torch.equal(a, b)  # really a different dtype path
    for w0, a, b in zip(start, ref16, ours):
        assert _displacement_error(w0, a, b) < 3e-2  # measured 0.016: bfloat16 rounding of the update
    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz", _newton_schulz_float32)
    start, ref32, ours = _run_pair(torch.optim.Muon, DOCUMENTED, {})
    for w0, a, b in zip(start, ref32, ours):
        assert _displacement_error(w0, a, b) <= 1e-6  # measured 0 (the same float32 op sequence)


def test_same_shape_matrices_are_batched_and_match_single_calls(monkeypatch):
    import steepest.geometry.spectral as spectral

    calls = []
    real = spectral.polar

    def counting(G, *args, **kwargs):
        calls.append(tuple(G.shape))
        return real(G, *args, **kwargs)

    shapes = [(16, 32)] * 4 + [(32, 16)]
    kwargs = dict(lr=0.02, ns_dtype="float32")
    with monkeypatch.context() as patch:
        patch.setattr(spectral, "polar", counting)
        start, ref, ours = _run_pair(torch.optim.Muon, dict(lr=0.02, weight_decay=0.0), kwargs, shapes=shapes,
                                     steps=3)
    assert calls.count((4, 16, 32)) == 3 and calls.count((32, 16)) == 3 and len(calls) == 6
    # the same steps with one optimizer per matrix (nothing to batch): single polar calls
    singles = [p.detach().clone().requires_grad_() for p in start]
    opts = [steepest.Muon([{"params": [p], "role": "hidden"}], **kwargs) for p in singles]
    gen = torch.Generator().manual_seed(0)
    for shape in shapes:  # the start drawn by _run_pair
        torch.randn(shape, generator=gen)
    for _ in range(3):  # the gradients _run_pair fed, in its order
        for p in singles:
            p.grad = torch.randn(p.shape, generator=gen)
        for opt in opts:
            opt.step()
    for w0, single, batched in zip(start, singles, ours):
        assert _displacement_error(w0, single, batched) <= 1e-6  # measured 0
    # batched float32 path vs torch's bfloat16 single calls: rounding-level agreement only
    for w0, a, b in zip(start, ref, ours):
        assert _max_rel(a, b) < 2e-2
        assert _displacement_error(w0, a, b) < 3e-2  # measured 0.012


def test_conv_weights_are_flattened_with_fan_in_of_the_flattened_view():
    torch.manual_seed(20)
    w = torch.randn(8, 2, 3, 3, requires_grad=True)
    g = torch.randn(8, 2, 3, 3)
    w.grad = g
    before = w.detach().clone()
    opt = steepest.Muon([w], lr=0.1, momentum=0.0, ns="svd")
    opt.step()
    expected_dir = steepest.polar.polar(g.reshape(8, 18), ns="svd").reshape(8, 2, 3, 3)
    # shape factor sqrt(max(1, 8/18)) = 1 (the (out, in*k*k) view, not the kernel dims)
    torch.testing.assert_close(w.detach(), before - 0.1 * expected_dir, rtol=0, atol=1e-6)


def test_fallback_groups_match_torch_adamw():
    gen = torch.Generator().manual_seed(3)
    shapes = [(10,), (6, 4), ()]
    ref = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
    ours = [p.detach().clone().requires_grad_() for p in ref]
    opt_ref = torch.optim.AdamW(ref, lr=3e-3, betas=(0.8, 0.95), eps=1e-8, weight_decay=0.05, foreach=False)
    opt_ours = steepest.Muon([{"params": ours, "role": "embedding"}], adamw_lr=3e-3, adamw_betas=(0.8, 0.95),
                             adamw_eps=1e-8, adamw_weight_decay=0.05)
    _step_both(ref, ours, opt_ref, opt_ours, gen, 20)
    for a, b in zip(ref, ours):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


class _Tables(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok_emb = nn.Embedding(12, 8)
        self.pos_emb = nn.Embedding(6, 8)
        self.fc = nn.Linear(8, 8, bias=False)
        self.lm_head = nn.Linear(8, 12, bias=False)


@pytest.mark.parametrize("preset,default", [("muon", 3e-3), ("normuon", None), ("auon", None),
                                            ("hybrid_auon", None)])
def test_embedding_tables_take_embedding_lr(preset, default):
    """Every AdamW-fallback preset takes embedding_lr; None gives the tables adamw_lr, as before 0.11."""
    lrs = {g["role"]: g["lr"] for g in steepest.for_model(_Tables(), preset, adamw_lr=5e-3).param_groups}
    assert lrs["head"] == 5e-3 and lrs["embedding"] == (5e-3 if default is None else default)
    lrs = {g["role"]: g["lr"] for g in steepest.for_model(_Tables(), preset, adamw_lr=5e-3, embedding_lr=2e-4).param_groups}
    assert lrs["embedding"] == 2e-4 and lrs["head"] == 5e-3
    lrs = {g["role"]: g["lr"] for g in steepest.for_model(_Tables(), preset, adamw_lr=5e-3, embedding_lr=None).param_groups}
    assert lrs["embedding"] == lrs["head"] == 5e-3
    rows = {r["parameter"]: r for r in steepest.explain_rows(steepest.for_model(_Tables(), preset, embedding_lr=2e-4))}
    assert rows["pos_emb.weight"]["lr"] == rows["tok_emb.weight"]["lr"] == 2e-4


def test_embedding_lr_is_checked_without_embeddings():
    """A model without tables never builds the embedding group, so the value is checked at once."""
    with pytest.raises(ValueError, match=re.escape("Invalid learning rate: -0.001")):
        steepest.Muon(nn.Linear(4, 4).parameters(), embedding_lr=-1e-3)
    with pytest.raises(TypeError, match=re.escape("Invalid type for lr: expected a real number, got str")):
        steepest.AuON(nn.Linear(4, 4).parameters(), embedding_lr="big")


def test_embedding_lr_survives_a_checkpoint():
    """The embedding group's lr travels with the state dict, so a resumed run keeps it."""
    model = _Tables()
    opt = steepest.for_model(model, "muon", embedding_lr=7e-4)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    fresh = steepest.for_model(model, "muon", embedding_lr=None)
    fresh.load_state_dict(opt.state_dict())
    assert {g["role"]: g["lr"] for g in fresh.param_groups}["embedding"] == 7e-4
    clone = copy.deepcopy(opt)  # a pickled optimizer keeps its recipes: new tables get the same lr
    clone.add_param_group({"params": [nn.Parameter(torch.zeros(3, 8))], "param_names": ["extra"], "role": "embedding"})
    assert clone.param_groups[-1]["lr"] == 7e-4


def test_unlabelled_parameters_are_split_by_shape():
    torch.manual_seed(21)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Conv1d(8, 8, 3))
    opt = steepest.Muon(model.parameters())
    roles = {g["role"]: len(g["params"]) for g in opt.param_groups}
    assert roles == {"hidden": 1, "vector": 4, "conv": 1}
    kinds = {g["role"]: (g["geometry"], g["transform"]) for g in opt.param_groups}
    assert kinds["hidden"] == ("spectral", "momentum") and kinds["conv"] == ("spectral", "momentum")
    assert kinds["vector"] == ("identity", "adam")


def test_match_rms_adamw_gives_update_rms_0_2():
    torch.manual_seed(22)
    w = torch.zeros(64, 256, requires_grad=True)
    w.grad = torch.randn(64, 256)
    opt = steepest.Muon([w], lr=1.0, momentum=0.0, adjust_lr="match_rms_adamw", ns="svd")
    opt.step()
    rms = w.detach().pow(2).mean().sqrt().item()
    assert math.isclose(rms, 0.2, rel_tol=1e-5)


def test_adjust_lr_unknown_raises():
    with pytest.raises(ValueError, match="Unknown adjust_lr 'nope'; expected one of: original, match_rms_adamw, rms_to_rms, none"):
        steepest.Muon([torch.zeros(2, 2, requires_grad=True)], adjust_lr="nope")
