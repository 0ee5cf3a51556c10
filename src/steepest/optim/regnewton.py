"""Gradient-regularized Newton steps with an adaptive regularization constant (arXiv 2506.13710)."""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from .checks import check_choice, check_count, check_nonnegative, check_positive
from .docs import fill_doc
from .fisher_window import DEFAULT_NGRADS, FisherWindow, check_ngrads
from .guards import collect_work, finite_or_skip
from .newton_solves import conjugate_gradients, group_norm, regularization, window_newton_directions
from .transforms import TRANSFORMS
from .window_optimizer import WindowOptimizer

HESSIANS = ("fisher", "hvp")
SEARCHES = ("none", "loss")
#: the default ``lr``: the minimax-regret choice of ``steepest bench defaults`` (closure-free Fisher step)
#: over lr 0.1, 0.3, 1, 3 (docs/benchmarks.md, "The defaults study")
DEFAULT_LR = 0.3


class RegularizedWindow(FisherWindow):
    """Stage 1 of :class:`RegularizedNewton` without a closure: insert the gradient into the
    group's window (as M-FAC) and return ``(H + lambda I)^{-1} g`` with ``H = (1/m) G^T G`` and
    ``lambda = ||g|| / (gamma + 1e-8)`` (``gamma`` from the state), then the ``momentum`` EMA if
    ``momentum > 0``. State per parameter: M-FAC's window, plus ``gamma`` (a CPU scalar in the state dtype,
    the same in every parameter of the group)."""

    name = "regularized_window"
    state_keys = ("step", "grad_window", "gram", "momentum_buffer", "gamma")

    def init_state(self, group: dict, state: dict, p: Tensor, dtype: torch.dtype) -> None:
        if group["hessian"] == "fisher":
            super().init_state(group, state, p, dtype)
        else:
            self.inner.init_state(group, state, p, dtype)
        if "gamma" not in state:
            state["gamma"] = torch.tensor(float(group["gamma"]), dtype=dtype)  # on the CPU: no device reads

    def apply_group(self, group: dict, states: list[dict], grads: list[Tensor], compile: bool,
                    whole_sums=None, peaks: list[float] | None = None) -> list[Tensor]:
        windows, rhs, gram = self.insert(group, states, grads, whole_sums)
        lam = regularization(group_norm(grads, whole_sums), float(states[0]["gamma"]))
        directions = window_newton_directions(windows, gram, rhs, grads, lam)
        return [self.inner.apply(group, state, u.view(g.shape), compile)
                for state, g, u in zip(states, grads, directions)]

    def describe(self, group: dict) -> str:
        text = f"regnewton({group['hessian']}"
        text += f", m={group['ngrads']}" if group["hessian"] == "fisher" else f", cg={group['cg_iters']}"
        text += f", gamma0={group['gamma']:g}, search={group['search']}"
        if group["momentum"] > 0:
            text += f", momentum={group['momentum']}"
        return text + ")"

    def validate(self, group: dict) -> None:
        TRANSFORMS[group["transform"]].validate(group)
        if group["transform"] != "momentum":
            raise ValueError(f"RegularizedNewton supports only transform 'momentum' (an EMA of the Newton "
                             f"direction); got {group['transform']!r}")
        check_ngrads(group["ngrads"])


REGULARIZED_WINDOW = RegularizedWindow()


