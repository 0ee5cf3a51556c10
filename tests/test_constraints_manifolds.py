"""Spheres, the Stiefel manifold and the constraint registry.

Invariants are measured directly: the Frobenius norm (float64) after ``Hypersphere``, the top
singular value (float64 SVD) after ``SpectralSphere``, ``W^T W = scale^2 I`` (``W W^T`` for wide
views) after every Stiefel projection and retraction, the nearest-point property of the polar
projection, the first-order expansion of every retraction (the error halves quadratically) and the
descent property of a small step.
"""
from __future__ import annotations

import math
import re

import pytest
import torch

from steepest.constraints.base import Constraint
from steepest.constraints.registry import CONSTRAINT_NAMES, constraint_class, constraint_from_keys, make_constraint
from steepest.constraints.spectral import SpectralHardCap, SpectralNormalize, SpectralSoftCap
from steepest.constraints.sphere import Hypersphere, SpectralSphere
from steepest.constraints.stiefel import Stiefel

F64 = torch.float64
RETRACTIONS = ["polar", "qr", "cayley"]
STIEFEL_SHAPES = [(64, 16), (16, 16), (16, 3, 3, 3)]


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


def gaussian(shape, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64).to(dtype)


def sigma1(w: torch.Tensor) -> float:
    m = w.detach().to(F64)
    return float(torch.linalg.svdvals(m.reshape(m.shape[0], -1))[0])


def gram_error(w: torch.Tensor, scale: float = 1.0) -> float:
    """max |W^T W / scale^2 - I| on the tall orientation of the matrix view."""
    m = w.detach().to(F64).reshape(w.shape[0], -1)
    if m.shape[0] < m.shape[1]:
        m = m.T
    return float((m.T @ m / scale**2 - torch.eye(m.shape[1], dtype=F64)).abs().max())


# -- Hypersphere -----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(10,), (8, 5), (4, 3, 3, 3)])
@pytest.mark.parametrize("radius", [1.0, 2.5])
def test_hypersphere_norm(shape, radius):
    W = gaussian(shape, 1)
    c = Hypersphere(radius)
    out = c.project(W)
    assert float(out.double().norm()) == pytest.approx(radius, rel=1e-6)
    assert c.check(out) < 1e-6
    assert c.check(W) == pytest.approx(abs(float(W.double().norm()) - radius) / radius, rel=1e-9)
    assert torch.allclose(out / out.norm(), W / W.norm(), atol=1e-6)  # direction kept


def test_hypersphere_zero_stays_zero_and_dtypes():
    c = Hypersphere(2.0)
    assert torch.equal(c.project(torch.zeros(3, 4)), torch.zeros(3, 4))
    assert c.check(torch.zeros(3, 4)) == 1.0
    for dtype in (torch.float64, torch.bfloat16):
        out = c.project(gaussian((6, 5), 2, dtype))
        assert out.dtype == dtype
        assert float(out.double().norm()) == pytest.approx(2.0, rel=1e-2 if dtype == torch.bfloat16 else 1e-12)
    with pytest.raises(ValueError, match=exact("Constraint 'hypersphere' needs a tensor with at least 1 "
                                               "dimensions, got shape ()")):
        c.project(torch.tensor(1.0))


# -- SpectralSphere --------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["svd", "power"])
@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (8, 3, 3, 3)])
@pytest.mark.parametrize("units", ["spectral", "rms"])
def test_spectral_sphere_radius(method, shape, units):
    W = gaussian(shape, 3)
    c = SpectralSphere(1.5, units=units, method=method)
    r = 1.5 if units == "spectral" else 1.5 * math.sqrt(shape[0] / math.prod(shape[1:]))
    out = c.project(W)
    assert sigma1(out) == pytest.approx(r, rel=1e-4)
    assert c.check(out) < 1e-4
    ratio = (out.double() / W.double()).flatten()
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-5)  # radial: direction kept


def test_spectral_sphere_raises_small_matrices_too_and_dtypes():
    W = 1e-3 * gaussian((20, 10), 0)
    assert sigma1(SpectralSphere(1.0).project(W)) == pytest.approx(1.0, rel=1e-5)
    assert torch.equal(SpectralSphere(1.0).project(torch.zeros(4, 3)), torch.zeros(4, 3))
    out = SpectralSphere(1.0).project(gaussian((20, 10), 1, torch.bfloat16))
    assert out.dtype == torch.bfloat16 and sigma1(out) <= 1.0 + 1e-2


