"""Orthogonalization kernels: the polar factor ``U V^T`` of a matrix, by Newton-Schulz or SVD.

``polar(G, ns=..., steps=..., dtype=...)`` is the one entry point; it accepts a single matrix or a
stack of same-shape matrices and dispatches to :func:`newton_schulz` or :func:`svd_polar`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .dtype import NS_DTYPE_NAMES, auto_ns_dtype, resolve_ns_dtype
from .newton_schulz import NS_FORMS, choose_form, newton_schulz, newton_schulz_gram, newton_schulz_wide
from .schedules import SCHEDULE_NAMES, SCHEDULES, Schedule, get_schedule
from .svd import svd_polar

__all__ = [
    "polar",
    "newton_schulz",
    "newton_schulz_wide",
    "newton_schulz_gram",
    "choose_form",
    "NS_FORMS",
    "svd_polar",
    "get_schedule",
    "resolve_ns_dtype",
    "auto_ns_dtype",
    "Schedule",
    "SCHEDULES",
    "SCHEDULE_NAMES",
    "NS_DTYPE_NAMES",
]


def polar(G: Tensor, ns: str | tuple[float, float, float] = "keller", steps: int | None = None, dtype: torch.dtype | None = None,
          eps: float = 1e-7, *, compile: bool = False, form: str = "auto") -> Tensor:
    """The polar factor of ``G`` (2-D, or 3-D for a batch of same-shape matrices).

    Args:
        G: input matrix or stack.
        ns: a Newton-Schulz schedule name (``keller``, ``you``, ``quintic``, ``polar_express``,
            ``polar_express_8``), ``svd`` for the exact factor, or a tuple ``(a, b, c)`` applied
            at every step (``torch.optim.Muon``'s ``ns_coefficients``; 5 steps by default).
        steps: iterations; ``None`` uses the schedule's default. Ignored by ``svd``.
        dtype: iteration dtype; ``None`` is ``ns_dtype="auto"``'s choice for the device (:func:`auto_ns_dtype`).
        eps: normalization guard for Newton-Schulz.
        compile: run Newton-Schulz compiled (``torch.compile``, see :mod:`steepest.compiled`);
            ignored by ``svd``.
        form: Newton-Schulz on ``X`` (``"direct"``) or on the short side's Gram matrix (``"gram"``,
            fewer FLOPs for rectangular matrices); ``"auto"`` picks (:func:`choose_form`). Ignored
            by ``svd``.

    Returns:
        The (approximate) polar factor, in the iteration dtype.
    """
    if dtype is None:
        dtype = resolve_ns_dtype("auto", G.device)
    if ns == "svd":
        return svd_polar(G, dtype)
    schedule = get_schedule(ns)
    return newton_schulz(G, schedule, schedule.default_steps if steps is None else steps, dtype, eps,
                         compile=compile, form=form)
