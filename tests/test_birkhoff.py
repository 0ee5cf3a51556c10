"""Sinkhorn-Knopp onto the Birkhoff polytope: doubly stochastic outputs, the implicit (fixed-point)
backward against finite differences and against autograd through the unrolled iterations, the
memory claim (only P is saved), and the ``Birkhoff`` constraint."""
import math

import pytest
import torch

from steepest.constraints.birkhoff import Birkhoff, birkhoff_violation, sinkhorn, sinkhorn_vjp


def _margins(P):
    return (P.sum(-1) - 1).abs().max().item(), (P.sum(-2) - 1).abs().max().item()


@pytest.mark.parametrize("n", [2, 4, 8])
@pytest.mark.parametrize("batch", [(), (3,), (2, 5)])
@pytest.mark.parametrize("scale", [1.0, 6.0])
def test_doubly_stochastic(n, batch, scale):
    torch.manual_seed(n + 10 * len(batch))
    P = sinkhorn(torch.randn(*batch, n, n) * scale, tol=1e-5)
    assert P.shape == (*batch, n, n) and P.dtype == torch.float32
    rows, cols = _margins(P)
    assert rows <= 1e-4 and cols <= 1e-4, (rows, cols)
    assert P.min().item() >= 0


def test_mhc_recipe_is_exactly_twenty_sweeps_and_tol_finishes_the_job():
    """Without tol: exactly ``iters`` sweeps (mHC's 20), which can leave column errors even on
    unit-scale logits; with tol the result is converged and (being the same limit) close to it."""
    torch.manual_seed(0)
    L = torch.randn(64, 4, 4)
    manual = L.clone()
    for _ in range(20):
        manual = manual - torch.logsumexp(manual, -2, keepdim=True)
        manual = manual - torch.logsumexp(manual, -1, keepdim=True)
    P20 = sinkhorn(L)
    assert torch.equal(P20, manual.exp())
    P = sinkhorn(L, tol=1e-5)
    assert max(_margins(P)) <= 1e-4 < _margins(P20)[1]
    assert (P - P20).abs().max().item() <= 10 * _margins(P20)[1]


def test_orientation_columns_then_rows():
    """Each sweep normalizes columns then rows: after one sweep the rows are exact, columns not."""
    torch.manual_seed(1)
    L = torch.randn(4, 4, dtype=torch.float64) * 3
    P = sinkhorn(L, iters=1)
    rows, cols = _margins(P)
    assert rows <= 1e-14 and cols > 1e-3
    col_first = torch.exp(L - torch.logsumexp(L, 0, keepdim=True))
    expected = col_first / col_first.sum(1, keepdim=True)
    assert torch.allclose(P, expected, atol=1e-14)


def test_sinkhorn_invariances():
    """The limit depends on the logits only up to row and column shifts, and is idempotent."""
    torch.manual_seed(2)
    L = torch.randn(3, 5, 5, dtype=torch.float64) * 2
    a, b = torch.randn(3, 5, 1, dtype=torch.float64), torch.randn(3, 1, 5, dtype=torch.float64)
    P = sinkhorn(L, tol=1e-13)
    assert torch.allclose(sinkhorn(L + a + b, tol=1e-13), P, atol=1e-12)
    assert torch.allclose(sinkhorn(P.log(), tol=1e-13), P, atol=1e-12)


def test_gradcheck_implicit_float64():
    torch.manual_seed(3)
    X = torch.randn(2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: sinkhorn(x, tol=1e-12), (X,))
    # peaked logits: 20 sweeps are far from converged, the Newton polish gets there
    Y = (torch.randn(3, 3, dtype=torch.float64) * 4).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: sinkhorn(x, tol=1e-12), (Y,))


@pytest.mark.parametrize("n", [2, 4, 6])
def test_implicit_matches_unrolled(n):
    torch.manual_seed(n)
    X = torch.randn(3, n, n, dtype=torch.float64, requires_grad=True)
    G = torch.randn(3, n, n, dtype=torch.float64)
    implicit, = torch.autograd.grad((sinkhorn(X, tol=1e-13) * G).sum(), X)
    unrolled, = torch.autograd.grad((sinkhorn(X, iters=200, backward="unrolled") * G).sum(), X)
    assert (implicit - unrolled).abs().max().item() <= 1e-6
    # gradients of a doubly stochastic map: shifting a row (column) of logits changes nothing
    assert implicit.sum(-1).abs().max().item() <= 1e-10
    assert implicit.sum(-2).abs().max().item() <= 1e-10


