"""Byzantine-robust gradient aggregation: pure rules on a ``(p, n)`` matrix of worker gradients and
DDP communication hooks that apply them to every gradient bucket.

Rules (``G`` has one worker's flattened gradient per row):

* ``mean_aggregate``: the average (what DDP's default all-reduce computes).
* ``median_aggregate``: coordinate-wise median (the mean of the two middle values for even ``p``).
* ``trimmed_mean_aggregate(G, trim)``: per coordinate, drop the ``trim`` largest and ``trim``
  smallest values and average the rest.
* ``flag_aggregate``: the Flag Aggregator (FA) of Almasi, Mishra, Vamanan and Ravi, arXiv 2302.05865
  (ICLR 2024), as released in ``hamidralmasi/FlagAggregator`` (``aggregators/flag.py`` and
  ``center_algorithms_torch.py``). Each worker's unit gradient ``x_i = g_i / |g_i|`` is a line; FA
  looks for the m-dimensional subspace ``span(Y)``, ``Y^T Y = I``, that is the *flag median* of those
  lines (Mankovich et al., CVPR 2022),

      minimize  F(Y) = sum_i sqrt(r_i + eps) + c * sum_{i != j} sqrt(r_ij + eps),
      r_i = |1 - |Y^T x_i|^2|  (the squared sine of x_i's angle to the subspace),
      r_ij = |1 - |Y^T (x_i - x_j)|^2|,   c = lam / (p (p - 1)),

  by iteratively reweighted least squares (FlagIRLS): with weights ``w_i = (r_i + eps)^(-1/2)``
  (and ``c w_ij`` for the pairs) the next ``Y`` is the top-m eigenbasis of the weighted scatter
  ``sum_i w_i x_i x_i^T (+ pairs)``, a weighted flag mean. For ``lam = 0`` this is a
  majorize-minimize step (sqrt is concave, so ``F`` never increases); the best ``Y`` seen is kept.
  The aggregate is ``(1/m) sum_i Y Y^T x_i``, the projection of the sum of the *unit* gradients
  (``scale="paper"``), or the same sum rescaled by ``median_i |g_i| / p`` (``scale="median"``),
  which equals the mean when all workers agree.

This library's reading of the released code (the paper's body was not available to check):
iteration 0 is the unweighted flag mean (the released code starts from a random ``Y``, which in
high dimension gives near-equal weights, runs one reweighting and keeps it only if ``F`` fell, so
``iters=0`` is the closest setting); ``iters`` further reweightings follow. The released code scales
each pair column by ``lam / (p (p - 1))`` before the SVD, i.e. weights the pair terms by the square
of that factor; here ``lam`` multiplies the pair terms of ``F`` directly.

Cost. Every ``x_i`` lies in the row space of ``G``, and so does the optimal ``Y``: with ``Y = X^T A``
(``A`` is ``p x m``) everything is computed from the ``p x p`` Gram matrix ``K = X X^T``:
``Y^T x_i = A^T K e_i``, and the weighted scatter ``X^T C X`` (``C`` = diagonal weights plus a
weighted graph Laplacian for the pairs) has the nonzero eigenpairs of ``R^T K R`` with ``C = R R^T``.
Per call: the Gram matrix ``O(p^2 n)`` and the output ``O(p n)``; per IRLS iteration ``O(p^3 + p^2 m)``
independent of ``n`` (the released code: an ``n x p`` SVD, ``O(n p^2)``, or ``O(n p^4)`` with
pairs). Memory ``O(p n)`` for the gathered gradients plus ``O(p^2)``. Mean: ``O(p n)``; median and
trimmed mean: a sort per coordinate, ``O(p n log p)``.

Hooks. ``mean_hook``, ``median_hook``, ``trimmed_mean_hook`` and ``flag_hook`` follow
``DistributedDataParallel.register_comm_hook``: ``hook(state, bucket) -> Future[Tensor]``. The robust
ones all-gather every rank's flat bucket (``(p - 1) n`` values received per rank, about ``p / 2``
times a ring all-reduce), and every rank computes the same aggregate from the same gathered matrix
(replicas stay equal on identical hardware). A bucket is aggregated on its own: FA's subspace is
estimated per bucket (raise DDP's ``bucket_cap_mb`` above the model size for one subspace).
"""
import dataclasses
import math
from typing import Callable, NamedTuple, Optional

