r"""Certified Lipschitz bounds (l2 in, l2 out) by semidefinite programming: LipSDP.

Source: Fazlyab, Robey, Hassani, Morari, Pappas, "Efficient and Accurate Estimation of Lipschitz
Constants for Deep Neural Networks", NeurIPS 2019, arXiv 1906.04893 (LipSDP-Neuron, LipSDP-Layer).
The MaxMin / GroupSort constraints follow the idea of Pauli, Havens, Araujo, Garg, Khorrami,
Allgower, Hu, "Novel Quadratic Constraints for Extending LipSDP beyond Slope-Restricted
Activations", ICLR 2024, arXiv 2401.14033 (sum preservation); the form used here is derived below.

**Network.** ``f(x) = W_l phi_l(W_{l-1} ... phi_1(W_0 x))`` (biases do not change a Lipschitz
constant). Hidden layer ``k`` has ``n_k`` neurons, ``N = n_1 + ... + n_l``. The activation of
layer ``k`` is either *slope-restricted* in ``[a_k, b_k]``: every secant slope lies in the interval,
``a_k <= (phi(u) - phi(v)) / (u - v) <= b_k`` entrywise (ReLU, tanh ``[0, 1]``; sigmoid ``[0, 1/4]``;
LeakyReLU(s) ``[min(s, 1), max(s, 1)]``; GELU ``[1 - g, g]`` with ``g = gelu_max_slope()``), or
a *GroupSort* of group size ``m`` (MaxMin is ``m = 2``): each block of ``m`` consecutive entries is
sorted.

**Quadratic constraints.** For two inputs, write ``dz = z - z'`` (pre-activation) and
``dx = phi(z) - phi(z')``. A slope-restricted neuron satisfies ``(dx_i - a dz_i)(b dz_i - dx_i) >= 0``;
with multipliers ``lam_i >= 0`` the sum is ``q(dz, dx) = [dz; dx]^T P [dz; dx] >= 0`` with
``P = [[-2 a b T, (a + b) T], [(a + b) T, -2 T]]`` (the factor 2 only rescales ``T``). A GroupSort
block ``j`` (entries ``G_j``) is 1-Lipschitz (sorting is a nonexpansive map of ``R^m``) and keeps the
sum: ``lam_j (||dz_{G_j}||^2 - ||dx_{G_j}||^2) >= 0`` for ``lam_j >= 0`` (``P_zz = diag(lam)``,
``P_zx = 0``, ``P_xx = -diag(lam)`` on the block) and ``1^T dx_{G_j} = 1^T dz_{G_j}``. The equality is
imposed exactly: the LMI is restricted to the increments that obey it (below). That is equivalent to
adding every lossless term ``(1^T dx_{G_j} - 1^T dz_{G_j}) * (any linear form)`` (Finsler's lemma), so
it contains the sum-preservation multipliers of arXiv 2401.14033.

**LMI.** With ``xi = [dx_0; dx_1; ...; dx_l]`` (``dx_0`` the input increment, size ``n_0 + N``) and
``dz_k = W_{k-1} dx_{k-1}``, define the symmetric block-tridiagonal matrix ``F(rho, T)`` by::

    xi^T F xi = sum_k q_k(W_{k-1} dx_{k-1}, dx_k) + ||W_l dx_l||^2 - rho ||dx_0||^2

i.e. block ``(k-1, k-1)`` gets ``W_{k-1}^T P_zz W_{k-1}``, block ``(k-1, k)`` gets
``W_{k-1}^T P_zx``, block ``(k, k)`` gets ``P_xx``, block ``(0, 0)`` gets ``-rho I`` and block
``(l, l)`` gets ``W_l^T W_l``. This is the paper's ``[A; B]^T Q(T) [A; B] - M(rho) <= 0``.
If ``F <= 0`` then on real increments ``||df||^2 - rho ||dx_0||^2 <= -sum_k q_k <= 0``, so
``L <= sqrt(rho)``. With GroupSort layers the increments lie in the subspace ``xi = N eta``,
``eta = [dx_0; u_1; ...; u_l]``: ``u_k = dx_k`` for a slope-restricted layer, and for a GroupSort
layer ``dx_k = B_k u_k + S_k W_{k-1} dx_{k-1}`` (``B_k``: orthonormal basis of the vectors summing to
0 on every block, ``u_k = B_k^T dx_k``; ``S_k``: the block-mean projection); the LMI is then
``N^T F N <= 0``. ``lipsdp`` minimizes ``rho`` subject to it. Forms: ``"neuron"``: ``T = diag(lam)``
(one ``lam`` per neuron, or per GroupSort block); ``"layer"``: ``T = lam_k I`` per layer. Neuron is
at least as tight as layer (layer's feasible set is a subset).

**Exact reductions before solving** (they do not change the optimum): each ``W_k`` is divided by
``s_k = ||W_k||_2`` and the bound multiplied by ``prod s_k`` (the SDP's value is homogeneous: the
congruence ``diag(d_k I)`` with ``d_k = prod_{j<k} s_j`` maps one LMI onto the other, ``lam``
absorbing ``d_k^2``); ``W_0`` is replaced by ``W_0 V`` with ``V`` its right singular vectors when
``n_0 > n_1`` (the network depends on ``x`` only through ``V^T x``).

**Certificate check (solver tolerance).** The solver's ``rho`` may be slightly infeasible. The
multipliers ``lam`` are clipped at 0 (so the constraints stay valid) and the LMI matrix (``F``, or
``N^T F N``) is rebuilt in float64 numpy. With ``mu_hat`` its largest eigenvalue
(``numpy.linalg.eigvalsh``) and ``tau = 8 (n + 4) eps ||F_abs||_F`` (``n = n_0 + N``; ``F_abs``: the
matrix assembled from absolute values, and ``|N|``; a standard bound on the rounding of the assembly
and of the eigenvalue), the matrix is ``<= mu I`` with ``mu = max(0, mu_hat + tau)``. On real
increments ``||u_k|| <= ||dx_k|| <= c_k ||dx_0||``, ``c_k`` the product of the (normalized) weight
norms and largest slopes up to layer ``k``, so ``||df||^2 <= (rho + mu C) ||dx_0||^2`` with
``C = 1 + sum_k c_k^2``: the certified value is ``sqrt(rho + mu C)`` (no change when the solver's
point is feasible, ``mu = 0``). Finally ``16 (l + 1) n_max eps`` times the product bound is added (a
first-order bound on the rounding of the normalization, of the input reduction and of ``N``) and
the result rounded up. LipSDP-Network (couplings between neurons) is not implemented.

**dtype.** Weights are taken as float64 numpy arrays (torch tensors are detached, moved to the CPU
and cast); the result is a Python float.
"""
from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .bounds import gelu_max_slope, lipschitz_bound

