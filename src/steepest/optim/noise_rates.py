"""LANTON's noise-adaptive layerwise rates as a component of the engine (the math is in ``noise.py``).

A group switches it on with ``noise_adaptive=True`` (any geometry but ``identity``). The engine
calls five hooks and nothing else:

- :meth:`NoiseRates.ensure_state`: the state it keeps per parameter (``noise_sq``, ``noise_count``,
  ``noise_step``, and ``noise_prev_grad`` / ``noise_prev_valid`` for ``noise_source="previous"``);
- :meth:`NoiseRates.check_second_grads` before anything is modified;
- :meth:`NoiseRates.measure` before stage 1: advance each layer's step count and, at its measuring
  steps (``noise_every``), update its EMA of ``||G - G~||_*^2``;
- :meth:`NoiseRates.prefetch` once per step, after every group's measurement: the factors of
  every group whose estimates changed, from one device-to-host read for the whole optimizer;
- :meth:`NoiseRates.factors` in stage 3: ``{id(param): lr factor}``, cached between measurements.

``second_grads`` (the second mini-batch gradients of ``noise_source="second"``) are held only for
the duration of one ``step``.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..distributed import local
from ..numerics import wide_float
from .noise import dual_norms, keeps_gradient_at, layer_factors, measurement_beta, measures_at, noise_stds

if TYPE_CHECKING:  # annotations only: the engine imports this module
    from .engine import GeometryOptimizer


def noise_active(group: dict[str, Any]) -> bool:
    """Whether ``group`` runs noise-adaptive rates."""
    return bool(group["noise_adaptive"]) and group["geometry"] != "identity"


def host_counts(state: Any, params: list[Tensor], key: str) -> list[float]:
    """The CPU counter ``key`` of each parameter's state (0 where absent), in one host read."""
    tensors = [state.get(p, {}).get(key) for p in params]
    present = [t for t in tensors if t is not None]
    values = iter(torch.stack(present).tolist() if present else [])
    return [next(values) if t is not None else 0.0 for t in tensors]