import torch
import torch.distributed as dist
from torch import Tensor

SCALES = ("paper", "median")
#: attack kinds and the ``scale`` each uses by default: ``sign_flip`` sends ``-scale g``, ``scale``
#: sends ``scale g`` (-10: the "reverse" attack of FA's experiments), ``noise`` sends
#: ``scale * N(0, I)`` in place of the gradient
ATTACKS = {"noise": 1.0, "scale": -10.0, "sign_flip": 1.0}


def _check_matrix(G: Tensor) -> None:
    if G.dim() != 2 or G.shape[0] < 1:
        raise ValueError(f"expected a (workers, dims) matrix with at least one row, got shape {tuple(G.shape)}")


def mean_aggregate(G: Tensor) -> Tensor:
    _check_matrix(G)
    return G.mean(dim=0)


def median_aggregate(G: Tensor) -> Tensor:
    """Coordinate-wise median; for an even number of workers, the mean of the two middle values."""
    _check_matrix(G)
    p = G.shape[0]
    s = G.sort(dim=0).values
    return (s[(p - 1) // 2] + s[p // 2]) / 2


def trimmed_mean_aggregate(G: Tensor, trim: int = 1) -> Tensor:
    """Per coordinate, the mean of the values left after dropping the ``trim`` largest and smallest."""
    _check_matrix(G)
    p = G.shape[0]
    if trim < 0 or 2 * trim >= p:
        raise ValueError(f"trimmed mean needs 0 <= trim and 2 * trim < workers; got trim={trim} with {p} workers")
    return G.sort(dim=0).values[trim:p - trim].mean(dim=0)


class FlagSubspace(NamedTuple):
    """FlagIRLS result in Gram coordinates: the basis is ``Y = X^T coefficients`` (``X`` the unit rows)."""
    coefficients: Tensor  # (p, k) float64, k <= subspace_dim (the numerical rank of G caps k)
    norms: Tensor  # (p,) the workers' gradient norms
    gram: Tensor  # (p, p) float64 Gram matrix of the unit gradients
    weights: Tensor  # (p,) the last IRLS weights of the workers
    objectives: list  # F at iteration 0 (flag mean) and after each accepted reweighting


def _pair_residuals(P: Tensor) -> Tensor:
    """|1 - |Y^T (x_i - x_j)|^2| for all i, j from the projected coordinates ``P = K A``."""
    diff = P[:, None, :] - P[None, :, :]
    return (1 - diff.square().sum(-1)).abs()


def _objective(P: Tensor, c: float, eps: float) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    r = (1 - P.square().sum(1)).abs()
    value = (r + eps).sqrt().sum()
    rp = None
    if c > 0:
        rp = _pair_residuals(P)
        off = ~torch.eye(P.shape[0], dtype=torch.bool)
        value = value + c * (rp + eps).sqrt()[off].sum()
    return value, r, rp


def _weighted_flag_mean(K: Tensor, C: Tensor, m: int) -> Tensor:
    """Coefficients ``A`` of the top-m eigenbasis of the scatter ``X^T C X`` (``C`` PSD, ``p x p``)."""
    lam_c, Q = torch.linalg.eigh(C)
    R = Q * lam_c.clamp_min(0).sqrt()
    M = R.T @ K @ R
    mu, V = torch.linalg.eigh((M + M.T) / 2)
    mu, V = mu.flip(0), V.flip(1)
    keep = mu > 10 * K.shape[0] * torch.finfo(torch.float32).eps * mu[0].clamp_min(0)
    k = min(m, int(keep.sum()))
    return R @ V[:, :k] / mu[:k].sqrt()


def flag_subspace(G: Tensor, subspace_dim: int = 1, iters: int = 5, tol: float = 1e-6, lam: float = 0.0,
                  eps: float = 1e-7) -> FlagSubspace:
    """FlagIRLS for the flag median of the workers' unit gradients, in ``p x p`` Gram coordinates."""
    _check_matrix(G)
    if subspace_dim < 1 or iters < 0 or lam < 0 or eps <= 0:
        raise ValueError(f"need subspace_dim >= 1, iters >= 0, lam >= 0, eps > 0; got {subspace_dim}, {iters}, "
                         f"{lam}, {eps}")
    p = G.shape[0]
    work = G if G.dtype in (torch.float32, torch.float64) else G.float()
    norms = work.norm(dim=1)
    inv = torch.where(norms > 0, 1 / norms.clamp_min(torch.finfo(work.dtype).tiny), torch.zeros_like(norms))
    K = ((work @ work.T).double() * inv.double()[:, None] * inv.double()[None, :]).cpu()
    c = lam / (p * (p - 1)) if p > 1 else 0.0
    off = ~torch.eye(p, dtype=torch.bool)

    def scatter(w: Tensor, wp: Optional[Tensor]) -> Tensor:
        C = torch.diag(w)
        if wp is not None:  # ordered pairs i != j: twice the Laplacian of the symmetric pair weights
            W = 2 * c * wp * off
            C = C + torch.diag(W.sum(1)) - W
        return C

    w = torch.ones(p, dtype=torch.float64)
    A = _weighted_flag_mean(K, scatter(w, torch.ones(p, p, dtype=torch.float64) if c > 0 else None), subspace_dim)
    best, r, rp = _objective(K @ A, c, eps)
    objectives = [best.item()]
    for _ in range(iters):
        w_new = (r + eps).rsqrt()
        A_new = _weighted_flag_mean(K, scatter(w_new, (rp + eps).rsqrt() if rp is not None else None),
                                    subspace_dim)
        value, r_new, rp_new = _objective(K @ A_new, c, eps)
        if not value < best:
            break
        decrease = (best - value).item()
        A, w, r, rp, best = A_new, w_new, r_new, rp_new, value
        objectives.append(value.item())
        if decrease <= tol * objectives[-2]:
            break
    return FlagSubspace(A, norms, K, w, objectives)


def flag_basis(G: Tensor, sub: FlagSubspace) -> Tensor:
    """The orthonormal basis ``Y`` (``n x k``) of a :func:`flag_subspace` result; costs ``O(p n k)``."""
    inv = torch.where(sub.norms > 0, 1 / sub.norms, torch.zeros_like(sub.norms)).double()
    return G.double().T @ (sub.coefficients * inv[:, None])


def flag_aggregate(G: Tensor, subspace_dim: int = 1, iters: int = 5, tol: float = 1e-6, lam: float = 0.0,
                   eps: float = 1e-7, scale: str = "paper") -> Tensor:
    """The Flag Aggregator's update (see the module docstring): ``(1/m) sum_i Y Y^T x_i``
    (``scale="paper"``) or ``(median_i |g_i| / p) sum_i Y Y^T x_i`` (``scale="median"``)."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(map(repr, SCALES))}")
    sub = flag_subspace(G, subspace_dim, iters, tol, lam, eps)
    A, K = sub.coefficients, sub.gram
    p = G.shape[0]
    # Y^T sum_i x_i = A^T K 1, so sum_i Y Y^T x_i = X^T v with v = A A^T K 1
    v = A @ (A.T @ K.sum(1))
    if scale == "paper":
        v = v / subspace_dim
    else:
        v = v * (median_aggregate(sub.norms[:, None].double()).item() / p)
    inv = torch.where(sub.norms > 0, 1 / sub.norms, torch.zeros_like(sub.norms))
    coef = (v.to(sub.norms) * inv).to(G.device)
    work = G if G.dtype in (torch.float32, torch.float64) else G.float()
    return (coef @ work).to(G.dtype)


def flag_objective(G: Tensor, Y: Tensor, lam: float = 0.0, eps: float = 1e-7) -> Tensor:
    """``F(Y)`` computed directly in ``n`` dimensions (an independent path for tests)."""
    X = torch.nn.functional.normalize(G.double(), dim=1)
    Y = Y.double()
    p = X.shape[0]
    value = ((1 - (X @ Y).square().sum(1)).abs() + eps).sqrt().sum()
    if lam > 0 and p > 1:
        D = (X[:, None, :] - X[None, :, :]) @ Y
        rp = ((1 - D.square().sum(-1)).abs() + eps).sqrt()
        value = value + lam / (p * (p - 1)) * rp[~torch.eye(p, dtype=torch.bool)].sum()
    return value


def flag_reference_subspace(G: Tensor, subspace_dim: int = 1, lam: float = 0.0, eps: float = 1e-7,
                            restarts: int = 8, steps: int = 400, seed: int = 0) -> Tensor:
    """A direct solve of FA's problem for tiny ``n``: minimize :func:`flag_objective` over the Stiefel
    manifold ``{Y : Y^T Y = I}`` by Adam on ``Z`` with ``Y = qr(Z).Q`` (autograd, float64), from
    several random starts; returns the best ``Y`` (``n x m``). No IRLS, no Gram trick."""
    g = torch.Generator().manual_seed(seed)
    n = G.shape[1]
    best, best_y = math.inf, None
    for _ in range(restarts):
        Z = torch.randn(n, subspace_dim, generator=g, dtype=torch.float64).requires_grad_()
        opt = torch.optim.Adam([Z], lr=0.05)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for _ in range(steps):
            opt.zero_grad()
            loss = flag_objective(G, torch.linalg.qr(Z).Q, lam, eps)
            loss.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            Y = torch.linalg.qr(Z).Q
            value = flag_objective(G, Y, lam, eps).item()
        if value < best:
            best, best_y = value, Y
    return best_y


# -- DDP communication hooks ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class AggregationState:
    """Options of the aggregation hooks (the ``state`` of ``register_comm_hook``)."""
    process_group: Optional[object] = None  # None: the default (WORLD) group
    trim: int = 1  # trimmed mean: values dropped at each end, per coordinate
    subspace_dim: int = 1  # FA: the subspace dimension m (the paper's experiments: 8 of ~15 workers)
    iters: int = 5  # FA: IRLS reweightings after the flag mean (0: closest to the released code)
    tol: float = 1e-6  # FA: stop when F falls by less than tol * F
    lam: float = 0.0  # FA: weight of the pairwise-difference terms
    eps: float = 1e-7  # FA: residual smoothing
    scale: str = "paper"  # FA: "paper" (sum of projected unit gradients / m) or "median" (x median norm / p)

    def group(self):
        return self.process_group if self.process_group is not None else dist.group.WORLD

    def validate(self, world: Optional[int] = None) -> None:
        """Exact errors for bad options; ``world`` given: also the trimmed mean's ``2 trim < world``."""
        if self.trim < 0 or (world is not None and 2 * self.trim >= world):
            raise ValueError(f"trimmed mean needs 0 <= trim and 2 * trim < workers; got trim={self.trim} with "
                             f"{world} workers")
        if self.scale not in SCALES:
            raise ValueError(f"unknown scale {self.scale!r}; choose one of {', '.join(map(repr, SCALES))}")
        if self.subspace_dim < 1 or self.iters < 0 or self.lam < 0 or self.eps <= 0:
            raise ValueError("need subspace_dim >= 1, iters >= 0, lam >= 0 and eps > 0")


def _gather_then(state: AggregationState, bucket, rule: Callable[[Tensor], Tensor]):
    """All-gather the bucket's flat buffer into ``(p, n)``, aggregate it into the buffer, return a future."""
    group = state.group()
    flat = bucket.buffer()
    gathered = flat.new_empty((dist.get_world_size(group), flat.numel()))
    work = dist.all_gather(list(gathered.unbind(0)), flat, group=group, async_op=True)

    def finish(fut) -> Tensor:
        fut.value()  # re-raises a failed gather
        flat.copy_(rule(gathered))
        return flat

    return work.get_future().then(finish)


def mean_hook(state: AggregationState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Average by all-reduce (DDP's default behaviour): divide by the group size, then sum."""
    group = state.group()
    flat = bucket.buffer().div_(dist.get_world_size(group))
    return dist.all_reduce(flat, group=group, async_op=True).get_future().then(lambda fut: fut.value()[0])


def median_hook(state: AggregationState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    return _gather_then(state, bucket, median_aggregate)


def trimmed_mean_hook(state: AggregationState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    return _gather_then(state, bucket, lambda G: trimmed_mean_aggregate(G, state.trim))


def flag_hook(state: AggregationState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    return _gather_then(state, bucket, lambda G: flag_aggregate(
        G, state.subspace_dim, state.iters, state.tol, state.lam, state.eps, state.scale))


HOOKS = {"flag": flag_hook, "mean": mean_hook, "median": median_hook, "trimmed_mean": trimmed_mean_hook}


def register_robust_aggregation(ddp_model, rule: str = "flag", **options) -> AggregationState:
    """Register the hook of ``rule`` (``flag``, ``mean``, ``median``, ``trimmed_mean``) on a DDP model;
    ``options`` are :class:`AggregationState` fields. Returns the state. Register before the first
    backward; DDP accepts one hook per model."""
    if rule not in HOOKS:
        raise ValueError(f"unknown aggregation rule {rule!r}; choose one of {', '.join(map(repr, sorted(HOOKS)))}")
    state = AggregationState(**options)
    state.validate(dist.get_world_size(state.group()) if rule == "trimmed_mean" else None)
    ddp_model.register_comm_hook(state, HOOKS[rule])
    return state


# -- attacks (tests and benchmarks) --------------------------------------------------------------
def attack(grad: Tensor, kind: str, scale: Optional[float] = None,
           generator: Optional[torch.Generator] = None) -> Tensor:
    """A Byzantine worker's gradient (a new tensor): ``sign_flip`` -> ``-scale g`` (default 1),
    ``scale`` -> ``scale g`` (default -10), ``noise`` -> ``scale * N(0, I)`` (default 1)."""
    if kind not in ATTACKS:
        raise ValueError(f"unknown attack kind {kind!r}; choose one of {', '.join(map(repr, sorted(ATTACKS)))}")
    s = ATTACKS[kind] if scale is None else float(scale)
    if kind == "sign_flip":
        return grad * -s
    if kind == "scale":
        return grad * s
    device = generator.device if generator is not None else grad.device
    noise = torch.randn(grad.shape, generator=generator, device=device, dtype=grad.dtype)
    return noise.to(grad.device) * s


def attacked(hook, rank: int, kind: str, scale: Optional[float] = None, seed: int = 0):
    """Wrap ``hook`` so that ``rank`` (in the state's group) replaces its local bucket by
    :func:`attack` before the hook communicates; the other ranks are unchanged."""
    if kind not in ATTACKS:
        raise ValueError(f"unknown attack kind {kind!r}; choose one of {', '.join(map(repr, sorted(ATTACKS)))}")
    generator = torch.Generator().manual_seed(seed)

    def attacked_hook(state: AggregationState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        if dist.get_rank(state.group()) == rank:
            flat = bucket.buffer()
            flat.copy_(attack(flat, kind, scale, generator))
        return hook(state, bucket)

    attacked_hook.__qualname__ = f"attacked({getattr(hook, '__qualname__', 'hook')}, {kind})"
    return attacked_hook