__all__ = ["lipsdp", "certify", "extract_network", "jacobian_lower_bound", "LipSDPResult", "Network",
           "GroupSort", "MaxMin", "DEFAULT_MAX_NEURONS"]

#: Default limit on the number of hidden neurons (a 200-neuron neuron-form SDP takes about 10 s with CVXOPT).
DEFAULT_MAX_NEURONS = 200
_CLARABEL_ROWS = 80  # Clarabel's time grew about like rows^6 here (measured): SCS beyond this
_FORMS = ("neuron", "layer")
_SUPPORTED = "Linear, ReLU, Tanh, Sigmoid, GELU, LeakyReLU, Identity, GroupSort, MaxMin (in nn.Sequential)"
_EPS = float(np.finfo(np.float64).eps)


class GroupSort(nn.Module):
    """Sorts each block of ``group_size`` consecutive entries of the last dimension (descending).
    1-Lipschitz in l2; certified by :func:`lipsdp` through the GroupSort constraints (module doc)."""

    def __init__(self, group_size: int = 2):
        super().__init__()
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
            raise ValueError(f"Invalid group_size value: {group_size!r}; expected an int >= 2")
        self.group_size = group_size

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % self.group_size:
            raise ValueError(f"GroupSort: last dimension {x.shape[-1]} is not a multiple of "
                             f"group_size={self.group_size}")
        return x.unflatten(-1, (-1, self.group_size)).sort(dim=-1, descending=True).values.flatten(-2)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}"


class MaxMin(GroupSort):
    """``(x_1, x_2, x_3, x_4, ...) -> (max(x_1, x_2), min(x_1, x_2), max(x_3, x_4), ...)``: GroupSort(2)."""

    def __init__(self):
        super().__init__(2)

    def extra_repr(self) -> str:
        return ""