def test_implicit_backward_saves_only_P():
    torch.manual_seed(10)
    saved = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    X = torch.randn(7, 4, 4, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        P = sinkhorn(X, iters=20)
    assert saved == [(7, 4, 4)]
    P.sum().backward()
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sinkhorn(X, iters=20, backward="unrolled")
    assert len(saved) >= 40  # every sweep is kept


def test_vjp_of_a_vertex_and_size_one():
    P = torch.ones(1, 1)
    X = torch.zeros(1, 1, requires_grad=True)
    out = sinkhorn(X, tol=1e-6)
    assert out.item() == 1.0
    out.sum().backward()
    assert X.grad.item() == 0.0
    assert sinkhorn_vjp(P, torch.ones(1, 1)).item() == 0.0


def test_half_precision_input_computes_in_float32():
    torch.manual_seed(11)
    X = torch.randn(4, 4).to(torch.bfloat16)
    P = sinkhorn(X, tol=1e-5)
    assert P.dtype == torch.float32
    assert max(_margins(P)) <= 1e-4


def test_sinkhorn_argument_errors():
    with pytest.raises(ValueError, match=r"sinkhorn needs square matrices \[\.\.\., n, n\], got shape \(3, 4\)"):
        sinkhorn(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="Invalid iters: 0; expected an integer >= 1"):
        sinkhorn(torch.zeros(3, 3), iters=0)
    with pytest.raises(ValueError, match="Invalid tol: -1"):
        sinkhorn(torch.zeros(3, 3), tol=-1)
    with pytest.raises(ValueError, match="Unknown backward 'exact'; expected one of: implicit, unrolled"):
        sinkhorn(torch.zeros(3, 3), backward="exact")
    with pytest.raises(TypeError, match="sinkhorn expects a tensor, got list"):
        sinkhorn([[0.0]])


# -- the constraint ------------------------------------------------------------------------------

def test_birkhoff_projection_is_a_diagonal_scaling():
    """project(w) = D1 w D2 (the KL projection): log P - log w = a_i + b_j."""
    torch.manual_seed(4)
    w = torch.rand(6, 6, dtype=torch.float64) + 0.05
    c = Birkhoff(tol=1e-12)
    P = c.project(w)
    assert c.check(P) <= 1e-10
    D = P.log() - w.log()
    double_difference = D - D[:, :1] - D[:1, :] + D[0, 0]
    assert double_difference.abs().max().item() <= 1e-10


def test_birkhoff_check_and_project_float32():
    torch.manual_seed(5)
    c = Birkhoff()
    assert c.name == "birkhoff" and c.min_ndim == 2
    w = torch.rand(16, 16) ** 4
    assert c.check(w) > 0.1
    P = c.project(w)
    assert P.dtype == torch.float32 and c.check(P) <= 1e-5
    c.project_(w)
    assert c.check(w) <= 1e-5
    # violations: row / column sums and negative entries
    assert c.check(torch.eye(3)) == 0.0
    bad = torch.eye(3)
    bad[0, 1] = -0.25
    assert math.isclose(c.check(bad), 0.25, rel_tol=1e-6)
    assert birkhoff_violation(torch.full((4, 4), 0.25)) <= 1e-7


def test_birkhoff_clamps_nonpositive_entries():
    torch.manual_seed(12)
    c = Birkhoff()
    w = torch.tensor([[1.0, 0.0, -2.0], [0.5, 1.0, 0.0], [0.0, -1.0, 1.0]])
    P = c.project(w)
    assert torch.isfinite(P).all() and c.check(P) <= 1e-5
    uniform = c.project(-torch.ones(4, 4))
    assert torch.allclose(uniform, torch.full((4, 4), 0.25), atol=1e-6)
    bf = c.project(torch.rand(8, 8).to(torch.bfloat16) + 0.1)
    assert bf.dtype == torch.bfloat16


def test_birkhoff_errors():
    torch.manual_seed(13)
    c = Birkhoff()
    with pytest.raises(ValueError, match="Constraint 'birkhoff' needs a square matrix, got 3 x 4"):
        c.project(torch.rand(3, 4))
    with pytest.raises(ValueError, match="Constraint 'birkhoff' needs a square matrix, got 3 x 4"):
        c.check(torch.rand(3, 4))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        c.project(torch.rand(4))
    with pytest.raises(ValueError, match="Invalid iters: 0; expected an integer >= 1"):
        Birkhoff(iters=0)
    with pytest.raises(ValueError, match="Invalid tol: 0"):
        Birkhoff(tol=0)
    # conv-shaped weights are viewed as shape[0] x prod(shape[1:])
    P = c.project(torch.rand(4, 1, 2, 2) + 0.1)
    assert P.shape == (4, 1, 2, 2) and c.check(P) <= 1e-5
