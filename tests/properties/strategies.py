"""Hypothesis strategies of the property-based tests (tests/properties).

Hypothesis draws the *structure* of a case (shapes, kinds of tensors, spectra, hyperparameters, the
number of steps, a seed); the entries of a tensor then come from ``torch.Generator(seed)``. So a case
is cheap to draw and to replay (the falsifying example names the seed), and the entries are the
values real gradients have, not adversarial bit patterns: extreme scales are a separate, explicit
axis (``REGIMES``), never an accident of float drawing.
"""
from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from hypothesis import strategies as st

from steepest.geometry import GEOMETRIES, GEOMETRY_NAMES
from steepest.optim.lion import KAPPAS
from steepest.optim.muon import ADJUST_LR
from steepest.optim.noise import NOISE_RULES, NOISE_SOURCES
from steepest.optim.normuon import SCALES
from steepest.optim.validation import TRANSFORMS
from steepest.polar import SCHEDULE_NAMES
from steepest.roles import ROLES

F64 = torch.float64
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}

#: Value regimes: a generated tensor's largest |entry| is ``10**e`` for ``e`` in the range (both ends
#: included), so ``tiny`` and ``huge`` span the 1e-30 .. 1e30 of the issue and ``unit`` the rest.
REGIMES: dict[str, tuple[int, int]] = {"tiny": (-30, -10), "unit": (-10, 10), "huge": (10, 30)}


def regime_grid(regime: str, step: int = 5) -> list[int]:
    """Every ``step``-th decade of a regime, both ends included (an exhaustive sweep of it)."""
    lo, hi = REGIMES[regime]
    grid = list(range(lo, hi + 1, step))
    return grid if grid[-1] == hi else grid + [hi]


def log_uniform(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(math.log10(lo), math.log10(hi)).map(lambda e: 10.0 ** e)


# -- shapes --------------------------------------------------------------------------------------
MAX_DIM = 8
SHAPE_KINDS: dict[str, int] = {  # kind -> ndim
    "1x1": 2, "1xn": 2, "nx1": 2, "tall": 2, "wide": 2, "square": 2,
    "conv": 4, "conv1d": 3, "vector": 1, "scalar": 0,
}


@st.composite
def shapes(draw, min_ndim: int = 0, max_ndim: int = 4) -> tuple[int, ...]:
    """A non-empty shape of one of ``SHAPE_KINDS`` with ``min_ndim <= ndim <= max_ndim``."""
    kind = draw(st.sampled_from([k for k, nd in SHAPE_KINDS.items() if min_ndim <= nd <= max_ndim]))
    n = draw(st.integers(2, MAX_DIM))
    if kind == "1x1":
        return (1, 1)
    if kind == "1xn":
        return (1, n)
    if kind == "nx1":
        return (n, 1)
    if kind in ("tall", "wide"):
        small = draw(st.integers(2, MAX_DIM - 1))
        big = draw(st.integers(small + 1, MAX_DIM))
        return (big, small) if kind == "tall" else (small, big)
    if kind == "square":
        return (n, n)
    out, inp, k = draw(st.integers(1, 6)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    if kind == "conv":
        return (out, inp, k, k)
    if kind == "conv1d":
        return (out, inp, k)
    if kind == "vector":
        return (draw(st.integers(1, MAX_DIM)),)
    return ()


@st.composite
def empty_shapes(draw, min_ndim: int = 0) -> list[tuple[int, ...]]:
    """Every kind of zero-size shape at once (zero rows, zero columns, both, an empty conv filter,
    an empty vector), with drawn sizes for the other dimensions."""
    n, o, i, k = (draw(st.integers(1, MAX_DIM)), draw(st.integers(1, 6)), draw(st.integers(1, 4)),
                  draw(st.integers(1, 3)))
    every = [(0, n), (n, 0), (0, 0), (0, i, k, k), (o, 0, k, k), (0,)]
    return [s for s in every if len(s) >= min_ndim]


# -- tensors -------------------------------------------------------------------------------------
TENSOR_KINDS = ("gaussian", "zeros", "rank1", "repeated", "lowrank", "sparse", "spike", "constant", "integers")


def matrix_view(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) >= 2:
        return shape[0], math.prod(shape[1:])
    return 1, math.prod(shape)


def _orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=F64))
    return q


