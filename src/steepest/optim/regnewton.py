"""Gradient-regularized Newton steps with an adaptive regularization constant (arXiv 2506.13710)."""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from .checks import check_choice, check_nonnegative, check_positive
from .docs import fill_doc
from .engine import GeometryOptimizer
from .fisher_window import DEFAULT_NGRADS, FisherWindow, check_ngrads, insert_gradient
from .guards import collect_work, finite_or_skip
from .transforms import TRANSFORMS

HESSIANS = ("fisher", "hvp")
SEARCHES = ("none", "loss")
#: the paper's ``eps`` in ``lambda = ||g|| / (gamma + eps)``
GAMMA_EPS = 1e-8
#: the default ``lr``: the minimax-regret choice of ``steepest bench defaults`` (closure-free Fisher step)
#: over lr 0.1, 0.3, 1, 3 (docs/benchmarks.md, "The defaults study")
DEFAULT_LR = 0.3


def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Invalid type for {name}: expected an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"Invalid {name}: {value}; expected an integer >= 1")


def group_norm(grads: list[Tensor]) -> Tensor:
    """``||g||_2`` of a group's gradients (all tensors together), a float64 0-d tensor."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.double()) for g in grads]))


def regularization(gnorm: Tensor, gamma: float) -> Tensor:
    """The paper's ``lambda = ||g|| / (gamma + 1e-8)``."""
    return gnorm / (gamma + GAMMA_EPS)


def window_newton_directions(windows: list[Tensor], gram: Tensor, rhs: Tensor, grads: list[Tensor],
                             lam: Tensor) -> list[Tensor]:
    """``(H + lambda I)^{-1} g`` for ``H = (1/m) G^T G`` (the window ``G``, Gram ``K = G G^T = gram``,
    ``rhs = G g``) by Woodbury: ``(g - G^T (m lambda I + K)^{-1} G g) / lambda``; flattened blocks.

    ``lambda`` stays a tensor (no host read): it is floored at the window dtype's smallest normal number
    (a zero gradient then gives exactly zero directions) and the shift of the ``m x m`` system at
    ``4 m eps max|K|`` (``eps`` of the window's dtype), which only changes numerically singular
    systems."""
    m = gram.shape[0]
    k = gram.double()
    lam = lam.to(device=k.device, dtype=torch.float64).clamp_min(torch.finfo(windows[0].dtype).tiny)
    floor = 4.0 * m * torch.finfo(windows[0].dtype).eps * k.abs().amax()
    shift = torch.maximum(m * lam, floor)
    eye = torch.eye(m, dtype=torch.float64, device=k.device)
    factor, _ = torch.linalg.cholesky_ex(k + eye * shift)
    y = torch.cholesky_solve(rhs.double().reshape(m, 1).to(k.device), factor).reshape(m)
    out = []
    for w, g in zip(windows, grads):
        coeff = y.to(device=w.device, dtype=w.dtype)
        out.append((g.reshape(-1).to(w.dtype) - torch.mv(w.t(), coeff)) / lam.to(device=w.device, dtype=w.dtype))
    return out


def conjugate_gradients(matvec: Callable[[list[Tensor]], list[Tensor]], b: list[Tensor], iters: int,
                        tol: float, fallback: Callable[[list[Tensor]], list[Tensor]]) -> list[Tensor]:
    """Solve ``A x = b`` (``A`` symmetric, applied by ``matvec``) by conjugate gradients from
    ``x = 0``, stopping after ``iters`` products or when ``||r|| <= tol ||b||``. If a search
    direction has ``p^T A p <= 0`` (negative curvature of a non-convex loss) the iteration stops
    there; at the first iteration the result is then ``fallback(b)``."""
    x = [torch.zeros_like(t) for t in b]
    r = [t.clone() for t in b]
    p = [t.clone() for t in b]
    rr = sum(float(torch.sum(t.double() * t.double())) for t in r)
    b_norm = math.sqrt(rr)
    if b_norm == 0.0:
        return x
    for it in range(iters):
        ap = matvec(p)
        pap = sum(float(torch.sum(u.double() * v.double())) for u, v in zip(p, ap))
        if not pap > 0.0:
            return fallback(b) if it == 0 else x
        alpha = rr / pap
        for xi, pi, ri, api in zip(x, p, r, ap):
            xi.add_(pi, alpha=alpha)
            ri.sub_(api, alpha=alpha)
        rr_new = sum(float(torch.sum(t.double() * t.double())) for t in r)
        if math.sqrt(rr_new) <= tol * b_norm:
            break
        beta = rr_new / rr
        for pi, ri in zip(p, r):
            pi.mul_(beta).add_(ri)
        rr = rr_new
    return x


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
        m = group["ngrads"]
        windows = [state["grad_window"].reshape(m, g.numel()) for state, g in zip(states, grads)]
        grams = [state["gram"] for state in states]
        row = int(states[0]["step"]) % m
        rhs = insert_gradient(windows, grams, grads, row, whole_sums)
        for state in states:
            state["step"] += 1
        gram = sum_grams(grams)
        sq = torch.stack([torch.sum(g.double() * g.double()) for g in grads])
        if whole_sums is not None:
            sq = whole_sums(sq)
        lam = regularization(sq.sum().sqrt(), float(states[0]["gamma"]))
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


