"""Hyper-connections: one residual branch in a residual stream widened to ``n`` parallel streams.

A block's residual state is ``x`` of shape ``[..., n, C]`` (``[B, T, n, C]`` for a sequence model;
any leading dimensions, the stream axis is ``-2``). With ``x_hat = RMSNorm(flatten(x))`` (over all
``n C`` entries of a token, no learned gain) and ``F`` the wrapped branch (attention or MLP)::

    H_pre  = sigmoid(alpha_pre * (x_hat @ phi_pre) + b_pre)            in (0, 1)^n      (read)
    H_post = 2 sigmoid(alpha_post * (x_hat @ phi_post) + b_post)       in (0, 2)^n      (write)
    H_res  = mixer(alpha_res * mat(x_hat @ phi_res) + b_res)           n x n            (mix)
    x'     = H_res x + H_post^T F(H_pre x)       i.e.  x'_i = sum_j H_res[i, j] x_j + H_post[i] F(...)

(Hyper-Connections, Zhu et al., arXiv 2409.19606; the sigmoid gates and the constrained ``H_res``
follow mHC, arXiv 2512.24880.) With ``dynamic=True`` the three are computed per token; with
``dynamic=False`` only the static biases ``b_*`` exist (no ``phi``, no ``alpha``). All ``phi`` are
zero-initialised and every ``alpha`` is ``alpha_init``, so at init only the biases act.

Mixers (``mixer=``), all computed in float32 (float64 for float64 inputs):

* ``"identity"``: ``H_res = I`` (no parameters). Plain hyper-connections without stream mixing.
* ``"birkhoff"``: ``H_res = sinkhorn(logits)``, doubly stochastic (mHC): nonnegative, rows and
  columns sum to 1, spectral norm 1. Sinkhorn runs ``sinkhorn_iters`` sweeps, then (with
  ``sinkhorn_tol``) Newton polishing to that tolerance, with the implicit (fixed-point) backward
  of :func:`steepest.constraints.birkhoff.sinkhorn`. ``b_res`` is 0 on the diagonal and
  ``birkhoff_off_diagonal`` (default -8) elsewhere, which is *not* exactly ``I``: its scaling has
  diagonal ``1 / (1 + (n-1) e^-8)`` (``1 - 1.0e-3`` for ``n = 4``) and off-diagonal entries
  ``~3.4e-4``. The identity is a vertex of the polytope, and Sinkhorn's derivative vanishes
  there like the off-diagonal mass, so the offset trades exactness at init against live
  gradients; -20 gives ``|H_res - I| < 1e-8`` (and gradients ~1e-9).
* ``"spectral_sphere"``: ``H_res = M / max(sigma_1(M), eps)`` with ``M`` the logits and
  ``b_res = I`` (sHC, arXiv 2603.20896): spectral norm exactly 1 (whenever ``sigma_1 >= eps``),
  signed entries allowed; ``sigma_1`` of the tiny matrix exactly (``matrix_norm(ord=2)``,
  differentiable). At init ``H_res = I / 1 = I`` exactly.
* ``"stiefel"``: orthogonal ``H_res`` by the Cayley transform of the skew part of the logits,
  ``A = S - S^T``, ``H_res = (I + A/2)^{-1} (I - A/2)`` (JPmHC, arXiv 2602.18308): ``H^T H = I``,
  ``det H = 1``; ``b_res = 0`` so ``H_res = I`` exactly at init.
* ``"grassmann"``: a rank-``p`` (``p = grassmann_rank``) symmetric contraction,
  ``H_res = I - beta Q`` with ``Q = Y (Y^T Y + eps I)^{-1} Y^T`` for an ``n x p`` matrix ``Y`` of
  logits (the orthogonal projector onto ``span Y``, a point of the Grassmannian ``Gr(p, n)``, as
  ``eps -> 0``; eps keeps it smooth where ``Y`` loses rank) and ``beta = 2 sigmoid(s)`` in
  ``[0, 2]`` from one more logit. Spectrum ``{1, 1 - beta q}`` with ``q in [0, 1)``: inside
  ``[-1, 1]``, so ``||H_res||_2 <= 1``; ``beta = 2`` is (up to eps) the reflection through
  ``span(Y)^perp``. *This is this library's reading of JPmHC's Grassmann variant; the paper's exact
  form was not verified.* ``b_res[:, j] = e_{(layer_index + j) mod n}`` and ``beta`` starts at
  ``grassmann_beta_init`` (default 1e-3), so ``H_res = I - 1e-3 e e^T`` at init, not exactly
  ``I``: ``I`` is an extreme point of the symmetric contractions, every smooth path through it
  inside the set is stationary there, and ``beta = 0`` would leave the mixer without gradient.

Static biases: ``b_pre`` reads 95% from stream ``k = layer_index mod n`` and shares 5% among the
others (``sigmoid(b_pre) = 0.95`` at ``k``, ``0.05 / (n-1)`` elsewhere: summing to 1 for
``n > 1``, so a branch
reading ``n`` identical streams sees exactly one stream, and different layers read different
streams, which breaks the symmetry between streams); ``b_post = 0`` (``H_post = 1``: the branch
output is written to every stream).

Identity at init: with a branch that returns zeros the block maps ``x`` to ``H_res x``, i.e.
exactly ``x`` for ``identity``/``spectral_sphere``/``stiefel`` at init (whatever ``H_pre``,
``H_post``), and ``x`` up to the offsets above for ``birkhoff``/``grassmann``.

``expand(h, n)`` makes the initial state (``n`` copies of the embedding ``h``) and ``reduce(x)`` the
final one, the **sum** over streams (Hyper-Connections' choice): a stack of blocks with zero
branches therefore returns ``n h``, and with the default biases a stack whose streams stay equal
computes ``n`` times a standard pre-norm residual network's output (a following norm layer removes
the factor).

Cost per token: three matmuls with ``x_hat`` (``n C x (2n + n^2)`` FLOPs when dynamic) and the mixer
on an ``n x n`` matrix (Sinkhorn ``O(iters n^2)``; an SVD, an ``n x n`` solve or a ``p x p`` Gram solve, ``O(n^3)``).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from ..constraints.birkhoff import sinkhorn
from ._checks import positive_int

__all__ = ["HyperConnections", "MIXERS"]

MIXERS: tuple[str, ...] = ("identity", "birkhoff", "spectral_sphere", "stiefel", "grassmann")
#: RMSNorm guard, spectral-norm floor and Gram ridge
_RMS_EPS = 1e-6
_SIGMA_EPS = 1e-6
_GRAM_EPS = 1e-6
#: share of the read gate on stream ``layer_index mod n`` at init
_READ_SHARE = 0.95


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


class HyperConnections(nn.Module):
    """Wrap one residual branch in ``n_streams`` residual streams with a constrained mixer.

    Args:
        dim: the model width ``C`` (the last axis of the state).
        n_streams: ``n``, the number of residual streams (the state's axis ``-2``).
        mixer: ``"identity"``, ``"birkhoff"``, ``"spectral_sphere"``, ``"stiefel"`` or
            ``"grassmann"`` (see the module docstring).
        layer_index: the block's index; the read gate favours stream ``layer_index mod n``.
        dynamic: per-token gates and mixer (``True``) or static ones (``False``).
        alpha_init: initial value of the scalar gains ``alpha_pre``, ``alpha_post``, ``alpha_res``.
        sinkhorn_iters: Sinkhorn sweeps of the ``"birkhoff"`` mixer (mHC: 20).
        sinkhorn_tol: then polish until the row and column sums are within this of 1 (``None``:
            exactly ``sinkhorn_iters`` sweeps, no host sync; the implicit gradient assumes
            convergence).
        grassmann_rank: ``p`` of the ``"grassmann"`` mixer, in ``[1, n]``.
        birkhoff_off_diagonal: off-diagonal logit of ``b_res`` for ``"birkhoff"`` (diagonal 0).
        grassmann_beta_init: initial ``beta`` of ``"grassmann"``, in ``(0, 2)``.

    ``forward(x, branch)`` takes the state ``[..., n, C]`` and a callable mapping ``[..., C]`` to
    ``[..., C]``, and returns the new state in ``x``'s dtype. After each call ``last_h_res`` holds
    the ``H_res`` used (detached; ``[..., n, n]`` when dynamic, ``[n, n]`` otherwise).
    """

    #: every parameter is a small mixing gain or bias: ``steepest.for_model`` gives them the
    #: ``vector`` role (elementwise updates), not a hidden matrix's orthogonalized one
    steepest_roles = {name: "vector" for name in (
        "b_pre", "b_post", "b_res", "b_beta", "phi_pre", "phi_post", "phi_res", "alpha_pre", "alpha_post",
        "alpha_res")}

    def __init__(self, dim: int, n_streams: int = 4, mixer: str = "identity", layer_index: int = 0,
                 dynamic: bool = True, alpha_init: float = 0.01, sinkhorn_iters: int = 20,
                 grassmann_rank: int = 1, *, sinkhorn_tol: float | None = 1e-5,
                 birkhoff_off_diagonal: float = -8.0, grassmann_beta_init: float = 1e-3):
        super().__init__()
        dim = positive_int("dim", dim)
        n = positive_int("n_streams", n_streams)
        if mixer not in MIXERS:
            raise ValueError(f"Unknown mixer {mixer!r}; expected one of: {', '.join(MIXERS)}")
        if isinstance(layer_index, bool) or not isinstance(layer_index, int) or layer_index < 0:
            raise ValueError(f"Invalid layer_index: {layer_index!r}; expected an integer >= 0")
        if not isinstance(dynamic, bool):
            raise TypeError(f"dynamic must be a bool, got {type(dynamic).__name__}")
        if not math.isfinite(alpha_init):
            raise ValueError(f"Invalid alpha_init: {alpha_init}; expected a finite number")
        positive_int("sinkhorn_iters", sinkhorn_iters)
        if sinkhorn_tol is not None and not sinkhorn_tol > 0:
            raise ValueError(f"Invalid sinkhorn_tol: {sinkhorn_tol}; expected a positive number or None")
        positive_int("grassmann_rank", grassmann_rank)
        if mixer == "grassmann" and grassmann_rank > n:
            raise ValueError(f"Invalid grassmann_rank: {grassmann_rank}; expected an integer in [1, n_streams={n}]")
        if not 0 < grassmann_beta_init < 2:
            raise ValueError(f"Invalid grassmann_beta_init: {grassmann_beta_init}; expected a number in (0, 2)")
        if not math.isfinite(birkhoff_off_diagonal):
            raise ValueError(f"Invalid birkhoff_off_diagonal: {birkhoff_off_diagonal}; expected a finite number")

        self.dim, self.n_streams, self.mixer = dim, n, mixer
        self.layer_index, self.dynamic = layer_index, dynamic
        self.sinkhorn_iters, self.sinkhorn_tol = sinkhorn_iters, sinkhorn_tol
        self.grassmann_rank = grassmann_rank
        self.last_h_res: Tensor | None = None

        k = layer_index % n
        b_pre = torch.full((n,), _logit((1 - _READ_SHARE) / max(n - 1, 1)))
        b_pre[k] = _logit(_READ_SHARE)
        self.b_pre = nn.Parameter(b_pre)
        self.b_post = nn.Parameter(torch.zeros(n))
        if mixer == "birkhoff":
            b_res = torch.full((n, n), float(birkhoff_off_diagonal))
            b_res.fill_diagonal_(0.0)
        elif mixer == "spectral_sphere":
            b_res = torch.eye(n)
        elif mixer == "stiefel":
            b_res = torch.zeros(n, n)
        elif mixer == "grassmann":
            b_res = torch.zeros(n, grassmann_rank)
            for j in range(grassmann_rank):
                b_res[(k + j) % n, j] = 1.0
            self.b_beta = nn.Parameter(torch.tensor(_logit(grassmann_beta_init / 2)))
        else:
            b_res = None
        self.b_res = None if b_res is None else nn.Parameter(b_res)

        if dynamic:
            features = n * dim
            self.phi_pre = nn.Parameter(torch.zeros(features, n))
            self.phi_post = nn.Parameter(torch.zeros(features, n))
            self.alpha_pre = nn.Parameter(torch.tensor(float(alpha_init)))
            self.alpha_post = nn.Parameter(torch.tensor(float(alpha_init)))
            if mixer != "identity":
                width = n * grassmann_rank + 1 if mixer == "grassmann" else n * n
                self.phi_res = nn.Parameter(torch.zeros(features, width))
                self.alpha_res = nn.Parameter(torch.tensor(float(alpha_init)))

    # -- state helpers ---------------------------------------------------------------------------
    @staticmethod
    def expand(h: Tensor, n: int) -> Tensor:
        """The initial state: ``n`` copies of ``h`` (``[..., C]`` -> ``[..., n, C]``, a new tensor)."""
        n = positive_int("n", n)
        return h.unsqueeze(-2).expand(*h.shape[:-1], n, h.shape[-1]).clone()

    @staticmethod
    def reduce(x: Tensor) -> Tensor:
        """The final output: the **sum** over the streams (``[..., n, C]`` -> ``[..., C]``)."""
        return x.sum(dim=-2)

    # -- the three mappings ----------------------------------------------------------------------
    def mappings(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(H_pre [..., n], H_post [..., n], H_res [..., n, n])`` for the state ``x`` (``None`` for
        the identity mixer); unbatched ``[n]``, ``[n, n]`` when static. Computed in float32
        (float64 for float64 ``x``)."""
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        n = self.n_streams

        def p(t: Tensor) -> Tensor:
            return t.to(work)

        if self.dynamic:
            flat = x.to(work).flatten(-2)
            x_hat = flat * torch.rsqrt(flat.square().mean(-1, keepdim=True) + _RMS_EPS)
            pre = p(self.alpha_pre) * (x_hat @ p(self.phi_pre)) + p(self.b_pre)
            post = p(self.alpha_post) * (x_hat @ p(self.phi_post)) + p(self.b_post)
            raw = p(self.alpha_res) * (x_hat @ p(self.phi_res)) if self.mixer != "identity" else None
        else:
            pre, post, raw = p(self.b_pre), p(self.b_post), None
        h_pre = torch.sigmoid(pre)
        h_post = 2 * torch.sigmoid(post)
        if self.mixer == "identity":
            return h_pre, h_post, None
        if self.mixer == "grassmann":
            rank = self.grassmann_rank
            Y, s = p(self.b_res), p(self.b_beta)
            if raw is not None:
                Y = Y + raw[..., : n * rank].unflatten(-1, (n, rank))
                s = s + raw[..., -1]
            return h_pre, h_post, self._grassmann(Y, s)
        logits = p(self.b_res) if raw is None else raw.unflatten(-1, (n, n)) + p(self.b_res)
        if self.mixer == "birkhoff":
            h_res = sinkhorn(logits, self.sinkhorn_iters, self.sinkhorn_tol)
        elif self.mixer == "spectral_sphere":
            sigma = torch.linalg.matrix_norm(logits, ord=2)
            h_res = logits / sigma.clamp_min(_SIGMA_EPS)[..., None, None]
        else:  # stiefel
            skew = logits - logits.mT
            eye = torch.eye(n, dtype=work, device=logits.device)
            h_res = torch.linalg.solve(eye + skew / 2, eye - skew / 2)
        return h_pre, h_post, h_res

    @staticmethod
    def _grassmann(Y: Tensor, s: Tensor) -> Tensor:
        n, rank = Y.shape[-2], Y.shape[-1]
        eye_p = torch.eye(rank, dtype=Y.dtype, device=Y.device)
        gram = Y.mT @ Y + _GRAM_EPS * eye_p
        Q = Y @ torch.linalg.solve(gram, Y.mT)
        Q = (Q + Q.mT) / 2
        beta = 2 * torch.sigmoid(s)
        eye_n = torch.eye(n, dtype=Y.dtype, device=Y.device)
        return eye_n - beta[..., None, None] * Q

    def forward(self, x: Tensor, branch: Callable[[Tensor], Tensor]) -> Tensor:
        if x.ndim < 2 or x.shape[-2] != self.n_streams or x.shape[-1] != self.dim:
            raise ValueError(f"HyperConnections expects a state of shape [..., {self.n_streams}, {self.dim}], "
                             f"got {tuple(x.shape)}")
        h_pre, h_post, h_res = self.mappings(x)
        xw = x.to(h_pre.dtype)
        branch_in = (h_pre.unsqueeze(-1) * xw).sum(-2)
        y = branch(branch_in.to(x.dtype))
        if not isinstance(y, Tensor) or y.shape != branch_in.shape:
            raise ValueError(f"branch must return a tensor of shape {tuple(branch_in.shape)}, got "
                             f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}")
        if h_res is None:
            mixed = xw
            self.last_h_res = torch.eye(self.n_streams, dtype=xw.dtype, device=xw.device)
        else:
            mixed = h_res @ xw
            self.last_h_res = h_res.detach()
        out = mixed + h_post.unsqueeze(-1) * y.to(xw.dtype).unsqueeze(-2)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, n_streams={self.n_streams}, mixer={self.mixer!r}, "
                f"layer_index={self.layer_index}, dynamic={self.dynamic}")
