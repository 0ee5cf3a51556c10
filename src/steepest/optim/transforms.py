"""Stage 1 of an update: state transforms that turn gradients into the signal ``D``.

Each transform is one :class:`Transform` object in the table :data:`TRANSFORMS` (keyed by the group
key ``transform``): it owns its state keys and their creation, its pure kernel (the functions
below, over tensors the optimizer passes in), its description for ``explain`` and the validation of
its group keys. The engine, ``explain`` and validation read the table, so a new transform is one
object plus one table entry.

``momentum`` (Muon, Scion, Signum): the EMA form used by Keller Jordan's Muon and torch.optim.Muon,
    M <- beta M + (1 - beta) g
    D  = (1 - beta) g + beta M   (Nesterov)   or   D = M
With ``beta = 0`` there is no buffer and ``D = g``. Scion's ``momentum`` hyperparameter is
``alpha = 1 - beta`` (its 0.1 is our 0.9).

``adam`` (the AdamW-style fallback for embeddings, heads and vectors; Loshchilov & Hutter,
arXiv 1711.05101, as torch.optim.AdamW computes it):
    m <- beta1 m + (1 - beta1) g ;  v <- beta2 v + (1 - beta2) g^2 ;  t <- t + 1
    D  = (m / (1 - beta1^t)) / (sqrt(v) / sqrt(1 - beta2^t) + eps)

The state holds ``r = sqrt(v)`` (key ``exp_avg_rms``), not ``v``, so the second moment of
float32/bfloat16 parameters stays finite for every finite gradient (``v`` in float32 overflows once
``|g| > ~1.8e19 / sqrt(1 - beta2)``: torch.optim.Adam then holds inf and the layer never moves
again). It is updated in one of two forms (:func:`rms_kernel`): squared, summed and rooted in place
when a host-side bound ``rms_bound`` on ``r`` and the gradient's peak (read with the step's
non-finite check) are at most 2^60, so no square can overflow (:func:`fast_rms`); otherwise
without ever squaring, ``r <- hypot(sqrt(beta2) r, sqrt(1 - beta2) g)``. Both are ``sqrt(v)`` to
rounding, so the direction matches torch.optim.AdamW to about 1e-7 relative in float32.

``lion`` (Chen et al., arXiv 2302.06675): the signal interpolates with the fast beta1 and the
buffer tracks the gradient with the slow beta2 (Lion / Lion-K; the sign or other LMO is stage 2),
    D  = beta1 m + (1 - beta1) g ;  m <- beta2 m + (1 - beta2) g
(both as ``lerp``, one pass each, as pytorch-optimizer computes them; lion-pytorch's product and
sum agree to rounding, about 1e-7 relative)

``diffgrad`` (Dubey et al., arXiv 1909.11015): Adam's moments with the "friction" coefficient
    xi = sigmoid(|g_prev - g|)  (elementwise, in [0.5, 1)) ;  g_prev <- copy of g
    D  = sqrt(1 - beta2^t) / (1 - beta1^t) * xi * m / (sqrt(v) + eps)
(the reference code's step-size folding: eps is added to the uncorrected sqrt(v); ``sqrt(v)`` is
kept as ``exp_avg_rms``, as for ``adam``). The published
code kept a reference to the gradient tensor instead of a copy, so with in-place gradient
accumulation g_prev aliased g and xi was 0.5 everywhere; here g_prev is a buffer of its own.

Every transform is split into its pure elementwise kernel (``*_kernel``: in-place state updates and
the signal, all tensors, with the per-step scalars passed in as Python floats) and the host-side
bookkeeping around it (``*_transform``: the step counter, the bias corrections). With ``compile=True`` the kernel
runs as one ``torch.compile(fullgraph=True)`` graph (see :mod:`steepest.compiled`): one fused pass
over the tensors instead of two to eight. Inductor may contract or reorder the float operations,
so compiled results agree with eager ones to rounding (about 1e-7 relative in float32), not bit
for bit; the eager path is unchanged.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from ..compiled import kernel
from .checks import check_betas, check_eps, check_momentum


def momentum_transform(buf: Tensor | None, grad: Tensor, beta: float, nesterov: bool, *,
                       compile: bool = False) -> Tensor:
    """Update ``buf`` in place and return the momentum signal (``grad`` itself when ``beta == 0``)."""
    if buf is None:
        return grad
    return kernel(momentum_kernel, compile)(buf, grad, beta, nesterov)


def momentum_kernel(buf: Tensor, grad: Tensor, beta: float, nesterov: bool) -> Tensor:
    """The kernel of :func:`momentum_transform` (``buf`` is not None)."""
    buf.lerp_(grad, 1 - beta)
    return grad.lerp(buf, beta) if nesterov else buf


def momentum_foreach(bufs: list[Tensor], grads: list[Tensor], beta: float, nesterov: bool) -> list[Tensor]:
    """:func:`momentum_kernel` over lists of tensors, as grouped (``torch._foreach_*``) kernels."""
    torch._foreach_lerp_(bufs, grads, 1 - beta)
    return torch._foreach_lerp(grads, bufs, beta) if nesterov else list(bufs)


def adam_transform(exp_avg: Tensor, exp_avg_rms: Tensor, step: Tensor, grad: Tensor, beta1: float,
                   beta2: float, eps: float, *, compile: bool = False, fast: bool = False) -> Tensor:
    """Update Adam's moments and step counter in place and return the bias-corrected direction
    (``fast``: the squared second-moment update, :func:`rms_kernel`)."""
    step += 1
    t = float(step)
    bias1 = 1 - beta1**t
    bias2_sqrt = math.sqrt(1 - beta2**t)
    return kernel(adam_kernel, compile)(exp_avg, exp_avg_rms, grad, beta1, beta2, eps, bias1, bias2_sqrt, fast)


def adam_kernel(exp_avg: Tensor, exp_avg_rms: Tensor, grad: Tensor, beta1: float, beta2: float, eps: float,
                bias1: float, bias2_sqrt: float, fast: bool = False) -> Tensor:
    """The kernel of :func:`adam_transform`, given the bias corrections ``1 - beta1^t`` and
    ``sqrt(1 - beta2^t)`` of the new step ``t``."""
    exp_avg.lerp_(grad, 1 - beta1)
    rms_kernel(exp_avg_rms, grad, beta2, fast)
    denom = (exp_avg_rms / bias2_sqrt).add_(eps)
    return (exp_avg / bias1).div_(denom)


def adam_foreach(exp_avgs: list[Tensor], exp_avg_rmss: list[Tensor], steps: list[Tensor], grads: list[Tensor],
                 beta1: float, beta2: float, eps: float, fast: bool = False) -> list[Tensor]:
    """:func:`adam_transform` over lists of tensors, as grouped (``torch._foreach_*``) kernels; the
    same operations in the same order, so the results are the same to the bit (``hypot`` has no
    grouped kernel and runs per tensor; ``fast`` applies to every tensor of the lists)."""
    torch._foreach_add_(steps, 1.0)
    ts = [float(t) for t in steps]  # host counters
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    if fast:
        torch._foreach_mul_(exp_avg_rmss, exp_avg_rmss)
        torch._foreach_mul_(exp_avg_rmss, beta2)
        torch._foreach_addcmul_(exp_avg_rmss, grads, grads, value=1 - beta2)
        torch._foreach_sqrt_(exp_avg_rmss)
    else:
        torch._foreach_mul_(exp_avg_rmss, math.sqrt(beta2))
        for rms, scaled in zip(exp_avg_rmss, torch._foreach_mul(grads, math.sqrt(1 - beta2))):
            rms.hypot_(scaled)
    denoms = torch._foreach_div(exp_avg_rmss, [math.sqrt(1 - beta2**t) for t in ts])
    torch._foreach_add_(denoms, eps)
    out = torch._foreach_div(exp_avgs, [1 - beta1**t for t in ts])
    torch._foreach_div_(out, denoms)
    return out


def rms_kernel(exp_avg_rms: Tensor, grad: Tensor, beta2: float, fast: bool = False) -> None:
    """``r <- sqrt(beta2 r^2 + (1 - beta2) g^2)`` in place. ``fast=False``: as ``hypot`` of the two
    scaled terms, nothing squared, finite for every finite ``r`` and ``g``. ``fast=True``: squared,
    summed and rooted in place (four passes, no temporary; ``hypot`` is a scalar library call that
    costs about six times as much on the CPU), for when :func:`fast_rms` has shown that nothing can
    overflow or matter below the underflow."""
    if fast:
        exp_avg_rms.mul_(exp_avg_rms).mul_(beta2).addcmul_(grad, grad, value=1 - beta2).sqrt_()
    else:
        exp_avg_rms.mul_(math.sqrt(beta2)).hypot_(grad * math.sqrt(1 - beta2))


#: largest entry bound (of ``r`` and of ``g``) under which the squared update cannot overflow, by
#: state dtype: squares stay below 2^120 (float32's largest finite number is about 2^128)
FAST_RMS_LIMIT = {torch.float32: 2.0 ** 60, torch.float64: 2.0 ** 500}
#: smallest ``eps`` for the squared update: entries whose ``g^2`` underflows (``|g| < ~2^-63`` in
#: float32) then have ``r < 2^-63``, so losing them changes ``r + eps`` by at most ``2^-13`` relative
FAST_RMS_MIN_EPS = 2.0 ** -50


def fast_rms(state: dict, exp_avg_rms: Tensor, grad: Tensor, peak: float | None, beta2: float, eps: float) -> bool:
    """Whether this step's second-moment update may take the squared form, given ``peak``, the
    gradient's largest magnitude (read by the step's non-finite check; ``None``: read here); and
    advance ``state["rms_bound"]``, a host-side bound on ``r``'s entries: since
    ``r'^2 = beta2 r^2 + (1 - beta2) g^2``, ``B' = sqrt(beta2 B^2 + (1 - beta2) peak^2)`` bounds
    ``r'`` (times ``1 + 1e-6`` for rounding), so after a huge gradient the bound decays back. The
    bound is a Python float (host-side by construction, kept as is by ``state_dict``); a state
    without it (saved before the key existed) reads ``r``'s maximum once."""
    if not exp_avg_rms.numel():
        return True
    old = state.get("rms_bound")
    if old is None:
        old = float(exp_avg_rms.abs().max())
    if peak is None:  # a transform called outside the engine's step
        peak = float(grad.abs().amax())
    state["rms_bound"] = math.hypot(math.sqrt(beta2) * old, math.sqrt(1 - beta2) * peak) * (1 + 1e-6)
    return max(old, peak) <= FAST_RMS_LIMIT.get(exp_avg_rms.dtype, 0.0) and eps >= FAST_RMS_MIN_EPS