# -- Stiefel ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("retraction", RETRACTIONS)
@pytest.mark.parametrize("shape", STIEFEL_SHAPES)
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_stiefel_projection_is_on_the_manifold(retraction, shape, scale):
    W = gaussian(shape, 4)
    c = Stiefel(retraction, scale=scale)
    out = c.project(W)
    assert out.shape == W.shape and out.dtype == torch.float32
    assert gram_error(out, scale) < 1e-5
    assert c.check(out) == pytest.approx(gram_error(out, scale), abs=1e-12)
    assert c.check(W) > 0.1


def test_stiefel_wide_uses_the_transpose_convention():
    out = Stiefel().project(gaussian((16, 3, 3, 3), 0)).reshape(16, 27).double()
    assert torch.allclose(out @ out.T, torch.eye(16, dtype=F64), atol=1e-5)  # W W^T = I for 16 x 27


def test_stiefel_polar_is_the_nearest_point():
    W = gaussian((12, 5), 6, F64)
    P = Stiefel("polar").project(W)
    best = float((W - P).norm())
    for retraction in ("qr",):
        assert best <= float((W - Stiefel(retraction).project(W)).norm()) + 1e-12
    for seed in range(20):  # random points of the manifold are farther
        Q, _ = torch.linalg.qr(gaussian((12, 5), 100 + seed, F64))
        assert best <= float((W - Q).norm())
    assert torch.allclose(Stiefel("cayley").project(W), P)  # the projection of "cayley" is the polar one


def test_stiefel_qr_sign_fix():
    W = gaussian((10, 4), 7, F64)
    Q = Stiefel("qr").project(W)
    R = Q.T @ W
    assert torch.allclose(R, torch.triu(R), atol=1e-12) and bool((torch.diagonal(R) > 0).all())
    assert torch.allclose(Stiefel("qr").project(-W), -Q)  # flipping W flips Q: the sign is fixed by R