def make_tensor(kind: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """A float64 tensor of ``shape`` whose largest |entry| is 1 (or which is all zeros).

    Kinds: ``gaussian``; ``zeros``; ``rank1`` (``u v^T`` of the matrix view); ``repeated`` (every
    singular value of the matrix view equal, or two levels); ``lowrank`` (rank below full);
    ``sparse`` (exact zero entries, a zero row and a zero column); ``spike`` (one nonzero entry);
    ``constant``; ``integers`` (small integers: exact ties and cancellations).
    """
    gen = torch.Generator().manual_seed(seed)
    m, n = matrix_view(shape)
    k = min(m, n)
    if kind == "zeros" or m * n == 0:
        return torch.zeros(shape, dtype=F64)
    if kind == "rank1":
        x = torch.outer(torch.randn(m, generator=gen, dtype=F64), torch.randn(n, generator=gen, dtype=F64))
    elif kind == "repeated":
        levels = torch.tensor([1.0, float(torch.rand((), generator=gen, dtype=F64)) + 0.05], dtype=F64)
        split = int(torch.randint(0, k + 1, (), generator=gen))  # 0 or k: all singular values equal
        s = torch.cat([levels[0].expand(k - split), levels[1].expand(split)])
        x = _orthonormal(m, k, gen) @ torch.diag(s) @ _orthonormal(n, k, gen).T
    elif kind == "lowrank":
        r = int(torch.randint(1, max(k, 2), (), generator=gen))
        x = torch.randn(m, r, generator=gen, dtype=F64) @ torch.randn(r, n, generator=gen, dtype=F64)
    elif kind == "sparse":
        x = torch.randn(m, n, generator=gen, dtype=F64) * (torch.rand(m, n, generator=gen) < 0.5)
        x[int(torch.randint(0, m, (), generator=gen))] = 0.0
        x[:, int(torch.randint(0, n, (), generator=gen))] = 0.0
        if x.abs().max() == 0:
            x.view(-1)[int(torch.randint(0, m * n, (), generator=gen))] = 1.0
    elif kind == "spike":
        x = torch.zeros(m * n, dtype=F64)
        x[int(torch.randint(0, m * n, (), generator=gen))] = 1.0 if torch.rand((), generator=gen) < 0.5 else -1.0
    elif kind == "constant":
        x = torch.full((m, n), 1.0 if torch.rand((), generator=gen) < 0.5 else -1.0, dtype=F64)
    elif kind == "integers":
        x = torch.randint(-2, 3, (m, n), generator=gen).to(F64)
        if x.abs().max() == 0:
            x[0, 0] = 1.0
    else:
        x = torch.randn(m, n, generator=gen, dtype=F64)
    x = x.reshape(shape)
    return x / x.abs().max()


def scaled(x: torch.Tensor, exponent: float, dtype: torch.dtype) -> torch.Tensor:
    """``x * 10**exponent`` rounded to ``dtype`` (computed in float64, so nothing overflows first)."""
    return (x * 10.0 ** exponent).to(dtype)


tensor_kinds = st.sampled_from(TENSOR_KINDS)
seeds = st.integers(0, 2**31 - 1)


# -- spectra for the Newton-Schulz bands -----------------------------------------------------------
#: Schedule.band holds for singular values with sigma / ||X||_F >= BAND_FLOOR (schedules.py).
BAND_FLOOR = 1e-2
SPECTRUM_KINDS = ("flat", "two_level", "spread", "dominant", "floor")


def spectrum(kind: str, rank: int, gen: torch.Generator) -> torch.Tensor:
    """``rank`` singular values with unit sum of squares, each at least ``BAND_FLOOR`` of it: the
    schedules' documented domain. ``flat``: all equal (one repeated value); ``two_level``: two
    repeated values; ``spread``: log-uniform; ``dominant``: one large, the rest at the floor;
    ``floor``: all but one at the floor (the hardest case for the lower band edge)."""
    u = torch.rand(rank, generator=gen, dtype=F64)
    if kind == "flat":
        s = torch.ones(rank, dtype=F64)
    elif kind == "two_level":
        split = max(1, rank // 2)
        s = torch.cat([torch.ones(split, dtype=F64), torch.full((rank - split,), 0.02 + 0.98 * float(u[0]), dtype=F64)])
    elif kind == "spread":
        s = 10.0 ** (-2.0 * u)
    elif kind == "dominant":
        s = torch.cat([torch.ones(1, dtype=F64), torch.full((rank - 1,), 1e-3, dtype=F64)])
    else:  # floor
        s = torch.cat([torch.full((1,), 0.3 + 0.7 * float(u[0]), dtype=F64), torch.full((rank - 1,), 1e-3, dtype=F64)])
    for _ in range(4):  # raise everything below the floor to 1.0001 * floor (converges: rank <= 8)
        s = torch.maximum(s, torch.full_like(s, BAND_FLOOR * 1.0001) * torch.linalg.vector_norm(s))
    s = s / torch.linalg.vector_norm(s)
    assert float(s.min()) >= BAND_FLOOR, s
    return s.sort(descending=True).values


@st.composite
def band_inputs(draw) -> dict[str, Any]:
    """The recipe of a matrix (``batch=None``) or a stack of 2-3 same-shape matrices
    ``U diag(s) V^T`` with unit Frobenius norm and ``rank`` singular values in the documented domain;
    the other ``min(m, n) - rank`` are exactly zero (rank-deficient inputs: the band is claimed on
    the input's numerical rank). Build it with ``band_matrix``."""
    m, n = draw(shapes(min_ndim=2, max_ndim=2))
    return {"shape": (m, n), "rank": draw(st.integers(1, min(m, n))), "kind": draw(st.sampled_from(SPECTRUM_KINDS)),
            "batch": draw(st.sampled_from([None, None, 2, 3])), "seed": draw(seeds)}


def band_matrix(case: dict[str, Any]) -> torch.Tensor:
    """The float64 matrix (or stack) described by a ``band_inputs`` case."""
    gen = torch.Generator().manual_seed(case["seed"])
    (m, n), rank = case["shape"], case["rank"]
    mats = []
    for _ in range(case["batch"] or 1):
        s = spectrum(case["kind"], rank, gen)
        mats.append(_orthonormal(m, rank, gen) @ torch.diag(s) @ _orthonormal(n, rank, gen).T)
    return torch.stack(mats) if case["batch"] else mats[0]


# -- hyperparameters -----------------------------------------------------------------------------
_lr = st.one_of(st.just(0.0), log_uniform(1e-6, 1.0))
_beta = st.floats(0.0, 0.9999)
#: ``beta1 <= sqrt(beta2)``: only then is Adam's ratio ``|m_hat| / sqrt(v_hat)`` bounded; beyond it,
#: a 1e30 gradient followed by zeros drives the ratio past float32's range in torch.optim.AdamW too
#: (NaN there), so overflow is Adam's arithmetic, not a bug (Lion's sign updates are bounded anyway)
_betas = st.tuples(_beta, _beta).filter(lambda b: b[0] <= b[1] ** 0.5)
_radius = log_uniform(0.1, 10.0)

#: Constructor arguments drawn in every regime. Ranges are the documented (validated) ones except:
#: - ``betas``/``adamw_betas`` with ``beta1 <= sqrt(beta2)`` (see ``_betas``);
#: - ``lr <= 1`` and ``weight_decay <= 1``: the decay factor ``1 - lr * wd`` stays in [0, 1]; beyond
#:   it, ``|1 - lr * wd| > 1`` grows parameters geometrically and float overflow is the arithmetic,
#:   not a bug (likewise radii <= 10);
#: - ``eps >= 1e-12``: smaller ones, down to the validated minimum (float32's smallest normal
#:   number), are ``test_finite_updates_edge_hyperparameters``'s;
#: - ``damp >= 1e-6``: M-FAC scales directions outside its window by ``1/damp`` (documented);
#: - ``ns_dtype`` without ``float16``: float16 iterations are
#:   ``test_finite_updates_edge_hyperparameters``'s (on every matrix group);
#: - ``ngrads <= 8`` and small shapes: runtime only.
NUMERIC_ARGS: dict[str, st.SearchStrategy[Any]] = {
    "lr": _lr, "adamw_lr": _lr, "sign_lr": _lr,
    "momentum": st.floats(0.0, 0.9999),
    "nesterov": st.booleans(),
    "weight_decay": st.floats(0.0, 1.0), "adamw_weight_decay": st.floats(0.0, 1.0),
    "betas": _betas, "adamw_betas": _betas,
    "eps": log_uniform(1e-12, 1e-2), "adamw_eps": log_uniform(1e-12, 1e-2),
    "ns_steps": st.one_of(st.none(), st.integers(1, 99)),
    "ns_dtype": st.sampled_from(("auto", "float32", "float64", "bfloat16")),
    "beta2": st.floats(0.0, 0.9999),
    "noise_beta": st.floats(0.0, 0.9999),
    "noise_source": st.sampled_from(NOISE_SOURCES),
    "noise_rule": st.sampled_from(NOISE_RULES),
    "noise_alpha": st.floats(0.0, 10.0),
    "noise_every": st.integers(1, 5),
    "noise_ns": st.sampled_from(SCHEDULE_NAMES),
    "ngrads": st.integers(1, 8),
    "damp": log_uniform(1e-6, 1.0),
    "constrained": st.booleans(),
    "hidden_radius": _radius, "embedding_radius": _radius, "head_radius": _radius, "vector_radius": _radius,
    "kappa": st.sampled_from(KAPPAS),
    "maximize": st.booleans(),
}

#: Constructor arguments that change a preset's recipe (geometry, shape factor, LMO kernel, noise
#: adaptivity); drawn only where the regime allows structural variety (see ``preset_kwargs``).
STRUCTURAL_ARGS: dict[str, st.SearchStrategy[Any]] = {
    "adjust_lr": st.sampled_from(ADJUST_LR),
    "scale": st.sampled_from(SCALES),
    "ns": st.sampled_from(SCHEDULE_NAMES),
    "noise_adaptive": st.booleans(),
}


def constructor_args(cls) -> list[str]:
    return [name for name, p in inspect.signature(cls.__init__).parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


@st.composite
def preset_kwargs(draw, cls, structural: bool = True, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Keyword arguments of ``cls``'s constructor: each known argument is kept at its default or drawn
    (defaults are the minimal example, so the first case is the preset's own recipe)."""
    tables = [NUMERIC_ARGS] + ([STRUCTURAL_ARGS] if structural else [])
    out: dict[str, Any] = {}
    for name in constructor_args(cls):
        if name in exclude:
            continue
        for table in tables:
            if name in table and draw(st.booleans()):
                out[name] = draw(table[name])
    return out


ROLE_SHAPE_NDIM = {"hidden": (2, 2), "embedding": (2, 2), "head": (2, 2), "conv": (3, 4), "vector": (0, 1)}


@st.composite
def param_specs(draw, empty: bool = False) -> list[tuple[str, str, tuple[int, ...]]]:
    """``(name, role, shape)`` of a small model with every role (1-2 tensors each); with ``empty``
    every zero-size shape a role can have is added."""
    specs = []
    for role in ROLES:
        lo, hi = ROLE_SHAPE_NDIM[role]
        for i in range(draw(st.integers(1, 2))):
            specs.append((f"{role}{i}", role, draw(shapes(min_ndim=lo, max_ndim=hi))))
        if empty:
            for j, shape in enumerate(draw(empty_shapes(min_ndim=lo))):
                if len(shape) <= hi and (role != "vector" or len(shape) == 1) and (role != "conv" or len(shape) >= 3):
                    specs.append((f"{role}_empty{j}", role, shape))
    return specs


@st.composite
def group_overrides(draw, shapes_in_group: list[tuple[int, ...]], allow_transform: bool) -> dict[str, Any]:
    """Flat keys a parameter group may override (structural variety): any geometry its tensors
    accept (so every optimizer meets every geometry), a shape-factor mode of it, the ``in_out``
    layout for matrices, any state transform, and noise adaptivity."""
    out: dict[str, Any] = {}
    min_ndim = min(len(s) for s in shapes_in_group)
    if draw(st.booleans()):
        name = draw(st.sampled_from([g for g in GEOMETRY_NAMES if GEOMETRIES[g].min_ndim <= min_ndim]))
        out["geometry"] = name
        out["shape_scale"] = draw(st.one_of(st.none(), st.sampled_from(GEOMETRIES[name].shape_scales)))
        if all(len(s) == 2 for s in shapes_in_group) and draw(st.booleans()):
            out["layout"] = "in_out"
    if allow_transform and draw(st.booleans()):
        out["transform"] = draw(st.sampled_from(TRANSFORMS))
    if draw(st.booleans()):
        out["noise_adaptive"] = draw(st.booleans())
    return out
