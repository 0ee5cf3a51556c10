"""Newton-Schulz iterations for the polar factor, batched over same-shape matrices.

For ``G = U S V^T`` the polar factor is ``polar(G) = U V^T``: the linear minimization oracle of the
spectral-norm ball (Muon's direction). Newton-Schulz approximates it with matmuls only:

    G'  = G * 2^-e                       # exact: max |G'| in [0.5, 1) (steepest.numerics)
    X_0 = G' / (s ||G'||_F + eps)        # sigma_max(X_0) <= 1 since ||G||_F >= ||G||_2
    A   = X X^T                          # on the wide orientation, so A is the smaller Gram
    X  <- a X + (b A + c A^2) X          # per singular value: x <- a x + b x^3 + c x^5

FLOPs per iteration for a p x q matrix (p <= q): about 4 p^2 q + 2 p^3 (``X X^T`` and the final
product 2 p^2 q each, ``A^2`` 2 p^3).

**The Gram form** (:func:`newton_schulz_gram`) computes the same polynomial with the long side
touched only twice. Every iterate is ``X_k = Q_k X_0`` with ``Q_k`` a polynomial in the p x p Gram
matrix ``R_0 = X_0 X_0^T``, so ``Q_k`` commutes with ``R_0`` and ``R_k = X_k X_k^T = Q_k R_0 Q_k^T``.
With ``P_k = a I + b R_k + c R_k^2`` (the step's polynomial, ``X_{k+1} = P_k X_k``):

    R_0 = X_0 X_0^T;   Q_1 = P_0;   Q_{k+1} = P_k Q_k;   R_{k+1} = P_k R_k P_k;   X = Q_K X_0

In exact arithmetic this is the direct iteration (each singular value follows the same scalar map);
the cost is 4 p^2 q + 2 p^3 (4K - 3) FLOPs for K steps against K (4 p^2 q + 2 p^3), fewer whenever
q > 1.5 p (a 96 x 384 matrix, 5 steps: 0.55x). In floating point the two differ by rounding: the
direct form corrects its own rounding at every step (each step is applied to the current ``X``),
while the Gram form multiplies the accumulated ``Q`` into ``X_0`` once, so ``Q``'s rounding error,
which grows with the product of the ``a`` coefficients (about 450 for Keller's 5 steps), lands in
the result. In float32 both stay inside every schedule's band, and the Gram form's entries lie
within 1e-5 to 7.5e-4 of a float64 reference (10-50x the direct form's error, and 10-500x below a
bfloat16 direct iteration's 0.006-0.36, on the inputs of ``tests/test_polar.py``); in
bfloat16 the Gram form leaves the band by far (top singular values up to 2-40 instead of 1.14, on
96 x 384 Gaussian and ill-conditioned inputs). Hence ``form="auto"`` (:func:`choose_form`) takes
the Gram form only for float32/float64 iterations, only where it needs at most 3/4 of the direct
form's FLOPs and the short side has at least 64 rows (below that the extra small products cost
more in dispatch than they save: measured on the CPU in docs/benchmarks.md, "Newton-Schulz in Gram
form"). ``form="direct"`` keeps the op sequence below, bit for bit.

The power-of-two prescale runs in the input's dtype before the cast to the iteration dtype, per
matrix of a stack. It makes the step independent of the gradient's scale over the whole floating
range: without it the Frobenius norm's square overflows in float32/bfloat16 above ~1.8e19 (the
"polar factor" is then exactly 0), a norm below ``eps`` divides by ``eps`` (singular values far
below the band), and a float16 iteration turns entries above 65504 into inf. Multiplying by a
power of two is exact and every later step is invariant to it, so in the normal range nothing
changes, bit for bit.

For a single matrix the direct form's op sequence is otherwise exactly ``torch.optim.Muon``'s (cast, transpose
tall inputs, divide by the clamped Frobenius norm, ``addmm`` with ``beta=b, alpha=c`` then
``beta=a``), so with the same coefficients, steps and dtype the two agree bit for bit (bfloat16 always takes the direct form) whenever
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


#: Newton-Schulz forms: ``direct`` iterates on ``X``, ``gram`` on the short side's Gram matrix
#: (module docstring), ``auto`` picks by :func:`choose_form`.
NS_FORMS: tuple[str, ...] = ("auto", "direct", "gram")
#: ``form="auto"`` takes the Gram form when it needs at most this share of the direct form's FLOPs ...
GRAM_MAX_FLOP_RATIO = 0.75
#: ... and the matrix's short side has at least this many rows.
GRAM_MIN_SIDE = 64


def direct_flops(p: int, q: int, steps: int) -> int:
    """FLOPs of ``steps`` direct iterations on a p x q matrix (either orientation)."""
    p, q = min(p, q), max(p, q)
    return steps * (4 * p * p * q + 2 * p ** 3)


def gram_flops(p: int, q: int, steps: int) -> int:
    """FLOPs of ``steps`` Gram-form iterations on a p x q matrix (either orientation)."""
    p, q = min(p, q), max(p, q)
    return 4 * p * p * q + 2 * p ** 3 * max(4 * steps - 3, 1)


def check_form(form: str) -> None:
    """``ValueError`` unless ``form`` is one of :data:`NS_FORMS`."""
    if form not in NS_FORMS:
        raise ValueError(f"Unknown ns_form {form!r}; expected one of: {', '.join(NS_FORMS)}")


def choose_form(form: str, shape: tuple[int, ...], steps: int, dtype: torch.dtype) -> str:
    """``"direct"`` or ``"gram"`` for a matrix (or stack) of ``shape`` iterated ``steps`` times in
    ``dtype``: ``form`` itself unless it is ``"auto"``, which takes ``"gram"`` only in float32/float64,
    for a short side of at least :data:`GRAM_MIN_SIDE` and at most :data:`GRAM_MAX_FLOP_RATIO` of
    the direct form's FLOPs (module docstring)."""
    check_form(form)
    if form != "auto":
        return form
    p, q = sorted(shape[-2:])
    if dtype not in (torch.float32, torch.float64) or p < GRAM_MIN_SIDE:
        return "direct"
    return "gram" if gram_flops(p, q, steps) <= GRAM_MAX_FLOP_RATIO * direct_flops(p, q, steps) else "direct"


