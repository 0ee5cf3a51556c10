"""Newton-Schulz iterations for the polar factor, batched over same-shape matrices.

For ``G = U S V^T`` the polar factor is ``polar(G) = U V^T``: the linear minimization oracle of the
spectral-norm ball (Muon's direction). Newton-Schulz approximates it with matmuls only:

    G'  = G * 2^-e                       # exact: max |G'| in [0.5, 1) (steepest.numerics)
    X_0 = G' / (s ||G'||_F + eps)        # sigma_max(X_0) <= 1 since ||G||_F >= ||G||_2
    A   = X X^T                          # on the wide orientation, so A is the smaller Gram
    X  <- a X + (b A + c A^2) X          # per singular value: x <- a x + b x^3 + c x^5

FLOPs per iteration for a p x q matrix (p <= q): about 4 p^2 q + 2 p^3 (``X X^T`` and the final
product 2 p^2 q each, ``A^2`` 2 p^3).

The power-of-two prescale runs in the input's dtype before the cast to the iteration dtype, per
matrix of a stack. It makes the step independent of the gradient's scale over the whole floating
range: without it the Frobenius norm's square overflows in float32/bfloat16 above ~1.8e19 (the
"polar factor" is then exactly 0), a norm below ``eps`` divides by ``eps`` (singular values far
below the band), and a float16 iteration turns entries above 65504 into inf. Multiplying by a
power of two is exact and every later step is invariant to it, so in the normal range nothing
changes, bit for bit.

For a single matrix the op sequence is otherwise exactly ``torch.optim.Muon``'s (cast, transpose
tall inputs, divide by the clamped Frobenius norm, ``addmm`` with ``beta=b, alpha=c`` then
``beta=a``), so with the same coefficients, steps and dtype the two agree bit for bit whenever
``||G||_F >= eps`` (the norm is multiplied by the schedule's input scale, which for ``1.0`` is
exact; below ``eps`` torch.optim.Muon returns a step far shorter than the polar factor). A stack of
matrices runs the same iteration with ``baddbmm``.

``compile=True`` runs the normalization and the iteration, :func:`newton_schulz_wide`, as one
``torch.compile(fullgraph=True, dynamic=True)`` graph (:mod:`steepest.compiled`) on a contiguous
copy of the wide orientation, so one graph serves every shape of a rank; the coefficients are
constants of the graph (one graph per schedule and step count).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..compiled import kernel
from ..numerics import max_abs, power_of_two_scale
from .schedules import Coefficients, Schedule


def newton_schulz(G: Tensor, schedule: Schedule, steps: int, dtype: torch.dtype, eps: float = 1e-7, *,
                  compile: bool = False) -> Tensor:
    """Approximate ``polar(G)`` for ``G`` of shape ``(m, n)`` or ``(batch, m, n)``.

    Args:
        G: the input matrix or stack of same-shape matrices.
        schedule: coefficients and input scale (see :mod:`steepest.polar.schedules`).
        steps: number of quintic iterations.
        dtype: iteration dtype; the result is returned in this dtype.
        eps: guards the normalization, so a zero input returns zeros (never NaN). After the
            power-of-two prescale a nonzero input has ``||G'||_F >= 0.5``, so an ``eps`` below
            0.5 (the default is 1e-7) only ever acts on the zero matrix.
        compile: run the normalization and the iteration (:func:`newton_schulz_wide`) as one
            ``torch.compile`` graph (see :mod:`steepest.compiled`); the cast and the transposes
            stay eager. Inductor may fuse and reorder float operations, so the result agrees with
            the eager one to rounding (about 1e-6 relative in float32), not bit for bit.

    Returns:
        A tensor shaped like ``G`` whose singular values lie in the schedule's band.
    """
    if G.ndim not in (2, 3):
        raise ValueError(f"newton_schulz expects a 2-D or 3-D tensor, got shape {tuple(G.shape)}")
    X = _prescaled(G, dtype, eps, schedule.input_scale)
    tall = G.size(-2) > G.size(-1)
    if tall:
        X = X.mT
    if compile:
        X = X.contiguous()  # one graph for tall and wide inputs (a transposed view has other strides)
    # the guard must survive in the iteration dtype (float16's smallest normal is 6.1e-5: a smaller
    # eps would round the zero matrix's divisor to 0, and 0/0 is NaN)
    eps = max(float(eps), torch.finfo(dtype).tiny)
    X = kernel(newton_schulz_wide, compile)(X, tuple(schedule.coefficients_for(steps)), schedule.input_scale, eps)
    if tall:
        X = X.mT
    return X


#: On the CPU the prescale is skipped where it provably changes nothing: every matrix's largest
#: magnitude ``a`` in ``[2**-40, 2**40]`` with ``a * input_scale >= eps``, in a float32, bfloat16
#: or float64 iteration. Then no square over- or underflows and the eps clamp does not act, so
#: both paths give the same bits; the check costs one reduction and a host read, which on the CPU
#: is no synchronization, and saves the multiplication and its copy (measured in
#: docs/benchmarks.md, "Measurements behind the defaults").
_SKIP_RANGE = (2.0 ** -40, 2.0 ** 40)


def _prescaled(G: Tensor, dtype: torch.dtype, eps: float, input_scale: float) -> Tensor:
    """``G`` times the exact power of two that brings each matrix's largest entry into
    ``[0.5, 1)``, in ``dtype`` (``G`` itself on the CPU where that cannot change the result, see
    :data:`_SKIP_RANGE`). The product is written straight into a ``dtype`` tensor, one pass that
    also does the cast (the product is exact, so rounding it once to ``dtype`` is the same as
    casting first; on an H100 it costs what the cast alone costs, a product and then a cast more than
    twice that: docs/benchmarks.md, "Measurements behind the defaults")."""
    if G.device.type == "cpu" and dtype != torch.float16 and G.numel():
        peaks = max_abs(G, dim=None if G.ndim == 2 else (-2, -1)).reshape(-1).tolist()  # per matrix
        low, high = min(peaks), max(peaks)
        if _SKIP_RANGE[0] <= low and high <= _SKIP_RANGE[1] and low * input_scale >= eps:
            return G.to(dtype)
    return torch.mul(G, power_of_two_scale(G, dims=(-2, -1)), out=torch.empty(G.shape, dtype=dtype, device=G.device))


def newton_schulz_wide(X: Tensor, coefficients: tuple[Coefficients, ...], input_scale: float, eps: float) -> Tensor:
    """The pure kernel of :func:`newton_schulz` on a wide (``m <= n``) matrix or stack ``X``, already
    in the iteration dtype: ``X / max(input_scale * ||X||_F, eps)`` (per matrix of a stack), then one
    quintic step per ``(a, b, c)`` of ``coefficients``. Never modifies ``X``."""
    if X.ndim == 2:
        norm = X.norm()
    else:
        norm = torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True)
    X = X.div((norm * input_scale).clamp(min=eps))  # x * 1.0 is exact: unscaled schedules are unchanged
    if X.ndim == 2:
        for a, b, c in coefficients:
            A = X @ X.T
            B = torch.addmm(A, A, A, beta=b, alpha=c)
            X = torch.addmm(X, B, X, beta=a)
    else:
        for a, b, c in coefficients:
            A = X @ X.mT
            B = torch.baddbmm(A, A, A, beta=b, alpha=c)
            X = torch.baddbmm(X, B, X, beta=a)
    return X
