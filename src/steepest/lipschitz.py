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
Self-Attention", arXiv 2006.04710). A finite bound needs bounded inputs (e.g. after a normalization
of known radius), which is out of scope here, so attention modules raise ``TypeError`` with a
message saying so.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["lipschitz_bound", "module_bound", "Residual", "gelu_max_slope", "GELU_MAX_SLOPE"]

#: The largest slope of the exact GELU, ``(1 + erf(1))/2 + 1/(e sqrt(pi))`` (attained at ``sqrt 2``).
GELU_MAX_SLOPE: float = 0.5 * (1.0 + math.erf(1.0)) + 1.0 / (math.e * math.sqrt(math.pi))

_SUPPORTED = "Linear, Sequential, Residual, ReLU, Tanh, GELU, Identity, Dropout"
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


def module_bound(m: nn.Module) -> float:
    """The Lipschitz bound of one module (recursing into ``Sequential`` and ``Residual``)."""
    if isinstance(m, Residual):
        inner = module_bound(m.block)
        return 1.0 + inner if m.alpha is None else (1.0 - m.alpha) + m.alpha * inner
    if isinstance(m, nn.Sequential):
        total = 1.0
        for child in m:
            total *= module_bound(child)
        return total
    if isinstance(m, nn.Linear):
        return float(torch.linalg.matrix_norm(m.weight.detach().to(torch.float64), ord=2))
    if isinstance(m, (nn.ReLU, nn.Tanh, nn.Identity)):
        return 1.0
    if isinstance(m, nn.GELU):
        return gelu_max_slope(m.approximate)
    if isinstance(m, nn.Dropout):
        if not m.training:
            return 1.0
        return 0.0 if m.p >= 1.0 else 1.0 / (1.0 - m.p)
    name = type(m).__name__
    if isinstance(m, _ATTENTION):
        raise TypeError(f"lipschitz_bound: no rule for module {name}: softmax attention has no finite Lipschitz "
                        f"constant on unbounded inputs (arXiv 2006.04710); a bound needs bounded inputs, which is "
                        f"out of scope")
    raise TypeError(f"lipschitz_bound: no rule for module {name}; supported: {_SUPPORTED}")


def lipschitz_bound(model: Any) -> float:
    """An upper bound of ``model``'s Lipschitz constant from input to output (l2 norms).

    See the module docstring for the rules. Raises ``TypeError`` for a module without a rule
    (including softmax attention, which has no finite bound on unbounded inputs).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"lipschitz_bound: expected an nn.Module, got {type(model).__name__}")
    return module_bound(model)
