"""Grassmann Class Representation (arXiv 2308.01547) and its geodesic momentum step (Edelman-Arias-Smith 1998)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from steepest.nn.grassmann import GrassmannClassifier, GrassmannSGD, horizontal_projection, qr_orthonormalize

from state_dict_checks import assert_state_dicts_equal


def _orth_err(s):
    s = s.detach().double()
    return (s.mT @ s - torch.eye(s.shape[-1], dtype=s.dtype)).abs().amax().item()


def _random_orthogonal(k, gen, dtype=torch.float32):
    return qr_orthonormalize(torch.randn(k, k, generator=gen, dtype=torch.float64)).to(dtype)


# ----------------------------------------------------------------------------- classifier

def test_shapes_init_and_generator_reproducibility():
    gen = torch.Generator().manual_seed(0)
    head = GrassmannClassifier(16, 5, k=3, scale=10.0, generator=gen)
    assert head.bases.shape == (5, 16, 3)
    assert [n for n, _ in head.named_parameters()] == ["bases"]
    assert head.orthonormality_error() < 1e-6
    assert head(torch.randn(7, 16)).shape == (7, 5)
    assert head(torch.randn(2, 4, 16)).shape == (2, 4, 5)
    again = GrassmannClassifier(16, 5, k=3, scale=10.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(head.bases, again.bases)
    # The global RNG path, like nn.Linear.
    torch.manual_seed(3)
    a = GrassmannClassifier(8, 2, k=2)
    torch.manual_seed(3)
    b = GrassmannClassifier(8, 2, k=2)
    assert torch.equal(a.bases, b.bases)
    # Defaults are the paper's.
    assert (a.k, a.scale) == (2, 25.0) and GrassmannClassifier(8, 2).k == 8
    # Sign-fixed QR: R has a nonnegative diagonal, so an orthonormal input comes back unchanged.
    q = qr_orthonormalize(head.bases.detach())
    torch.testing.assert_close(q, head.bases.detach(), atol=1e-6, rtol=0)


def test_validation_messages():
    with pytest.raises(ValueError, match=r"^k must be <= in_features, got k=9 and in_features=8$"):
        GrassmannClassifier(8, 3, k=9)
    for name, args in [("in_features", (0, 3)), ("num_classes", (8, -1)), ("k", (8, 3, 0)),
                       ("in_features", (8.0, 3)), ("k", (8, 3, True))]:
        with pytest.raises(ValueError, match=rf"^{name} must be a positive int, got "):
            GrassmannClassifier(*args)
    with pytest.raises(ValueError, match=r"^scale must be a finite number > 0, got 0.0$"):
        GrassmannClassifier(8, 3, k=2, scale=0.0)


def test_logits_match_direct_formula_and_are_basis_invariant():
    gen = torch.Generator().manual_seed(1)
    head = GrassmannClassifier(12, 4, k=3, scale=20.0, generator=gen)
    x = torch.randn(6, 12, generator=gen)
    logits = head(x)
    for b in range(6):
        x_hat = x[b] / x[b].norm()
        for c in range(4):
            direct = 20.0 * torch.linalg.vector_norm(head.bases[c].T @ x_hat)
            torch.testing.assert_close(logits[b, c], direct, atol=1e-5, rtol=1e-5)
    assert (logits >= 0).all() and (logits <= 20.0 + 1e-4).all()
    # Scale invariance of the input (L2 normalisation).
    torch.testing.assert_close(head(3.7 * x), logits, atol=1e-5, rtol=1e-5)
    # S_c -> S_c R_c for random orthogonal R_c leaves every logit unchanged.
    with torch.no_grad():
        rot = torch.stack([_random_orthogonal(3, gen) for _ in range(4)])
        head.bases.copy_(head.bases @ rot)
    assert head.orthonormality_error() < 1e-5
    torch.testing.assert_close(head(x), logits, atol=1e-5, rtol=1e-5)
    # A vector inside class 2's subspace gets the maximal logit for that class; zero input gives 0.
    inside = head.bases[2].detach() @ torch.randn(3, generator=gen)
    torch.testing.assert_close(head(inside)[2], torch.tensor(20.0), atol=1e-4, rtol=0)
    assert torch.equal(head(torch.zeros(2, 12)), torch.zeros(2, 4))


# ----------------------------------------------------------------------------- optimizer

def _fresh_bases(shape=(10, 32, 4), seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return nn.Parameter(qr_orthonormalize(torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype))


def _random_steps(p, opt, steps, seed=5, scale=1.0, check=None):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        p.grad = scale * torch.randn(p.shape, generator=gen, dtype=p.dtype)
        opt.step()
        if check is not None:
            check()


def test_optimizer_validation_messages_and_param_shapes():
    p = _fresh_bases((3, 8, 2))
    with pytest.raises(ValueError, match=r"^lr must be a finite number >= 0, got -0.1$"):
        GrassmannSGD([p], lr=-0.1)
    with pytest.raises(ValueError, match=r"^momentum must be in \[0, 1\), got 1.0$"):
        GrassmannSGD([p], lr=0.1, momentum=1.0)
    with pytest.raises(ValueError, match=r"^momentum must be in \[0, 1\), got -0.5$"):
        GrassmannSGD([p], lr=0.1, momentum=-0.5)
    with pytest.raises(ValueError, match=r"^reorth_every must be an int >= 1, got 0$"):
        GrassmannSGD([p], lr=0.1, reorth_every=0)
    with pytest.raises(ValueError, match=r"^reorth_every must be an int >= 1, got 2.0$"):
        GrassmannSGD([p], lr=0.1, reorth_every=2.0)
    with pytest.raises(ValueError, match=r"^GrassmannSGD parameters must have shape \(\.\.\., d, k\) with k <= d"):
        GrassmannSGD([nn.Parameter(torch.zeros(3, 5))], lr=0.1)
    with pytest.raises(ValueError, match=r"^GrassmannSGD parameters must have shape"):
        GrassmannSGD([nn.Parameter(torch.zeros(5))], lr=0.1)
    opt = GrassmannSGD([p], lr=0.1)
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["reorth_every"] == 1
    with pytest.raises(ValueError, match=r"^momentum must be in"):
        opt.add_param_group({"params": [_fresh_bases((2, 8, 2))], "momentum": 2.0})


def test_grad_none_skipped_zero_grad_is_identity_and_scheduler_sets_lr():
    torch.manual_seed(10)
    p, q = _fresh_bases((2, 8, 3), seed=1), _fresh_bases((2, 8, 3), seed=2)
    p0, q0 = p.detach().clone(), q.detach().clone()
    opt = GrassmannSGD([p, q], lr=0.3)
    p.grad = torch.randn(p.shape)
    opt.step()
    assert torch.equal(q, q0) and q not in opt.state
    assert not torch.equal(p, p0)
    # A gradient that lies in span(S) (the vertical space) has zero horizontal part: no move.
    r = _fresh_bases((2, 8, 3), seed=3)
    r0 = r.detach().clone()
    opt_r = GrassmannSGD([r], lr=0.3, momentum=0.0, reorth_every=1000)
    r.grad = r0 @ torch.randn(2, 3, 3)
    opt_r.step()
    torch.testing.assert_close(r.detach(), r0, atol=1e-6, rtol=0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    # closure is evaluated with grad enabled and its value returned.
    loss = opt.step(lambda: torch.tensor(2.5, requires_grad=torch.is_grad_enabled()))
    assert loss.item() == 2.5 and loss.requires_grad
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.15)


def test_tangent_projection_is_horizontal():
    s = _fresh_bases((6, 20, 5), seed=4).detach()
    v = torch.randn(6, 20, 5, generator=torch.Generator().manual_seed(9))
    xi = horizontal_projection(s, v)
    assert (s.mT @ xi).abs().amax().item() < 1e-6
    # Idempotent, and the removed part lies in span(S).
    torch.testing.assert_close(horizontal_projection(s, xi), xi, atol=1e-6, rtol=0)
    rest = v - xi
    torch.testing.assert_close(s @ (s.mT @ rest), rest, atol=1e-5, rtol=0)


def test_geodesic_keeps_orthonormality_without_and_with_reorth():
    p = _fresh_bases(seed=0)
    opt = GrassmannSGD([p], lr=0.2, momentum=0.9, reorth_every=1000)
    start = p.detach().clone()
    _random_steps(p, opt, 50)
    assert opt.state[p]["step"] == 50
    assert (p.detach() - start).abs().amax() > 0.1  # it moved a lot, yet
    assert _orth_err(p) < 1e-5  # the geodesic alone stays on the manifold (no QR ran)
    q = _fresh_bases(seed=0)
    opt_q = GrassmannSGD([q], lr=0.2, momentum=0.9, reorth_every=1)
    errs = []
    _random_steps(q, opt_q, 50, check=lambda: errs.append(_orth_err(q)))
    assert max(errs) < 1e-6


def test_geodesic_matches_closed_form_rotation_for_k_equal_one():
    # For k = 1 the geodesic rotates the unit vector s towards -xi by the angle lr * ||xi||.
    s = _fresh_bases((1, 6, 1), seed=7, dtype=torch.float64)
    s0 = s.detach().clone()
    g = torch.randn(1, 6, 1, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    xi = horizontal_projection(s0, g)
    lr = 0.37
    opt = GrassmannSGD([s], lr=lr, momentum=0.0, reorth_every=1000)
    s.grad = g.clone()
    opt.step()
    theta = lr * xi.norm()
    expected = s0 * torch.cos(theta) - xi / xi.norm() * torch.sin(theta)
    torch.testing.assert_close(s.detach(), expected, atol=1e-12, rtol=0)


def test_small_step_decreases_loss_to_first_order():
    # f(S) = -sum_c ||S_c^T y||^2; the step must decrease it, by lr * ||xi||^2 to first order.
    gen = torch.Generator().manual_seed(11)
    p = _fresh_bases((3, 16, 4), seed=11, dtype=torch.float64)
    y = torch.randn(16, generator=gen, dtype=torch.float64)

    def f():
        return -(p.mT @ y).pow(2).sum()

    loss0 = f()
    loss0.backward()
    xi = horizontal_projection(p.detach(), p.grad)
    predicted = -xi.pow(2).sum()
    for lr in (1e-3, 1e-4):
        q = nn.Parameter(p.detach().clone())
        q.grad = p.grad.clone()
        GrassmannSGD([q], lr=lr, momentum=0.9).step()
        change = -(q.detach().mT @ y).pow(2).sum() - loss0.detach()
        assert change < 0
        assert (change / (lr * predicted)).item() == pytest.approx(1.0, abs=20 * lr)


def test_step_depends_only_on_the_subspace():
    # Replacing S by S R (and the gradient of a basis-invariant loss by g R) gives the same new subspace.
    gen = torch.Generator().manual_seed(12)
    s = _fresh_bases((2, 10, 3), seed=12, dtype=torch.float64)
    rot = torch.stack([_random_orthogonal(3, gen, torch.float64) for _ in range(2)])
    sr = nn.Parameter(s.detach() @ rot)
    g = torch.randn(2, 10, 3, generator=gen, dtype=torch.float64)
    s.grad, sr.grad = g.clone(), g @ rot
    GrassmannSGD([s], lr=0.5, momentum=0.0).step()
    GrassmannSGD([sr], lr=0.5, momentum=0.0).step()
    proj_a, proj_b = s.detach() @ s.detach().mT, sr.detach() @ sr.detach().mT
    torch.testing.assert_close(proj_a, proj_b, atol=1e-10, rtol=0)


def test_state_dict_round_trip_is_bit_identical():
    p = _fresh_bases((4, 16, 3), seed=13)
    opt = GrassmannSGD([p], lr=0.15, momentum=0.8, reorth_every=3)
    _random_steps(p, opt, 4, seed=21)
    saved_param, saved_state = p.detach().clone(), copy.deepcopy(opt.state_dict())
    assert saved_state["state"][0]["step"] == 4
    q = nn.Parameter(saved_param.clone())
    opt_q = GrassmannSGD([q], lr=1.0, momentum=0.0, reorth_every=1)  # hyperparameters come from the state
    opt_q.load_state_dict(saved_state)
    assert opt_q.param_groups[0]["reorth_every"] == 3 and opt_q.state[q]["step"] == 4
    assert_state_dicts_equal(opt.state_dict(), opt_q.state_dict())
    gen_p, gen_q = torch.Generator().manual_seed(22), torch.Generator().manual_seed(22)
    for _ in range(5):  # past the next re-orthonormalization (step 6), checked after every step
        p.grad = torch.randn(p.shape, generator=gen_p, dtype=p.dtype)
        q.grad = torch.randn(q.shape, generator=gen_q, dtype=q.dtype)
        opt.step()
        opt_q.step()
        assert torch.equal(p, q)
        assert_state_dicts_equal(opt.state_dict(), opt_q.state_dict())
    assert torch.equal(opt.state[p]["momentum_buffer"], opt_q.state[q]["momentum_buffer"])


# ----------------------------------------------------------------------------- training

DIGITS_THRESHOLD = 0.87  # measured 0.922 / 0.906 / 0.900 for seeds 0 / 1 / 2 (0.900-0.931 over seeds 0-7)


def _digits():
    datasets = pytest.importorskip("sklearn.datasets")
    x, y = datasets.load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    x_tr, y_tr, x_te, y_te = x[:1437], y[:1437], x[1437:], y[1437:]
    mean, std = x_tr.mean(0), x_tr.std(0).clamp_min(1e-6)  # constant pixels: std 0 -> no scaling
    return (x_tr - mean) / std, y_tr, (x_te - mean) / std, y_te


def _train_digits(seed, steps=150):
    x_tr, y_tr, x_te, y_te = _digits()
    torch.manual_seed(seed)
    body = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())
    head = GrassmannClassifier(32, 10, k=4, scale=16.0, generator=torch.Generator().manual_seed(seed))
    opt_body = torch.optim.AdamW(body.parameters(), lr=3e-3)
    opt_head = GrassmannSGD([head.bases], lr=0.1, momentum=0.9)
    first_loss = None
    for _ in range(steps):  # full batch
        loss = F.cross_entropy(head(body(x_tr)), y_tr)
        first_loss = loss.item() if first_loss is None else first_loss
        opt_body.zero_grad()
        opt_head.zero_grad()
        loss.backward()
        opt_body.step()
        opt_head.step()
        assert head.orthonormality_error() < 1e-5
    with torch.no_grad():
        acc = (head(body(x_te)).argmax(-1) == y_te).float().mean().item()
    return acc, first_loss, loss.item()


def test_digits_training_reaches_accuracy_and_stays_orthonormal():
    acc, first_loss, last_loss = _train_digits(seed=0)
    assert last_loss < 0.1 * first_loss
    assert acc >= DIGITS_THRESHOLD, acc
