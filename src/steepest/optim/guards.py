"""The checks that run before a step modifies anything: which parameters step, unsupported
gradients, non-finite values, and (distributed) agreement of all ranks on both."""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import torch
from torch import Tensor

from ..distributed import is_dtensor, local
from .transforms import split_grouped

#: (group index, group, parameters with gradients, their local gradients) for every group that steps
Work = list[tuple[int, dict[str, Any], list[Tensor], list[Tensor]]]


def collect_work(optimizer: Any) -> Work:
    """The parameters with gradients of every group, after the checks that need no reduction."""
    name, topology, kind = optimizer._param_name, optimizer._topology, type(optimizer).__name__
    work = []
    for gi, group in enumerate(optimizer.param_groups):
        params, grads = [], []
        for pi, p in enumerate(group["params"]):
            if p.grad is None:
                continue
            if topology is None and is_dtensor(p):
                raise TypeError(f"Parameter {name(gi, pi)!r} is a DTensor but the optimizer has "
                                f"no distributed_mesh (copies and unpickled optimizers step one process)")
            # RuntimeError, as torch.optim.Muon raises for both
            if p.grad.is_sparse:
                raise RuntimeError(f"{kind} does not support sparse gradients (parameter {name(gi, pi)!r})")
            if torch.is_complex(p):
                raise RuntimeError(f"{kind} does not support complex parameters (parameter {name(gi, pi)!r})")
            params.append(p)
            grads.append(p.grad if topology is None else local(p.grad))
        if params:
            work.append((gi, group, params, grads))
    return work


def first_nonfinite(work: Work, name: Callable[[int, int], str],
                    wants_peaks: Callable[[dict], bool] = lambda group: False) -> tuple[str | None, dict[int, float]]:
    """The name of the first parameter whose gradient holds NaN or Inf (or ``None``), and the
    largest magnitude of the gradients of the groups where ``wants_peaks(group)`` holds, by ``id``
    of the parameter, read in the same transfer (the Adam transforms use it:
    ``steepest.optim.transforms.fast_rms``)."""
    wanted = [wants_peaks(group) for _, group, _, _ in work]  # once per group
    pairs = [(p, g, want) for (_, _, params, gs), want in zip(work, wanted) for p, g in zip(params, gs) if g.numel()]
    if not pairs:
        return None, {}
    values, small, large = extremes([g for _, g, _ in pairs])
    peaks: dict[int, float] = {}
    if not any(wanted):
        finite = bool(values.isfinite().all())  # the step's one host read
    else:
        values = values.tolist()  # the step's one host read
        n = len(small)
        for k, i in enumerate(small):
            if pairs[i][2]:
                peaks[id(pairs[i][0])] = values[k]  # the inf-norm
        for k, i in enumerate(large):
            if pairs[i][2]:
                peaks[id(pairs[i][0])] = max(-values[n + 2 * k], values[n + 2 * k + 1])  # min and max
        finite = all(map(math.isfinite, values))
    if finite:
        return None, peaks
    for gi, group, params, gs in work:
        for p, g in zip(params, gs):
            if not bool(torch.isfinite(g).all()):
                return name(gi, next(i for i, q in enumerate(group["params"]) if q is p)), peaks
    return None, peaks  # unreachable while max/min propagate NaN (kept for safety)


def extremes(grads: list[Tensor]) -> tuple[Tensor, list[int], list[int]]:
    """Every tensor's extreme entries, in one float64 tensor, and the split (``small``, ``large``)
    that orders it: the largest magnitude (inf-norm) of each small tensor, then ``(min, max)`` of
    each large one. Max, min and the inf-norm propagate NaN and are Inf for +-Inf, and finite values
    never overflow here, so the result is finite iff every tensor is. Tensors of at most 2^14
    entries, alike in device and dtype (``steepest.optim.transforms.GROUPED_MAX_NUMEL``), are
    reduced by one grouped ``_foreach_norm(inf)`` call, which on many tiny tensors costs less than a
    reduction per tensor; larger ones by one fused ``aminmax`` each (on the CPU several times
    cheaper than an inf-norm of a large tensor)."""
    small, large = split_grouped(False, grads, by_size_everywhere=True)
    parts = []
    if small:
        parts.append(torch.stack(torch._foreach_norm([grads[i] for i in small], math.inf)))
    parts += [torch.stack(torch.aminmax(grads[i])) for i in large]
    return torch.cat([part.double() for part in parts]), small, large


def agree_on_step(topology: Any, param_groups: list[dict], work: Work, bad: str | None) -> str | None:
    """One all-reduce: every rank must step the same parameters, and a non-finite gradient on any
    rank's shard stops (or skips) the step on every rank."""
    index = {id(p): i for i, p in enumerate(p for g in param_groups for p in g["params"])}
    stepped = [index[id(p)] + 1 for _, _, params, _ in work for p in params]
    count, total = len(stepped), sum(stepped)  # the same on every rank iff (in practice) the same set
    flag, high, neg_low, high_sum, neg_low_sum = topology.max_over_ranks(
        [float(bad is not None), count, -count, total, -total])
    if high != -neg_low or high_sum != -neg_low_sum:
        raise RuntimeError(f"Ranks disagree on which parameters have gradients at this step ({int(-neg_low)} "
                           f"to {int(high)} parameters); every rank must step the same parameters (give "
                           f"unused parameters zero gradients, or set their gradients to None on every rank)")
    if flag and bad is None:
        return "<a shard on another rank>"
    return bad


def finite_or_skip(optimizer: Any, work: Work) -> tuple[bool, dict[int, float]]:
    """Whether the step goes on: ``False`` after a non-finite gradient with ``on_nonfinite="skip"``
    (warned and counted in ``nonfinite_skips``); ``FloatingPointError`` with ``"raise"``. All ranks
    agree first (and on which parameters step). Also every local gradient's largest magnitude, by
    ``id`` of its parameter (:func:`first_nonfinite`)."""
    bad, peaks = first_nonfinite(work, optimizer._param_name,
                                 lambda group: optimizer.transform(group).reads_peaks)
    if optimizer._topology is not None:
        bad = agree_on_step(optimizer._topology, optimizer.param_groups, work, bad)
    if bad is None:
        return True, peaks
    if optimizer.on_nonfinite == "raise":
        raise FloatingPointError(
            f"Non-finite gradient (NaN or Inf) in parameter {bad!r}; parameters and optimizer "
            f"state were left unchanged. Pass on_nonfinite='skip' to skip such steps instead."
        )
    optimizer.nonfinite_skips += 1
    warnings.warn(f"{type(optimizer).__name__}: skipped a step with a non-finite gradient in "
                  f"parameter {bad!r} ({optimizer.nonfinite_skips} skipped so far)", RuntimeWarning)
    return False, peaks
