"""Curvature diagnostics: Hessian-vector products, the top Hessian eigenvalue, per-layer sharpness
and a Lanczos estimate of the Hessian's extreme spectrum.

Everything here touches the Hessian ``H = d^2 L / d theta^2`` of a scalar loss only through
Hessian-vector products (Pearlmutter, "Fast Exact Multiplication by the Hessian", Neural Computation
1994): with ``g(theta) = dL/dtheta`` built with ``create_graph=True``,

    H v = d/dtheta <g(theta), v>,

one extra backward pass through the graph of the gradient (``torch.autograd.grad`` twice). ``H`` is
never formed. ``v`` is held fixed (not differentiated), so the product is exact up to rounding.

``loss_fn`` is always a callable with no arguments that returns the scalar loss as a function of the
parameters (e.g. ``lambda: criterion(model(x), y)``); it is called once per function call, and the
graph of its gradient is reused for every product.

Power iteration (:func:`top_eigenvalue`). ``v <- H v / ||H v||`` converges to an eigenvector of the
eigenvalue of *largest magnitude* ``|lambda|`` (at the rate ``|lambda_2 / lambda_1|`` per step; the
Rayleigh quotient ``v^T H v`` converges at the squared rate for a symmetric ``H``). The returned
value is the signed Rayleigh quotient: it is negative when the most negative eigenvalue dominates in
magnitude (e.g. near a saddle), so it is the top (most positive) eigenvalue only when
``lambda_max >= |lambda_min|``, which holds near a minimum, where ``H`` is close to positive
semi-definite. If ``lambda_max = -lambda_min`` exactly, the iteration does not converge to one
eigenvector; use :func:`lanczos_spectrum` to see both ends of the spectrum. "Sharpness" in the
edge-of-stability sense (Cohen et al., "Gradient Descent on Neural Networks Typically Occurs at the
Edge of Stability", arXiv 2103.00065) is this ``lambda_max``.

Per-layer sharpness (:func:`layer_sharpness`). For a parameter tensor ``W`` the diagonal block
``H_WW = d^2 L / dW^2`` of the Hessian is the Hessian of the loss with every other parameter frozen;
its HVP is the same double backward restricted to ``W``. Its top eigenvalue bounds the curvature seen
by a step that moves ``W`` alone (and, by Cauchy interlacing, never exceeds the full Hessian's
largest eigenvalue).

Lanczos (:func:`lanczos_spectrum`). ``k`` steps of the symmetric Lanczos process started from a
random unit vector ``q_1`` build an orthonormal basis ``Q_k`` of the Krylov space
``span{q_1, H q_1, ..., H^{k-1} q_1}`` and the tridiagonal ``T_k = Q_k^T H Q_k``:

    H q_j = beta_{j-1} q_{j-1} + alpha_j q_j + beta_j q_{j+1}.

The eigenvalues of ``T_k`` (Ritz values) approximate the eigenvalues of ``H``; the extreme ones
converge first (Kaniel-Paige theory), so a few dozen steps resolve the largest eigenvalues of a
network with millions of parameters. Each new vector is re-orthogonalized against the whole basis
(classical Gram-Schmidt, applied twice: "twice is enough"), which removes the spurious copies of
converged Ritz values that plain Lanczos produces in floating point. If the Krylov space becomes
invariant (``beta_j`` ~ 0) the process restarts from a fresh random vector orthogonal to the basis, so
``k = n`` (the number of parameters) returns the whole spectrum up to rounding.

Sagun, Evci, Guney, Dauphin, Bottou, "Empirical Analysis of the Hessian of Over-Parametrized Neural
Networks" (arXiv 1706.04454) observe that the Hessian spectrum of a trained network splits into a
*bulk* concentrated near zero (whose width depends on the architecture) and a few *outliers* away
from it (about as many as there are classes, depending on the data). With ``k`` a little larger than
the number of outliers, the largest Ritz values are the outliers, and the remaining Ritz values sit
inside the bulk's range; ``lanczos_spectrum`` shows that split. (The Ritz values in the bulk's
interior are not individual eigenvalues: for a density estimate use stochastic Lanczos quadrature,
Ghorbani, Krishnan, Xiao, arXiv 1901.10159.)

Random starting vectors come from ``generator``; when it is ``None`` a fresh generator seeded with 0
is used, so results are reproducible and the global random state is never consumed.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["hvp", "top_eigenvalue", "layer_sharpness", "lanczos_spectrum"]

LossFn = Callable[[], Tensor]


def _check_params(params: Sequence[Tensor]) -> list[Tensor]:
    params = list(params)
    if not params:
        raise ValueError("params must be a non-empty list of tensors")
    for p in params:
        if not isinstance(p, Tensor):
            raise TypeError(f"params must contain tensors, got {type(p).__name__}")
        if not p.requires_grad:
            raise ValueError("every parameter must require grad")
    return params


def _gradient(loss_fn: LossFn, params: list[Tensor]) -> list[Tensor]:
    """The gradient with its graph (``create_graph=True``), ready for repeated HVPs."""
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be a callable with no arguments, got {type(loss_fn).__name__}")
    loss = loss_fn()
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ValueError("loss_fn must return a scalar tensor")
    grads = torch.autograd.grad(loss.reshape(()), params, create_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


def _hvp_from_grad(grads: list[Tensor], params: list[Tensor], vec: Sequence[Tensor]) -> list[Tensor]:
    """``H v`` by differentiating ``<g, v>``; the gradient graph is kept for the next product."""
    terms = [(g * v.detach()).sum() for g, v in zip(grads, vec) if g.requires_grad]
    if not terms:  # the gradient does not depend on the parameters: H = 0
        return [torch.zeros_like(p) for p in params]
    out = torch.autograd.grad(torch.stack(terms).sum(), params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if h is None else h.detach() for h, p in zip(out, params)]


def _check_vec(params: list[Tensor], vec: Sequence[Tensor]) -> list[Tensor]:
    vec = list(vec)
    if len(vec) != len(params):
        raise ValueError(f"vec must have one tensor per parameter ({len(params)}), got {len(vec)}")
    for i, (v, p) in enumerate(zip(vec, params)):
        if not isinstance(v, Tensor):
            raise TypeError(f"vec must contain tensors, got {type(v).__name__}")
        if v.shape != p.shape:
            raise ValueError(f"vec[{i}] has shape {tuple(v.shape)}, expected {tuple(p.shape)}")
    return vec


def hvp(loss_fn: LossFn, params: Sequence[Tensor], vec: Sequence[Tensor]) -> list[Tensor]:
    """The Hessian-vector product ``H v`` of ``loss_fn()`` w.r.t. ``params``, as a list shaped like
    ``params`` (detached). ``vec`` is a list of tensors with the shapes of ``params``."""
    params = _check_params(params)
    vec = _check_vec(params, vec)
    return _hvp_from_grad(_gradient(loss_fn, params), params, vec)


def _generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    if generator is None:
        return torch.Generator(device=device).manual_seed(0)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def _flat(xs: Sequence[Tensor]) -> Tensor:
    return torch.cat([x.reshape(-1) for x in xs])


def _unflat(v: Tensor, params: list[Tensor]) -> list[Tensor]:
    out, i = [], 0
    for p in params:
        out.append(v[i:i + p.numel()].view_as(p))
        i += p.numel()
    return out


def _randn(n: int, like: Tensor, generator: torch.Generator) -> Tensor:
    # Drawn on the generator's device, then moved (a CPU generator works for any parameter device).
    return torch.randn(n, generator=generator, dtype=like.dtype, device=generator.device).to(like.device)


def top_eigenvalue(loss_fn: LossFn, params: Sequence[Tensor], iters: int = 20, tol: float = 1e-4,
                   generator: torch.Generator | None = None) -> tuple[float, list[Tensor]]:
    """Power iteration on HVPs: ``(rayleigh_quotient, eigenvector)``.

    Finds the eigenvalue of largest magnitude ``|lambda|`` and returns it signed (the Rayleigh
    quotient ``v^T H v`` of the final unit vector ``v``) with ``v`` as a list shaped like ``params``.
    Stops after ``iters`` products, or earlier once two successive Rayleigh quotients differ by at
    most ``tol * |lambda|``. A zero Hessian gives ``0.0``.
    """
    params = _check_params(params)
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be a positive integer, got {iters!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be non-negative, got {tol!r}")
    gen = _generator(generator, params[0].device)
    grads = _gradient(loss_fn, params)
    n = sum(p.numel() for p in params)
    v = _randn(n, params[0], gen)
    v = v / v.norm()
    lam_prev = None
    lam = 0.0
    for _ in range(iters):
        hv = _flat(_hvp_from_grad(grads, params, _unflat(v, params)))
        lam = float(torch.dot(v, hv))
        norm = hv.norm()
        if float(norm) == 0.0:
            return 0.0, _unflat(v, params)
        v = hv / norm
        if lam_prev is not None and abs(lam - lam_prev) <= tol * abs(lam):
            break
        lam_prev = lam
    # Rayleigh quotient of the returned vector (one more product, so value and vector agree).
    hv = _flat(_hvp_from_grad(grads, params, _unflat(v, params)))
    lam = float(torch.dot(v, hv))
    return lam, _unflat(v, params)


def layer_sharpness(model: nn.Module, loss_fn: LossFn, iters: int = 20, *, tol: float = 1e-4,
                    min_ndim: int = 2, generator: torch.Generator | None = None) -> dict[str, float]:
    """Top eigenvalue (power iteration, see :func:`top_eigenvalue`) of each diagonal Hessian block
    ``d^2 L / dW^2``, one per named parameter of ``model`` that requires grad and has at least
    ``min_ndim`` dimensions (default 2: weight matrices and conv filters; ``min_ndim=0`` includes
    biases and gains). Returns ``{name: value}`` in ``named_parameters`` order.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(min_ndim, bool) or not isinstance(min_ndim, int) or min_ndim < 0:
        raise ValueError(f"min_ndim must be a non-negative integer, got {min_ndim!r}")
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad and p.ndim >= min_ndim]
    if not named:
        raise ValueError(f"model has no trainable parameter with at least {min_ndim} dimensions")
    gen = _generator(generator, named[0][1].device)
    return {name: top_eigenvalue(loss_fn, [p], iters=iters, tol=tol, generator=gen)[0] for name, p in named}