@dataclass(frozen=True)
class LipSDPResult:
    """A LipSDP certificate: ``bound`` is a certified upper bound of the l2 Lipschitz constant.

    ``solver_bound`` is ``sqrt(rho)`` as the solver returned it (may be slightly below ``bound``; see
    the module doc), ``max_eigenvalue`` the largest eigenvalue of the normalized LMI at the solver's
    point, ``neurons`` the hidden neuron count ``N``, ``seconds`` the wall time of the solve."""
    bound: float
    form: str
    status: str
    solver: str
    seconds: float
    neurons: int
    solver_bound: float
    max_eigenvalue: float


@dataclass(frozen=True)
class Network:
    """A feedforward network for :func:`lipsdp`: ``weights`` ``W_0..W_l`` (float64, shape (out, in)),
    per hidden layer ``alpha``, ``beta`` (slope bounds) and ``groups`` (``None`` or a GroupSort size)."""
    weights: tuple
    alpha: tuple
    beta: tuple
    groups: tuple


def _per_layer(value: Any, l: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != l:
            raise ValueError(f"lipsdp: {name} has {len(value)} entries; expected one per hidden layer ({l})")
        return list(value)
    return [value] * l


def _slopes(layer: int, a: Any, b: Any) -> tuple[float, float]:
    a, b = float(a), float(b)
    if not (math.isfinite(a) and math.isfinite(b) and a <= b):
        raise ValueError(f"lipsdp: invalid slope bounds [{a}, {b}] for hidden layer {layer}; "
                         f"expected finite alpha <= beta")
    return a, b


def _blocks(ws, layers, rho, mult, diag, absolute=False):
    """The LMI ``F`` as an (l+1) x (l+1) grid of blocks (module doc); ``mult[k]`` holds layer k's
    multipliers ``lam`` as a cvxpy expression or a numpy array."""
    l = len(layers)
    dims = [ws[0].shape[1]] + [w.shape[0] for w in ws[:-1]]
    grid = [[np.zeros((dims[i], dims[j])) for j in range(l + 1)] for i in range(l + 1)]
    fix = np.abs if absolute else (lambda m: m)
    grid[0][0] = grid[0][0] + (rho if absolute else -rho) * np.eye(dims[0])
    for k, ((a, b, g), m) in enumerate(zip(layers, mult), start=1):
        n = dims[k]
        if not m.ndim:  # layer form: one scalar
            lam = m * np.ones(n)
        else:  # neuron form: one per neuron, or per GroupSort block (repeated over its entries)
            lam = m if g is None else np.kron(np.eye(n // g), np.ones((g, 1))) @ m
        if g is None:
            pzz, pzx, pxx = diag(lam * (-2 * a * b)), diag(lam * (a + b)), diag(lam * -2.0)
        else:
            pzz, pzx, pxx = diag(lam), np.zeros((n, n)), -diag(lam)
        w = fix(ws[k - 1])
        pzz, pzx, pxx = fix(pzz), fix(pzx), fix(pxx)
        grid[k - 1][k - 1] = grid[k - 1][k - 1] + w.T @ pzz @ w
        grid[k - 1][k] = grid[k - 1][k] + w.T @ pzx
        grid[k][k - 1] = grid[k][k - 1] + pzx.T @ w
        grid[k][k] = grid[k][k] + pxx
    wl = fix(ws[l])
    grid[l][l] = grid[l][l] + wl.T @ wl
    return grid


def _subspace(ws, layers) -> np.ndarray | None:
    """``N`` with ``xi = N eta`` (module doc), or None without GroupSort layers."""
    if all(g is None for _, _, g in layers):
        return None
    dims = [ws[0].shape[1]] + [w.shape[0] for w in ws[:-1]]
    cols = [dims[0]] + [n if g is None else n - n // g for n, (_, _, g) in zip(dims[1:], layers)]
    rows, c0 = [np.eye(dims[0], sum(cols))], dims[0]  # rows[k]: dx_k as a function of eta
    for k, (n, (_, _, g)) in enumerate(zip(dims[1:], layers), start=1):
        block = np.zeros((n, sum(cols)))
        if g is None:
            block[:, c0:c0 + n] = np.eye(n)
        else:
            first = np.eye(g)
            first[:, 0] = 1.0
            basis = np.linalg.qr(first)[0][:, 1:]  # orthonormal, orthogonal to the first column 1
            block[:, c0:c0 + cols[k]] = np.kron(np.eye(n // g), basis)
            block += np.kron(np.eye(n // g), np.full((g, g), 1.0 / g)) @ ws[k - 1] @ rows[k - 1]
        rows.append(block)
        c0 += cols[k]
    return np.vstack(rows)


def lipsdp(weights: Sequence[Any], alpha: Any = 0.0, beta: Any = 1.0, form: str = "neuron", solver: str | None = None,
           max_neurons: int = DEFAULT_MAX_NEURONS, groups: Sequence[int | None] | None = None,
           verbose: bool = False, solver_options: dict | None = None) -> LipSDPResult:
    """The LipSDP certificate of ``x -> W_l phi(W_{l-1} ... phi(W_0 x))`` (module doc for the LMI).

    Args:
        weights: ``W_0, ..., W_l`` (arrays or tensors of shape (out, in)); ``l`` hidden layers.
        alpha, beta: slope bounds, one pair for all hidden layers or a sequence per layer.
        form: ``"neuron"`` (one multiplier per neuron) or ``"layer"`` (one per layer).
        solver: a cvxpy solver name. Default: CVXOPT when installed (interior point, accurate, cost
            about cubic in the neuron count); else CLARABEL for LMIs of at most 80 rows (accurate, but
            its cost grows steeply, about like rows^6); else SCS (first order, about 1e-4 relative accuracy, which the
            certificate check turns into a slightly larger bound).
        max_neurons: refuse networks with more hidden neurons (``ValueError``).
        groups: per hidden layer ``None`` (slope-restricted) or a GroupSort group size (2 for MaxMin);
            that layer's ``alpha``/``beta`` are then unused.
        verbose, solver_options: passed to ``cvxpy.Problem.solve``.

    Raises ``ValueError`` (shapes, slopes, size limit), ``ImportError`` (no cvxpy),
    ``RuntimeError`` (the solver failed or reported a status other than optimal).
    """
    if form not in _FORMS:
        raise ValueError(f"lipsdp: unknown form {form!r}; expected one of: {', '.join(_FORMS)}")
    ws = [np.asarray(w.detach().cpu().to(torch.float64) if isinstance(w, Tensor) else w, dtype=np.float64)
          for w in weights]
    if not ws or any(w.ndim != 2 for w in ws):
        raise ValueError("lipsdp: weights must be a non-empty sequence of 2-d matrices (out, in)")
    for k in range(1, len(ws)):
        if ws[k].shape[1] != ws[k - 1].shape[0]:
            raise ValueError(f"lipsdp: weights[{k}] has {ws[k].shape[1]} inputs but weights[{k - 1}] has "
                             f"{ws[k - 1].shape[0]} outputs")
    if not all(np.isfinite(w).all() for w in ws):
        raise ValueError("lipsdp: weights contain non-finite values")
    l = len(ws) - 1
    gs = _per_layer(None, l, "groups") if groups is None else _per_layer(list(groups), l, "groups")
    layers = []
    for k, (a, b, g) in enumerate(zip(_per_layer(alpha, l, "alpha"), _per_layer(beta, l, "beta"), gs), start=1):
        if g is not None:
            if isinstance(g, bool) or not isinstance(g, int) or g < 2 or ws[k - 1].shape[0] % g:
                raise ValueError(f"lipsdp: invalid group size {g!r} for hidden layer {k} "
                                 f"of width {ws[k - 1].shape[0]}")
            layers.append((0.0, 0.0, g))
        else:
            layers.append((*_slopes(k, a, b), None))
    neurons = sum(w.shape[0] for w in ws[:-1])
    rows = min(ws[0].shape) + neurons
    if neurons > max_neurons:
        raise ValueError(f"lipsdp: the network has {neurons} hidden neurons, more than max_neurons={max_neurons}; "
                         f"pass max_neurons={neurons} (or more) to solve it anyway (the LMI has {rows} rows "
                         f"and its cost grows about like the cube of the neuron count)")
    try:
        import cvxpy as cp
    except ImportError as e:
        raise ImportError("lipsdp needs cvxpy, which is not installed: pip install 'steepest[sdp]'") from e
    if solver is None:
        installed = cp.installed_solvers()
        solver = ("CVXOPT" if "CVXOPT" in installed else
                  "CLARABEL" if "CLARABEL" in installed and rows <= _CLARABEL_ROWS else "SCS")
    slope = [1.0 if g is not None else max(abs(a), abs(b)) for a, b, g in layers]
    scales = [float(np.linalg.norm(w, 2)) for w in ws]
    product = math.prod(scales) * math.prod(slope)
    if product == 0.0:
        return LipSDPResult(0.0, form, "trivial", "none", 0.0, neurons, 0.0, 0.0)
    ws = [w / s for w, s in zip(ws, scales)]
    if ws[0].shape[1] > ws[0].shape[0]:  # keep the row space of W_0 only (exact)
        ws[0] = ws[0] @ np.linalg.svd(ws[0], full_matrices=False)[2].T

    rho = cp.Variable(nonneg=True)
    mult = [cp.Variable((w.shape[0] // (g or 1),) if form == "neuron" else (), nonneg=True)
            for (_, _, g), w in zip(layers, ws)]
    N = _subspace(ws, layers)
    F = cp.bmat(_blocks(ws, layers, rho, mult, cp.diag))
    if N is not None:
        F = N.T @ F @ N
    problem = cp.Problem(cp.Minimize(rho), [0.5 * (F + F.T) << 0])
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():  # "optimal_inaccurate" is handled by the certificate check
            warnings.filterwarnings("ignore", message="Solution may be inaccurate")
            problem.solve(solver=solver, verbose=verbose, **(solver_options or {}))
    except cp.error.SolverError as e:
        raise RuntimeError(f"lipsdp: the solver {solver} failed: {e}") from e
    seconds = time.perf_counter() - start
    status = str(problem.status)
    if status not in ("optimal", "optimal_inaccurate") or rho.value is None:
        raise RuntimeError(f"lipsdp: the solver {solver} returned status {status!r}; no certificate")

    vals = [np.maximum(np.asarray(m.value, dtype=np.float64), 0.0) for m in mult]
    rho_s = max(float(rho.value), 0.0)
    Fn = np.block(_blocks(ws, layers, rho_s, vals, np.diag))
    Fa = np.block(_blocks(ws, layers, rho_s, vals, np.diag, absolute=True))
    n_full = Fn.shape[0]
    if N is not None:
        Fn, Fa = N.T @ Fn @ N, np.abs(N).T @ Fa @ np.abs(N)
    Fn = 0.5 * (Fn + Fn.T)
    mu_hat = float(np.linalg.eigvalsh(Fn)[-1])
    tau = 8.0 * (n_full + 4) * _EPS * float(np.linalg.norm(Fa))
    c, C = 1.0, 1.0
    for k in range(l):
        c *= float(np.linalg.norm(ws[k], 2)) * slope[k] * (1 + 1e-12)
        C += c * c
    rho_c = rho_s + C * max(0.0, mu_hat + tau)
    scale = math.prod(scales)
    n_max = max(max(w.shape) for w in ws)
    bound = math.sqrt(rho_c) * scale + 16.0 * (l + 1) * n_max * _EPS * product
    return LipSDPResult(math.nextafter(bound, math.inf), form, status, solver, seconds, neurons,
                        math.sqrt(rho_s) * scale, mu_hat)


_SLOPES = {nn.ReLU: (0.0, 1.0), nn.Tanh: (0.0, 1.0), nn.Sigmoid: (0.0, 0.25)}


def _activation(m: nn.Module) -> tuple[float, float, int | None] | None:
    """(alpha, beta, group) of a supported activation; None for Identity; TypeError otherwise."""
    if isinstance(m, nn.Identity):
        return None
    if type(m) in _SLOPES:
        return (*_SLOPES[type(m)], None)
    if isinstance(m, nn.GELU):
        g = gelu_max_slope(m.approximate)  # slope(x) + slope(-x) = 1 for both forms: min = 1 - max
        return 1.0 - g - 1e-12, g + 1e-12, None
    if isinstance(m, nn.LeakyReLU):
        s = float(m.negative_slope)
        return min(s, 1.0), max(s, 1.0), None
    if isinstance(m, GroupSort):
        return 0.0, 0.0, m.group_size
    raise TypeError(f"certify: unsupported module {type(m).__name__}; supported: {_SUPPORTED}")


def _flatten(m: nn.Module) -> list[nn.Module]:
    if isinstance(m, nn.Sequential):
        return [x for child in m for x in _flatten(child)]
    return [m]


def extract_network(model: nn.Module) -> Network:
    """The :class:`Network` of an ``nn.Sequential`` of ``nn.Linear`` and supported activations.

    Consecutive linear maps (also across ``Identity``) are multiplied; an activation directly after
    another, first or last gets an identity matrix on its side (all exact)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"certify: expected an nn.Module, got {type(model).__name__}")
    items: list = []  # matrices (numpy) and activation specs (tuples)
    for m in _flatten(model):
        if isinstance(m, nn.Linear):
            w = m.weight.detach().cpu().to(torch.float64).numpy()
            items.append(w @ items.pop() if items and isinstance(items[-1], np.ndarray) else w)
        else:
            spec = _activation(m)
            if spec is not None:
                items.append(spec)
    if not any(isinstance(x, np.ndarray) for x in items):
        raise ValueError("certify: the model has no nn.Linear, so its input size is unknown")
    out: list = []
    width = next(x for x in items if isinstance(x, np.ndarray)).shape[1]
    for x in items:
        if isinstance(x, np.ndarray):
            out.append(x)
            width = x.shape[0]
        else:
            if not out or not isinstance(out[-1], np.ndarray):
                out.append(np.eye(width))
            out.append(x)
    if not isinstance(out[-1], np.ndarray):
        out.append(np.eye(width))
    acts = out[1::2]
    return Network(tuple(out[0::2]), tuple(a for a, _, _ in acts), tuple(b for _, b, _ in acts),
                   tuple(g for _, _, g in acts))


def certify(model: nn.Module, method: str = "lipsdp", form: str = "neuron", **options: Any) -> float:
    """A certified upper bound of ``model``'s l2 Lipschitz constant.

    ``method="lipsdp"``: :func:`lipsdp` on :func:`extract_network` (``options`` go to
    :func:`lipsdp`); ``method="product"``: :func:`steepest.lipschitz.lipschitz_bound` (the product of
    the layers' bounds; ``form`` and ``options`` unused). Use :func:`lipsdp` for the diagnostics."""
    if method == "product":
        return lipschitz_bound(model)
    if method != "lipsdp":
        raise ValueError(f"certify: unknown method {method!r}; expected one of: lipsdp, product")
    net = extract_network(model)
    return lipsdp(net.weights, net.alpha, net.beta, form=form, groups=net.groups, **options).bound


def jacobian_lower_bound(model: nn.Module, dim: int, restarts: int = 16, steps: int = 50, lr: float = 0.05,
                         scale: float = 1.0, seed: int = 0) -> float:
    """A lower bound of ``model``'s l2 Lipschitz constant: gradient ascent on ``||J(x)||_2`` (input
    Jacobian, float64) from ``restarts`` points ``x ~ N(0, scale^2 I)``; at each final point the
    secant ratio ``||f(x + h v) - f(x - h v)|| / (2 h)`` along the top right singular vector ``v``
    (a true lower bound, unlike a Jacobian at a kink). For piecewise-linear nets the gradient is
    zero almost everywhere, so only the restarts search."""
    gen = torch.Generator().manual_seed(seed)
    model64 = copy.deepcopy(model).to(torch.float64)
    x = (scale * torch.randn(restarts, dim, generator=gen, dtype=torch.float64)).requires_grad_(True)
    jac = torch.func.vmap(torch.func.jacrev(model64))
    opt = torch.optim.Adam([x], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        (-torch.linalg.matrix_norm(jac(x), ord=2).sum()).backward()
        opt.step()
    with torch.no_grad():
        x = x.detach()
        v = torch.linalg.svd(jac(x)).Vh[:, 0, :]
        h = 1e-6 * (1.0 + x.norm(dim=1, keepdim=True))
        ratio = (model64(x + h * v) - model64(x - h * v)).norm(dim=1) / (2 * h.squeeze(1))
        return float(ratio.max())
