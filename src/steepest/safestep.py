"""SafeStep: cap an optimizer's step at the softmax convergence radius ("Ghosts of Softmax").

Source: Sao, "Ghosts of Softmax: complex singularities that limit safe step sizes", arXiv 2603.13552.
This module is written from the paper's formulas; it copies no code.

The math
--------
Take a proposed update ``Delta`` of global l2 length ``tau`` and its direction ``v = Delta / tau``.
Along ``v`` the logits of one row (a sample, or a (sample, position) pair of a sequence model) are,
to first order, ``z_k(t) = z_k + t a_k`` with ``a = J v`` the directional logit derivatives (one
Jacobian-vector product). The row's cross-entropy is ``l(t) = log F(t) - z_y(t)`` with the
partition function

    F(t) = sum_k exp(z_k + t a_k).

``F`` is entire and never zero on the real axis, but it has complex zeros ("ghosts"), and ``log F``
has a logarithmic singularity at each. The Taylor series of the loss in ``t`` therefore converges
only inside the disc reaching the nearest complex zero of ``F``: a step longer than that radius
is one the local (polynomial) picture of the loss cannot describe.

* Two classes (:func:`binary_radius`): with ``delta = z_1 - z_2``, ``F(t) = 0`` means
  ``exp(delta + t (a_1 - a_2)) = -1``, so ``t = (-delta + i pi (2m + 1)) / (a_1 - a_2)``, and the
  nearest zero (``m = 0`` or ``-1``) is at distance exactly

      rho* = sqrt(delta^2 + pi^2) / |a_1 - a_2|.

* Any number of classes (:func:`softmax_radius`): with the spread ``s = max_k a_k - min_k a_k``,

      rho_a = pi / s  <=  |nearest zero of F|.

  Why: write ``t = x + i y``. Then ``F(t) = sum_k c_k exp(i y a_k)`` with ``c_k = exp(z_k + x a_k) > 0``.
  Multiply by ``exp(-i y (max a + min a) / 2)``: the phases ``y a_k - y (max a + min a) / 2`` all lie
  in ``[-|y| s / 2, |y| s / 2]``. If ``|y| s < pi`` that interval is inside ``(-pi/2, pi/2)``, every
  term has a positive real part (all phases in an open half-plane), and a positive combination
  cannot vanish. So every zero has ``|Im t| >= pi / s`` and hence ``|t| >= pi / s``. The bound
  ignores the logits ``z`` (it is the binary formula at ``delta = 0``, where it is exact).

* A batch loss is an average of per-row losses; it is singular where any row is, so the batch
  radius is the minimum over rows: ``rho_a = pi / max_rows s``.

The normalized step is ``r = tau / rho_a``; the paper finds training safe for ``r < 1`` and
collapse once ``r >= 1`` across six architectures, and a controller that enforces ``tau <= rho_a``
survives learning-rate spikes of up to 10,000x.

The controller (exact, "directional")
-------------------------------------
Per step, :meth:`SafeStep.step`:

1. snapshots the parameters that have gradients (``theta_old``);
2. runs the wrapped ``optimizer.step()`` (any torch optimizer, steepest presets included) and
   takes ``Delta = theta_new - theta_old``, ``tau = ||Delta||`` (global l2 over all of them); a zero
   step (``tau == 0``) is left alone;
3. computes ``a = J v`` with one forward-mode JVP (``torch.func.jvp`` over
   ``torch.func.functional_call``) at ``theta_old`` on the current batch, with the model in eval mode
   (its previous mode is restored), and ``rho_a = pi / max(max_rows spread, 1e-12)``;
4. ``mode="cap"``: if ``r = tau / rho_a > r_target`` the parameters become
   ``theta_old + (r_target rho_a / tau) Delta``, otherwise ``theta_new`` stays;
   ``mode="set"``: always ``theta_old + (r_target rho_a / tau) Delta``.

The scale acts on the step only: the optimizer's state (momentum, Adam moments, step counters)
advances exactly as in an unwrapped ``optimizer.step()``. For optimizers whose state does not depend
on the learning rate (SGD, heavy ball, Adam, Muon's momentum) this is the same as running that one
step with the learning rate multiplied by the scale. Decoupled weight decay and any projection the
optimizer applies are part of ``Delta`` and are scaled with it (a retraction onto a manifold is
then no longer exactly on the manifold; use ``mode="cap"`` with such optimizers and re-project if
needed).

Cost: one copy of the stepped parameters, one tangent of the same size, and one forward-mode pass
(in theory 1 to 1.5 forwards; measured on a CPU it costs more and roughly doubles a training step,
see docs/benchmarks.md, "Measurements behind the defaults"; plus a forward-mode memory overhead); ``SafeStep.last["cost"]`` is
the JVP's wall time in seconds. ``chunk_size`` splits a large batch along dim 0 for the JVP.
"""
from __future__ import annotations