def lanczos_spectrum(loss_fn: LossFn, params: Sequence[Tensor], k: int = 10,
                     generator: torch.Generator | None = None) -> Tensor:
    """``k`` Ritz values of the Hessian from ``k`` Lanczos steps with full reorthogonalization, as a
    float64 tensor sorted largest first (algebraically). Needs ``1 <= k <= n`` (``n``: the number of
    parameter entries); ``k = n`` gives all eigenvalues up to rounding."""
    params = _check_params(params)
    n = sum(p.numel() for p in params)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer between 1 and the number of parameters ({n}), got {k!r}")
    gen = _generator(generator, params[0].device)
    grads = _gradient(loss_fn, params)
    like = params[0]
    eps = torch.finfo(like.dtype).eps

    def matvec(q: Tensor) -> Tensor:
        return _flat(_hvp_from_grad(grads, params, _unflat(q, params)))

    def orthogonalize(w: Tensor, basis: Tensor) -> Tensor:
        for _ in range(2):  # classical Gram-Schmidt twice
            w = w - basis.T @ (basis @ w)
        return w

    Q = torch.empty(k, n, dtype=like.dtype, device=like.device)
    alpha = torch.zeros(k, dtype=torch.float64)
    beta = torch.zeros(max(k - 1, 0), dtype=torch.float64)
    q = _randn(n, like, gen)
    Q[0] = q / q.norm()
    scale = 0.0  # running estimate of ||H|| for the breakdown test
    for j in range(k):
        w = matvec(Q[j])
        a = float(torch.dot(Q[j], w))
        alpha[j] = a
        if j == k - 1:
            break
        w = orthogonalize(w, Q[:j + 1])
        b = float(w.norm())
        scale = max(scale, abs(a), b, float(beta[j - 1]) if j > 0 else 0.0)
        if b <= math.sqrt(n) * eps * max(scale, 1e-300) * 10:
            # Invariant subspace found: restart from a random vector orthogonal to the basis; the
            # tridiagonal matrix decouples (beta_j = 0), so its eigenvalues stay exact.
            for _ in range(10):
                r = orthogonalize(_randn(n, like, gen), Q[:j + 1])
                rn = float(r.norm())
                if rn > 1e-3 * math.sqrt(n):
                    break
            b = 0.0
            Q[j + 1] = r / rn
        else:
            Q[j + 1] = w / b
        beta[j] = b
    T = torch.diag(alpha)
    if k > 1:
        T += torch.diag(beta, 1) + torch.diag(beta, -1)
    return torch.linalg.eigvalsh(T).flip(0)