def on_manifold(shape, seed: int, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
    return Stiefel(scale=scale).project(gaussian(shape, seed, F64)).to(dtype)


def tangent(x: torch.Tensor, Z: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """The tangent part P_x(Z) = Z - x sym(x^T Z) / scale^2 (tall orientation of the views)."""
    X, G = x.reshape(x.shape[0], -1), Z.reshape(x.shape[0], -1)
    wide = X.shape[0] < X.shape[1]
    if wide:
        X, G = X.T, G.T
    A = X.T @ G
    P = G - X @ (0.5 * (A + A.T)) / scale**2
    return (P.T if wide else P).reshape(x.shape)


@pytest.mark.parametrize("retraction", RETRACTIONS)
@pytest.mark.parametrize("shape", STIEFEL_SHAPES)
def test_retractions_stay_on_the_manifold(retraction, shape):
    x = on_manifold(shape, 1)
    c = Stiefel(retraction)
    for lr in (1e-3, 0.1, 1.0):
        y = c.retract(x, gaussian(shape, 2), lr)
        assert y.shape == x.shape and y.dtype == torch.float32
        assert gram_error(y) < 1e-5


@pytest.mark.parametrize("retraction", RETRACTIONS)
@pytest.mark.parametrize("shape", STIEFEL_SHAPES)
@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_retractions_are_first_order(retraction, shape, scale):
    """retract(x, Z, t) = x - t Z + O(t^2) for a tangent Z: the error falls 4x when t halves."""
    x = on_manifold(shape, 3, F64, scale)
    Z = tangent(x, gaussian(shape, 4, F64), scale)
    c = Stiefel(retraction, scale=scale)
    errors = [float((c.retract(x, Z, t) - (x - t * Z)).norm()) for t in (1e-2, 5e-3)]
    assert errors[0] < 1e-2 * float(Z.norm())
    assert errors[0] / errors[1] == pytest.approx(4.0, rel=0.1)


@pytest.mark.parametrize("retraction", RETRACTIONS)
@pytest.mark.parametrize("shape", STIEFEL_SHAPES)
def test_small_retraction_step_decreases_a_linear_function(retraction, shape):
    x = on_manifold(shape, 5, F64)
    G = gaussian(shape, 6, F64)
    c = Stiefel(retraction)
    f0 = float((G * x).sum())
    for lr in (1e-3, 1e-2):
        y = c.retract(x, G, lr)
        decrease = f0 - float((G * y).sum())
        assert decrease > 0.0
        # first order: the decrease is lr * ||P_x(G)||^2
        assert decrease == pytest.approx(lr * float(tangent(x, G).norm()) ** 2, rel=0.2)


def test_retract_in_bfloat16_and_float64():
    x = on_manifold((32, 8), 0, torch.bfloat16)
    y = Stiefel("cayley").retract(x, gaussian((32, 8), 1, torch.bfloat16), 0.1)
    assert y.dtype == torch.bfloat16 and gram_error(y) < 3e-2
    x = on_manifold((32, 8), 0, F64)
    y = Stiefel("cayley").retract(x, gaussian((32, 8), 1, F64), 0.1)
    assert y.dtype == F64 and gram_error(y) < 1e-12
    out = Stiefel("qr").project(gaussian((32, 8), 2, torch.bfloat16))
    assert out.dtype == torch.bfloat16 and gram_error(out) < 3e-2


def test_stiefel_invalid_arguments():
    with pytest.raises(ValueError, match=exact("Unknown retraction 'exp'; expected one of: polar, qr, cayley")):
        Stiefel("exp")
    with pytest.raises(ValueError, match=exact("Invalid scale value: 0.0; expected a positive number")):
        Stiefel(scale=0.0)
    x = on_manifold((6, 3), 0)
    with pytest.raises(ValueError, match=exact("retract: direction has shape (3, 6), expected (6, 3)")):
        Stiefel().retract(x, torch.zeros(3, 6), 0.1)
    with pytest.raises(TypeError, match=exact("Invalid type for lr: expected a real number, got str")):
        Stiefel().retract(x, torch.zeros(6, 3), "0.1")


# -- registry --------------------------------------------------------------------------------------
def test_registry_names_and_classes():
    assert CONSTRAINT_NAMES == ("spectral_normalize", "spectral_hammer", "spectral_hardcap", "spectral_softcap",
                                "hypersphere", "spectral_sphere", "stiefel", "birkhoff", "spd")
    for name in CONSTRAINT_NAMES:
        cls = constraint_class(name)
        assert issubclass(cls, Constraint) and cls.name == name and cls.cost
        assert isinstance(make_constraint(name), cls)


def test_make_constraint_passes_keywords():
    c = make_constraint("spectral_hardcap", bound=2.0, units="rms", method="svd")
    assert isinstance(c, SpectralHardCap) and (c.bound, c.units, c.method) == (2.0, "rms", "svd")
    assert make_constraint("stiefel", retraction="qr", scale=3.0).scale == 3.0
    with pytest.raises(ValueError, match=exact("Unknown constraint 'birkhof'; expected one of: spectral_normalize, "
                                               "spectral_hammer, spectral_hardcap, spectral_softcap, hypersphere, "
                                               "spectral_sphere, stiefel, birkhoff, spd")):
        make_constraint("birkhof")
    with pytest.raises(ValueError, match=exact("Invalid bound value: -2; expected a positive number")):
        make_constraint("spectral_normalize", bound=-2)


def test_constraint_from_keys():
    c = constraint_from_keys("spectral_softcap", 2.0, "rms")
    assert isinstance(c, SpectralSoftCap) and (c.bound, c.units) == (2.0, "rms")
    assert constraint_from_keys("hypersphere", 3.0, "spectral").radius == 3.0
    assert constraint_from_keys("stiefel", 0.5, "spectral").scale == 0.5
    assert isinstance(constraint_from_keys("spectral_normalize", 1.0, "spectral"), SpectralNormalize)
    with pytest.raises(ValueError, match=exact("Constraint 'stiefel' takes no units; got constraint_units='rms' "
                                               "(use 'spectral': the scale is taken as given)")):
        constraint_from_keys("stiefel", 1.0, "rms")
    with pytest.raises(ValueError, match=exact("Unknown units 'l1'; expected one of: spectral, rms")):
        constraint_from_keys("spectral_hardcap", 1.0, "l1")


def test_manifold_invalid_arguments():
    with pytest.raises(ValueError, match=exact("Invalid radius value: 0; expected a positive number")):
        Hypersphere(0)
    with pytest.raises(ValueError, match=exact("Invalid radius value: -1; expected a positive number")):
        SpectralSphere(-1)
    with pytest.raises(ValueError, match=exact("Unknown method 'lanczos'; expected one of: svd, power")):
        SpectralSphere(method="lanczos")
    with pytest.raises(ValueError, match=exact("Unknown units 'fro'; expected one of: spectral, rms")):
        SpectralSphere(units="fro")
    with pytest.raises(TypeError, match=exact("Invalid type for radius: expected a real number, got bool")):
        Hypersphere(True)
