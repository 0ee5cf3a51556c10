r"""Pure kernels of M-FAC's sliding-window empirical Fisher (Frantar, Kurtic, Alistarh, arXiv 2107.03356).

The window holds the last ``m`` gradients of a parameter group as the rows of ``G`` (``m x d``, the
group's gradients flattened and concatenated). Slots that were never written are zero rows. With
the damping ``lambda > 0`` the empirical Fisher of the window is

.. math::
    F = \lambda I + \frac{1}{m} G^\top G = \lambda I + \frac{1}{m}\sum_{i=1}^m g_i g_i^\top

and Woodbury's identity gives its inverse applied to any ``x`` with one ``m x m`` solve:

.. math::
    F^{-1} x = \frac{1}{\lambda}\Big(x - G^\top (m\lambda I_m + K)^{-1} G x\Big), \qquad K = G G^\top .

Derivation: ``F = lambda (I + U U^T)`` with ``U = G^T / sqrt(m lambda)``, and
``(I + U U^T)^{-1} = I - U (I + U^T U)^{-1} U^T``; then ``U (I + U^T U)^{-1} U^T =
G^T (m lambda I + K)^{-1} G``.

The window is stored per parameter tensor (``G = [G_1 | G_2 | ...]``, one ``m x n_p`` block per
parameter), so ``G x = sum_p G_p x_p`` and ``G^T y`` is ``G_p^T y`` block by block; nothing of
length ``d`` is ever concatenated. Each parameter also keeps its partial Gram matrix
``K_p = G_p G_p^T`` in float64 and ``K = sum_p K_p`` is summed in float64.

Costs: inserting a gradient overwrites one row of every ``G_p`` and recomputes row/column ``r`` of
every ``K_p`` with one product ``G_p g_p`` (O(dm) in all); the product ``F^{-1} x`` is O(dm) for
``G x`` and ``G^T y`` plus O(m^3) for the Cholesky factorization of ``m lambda I + K`` (the paper's
dynamic algorithm refactorizes after each insertion too: O(dm + m^3) per insertion, O(dm + m^2) per
product with a cached factor). For the gradient just inserted, ``G g`` is exactly the product the
insertion computed, so a step costs two passes over the window.

Numerics: the products ``G_p x_p`` are formed in the window's dtype with ``x_p`` first multiplied by
the power of two that brings its largest entry into ``[0.5, 1)`` (exact, and undone in float64), so
they neither overflow nor underflow for any gradient the window can hold: in float32, ``|g| ~ 1e19``
gave ``G g`` and ``K`` entries of inf and NaN parameters before. The Grams, their sum ``K`` and the
``m x m`` solve are float64. The window itself is in the parameters' state
dtype (float32 for float32/bfloat16 parameters); since the inserted gradient lies in the window's
span, ``x - G^T y`` cancels to a fraction of about ``m lambda / ||g||^2`` of ``x``, so a float32
window gives ``F^{-1} g`` to a relative accuracy of roughly ``eps_32 ||g||^2 / (m lambda)`` (the
reference implementation, also float32, shares this).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ..distributed import local, rows_stack_like
from ..numerics import max_abs, power_of_two_scale, scales_for_peaks, wide_float
from .checks import check_count, check_positive
from .transforms import TRANSFORMS, Transform

#: Window size of M-FAC's default recipe (see :class:`steepest.MFAC` for why not the paper's 1024).
DEFAULT_NGRADS = 32


def block_products(windows: list[Tensor], xs: list[Tensor]) -> list[Tensor]:
    """``G_p x_p`` for every block, as float64 vectors of length ``m``, without overflow or
    underflow in the windows' dtype: each ``x_p`` (flattened, in its window's dtype) is multiplied
    by the power of two ``s_p`` that brings its largest entry into ``[0.5, 1)`` and the float64
    product divided by ``s_p`` (both exact; the scales of all blocks come from one ``frexp``). In
    the normal range each equals ``torch.mv(G_p, x_p).double()`` bit for bit."""
    xs = [x.reshape(-1).to(w.dtype) for w, x in zip(windows, xs)]
    if not xs:
        return []
    first = xs[0]
    if all(x.dtype == first.dtype and x.device == first.device for x in xs):
        scales = scales_for_peaks(torch.stack([max_abs(x) for x in xs]))
        inverses = 1 / scales.double()
        pairs = zip(scales.unbind(), inverses.tolist() if first.device.type == "cpu" else inverses.unbind())
    else:  # blocks of several dtypes or devices: one scale each, in its own dtype's range
        pairs = ((s, 1 / s.double()) for s in map(power_of_two_scale, xs))
    return [torch.mv(w, x * s).double() * inv for w, x, (s, inv) in zip(windows, xs, pairs)]


def window_products(windows: list[Tensor], xs: list[Tensor]) -> Tensor:
    """``G x = sum_p G_p x_p`` as a float64 vector of length ``m`` (``xs`` flattened, in the windows' dtypes)."""
    if not windows:
        raise ValueError("window_products needs at least one window")
    return _sum_blocks(block_products(windows, xs))


def _sum_blocks(parts: list[Tensor]) -> Tensor:
    """``sum_p parts[p]`` on the first part's device (a new tensor)."""
    total = parts[0].clone()
    for part in parts[1:]:
        total += part.to(total.device)
    return total


def insert_gradient(windows: list[Tensor], grams: list[Tensor], grads: list[Tensor], row: int,
                    whole_sums: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Write ``grads`` (one tensor per parameter) into ring slot ``row`` of every window, in place.

    Updates row and column ``row`` of each partial Gram ``K_p = G_p G_p^T`` (float64) and returns
    ``G g = sum_p G_p g_p`` (float64, length ``m``) of the window after the insertion, which is
    also the right-hand side ``F^{-1} g`` needs.

    Distributed, ``windows`` and ``grads`` hold shards of the parameters (the columns of ``G_p``
    split across ranks) and ``whole_sums`` adds the ranks' products ``G_p g_p`` up (one call with
    a ``(parameters, m)`` float64 tensor), so every rank gets the whole Grams.
    """
    if not windows:
        raise ValueError("insert_gradient needs at least one window")
    for w, g in zip(windows, grads):
        w[row].copy_(g.reshape(-1))
    parts = block_products(windows, [w[row] for w in windows])
    if whole_sums is not None:
        summed = whole_sums(torch.stack([part.to(parts[0].device) for part in parts]))
        parts = [s.to(device=part.device) for s, part in zip(summed.unbind(0), parts)]
    for k, part in zip(grams, parts):
        k[row].copy_(part)
        k[:, row].copy_(part)
    return _sum_blocks(parts)


def solve_window_system(gram: Tensor, rhs: Tensor, damp: float) -> Tensor:
    """``y = (m * damp * I + K)^{-1} rhs`` in float64, with ``m = gram.shape[0]``.

    The matrix is symmetric positive definite in exact arithmetic (``K`` is a Gram matrix), so it is
    solved by Cholesky. A ``K`` accumulated in float32 can be indefinite by rounding when ``||K||``
    is about ``1/eps_32`` times ``m * damp`` (large gradients, or nearly repeated ones, as full-batch
    training gives); its rounding error is at most about ``m * eps_32 * max|K|``, so the diagonal
    shift is then raised to that size, which makes the matrix positive definite again. This changes
    the result only where the damped system was numerically singular.
    """
    m = gram.shape[0]
    k = gram.double()
    eye = torch.eye(m, dtype=torch.float64, device=gram.device)
    b = rhs.double().reshape(m, 1).to(k.device)
    factor, info = torch.linalg.cholesky_ex(k + eye * (m * float(damp)))
    if int(info) == 0:  # the usual case: one host read
        return torch.cholesky_solve(b, factor).reshape(m)
    floor = 4.0 * m * torch.finfo(torch.float32).eps * float(k.abs().max())
    factor, info = torch.linalg.cholesky_ex(k + eye * max(m * float(damp), floor))
    if int(info) != 0:  # a non-finite Gram: let the solve raise or propagate it
        return torch.linalg.solve(k + eye * (m * float(damp)), b).reshape(m)
    return torch.cholesky_solve(b, factor).reshape(m)


def inverse_fisher_apply(windows: list[Tensor], xs: list[Tensor], coefficients: Tensor,
                         damp: float | Tensor) -> list[Tensor]:
    """``(x_p - G_p^T y) / damp`` for every block: the blocks of ``F^{-1} x`` given ``y`` from
    :func:`solve_window_system` (new tensors, flattened, in the windows' dtypes). ``damp`` may be a
    0-d tensor (no host read)."""
    out = []
    for w, x in zip(windows, xs):
        y = coefficients.to(device=w.device, dtype=w.dtype)
        d = damp.to(device=w.device, dtype=w.dtype) if isinstance(damp, Tensor) else float(damp)
        out.append(x.reshape(-1).to(w.dtype).sub(torch.mv(w.t(), y)).div_(d))
    return out


def sum_grams(grams: list[Tensor]) -> Tensor:
    """``K = sum_p K_p`` in float64 on the first Gram's device (a new tensor)."""
    gram = grams[0].double()
    gram = gram.clone() if gram is grams[0] else gram
    for k in grams[1:]:
        gram += k.to(device=gram.device, dtype=torch.float64)
    return gram


def inverse_fisher_product(windows: list[Tensor], gram: Tensor, xs: list[Tensor], damp: float) -> list[Tensor]:
    """``F^{-1} x`` for the window ``G = [G_1 | G_2 | ...]`` with total Gram ``K = gram`` (blocks of
    ``x`` in ``xs``; returns flattened blocks)."""
    y = solve_window_system(gram, window_products(windows, xs), damp)
    return inverse_fisher_apply(windows, xs, y, damp)


def check_ngrads(ngrads: Any) -> None:
    check_count("ngrads", ngrads)


class FisherWindow(Transform):
    """M-FAC's stage 1 over a whole group: insert the group's gradient into its window and return
    the blocks of ``F^{-1} g``, through the ``momentum`` transform when ``momentum > 0``.

    State per parameter: ``step`` (gradients inserted), ``grad_window`` (``m`` flattened
    gradients; sharded like the parameter's rows for a DTensor) and ``gram`` (``m x m``, float64),
    plus the momentum buffer. A window that holds no gradient yet follows a changed ``ngrads``.
    Group keys: ``ngrads`` and ``damp``; the group's ``transform`` must be ``momentum``."""

    name = "fisher_window"
    state_keys = ("step", "grad_window", "gram", "momentum_buffer")
    inner = TRANSFORMS["momentum"]

    def init_state(self, group: dict, state: dict, p: Tensor, dtype: torch.dtype) -> None:
        self.inner.init_state(group, state, p, dtype)
        m = group["ngrads"]
        if "grad_window" not in state or (float(state["step"]) == 0 and state["grad_window"].shape[0] != m):
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["grad_window"] = rows_stack_like(p, m, dtype)
            device = local(p).device
            state["gram"] = torch.zeros(m, m, dtype=wide_float(device), device=device)

    def apply_group(self, group: dict, states: list[dict], grads: list[Tensor], compile: bool,
                    whole_sums=None, peaks: list[float] | None = None) -> list[Tensor]:
        damp = group["damp"]
        windows, rhs, gram = self.insert(group, states, grads, whole_sums)
        coefficients = solve_window_system(gram, rhs, damp)
        directions = inverse_fisher_apply(windows, grads, coefficients, damp)
        return [self.inner.apply(group, state, u.view(g.shape), compile)
                for state, g, u in zip(states, grads, directions)]

    @staticmethod
    def insert(group: dict, states: list[dict], grads: list[Tensor],
               whole_sums=None) -> tuple[list[Tensor], Tensor, Tensor]:
        """Write ``grads`` into the group's window (the next ring slot) and count the step; returns
        the ``(m, numel)`` window views (a sharded parameter's window holds the columns of its local
        rows), ``G g`` after the insertion and the total Gram ``K`` (float64, a new tensor)."""
        m = group["ngrads"]
        windows = [state["grad_window"].reshape(m, g.numel()) for state, g in zip(states, grads)]
        grams = [state["gram"] for state in states]
        rhs = insert_gradient(windows, grams, grads, int(states[0]["step"]) % m, whole_sums)
        for state in states:
            state["step"] += 1
        return windows, rhs, sum_grams(grams)

    def describe(self, group: dict) -> str:
        text = f"mfac(m={group['ngrads']}, damp={group['damp']:g}"
        if group["momentum"] > 0:
            text += f", momentum={group['momentum']}{', nesterov' if group['nesterov'] else ''}"
        return text + ")"

    def validate(self, group: dict) -> None:
        TRANSFORMS[group["transform"]].validate(group)  # the keys of the named transform come first
        if group["transform"] != "momentum":
            raise ValueError(f"MFAC supports only transform 'momentum' (an EMA of the preconditioned "
                             f"direction); got {group['transform']!r}")
        check_ngrads(group["ngrads"])
        check_positive("damp", group["damp"])


#: the one window transform (it keeps no settings of its own: they are group keys)
FISHER_WINDOW = FisherWindow()
