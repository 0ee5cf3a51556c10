"""Per-layer update diagnostics that work with any optimizer.

``update_stats(before, after)`` takes two snapshots ``{name: tensor}`` of the parameters (e.g.
``{n: p.detach().clone() for n, p in model.named_parameters()}`` before and after ``step()``) and
reports, for each update ``U = after - before`` (computed in float64):

- ``rms = ||U||_F / sqrt(numel)``, the root mean square entry;
- ``frobenius = ||U||_F``;
- ``spectral = sigma_1(U)``, exact (``torch.linalg.matrix_norm(ord=2)``) on the 2-D view of ``U``:
  ``(shape[0], prod(shape[1:]))`` for tensors with 2 or more dimensions (conv filters: out x in*k*k),
  ``(1, numel)`` for vectors and scalars (where it equals the l2 norm).

Steepest descent under the spectral norm (Muon and relatives) makes ``U`` a multiple of an
orthogonal polar factor, so ``spectral`` is the learning rate times the shape scale and
``rms * sqrt(numel) / spectral = sqrt(rank)`` for a full-rank update; AdamW-like updates have
``rms`` near the learning rate instead (Bernstein, Newhouse, "Old Optimizer, New Norm",
arXiv 2409.20325).

``orthogonality_error(o) = max_i |sigma_i(O) - 1|`` over the ``min(m, n)`` singular values of the
2-D view of ``O``: the distance (in the spectral norm, ``||O - U V^T||_2``) of an approximate polar
factor ``O = U Sigma V^T`` (e.g. a few Newton-Schulz iterations) from the exact semi-orthogonal
matrix ``U V^T``. For the polar factor of a rank-deficient matrix only its ``rank`` nonzero singular
values should be 1; pass ``rank`` to compare only the largest ``rank`` singular values.

``gradient_noise(grads_a, grads_b, dual_norm)`` measures, per layer, the dual norm ``||G_a - G_b||_*``
of the difference of two gradients (e.g. from two independent mini-batches at the same point): the
quantity that bounds the error of the steepest-descent direction in the geometry whose dual norm is
given (for example ``steepest.geometry.Spectral().dual_norm``, the nuclear norm).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from ..geometry.base import matrix_dims

__all__ = ["update_stats", "orthogonality_error", "gradient_noise"]


def _as_matrix(x: Tensor) -> Tensor:
    return x.reshape(matrix_dims(x.shape))


def _check_pair(a: Mapping[str, Tensor], b: Mapping[str, Tensor], names: tuple[str, str]) -> None:
    for m, label in ((a, names[0]), (b, names[1])):
        if not isinstance(m, Mapping):
            raise TypeError(f"{label} must be a mapping from names to tensors, got {type(m).__name__}")
    if set(a) != set(b):
        only_a = sorted(set(a) - set(b))
        only_b = sorted(set(b) - set(a))
        raise ValueError(f"{names[0]} and {names[1]} must have the same names; only in {names[0]}: {only_a}, "
                         f"only in {names[1]}: {only_b}")
    for name in a:
        x, y = a[name], b[name]
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise TypeError(f"{names[0]} and {names[1]} must contain tensors (name {name!r})")
        if x.shape != y.shape:
            raise ValueError(f"shape mismatch for {name!r}: {tuple(x.shape)} in {names[0]}, "
                             f"{tuple(y.shape)} in {names[1]}")


def update_stats(before: Mapping[str, Tensor], after: Mapping[str, Tensor]) -> dict[str, dict[str, float]]:
    """``{name: {"rms", "frobenius", "spectral"}}`` of each update ``after[name] - before[name]``."""
    _check_pair(before, after, ("before", "after"))
    out: dict[str, dict[str, float]] = {}
    for name in before:
        b, a = before[name], after[name]
        if a.numel() == 0:
            raise ValueError(f"parameter {name!r} is empty")
        u = a.detach().to(torch.float64) - b.detach().to(device=a.device, dtype=torch.float64)
        fro = float(torch.linalg.vector_norm(u))
        out[name] = {
            "rms": fro / math.sqrt(u.numel()),
            "frobenius": fro,
            "spectral": float(torch.linalg.matrix_norm(_as_matrix(u), ord=2)),
        }
    return out


def orthogonality_error(o: Tensor, rank: int | None = None) -> float:
    """``max_i |sigma_i(O) - 1|`` over the singular values of the 2-D view of ``o`` (the largest
    ``rank`` of them when ``rank`` is given)."""
    if not isinstance(o, Tensor):
        raise TypeError(f"o must be a tensor, got {type(o).__name__}")
    if o.numel() == 0:
        raise ValueError("o must not be empty")
    s = torch.linalg.svdvals(_as_matrix(o.detach().to(torch.float64)))  # descending
    if rank is not None:
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= s.numel():
            raise ValueError(f"rank must be an integer between 1 and {s.numel()}, got {rank!r}")
        s = s[:rank]
    return float((s - 1.0).abs().max())


def gradient_noise(grads_a: Mapping[str, Tensor], grads_b: Mapping[str, Tensor],
                   dual_norm: Callable[[Tensor], Tensor | float]) -> dict[str, float]:
    """``{name: ||grads_a[name] - grads_b[name]||_*}`` with the dual norm given as a callable."""
    if not callable(dual_norm):
        raise TypeError(f"dual_norm must be callable, got {type(dual_norm).__name__}")
    _check_pair(grads_a, grads_b, ("grads_a", "grads_b"))
    out: dict[str, float] = {}
    for name in grads_a:
        a, b = grads_a[name].detach(), grads_b[name].detach()
        out[name] = float(dual_norm(a - b.to(device=a.device, dtype=torch.promote_types(a.dtype, b.dtype))))
    return out
