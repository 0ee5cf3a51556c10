"""Orthogonalization kernels (steepest.polar) against closed forms, exact SVD and torch.optim.Muon.

Every Newton-Schulz schedule maps each singular value independently: x <- sigma / (s ||X||_F), then
x <- a x + b x^3 + c x^5 per step. ``Schedule.band`` documents the output range for
sigma / ||X||_F in [1e-2, 1]; the exact ranges, computed once in fp64 over 20 001 log-spaced points,
are frozen below to 4 decimals (``FROZEN_RANGES``), and the scalar maps must reproduce them.
"""
from __future__ import annotations

import math
import re

import pytest
import torch

from steepest.polar import (NS_DTYPE_NAMES, SCHEDULE_NAMES, SCHEDULES, Schedule, get_schedule, newton_schulz,
                            polar, resolve_ns_dtype, svd_polar)
from steepest.polar.dtype import auto_ns_dtype, native_bf16_matmul
from steepest.polar.newton_schulz import choose_form, direct_flops, gram_flops

SCHEDULE_LIST = list(SCHEDULES)
F64 = torch.float64


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


def scalar_map(schedule: Schedule, ratios: torch.Tensor, steps: int | None = None) -> torch.Tensor:
    """The schedule applied to sigma / ||X||_F values, as scalars (fp64)."""
    x = ratios.to(F64) / schedule.input_scale
    for a, b, c in schedule.coefficients_for(schedule.default_steps if steps is None else steps):
        x = a * x + b * x**3 + c * x**5
    return x


def orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=F64))
    return q