def lion_transform(exp_avg: Tensor, grad: Tensor, beta1: float, beta2: float, *, compile: bool = False) -> Tensor:
    """Return Lion's interpolation ``beta1 m + (1 - beta1) g`` and then move ``m`` (in place) with ``beta2``."""
    return kernel(lion_kernel, compile)(exp_avg, grad, beta1, beta2)


def lion_kernel(exp_avg: Tensor, grad: Tensor, beta1: float, beta2: float) -> Tensor:
    """The kernel of :func:`lion_transform`: both interpolations as ``lerp`` (one pass each, where
    a product and a sum take two; equal to ``beta m + (1 - beta) g`` up to rounding)."""
    signal = torch.lerp(exp_avg, grad, 1 - beta1)
    exp_avg.lerp_(grad, 1 - beta2)
    return signal


def lion_foreach(exp_avgs: list[Tensor], grads: list[Tensor], beta1: float, beta2: float) -> list[Tensor]:
    """:func:`lion_kernel` over lists of tensors, as grouped (``torch._foreach_*``) kernels."""
    signals = torch._foreach_lerp(exp_avgs, grads, 1 - beta1)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta2)
    return signals


#: on the CPU, tensors up to this many entries run stage 1 as grouped (foreach) kernels; larger ones
#: one by one, where each tensor's few passes stay in cache and its temporaries are freed before the
#: next tensor's are made (on the CPU a grouped pass over large tensors was slower). On other devices
#: every tensor is grouped, torch.optim's own default there (one kernel launch per op, not per tensor).
GROUPED_MAX_NUMEL = 1 << 14