def newton_schulz(G: Tensor, schedule: Schedule, steps: int, dtype: torch.dtype, eps: float = 1e-7, *,
                  compile: bool = False, form: str = "auto") -> Tensor:
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
        form: ``"direct"``, ``"gram"`` or ``"auto"`` (:func:`choose_form`); the Gram form is the
            same polynomial in fewer FLOPs for rectangular matrices (module docstring).

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
    iterate = newton_schulz_gram if choose_form(form, tuple(G.shape), steps, dtype) == "gram" else newton_schulz_wide
    X = kernel(iterate, compile)(X, tuple(schedule.coefficients_for(steps)), schedule.input_scale, eps)
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
    if G.device.type == "cpu" and dtype != torch.float16 and G.numel() and _prescale_is_exact_noop(G, eps, input_scale):
        return G.to(dtype)
    return torch.mul(G, power_of_two_scale(G, dims=(-2, -1)), out=torch.empty(G.shape, dtype=dtype, device=G.device))


def _prescale_is_exact_noop(G: Tensor, eps: float, input_scale: float) -> bool:
    """Whether every matrix of ``G`` has its largest magnitude in :data:`_SKIP_RANGE` with
    ``a * input_scale >= eps`` (CPU only: the one host read is no device synchronization)."""
    peaks = max_abs(G, dim=None if G.ndim == 2 else (-2, -1)).reshape(-1).tolist()  # per matrix
    low, high = min(peaks), max(peaks)
    return _SKIP_RANGE[0] <= low and high <= _SKIP_RANGE[1] and low * input_scale >= eps


def newton_schulz_wide(X: Tensor, coefficients: tuple[Coefficients, ...], input_scale: float, eps: float) -> Tensor:
    """The pure kernel of :func:`newton_schulz` on a wide (``m <= n``) matrix or stack ``X``, already
    in the iteration dtype: ``X / max(input_scale * ||X||_F, eps)`` (per matrix of a stack), then one
    quintic step per ``(a, b, c)`` of ``coefficients``. Never modifies ``X``."""
    X = _normalized(X, input_scale, eps)
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


def newton_schulz_gram(X: Tensor, coefficients: tuple[Coefficients, ...], input_scale: float, eps: float) -> Tensor:
    """The Gram form of :func:`newton_schulz_wide` (same arguments, same result up to rounding):
    the iteration runs on the p x p Gram matrix ``R = X X^T`` and the accumulated polynomial ``Q``,
    and ``Q X`` is formed once at the end (module docstring). Never modifies ``X``."""
    X = _normalized(X, input_scale, eps)
    R = X @ X.mT
    Q = None
    last = len(coefficients) - 1
    for k, (a, b, c) in enumerate(coefficients):
        P = torch.addmm(R, R, R, beta=b, alpha=c) if R.ndim == 2 else torch.baddbmm(R, R, R, beta=b, alpha=c)
        P.diagonal(dim1=-2, dim2=-1).add_(a)  # P = a I + b R + c R^2
        Q = P if Q is None else P @ Q
        if k < last:
            R = P @ (R @ P)  # R_{k+1} = P R P (P is a polynomial in R: the product stays symmetric)
    return X if Q is None else Q @ X


def _normalized(X: Tensor, input_scale: float, eps: float) -> Tensor:
    """``X / max(input_scale * ||X||_F, eps)``, per matrix of a stack."""
    if X.ndim == 2:
        norm = X.norm()
    else:
        norm = torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True)
    return X.div((norm * input_scale).clamp(min=eps))  # x * 1.0 is exact: unscaled schedules are unchanged