def sum_grams(grams: list[Tensor]) -> Tensor:
    """``K = sum_p K_p`` in float64 (a new tensor)."""
    gram = grams[0].double().clone()
    for k in grams[1:]:
        gram += k.to(device=gram.device, dtype=torch.float64)
    return gram


REGULARIZED_WINDOW = RegularizedWindow()


class RegularizedNewton(GeometryOptimizer):
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
    recipes = {"*": {}}

    def __init__(self, params: Iterable[Any], lr: float = DEFAULT_LR, hessian: str = "fisher", search: str = "none",
                 gamma: float = 1.0, gamma_min: float = 1e-9, max_trials: int = 40,
                 ngrads: int = DEFAULT_NGRADS, cg_iters: int = 100, cg_tol: float = 1e-10,
                 momentum: float = 0.0, weight_decay: float = 0.0, *, maximize: bool = False,
                 on_nonfinite: str = "raise", distributed_mesh: Any = None, compile: bool | str = "auto"):
        self.recipes = {"*": {}}
        super().__init__(params, on_nonfinite=on_nonfinite, distributed_mesh=distributed_mesh, compile=compile,
                         lr=lr, momentum=momentum, nesterov=False, weight_decay=weight_decay,
                         transform="momentum", geometry="identity", shape_scale=None, maximize=maximize,
                         hessian=hessian, search=search, gamma=gamma, gamma_min=gamma_min,
                         max_trials=max_trials, ngrads=ngrads, cg_iters=cg_iters, cg_tol=cg_tol)

    # -- groups ------------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; an unlabelled group stays one group (one ``||g||``, one window), role ``""``."""
        group = dict(param_group)
        group.setdefault("role", "")
        super().add_param_group(group)

    def transform(self, group: dict[str, Any]) -> RegularizedWindow:
        """Stage 1 of every group (the no-closure path): the regularized window solve."""
        return REGULARIZED_WINDOW

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        check_choice("hessian", group["hessian"], HESSIANS)
        check_choice("search", group["search"], SEARCHES)
        check_positive("gamma", group["gamma"])
        check_positive("gamma_min", group["gamma_min"])
        _check_count("max_trials", group["max_trials"])
        _check_count("cg_iters", group["cg_iters"])
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
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            self._check_windows()
            super().step(second_grads=second_grads)
            return loss
        if closure is None:
            group = needs[0]
            raise RuntimeError(f"RegularizedNewton with hessian={group['hessian']!r} and search={group['search']!r} "
                               f"needs a closure that re-evaluates the loss: call optimizer.step(closure)")
        return self._closure_step(closure)

    def _check_windows(self) -> None:
        for gi, group in enumerate(self.param_groups):
            if group["hessian"] != "fisher":
                continue
            params = group["params"]
            has_grad = [p.grad is not None for p in params]
            states = [self.state.get(p) or {} for p in params]
            has_window = [float(s["step"]) > 0 if "step" in s else False for s in states]
            if not any(has_grad) or not any(has_window):
                continue
            for pi, (grad, window) in enumerate(zip(has_grad, has_window)):
                if grad != window:
                    raise ValueError(
                        f"RegularizedNewton: parameter {self._param_name(gi, pi)!r} "
                        f"{'has no' if window else 'has a'} gradient at this step, but "
                        f"{'its group window holds it' if window else 'had none at its group first step'} "
                        f"(the window spans every parameter of the group, so the parameters with gradients "
                        f"must be the same at every step); put it in a param group of its own")
            rows = next(s["grad_window"].shape[0] for s, held in zip(states, has_window) if held)
            if rows != group["ngrads"]:
                raise ValueError(f"RegularizedNewton: group {gi} has ngrads={group['ngrads']} but its gradient "
                                 f"window holds {rows} gradients; ngrads cannot change after the group's first step")

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
                m = group["ngrads"]
                windows = [s["grad_window"].reshape(m, g.numel()) for s, g in zip(states, gs)]
                grams = [s["gram"] for s in states]
                whole = (lambda partial, ps=params: self._whole_sums(ps, partial)) if self._sharded(params) else None
                block["rhs"] = insert_gradient(windows, grams, gs, int(states[0]["step"]) % m, whole)
                for s in states:
                    s["step"] += 1
                block["windows"], block["gram"] = windows, sum_grams(grams)
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
                lam_of = [lam for b, lam in zip(blocks, lams) for _ in b["params"]]
                rhs = [g for b in blocks for g in b["grads"]]

                def matvec(vs, lam_of=lam_of):
                    return [h + float(lam) * v for h, v, lam in zip(hessian_product(vs), vs, lam_of)]

                def fallback(bs, lam_of=lam_of):
                    return [v / float(lam) for v, lam in zip(bs, lam_of)]

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
