"""Range-safe l2 norms and exact rescaling: the primitives that keep steps finite and scale-free.

``torch.linalg.vector_norm`` squares its input in the working precision. In float32 (the working
dtype of float32 and bfloat16 tensors) the square of an entry above ~1.8e19 overflows, so a finite
tensor gets an infinite norm and a normalized step of exactly zero, and the square of an entry
below ~1e-19 is subnormal or zero, so the norm is inaccurate or zero and "unit" steps are not. In
float64 the same happens beyond ~1e154 and below ~1e-154.

The functions here divide by the largest magnitude first (per slice when ``dim`` is given)::

    a = max |x|                           # over the reduced dimensions
    ||x||_2 = a * || x / a ||_2           # every |x / a| <= 1: no overflow, and the largest is 1

so every finite input gets its norm to rounding, at the cost of one extra reduction (``aminmax``,
which reads ``x`` once without materializing ``|x|``) and an elementwise pass that the normalizing
functions reuse as their output buffer. Entries more than ~19 decades below their slice's largest
one still have subnormal squares in float32; together they change the norm by at most ``numel *
6e-39`` relative.

:func:`power_of_two_scale` gives the exact counterpart for kernels that must stay bit-identical to a
reference (Newton-Schulz against ``torch.optim.Muon``): multiplying by a power of two is exact, so
prescaling changes nothing in the normal range and only rescues inputs outside it.
"""
from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

__all__ = ["max_abs", "l2_norm", "l2_normalize", "power_of_two_scale", "scales_for_peaks", "wide_float"]


def _work(x: Tensor) -> Tensor:
    """float32 for half-precision inputs (whose reductions accumulate in float32 anyway)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def max_abs(x: Tensor, dim: int | tuple[int, ...] | None = None, keepdim: bool = False) -> Tensor:
    """``max |x|`` over ``dim`` (one dimension, several, or all of ``x`` for ``None``), ``0`` for an
    empty reduction, by the fastest reduction measured for the device: on CUDA one infinity-norm
    reduction (faster than ``abs().amax()``); on the CPU ``torch.aminmax`` for the whole tensor or
    one dimension (it reads ``x`` once and never materializes ``|x|``) and ``abs().amax()`` for
    several dimensions (``aminmax`` takes one, and along a flattened one it is slower; the CPU
    infinity-norm kernel is slower still). The timings are in docs/benchmarks.md, "Measurements
    behind the defaults"."""
    dims = (dim,) if isinstance(dim, int) else dim
    if x.numel() == 0:
        reduced = set(range(x.ndim)) if dims is None else {d % x.ndim for d in dims}
        shape = [1 if d in reduced else n for d, n in enumerate(x.shape)] if keepdim else \
            [n for d, n in enumerate(x.shape) if d not in reduced]
        return x.new_zeros(shape)
    if x.device.type == "cuda":
        return torch.linalg.vector_norm(x, ord=math.inf, dim=dims, keepdim=keepdim)
    if dims is None:  # aminmax(dim=None, keepdim=True) resizes its outputs (a warning on CUDA)
        lo, hi = torch.aminmax(x)
        peak = torch.maximum(hi, lo.neg())
        return peak.reshape([1] * x.ndim) if keepdim else peak
    if len(dims) == 1:
        lo, hi = torch.aminmax(x, dim=dims[0], keepdim=keepdim)
        return torch.maximum(hi, lo.neg())
    return x.abs().amax(dim=dims, keepdim=keepdim)


def _safe_divisor(a: Tensor) -> Tensor:
    return torch.where(a > 0, a, torch.ones((), dtype=a.dtype, device=a.device))


def l2_norm(x: Tensor, dim: int | None = None, keepdim: bool = False) -> Tensor:
    """``||x||_2`` over ``dim`` (all of ``x`` for ``None``), finite and accurate for every finite ``x``.

    The result is in float32 for float32/bfloat16/float16 inputs and float64 for float64 inputs;
    an empty reduction gives 0.
    """
    w = _work(x)
    a = max_abs(w, dim=dim, keepdim=True)
    scaled = torch.linalg.vector_norm(w / _safe_divisor(a), dim=dim, keepdim=True)
    norm = a * scaled
    if not keepdim:
        norm = norm.reshape(()) if dim is None else norm.squeeze(dim)
    return norm


def l2_normalize(x: Tensor, dim: int | None = None) -> Tensor:
    """``x / ||x||_2`` over ``dim`` (all of ``x`` for ``None``): unit l2 norm for every finite
    nonzero slice, exactly zero for a zero slice; float32 for half-precision inputs.

    Dividing by the largest magnitude first keeps the squares in range (see the module docstring);
    the scaled copy is then normalized in place, so the cost over an unguarded ``x / ||x||`` is one
    ``aminmax`` reduction and one in-place pass.
    """
    w = _work(x)
    if w.numel() == 0:
        return w.clone()
    a = max_abs(w, dim=dim, keepdim=True)
    out = w / _safe_divisor(a)
    norm = torch.linalg.vector_norm(out, dim=dim, keepdim=True)
    return out.div_(_safe_divisor(norm))


@functools.lru_cache(maxsize=None)
def _exponent_range(dtype: torch.dtype) -> tuple[int, int]:
    """The range of ``e`` for which ``2**-e`` is a normal number of ``dtype`` (float32: [-127, 126])."""
    info = torch.finfo(dtype)
    max_e = math.frexp(info.max)[1]   # the largest power of two is 2**(max_e - 1)
    min_e = math.frexp(info.tiny)[1]  # the smallest normal power of two is 2**(min_e - 1)
    return -(max_e - 1), -(min_e - 1)


def power_of_two_scale(x: Tensor, dims: tuple[int, ...] | None = None) -> Tensor:
    """The power of two ``s`` (a tensor in ``x``'s dtype, shaped for broadcasting over ``dims``)
    that brings ``max |x|`` into ``[0.5, 1)``: ``x * s`` is exact, and every computation that is
    invariant to power-of-two scaling gives bit for bit the same result on it.

    ``dims=None`` scales the whole tensor; a tuple gives one scale per slice over those dimensions
    (one per matrix of a stack with ``dims=(-2, -1)``). ``s`` is always a normal number, so a
    device that flushes subnormals to zero cannot turn it into 0. At the ends of the range that
    bounds it: a zero slice gets ``s = 1``; an input whose largest entry is subnormal gets the
    largest power of two the dtype holds, which still lifts that entry into the normal range
    (float32: ``2**127``, so it lands in ``[2**-22, 1)``); an input whose largest entry is at least
    ``2**126`` (float32: 8.5e37) gets ``2**-126``, so it lands in ``[1, 4)``.
    """
    return scales_for_peaks(max_abs(x, dims, keepdim=dims is not None))  # a zero or empty slice: s = 1


def scales_for_peaks(peaks: Tensor) -> Tensor:
    """:func:`power_of_two_scale` from given largest magnitudes (any shape, elementwise): one call
    for many tensors, e.g. ``scales_for_peaks(torch.stack([max_abs(g) for g in grads]))``."""
    exponent = torch.frexp(peaks).exponent  # a = m * 2**e with m in [0.5, 1); 0 for a zero slice
    lo, hi = _exponent_range(peaks.dtype)
    return torch.ldexp(torch.ones_like(peaks), exponent.clamp_(lo, hi).neg_())


def wide_float(device: torch.device | str) -> torch.dtype:
    """dtype of small accumulators whose entries can be squares of gradient-sized numbers (LANTON's
    noise EMA, M-FAC's Gram matrices): float64, so squares up to ~1e308 stay finite; float32 on
    Apple's MPS, which has no float64."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64