import math
import time
from collections import deque
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp

__all__ = ["SafeStep", "softmax_radius", "binary_radius", "logit_spread"]


def logit_spread(a: Tensor) -> Tensor:
    """Per-row spread ``max_k a_k - min_k a_k`` of directional logit derivatives (classes on the last axis).

    Returns a tensor of shape ``a.shape[:-1]``.
    """
    return a.amax(dim=-1) - a.amin(dim=-1)


def softmax_radius(a: Tensor) -> Tensor:
    """Lower bound on the distance to the nearest complex zero of every row's partition function.

    ``a`` holds directional logit derivatives ``J v`` with rows on the leading axes (samples, or
    samples x positions) and classes on the last axis. Returns the 0-d tensor
    ``pi / max(max_rows (max_k a_k - min_k a_k), 1e-12)``: inside a disc of that radius no row's
    ``F(t) = sum_k exp(z_k + t a_k)`` vanishes, whatever the logits ``z`` (see the module docstring).
    """
    if a.dim() == 0:
        raise ValueError("softmax_radius needs classes on the last axis (at least 1-d)")
    spread = logit_spread(a).max() if a.dim() > 1 else logit_spread(a)
    return math.pi / spread.clamp_min(1e-12)


def binary_radius(delta, a1, a2):
    """Exact distance to the nearest complex zero of ``F(t) = exp(z_1 + t a_1) + exp(z_2 + t a_2)``.

    ``delta = z_1 - z_2``. The zeros are ``t = (-delta + i pi (2m+1)) / (a_1 - a_2)``, so the radius
    is ``sqrt(delta^2 + pi^2) / |a_1 - a_2|`` (infinite when ``a_1 == a_2``). Works on Python numbers
    and on tensors (elementwise).
    """
    if isinstance(delta, Tensor) or isinstance(a1, Tensor) or isinstance(a2, Tensor):
        delta, a1, a2 = (torch.as_tensor(x) for x in (delta, a1, a2))
        return torch.sqrt(delta * delta + math.pi ** 2) / (a1 - a2).abs()
    diff = abs(a1 - a2)
    return math.inf if diff == 0 else math.sqrt(delta * delta + math.pi ** 2) / diff


