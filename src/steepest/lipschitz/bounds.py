"""Upper bounds on a network's Lipschitz constant (l2 in, l2 out) from its layers' weights.

``lipschitz_bound(model)`` walks the module tree and combines one number per module:

- composition multiplies: ``Lip(g o f) <= Lip(g) Lip(f)``, so ``nn.Sequential`` gives the product
  of its children's bounds (an empty one is the identity, 1);
- a residual adds: ``Lip(x + f(x)) <= 1 + Lip(f)``;
- a convex residual interpolates: ``Lip((1 - a) x + a f(x)) <= (1 - a) + a Lip(f)`` for
  ``0 < a <= 1``. With ``a = 1 / (2 L)`` (the architecture of "Training Transformers with Enforced
  Lipschitz Constants", arXiv 2507.13338), a block of bound ``L`` gives ``1 - 1/(2L) + 1/2``.

Per-module rules: ``nn.Linear``: ``sigma_1(W)``, exact (``torch.linalg.matrix_norm(ord=2)`` in
float64; the bias does not matter); ``nn.ReLU``, ``nn.Tanh``, ``nn.Identity``: 1; ``nn.GELU``: its
largest slope (below); ``nn.Dropout``: 1 in eval mode (the identity); in training mode a draw
multiplies every kept entry by ``1/(1-p)``, so the bound is ``1/(1-p)`` (0 for ``p = 1``);
:class:`Residual`: the residual rules above. Every other module raises ``TypeError``.

The bound is for one example (a vector) and equally for a batch in the Frobenius norm: every
supported module acts on the rows of a batch independently with the same map.

GELU: ``d/dx [x Phi(x)] = Phi(x) + x phi(x)`` and ``d^2/dx^2 = phi(x) (2 - x^2)``, so the slope is
extremal at ``x = +-sqrt(2)``: the largest is ``Phi(sqrt 2) + sqrt 2 phi(sqrt 2) = (1 + erf 1)/2 +
1/(e sqrt(pi)) = 1.12890...``, the smallest ``1 - 1.12890... = -0.12890...``, so GELU is 1.1289-Lipschitz.
The tanh approximation (``approximate="tanh"``) has its largest slope computed numerically
(:func:`gelu_max_slope`; about 1.12899).

Note on the reference implementation of arXiv 2507.13338: its Lipschitz bound divides GeLU's
contribution by 1.1289 although the model already divides the activation's output by 1.1289;
dividing twice counts the same factor twice, and the result is not an upper bound. Here each module
contributes exactly its own factor once: a model that rescales GELU by ``1/1.1289`` must contain the
rescaling as a module (e.g. a ``Linear`` with the scaled weight), which then contributes its own
factor.

Attention: softmax (dot-product) self-attention is not globally Lipschitz: its Jacobian grows
without bound with the size of the input (Kim, Papamakarios, Mnih, "The Lipschitz Constant of
Self-Attention", arXiv 2006.04710). A finite bound needs bounded inputs. ``lipschitz_bound(model,
input_bound=r)`` supports :class:`LipschitzAttention` (the attention of arXiv 2507.13338) for inputs
whose tokens all have l2 norm at most ``r``; without ``input_bound`` it raises ``TypeError``, and
torch's own attention modules (``nn.MultiheadAttention``, ``nn.Transformer*``) are never supported.

Norms with sequences. A sequence is a ``(T, d)`` matrix ``X`` of tokens ``x_i`` (rows). Every
module other than attention acts on the tokens independently with one map ``g``; if ``g`` is
``L``-Lipschitz in l2, the token-wise map is ``L``-Lipschitz both in the Frobenius norm
``||X||_F`` and in the *token-max norm* ``||X||_{2,inf} = max_i ||x_i||_2``. Attention mixes
tokens, and its constant depends on the norm:

- ``seq_len=None`` (default): the bound holds in the token-max norm ``||.||_{2,inf}`` (input and
  output), for sequences of any length;
- ``seq_len=T``: the bound holds in the Frobenius norm (the l2 norm of the flattened sequence, as
  for the Jacobian of the flattened map), for sequences of length at most ``T``; here ``T`` enters
  the attention bound (below).

For models without attention both coincide with the plain l2 bound. A batch of sequences is covered
as well (sequences do not interact; max over all tokens, resp. Frobenius over the whole batch).

Input-size bookkeeping (``input_bound=r``): the walk also carries ``R``, an upper bound of the l2
norm of every token of the current activation (the token-max norm), starting at ``R = r``:
``Linear``: ``sigma_1(W) R + ||b||_2``; ``ReLU``, ``Tanh``, ``GELU`` (both forms), ``Identity``:
``R`` (each satisfies ``|f(t)| <= |t|`` entrywise; ``0 <= Phi <= 1`` for GELU, ``0 <= (1 +
tanh)/2 <= 1`` for its tanh form); ``Dropout``: ``R`` in eval mode, ``R / (1 - p)`` in training
mode; ``Residual``: ``R + R_block`` or ``(1 - a) R + a R_block``; ``Sequential``: composed;
:class:`LipschitzAttention`: see :meth:`LipschitzAttention.output_bound`. Each module's Lipschitz
bound is taken on the set of its possible inputs (all tokens of norm at most its ``R``); that set is
convex, so the sup of the Jacobian's norm over it is a Lipschitz constant there, and the products
and sums of the rules above stay valid for the composition.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["lipschitz_bound", "module_bound", "output_bound", "Residual", "LipschitzAttention", "gelu_max_slope",
           "GELU_MAX_SLOPE"]

#: The largest slope of the exact GELU, ``(1 + erf(1))/2 + 1/(e sqrt(pi))`` (attained at ``sqrt 2``).
GELU_MAX_SLOPE: float = 0.5 * (1.0 + math.erf(1.0)) + 1.0 / (math.e * math.sqrt(math.pi))

_SUPPORTED = "Linear, Sequential, Residual, ReLU, Tanh, GELU, Identity, Dropout"
_SUPPORTED_BOUNDED = _SUPPORTED + ", LipschitzAttention (with input_bound=)"
_ATTENTION = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.TransformerEncoder,
              nn.TransformerDecoder, nn.Transformer)


def gelu_max_slope(approximate: str = "none") -> float:
    """The Lipschitz constant ``max |d/dx GELU(x)|`` of ``nn.GELU(approximate=...)``.

    ``"none"``: the closed form :data:`GELU_MAX_SLOPE` (1.12890...). ``"tanh"``: the slope of
    ``x/2 (1 + tanh(c (x + 0.044715 x^3)))``, ``c = sqrt(2/pi)``, maximized over a grid of step
    1e-4 on ``[-8, 8]`` in float64 plus a margin of 1e-6 (the slope's second derivative is below 0.8
    in magnitude, so the grid misses the maximum by less than 1e-9; outside ``[-8, 8]`` the slope is
    within 1e-12 of 0 or 1). The result is about 1.12899.
    """
    if approximate == "none":
        return GELU_MAX_SLOPE
    if approximate != "tanh":
        raise ValueError(f"Unknown approximate {approximate!r}; expected one of: none, tanh")
    x = torch.linspace(-8.0, 8.0, 160_001, dtype=torch.float64)
    c = math.sqrt(2.0 / math.pi)
    inner = c * (x + 0.044715 * x**3)
    t = torch.tanh(inner)
    slope = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * x * x)
    return float(slope.abs().max()) + 1e-6


class Residual(nn.Module):
    """A residual connection around ``block``: ``x + block(x)``, or with ``alpha`` the convex form
    ``(1 - alpha) x + alpha block(x)`` (arXiv 2507.13338 uses ``alpha = 1 / (2 L)``).

    Lipschitz bound: ``1 + L_block``, or ``(1 - alpha) + alpha L_block``.

    Args:
        block: the residual branch (its output must have the input's shape).
        alpha: ``None`` for the plain sum, or a weight in ``(0, 1]``.
    """

    def __init__(self, block: nn.Module, alpha: float | None = None):
        super().__init__()
        if not isinstance(block, nn.Module):
            raise TypeError(f"Invalid type for block: expected an nn.Module, got {type(block).__name__}")
        if alpha is not None:
            if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
                raise TypeError(f"Invalid type for alpha: expected a real number or None, got {type(alpha).__name__}")
            if not 0.0 < alpha <= 1.0:
                raise ValueError(f"Invalid alpha value: {alpha}; expected 0 < alpha <= 1 or None")
            alpha = float(alpha)
        self.block = block
        self.alpha = alpha

    def forward(self, x: Tensor) -> Tensor:
        if self.alpha is None:
            return x + self.block(x)
        return (1.0 - self.alpha) * x + self.alpha * self.block(x)

    def extra_repr(self) -> str:
        return "" if self.alpha is None else f"alpha={self.alpha:g}"


class LipschitzAttention(nn.Module):
    r"""Multi-head self-attention in the form of arXiv 2507.13338, with a Lipschitz bound on bounded inputs.

    For a sequence ``X`` of shape ``(..., T, dim)`` (tokens ``x_i`` are rows), ``H = n_heads`` heads of
    width ``d_h = dim / H``; ``W_q, W_k, W_v, W_o`` are bias-free ``dim x dim`` linear maps and
    ``W_q^h`` (``d_h x dim``) is the block of rows of ``W_q`` that head ``h`` uses (same for ``k, v``)::

        S^h_ij = (scale / d_h) (W_q^h x_i) . (W_k^h x_j)      (1/d_h, not 1/sqrt(d_h))
        P^h    = softmax over j of S^h (j <= i only if causal)
        y^h_i  = sum_j P^h_ij W_v^h x_j
        out_i  = (1/3) W_o concat_h(y^h_i)

    **Lipschitz bound** (:meth:`lipschitz_bound`). Domain: sequences whose tokens all satisfy
    ``||x_i||_2 <= r`` (a convex set, so a bound on the Jacobian's norm over it is a Lipschitz
    constant on it). Write ``c = |scale| / d_h``, ``A_h = W_q^h^T W_k^h`` (so ``S^h_ij = c x_i^T A_h
    x_j``), ``a_h = ||A_h||_2 <= ||W_q|| ||W_k||`` and ``v_h = ||W_v^h||_2 <= ||W_v||``. For one head
    (drop ``h``), ``dY = (dP X + P dX) W_v^T``. The value path: ``(P dX)_i`` is an average of the
    ``dx_j``. The logit path: row ``i`` of ``dP X`` is ``X^T (diag(p_i) - p_i p_i^T) dS_i``, the
    covariance under ``p_i`` of the logit change ``dS_ij = c (dx_i^T A x_j + x_i^T A dx_j)`` with
    ``x_j``. Its query part is ``c Cov_{p_i}(x) A^T dx_i``, and ``||Cov_{p_i}(x)||_2 <= r^2`` (points
    in a ball of radius ``r``); its key part is ``Cov_{p_i}(b, x)`` with ``b_j = c (A^T x_i) . dx_j``,
    at most ``sqrt(E b^2) r <= c a r^2 sqrt(sum_j P_ij ||dx_j||^2)`` (Cauchy-Schwarz). Hence::

        ||(dP X)_i|| <= c a r^2 (||dx_i|| + sqrt(sum_j P_ij ||dx_j||^2))

    - token-max norm ``||X||_{2,inf} = max_i ||x_i||`` (``seq_len=None``): per head
      ``||dy_i|| <= v (1 + 2 c a r^2) ||dX||_{2,inf}``, independent of ``T``;
    - Frobenius norm (``seq_len=T``, sequences of length at most ``T``): with ``C`` a bound of the
      column sums of ``P`` (rows sum to 1, so ``||P||_2 <= sqrt(C)``, and ``sum_i sum_j P_ij ||dx_j||^2
      <= C ||dX||_F^2``), per head ``||dY||_F <= v (sqrt(C) + c a r^2 (1 + sqrt(C))) ||dX||_F``.
      As ``|S_ij| <= m = c a r^2``, ``P_ij <= min(1, e^{2m} / n_i)`` with ``n_i`` the number of keys
      of query ``i``, so ``C = min(T, e^{2m})`` (``n_i = T``) or ``C = sum_{i=1}^T min(1, e^{2m}/i)``
      (causal, ``n_i = i``). ``C <= T``: the ``sqrt(T)`` is real (all queries attending to one key).

    Heads write to disjoint coordinates of the concatenation, so with ``k_h`` the per-head factor
    above, the bound is ``L = (1/3) ||W_o||_2 sqrt(sum_h k_h^2)``. For ``H = 1`` and the token-max
    norm this is the formula of arXiv 2507.13338, ``(1/3) ||W_o|| ||W_v|| (1 + 2 r^2 s' ||W_q||
    ||W_k||)`` with ``s' = scale / d_h`` (there with ``||A|| <= ||W_q|| ||W_k||``). With several heads
    the ``sqrt(sum_h ...)`` cannot be replaced by ``||W_v||``: heads attending to different tokens
    can each use their block's full norm (e.g. two blocks ``e u_1^T``, ``e u_2^T`` with ``u_1 _|_ u_2``
    have ``||W_v|| = 1`` but give ``sqrt 2``). In the Frobenius norm the paper's formula misses the
    ``sqrt(C)`` factors.

    **Output size** (:meth:`output_bound`): ``y^h_i`` is ``W_v^h`` applied to a convex combination of
    tokens, so ``||y^h_i|| <= v_h r`` and ``||out_i|| <= (1/3) ||W_o|| sqrt(sum_h v_h^2) r`` (token l2
    norm).

    Args:
        dim: token width.
        n_heads: number of heads (must divide ``dim``).
        scale: logit scale ``s`` (logits are ``s / d_h q.k``).
        causal: mask keys after the query.
    """

    def __init__(self, dim: int, n_heads: int, scale: float = 1.0, causal: bool = True):
        super().__init__()
        for name, value in (("dim", dim), ("n_heads", n_heads)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"Invalid type for {name}: expected an int, got {type(value).__name__}")
            if value < 1:
                raise ValueError(f"Invalid {name} value: {value}; expected a positive int")
        if dim % n_heads:
            raise ValueError(f"Invalid n_heads value: {n_heads}; expected a divisor of dim={dim}")
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise TypeError(f"Invalid type for scale: expected a real number, got {type(scale).__name__}")
        if not math.isfinite(scale):
            raise ValueError(f"Invalid scale value: {scale}; expected a finite number")
        self.dim, self.n_heads, self.scale, self.causal = int(dim), int(n_heads), float(scale), bool(causal)
        self.head_dim = self.dim // self.n_heads
        self.w_q = nn.Linear(dim, dim, bias=False)
        self.w_k = nn.Linear(dim, dim, bias=False)
        self.w_v = nn.Linear(dim, dim, bias=False)
        self.w_o = nn.Linear(dim, dim, bias=False)

    def _heads(self, t: Tensor) -> Tensor:  # (..., T, dim) -> (..., H, T, d_h)
        return t.unflatten(-1, (self.n_heads, self.head_dim)).transpose(-3, -2)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self._heads(self.w_q(x)), self._heads(self.w_k(x)), self._heads(self.w_v(x))
        logits = (self.scale / self.head_dim) * (q @ k.transpose(-1, -2))
        if self.causal:
            T = x.shape[-2]
            future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
            logits = logits.masked_fill(future, float("-inf"))
        y = torch.softmax(logits, dim=-1) @ v
        return self.w_o(y.transpose(-3, -2).flatten(-2)) / 3.0

    def _norms(self) -> tuple[float, list[float], list[float]]:
        """``||W_o||``, per head ``||W_v^h||`` and ``||W_q^h^T W_k^h||`` (spectral, float64)."""
        def w(lin: nn.Linear) -> Tensor:
            return lin.weight.detach().to(torch.float64).cpu()
        wq, wk, wv = (w(m).unflatten(0, (self.n_heads, self.head_dim)) for m in (self.w_q, self.w_k, self.w_v))
        a = torch.linalg.matrix_norm(wq.transpose(-1, -2) @ wk, ord=2)
        v = torch.linalg.matrix_norm(wv, ord=2)
        return float(torch.linalg.matrix_norm(w(self.w_o), ord=2)), v.tolist(), a.tolist()

    def lipschitz_bound(self, input_bound: float, seq_len: int | None = None) -> float:
        """The Lipschitz bound (class docstring) on sequences with tokens of l2 norm ``<= input_bound``:
        in the token-max norm (``seq_len=None``) or the Frobenius norm for length ``<= seq_len``."""
        r = _check_input_bound(input_bound)
        T = _check_seq_len(seq_len)
        o, vs, as_ = self._norms()
        c = abs(self.scale) / self.head_dim
        total = 0.0
        for v, a in zip(vs, as_):
            m = c * a * r * r
            if T is None:
                k = v * (1.0 + 2.0 * m)
            else:
                e2m = math.exp(min(2.0 * m, 700.0))
                if self.causal:
                    col = sum(min(1.0, e2m / i) for i in range(1, T + 1))
                else:
                    col = min(float(T), e2m)
                root = math.sqrt(col)
                k = v * (root + m * (1.0 + root))
            total += k * k
        return o * math.sqrt(total) / 3.0

    def output_bound(self, input_bound: float) -> float:
        """A bound of the l2 norm of every output token given tokens of norm ``<= input_bound``."""
        r = _check_input_bound(input_bound)
        o, vs, _ = self._norms()
        return o * math.sqrt(sum(v * v for v in vs)) * r / 3.0

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_heads={self.n_heads}, scale={self.scale:g}, causal={self.causal}"


def _check_input_bound(r: Any) -> float:
    if isinstance(r, bool) or not isinstance(r, numbers.Real):
        raise TypeError(f"Invalid type for input_bound: expected a real number, got {type(r).__name__}")
    if not (math.isfinite(r) and r >= 0):
        raise ValueError(f"Invalid input_bound value: {r}; expected a finite number >= 0")
    return float(r)


def _check_seq_len(T: Any) -> int | None:
    if T is None:
        return None
    if isinstance(T, bool) or not isinstance(T, numbers.Integral):
        raise TypeError(f"Invalid type for seq_len: expected an int or None, got {type(T).__name__}")
    if T < 1:
        raise ValueError(f"Invalid seq_len value: {T}; expected a positive int or None")
    return int(T)


def _walk(m: nn.Module, r: float | None, seq_len: int | None) -> tuple[float, float | None]:
    """(Lipschitz bound, output token-norm bound) of ``m`` for input tokens of norm ``<= r``
    (``r = None``: unbounded inputs, no size bookkeeping)."""
    if isinstance(m, Residual):
        inner, r_in = _walk(m.block, r, seq_len)
        if m.alpha is None:
            return 1.0 + inner, None if r is None else r + r_in
        a = m.alpha
        return (1.0 - a) + a * inner, None if r is None else (1.0 - a) * r + a * r_in
    if isinstance(m, nn.Sequential):
        total = 1.0
        for child in m:
            bound, r = _walk(child, r, seq_len)
            total *= bound
        return total, r
    if isinstance(m, nn.Linear):
        w = m.weight.detach().to(torch.float64)
        sigma = float(torch.linalg.matrix_norm(w, ord=2))
        if r is None:
            return sigma, None
        b = 0.0 if m.bias is None else float(torch.linalg.vector_norm(m.bias.detach().to(torch.float64)))
        return sigma, sigma * r + b
    if isinstance(m, (nn.ReLU, nn.Tanh, nn.Identity)):
        return 1.0, r
    if isinstance(m, nn.GELU):
        return gelu_max_slope(m.approximate), r
    if isinstance(m, nn.Dropout):
        if not m.training:
            return 1.0, r
        f = 0.0 if m.p >= 1.0 else 1.0 / (1.0 - m.p)
        return f, None if r is None else f * r
    name = type(m).__name__
    if isinstance(m, LipschitzAttention):
        if r is None:
            raise TypeError(f"lipschitz_bound: no rule for module {name}: softmax attention has no finite Lipschitz "
                            f"constant on unbounded inputs (arXiv 2006.04710); a bound needs bounded inputs: pass "
                            f"input_bound= (a bound of the l2 norm of every input token)")
        return m.lipschitz_bound(r, seq_len), m.output_bound(r)
    if isinstance(m, _ATTENTION):
        if r is None:
            raise TypeError(f"lipschitz_bound: no rule for module {name}: softmax attention has no finite Lipschitz "
                            f"constant on unbounded inputs (arXiv 2006.04710); a bound needs bounded inputs, which is "
                            f"out of scope")
        raise TypeError(f"lipschitz_bound: no rule for module {name}: with input_bound= only LipschitzAttention "
                        f"has a bound")
    raise TypeError(f"lipschitz_bound: no rule for module {name}; supported: "
                    f"{_SUPPORTED if r is None else _SUPPORTED_BOUNDED}")


def module_bound(m: nn.Module, input_bound: float | None = None, seq_len: int | None = None) -> float:
    """The Lipschitz bound of one module (recursing into ``Sequential`` and ``Residual``); see
    :func:`lipschitz_bound` for ``input_bound`` and ``seq_len``."""
    if input_bound is not None:
        input_bound = _check_input_bound(input_bound)
    return _walk(m, input_bound, _check_seq_len(seq_len))[0]


def lipschitz_bound(model: Any, input_bound: float | None = None, seq_len: int | None = None) -> float:
    """An upper bound of ``model``'s Lipschitz constant from input to output.

    See the module docstring for the rules. ``input_bound=None``: l2 norms (Frobenius for a batch);
    raises ``TypeError`` for a module without a rule, including softmax attention, which has no
    finite bound on unbounded inputs. ``input_bound=r``: the bound on inputs whose tokens (rows) all
    have l2 norm ``<= r``, which also covers :class:`LipschitzAttention`; it holds in the token-max
    norm ``max_i ||x_i||_2`` (``seq_len=None``) or, with ``seq_len=T``, in the Frobenius norm for
    sequences of at most ``T`` tokens. Without attention the value does not depend on ``r`` or
    ``seq_len``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"lipschitz_bound: expected an nn.Module, got {type(model).__name__}")
    return module_bound(model, input_bound, seq_len)


def output_bound(model: nn.Module, input_bound: float) -> float:
    """An upper bound of the l2 norm of every output token of ``model`` when every input token has
    l2 norm ``<= input_bound`` (the size bookkeeping of the module docstring)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"output_bound: expected an nn.Module, got {type(model).__name__}")
    return _walk(model, _check_input_bound(input_bound), None)[1]
