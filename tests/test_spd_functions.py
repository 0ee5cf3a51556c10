"""steepest.spd.functions: symmetric matrix functions and their Daleckii-Krein backward (tie rule included)."""
from __future__ import annotations

import math
import re

import pytest
import torch

from steepest.spd import expm, funcm_derivative, invsqrtm, logm, polar, powm, sqrtm, sym, sym_funcm, tie_tolerance

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64


def rotation(n: int, seed: int, batch: tuple[int, ...] = ()) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(*batch, n, n, dtype=F64, generator=g))
    return Q


def with_spectrum(l: torch.Tensor, seed: int = 0, batch: tuple[int, ...] = ()) -> torch.Tensor:
    """``Q diag(l) Q^T`` for a random rotation ``Q``."""
    Q = rotation(l.shape[-1], seed, batch)
    return sym((Q * l.to(F64)) @ Q.mT)


def spd(n: int = 4, cond: float = 10.0, seed: int = 0, batch: tuple[int, ...] = ()) -> torch.Tensor:
    return with_spectrum(torch.logspace(0, math.log10(cond), n, dtype=F64), seed, batch)


REPEATED = with_spectrum(torch.tensor([1.0, 1.0, 2.0]), seed=3)  # diag(1, 1, 2), rotated

FUNCTIONS = {  # name -> (matrix function, scalar function, scalar derivative)
    "sqrtm": (sqrtm, torch.sqrt, lambda x: 0.5 / torch.sqrt(x)),
    "invsqrtm": (invsqrtm, torch.rsqrt, lambda x: -0.5 * x ** -1.5),
    "logm": (logm, torch.log, torch.reciprocal),
    "expm": (expm, torch.exp, torch.exp),
    "powm(0.3)": (lambda X: powm(X, 0.3), lambda x: x ** 0.3, lambda x: 0.3 * x ** -0.7),
    "powm(-1.5)": (lambda X: powm(X, -1.5), lambda x: x ** -1.5, lambda x: -1.5 * x ** -2.5),
    "sym_funcm(x^3)": (lambda X: sym_funcm(X, lambda x: x ** 3, lambda x: 3 * x ** 2),
                       lambda x: x ** 3, lambda x: 3 * x ** 2),
}


