"""Neural collapse metrics (Papyan, Han, Donoho, "Prevalence of Neural Collapse during the Terminal
Phase of Deep Learning Training", PNAS 2020, arXiv 2008.08186).

Inputs: last-layer features ``H`` (``N x d``, one row ``h_i`` per sample), integer labels ``y``
(``N``, values in ``0..C-1``, every class present), and optionally the classifier ``W`` (``C x d``)
with bias ``b`` (``C``). Statistics (computed in float64):

- global mean ``mu_G = (1/N) sum_i h_i`` and class means ``mu_c = mean{h_i : y_i = c}`` (for balanced
  classes ``mu_G`` is also the mean of the class means, as in the paper);
- centered means ``m_c = mu_c - mu_G``, stacked as the rows of ``M`` (``C x d``);
- within-class covariance ``Sigma_W = (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T``;
- between-class covariance ``Sigma_B = (1/C) sum_c m_c m_c^T``.

Metrics (all 0 at perfect collapse):

- ``nc1 = tr(Sigma_W Sigma_B^+) / C`` (NC1, variability collapse; ``Sigma_B^+`` the Moore-Penrose
  pseudo-inverse, since ``rank Sigma_B <= C - 1``);
- NC2, convergence of the centered means to a simplex equiangular tight frame (ETF), whose Gram
  matrix is proportional to ``I - 11^T / C``:

  * ``nc2 = || M M^T / ||M M^T||_F - (I - 11^T/C) / sqrt(C-1) ||_F``, the distance of the normalized
    Gram matrix from the normalized ETF Gram matrix (``||I - 11^T/C||_F = sqrt(C-1)``);
  * ``nc2_equinorm = std_c ||m_c|| / mean_c ||m_c||`` (equal norms; population std);
  * ``nc2_equiangle = max_{c != c'} |cos(m_c, m_c') + 1/(C-1)|`` (maximal equal angles);

- ``nc3 = || W/||W||_F - M/||M||_F ||_F`` (NC3, self-duality of classifier and means), only with
  ``weight``;
- ``nc4`` (NC4, simplification to the nearest class center): the fraction of samples whose
  nearest-class-mean prediction ``argmin_c ||h_i - mu_c||_2`` differs from the classifier's
  ``argmax_c (W h_i + b)_c``, only with ``weight`` (``bias`` optional, default 0). Ties go to the
  smallest class index on both sides.

The returned dict has the keys ``nc1, nc2, nc2_equinorm, nc2_equiangle`` and, when ``weight`` is
given, ``nc3, nc4``; values are Python floats.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["neural_collapse"]


def neural_collapse(features: Tensor, labels: Tensor, weight: Tensor | None = None, bias: Tensor | None = None,
                    num_classes: int | None = None) -> dict[str, float]:
    """Neural collapse metrics NC1-NC4 of ``features`` (``N x d``) with ``labels`` (``N``); see the
    module docstring. ``num_classes`` defaults to ``labels.max() + 1`` (or ``weight.shape[0]``)."""
    if not isinstance(features, Tensor) or not isinstance(labels, Tensor):
        raise TypeError("features and labels must be tensors")
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"features must have shape (N, d) with N >= 1, got {tuple(features.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    n, d = features.shape
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    if weight is not None:
        if not isinstance(weight, Tensor) or weight.ndim != 2 or weight.shape[1] != d:
            shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
            raise ValueError(f"weight must have shape (C, {d}), got {shape}")
    elif bias is not None:
        raise ValueError("bias needs weight")
    if num_classes is None:
        num_classes = weight.shape[0] if weight is not None else int(labels.max()) + 1
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    C = num_classes
    if weight is not None and weight.shape[0] != C:
        raise ValueError(f"weight must have shape ({C}, {d}), got {tuple(weight.shape)}")
    if bias is not None and (not isinstance(bias, Tensor) or bias.shape != (C,)):
        shape = tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__
        raise ValueError(f"bias must have shape ({C},), got {shape}")
    if int(labels.min()) < 0 or int(labels.max()) >= C:
        raise ValueError(f"labels must lie in 0..{C - 1}")
    y = labels.to(device=features.device, dtype=torch.long)
    counts = torch.bincount(y, minlength=C)
    if bool((counts == 0).any()):
        missing = [int(c) for c in torch.nonzero(counts == 0).flatten()]
        raise ValueError(f"every class needs at least one sample; missing classes {missing}")

    H = features.detach().to(torch.float64)
    mu_g = H.mean(dim=0)
    means = torch.zeros(C, d, dtype=torch.float64, device=H.device).index_add_(0, y, H)
    means = means / counts.to(H).unsqueeze(1)
    M = means - mu_g
    within = H - means[y]
    sigma_w = within.T @ within / n
    sigma_b = M.T @ M / C
    nc1 = float(torch.trace(sigma_w @ torch.linalg.pinv(sigma_b, hermitian=True))) / C

    gram = M @ M.T
    gram_norm = float(torch.linalg.matrix_norm(gram))
    if gram_norm == 0.0:
        raise ValueError("the class means are all equal: the between-class covariance is zero")
    eye = torch.eye(C, dtype=torch.float64, device=H.device)
    etf = (eye - 1.0 / C) / math.sqrt(C - 1)
    nc2 = float(torch.linalg.matrix_norm(gram / gram_norm - etf))
    norms = M.norm(dim=1)
    nc2_equinorm = float(norms.std(correction=0) / norms.mean())
    unit = M / norms.clamp_min(torch.finfo(torch.float64).tiny).unsqueeze(1)
    cos = unit @ unit.T
    off = ~torch.eye(C, dtype=torch.bool, device=H.device)
    nc2_equiangle = float((cos[off] + 1.0 / (C - 1)).abs().max())
    out = {"nc1": nc1, "nc2": nc2, "nc2_equinorm": nc2_equinorm, "nc2_equiangle": nc2_equiangle}

    if weight is not None:
        W = weight.detach().to(device=H.device, dtype=torch.float64)
        w_norm = float(torch.linalg.matrix_norm(W))
        if w_norm == 0.0:
            raise ValueError("weight must be nonzero")
        out["nc3"] = float(torch.linalg.matrix_norm(W / w_norm - M / torch.linalg.matrix_norm(M)))
        logits = H @ W.T
        if bias is not None:
            logits = logits + bias.detach().to(logits)
        ncc = torch.cdist(H, means).argmin(dim=1)
        out["nc4"] = float((ncc != logits.argmax(dim=1)).to(torch.float64).mean())
    return out
