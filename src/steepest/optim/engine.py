"""The engine: one ``torch.optim.Optimizer`` that runs the four stages of a steepest-descent update.

For every parameter ``W`` with gradient ``g`` in a group, one step is

    (1) state transform    D = T(state, g)                      momentum (EMA, Nesterov), Lion's two betas,
                                                                Adam moments, diffGrad's friction
    (2) direction          O = geometry.lmo(D)                  polar factor, sign, column/row/RMS/Frobenius
                                                                normalization
    (3) step size          O <- A(O)  (per-entry factor, optional: NorMuon's neuron normalization)
                           s = lr * radius * geometry.shape_scale(shape(W))   (times a preset's factor)
    (4) decay and apply    W <- (1 - lr * weight_decay) W - s O
                           W <- W + sqrt(2 * lr * langevin_temperature) * xi   (Langevin, optional)

The stages run on a group's tensors together (on the CPU, an elementwise group runs each large
tensor alone: ``_parts``): stage 1 is the group's :class:`~steepest.optim.transforms.Transform`
(the table ``transforms.TRANSFORMS``; per parameter, except M-FAC's window, which spans the group),
stage 2 runs ``lmo_many`` so same-shape matrices are orthogonalized in one batched call, and stage 3
is two methods (``_scale_entries`` for per-entry factors, ``_step_sizes`` for one scalar per
parameter) so that group-level rules (noise-adaptive layerwise rates, AuON's brake) can see every
layer of the group before any layer moves. ``steepest.optim.reference`` is the same update for one
parameter in plain code, the readable definition the conformance suite checks every preset against.

Where each part lives: the stages and the step loop here; the stage-1 transforms in
``transforms.py``; the geometries (stage 2) in ``steepest.geometry``; the checks before anything
moves in ``guards.py``; the constraint projection in ``constraint_stage.py``; the noise-adaptive
rates in ``noise_rates.py`` (math in ``noise.py``); state loading and old layouts in
``state_io.py``; group-key validation in ``validation.py``; the apply of stage 4 and how a group
splits into parts in ``apply_stage.py``. Weight decay uses the unadjusted
``lr``, as torch.optim.Muon, Moonlight and Dion do; with ``weight_decay = 1`` stage 4 is Scion's
constrained (conditional-gradient) blend ``W <- (1 - lr) W - lr * radius * shape * O``, which keeps
``||W|| <= radius * shape`` in the geometry's norm.

Langevin dynamics (``langevin_temperature`` T > 0): after stage 4's step and before the constraint's
projection, ``sqrt(2 * lr * T) * xi`` (``langevin.py``, ``docs/averaging.md``).

Every hyperparameter is a flat key of the parameter group (strings for names), so param groups stay
plain data: ``state_dict`` / ``load_state_dict`` round-trip exactly, ``torch.load(weights_only=True)``
works, and LR schedulers drive ``group["lr"]`` of every group, fallback groups included.

Group keys and their defaults: ``group_keys.py`` (``ENGINE_DEFAULTS``); presets may add keys of
their own (``PRESET_KEYS``), which are carried the same way.

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
from typing import Any, Callable, Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..compiled import resolve_compile
from ..distributed import is_sharded, local, resolve_topology
from ..geometry import Geometry, make_geometry
from .initialization import init_groups_
from .apply_stage import LOW_PRECISION, apply_steps, stage_parts
from .langevin import LangevinNoise
from .constraint_stage import ConstraintStage
from ..constraints.registry import takes_bound
from .guards import collect_work, finite_or_skip
from .group_keys import ENGINE_DEFAULTS, GEOMETRY_KEYS, plain_keys, split_by_role
from .noise_rates import NoiseRates, NoiseRatesMethods, describe_noise, noise_active
from .state_io import restore_saved_state
from .transforms import TRANSFORMS, ElementwiseTransform, Transform, zeros_state
from .checks import ON_NONFINITE, check_choice, check_compile
from .validation import check_group, check_group_params, check_langevin_keys

class GeometryOptimizer(NoiseRatesMethods, Optimizer):
    """Steepest descent under a geometry chosen per parameter group (see the module docstring).

    Args:
        params: tensors, ``(name, tensor)`` pairs, or dicts of param groups (torch.optim style).
        on_nonfinite: ``"raise"`` (default) or ``"skip"`` when a gradient holds NaN or Inf.
        distributed_mesh: ``None`` (one process), a ``ProcessGroup`` (DDP) or a 1-D ``DeviceMesh``
            (FSDP2); see ``steepest.distributed``.
        compile: ``"auto"`` (default: eager on every device, as measured in ``steepest.compiled``),
            ``True`` (always compile; on CPU this needs a C++ compiler) or ``False``.
        **defaults: values for any group key listed in the module docstring.

    A preset subclasses this and sets :attr:`recipes` in its constructor: the group keys each
    role gets (copies, pickles and ``state_dict`` carry them). A preset with hyperparameters of its
    own lists them with their defaults in ``PRESET_KEYS`` and validates them in
    :meth:`_validate_group`.
    """

    #: Group keys a preset adds to the engine's, with their defaults.
    PRESET_KEYS: dict[str, Any] = {}
    #: True where :meth:`_step_sizes` needs every direction of the group at once (AuON's brake), so
    #: the group's stages always run together (:meth:`_parts`).
    GROUP_STEP_SIZES: bool = False

    #: the ``compile`` setting (an instance attribute; this class default serves optimizers pickled
    #: before the setting existed)
    compile: bool | str = "auto"

    #: ``{role: group keys}`` of the preset (``"*"``: every role not listed); set by constructors
    recipes: dict[str, dict[str, Any]] = {}

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
        self._init_components()
        merged = dict(ENGINE_DEFAULTS)
        merged.update(self.PRESET_KEYS)
        merged.update(defaults)
        super().__init__(params, merged)

    def _init_components(self) -> None:
        """The caches and components that are rebuilt, never saved (pickling drops them)."""
        self._geometries: dict[tuple, Geometry] = {}
        self._constraints = ConstraintStage()
        self._noise = NoiseRates(self)
        self._langevin = LangevinNoise()

    # -- groups ------------------------------------------------------------------------------
    def role_settings(self, role: str) -> dict[str, Any]:
        """Group keys the preset gives to parameters of ``role``: its :attr:`recipes` entry."""
        return dict(self.recipes.get(role, self.recipes.get("*", {})))

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; a group without ``role`` is split by tensor shape into hidden/conv/vector
        groups, each completed with the preset's recipe for its role, then validated."""
        group = dict(param_group)
        parts = split_by_role(group.pop("params"), group)
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
                plain_keys(self.param_groups[-1])
                self._validate_group(self.param_groups[-1])
        except (TypeError, ValueError):
            del self.param_groups[start:]  # all or nothing: no split part of a rejected group stays
            raise
        for group in self.param_groups[start:]:
            for p in group["params"]:
                if p.requires_grad:
                    self._ensure_state(group, p)

    def _validate_group(self, group: dict[str, Any]) -> None:
        check_group(group, self.transform)
        check_group_params(group, len(self.param_groups) - 1, self.geometry(group), self.constraint(group),
                           self._topology)

    def geometry(self, group: dict[str, Any]) -> Geometry:
        """The (cached) geometry object a group's flat keys describe."""
        key = tuple(map(group.get, GEOMETRY_KEYS))
        geom = self._geometries.get(key)
        if geom is None:
            geom = self._geometries[key] = make_geometry(group)
        return geom

    def transform(self, group: dict[str, Any]) -> Transform:
        """The stage-1 transform of ``group`` (``transforms.TRANSFORMS[group["transform"]]``)."""
        return TRANSFORMS[group["transform"]]

    def constraint(self, group: dict[str, Any]):
        """The (cached) stage-4 constraint of ``group`` (``None`` without one)."""
        return self._constraints.get(group)

    def effective_lr(self, group: dict[str, Any], p: Tensor) -> float:
        """Step size of stage 3 for ``p`` at the group's current lr: ``lr * radius * shape_scale``."""
        return float(group["lr"]) * group["radius"] * self.geometry(group).shape_scale(p.shape)

    # -- state --------------------------------------------------------------------------------
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
        and the host-side counters stay on the CPU, so continuing after a reload is bit-identical
        on any device; state saved by earlier versions is converted (``state_io.upgrade_state``)."""
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        super().load_state_dict(state_dict)
        if "nonfinite_skips" in state_dict:
            self.nonfinite_skips = int(state_dict["nonfinite_skips"])
        restore_saved_state(self, saved_groups, saved_state)

    #: Instance attributes that are settings, not tensors: torch's ``Optimizer.__getstate__`` keeps
    #: only defaults, state and param_groups, so these are carried through pickling and deepcopy.
    _persistent_attrs: tuple[str, ...] = ("on_nonfinite", "nonfinite_skips", "compile", "recipes")

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update({name: getattr(self, name) for name in self._persistent_attrs})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # load_state_dict calls this too (and keeps the topology); a process group does not pickle,
        # so an unpickled or deep-copied optimizer steps one process
        self._topology = getattr(self, "_topology", None)
        self._init_components()
        for group in self.param_groups:
            for key, value in {**ENGINE_DEFAULTS, **self.PRESET_KEYS}.items():
                group.setdefault(key, value)

    @staticmethod
    def state_dtype(p: Tensor) -> torch.dtype:
        """Dtype of ``p``'s optimizer state: float32 for bfloat16/float16 parameters, else ``p.dtype``."""
        return torch.float32 if p.dtype in LOW_PRECISION else p.dtype

    def _zeros_state(self, p: Tensor) -> Tensor:
        return zeros_state(p, self.state_dtype(p))

    def _ensure_state(self, group: dict[str, Any], p: Tensor) -> None:
        """Create the state ``p`` needs under ``group``'s settings (its missing keys only); called
        when the group is added and at the start of every step of the group, so settings changed
        later get their state."""
        state = self.state[p]
        self.transform(group).init_state(group, state, p, self.state_dtype(p))
        if noise_active(group):
            self._noise.ensure_state(group, p, state)
        if group["langevin_temperature"]:
            self._langevin.ensure_state(state)

    def _state_view(self, p: Tensor) -> dict[str, Any]:
        """``p``'s state with the local tensors of DTensor entries (they share storage, so in-place
        updates reach the state); the state itself on one process."""
        state = self.state[p]
        if self._topology is None:
            return state
        return {key: local(value) for key, value in state.items()}

    def _working_grad(self, group: dict[str, Any], p: Tensor, grad: Tensor) -> Tensor:
        """The gradient in the state dtype, negated for ``maximize`` (a new tensor whenever it differs)."""
        dtype = self.state_dtype(p)
        g = grad.to(dtype) if grad.dtype != dtype else grad
        return -g if group["maximize"] else g

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
        self._noise.set_second_grads(second_grads)
        try:
            self._step_groups()
        finally:
            self._noise.second_grads = {}
        return loss

    def _step_groups(self) -> None:
        work = collect_work(self)
        go_on, peaks = finite_or_skip(self, work)
        if not go_on:
            return
        for gi, group, params, _ in work:
            if noise_active(group):
                self._noise.check_second_grads(gi, group, params)
        for _, group, params, grads in work:
            for p in params:
                self._ensure_state(group, p)  # settings may have changed since the group was added
            if noise_active(group):
                self._noise.measure(group, params, grads)                       # stage 3's inputs
        self._noise.prefetch([group for _, group, _, _ in work if noise_active(group)])
        for _, group, params, grads in work:
            self._update_group(group, params, grads, [peaks.get(id(p)) for p in params] if peaks else None)

    def _param_name(self, gi: int, pi: int) -> str:
        names = self.param_groups[gi].get("param_names")
        if names:
            return names[pi]
        return f"param {pi} of group {gi} (shape {tuple(self.param_groups[gi]['params'][pi].shape)})"

    def _update_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                      peaks: list[float | None] | None = None) -> None:
        """Stages 1-4 for one group (its state exists and its noise is measured: :meth:`_step_groups`),
        in parts (:meth:`_parts`)."""
        peaks = peaks or [None] * len(params)
        for part in self._parts(group, grads):
            self._run_stages(group, [params[i] for i in part], [grads[i] for i in part], [peaks[i] for i in part])

    def _parts(self, group: dict[str, Any], grads: list[Tensor]) -> list[list[int]]:
        """The index sets that run stages 1-4 together (:func:`apply_stage.stage_parts`). A transform
        that returns its state buffers (Signum's momentum) makes no temporaries to free, and there
        the parts' Python would cost more."""
        transform = self.transform(group)
        per_tensor = (self._topology is None and not self.GROUP_STEP_SIZES
                      and isinstance(transform, ElementwiseTransform) and transform.fresh_signals(group)
                      and not self.geometry(group).batched_lmo)
        return stage_parts(grads, per_tensor=per_tensor, compile=bool(grads) and self.compiles(grads[0]))

    def _run_stages(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                    peaks: list[float | None]) -> None:
        signals = self._transforms(group, params, grads, peaks)                 # stage 1
        directions = self._lmo(group, params, signals)                          # stage 2
        directions = self._scale_entries(group, params, directions)             # stage 3
        steps = self._step_sizes(group, params, directions)
        self._apply(group, params, directions, steps)                           # stage 4
        if group["langevin_temperature"]:
            self._langevin.add(self, group, params)
        if group["constraint"] is not None:
            self._constraints.project(group, params, steps, self.geometry(group), self._topology)

    def _transforms(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                    peaks: list[float | None] | None = None) -> list[Tensor]:
        """Stage 1 for a whole group: the group's transform turns each gradient into its signal
        (``peaks``: the gradients' largest magnitudes, from the non-finite check)."""
        work = [self._working_grad(group, p, g) for p, g in zip(params, grads)]
        whole_sums = (lambda partial: self._whole_sums(params, partial)) if self._sharded(params) else None
        compiles = bool(work) and self.compiles(work[0])
        return self.transform(group).apply_group(group, [self._state_view(p) for p in params], work, compiles,
                                                 whole_sums, peaks)

    def _lmo(self, group: dict[str, Any], params: list[Tensor], signals: list[Tensor]) -> list[Tensor]:
        """Stage 2: the geometry's LMO of every signal; distributed, a whole-matrix LMO runs once per
        matrix on its owner rank, a row-wise one on the local shards."""
        geometry = self.geometry(group)
        if self._topology is None and not geometry.batched_lmo and self.transform(group).fresh_signals(group):
            return geometry.lmo_many_(signals)  # the signals are temporaries: overwrite them
        lmo_many = geometry.lmo_many
        if self.compile is not False:
            lmo_many = functools.partial(geometry.lmo_many, compiles=self.compiles)
        if self._topology is None or geometry.rowwise_lmo:
            return lmo_many(signals)
        return self._topology.map_whole(params, signals, lmo_many)

    def _scale_entries(self, group: dict[str, Any], params: list[Tensor], directions: list[Tensor]) -> list[Tensor]:
        """Stage 3, per-entry part: rescale directions entrywise (NorMuon's neuron normalization).
        The engine applies no factor; the directions may be modified in place (they are fresh)."""
        return directions

    def _step_sizes(self, group: dict[str, Any], params: list[Tensor], directions: list[Tensor]) -> list[float]:
        """Stage 3, scalar part: one step size per parameter (override for group-level adaptive rules);
        with ``noise_adaptive`` times the layer's noise factor."""
        base = float(group["lr"]) * group["radius"]  # read once: a Tensor lr is one host read per group
        shape_scale = self.geometry(group).shape_scale
        steps = [base * shape_scale(p.shape) for p in params]
        if noise_active(group):
            factors = self.noise_factors(group)
            steps = [s * factors.get(id(p), 1.0) for s, p in zip(steps, params)]
        return steps

    def _apply(self, group: dict[str, Any], params: list[Tensor], directions: list[Tensor], steps: list[float]) -> None:
        """Stage 4: decoupled decay with the unadjusted lr, then the step (:func:`apply_stage.apply_steps`)."""
        if self._topology is not None:
            params = [local(p) for p in params]
        apply_steps(params, directions, steps, 1 - float(group["lr"]) * group["weight_decay"])

    def set_langevin(self, temperature: float, seed: int | None = None) -> None:
        """Set ``langevin_temperature`` (and ``langevin_seed`` when given) on every group, validated
        first (all or nothing); ``temperature=0`` turns the noise off."""
        for group in self.param_groups:
            check_langevin_keys({"langevin_temperature": temperature,
                                 "langevin_seed": group["langevin_seed"] if seed is None else seed})
        for group in self.param_groups:
            group["langevin_temperature"] = temperature
            if seed is not None:
                group["langevin_seed"] = seed

    def compiles(self, tensor: Tensor) -> bool:
        """Whether the kernels run compiled for ``tensor`` under this optimizer's ``compile`` setting."""
        return resolve_compile(self.compile, tensor.device)

    # -- distribution helpers ------------------------------------------------------------------
    def _sharded(self, params: list[Tensor]) -> bool:
        """Whether any of ``params`` is a shard (then whole-tensor reductions need the other ranks)."""
        return self._topology is not None and any(is_sharded(p) for p in params)

    def _whole_sums(self, params: list[Tensor], partial: Tensor) -> Tensor:
        """Sums over whole tensors from ``partial[i]``, sums over ``params[i]``'s local entries
        (the identity on one process)."""
        return partial if self._topology is None else self._topology.shard_sums(params, partial)

    def lmo_placement(self, group: dict[str, Any]) -> list[str]:
        """Where stage 2 runs for each parameter of ``group`` when all of them step: ``"this
        process"``, ``"rank k"`` (the owner of a whole-matrix LMO), ``"local shards"`` or ``"every
        rank"`` (row-wise LMOs of sharded or replicated parameters)."""
        if self._topology is None:
            return ["this process"] * len(group["params"])
        return self._topology.lmo_placement(group["params"], self.geometry(group).rowwise_lmo)

    def describe_update(self, group: dict[str, Any]) -> str:
        """The state transform of ``group`` in words (plus the noise-adaptive rates and the
        constraint), for ``explain``."""
        text = self.transform(group).describe(group) + describe_noise(group)
        if group["langevin_temperature"]:
            text += f" + Langevin noise (T={group['langevin_temperature']:g}, seed {group['langevin_seed']})"
        if group["constraint"] is not None:
            units = "" if group["constraint_units"] == "spectral" else f", {group['constraint_units']}"
            bound = f"({group['constraint_bound']:g}{units})" if takes_bound(group["constraint"]) else ""
            text += f" + {group['constraint']}{bound}"
        return text

    # -- initialization ------------------------------------------------------------------------
    def init_params_(self, roles: Iterable[str] = ("hidden", "conv", "embedding", "head"),
                     generator: torch.Generator | None = None) -> None:
        """Re-initialize parameters of the given roles on their geometry's sphere of radius
        ``radius * shape_scale`` (:func:`initialization.init_groups_`: Scion's init rules).
        Needed before training with the constrained variant."""
        init_groups_(self, roles, generator)