class NoiseRates:
    """The noise-adaptive rates of one optimizer (see the module docstring)."""

    def __init__(self, optimizer: "GeometryOptimizer"):
        self.opt = optimizer
        self.second_grads: dict[int, Tensor] = {}
        self.factor_cache: dict[int, tuple[tuple, dict[int, float]]] = {}

    # -- state -------------------------------------------------------------------------------
    def ensure_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        if "noise_sq" not in state:
            device = local(p).device
            state["noise_sq"] = torch.zeros((), dtype=wide_float(device), device=device)
            state["noise_count"] = torch.zeros((), dtype=torch.float32)
        if "noise_step" not in state:  # the layer's noise-adaptive steps so far (the refresh phase)
            state["noise_step"] = torch.zeros((), dtype=torch.float32)
        if group["noise_source"] == "previous" and "noise_prev_valid" not in state:
            # 1 once noise_prev_grad holds a gradient (a state saved before this key existed does)
            state["noise_prev_valid"] = torch.tensor(float("noise_prev_grad" in state), dtype=torch.float32)
            if "noise_prev_grad" not in state:
                state["noise_prev_grad"] = self.opt._zeros_state(p)

    def counts(self, params: list[Tensor], key: str) -> list[float]:
        return host_counts(self.opt.state, params, key)

    # -- second gradients ----------------------------------------------------------------------
    def set_second_grads(self, second_grads: Any) -> None:
        """Map ``step(second_grads=...)`` (a dict or a sequence in param-group order) to ids."""
        self.second_grads = {}
        if second_grads is None:
            return
        if isinstance(second_grads, dict):
            self.second_grads = {id(p): g for p, g in second_grads.items()}
            return
        params = [p for g in self.opt.param_groups for p in g["params"]]
        second_grads = list(second_grads)
        if len(second_grads) != len(params):
            raise ValueError(f"second_grads has {len(second_grads)} tensors but the optimizer has "
                             f"{len(params)} parameters (pass a dict {{param: grad}} or one tensor per "
                             f"parameter in param-group order)")
        self.second_grads = {id(p): g for p, g in zip(params, second_grads) if g is not None}

    def measuring(self, group: dict[str, Any], params: list[Tensor]) -> list[bool]:
        """Whether each of ``params`` measures its noise at the coming step (``noise_every``)."""
        every = group["noise_every"]
        return [measures_at(int(done) + 1, every) for done in self.counts(params, "noise_step")]

    def needs_second_grads(self) -> bool:
        for group in self.opt.param_groups:
            if noise_active(group) and group["noise_source"] == "second":
                if any(self.measuring(group, [p for p in group["params"] if p.requires_grad])):
                    return True
        return False

    def check_second_grads(self, gi: int, group: dict[str, Any], params: list[Tensor]) -> None:
        if group["noise_source"] != "second":
            return

        def name(p: Tensor) -> str:  # only built for an error message
            return self.opt._param_name(gi, next(i for i, q in enumerate(group["params"]) if q is p))

        for p, measuring in zip(params, self.measuring(group, params)):
            if not measuring:
                continue
            g2 = self.second_grads.get(id(p))
            if g2 is None:
                raise ValueError(f"Parameter {name(p)!r} is in a group with noise_source='second' but step() got "
                                 f"no second gradient for it (pass step(second_grads=...)); nothing was modified")
            if g2.shape != p.shape:
                raise ValueError(f"The second gradient of parameter {name(p)!r} has shape {tuple(g2.shape)}, "
                                 f"expected {tuple(p.shape)}; nothing was modified")

    # -- measurement ---------------------------------------------------------------------------
    def measure(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        """Advance every layer's noise step and, at its measuring steps, update its noise EMA."""
        opt = self.opt
        every, previous = group["noise_every"], group["noise_source"] == "previous"
        steps = [int(done) + 1 for done in self.counts(params, "noise_step")]
        torch._foreach_add_([opt.state[p]["noise_step"] for p in params], 1.0)
        measure = [measures_at(step, every) for step in steps]
        keep = [previous and keeps_gradient_at(step, every) for step in steps]
        if 1 in steps or any(measure):
            self.factor_cache.pop(id(group), None)  # a layer joins, or an estimate changes
        if not (any(measure) or any(keep)):
            return
        valid = self.counts(params, "noise_prev_valid") if previous and any(measure) else [1.0] * len(params)
        measured, deltas = [], []
        for p, grad, measuring, keeping, ready in zip(params, grads, measure, keep, valid):
            if not (keeping or (measuring and ready > 0)):
                continue
            state = opt._state_view(p)
            g = opt._working_grad(group, p, grad)
            if measuring and ready > 0:
                other = state["noise_prev_grad"] if previous else opt._working_grad(
                    group, p, local(self.second_grads[id(p)]))
                deltas.append(g - other)
                measured.append(p)
            if keeping:
                state["noise_prev_grad"].copy_(g)
                state["noise_prev_valid"].fill_(1.0)
        if deltas:
            self._add_measurements(group, measured, self._dual_norms(group, measured, deltas))

    def _add_measurements(self, group: dict[str, Any], params: list[Tensor], norms: list[Tensor]) -> None:
        geometry = self.opt.geometry(group)
        beta = measurement_beta(group["noise_beta"], group["noise_every"])
        for p, norm in zip(params, norms):
            state = self.opt.state[p]
            scale = group["radius"] * geometry.shape_scale(p.shape)
            noise_sq = state["noise_sq"]
            # the norm in p's working precision (a sharded run sums shards in float64: rounding it
            # back keeps ranks and one process identical), then squared in noise_sq's float64
            norm = norm.to(self.opt.state_dtype(p)).to(noise_sq.dtype)
            noise_sq.mul_(beta).add_((scale * norm) ** 2, alpha=1 - beta)
            state["noise_count"] += 1

    def _dual_norms(self, group: dict[str, Any], params: list[Tensor], deltas: list[Tensor]) -> list[Tensor]:
        """The unscaled dual norms of the (local parts of the) noise samples ``deltas``."""
        opt = self.opt
        geometry = opt.geometry(group)

        def norms(xs: list[Tensor]) -> list[Tensor]:
            return dual_norms(geometry, xs, group["noise_ns"], group["ns_dtype"])

        topology = opt._topology
        if topology is None or (geometry.rowwise_dual_norm and not opt._sharded(params)):
            return norms(deltas)
        if geometry.rowwise_dual_norm:  # a sum over rows: add the shards' sums
            return list(opt._whole_sums(params, torch.stack([n.double() for n in norms(deltas)])).unbind())
        return topology.map_whole(params, deltas, norms, scalar=True)

    # -- factors -------------------------------------------------------------------------------
    def noise_sq(self, group: dict[str, Any], params: list[Tensor]) -> list[float | None]:
        """Bias-corrected ``H`` of each parameter (``None`` before its first estimate), read with
        one device-to-host transfer (the counts live on the CPU)."""
        counts = self.counts(params, "noise_count")
        return self._corrected(group, params, counts, self._read_noise(
            [p for p, c in zip(params, counts) if c > 0]))

    def _read_noise(self, params: list[Tensor]) -> dict[int, float]:
        """``{id(p): noise_sq}`` of ``params``, one device-to-host transfer per device."""
        by_device: dict[torch.device, list[Tensor]] = {}
        for p in params:
            by_device.setdefault(self.opt.state[p]["noise_sq"].device, []).append(p)
        values: dict[int, float] = {}
        for ps in by_device.values():
            values.update(zip(map(id, ps), torch.stack([self.opt.state[p]["noise_sq"] for p in ps]).tolist()))
        return values

    def _corrected(self, group: dict[str, Any], params: list[Tensor], counts: list[float],
                   values: dict[int, float]) -> list[float | None]:
        beta = measurement_beta(group["noise_beta"], group["noise_every"])
        out: list[float | None] = []
        for p, count in zip(params, counts):
            h = values.get(id(p)) if count > 0 else None
            if h is not None and beta > 0:
                h /= 1 - beta ** count
            out.append(h)
        return out

    @staticmethod
    def _settings(group: dict[str, Any]) -> tuple:
        """What a group's cached factors depend on besides the estimates."""
        return (tuple(map(id, group["params"])), group["noise_rule"], group["noise_alpha"],
                group["noise_eps"], group["noise_beta"])

    def _cached(self, group: dict[str, Any]) -> dict[int, float] | None:
        cached = self.factor_cache.get(id(group))
        return cached[1] if cached is not None and cached[0] == self._settings(group) else None

    def prefetch(self, groups: list[dict[str, Any]]) -> None:
        """Compute the factors of every group of ``groups`` whose cache is stale (a measurement, a
        joining layer or changed settings), reading all their noise EMAs from the device in one
        transfer: the engine calls it once per step, after every group's :meth:`measure`, so a
        measuring step adds one host read for the whole optimizer, not one per group."""
        pending = []
        for group in groups:
            if self._cached(group) is None:
                params = [p for p, done in zip(group["params"], self.counts(group["params"], "noise_step")) if done > 0]
                pending.append((group, params, self.counts(params, "noise_count")))
        if not pending:
            return
        values = self._read_noise([p for _, params, counts in pending for p, c in zip(params, counts) if c > 0])
        for group, params, counts in pending:
            noise_sq = self._corrected(group, params, counts, values)
            if not params or None in noise_sq:
                factors = {id(p): 1.0 for p in params}
            else:
                stds = noise_stds(noise_sq, group["noise_eps"])  # type: ignore[arg-type]
                factors = {id(p): f for p, f in zip(params, self.opt.layer_rule(group, stds))}
            self.factor_cache[id(group)] = (self._settings(group), factors)

    def factors(self, group: dict[str, Any]) -> dict[int, float]:
        """``{id(param): lr factor}``; see :meth:`GeometryOptimizer.noise_factors`."""
        cached = self._cached(group)
        if cached is None:
            self.prefetch([group])
            cached = self._cached(group)
        return cached  # type: ignore[return-value]

    def layer_stats(self) -> list[dict[str, Any]]:
        rows = []
        for gi, group in enumerate(self.opt.param_groups):
            if not noise_active(group):
                continue
            factors = self.factors(group)
            noise_sq = self.noise_sq(group, group["params"])
            for pi, (p, h) in enumerate(zip(group["params"], noise_sq)):
                factor = factors.get(id(p), 1.0)
                rows.append({"parameter": self.opt._param_name(gi, pi), "group": gi, "role": group["role"],
                             "noise": None if h is None else math.sqrt(h), "factor": factor,
                             "lr": self.opt.effective_lr(group, p) * factor})
        return rows


def describe_noise(group: dict[str, Any]) -> str:
    """The noise-adaptive rates of ``group`` in words, for ``explain`` (empty when off)."""
    if not noise_active(group):
        return ""
    rule = group["noise_rule"]
    if rule == "alpha_sqrt":
        rule += f"(alpha={group['noise_alpha']:g})"
    every = f", every {group['noise_every']} steps" if group["noise_every"] != 1 else ""
    return f" + noise({group['noise_source']}, {rule}, beta={group['noise_beta']}{every})"


def default_layer_rule(group: dict[str, Any], stds: list[float]) -> list[float]:
    """The named ``noise_rule`` of ``group`` (with ``noise_alpha`` for ``alpha_sqrt``)."""
    return layer_factors(stds, group["noise_rule"], group["noise_alpha"])


class NoiseRatesMethods:
    """The optimizer's public methods of the noise-adaptive layerwise rates (a mixin of
    :class:`~steepest.optim.engine.GeometryOptimizer`, whose ``_noise`` is a :class:`NoiseRates`)."""

    def needs_second_grads(self) -> bool:
        """Whether the next :meth:`step` measures noise from a second gradient: some group has
        ``noise_source="second"`` and one of its parameters reaches a measuring step
        (``noise_every``). A training loop can compute the second gradient only then."""
        return self._noise.needs_second_grads()

    def noise_factors(self, group: dict[str, Any]) -> dict[int, float]:
        """``{id(param): lr factor}`` for the layers of a noise-adaptive group: every factor is 1
        until every parameter of the group that has stepped has a noise estimate. The factors
        change only when an estimate does, so they are computed once per measurement and reused
        (the noise EMAs are read from the device then, not at every step)."""
        return self._noise.factors(group)

    def layer_rule(self, group: dict[str, Any], stds: list[float]) -> list[float]:
        """The lr factors of a group's layers from their noise standard deviations (in group order):
        the named ``noise_rule`` (with ``noise_alpha`` for ``alpha_sqrt``). Override in a subclass
        for a rule of your own."""
        return default_layer_rule(group, stds)

    def layer_stats(self) -> list[dict[str, Any]]:
        """Per-layer noise estimates and learning rates of the noise-adaptive groups.

        One dict per parameter of every group with ``noise_adaptive``: ``parameter`` (name),
        ``group`` (index), ``role``, ``noise`` (bias-corrected noise standard deviation in the
        layer's dual norm, ``None`` before the first estimate), ``factor`` (the lr factor the next
        step uses) and ``lr`` (the group's current lr times radius, shape factor and ``factor``).
        """
        return self._noise.layer_stats()