def with_singular_values(m: int, n: int, s: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """U diag(s) V^T with random orthonormal U (m x k), V (n x k), k = len(s)."""
    gen = torch.Generator().manual_seed(seed)
    k = len(s)
    return orthonormal(m, k, gen) @ torch.diag(s.to(F64)) @ orthonormal(n, k, gen).T


def _ratio_sets() -> dict[str, torch.Tensor]:
    """Singular values with sum of squares 1 (so ||X||_F = 1) and every sigma in [1e-2, 1]."""
    flat = torch.full((8,), 8**-0.5, dtype=F64)
    rest = torch.logspace(-2, torch.log10(torch.tensor(0.4)).item(), 7, dtype=F64)
    spread = torch.cat([torch.sqrt(1 - rest.square().sum()).reshape(1), rest])
    small = torch.full((7,), 1e-2, dtype=F64)
    dominant = torch.cat([torch.sqrt(1 - small.square().sum()).reshape(1), small])
    sets = {"flat": flat, "spread": spread, "dominant": dominant, "rank1": torch.ones(1, dtype=F64)}
    for s in sets.values():
        assert s.square().sum().item() == pytest.approx(1.0, abs=1e-12)
        assert s.min() >= 1e-2 - 1e-15 and s.max() <= 1.0
    return sets


RATIO_SETS = _ratio_sets()
SHAPES_FOR = {"rank1": [(1, 6), (6, 1), (4, 7)]}
DEFAULT_SHAPES = [(8, 8), (8, 13), (13, 8)]


def _band_cases():
    for name in SCHEDULE_LIST:
        for set_name, s in RATIO_SETS.items():
            for shape in SHAPES_FOR.get(set_name, DEFAULT_SHAPES):
                if min(shape) >= len(s):
                    yield name, set_name, shape


BAND_CASES = list(_band_cases())


# -- singular-value bands ----------------------------------------------------------------------
@pytest.mark.parametrize("name,set_name,shape", BAND_CASES,
                         ids=[f"{n}-{s}-{m}x{k}" for n, s, (m, k) in BAND_CASES])
def test_output_singular_values_lie_in_band(name, set_name, shape):
    schedule = SCHEDULES[name]
    s = RATIO_SETS[set_name]
    X = with_singular_values(*shape, s, seed=len(s) + shape[0])
    assert torch.linalg.matrix_norm(X).item() == pytest.approx(1.0, abs=1e-12)
    out = polar(X, ns=name, dtype=F64)
    assert out.dtype == F64 and out.shape == X.shape
    sv = torch.linalg.svdvals(out)[: len(s)]
    lo, hi = schedule.band
    assert sv.min().item() >= lo and sv.max().item() <= hi, (sv.min().item(), sv.max().item(), schedule.band)
    # The matrix iteration is the scalar map on every singular value (fp64: to 1e-10).
    expected = scalar_map(schedule, s).sort(descending=True).values
    torch.testing.assert_close(sv, expected, rtol=0, atol=1e-10)
    # ... with the singular vectors of the input: out = U p(S) V^T.
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    r = len(s)
    rebuilt = U[:, :r] @ torch.diag(scalar_map(schedule, S[:r])) @ Vh[:r]
    torch.testing.assert_close(out, rebuilt, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", SCHEDULE_LIST)
def test_scalar_map_matches_band(name):
    schedule = SCHEDULES[name]
    lo, hi = schedule.band
    assert 0 < lo <= 1 <= hi
    y = scalar_map(schedule, torch.logspace(-2, 0, 20001, dtype=F64))
    assert y.min().item() >= lo and y.max().item() <= hi, (y.min().item(), y.max().item())
    # The band is informative: within 0.02 of the true range on both ends.
    assert y.min().item() - lo < 0.02 and hi - y.max().item() < 0.02, (y.min().item(), y.max().item())


# Output ranges of each schedule's scalar map for sigma / ||X||_F >= 1e-2 and >= 1e-3, computed once in
# fp64 over 20 001 log-spaced points.
FROZEN_RANGES = {
    "keller": ((0.6818, 1.1344), (0.4705, 1.2024)),
    "you": ((0.9956, 0.9993), (0.8663, 0.9993)),
    "quintic": ((0.9778, 1.0318), (0.4750, 1.1450)),
    "polar_express": ((0.8589, 1.1411), (0.8466, 1.1411)),
    "polar_express_8": ((1.0000, 1.0000), (1.0000, 1.0000)),
}


@pytest.mark.parametrize("name", list(FROZEN_RANGES))
def test_scalar_map_ranges_match_research_table(name):
    schedule = SCHEDULES[name]
    for lo_exp, (lo, hi) in zip((-2, -3), FROZEN_RANGES[name]):
        y = scalar_map(schedule, torch.logspace(lo_exp, 0, 20001, dtype=F64))
        assert y.min().item() == pytest.approx(lo, abs=6e-5)
        assert y.max().item() == pytest.approx(hi, abs=6e-5)


def test_keller_polynomial_value_at_one():
    # The Keller quintic (Keller Jordan's Muon, github.com/KellerJordan/Muon) has p(1) = a + b + c = 0.701
    # (one step), and a rank-1 input (sigma = ||X||_F) after the 5 default steps lands at 0.69644
    # (computed in fp64).
    keller = SCHEDULES["keller"]
    one = torch.ones(1, dtype=F64)
    assert scalar_map(keller, one, steps=1).item() == pytest.approx(0.701, abs=1e-12)
    assert scalar_map(keller, one).item() == pytest.approx(0.696436, abs=1e-6)


def test_polar_express_8_is_the_paper_list_with_safety():
    pe8 = SCHEDULES["polar_express_8"]
    assert pe8.input_scale == 1.01 and pe8.default_steps == 8
    assert pe8.coefficients[-1] == (1.875, -1.25, 0.375)  # the last polynomial carries no safety
    # NVIDIA's tabulation of the first two polynomials after the 1.01 division (4 d.p., truncated).
    for got, table in zip(pe8.coefficients[:2], [(8.2051, -22.9019, 16.4607), (4.0664, -2.8612, 0.5184)]):
        for g, t in zip(got, table):
            assert abs(g - t) < 1e-4, (got, table)
    # Before the division: the paper's raw first polynomial.
    a, b, c = pe8.coefficients[0]
    assert (a * 1.01, b * 1.01**3, c * 1.01**5) == pytest.approx(
        (8.28721201814563, -23.595886519098837, 17.300387312530933), rel=1e-14)


def test_coefficients_for_repeats_last():
    quintic = SCHEDULES["quintic"]
    listed = list(quintic.coefficients)
    assert quintic.coefficients_for(3) == listed[:3]
    assert quintic.coefficients_for(7) == listed + [listed[-1]] * 2
    assert SCHEDULES["keller"].coefficients_for(4) == [(3.4445, -4.7750, 2.0315)] * 4


def test_steps_argument_overrides_default():
    s = RATIO_SETS["spread"]
    X = with_singular_values(8, 10, s, seed=3)
    for steps in (1, 3, 9):
        sv = torch.linalg.svdvals(polar(X, ns="keller", steps=steps, dtype=F64))
        expected = scalar_map(SCHEDULES["keller"], s, steps=steps).abs().sort(descending=True).values
        torch.testing.assert_close(sv, expected, rtol=0, atol=1e-10)


# -- exact SVD ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(7, 7), (9, 4), (4, 9), (1, 5), (5, 1)])
def test_svd_polar_equals_u_vt(shape):
    X = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    U, _, Vh = torch.linalg.svd(X, full_matrices=False)
    out = polar(X, ns="svd", dtype=F64)
    torch.testing.assert_close(out, U @ Vh, rtol=0, atol=1e-10)
    torch.testing.assert_close(svd_polar(X, F64), U @ Vh, rtol=0, atol=1e-10)
    # Semi-orthogonal: the smaller Gram matrix is the identity.
    gram = out @ out.T if shape[0] <= shape[1] else out.T @ out
    torch.testing.assert_close(gram, torch.eye(min(shape), dtype=F64), rtol=0, atol=1e-10)


@pytest.mark.parametrize("shape", [(6, 9), (9, 6)])
def test_svd_polar_rank_deficient_is_partial_isometry(shape):
    s = torch.tensor([3.0, 1.0, 0.25], dtype=F64)
    X = with_singular_values(*shape, s, seed=4)
    out = polar(X, ns="svd", dtype=F64)
    sv = torch.linalg.svdvals(out)
    torch.testing.assert_close(sv[:3], torch.ones(3, dtype=F64), rtol=0, atol=1e-10)
    assert sv[3:].abs().max().item() < 1e-10, "zero singular values must stay zero"
    torch.testing.assert_close(out @ out.T @ out, out, rtol=0, atol=1e-10)
    U, _, Vh = torch.linalg.svd(X, full_matrices=False)
    torch.testing.assert_close(out, U[:, :3] @ Vh[:3], rtol=0, atol=1e-10)
    # <X, polar(X)> = nuclear norm.
    assert (X * out).sum().item() == pytest.approx(s.sum().item(), rel=1e-12)


@pytest.mark.parametrize("shape", [(5, 5), (3, 8), (8, 3)])
def test_svd_polar_of_zero_is_zero(shape):
    for dtype in (torch.float32, F64):
        out = polar(torch.zeros(*shape, dtype=dtype), ns="svd", dtype=dtype)
        assert out.dtype == dtype
        assert torch.equal(out, torch.zeros(*shape, dtype=dtype))


def test_svd_polar_batched_matches_per_matrix():
    stack = torch.randn(4, 6, 9, generator=torch.Generator().manual_seed(5), dtype=F64)
    out = polar(stack, ns="svd", dtype=F64)
    for i in range(4):
        U, _, Vh = torch.linalg.svd(stack[i], full_matrices=False)
        torch.testing.assert_close(out[i], U @ Vh, rtol=0, atol=1e-10)


def test_svd_polar_half_precision_request_runs_in_float32():
    X = torch.randn(5, 7, generator=torch.Generator().manual_seed(6))
    out = polar(X, ns="svd", dtype=torch.bfloat16)
    assert out.dtype == torch.float32
    U, _, Vh = torch.linalg.svd(X, full_matrices=False)
    torch.testing.assert_close(out, U @ Vh, rtol=0, atol=1e-5)


# -- Newton-Schulz structure -------------------------------------------------------------------
@pytest.mark.parametrize("name", SCHEDULE_LIST + ["svd"])
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["f32", "f64"])
def test_zero_matrix_gives_zeros(name, dtype):
    for shape in [(4, 4), (3, 7), (7, 3), (2, 3, 5)]:
        out = polar(torch.zeros(*shape, dtype=dtype), ns=name, dtype=dtype)
        assert out.shape == shape
        assert not torch.isnan(out).any()
        assert torch.equal(out, torch.zeros(*shape, dtype=dtype))


@pytest.mark.parametrize("name", SCHEDULE_LIST + ["svd"])
def test_transpose_commutes(name):
    X = torch.randn(12, 20, generator=torch.Generator().manual_seed(7), dtype=F64)
    wide = polar(X, ns=name, dtype=F64)
    tall = polar(X.T.contiguous(), ns=name, dtype=F64)
    torch.testing.assert_close(tall, wide.T, rtol=0, atol=1e-12)
    # Tall inputs iterate on the wide orientation: same singular values as the wide call.
    torch.testing.assert_close(torch.linalg.svdvals(tall), torch.linalg.svdvals(wide), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", SCHEDULE_LIST + ["svd"])
@pytest.mark.parametrize("shape", [(5, 8, 12), (3, 12, 8), (2, 4, 8), (3, 8, 4)])
def test_batched_equals_per_matrix_in_float32(name, shape):
    # Tolerance 2e-5: baddbmm and addmm may accumulate in a different order, and each quintic step
    # multiplies a rounding difference by up to |p'(x)| (8 for Polar Express's first polynomial).
    # Measured worst case over 30 random stacks: 6e-6 (polar_express), 2e-6 (keller).
    stack = torch.randn(*shape, generator=torch.Generator().manual_seed(8))
    out = polar(stack, ns=name, dtype=torch.float32)
    assert out.dtype == torch.float32 and out.shape == stack.shape
    for i in range(shape[0]):
        torch.testing.assert_close(out[i], polar(stack[i], ns=name, dtype=torch.float32), rtol=0, atol=2e-5)


@pytest.mark.parametrize("shape", [(8, 8), (6, 15), (15, 6), (32, 48)])
def test_polar_express_8_converges_to_exact_polar_factor(shape):
    # Well conditioned: singular values in [0.1, 1] (before normalization).
    k = min(shape)
    s = torch.linspace(1.0, 0.1, k, dtype=F64)
    X = with_singular_values(*shape, s, seed=9)
    exact_factor = polar(X, ns="svd", dtype=F64)
    out = polar(X, ns="polar_express_8", dtype=F64)
    torch.testing.assert_close(out, exact_factor, rtol=0, atol=1e-6)
    # A random Gaussian matrix (condition number ~ tens) converges as well.
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(10), dtype=F64)
    torch.testing.assert_close(polar(G, ns="polar_express_8", dtype=F64), polar(G, ns="svd", dtype=F64),
                               rtol=0, atol=1e-6)


def test_newton_schulz_direct_call_and_shape_check():
    X = torch.randn(6, 9, generator=torch.Generator().manual_seed(11), dtype=F64)
    keller = SCHEDULES["keller"]
    torch.testing.assert_close(newton_schulz(X, keller, 5, F64), polar(X, "keller", 5, F64), rtol=0, atol=0)
    with pytest.raises(ValueError, match=exact("newton_schulz expects a 2-D or 3-D tensor, got shape (9,)")):
        newton_schulz(torch.ones(9), keller, 5, torch.float32)


def test_default_dtype_follows_device():
    torch.manual_seed(10)
    X = torch.randn(4, 6, dtype=F64)
    assert polar(X).dtype == torch.float32  # CPU: float32
    assert polar(X, ns="svd").dtype == torch.float32


# -- schedule lookup and dtype policy ----------------------------------------------------------
def test_schedule_names():
    assert SCHEDULE_NAMES == tuple(SCHEDULES) + ("svd",)
    assert {"keller", "you", "quintic", "polar_express", "polar_express_8"} <= set(SCHEDULES)
    for name, schedule in SCHEDULES.items():
        assert get_schedule(name) is schedule and schedule.name == name


def test_unknown_schedule_message():
    msg = ("Unknown Newton-Schulz schedule 'nope'; expected one of: "
           "keller, you, quintic, polar_express, polar_express_8, svd")
    with pytest.raises(ValueError, match=exact(msg)):
        get_schedule("nope")
    with pytest.raises(ValueError, match=exact(msg)):
        polar(torch.ones(3, 3), ns="nope")


def test_resolve_ns_dtype():
    cpu = torch.device("cpu")
    native = native_bf16_matmul()
    assert resolve_ns_dtype("auto", cpu) == (torch.bfloat16 if native else torch.float32)
    assert resolve_ns_dtype("auto", torch.device("cuda")) == torch.bfloat16  # no CUDA needed
    expected = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": F64}
    for name, dtype in expected.items():
        assert resolve_ns_dtype(name, cpu) == dtype
    assert NS_DTYPE_NAMES == ("auto",) + tuple(expected)
    msg = "Unknown ns_dtype 'fp8'; expected one of: auto, float32, bfloat16, float16, float64"
    with pytest.raises(ValueError, match=exact(msg)):
        resolve_ns_dtype("fp8", cpu)


# -- torch.optim.Muon parity -------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(16, 24), (24, 16), (20, 20)])
def test_keller_bfloat16_equals_torch_muon_kernel(shape):
    from torch.optim._muon import _zeropower_via_newtonschulz as reference  # torch >= 2.9, a dependency

    G = torch.randn(*shape, generator=torch.Generator().manual_seed(12))
    expected = reference(G.clone(), (3.4445, -4.775, 2.0315), 5, 1e-7)
    out = polar(G, ns="keller", dtype=torch.bfloat16, eps=1e-7)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, expected)