def split_grouped(compile: bool, grads: list[Tensor], *, by_size_everywhere: bool = False) -> tuple[list[int], list[int]]:
    """The indices of ``grads`` that run grouped (on the CPU the tensors of at most
    :data:`GROUPED_MAX_NUMEL` entries, elsewhere all) and those that run one by one. Nothing is
    grouped when compiled, for fewer than two tensors, or when the tensors differ in device or
    dtype (torch's foreach kernels need them alike). ``by_size_everywhere``: the size limit holds on
    every device (for kernels that copy what they reduce)."""
    everything = list(range(len(grads)))
    if compile or len(grads) < 2:
        return [], everything
    kinds = {(g.device, g.dtype) for g in grads}
    if len(kinds) > 1:  # torch's foreach kernels need one device and dtype
        return [], everything
    if next(iter(kinds))[0].type != "cpu" and not by_size_everywhere:
        return everything, []
    numels = [g.numel() for g in grads]
    small = [i for i, k in enumerate(numels) if k <= GROUPED_MAX_NUMEL]
    if len(small) < 2:
        return [], everything
    return small, [i for i, k in enumerate(numels) if k > GROUPED_MAX_NUMEL]


def diffgrad_transform(exp_avg: Tensor, exp_avg_rms: Tensor, prev_grad: Tensor, step: Tensor, grad: Tensor,
                       beta1: float, beta2: float, eps: float, *, compile: bool = False, fast: bool = False) -> Tensor:
    """Update diffGrad's moments, previous gradient and step in place; return the friction-scaled direction."""
    step += 1
    t = float(step)
    step_scale = math.sqrt(1 - beta2**t) / (1 - beta1**t)
    return kernel(diffgrad_kernel, compile)(exp_avg, exp_avg_rms, prev_grad, grad, beta1, beta2, eps, step_scale,
                                            fast)