class SafeStep:
    """Wrap any torch optimizer so every step stays within the softmax radius (arXiv 2603.13552).

    Usage (the wrapper needs the model and the current batch's inputs)::

        opt = torch.optim.Adam(model.parameters(), lr=1e-3)   # or steepest.for_model(model, "muon")
        safe = SafeStep(opt, model, r_target=1.0, mode="cap")
        for x, y in loader:
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            safe.step(x)            # in place of opt.step()
            scheduler.step()        # an LR scheduler keeps acting on the inner optimizer

    Args:
        optimizer: any ``torch.optim.Optimizer`` (its ``step()`` is called once per ``safe.step``).
        model: the module whose forward ``model(*inputs) -> logits`` gives class scores on the last
            axis. Every leading axis is a row (e.g. ``(batch, seq, vocab)`` counts each position).
        r_target: the normalized step ``tau / rho_a`` to cap at ("cap") or to set ("set").
        mode: ``"cap"`` scales the step down only when ``r > r_target``; ``"set"`` always rescales
            it to length ``r_target * rho_a``.
        history_size: how many per-step records ``safe.history`` keeps (a ``deque``; the newest last).
            ``None`` keeps all of them.
        chunk_size: if given, the JVP runs over chunks of this many rows of dim 0 of the inputs
            (lower peak memory; the radius is the minimum over chunks, so the result is unchanged).

    ``safe.step(inputs, closure=None)``: ``inputs`` is the model input of the current batch (a
    tensor, or a tuple of positional arguments). Call it after ``loss.backward()``. It returns
    whatever ``optimizer.step(closure)`` returned (the closure's loss if one is given, else
    usually ``None``). After each call ``safe.last`` is a dict with

    * ``tau``: length of the optimizer's proposed step (l2 over all stepped parameters);
    * ``rho``: ``rho_a`` at ``theta_old`` on the batch (``inf`` for a zero or non-finite step);
    * ``r_raw``: ``tau / rho`` before scaling; ``r``: the normalized length of the step actually
      taken (``<= r_target`` in "cap" mode, ``== r_target`` in "set" mode);
    * ``scale``: the factor applied to the step (1.0 when left alone);
    * ``cost``: wall seconds of the JVP (0.0 when none ran);

    and the same dict is appended to ``safe.history``.

    A zero step leaves everything unchanged. A non-finite step (NaN/inf in the update) is left as
    the optimizer made it (nothing sensible to scale) and recorded with ``r = nan``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module, r_target: float = 1.0,
                 mode: str = "cap", history_size: Optional[int] = 10_000, chunk_size: Optional[int] = None):
        if mode not in ("cap", "set"):
            raise ValueError(f"mode must be 'cap' or 'set', got {mode!r}")
        if not r_target > 0:
            raise ValueError(f"r_target must be positive, got {r_target}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError("chunk_size must be a positive integer")
        self.optimizer = optimizer
        self.model = model
        self.r_target = float(r_target)
        self.mode = mode
        self.chunk_size = chunk_size
        self.history: deque = deque(maxlen=history_size)
        self.last: dict = {}

    # Pass-throughs so the wrapper can stand in for the optimizer in a training loop.
    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.optimizer.load_state_dict(state_dict)

    # ------------------------------------------------------------------------------------------
    def _stepped_params(self):
        seen, out = set(), []
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None and id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out

    def _record(self, **rec) -> dict:
        self.last = rec
        self.history.append(rec)
        return rec

    @torch.no_grad()
    def radius(self, inputs, direction: dict, at: Optional[dict] = None) -> float:
        """``rho_a`` along ``direction`` (name -> tangent, unit norm over all of them; parameters not
        named get a zero tangent) on the batch ``inputs``, at the model's current parameters, or with
        the parameters named in ``at`` (name -> tensor) replaced by those values."""
        args = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
        params = dict(self.model.named_parameters())
        buffers = dict(self.model.named_buffers())
        at = at or {}
        primals = {n: (at[n] if n in at else p).detach() for n, p in params.items()}
        tangents = {n: (direction[n] if n in direction else torch.zeros_like(p)) for n, p in primals.items()}

        def logits_of(pr, *xs):
            return functional_call(self.model, {**pr, **buffers}, xs)

        chunks = [args]
        if self.chunk_size is not None and torch.is_tensor(args[0]) and args[0].shape[0] > self.chunk_size:
            n = args[0].shape[0]
            chunks = [tuple(x[i:i + self.chunk_size] if torch.is_tensor(x) and x.shape[:1] == (n,) else x
                            for x in args) for i in range(0, n, self.chunk_size)]
        was_training = self.model.training
        self.model.eval()
        try:
            spread = None
            for xs in chunks:
                _, a = jvp(lambda pr: logits_of(pr, *xs), (primals,), (tangents,))
                s = logit_spread(a.detach().float()).max() if a.dim() > 1 else logit_spread(a.detach().float())
                spread = s if spread is None else torch.maximum(spread, s)
        finally:
            self.model.train(was_training)
        return math.pi / max(float(spread), 1e-12)

    def step(self, inputs, closure: Optional[Callable[[], Any]] = None):
        """One optimizer step, scaled into the softmax radius. Call after ``loss.backward()``."""
        params = self._stepped_params()
        old = [p.detach().clone() for p in params]
        result = self.optimizer.step() if closure is None else self.optimizer.step(closure)

        with torch.no_grad():
            deltas = [p.detach() - o for p, o in zip(params, old)]
            sq = torch.zeros((), dtype=torch.float64)
            for d in deltas:
                sq = sq + d.double().pow(2).sum().cpu()
            tau = float(sq.sqrt())
        if tau == 0.0:
            self._record(tau=0.0, rho=math.inf, r_raw=0.0, r=0.0, scale=1.0, cost=0.0)
            return result
        if not math.isfinite(tau):
            self._record(tau=tau, rho=math.inf, r_raw=math.nan, r=math.nan, scale=1.0, cost=0.0)
            return result

        # JVP at theta_old: the model's tensors hold theta_new, so theta_old goes in as the primals.
        names = {id(p): n for n, p in self.model.named_parameters()}
        direction = {names[id(p)]: d / tau for p, d in zip(params, deltas) if id(p) in names}
        at = {names[id(p)]: o for p, o in zip(params, old) if id(p) in names}
        t0 = time.perf_counter()
        rho = self.radius(inputs, direction, at=at)
        cost = time.perf_counter() - t0

        r_raw = tau / rho
        if self.mode == "set" or r_raw > self.r_target:
            scale = self.r_target * rho / tau
            with torch.no_grad():
                for p, o, d in zip(params, old, deltas):
                    p.copy_(o.add(d, alpha=scale))
        else:
            scale = 1.0
        self._record(tau=tau, rho=rho, r_raw=r_raw, r=r_raw * scale, scale=scale, cost=cost)
        return result