# -- ns_dtype="auto" on the CPU: decided by the CPU's bfloat16 matrix instructions -----------------
@pytest.mark.parametrize("caps, expected, feature", [
    ({"architecture": "x86_64", "avx2": True, "amx_bf16": False, "avx512_bf16": False}, torch.float32, None),
    ({"architecture": "x86_64", "avx512_f": True, "avx512_bf16": False}, torch.float32, None),  # AVX-512 alone is not enough
    ({"architecture": "x86_64", "avx512_f": True, "avx512_bf16": True}, torch.bfloat16, "avx512_bf16"),
    ({"architecture": "x86_64", "amx_bf16": True, "amx_tile": True, "avx512_bf16": True}, torch.bfloat16, "amx_bf16"),
    ({}, torch.float32, None),  # a build that cannot tell: the safe choice
])
def test_auto_ns_dtype_follows_cpu_capabilities(caps, expected, feature):
    assert native_bf16_matmul(caps) == feature
    dtype, reason = auto_ns_dtype("cpu", caps)
    assert dtype == expected
    assert resolve_ns_dtype("auto", torch.device("cpu"), caps) == expected
    if feature:
        assert reason == f"bfloat16: the CPU has {feature} (native bfloat16 matmul)"
    else:
        assert reason == ("float32: the CPU has neither amx_bf16 nor avx512_bf16 "
                          "(bfloat16 matmul would take a slow reference path)")