def diffgrad_kernel(exp_avg: Tensor, exp_avg_rms: Tensor, prev_grad: Tensor, grad: Tensor, beta1: float,
                    beta2: float, eps: float, step_scale: float, fast: bool = False) -> Tensor:
    """The kernel of :func:`diffgrad_transform`, given ``sqrt(1 - beta2^t) / (1 - beta1^t)`` of the new step ``t``."""
    friction = torch.sigmoid((prev_grad - grad).abs_())
    prev_grad.copy_(grad)
    exp_avg.lerp_(grad, 1 - beta1)
    rms_kernel(exp_avg_rms, grad, beta2, fast)
    return friction.mul_(exp_avg).div_(exp_avg_rms.add(eps)).mul_(step_scale)


def zeros_state(p: Tensor, dtype: torch.dtype) -> Tensor:
    """A zero state tensor like ``p`` (its layout and local shard) in the state ``dtype``."""
    return torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)


class Transform(ABC):
    """One stage-1 transform: the state it keeps, how it turns a gradient into the signal ``D``,
    how ``explain`` names it and which group keys it validates.

    ``init_state`` adds the missing keys of one parameter's state (``dtype``: the state dtype);
    ``apply_group`` updates a group's states in place and returns one ``D`` per parameter. Most
    transforms act on each tensor alone (:class:`ElementwiseTransform`); M-FAC's window spans the
    group."""

    name: str = ""
    #: whether :meth:`apply_group` uses ``peaks`` (the engine reads them only for such groups)
    reads_peaks: bool = False
    #: the state keys :meth:`init_state` creates (``step`` a float32 counter, the others like the
    #: parameter)
    state_keys: tuple[str, ...] = ()

    def init_state(self, group: dict, state: dict, p: Tensor, dtype: torch.dtype) -> None:
        for key in self.state_keys:
            if key not in state:
                state[key] = torch.tensor(0.0, dtype=torch.float32) if key == "step" else zeros_state(p, dtype)

    @abstractmethod
    def apply_group(self, group: dict, states: list[dict], grads: list[Tensor], compile: bool,
                    whole_sums=None, peaks: list[float] | None = None) -> list[Tensor]:
        """Stage 1 over a group: ``states`` are the parameters' state views, ``grads`` their working
        gradients; ``whole_sums(partial)`` sums per-parameter partial sums over shards (``None``
        on one process); ``peaks`` the gradients' largest magnitudes, as the step's non-finite
        check read them (``None``: unknown)."""

    @abstractmethod
    def describe(self, group: dict) -> str:
        """The transform of ``group`` in words, for ``explain``."""

    @abstractmethod
    def validate(self, group: dict) -> None:
        """Check the group keys the transform reads (exact errors, as ``checks.py``)."""

    def fresh_signals(self, group: dict) -> bool:
        """Whether the signals of ``group`` are new tensors that nothing else holds (not a state
        buffer, not the gradient), so stage 2 may write the direction over them."""
        return False