class RegularizedNewton(WindowOptimizer):
    __doc__ = fill_doc(r"""Gradient-regularized Newton with an adaptive constant (Semenov, Jaggi, Doikov,
    "Gradient-Normalized Smoothness for Optimization with Approximate Hessians", arXiv 2506.13710,
    Algorithm 1), on an approximate Hessian this library can afford.

    One step from ``x`` with gradient ``g`` and an approximate Hessian ``H`` (symmetric, ``H >= 0``
    for the guarantees):

    .. math::
        \lambda &= \frac{\|g\|_2}{\gamma + 10^{-8}}, \qquad
        \delta = -(H + \lambda I)^{-1} g, \qquad x_+ = (1 - \eta\,\mathrm{wd})\, x + \eta\, \delta \\
        \text{accept if } & f(x) - f(x_+) \ge \frac{\|\nabla f(x_+)\|_2^2}{8 \lambda}:
            \ \gamma \leftarrow \max(2\gamma, \gamma_{\min}); \quad
        \text{else } \gamma \leftarrow \gamma / 2 \text{ and retry}

    at most ``max_trials`` times (the paper's code: 40; after the last failure the last trial point
    is kept). ``gamma`` is the paper's estimate of the gradient-normalized smoothness: since
    ``H >= 0``, ``||delta|| <= ||g|| / lambda = gamma``, so ``gamma`` acts as a trust radius. For a
    Hessian with Lipschitz constant ``L`` the true smoothness satisfies ``gamma >= sqrt(2 ||g|| / L)``,
    so ``lambda <~ sqrt(L ||g|| / 2)``: the classical gradient-regularized Newton step
    ``(H + sqrt(L ||g||) I)^{-1} g`` up to constants, without knowing ``L``. With ``lr = 1`` and
    ``search="loss"`` this is Algorithm 1 with ``B = I`` (constants ``8``, ``2``, ``1/2``,
    ``gamma_0 = 1``, ``gamma_min = 1e-9``, ``eps = 1e-8`` as in the authors' code
    ``epfml/grad-norm-smooth``, ``src/methods.py::grad_norm_smooth``).

    Hessians (``hessian``):

    - ``"fisher"``: M-FAC's sliding-window empirical Fisher ``H = (1/m) G^T G`` (the last ``m``
      gradients as the rows of ``G``; see :class:`steepest.MFAC`), solved by Woodbury with one
      ``m x m`` Cholesky per trial: ``(H + lambda I)^{-1} g = (g - G^T (m lambda I + G G^T)^{-1} G g)
      / lambda``. The gradient of the step's start point is inserted once per step. No closure is
      needed for the Hessian.
    - ``"hvp"``: the exact Hessian through Hessian-vector products (double backward of the
      closure's loss), ``(H + lambda I) d = g`` solved by conjugate gradients (``cg_iters``,
      relative residual ``cg_tol``). Costs one backward per CG iteration: for small models. On a
      non-convex loss, CG stops at the first direction of non-positive curvature (at the first
      iteration the step is then ``g / lambda``).

    The search (``search``) needs function values at trial points, so it needs a closure:

    - ``"none"`` (default): no search; ``gamma`` stays at its initial value (the paper's code with
      ``adaptive_search=False``), so the step is the regularized Newton step of trust radius
      ``lr * gamma``. With ``hessian="fisher"`` this works with a plain ``step()``, as every
      optimizer of this library (and a closure, if given, is only evaluated for its loss).
    - ``"loss"``: the paper's search; ``step(closure)`` is required (``RuntimeError`` without one,
      as ``torch.optim.LBFGS``). Each trial costs one closure evaluation.

    Closures: with ``hessian="fisher"`` the closure is torch's usual one (zero the gradients,
    ``loss.backward()``, return the loss); with ``hessian="hvp"`` it returns the loss **without**
    calling ``backward()``: the optimizer differentiates it (twice) itself and leaves the gradient at
    the step's start point in ``p.grad``. ``step(closure)`` returns the loss at the start point.
    Every param group must then have the same ``hessian``, ``search`` and ``maximize``.

    This library's reading (not in the paper): ``||g||`` and ``gamma`` are per param group (the
    regularization is block-diagonal, ``lambda_i I`` on group ``i``; with one group, which is what
    ``RegularizedNewton(model.parameters())`` builds, it is the paper's); with several groups the
    test's right side is ``sum_i ||grad_i f(x_+)||^2 / (8 lambda_i)`` and every group's ``gamma``
    doubles or halves together. ``lr`` scales the step so that LR schedules work; weight decay is decoupled; ``momentum`` (an EMA of the direction, as M-FAC's)
    is allowed only on the closure-free path (``hessian="fisher"``, ``search="none"``). The
    minibatch use (a closure on a fixed batch) is outside the paper's deterministic theory.

    Defaults: ``lr=0.3``, the minimax-regret choice of ``steepest bench defaults`` over lr 0.1, 0.3, 1
    and 3 on its six tasks for the default closure-free step (0.3 was best on every scored task; lr 1
    trailed by up to 0.35 nats on the GPTs and 30 % in test loss on digits-cnn). The paper's
    Algorithm 1 is ``lr=1`` with ``search="loss"``: pass ``lr=1`` for it.
    ``gamma=1``, ``gamma_min=1e-9``, ``max_trials=40`` are the paper's code's;
    ``ngrads=32`` is M-FAC's default here; ``cg_iters=100``, ``cg_tol=1e-10`` (this library's:
    accurate solves on small models, the paper solves exactly by Cholesky).

    State per parameter: ``gamma`` (a CPU scalar in the state dtype, the group's value; doubling and
    halving are exact) and, for
    ``hessian="fisher"``, M-FAC's ``step``, ``grad_window`` and ``gram`` (``m * numel`` floats).

    Args:
        {PARAMS_DOC}
        lr: step scale ``eta`` (1: the paper's step, with ``search="loss"``).
        hessian: ``"fisher"`` or ``"hvp"``.
        search: ``"none"`` or ``"loss"`` (the paper's adaptive search; needs ``step(closure)``).
        gamma: initial ``gamma_0 > 0``.
        gamma_min: floor of ``gamma`` after an accepted trial.
        max_trials: trials per step of the search (int >= 1).
        ngrads: window size ``m`` of ``hessian="fisher"`` (int >= 1).
        cg_iters: CG iterations of ``hessian="hvp"`` (int >= 1).
        cg_tol: CG's relative residual tolerance (>= 0).
        momentum: EMA coefficient of the direction (no-closure path only; 0 by default).
        weight_decay: decoupled weight decay ``wd``.
        {COMMON_DOC}
    """)

    PRESET_KEYS = {"hessian": "fisher", "search": "none", "gamma": 1.0, "gamma_min": 1e-9, "max_trials": 40,
                   "ngrads": DEFAULT_NGRADS, "cg_iters": 100, "cg_tol": 1e-10}

    def __init__(self, params: Iterable[Any], lr: float = DEFAULT_LR, hessian: str = "fisher", search: str = "none",
                 gamma: float = 1.0, gamma_min: float = 1e-9, max_trials: int = 40,
                 ngrads: int = DEFAULT_NGRADS, cg_iters: int = 100, cg_tol: float = 1e-10,
                 momentum: float = 0.0, weight_decay: float = 0.0, *, maximize: bool = False,
                 langevin_temperature: float = 0.0, langevin_seed: int = 0,
                 on_nonfinite: str = "raise", distributed_mesh: Any = None, compile: bool | str = "auto"):
        self.recipes = {"*": {}}
        super().__init__(params, on_nonfinite=on_nonfinite, distributed_mesh=distributed_mesh, compile=compile,
                         lr=lr, momentum=momentum, nesterov=False, weight_decay=weight_decay,
                         transform="momentum", geometry="identity", shape_scale=None, maximize=maximize,
                         langevin_temperature=langevin_temperature, langevin_seed=langevin_seed,
                         hessian=hessian, search=search, gamma=gamma, gamma_min=gamma_min,
                         max_trials=max_trials, ngrads=ngrads, cg_iters=cg_iters, cg_tol=cg_tol)

    # -- groups (an unlabelled group stays one group: one ``||g||``, one window) ---------------
    def _windowed(self, group: dict[str, Any]) -> bool:
        return group["hessian"] == "fisher"

    def transform(self, group: dict[str, Any]) -> RegularizedWindow:
        """Stage 1 of every group (the no-closure path): the regularized window solve."""
        return REGULARIZED_WINDOW

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        check_choice("hessian", group["hessian"], HESSIANS)
        check_choice("search", group["search"], SEARCHES)
        check_positive("gamma", group["gamma"])
        check_positive("gamma_min", group["gamma_min"])
        check_count("max_trials", group["max_trials"])
        check_count("cg_iters", group["cg_iters"])
        check_nonnegative("cg_tol", group["cg_tol"])
        if group["momentum"] > 0 and (group["search"] == "loss" or group["hessian"] == "hvp"):
            raise ValueError(f"RegularizedNewton: momentum must be 0 with search='loss' or hessian='hvp' "
                             f"(got {group['momentum']})")
        if self._needs_closure(group) and (group["langevin_temperature"] > 0 or group["constraint"] is not None):
            # the closure path writes the accepted trial point itself, without the engine's stage 4
            raise ValueError("RegularizedNewton: langevin_temperature and constraint need search='none' and "
                             "hessian='fisher' (the closure path applies the accepted trial point as it is)")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The engine's loader; ``gamma`` then goes back to the CPU (torch moves state to the
        parameter's device), so that reading it costs no device synchronization."""
        super().load_state_dict(state_dict)
        for state in self.state.values():
            gamma = state.get("gamma")
            if isinstance(gamma, Tensor) and gamma.device.type != "cpu":
                state["gamma"] = gamma.to(device="cpu", copy=True)

    @staticmethod
    def _needs_closure(group: dict[str, Any]) -> bool:
        return group["search"] == "loss" or group["hessian"] == "hvp"

    # -- the step ------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *, second_grads: Any = None) -> Any:
        """One regularized Newton step (see the class docstring).

        Args:
            closure: re-evaluates the model and returns the loss; required by ``search="loss"``
                and ``hessian="hvp"`` (with ``hvp`` it must not call ``backward()``).
            second_grads: as in :meth:`GeometryOptimizer.step` (noise-adaptive groups only; the
                closure-free path).

        Raises:
            RuntimeError: a group needs a closure and none was given.
            ValueError: a window's parameters changed (as :class:`steepest.MFAC`), or the groups
                disagree on ``hessian``, ``search`` or ``maximize`` on the closure path.
        """
        needs = [group for group in self.param_groups if self._needs_closure(group)]
        if not needs:
            return self._window_step(closure, second_grads)
        if closure is None:
            group = needs[0]
            raise RuntimeError(f"RegularizedNewton with hessian={group['hessian']!r} and search={group['search']!r} "
                               f"needs a closure that re-evaluates the loss: call optimizer.step(closure)")
        return self._closure_step(closure)

    def _closure_step(self, closure: Callable[[], Any]) -> Any:
        first = self.param_groups[0]
        for key in ("hessian", "search", "maximize"):
            values = {repr(group[key]) for group in self.param_groups}
            if len(values) > 1:
                raise ValueError(f"RegularizedNewton: with a closure every param group must have the same "
                                 f"{key}; got {', '.join(sorted(values))}")
        hvp, search = first["hessian"] == "hvp", first["search"] == "loss"
        sign = -1.0 if first["maximize"] else 1.0
        trainable = [p for group in self.param_groups for p in group["params"] if p.requires_grad]

        def evaluate(create_graph: bool):
            """(loss, gradients by parameter) at the current point; with hvp the differentiable ones."""
            with torch.enable_grad():
                loss = closure()
                if not hvp:
                    return loss, None
                if not isinstance(loss, Tensor) or not loss.requires_grad:
                    raise RuntimeError("RegularizedNewton(hessian='hvp'): the closure must return the loss as a "
                                       "tensor that requires grad")
                try:
                    grads = torch.autograd.grad(loss, trainable, create_graph=create_graph, allow_unused=True)
                except RuntimeError as err:
                    raise RuntimeError("RegularizedNewton(hessian='hvp') differentiates the closure's loss "
                                       "itself: the closure must return the loss without calling "
                                       f"backward() ({err})") from err
            return loss, dict(zip(trainable, grads))

        loss, graph_grads = evaluate(create_graph=True)
        if hvp:
            for p in trainable:
                g = graph_grads[p]
                p.grad = None if g is None else g.detach().clone()
        self._check_windows()
        work = collect_work(self)
        go_on, _ = finite_or_skip(self, work)
        if not go_on or not work:
            return loss
        f0 = sign * float(loss)
        blocks = []  # per group: params, working grads, start points, gamma, ||g||, solver data
        for _, group, params, grads in work:
            for p in params:
                self._ensure_state(group, p)
            states = [self._state_view(p) for p in params]
            gs = [self._working_grad(group, p, g).clone() for p, g in zip(params, grads)]
            block = {"group": group, "params": params, "grads": gs, "states": states,
                     "x0": [p.detach().clone() for p in params], "gamma": float(states[0]["gamma"]),
                     "gnorm": group_norm(gs)}
            if not hvp:
                whole = (lambda partial, ps=params: self._whole_sums(ps, partial)) if self._sharded(params) else None
                block["windows"], block["rhs"], block["gram"] = REGULARIZED_WINDOW.insert(group, states, gs, whole)
            blocks.append(block)

        if hvp:
            hvp_params = [p for b in blocks for p in b["params"]]
            hvp_grads = [graph_grads[p] for p in hvp_params]

            def hessian_product(vs: list[Tensor]) -> list[Tensor]:
                with torch.enable_grad():
                    hv = torch.autograd.grad(hvp_grads, hvp_params, grad_outputs=vs, retain_graph=True,
                                             allow_unused=True)
                return [torch.zeros_like(v) if h is None else sign * h.detach() for h, v in zip(hv, vs)]

        trials = first["max_trials"] if search else 1
        for trial in range(trials):
            lams = [regularization(b["gnorm"], b["gamma"]) for b in blocks]
            if hvp:
                if trial > 0:  # back to the start point, untracked: the saved graph's tensors hold it
                    for b in blocks:
                        for p, x0 in zip(b["params"], b["x0"]):
                            p.data.copy_(x0)
                lam_of = [float(lam) for b, lam in zip(blocks, lams) for _ in b["params"]]  # read once per trial
                rhs = [g for b in blocks for g in b["grads"]]

                def matvec(vs, lam_of=lam_of):
                    return [h + lam * v for h, v, lam in zip(hessian_product(vs), vs, lam_of)]

                def fallback(bs, lam_of=lam_of):
                    return [v / lam for v, lam in zip(bs, lam_of)]

                solution = conjugate_gradients(matvec, rhs, first["cg_iters"], float(first["cg_tol"]), fallback)
                deltas, i = [], 0
                for b in blocks:
                    deltas.append(solution[i:i + len(b["params"])])
                    i += len(b["params"])
            else:
                deltas = [[d.view(g.shape) for d, g in zip(
                    window_newton_directions(b["windows"], b["gram"], b["rhs"], b["grads"], lam), b["grads"])]
                    for b, lam in zip(blocks, lams)]
            for b, ds in zip(blocks, deltas):
                group = b["group"]
                decay, lr = 1 - float(group["lr"]) * group["weight_decay"], float(group["lr"])
                for p, x0, d in zip(b["params"], b["x0"], ds):
                    # through .data: an in-place write of a tensor saved by the start point's graph
                    # would make the next trial's Hessian-vector products fail
                    p.data.copy_((x0 * decay - lr * d).to(p.dtype))
            if not search:
                break
            new_loss, new_grads = evaluate(create_graph=False)
            f_new = sign * float(new_loss)
            bound = 0.0
            for b, lam in zip(blocks, lams):
                sq = 0.0
                for p in b["params"]:
                    g = new_grads[p] if hvp else p.grad
                    if g is not None:
                        sq += float(torch.sum(g.double() * g.double()))
                bound += sq / (8.0 * float(lam))
            accepted = f0 - f_new >= bound  # NaN never accepts
            for b in blocks:
                b["gamma"] = max(2.0 * b["gamma"], float(first["gamma_min"])) if accepted else 0.5 * b["gamma"]
            if accepted:
                break
        for b in blocks:
            for s in b["states"]:
                s["gamma"].fill_(b["gamma"])
        return loss
