"""The engine: one ``torch.optim.Optimizer`` that runs the four stages of a steepest-descent update.

For every parameter ``W`` with gradient ``g`` in a group, one step is

    (1) state transform    D = T(state, g)                      momentum (EMA, Nesterov), Lion's two betas,
                                                                Adam moments, diffGrad's friction
    (2) direction          O = geometry.lmo(D)                  polar factor, sign, column/row/RMS/Frobenius
                                                                normalization
    (3) step size          O <- A(O)  (per-entry factor, optional: NorMuon's neuron normalization)
                           s = lr * radius * geometry.shape_scale(shape(W))   (times a preset's factor)
    (4) decay and apply    W <- (1 - lr * weight_decay) W - s O

Every stage sees the whole group: stage 1 is ``_signals`` (per parameter by default; M-FAC's window
spans the group), stage 2 runs ``lmo_many`` so same-shape matrices are orthogonalized in one batched
call, and stage 3 is two methods (``_adapt`` for per-entry factors, ``_step_sizes`` for one scalar
per parameter) so that group-level rules (noise-adaptive layerwise rates, AuON's brake) can see
every layer of the group before any layer moves. Weight decay uses the unadjusted
``lr``, as torch.optim.Muon, Moonlight and Dion do; with ``weight_decay = 1`` stage 4 is Scion's
constrained (conditional-gradient) blend ``W <- (1 - lr) W - lr * radius * shape * O``, which keeps
``||W|| <= radius * shape`` in the geometry's norm.

Every hyperparameter is a flat key of the parameter group (strings for names), so param groups stay
plain data: ``state_dict`` / ``load_state_dict`` round-trip exactly, ``torch.load(weights_only=True)``
works, and LR schedulers drive ``group["lr"]`` of every group, fallback groups included.

Group keys: ``lr``, ``weight_decay``, ``radius``, ``transform`` (``momentum`` | ``adam`` | ``lion`` |
``diffgrad``; see ``transforms.py``),
``momentum``, ``nesterov``, ``betas``, ``eps``, ``geometry`` (``spectral`` | ``sign`` | ``colnorm``
| ``rownorm`` | ``rms`` | ``frobenius`` | ``identity``), ``shape_scale`` (a mode of the geometry,
``None`` for its default; a group that names its ``geometry`` without a ``shape_scale`` gets the
geometry's default), ``ns``, ``ns_steps``, ``ns_dtype``, ``ns_eps``, ``layout`` (``out_in``, as
``nn.Linear`` stores weights, or ``in_out`` for weights stored transposed, such as GPT-2's ``Conv1D``:
the geometry then acts on ``W^T``, ``steepest.geometry.transposed``), ``maximize``, ``role`` (informational:
``hidden``, ``conv``, ``embedding``, ``head``, ``vector`` or ``""``), and the noise-adaptive
layerwise rates of LANTON (``noise.py``): ``noise_adaptive`` (bool), ``noise_beta`` (EMA of the
squared noise), ``noise_source`` (``previous`` | ``second``), ``noise_rule`` (``min_ratio`` |
``sqrt_ratio`` | ``alpha_sqrt`` | ``gmean_ratio``), ``noise_alpha`` (``alpha_sqrt``'s noise scale),
``noise_every`` (measure the noise at every k-th step and hold the factors in between),
``noise_ns`` (the nuclear-norm estimator's Newton-Schulz schedule, or ``svd``) and ``noise_eps``
(relative floor). Noise adaptivity applies to groups whose geometry is not
``identity``. Stage 4 can end with a projection onto a constraint set (``steepest.constraints``):
``constraint`` (a registered name such as ``spectral_hardcap``, or None), ``constraint_bound`` (the
spectral bound, sphere radius or Stiefel scale) and ``constraint_units`` (``spectral`` or ``rms``:
the bound on the RMS->RMS norm, ``sigma_1 <= bound * sqrt(fan_out / fan_in)``). Presets may add keys of their own (``PRESET_KEYS``), which are carried the same way.

Numerics: optimizer state of bfloat16/float16 parameters is kept in float32 and the update is
applied in float32. A zero gradient gives a zero step. Gradients are checked for NaN/Inf before
anything is modified: ``on_nonfinite="raise"`` raises ``FloatingPointError`` naming the parameter;
``"skip"`` skips the whole step, warns and counts it in ``nonfinite_skips``.

State is created when a group is added (for every parameter that requires a gradient), so the
state keys are the same on every rank before the first step and ``torch.distributed.checkpoint``
can save and load an optimizer that has not stepped yet.

Distributed (``distributed_mesh``, see ``steepest.distributed.topology``): the stages run on local
tensors (the shards of DTensor parameters); stage 2 of a geometry whose LMO needs the whole matrix
runs once per matrix on its owner rank (``Topology.map_whole``), and every whole-tensor reduction
of the later stages (NorMuon's Frobenius norms, AuON's brake, the noise dual norms) is summed over
the shards. The non-finite check and the set of parameters with gradients are agreed on by all
ranks before anything is modified.

Compilation (``compile``, a constructor setting like ``on_nonfinite``, not a group key): the pure
kernels (the Newton-Schulz iteration of spectral groups and the elementwise state transforms of
stage 1) run through ``torch.compile(fullgraph=True, dynamic=True)`` where the setting resolves to
True for the tensor's device (``"auto"``: eager on every device; see ``steepest.compiled`` for
the measurements behind that). The optimizer stores only the setting, so
pickling, ``copy.deepcopy`` and ``state_dict`` are unaffected; the compiled kernels are cached per
process. Compiled results agree with eager ones to float rounding (inductor fuses and reorders
operations), not bit for bit.
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Callable, Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..compiled import resolve_compile
from ..distributed import is_dtensor, is_sharded, local, resolve_topology
from ..geometry import Geometry, make_geometry
from ..numerics import wide_float
from .noise import (NOISE_ALPHA, NOISE_EVERY, NOISE_RULE, dual_norms, keeps_gradient_at, layer_factors,
                    measurement_beta, measures_at, noise_stds)
from .transforms import adam_signal, diffgrad_signal, lion_signal, momentum_signal
from .validation import ON_NONFINITE, check_choice, check_compile, check_group

_LOW_PRECISION = (torch.bfloat16, torch.float16)

#: Keys every engine group has, with the engine's own defaults (presets override them).
ENGINE_DEFAULTS: dict[str, Any] = {
    "lr": 0.02,
    "weight_decay": 0.0,
    "radius": 1.0,
    "transform": "momentum",
    "momentum": 0.95,
    "nesterov": True,
    "betas": (0.9, 0.95),
    "eps": 1e-8,
    "geometry": "spectral",
    "shape_scale": None,
    "ns": "keller",
    "ns_steps": None,
    "ns_dtype": "auto",
    "ns_eps": 1e-7,
    "layout": "out_in",
    "maximize": False,
    "role": "",
    "noise_adaptive": False,
    "noise_beta": 0.9,
    "noise_source": "previous",
    "noise_rule": NOISE_RULE,
    "noise_alpha": NOISE_ALPHA,
    "noise_every": NOISE_EVERY,
    "noise_ns": "quintic",
    "noise_eps": 1e-6,
    "constraint": None,
    "constraint_bound": 1.0,
    "constraint_units": "spectral",
}

_GEOMETRY_KEYS = ("geometry", "shape_scale", "ns", "ns_steps", "ns_dtype", "ns_eps", "layout")


def default_role(p: Tensor) -> str:
    """Role of a parameter that arrives without one: ``conv`` (>= 3-D), ``hidden`` (2-D), ``vector``."""
    return "conv" if p.ndim >= 3 else "hidden" if p.ndim == 2 else "vector"


def _upgrade_state(state: dict[str, Any]) -> None:
    """Convert one parameter's state from the layout of steepest 0.6 and earlier in place:
    ``exp_avg_sq`` (Adam/diffGrad's ``v``) to ``exp_avg_rms = sqrt(v)``, and a float32 ``noise_sq``
    (LANTON) or ``gram`` (M-FAC) to :func:`steepest.numerics.wide_float`."""
    if "exp_avg_sq" in state:
        state["exp_avg_rms"] = state.pop("exp_avg_sq").sqrt()
    for key in ("noise_sq", "gram"):
        value = state.get(key)
        if isinstance(value, Tensor) and value.dtype != wide_float(value.device):
            state[key] = value.to(wide_float(value.device))
    if "noise_count" in state and "noise_step" not in state:
        # 0.7 and earlier measured at every step: the layer has stepped once more than it measured
        # with noise_source="previous" (its first step only kept the gradient), as often with "second"
        steps = state["noise_count"] + state.get("noise_prev_valid", torch.zeros(()))
        state["noise_step"] = steps.to(device="cpu", dtype=torch.float32)


class GeometryOptimizer(Optimizer):
    """Steepest descent under a geometry chosen per parameter group (see the module docstring).

    Args:
        params: tensors, ``(name, tensor)`` pairs, or dicts of param groups (torch.optim style).
        on_nonfinite: ``"raise"`` (default) or ``"skip"`` when a gradient holds NaN or Inf.
        distributed_mesh: ``None`` (one process), a ``ProcessGroup`` (DDP) or a 1-D ``DeviceMesh``
            (FSDP2); see ``steepest.distributed``.
        compile: ``"auto"`` (default: eager on every device, as measured in ``steepest.compiled``),
            ``True`` (always compile; on CPU this needs a C++ compiler) or ``False``.
        **defaults: values for any group key listed in the module docstring.

    Presets subclass this and implement :meth:`role_settings` to give each role its recipe; a
    preset with hyperparameters of its own lists them with their defaults in ``PRESET_KEYS`` and
    validates them in :meth:`_validate_group`.
    """

    #: Group keys a preset adds to the engine's, with their defaults.
    PRESET_KEYS: dict[str, Any] = {}

    #: the ``compile`` setting (an instance attribute; this class default serves optimizers pickled
    #: before the setting existed)
    compile: bool | str = "auto"

    def __init__(self, params: Iterable[Any], *, on_nonfinite: str = "raise", distributed_mesh: Any = None,
                 compile: bool | str = "auto", **defaults: Any):
        check_choice("on_nonfinite", on_nonfinite, ON_NONFINITE)
        check_compile(compile)
        self.compile = compile
        self._topology = resolve_topology(distributed_mesh)
        unknown = sorted(set(defaults) - set(ENGINE_DEFAULTS) - set(self.PRESET_KEYS))
        if unknown:
            raise TypeError(f"Unknown optimizer option(s): {', '.join(unknown)}")
        self.on_nonfinite = on_nonfinite
        self.nonfinite_skips = 0
        self._geometries: dict[tuple, Geometry] = {}
        self._constraints: dict[tuple, Any] = {}
        self._second_grads: dict[int, Tensor] = {}
        self._factor_cache: dict[int, tuple[tuple, dict[int, float]]] = {}
        merged = dict(ENGINE_DEFAULTS)
        merged.update(self.PRESET_KEYS)
        merged.update(defaults)
        super().__init__(params, merged)

    # -- groups ------------------------------------------------------------------------------
    def role_settings(self, role: str) -> dict[str, Any]:
        """Group keys a preset gives to parameters of ``role`` (the engine itself gives none)."""
        return {}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; a group without ``role`` is split by tensor shape into hidden/conv/vector
        groups, each completed with the preset's recipe for its role, then validated."""
        group = dict(param_group)
        params = group.pop("params")
        if isinstance(params, Tensor):
            params = [params]
        params = list(params)
        if "role" in group or not params:
            parts = [(group.get("role", ""), params)]
        else:
            by_role: dict[str, list] = {}
            for item in params:
                tensor = item[1] if isinstance(item, tuple) else item
                by_role.setdefault(default_role(tensor) if isinstance(tensor, Tensor) else "", []).append(item)
            parts = list(by_role.items())
        start = len(self.param_groups)
        try:
            for role, items in parts:
                sub = dict(group)
                sub["params"] = items
                sub["role"] = role
                if "geometry" in group and "shape_scale" not in group:
                    sub["shape_scale"] = None  # an explicit geometry brings its own default shape factor
                for key, value in self.role_settings(role).items():
                    sub.setdefault(key, value)
                super().add_param_group(sub)
                self._validate_group(self.param_groups[-1])
        except (TypeError, ValueError):
            del self.param_groups[start:]  # all or nothing: no split part of a rejected group stays
            raise
        for group in self.param_groups[start:]:
            for p in group["params"]:
                if p.requires_grad:
                    self._ensure_state(group, p)

    def _validate_group(self, group: dict[str, Any]) -> None:
        check_group(group)
        geometry = self.geometry(group)
        names = group.get("param_names")
        for i, p in enumerate(group["params"]):
            name = names[i] if names else f"param {i} of group {len(self.param_groups) - 1}"
            geometry.check_shape(p.shape, name)
            if group["constraint"] is not None and p.ndim < self.constraint(group).min_ndim:
                raise ValueError(f"Constraint {group['constraint']!r} needs parameters with at least "
                                 f"{self.constraint(group).min_ndim} dimensions, got shape {tuple(p.shape)} for "
                                 f"parameter {name!r}")
            if self._topology is not None:
                self._topology.check_param(p, name)
            elif is_dtensor(p):
                raise TypeError(f"Parameter {name!r} is a DTensor; pass distributed_mesh=<its DeviceMesh> "
                                f"to the optimizer")

    def geometry(self, group: dict[str, Any]) -> Geometry:
        """The (cached) geometry object a group's flat keys describe."""
        key = tuple(group.get(k) for k in _GEOMETRY_KEYS)
        geom = self._geometries.get(key)
        if geom is None:
            geom = self._geometries[key] = make_geometry(group)
        return geom

    def effective_lr(self, group: dict[str, Any], p: Tensor) -> float:
        """Step size of stage 3 for ``p`` at the group's current lr: ``lr * radius * shape_scale``."""
        return float(group["lr"]) * group["radius"] * self.geometry(group).shape_scale(p.shape)

    #: state kept on the CPU whatever the parameter's device (counters read on the host every step)
    _HOST_STATE = ("noise_count", "noise_prev_valid", "noise_step")

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state dict plus ``nonfinite_skips``, the number of steps skipped for a
        non-finite gradient, so the count continues after a resume (a plain int: it loads with
        ``torch.load(weights_only=True)``; loaders that keep only ``state`` and ``param_groups``,
        such as ``torch.distributed.checkpoint``'s, leave the count as it is)."""
        state_dict = super().state_dict()
        state_dict["nonfinite_skips"] = self.nonfinite_skips
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch.optim's loader, except that every state tensor keeps the dtype it was saved with
        (torch casts floating state to the parameter's dtype: the float32 state of bfloat16 weights
        would lose precision, and LANTON's float32 noise EMA of float64 weights would change its
        rounding) and the host-side counters (:attr:`_HOST_STATE`) stay on the CPU, so continuing
        after a reload is bit-identical on any device.

        State saved by steepest 0.6 and earlier is converted: Adam's second moment ``exp_avg_sq``
        becomes ``exp_avg_rms = sqrt(exp_avg_sq)``, and a float32 ``noise_sq`` (LANTON) or
        ``gram`` (M-FAC) becomes float64 (see :func:`_upgrade_state`)."""
        saved_groups = state_dict["param_groups"]
        saved_state = state_dict["state"]
        super().load_state_dict(state_dict)
        if "nonfinite_skips" in state_dict:
            self.nonfinite_skips = int(state_dict["nonfinite_skips"])
        saved_ids = [i for g in saved_groups for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, p in zip(saved_ids, params):
            if saved_id not in saved_state:
                continue
            for key, value in saved_state[saved_id].items():
                if not isinstance(value, Tensor) or key == "step" or not value.is_floating_point():
                    continue
                loaded = self.state[p].get(key)
                if key in self._HOST_STATE:
                    self.state[p][key] = value.to(device="cpu", copy=True)
                elif isinstance(loaded, Tensor) and loaded.dtype != value.dtype:
                    self.state[p][key] = value.to(device=loaded.device, copy=True)
        for p in params:
            if p in self.state:
                _upgrade_state(self.state[p])

    #: Instance attributes that are settings, not tensors: torch's ``Optimizer.__getstate__`` keeps
    #: only defaults, state and param_groups, so these are carried explicitly through pickling and
    #: ``copy.deepcopy`` (presets add their role recipes).
    _persistent_attrs: tuple[str, ...] = ("on_nonfinite", "nonfinite_skips", "compile")

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update({name: getattr(self, name) for name in self._persistent_attrs})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # load_state_dict calls this too (and keeps the topology); a process group does not pickle,
        # so an unpickled or deep-copied optimizer steps one process
        self._topology = getattr(self, "_topology", None)
        self._geometries = {}
        self._constraints = {}
        self._second_grads = {}
        self._factor_cache = {}
        for group in self.param_groups:
            for key, value in {**ENGINE_DEFAULTS, **self.PRESET_KEYS}.items():
                group.setdefault(key, value)

    # -- the step ------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *, second_grads: Any = None) -> Any:
        """Perform one update of every parameter that has a gradient.

        Args:
            closure: re-evaluates the model and returns the loss (optional).
            second_grads: for groups with ``noise_source="second"``: a second, independent
                mini-batch gradient at the same point, as a dict ``{param: tensor}`` or a sequence
                in the order of ``[p for g in optimizer.param_groups for p in g["params"]]``. Used
                only to estimate the gradient noise, never in the update.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._second_grads = self._map_second_grads(second_grads)
        try:
            self._step_groups()
        finally:
            self._second_grads = {}
        return loss

    def _map_second_grads(self, second_grads: Any) -> dict:
        if second_grads is None:
            return {}
        if isinstance(second_grads, dict):
            return {id(p): g for p, g in second_grads.items()}
        params = [p for g in self.param_groups for p in g["params"]]
        second_grads = list(second_grads)
        if len(second_grads) != len(params):
            raise ValueError(f"second_grads has {len(second_grads)} tensors but the optimizer has "
                             f"{len(params)} parameters (pass a dict {{param: grad}} or one tensor per "
                             f"parameter in param-group order)")
        return {id(p): g for p, g in zip(params, second_grads) if g is not None}

    def _step_groups(self) -> None:
        work = []
        for gi, group in enumerate(self.param_groups):
            params, grads = [], []
            for pi, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                if self._topology is None and is_dtensor(p):
                    raise TypeError(f"Parameter {self._param_name(gi, pi)!r} is a DTensor but the optimizer has "
                                    f"no distributed_mesh (copies and unpickled optimizers step one process)")
                if p.grad.is_sparse:
                    raise TypeError(f"{type(self).__name__} does not support sparse gradients "
                                    f"(parameter {self._param_name(gi, pi)!r})")
                if torch.is_complex(p):
                    raise TypeError(f"{type(self).__name__} does not support complex parameters "
                                    f"(parameter {self._param_name(gi, pi)!r})")
                params.append(p)
                grads.append(p.grad if self._topology is None else local(p.grad))
            if params:
                work.append((gi, group, params, grads))
        bad = self._first_nonfinite(work)
        if self._topology is not None:
            bad = self._agree_on_step(work, bad)
        if bad is not None:
            if self.on_nonfinite == "raise":
                raise FloatingPointError(
                    f"Non-finite gradient (NaN or Inf) in parameter {bad!r}; parameters and optimizer "
                    f"state were left unchanged. Pass on_nonfinite='skip' to skip such steps instead."
                )
            self.nonfinite_skips += 1
            warnings.warn(f"{type(self).__name__}: skipped a step with a non-finite gradient in "
                          f"parameter {bad!r} ({self.nonfinite_skips} skipped so far)", RuntimeWarning)
            return
        for gi, group, params, grads in work:
            if self._noise_active(group) and group["noise_source"] == "second":
                self._check_second_grads(gi, group, params)
        for _, group, params, grads in work:
            self._update_group(group, params, grads)

    def _agree_on_step(self, work, bad: str | None) -> str | None:
        """One all-reduce: every rank must step the same parameters, and a non-finite gradient on any
        rank's shard stops (or skips) the step on every rank."""
        index = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        stepped = [index[id(p)] + 1 for _, _, params, _ in work for p in params]
        count, total = len(stepped), sum(stepped)  # the same on every rank iff (in practice) the same set
        flag, high, neg_low, high_sum, neg_low_sum = self._topology.max_over_ranks(
            [float(bad is not None), count, -count, total, -total])
        if high != -neg_low or high_sum != -neg_low_sum:
            raise RuntimeError(f"Ranks disagree on which parameters have gradients at this step ({int(-neg_low)} "
                               f"to {int(high)} parameters); every rank must step the same parameters (give "
                               f"unused parameters zero gradients, or set their gradients to None on every rank)")
        if flag and bad is None:
            return "<a shard on another rank>"
        return bad

    def _param_name(self, gi: int, pi: int) -> str:
        names = self.param_groups[gi].get("param_names")
        if names:
            return names[pi]
        return f"param {pi} of group {gi} (shape {tuple(self.param_groups[gi]['params'][pi].shape)})"

    def _first_nonfinite(self, work) -> str | None:
        grads = [g for _, _, _, gs in work for g in gs if g.numel()]
        if not grads:
            return None
        # min and max propagate NaN and are +-Inf for +-Inf; finite values never overflow here.
        # One fused reduction per tensor and a single sync (7x cheaper than an inf-norm on CPU).
        extremes = [torch.stack(torch.aminmax(g)).float() for g in grads]
        if bool(torch.cat(extremes).isfinite().all()):
            return None
        for gi, group, params, gs in work:
            for p, g in zip(params, gs):
                if not bool(torch.isfinite(g).all()):
                    return self._param_name(gi, next(i for i, q in enumerate(group["params"]) if q is p))
        return None

    def constraint(self, group: dict[str, Any]):
        """The (cached) stage-4 constraint of ``group`` (``None`` without one)."""
        if group["constraint"] is None:
            return None
        from ..constraints.registry import constraint_from_keys

        key = (group["constraint"], group["constraint_bound"], group["constraint_units"])
        found = self._constraints.get(key)
        if found is None:
            found = self._constraints[key] = constraint_from_keys(
                group["constraint"], group["constraint_bound"], group["constraint_units"])
        return found

    def _constrain(self, group: dict[str, Any], params: list[Tensor], steps: list[float]) -> None:
        """Stage 4's projection: put every parameter back on the group's constraint set, telling it
        the largest spectral norm the step just taken can have (step size times the geometry's
        ``lmo_spectral_norm``; ``None`` when the geometry has no such bound); the spectral soft cap
        couples its strength to it. Distributed, each whole matrix is projected once, on its owner
        rank."""
        constraint = self.constraint(group)
        if constraint is None:
            return
        scale = self.geometry(group).lmo_spectral_norm()  # the update's spectral norm per unit step
        steps = [None if scale is None else s * scale for s in steps]
        transposed = group.get("layout", "out_in") == "in_out"
        if transposed:  # the constraint sees the (out, in) matrix W^T
            def project(w: Tensor, step_size: float | None) -> Tensor:
                return constraint.project(w.mT, step_size=step_size).mT
        else:
            project = constraint.project
        if self._topology is None:
            for p, s in zip(params, steps):
                if transposed:
                    p.copy_(project(p, s))
                else:
                    constraint.project_(p, step_size=s)
            return
        step_of = {i: s for i, s in enumerate(steps)}
        projected = self._topology.map_whole(
            params, [local(p) for p in params],
            lambda owned, wholes: [project(w, step_of[i]) for i, w in zip(owned, wholes)],
            with_index=True)
        for p, w in zip(params, projected):
            local(p).copy_(w)

    def _update_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        for p in params:
            self._ensure_state(group, p)  # settings may have changed since the group was added
        if self._noise_active(group):
            self._update_noise(group, params, grads)                            # stage 3's inputs
        signals = self._signals(group, params, grads)                           # stage 1
        directions = self._lmo(group, params, signals)                          # stage 2
        directions = self._adapt(group, params, directions)                     # stage 3
        steps = self._step_sizes(group, params, directions)
        self._apply(group, params, directions, steps)                           # stage 4
        self._constrain(group, params, steps)

    def _lmo(self, group: dict[str, Any], params: list[Tensor], signals: list[Tensor]) -> list[Tensor]:
        """Stage 2: the geometry's LMO of every signal; distributed, a whole-matrix LMO runs once per
        matrix on its owner rank, a row-wise one on the local shards."""
        geometry = self.geometry(group)
        lmo_many = geometry.lmo_many
        if self.compile is not False:
            lmo_many = functools.partial(geometry.lmo_many, compiles=self.compiles)
        if self._topology is None or geometry.rowwise_lmo:
            return lmo_many(signals)
        return self._topology.map_whole(params, signals, lmo_many)

    def _sharded(self, params: list[Tensor]) -> bool:
        """Whether any of ``params`` is a shard (then whole-tensor reductions need the other ranks)."""
        return self._topology is not None and any(is_sharded(p) for p in params)

    def lmo_placement(self, group: dict[str, Any]) -> list[str]:
        """Where stage 2 runs for each parameter of ``group`` when all of them step: ``"this
        process"``, ``"rank k"`` (the owner of a whole-matrix LMO), ``"local shards"`` or ``"every
        rank"`` (row-wise LMOs of sharded or replicated parameters)."""
        params = group["params"]
        if self._topology is None:
            return ["this process"] * len(params)
        if self.geometry(group).rowwise_lmo:
            return ["local shards" if is_sharded(p) else "every rank" for p in params]
        return [f"rank {owner}" for owner in self._topology.owners(params)]

    def _whole_sums(self, params: list[Tensor], partial: Tensor) -> Tensor:
        """Sums over whole tensors from ``partial[i]``, sums over ``params[i]``'s local entries
        (the identity on one process)."""
        return partial if self._topology is None else self._topology.shard_sums(params, partial)

    def _state_view(self, p: Tensor) -> dict[str, Any]:
        """``p``'s state with the local tensors of DTensor entries (they share storage, so in-place
        updates reach the state); the state itself on one process."""
        state = self.state[p]
        if self._topology is None:
            return state
        return {key: local(value) for key, value in state.items()}

    def _ensure_state(self, group: dict[str, Any], p: Tensor) -> None:
        """Create the state ``p`` needs under ``group``'s settings (its missing keys only); called
        when the group is added and at the start of every step of the group, so settings changed
        later get their state."""
        state = self.state[p]
        transform = group["transform"]
        if transform in ("adam", "diffgrad"):
            if "step" not in state:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = self._zeros_state(p)
                state["exp_avg_rms"] = self._zeros_state(p)
            if transform == "diffgrad" and "prev_grad" not in state:
                state["prev_grad"] = self._zeros_state(p)
        elif transform == "lion":
            if "exp_avg" not in state:
                state["exp_avg"] = self._zeros_state(p)
        elif group["momentum"] > 0 and "momentum_buffer" not in state:
            state["momentum_buffer"] = self._zeros_state(p)
        if self._noise_active(group):
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
                    state["noise_prev_grad"] = self._zeros_state(p)

    def _signals(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
        """Stage 1 for a whole group: one signal per parameter (override for group-level transforms)."""
        return [self._signal(group, p, self._working_grad(group, p, g)) for p, g in zip(params, grads)]

    @staticmethod
    def state_dtype(p: Tensor) -> torch.dtype:
        """Dtype of ``p``'s optimizer state: float32 for bfloat16/float16 parameters, else ``p.dtype``."""
        return torch.float32 if p.dtype in _LOW_PRECISION else p.dtype

    def _working_grad(self, group: dict[str, Any], p: Tensor, grad: Tensor) -> Tensor:
        """The gradient in the state dtype, negated for ``maximize`` (a new tensor whenever it differs)."""
        dtype = self.state_dtype(p)
        g = grad.to(dtype) if grad.dtype != dtype else grad
        return -g if group["maximize"] else g

    def _zeros_state(self, p: Tensor) -> Tensor:
        return torch.zeros_like(p, dtype=self.state_dtype(p), memory_format=torch.preserve_format)

    def _signal(self, group: dict[str, Any], p: Tensor, g: Tensor) -> Tensor:
        """Stage 1 for one parameter: update its state with ``g`` and return the signal ``D``."""
        state = self._state_view(p)
        transform = group["transform"]
        use_compile = self.compiles(g)
        if transform in ("adam", "diffgrad"):
            beta1, beta2 = group["betas"]
            if transform == "diffgrad":
                return diffgrad_signal(state["exp_avg"], state["exp_avg_rms"], state["prev_grad"], state["step"],
                                       g, beta1, beta2, group["eps"], compile=use_compile)
            return adam_signal(state["exp_avg"], state["exp_avg_rms"], state["step"], g, beta1, beta2, group["eps"],
                               compile=use_compile)
        if transform == "lion":
            beta1, beta2 = group["betas"]
            return lion_signal(state["exp_avg"], g, beta1, beta2, compile=use_compile)
        beta = group["momentum"]
        return momentum_signal(state.get("momentum_buffer") if beta > 0 else None, g, beta, group["nesterov"],
                               compile=use_compile)

    def compiles(self, tensor: Tensor) -> bool:
        """Whether the kernels run compiled for ``tensor`` under this optimizer's ``compile`` setting."""
        return resolve_compile(self.compile, tensor.device)

    def _adapt(self, group: dict[str, Any], params: list[Tensor], directions: list[Tensor]) -> list[Tensor]:
        """Stage 3, per-entry part: rescale directions entrywise (NorMuon's neuron normalization).
        The engine applies no factor; the directions may be modified in place (they are fresh)."""
        return directions

    def _step_sizes(self, group: dict[str, Any], params: list[Tensor], directions: list[Tensor]) -> list[float]:
        """Stage 3, scalar part: one step size per parameter (override for group-level adaptive rules);
        with ``noise_adaptive`` times the layer's noise factor."""
        steps = [self.effective_lr(group, p) for p in params]
        if self._noise_active(group):
            factors = self.noise_factors(group)
            steps = [s * factors.get(id(p), 1.0) for s, p in zip(steps, params)]
        return steps

    # -- noise-adaptive layerwise rates (LANTON; kernels and math in noise.py) -----------------
    @staticmethod
    def _noise_active(group: dict[str, Any]) -> bool:
        return bool(group["noise_adaptive"]) and group["geometry"] != "identity"

    def _measuring(self, group: dict[str, Any], params: list[Tensor]) -> list[bool]:
        """Whether each of ``params`` measures its noise at the coming step (``noise_every``)."""
        every = group["noise_every"]
        return [measures_at(int(done) + 1, every) for done in self._counts(params, "noise_step")]

    def needs_second_grads(self) -> bool:
        """Whether the next :meth:`step` measures noise from a second gradient: some group has
        ``noise_source="second"`` and one of its parameters reaches a measuring step
        (``noise_every``). A training loop can compute the second gradient only then."""
        for group in self.param_groups:
            if self._noise_active(group) and group["noise_source"] == "second":
                if any(self._measuring(group, [p for p in group["params"] if p.requires_grad])):
                    return True
        return False

    def _check_second_grads(self, gi: int, group: dict[str, Any], params: list[Tensor]) -> None:
        def name(p: Tensor) -> str:  # only built for an error message
            return self._param_name(gi, next(i for i, q in enumerate(group["params"]) if q is p))

        for p, measuring in zip(params, self._measuring(group, params)):
            if not measuring:
                continue
            g2 = self._second_grads.get(id(p))
            if g2 is None:
                raise ValueError(f"Parameter {name(p)!r} is in a group with noise_source='second' but step() got "
                                 f"no second gradient for it (pass step(second_grads=...)); nothing was modified")
            if g2.shape != p.shape:
                raise ValueError(f"The second gradient of parameter {name(p)!r} has shape {tuple(g2.shape)}, "
                                 f"expected {tuple(p.shape)}; nothing was modified")

    def _update_noise(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        """Advance every layer's noise step and, at its measuring steps (``noise_every``), update its
        EMA of the squared dual-norm noise ``||G - G~||_*^2``."""
        geometry = self.geometry(group)
        every, previous = group["noise_every"], group["noise_source"] == "previous"
        steps = [int(done) + 1 for done in self._counts(params, "noise_step")]
        torch._foreach_add_([self.state[p]["noise_step"] for p in params], 1.0)
        measure = [measures_at(step, every) for step in steps]
        keep = [previous and keeps_gradient_at(step, every) for step in steps]
        if 1 in steps or any(measure):
            self._factor_cache.pop(id(group), None)  # a layer joins, or an estimate changes
        if not (any(measure) or any(keep)):
            return
        valid = self._counts(params, "noise_prev_valid") if previous and any(measure) else [1.0] * len(params)
        measured, deltas = [], []
        for p, grad, measuring, keeping, ready in zip(params, grads, measure, keep, valid):
            if not (keeping or (measuring and ready > 0)):
                continue
            state = self._state_view(p)
            g = self._working_grad(group, p, grad)
            if measuring and ready > 0:
                other = state["noise_prev_grad"] if previous else self._working_grad(
                    group, p, local(self._second_grads[id(p)]))
                deltas.append(g - other)
                measured.append(p)
            if keeping:
                state["noise_prev_grad"].copy_(g)
                state["noise_prev_valid"].fill_(1.0)
        if not deltas:
            return
        norms = self._dual_norms(group, measured, deltas)
        beta = measurement_beta(group["noise_beta"], group["noise_every"])
        for p, norm in zip(measured, norms):
            state = self.state[p]
            scale = group["radius"] * geometry.shape_scale(p.shape)
            noise_sq = state["noise_sq"]
            # the norm in p's working precision (a sharded run sums shards in float64: rounding it
            # back keeps ranks and one process identical), then squared in noise_sq's float64
            norm = norm.to(self.state_dtype(p)).to(noise_sq.dtype)
            noise_sq.mul_(beta).add_((scale * norm) ** 2, alpha=1 - beta)
            state["noise_count"] += 1

    def _dual_norms(self, group: dict[str, Any], params: list[Tensor], deltas: list[Tensor]) -> list[Tensor]:
        """The unscaled dual norms of the (local parts of the) noise samples ``deltas``."""
        geometry = self.geometry(group)

        def norms(xs: list[Tensor]) -> list[Tensor]:
            return dual_norms(geometry, xs, group["noise_ns"], group["ns_dtype"])

        if self._topology is None or (geometry.rowwise_dual_norm and not self._sharded(params)):
            return norms(deltas)
        if geometry.rowwise_dual_norm:  # a sum over rows: add the shards' sums
            return list(self._whole_sums(params, torch.stack([n.double() for n in norms(deltas)])).unbind())
        return self._topology.map_whole(params, deltas, norms, scalar=True)

    def _noise_sq(self, group: dict[str, Any], params: list[Tensor]) -> list[float | None]:
        """Bias-corrected ``H`` of each parameter (``None`` before its first estimate), read with
        one device-to-host transfer (the counts live on the CPU)."""
        counts = self._counts(params, "noise_count")
        measured = [p for p, c in zip(params, counts) if c > 0]
        if not measured:
            return [None] * len(params)
        values = dict(zip(map(id, measured), torch.stack([self.state[p]["noise_sq"] for p in measured]).tolist()))
        beta = measurement_beta(group["noise_beta"], group["noise_every"])
        out: list[float | None] = []
        for p, count in zip(params, counts):
            h = values.get(id(p))
            if h is not None and beta > 0:
                h /= 1 - beta ** count
            out.append(h)
        return out

    def _counts(self, params: list[Tensor], key: str) -> list[float]:
        """The CPU counter ``key`` of each parameter's state (0 where absent), in one host read."""
        tensors = [self.state.get(p, {}).get(key) for p in params]
        present = [t for t in tensors if t is not None]
        values = iter(torch.stack(present).tolist() if present else [])
        return [next(values) if t is not None else 0.0 for t in tensors]

    def noise_factors(self, group: dict[str, Any]) -> dict[int, float]:
        """``{id(param): lr factor}`` for the layers of a noise-adaptive group: every factor is 1
        until every parameter of the group that has stepped has a noise estimate. The factors
        change only when an estimate does, so they are computed once per measurement and reused
        (the noise EMAs are read from the device then, not at every step)."""
        settings = (tuple(map(id, group["params"])), group["noise_rule"], group["noise_alpha"],
                    group["noise_eps"], group["noise_beta"])
        cached = self._factor_cache.get(id(group))
        if cached is not None and cached[0] == settings:
            return cached[1]
        params = [p for p, done in zip(group["params"], self._counts(group["params"], "noise_step")) if done > 0]
        noise_sq = self._noise_sq(group, params)
        if not params or None in noise_sq:
            factors = {id(p): 1.0 for p in params}
        else:
            stds = noise_stds(noise_sq, group["noise_eps"])  # type: ignore[arg-type]
            factors = {id(p): f for p, f in zip(params, self.layer_rule(group, stds))}
        self._factor_cache[id(group)] = (settings, factors)
        return factors

    def layer_rule(self, group: dict[str, Any], stds: list[float]) -> list[float]:
        """The lr factors of a group's layers from their noise standard deviations (in group order):
        the named ``noise_rule`` (with ``noise_alpha`` for ``alpha_sqrt``). Override in a subclass
        for a rule of your own."""
        return layer_factors(stds, group["noise_rule"], group["noise_alpha"])

    def layer_stats(self) -> list[dict[str, Any]]:
        """Per-layer noise estimates and learning rates of the noise-adaptive groups.

        One dict per parameter of every group with ``noise_adaptive``: ``parameter`` (name),
        ``group`` (index), ``role``, ``noise`` (bias-corrected noise standard deviation in the
        layer's dual norm, ``None`` before the first estimate), ``factor`` (the lr factor the next
        step uses) and ``lr`` (the group's current lr times radius, shape factor and ``factor``).
        """
        rows = []
        for gi, group in enumerate(self.param_groups):
            if not self._noise_active(group):
                continue
            factors = self.noise_factors(group)
            noise_sq = self._noise_sq(group, group["params"])
            for pi, (p, h) in enumerate(zip(group["params"], noise_sq)):
                noise = None if h is None else math.sqrt(h)
                factor = factors.get(id(p), 1.0)
                rows.append({"parameter": self._param_name(gi, pi), "group": gi, "role": group["role"],
                             "noise": noise, "factor": factor, "lr": self.effective_lr(group, p) * factor})
        return rows

    def describe_update(self, group: dict[str, Any]) -> str:
        """The state transform of ``group`` in words (plus the noise-adaptive rates), for ``explain``."""
        transform = group["transform"]
        if transform in ("adam", "diffgrad"):
            text = f"{'adamw' if transform == 'adam' else 'diffgrad'}(betas={tuple(group['betas'])})"
        elif transform == "lion":
            text = f"lion(betas={tuple(group['betas'])})"
        else:
            text = f"momentum({group['momentum']}{', nesterov' if group['nesterov'] else ''})"
        if self._noise_active(group):
            rule = group["noise_rule"]
            if rule == "alpha_sqrt":
                rule += f"(alpha={group['noise_alpha']:g})"
            every = f", every {group['noise_every']} steps" if group["noise_every"] != 1 else ""
            text += f" + noise({group['noise_source']}, {rule}, beta={group['noise_beta']}{every})"
        if group["constraint"] is not None:
            units = "" if group["constraint_units"] == "spectral" else f", {group['constraint_units']}"
            text += f" + {group['constraint']}({group['constraint_bound']:g}{units})"
        return text

    def _apply(self, group: dict[str, Any], params: list[Tensor], directions: list[Tensor], steps: list[float]) -> None:
        shrink = 1 - float(group["lr"]) * group["weight_decay"]
        if self._topology is not None:
            params = [local(p) for p in params]
        for p, d, s in zip(params, directions, steps):
            if p.dtype in _LOW_PRECISION:
                w = p.float()
                w.mul_(shrink).add_(d, alpha=-s)
                p.copy_(w)
            else:
                if shrink != 1.0:
                    p.mul_(shrink)
                p.add_(d, alpha=-s)

    # -- initialization ------------------------------------------------------------------------
    @torch.no_grad()
    def init_params_(self, roles: Iterable[str] = ("hidden", "conv", "embedding", "head"),
                     generator: torch.Generator | None = None) -> None:
        """Re-initialize parameters of the given roles on their geometry's sphere of radius
        ``radius * shape_scale`` (Scion's init rules: orthogonal for spectral, normalized
        columns/rows, +-1 for sign). Needed before training with the constrained variant.

        Distributed, each rank draws the whole tensor and keeps its shard, so every rank must use
        the same ``generator`` seed (or the same global RNG state)."""
        wanted = set(roles)
        for group in self.param_groups:
            if group["role"] not in wanted:
                continue
            geom = self.geometry(group)
            for p in group["params"]:
                scale = group["radius"] * geom.shape_scale(p.shape)
                if self._topology is None or not is_dtensor(p):
                    geom.init_(p, scale=scale, generator=generator)
                    continue
                whole = torch.empty(p.shape, dtype=p.dtype, device=local(p).device)
                geom.init_(whole, scale=scale, generator=generator)
                local(p).copy_(self._topology.local_part(p, whole))