class ElementwiseTransform(Transform):
    """A transform that acts on each tensor alone: :meth:`apply` for one, and grouped (foreach)
    kernels for the small tensors of a group where a subclass has them (:meth:`apply_split`)."""

    @abstractmethod
    def apply(self, group: dict, state: dict, grad: Tensor, compile: bool, peak: float | None = None) -> Tensor:
        """Update one parameter's ``state`` with its working gradient and return the signal
        (``peak``: the gradient's largest magnitude, ``None`` if unknown)."""

    def apply_group(self, group: dict, states: list[dict], grads: list[Tensor], compile: bool,
                    whole_sums=None, peaks: list[float] | None = None) -> list[Tensor]:
        peaks = peaks or [None] * len(grads)
        return [self.apply(group, state, g, compile, peak) for state, g, peak in zip(states, grads, peaks)]

    def apply_split(self, group: dict, states: list[dict], grads: list[Tensor], compile: bool, foreach,
                    peaks: list[float] | None = None) -> list[Tensor]:
        """``foreach(states, grads, peaks)`` on the small tensors (:func:`split_grouped`), :meth:`apply`
        on the others; the signals in the order of ``grads``."""
        peaks = peaks or [None] * len(grads)
        small, large = split_grouped(compile, grads)
        out: list = [None] * len(grads)
        if small:
            for i, d in zip(small, foreach([states[i] for i in small], [grads[i] for i in small],
                                           [peaks[i] for i in small])):
                out[i] = d
        for i in large:
            out[i] = self.apply(group, states[i], grads[i], compile, peaks[i])
        return out


class Momentum(ElementwiseTransform):
    """``momentum`` (:func:`momentum_transform`); no state when ``momentum == 0``."""

    name = "momentum"
    state_keys = ("momentum_buffer",)

    def init_state(self, group: dict, state: dict, p: Tensor, dtype: torch.dtype) -> None:
        if group["momentum"] > 0 and "momentum_buffer" not in state:
            state["momentum_buffer"] = zeros_state(p, dtype)

    def apply(self, group: dict, state: dict, grad: Tensor, compile: bool, peak: float | None = None) -> Tensor:
        beta = group["momentum"]
        return momentum_transform(state.get("momentum_buffer") if beta > 0 else None, grad, beta, group["nesterov"],
                               compile=compile)

    def apply_group(self, group: dict, states: list[dict], grads: list[Tensor], compile: bool,
                    whole_sums=None, peaks: list[float] | None = None) -> list[Tensor]:
        if group["momentum"] == 0:
            return super().apply_group(group, states, grads, compile, whole_sums)
        return self.apply_split(group, states, grads, compile, lambda ss, gs, _: momentum_foreach(
            [s["momentum_buffer"] for s in ss], gs, group["momentum"], group["nesterov"]))

    def describe(self, group: dict) -> str:
        return f"momentum({group['momentum']}{', nesterov' if group['nesterov'] else ''})"

    def fresh_signals(self, group: dict) -> bool:
        return group["momentum"] > 0 and group["nesterov"]  # otherwise the buffer or the gradient

    def validate(self, group: dict) -> None:
        check_momentum(group["momentum"])
        if not isinstance(group["nesterov"], bool):
            raise TypeError(f"Invalid type for nesterov: expected bool, got {type(group['nesterov']).__name__}")