# -- forward ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
def test_identities_batched(batch):
    X = spd(4, cond=100.0, seed=1, batch=batch)
    eye = torch.eye(4, dtype=F64).expand_as(X)
    assert sqrtm(X).shape == X.shape == logm(X).shape
    torch.testing.assert_close(expm(logm(X)), X, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sqrtm(X) @ sqrtm(X), X, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(invsqrtm(X) @ X @ invsqrtm(X), eye, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(powm(X, 0.7) @ powm(X, -1.9), powm(X, -1.2), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(powm(X, 1.0), X, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(powm(X, 0), eye)


@pytest.mark.filterwarnings("ignore:logm result may be inaccurate")
def test_against_scipy():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    X = spd(5, cond=1e3, seed=2)
    torch.testing.assert_close(sqrtm(X), torch.from_numpy(scipy_linalg.sqrtm(X.numpy()).real), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logm(X), torch.from_numpy(scipy_linalg.logm(X.numpy()).real), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(expm(logm(X) / 4), torch.from_numpy(scipy_linalg.expm(logm(X).numpy() / 4)))


def test_input_is_symmetrized_and_eps_clamps():
    X = spd(3, seed=4)
    skew = torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, 2.0], [0.0, -2.0, 0.0]], dtype=F64)
    torch.testing.assert_close(logm(X + skew), logm(X))
    N = with_spectrum(torch.tensor([-1e-12, 1.0, 4.0]), seed=5)  # PSD up to round-off
    assert torch.isfinite(sqrtm(N)).all()
    expected = torch.tensor([0.0, 1.0, 2.0], dtype=F64)
    torch.testing.assert_close(torch.linalg.eigvalsh(sqrtm(N)), expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.eigvalsh(logm(N, eps=1e-4)),
                               torch.tensor([math.log(1e-4), 0.0, math.log(4.0)], dtype=F64))
    assert torch.isnan(logm(N)).any()  # no clamp by default: exact, and NaN for a negative eigenvalue


def test_half_precision_works_in_float32():
    X = spd(3, seed=6).to(torch.bfloat16).requires_grad_()
    Y = sqrtm(X)
    assert Y.dtype == torch.bfloat16
    Y.sum().backward()
    assert X.grad.dtype == torch.bfloat16 and torch.isfinite(X.grad).all()
    assert tie_tolerance(torch.bfloat16) == tie_tolerance(torch.float32)


# -- backward -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FUNCTIONS))
@pytest.mark.parametrize("point", ["random", "repeated"])
def test_gradcheck(name, point):
    fn = FUNCTIONS[name][0]
    X = (spd(4, cond=20.0, seed=7) if point == "random" else REPEATED).clone().requires_grad_()
    assert torch.autograd.gradcheck(fn, (X,))
    assert torch.autograd.gradcheck(lambda A: fn(sym(A)), (X,))


@pytest.mark.parametrize("name", list(FUNCTIONS))
@pytest.mark.parametrize("cond", [1.0, 1e4, 1e8])
def test_gradients_finite_ill_conditioned(name, cond):
    fn = FUNCTIONS[name][0]
    X = spd(5, cond=cond, seed=8)
    if name == "expm":
        X = X / cond * 5  # keep exp(l) in range
    X.requires_grad_()
    G = torch.randn(5, 5, dtype=F64, generator=torch.Generator().manual_seed(9))
    (fn(X) * G).sum().backward()
    assert torch.isfinite(X.grad).all()
    torch.testing.assert_close(X.grad, X.grad.mT)


def test_tolerance_defaults():
    assert tie_tolerance(torch.float64) == pytest.approx(2.220446e-16 ** (1 / 3), rel=1e-6)
    assert tie_tolerance(torch.float32) == pytest.approx(1.192093e-7 ** (1 / 3), rel=1e-6)


@pytest.mark.parametrize("gap, tie", [(1e-8, True), (1e-6, True), (1e-4, False), (0.5, False)])
def test_tie_rule_exact_entries(gap, tie):
    """``L_01`` is ``f'`` at the midpoint for a relative gap within the tolerance, the divided difference
    otherwise; either way it equals the exact divided difference to ~1e-10."""
    a, b = 2.0, 2.0 * (1 + gap)
    X = torch.diag(torch.tensor([a, b], dtype=F64)).requires_grad_()
    (sqrtm(X) * torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=F64)).sum().backward()
    L01 = X.grad[0, 1].item()
    exact = 1 / (math.sqrt(a) + math.sqrt(b))  # (sqrt a - sqrt b) / (a - b) without cancellation
    if tie:
        assert L01 == pytest.approx(0.5 / math.sqrt((a + b) / 2), rel=1e-15)
    else:
        assert L01 == pytest.approx((math.sqrt(b) - math.sqrt(a)) / (b - a), rel=1e-15)
    assert L01 == pytest.approx(exact, rel=1e-10)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_backward_at_repeated_eigenvalues_is_the_limit(name):
    """At ``diag(1, 1, 2)`` (rotated) and at the identity the backward equals a central finite-difference
    directional derivative: ``<grad, V> = d/dh <G, f(X + hV)>``."""
    fn = FUNCTIONS[name][0]
    g = torch.Generator().manual_seed(10)
    for X in (REPEATED, torch.eye(3, dtype=F64)):
        V, G = sym(torch.randn(3, 3, dtype=F64, generator=g)), torch.randn(3, 3, dtype=F64, generator=g)
        Xg = X.clone().requires_grad_()
        (fn(Xg) * G).sum().backward()
        h = 1e-5
        fd = ((fn(X + h * V) - fn(X - h * V)) * G).sum() / (2 * h)
        torch.testing.assert_close((Xg.grad * V).sum(), fd, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_frechet_derivative_matches_backward(name):
    """``funcm_derivative`` is the same self-adjoint operator as the backward, also at a repeated eigenvalue."""
    fn, f, df = FUNCTIONS[name]
    g = torch.Generator().manual_seed(11)
    for X in (spd(3, seed=12), REPEATED):
        V, G = sym(torch.randn(3, 3, dtype=F64, generator=g)), sym(torch.randn(3, 3, dtype=F64, generator=g))
        Xg = X.clone().requires_grad_()
        (fn(Xg) * G).sum().backward()
        torch.testing.assert_close(Xg.grad, funcm_derivative(X, G, f, df), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close((funcm_derivative(X, V, f, df) * G).sum(), (Xg.grad * V).sum())


def test_expm_ties_near_zero():
    """``expm`` ties on the absolute gap (floor 1): at eigenvalues +-1e-12 the divided difference
    ``(e^a - e^b) / (a - b)`` would keep only ~4 digits; the tie gives ``exp(0) = 1``, exact to ~1e-24."""
    X = torch.diag(torch.tensor([1e-12, -1e-12], dtype=F64)).requires_grad_()
    (expm(X) * torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=F64)).sum().backward()
    assert X.grad[0, 1].item() == 1.0
    Y = torch.diag(torch.tensor([1e-12, -1e-12], dtype=F64)).requires_grad_()
    (sym_funcm(Y, torch.exp, torch.exp) * torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=F64)).sum().backward()
    assert abs(Y.grad[0, 1].item() - 1.0) > 1e-8  # the purely relative test does not tie them


def test_tie_rule_float32():
    """float32 uses the wider tolerance (4.9e-3): a relative gap of 1e-4 is a tie, and the backward agrees
    with the float64 one."""
    X = with_spectrum(torch.tensor([1.0, 1.0001, 3.0]), seed=14)
    G = torch.randn(3, 3, dtype=F64, generator=torch.Generator().manual_seed(15))
    grads = []
    for dtype in (torch.float32, F64):
        Xg = X.to(dtype).requires_grad_()
        (logm(Xg) * G.to(dtype)).sum().backward()
        grads.append(Xg.grad.to(F64))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-4)


