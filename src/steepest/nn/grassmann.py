r"""Grassmann Class Representation (GCR) and the Riemannian momentum step that trains it.

Reference: Haoqi Wang, Zhizhong Li, Wayne Zhang, "Get the Best of Both Worlds: Improving Accuracy
and Transferability by Grassmann Class Representation", ICCV 2023, arXiv 2308.01547.

Each class ``c`` is a ``k``-dimensional linear subspace of the feature space ``R^d``, stored as an
orthonormal basis ``S_c`` (``d x k``, ``S_c^T S_c = I_k``). A feature ``x`` is L2-normalised and
scored by the length of its projection onto each class subspace:

.. math::
    \hat x = x / \max(\|x\|_2, \epsilon), \qquad
    \mathrm{logit}_c(x) = \gamma\, \| S_c^\top \hat x \|_2 .

The logit depends only on the subspace ``span(S_c)`` (a point of the Grassmann manifold
``Gr(d, k)``), not on the basis chosen: ``S_c R`` with ``R`` in ``O(k)`` gives the same logits.
The bases are trained with :class:`GrassmannSGD`, which moves each basis along a geodesic of
``Gr(d, k)`` so it stays orthonormal; the rest of the network uses any ordinary optimizer.

Typical use::

    head = GrassmannClassifier(feat_dim, num_classes, k=8, scale=25.0)
    opt_body = torch.optim.AdamW(body.parameters(), lr=1e-3)
    opt_head = GrassmannSGD([head.bases], lr=0.1, momentum=0.9)
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

__all__ = ["GrassmannClassifier", "GrassmannSGD", "qr_orthonormalize", "horizontal_projection"]


def qr_orthonormalize(a: Tensor) -> Tensor:
    r"""Orthonormal basis of the column span of every trailing ``d x k`` block of ``a`` (``k <= d``).

    Reduced QR ``a = Q R`` followed by the sign fix ``Q <- Q diag(sign(diag R))`` (a zero diagonal
    entry counts as ``+1``), which makes the factor unique for full-rank input: ``R`` then has a
    nonnegative diagonal, and an ``a`` that is already orthonormal comes back (up to rounding)
    unchanged instead of with flipped columns. Half-precision input is factored in float32.
    """
    work = a.float() if a.dtype in (torch.float16, torch.bfloat16) else a
    q, r = torch.linalg.qr(work, mode="reduced")
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return (q * signs.unsqueeze(-2)).to(a.dtype)


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class GrassmannClassifier(nn.Module):
    r"""Linear-head replacement that scores features against one ``k``-dim subspace per class (GCR).

    .. math::
        \mathrm{logit}_c(x) = \gamma\, \| S_c^\top x / \max(\|x\|_2, \epsilon) \|_2,
        \qquad S_c \in \mathbb{R}^{d \times k},\ S_c^\top S_c = I_k .

    Every logit lies in ``[0, scale]``. The logits are invariant to ``S_c -> S_c R`` for any
    orthogonal ``R`` (``||R^T S_c^T x|| = ||S_c^T x||``), so only the subspaces matter.

    Parameter layout: a single parameter ``bases`` of shape ``(num_classes, in_features, k)``;
    ``bases[c]`` is ``S_c`` (columns = basis vectors). This is the ``(..., d, k)`` layout
    :class:`GrassmannSGD` expects, so pass ``[head.bases]`` to it. Train the bases with
    :class:`GrassmannSGD` (a plain Euclidean optimizer would let them drift off the manifold; the
    logits would then no longer be projection norms).

    Initialisation: standard Gaussian entries (from ``generator`` if given, else the global RNG,
    as ``nn.Linear`` does), then per-class sign-fixed QR (:func:`qr_orthonormalize`), which gives a
    uniformly random subspace per class.

    Defaults ``k=8`` and ``scale=25`` are the paper's (arXiv 2308.01547).

    Args:
        in_features: feature dimension ``d``.
        num_classes: number of classes ``C``.
        k: subspace dimension per class, ``1 <= k <= in_features``.
        scale: the logit scale ``gamma`` (> 0).
        eps: floor on ``||x||`` in the normalisation (a zero feature gives zero logits).
        generator: optional ``torch.Generator`` for the initialisation.
        device, dtype: factory kwargs for the parameter.

    Shapes: input ``(..., in_features)``, output ``(..., num_classes)``.
    """

    def __init__(self, in_features: int, num_classes: int, k: int = 8, scale: float = 25.0, *,
                 eps: float = 1e-12, generator: torch.Generator | None = None,
                 device: Any = None, dtype: Any = None):
        super().__init__()
        _check_positive_int("in_features", in_features)
        _check_positive_int("num_classes", num_classes)
        _check_positive_int("k", k)
        if k > in_features:
            raise ValueError(f"k must be <= in_features, got k={k} and in_features={in_features}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"eps must be a number > 0, got {eps!r}")
        self.in_features = in_features
        self.num_classes = num_classes
        self.k = k
        self.scale = float(scale)
        self.eps = float(eps)
        self.bases = nn.Parameter(torch.empty(num_classes, in_features, k, device=device, dtype=dtype))
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Redraw every class basis: Gaussian entries, then sign-fixed QR per class."""
        draw_dtype = torch.float64 if self.bases.dtype == torch.float64 else torch.float32
        draw_device = generator.device if generator is not None else self.bases.device
        gauss = torch.randn(self.bases.shape, generator=generator, dtype=draw_dtype, device=draw_device)
        gauss = gauss.to(self.bases.device)
        self.bases.copy_(qr_orthonormalize(gauss))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected input with last dimension {self.in_features}, got shape {tuple(x.shape)}")
        x_hat = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(self.eps)
        # (C, d, k) -> (d, C*k): one matmul projects onto every class subspace at once.
        flat = self.bases.permute(1, 0, 2).reshape(self.in_features, self.num_classes * self.k)
        proj = (x_hat @ flat).unflatten(-1, (self.num_classes, self.k))
        return self.scale * torch.linalg.vector_norm(proj, dim=-1)

    @torch.no_grad()
    def orthonormality_error(self) -> float:
        r"""``max_c max_ij |(S_c^T S_c - I)_ij|`` (computed in float64 where the device allows)."""
        s = self.bases.detach()
        if s.device.type != "mps":
            s = s.double()
        gram = s.mT @ s
        eye = torch.eye(self.k, dtype=gram.dtype, device=gram.device)
        return (gram - eye).abs().amax().item()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}, k={self.k}, scale={self.scale}"