class Adam(ElementwiseTransform):
    """``adam`` (:func:`adam_transform`), the AdamW-style fallback."""

    name = "adam"
    state_keys = ("step", "exp_avg", "exp_avg_rms")
    reads_peaks = True  # fast_rms

    def init_state(self, group: dict, state: dict, p: Tensor, dtype: torch.dtype) -> None:
        if "exp_avg_rms" not in state:
            state["rms_bound"] = 0.0  # r = 0 (see fast_rms)
        super().init_state(group, state, p, dtype)

    def apply(self, group: dict, state: dict, grad: Tensor, compile: bool, peak: float | None = None) -> Tensor:
        beta1, beta2 = group["betas"]
        fast = fast_rms(state, state["exp_avg_rms"], grad, peak, beta2, group["eps"])
        return adam_transform(state["exp_avg"], state["exp_avg_rms"], state["step"], grad, beta1, beta2, group["eps"],
                              compile=compile, fast=fast)

    def apply_group(self, group: dict, states: list[dict], grads: list[Tensor], compile: bool,
                    whole_sums=None, peaks: list[float] | None = None) -> list[Tensor]:
        return self.apply_split(group, states, grads, compile,
                                lambda ss, gs, pk: self._foreach(group, ss, gs, pk), peaks)

    def _foreach(self, group: dict, states: list[dict], grads: list[Tensor], peaks: list[float | None]) -> list[Tensor]:
        """:func:`adam_foreach` over the tensors, in two calls where only some may take the fast form."""
        beta1, beta2 = group["betas"]
        fast = [fast_rms(s, s["exp_avg_rms"], g, peak, beta2, group["eps"]) for s, g, peak in zip(states, grads, peaks)]
        out: list = [None] * len(grads)
        for choice in (True, False):
            idx = [i for i, f in enumerate(fast) if f is choice]
            if idx:
                ss = [states[i] for i in idx]
                for i, d in zip(idx, adam_foreach([s["exp_avg"] for s in ss], [s["exp_avg_rms"] for s in ss],
                                                  [s["step"] for s in ss], [grads[i] for i in idx], beta1, beta2,
                                                  group["eps"], fast=choice)):
                    out[i] = d
        return out

    def describe(self, group: dict) -> str:
        return f"adamw(betas={tuple(group['betas'])})"

    def fresh_signals(self, group: dict) -> bool:
        return True

    def validate(self, group: dict) -> None:
        check_betas(group["betas"])
        check_eps("eps", group["eps"])  # eps = 0 would turn a zero gradient into 0/0


class Lion(ElementwiseTransform):
    """``lion`` (:func:`lion_transform`), Lion's two betas."""

    name = "lion"
    state_keys = ("exp_avg",)

    def apply(self, group: dict, state: dict, grad: Tensor, compile: bool, peak: float | None = None) -> Tensor:
        beta1, beta2 = group["betas"]
        return lion_transform(state["exp_avg"], grad, beta1, beta2, compile=compile)

    def apply_group(self, group: dict, states: list[dict], grads: list[Tensor], compile: bool,
                    whole_sums=None, peaks: list[float] | None = None) -> list[Tensor]:
        return self.apply_split(group, states, grads, compile, lambda ss, gs, _: lion_foreach(
            [s["exp_avg"] for s in ss], gs, *group["betas"]))

    def describe(self, group: dict) -> str:
        return f"lion(betas={tuple(group['betas'])})"

    def fresh_signals(self, group: dict) -> bool:
        return True

    def validate(self, group: dict) -> None:
        check_betas(group["betas"])


class DiffGrad(Adam):
    """``diffgrad`` (:func:`diffgrad_transform`): Adam's moments with the friction coefficient."""

    name = "diffgrad"
    state_keys = ("step", "exp_avg", "exp_avg_rms", "prev_grad")
    #: one tensor at a time (diffGrad has no grouped kernel)
    apply_group = ElementwiseTransform.apply_group

    def apply(self, group: dict, state: dict, grad: Tensor, compile: bool, peak: float | None = None) -> Tensor:
        beta1, beta2 = group["betas"]
        fast = fast_rms(state, state["exp_avg_rms"], grad, peak, beta2, group["eps"])
        return diffgrad_transform(state["exp_avg"], state["exp_avg_rms"], state["prev_grad"], state["step"], grad,
                               beta1, beta2, group["eps"], compile=compile, fast=fast)

    def describe(self, group: dict) -> str:
        return f"diffgrad(betas={tuple(group['betas'])})"


#: the state transforms by the group key ``transform``
TRANSFORMS: dict[str, Transform] = {t.name: t for t in (Momentum(), Adam(), Lion(), DiffGrad())}