def test_polar():
    g = torch.Generator().manual_seed(16)
    Z = torch.randn(2, 4, 4, dtype=F64, generator=g)
    O = polar(Z)
    torch.testing.assert_close(O.mT @ O, torch.eye(4, dtype=F64).expand(2, 4, 4))
    H = O.mT @ Z
    torch.testing.assert_close(H, H.mT)
    assert (torch.linalg.eigvalsh(sym(H)) > 0).all()
    torch.testing.assert_close(sym(H), sqrtm(Z.mT @ Z))
    repeated = rotation(4, 17) @ torch.diag(torch.tensor([1.0, 1.0, 2.0, 2.0], dtype=F64)) @ rotation(4, 18)
    for A in (Z[0], torch.eye(4, dtype=F64), repeated):
        assert torch.autograd.gradcheck(polar, (A.clone().requires_grad_(),))


def test_clamped_derivative_is_zero_below_eps():
    X = torch.diag(torch.tensor([1e-6, 1.0], dtype=F64)).requires_grad_()
    Y = logm(X, eps=1e-3)
    torch.testing.assert_close(torch.diagonal(Y), torch.tensor([math.log(1e-3), 0.0], dtype=F64))
    torch.diagonal(Y).sum().backward()  # d tr log(max(X, eps)) = diag(0, 1)
    torch.testing.assert_close(X.grad, torch.diag(torch.tensor([0.0, 1.0], dtype=F64)))


def test_double_backward_raises():
    X = spd(3, seed=13).requires_grad_()
    (grad,) = torch.autograd.grad(logm(X).sum(), X, create_graph=True)
    with pytest.raises(RuntimeError):
        grad.sum().backward()


# -- errors -------------------------------------------------------------------------------------------------
def test_errors():
    square = "expected square matrices of shape (..., n, n), got shape"
    with pytest.raises(ValueError, match=re.escape(f"sqrtm: {square} (2, 3)")):
        sqrtm(torch.ones(2, 3, dtype=F64))
    with pytest.raises(ValueError, match=re.escape(f"logm: {square} (3,)")):
        logm(torch.ones(3, dtype=F64))
    with pytest.raises(TypeError, match=re.escape("expm: expected a real floating-point tensor, got torch.int64")):
        expm(torch.eye(2, dtype=torch.int64))
    with pytest.raises(ValueError, match=re.escape("logm: eps must be positive, got 0.0")):
        logm(torch.eye(2, dtype=F64), eps=0.0)
    with pytest.raises(ValueError, match=re.escape("invsqrtm: eps must be positive, got -1.0")):
        invsqrtm(torch.eye(2, dtype=F64), eps=-1.0)
    with pytest.raises(ValueError, match=re.escape("sqrtm: eps must be non-negative, got -0.1")):
        sqrtm(torch.eye(2, dtype=F64), eps=-0.1)
    with pytest.raises(ValueError, match=re.escape("powm: eps must be positive, got 0.0")):
        powm(torch.eye(2, dtype=F64), -0.5, eps=0.0)
    with pytest.raises(TypeError, match=re.escape("powm: p must be a finite Python number, got Tensor")):
        powm(torch.eye(2, dtype=F64), torch.tensor(0.5))
    with pytest.raises(ValueError, match=re.escape("sym_funcm: eps must be a finite number or None, got inf")):
        sym_funcm(torch.eye(2, dtype=F64), torch.exp, torch.exp, eps=math.inf)
