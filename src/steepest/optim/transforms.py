"""Stage 1 of an update: state transforms that turn gradients into the signal ``D``.

Pure kernels over tensors; the optimizer owns the state tensors and passes them in.

``momentum`` (Muon, Scion, Signum): the EMA form used by Keller Jordan's Muon and torch.optim.Muon,
    M <- beta M + (1 - beta) g
    D  = (1 - beta) g + beta M   (Nesterov)   or   D = M
With ``beta = 0`` there is no buffer and ``D = g``. Scion's ``momentum`` hyperparameter is
``alpha = 1 - beta`` (its 0.1 is our 0.9).

``adam`` (the AdamW-style fallback for embeddings, heads and vectors; Loshchilov & Hutter,
arXiv 1711.05101, as torch.optim.AdamW computes it):
    m <- beta1 m + (1 - beta1) g ;  v <- beta2 v + (1 - beta2) g^2 ;  t <- t + 1
    D  = (m / (1 - beta1^t)) / (sqrt(v) / sqrt(1 - beta2^t) + eps)
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def momentum_signal(buf: Tensor | None, grad: Tensor, beta: float, nesterov: bool) -> Tensor:
    """Update ``buf`` in place and return the momentum signal (``grad`` itself when ``beta == 0``)."""
    if buf is None:
        return grad
    buf.lerp_(grad, 1 - beta)
    return grad.lerp(buf, beta) if nesterov else buf


def adam_signal(exp_avg: Tensor, exp_avg_sq: Tensor, step: Tensor, grad: Tensor, beta1: float,
                beta2: float, eps: float) -> Tensor:
    """Update Adam's moments and step counter in place and return the bias-corrected direction."""
    step += 1
    t = float(step)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias1 = 1 - beta1**t
    bias2_sqrt = math.sqrt(1 - beta2**t)
    denom = (exp_avg_sq.sqrt() / bias2_sqrt).add_(eps)
    return (exp_avg / bias1).div_(denom)