def test_auto_ns_dtype_other_devices():
    assert auto_ns_dtype("cuda") == (torch.bfloat16, "bfloat16 on CUDA (tensor-core matmul)")
    assert auto_ns_dtype("mps") == (torch.float32, "float32 on mps (no bfloat16 policy for this device)")
    # the detection reads torch's own report of this CPU
    assert native_bf16_matmul() == native_bf16_matmul(torch.cpu.get_capabilities())


# -- the Gram form (fewer FLOPs on rectangular matrices, the same polynomial) ------------------------
def _spectrum_input(m: int, n: int, rank: int, seed: int) -> torch.Tensor:
    """A float64 m x n matrix of exact rank ``rank`` with singular values log-spaced over [1e-2, 1]."""
    gen = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(m, rank, generator=gen, dtype=F64))[0]
    V = torch.linalg.qr(torch.randn(n, rank, generator=gen, dtype=F64))[0]
    return U @ torch.diag(torch.logspace(0, -2, rank, dtype=F64)) @ V.T


GRAM_CASES = [  # (m, n, rank): wide, tall, square, rank-deficient wide and tall
    (64, 256, 64), (320, 80, 80), (96, 96, 96), (96, 384, 40), (300, 64, 17)]


@pytest.mark.parametrize("schedule", SCHEDULE_LIST)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("m,n,rank", GRAM_CASES)
def test_gram_form_stays_in_band_against_svd(schedule, dtype, m, n, rank):
    """On the input's rank the Gram form's singular values lie in the schedule's band (float64 SVD),
    its zero singular values stay near zero, and it agrees with the direct form to rounding."""
    G = _spectrum_input(m, n, rank, seed=m + n + rank)
    sched = SCHEDULES[schedule]
    gram = polar(G.to(dtype), ns=schedule, dtype=dtype, form="gram")
    direct = polar(G.to(dtype), ns=schedule, dtype=dtype, form="direct")
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    images = torch.diagonal(U[:, :rank].T @ gram.double() @ Vh[:rank].T)
    images = images[S[:rank] >= 1e-2 * torch.linalg.vector_norm(S)]  # the band's documented domain
    assert images.numel() >= rank // 3
    lo, hi = sched.band
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    assert float(images.min()) >= lo - tol and float(images.max()) <= hi + tol, images
    sv = torch.linalg.svdvals(gram.double())
    growth = math.prod(abs(a) for a, _, _ in sched.coefficients_for(sched.default_steps))
    if rank < len(sv):
        assert float(sv[rank:].max()) <= 8 * torch.finfo(dtype).eps * growth
    # Rounding: the direct form corrects its own at every step, the Gram form carries Q's into the
    # result (growing with prod(a)): measured 10-50x the direct form's float32 error, at most 7.5e-4
    # per entry on these inputs, still 10-500x below a bfloat16 direct iteration's (0.006-0.36).
    reference = polar(G, ns=schedule, dtype=F64, form="direct")
    err_gram = float((gram.double() - reference).abs().max())
    err_direct = float((direct.double() - reference).abs().max())
    if dtype == torch.float32:
        assert err_gram <= 1e-3 and err_gram <= 64 * err_direct + 1e-6, (err_gram, err_direct)
    else:
        assert err_gram <= 1e-11, err_gram