class GrassmannSGD(torch.optim.Optimizer):
    r"""Riemannian SGD with momentum on the Grassmann manifold ``Gr(d, k)`` (the GCR recipe).

    Every parameter has shape ``(..., d, k)`` with ``k <= d``; each trailing ``d x k`` block ``S``
    is an orthonormal basis (``S^T S = I``) standing for the subspace ``span(S)``. With Euclidean
    gradient ``g`` of that block, one step is

    .. math::
        b &\leftarrow \mu\, b + g \qquad (b = g \text{ on the first step}) \\
        \xi &= b - S (S^\top b) = (I - S S^\top)\, b \\
        \xi &= U \Sigma V^\top \quad \text{(compact SVD)} \\
        S &\leftarrow S V \cos(\eta \Sigma) V^\top - U \sin(\eta \Sigma) V^\top

    ``xi`` is the projection of the momentum onto the horizontal space at ``S`` (the tangent space
    of the Grassmannian represented by matrices with ``S^T xi = 0``); the update is the geodesic
    ``Exp_S(-eta xi)`` of Edelman, Arias and Smith ("The Geometry of Algorithms with Orthogonality
    Constraints", SIAM J. Matrix Anal. Appl. 20(2), 1998, Theorem 2.3), whose velocity at ``eta = 0``
    is ``-U Sigma V^T = -xi``. Sign: the first-order change of the loss is
    ``<g, -eta xi> = -eta ||(I - S S^T) g||_F^2 <= 0`` when ``b = g``, so a small step decreases it.
    ``S V`` and ``U`` have orthonormal columns and ``U^T S V = 0``, so the new basis is orthonormal in
    exact arithmetic; a sign-fixed QR (:func:`qr_orthonormalize`) every ``reorth_every`` steps
    removes the rounding drift (it does not change the subspace).

    Recipe (momentum on the Euclidean gradient, projection, geodesic step, QR re-orthonormalisation)
    from Wang, Li, Zhang, "Grassmann Class Representation", ICCV 2023, arXiv 2308.01547, Algorithm 1.
    The momentum is not parallel-transported: the buffer ``b`` is kept in ambient coordinates and
    simply re-projected at the next point. No weight decay (it has no meaning on the manifold).

    State per parameter: ``momentum_buffer`` (only when ``momentum > 0``) and ``step`` (int, the
    number of steps taken; QR runs when ``step % reorth_every == 0``); both round-trip through
    ``state_dict``. Parameters whose ``grad`` is ``None`` are skipped. Half-precision parameters are
    updated in float32 and cast back.

    Args:
        params: iterable of parameters (or param-group dicts) shaped ``(..., d, k)``, ``k <= d``,
            whose trailing blocks are already orthonormal (e.g. ``GrassmannClassifier.bases``).
        lr: step length ``eta`` along the geodesic (>= 0; readable/settable by LR schedulers
            through ``param_groups``).
        momentum: ``mu`` in ``[0, 1)``.
        reorth_every: re-orthonormalise with QR every this many steps (int >= 1).
    """

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.9, reorth_every: int = 1):
        _check_lr(lr)
        _check_momentum(momentum)
        _check_reorth(reorth_every)
        super().__init__(params, dict(lr=lr, momentum=momentum, reorth_every=reorth_every))

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group after checking its hyperparameters and that every parameter is ``(..., d, k)``."""
        for key, check in (("lr", _check_lr), ("momentum", _check_momentum), ("reorth_every", _check_reorth)):
            if key in param_group:
                check(param_group[key])
        params = param_group["params"]
        for p in [params] if isinstance(params, Tensor) else list(params):
            if isinstance(p, Tensor):
                if p.dim() < 2 or p.shape[-1] > p.shape[-2]:
                    raise ValueError(f"GrassmannSGD parameters must have shape (..., d, k) with k <= d, got {tuple(p.shape)}")
                if not p.is_floating_point():
                    raise ValueError(f"GrassmannSGD parameters must be real floating point, got {p.dtype}")
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One geodesic step per parameter with a gradient; returns ``closure()``'s value if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = float(group["lr"])
            momentum = float(group["momentum"])
            reorth_every = int(group["reorth_every"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("GrassmannSGD does not support sparse gradients")
                state = self.state[p]
                step = int(state.get("step", 0)) + 1
                state["step"] = step
                grad = p.grad
                if momentum != 0.0:
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = grad.detach().clone()
                        state["momentum_buffer"] = buf
                    else:
                        buf.mul_(momentum).add_(grad)
                    direction = buf
                else:
                    direction = grad
                new = _geodesic_step(p, direction, lr)
                if step % reorth_every == 0:
                    new = qr_orthonormalize(new)
                p.copy_(new)
        return loss


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def horizontal_projection(s: Tensor, v: Tensor) -> Tensor:
    r"""``(I - S S^T) v`` for every trailing block: the part of ``v`` with ``S^T xi = 0``."""
    return v - s @ (s.mT @ v)


def _geodesic_step(s: Tensor, direction: Tensor, lr: float) -> Tensor:
    """``Exp_S(-lr * xi)`` with ``xi`` the horizontal projection of ``direction``; returns the new basis."""
    dt = _compute_dtype(s.dtype)
    s_w = s.detach().to(dt)
    xi = horizontal_projection(s_w, direction.detach().to(dt))
    u, sigma, vh = torch.linalg.svd(xi, full_matrices=False)
    angle = lr * sigma
    cos, sin = torch.cos(angle).unsqueeze(-2), torch.sin(angle).unsqueeze(-2)
    new = ((s_w @ vh.mT) * cos - u * sin) @ vh
    return new.to(s.dtype)


def _check_lr(lr: Any) -> None:
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"lr must be a number >= 0, got a tensor of shape {tuple(lr.shape)}")
        lr = lr.item()
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr >= 0 or not math.isfinite(lr):
        raise ValueError(f"lr must be a finite number >= 0, got {lr!r}")


def _check_momentum(momentum: Any) -> None:
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")


def _check_reorth(reorth_every: Any) -> None:
    if isinstance(reorth_every, bool) or not isinstance(reorth_every, int) or reorth_every < 1:
        raise ValueError(f"reorth_every must be an int >= 1, got {reorth_every!r}")
