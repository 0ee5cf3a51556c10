"""Exact polar factor by singular value decomposition.

``polar(G) = U V^T`` over the singular values that are numerically nonzero, so a rank-deficient
input gives the partial isometry (zero singular values stay zero, as in the Newton-Schulz limit) and
a zero input gives zeros. Wide inputs are transposed first: LAPACK's SVD is faster on tall
matrices, and on CPU an exact polar factor costs only a small multiple of a 5-step Newton-Schulz
(docs/benchmarks.md has both measurements).
"""
from __future__ import annotations

import torch
from torch import Tensor


def svd_polar(G: Tensor, dtype: torch.dtype) -> Tensor:
    """Exact polar factor of ``G`` (``(m, n)`` or ``(batch, m, n)``), computed in ``dtype``
    (promoted to at least float32, since LAPACK has no half-precision SVD)."""
    work = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    if G.numel() == 0:  # an empty matrix's polar factor is empty
        return torch.zeros(G.shape, dtype=work, device=G.device)
    X = G.to(work)
    wide = X.size(-2) < X.size(-1)
    if wide:
        X = X.mT
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    tol = S.amax(dim=-1, keepdim=True) * (max(X.shape[-2:]) * torch.finfo(work).eps)
    keep = (S > tol).to(work)
    P = (U * keep.unsqueeze(-2)) @ Vh
    if wide:
        P = P.mT
    return P