def test_choose_form_rule():
    f32, bf16 = torch.float32, torch.bfloat16
    assert choose_form("auto", (96, 384), 5, f32) == "gram"          # 0.55x the direct FLOPs
    assert choose_form("auto", (384, 96), 5, f32) == "gram"          # either orientation
    assert choose_form("auto", (7, 96, 384), 5, F64) == "gram"       # a stack: the matrices' shape
    assert choose_form("auto", (96, 96), 5, f32) == "direct"         # square: more FLOPs
    assert choose_form("auto", (96, 192), 5, f32) == "direct"        # 0.84x: not enough
    assert choose_form("auto", (32, 128), 5, f32) == "direct"        # short side below 64
    assert choose_form("auto", (96, 384), 5, bf16) == "direct"       # bfloat16 leaves the band
    assert choose_form("auto", (96, 384), 1, f32) == "direct"        # one step: no saving
    assert choose_form("gram", (8, 8), 5, bf16) == "gram"            # an explicit form is kept
    assert choose_form("direct", (96, 384), 5, f32) == "direct"
    assert gram_flops(96, 384, 5) == 4 * 96 * 96 * 384 + 2 * 96 ** 3 * 17
    assert direct_flops(384, 96, 5) == 5 * (4 * 96 * 96 * 384 + 2 * 96 ** 3)
    with pytest.raises(ValueError, match=exact("Unknown ns_form 'fast'; expected one of: auto, direct, gram")):
        choose_form("fast", (4, 4), 5, f32)


def test_auto_form_is_direct_in_bfloat16_bit_for_bit():
    G = torch.randn(96, 384, generator=torch.Generator().manual_seed(3))
    assert torch.equal(polar(G, dtype=torch.bfloat16), polar(G, dtype=torch.bfloat16, form="direct"))
    assert torch.equal(polar(G, dtype=torch.float32), polar(G, dtype=torch.float32, form="gram"))


def test_ns_form_group_key_reaches_the_geometry():
    from steepest.geometry import make_geometry
    geom = make_geometry({"geometry": "spectral", "ns_form": "direct"})
    assert geom.ns_form == "direct"
    assert make_geometry({"geometry": "spectral"}).ns_form == "auto"
    with pytest.raises(ValueError, match=exact("Unknown ns_form 'x'; expected one of: auto, direct, gram")):
        make_geometry({"geometry": "spectral", "ns_form": "x"})
    W = torch.nn.Parameter(torch.randn(96, 384))
    W.grad = torch.randn(96, 384)
    import steepest
    steps = {}
    for form in ("direct", "gram"):
        w = torch.nn.Parameter(W.detach().clone())
        w.grad = W.grad.clone()
        steepest.Muon([{"params": [w], "ns_form": form}], lr=0.1).step()
        steps[form] = w.detach() - W.detach()
    assert not torch.equal(steps["direct"], steps["gram"])  # two computations ...
    assert torch.allclose(steps["direct"], steps["gram"], atol=1e-6)  # ... of the same step
