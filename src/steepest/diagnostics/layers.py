"""Per-layer measurements of a model in training: which layers are diagnosed, the norm each one's
gradient noise is measured in, and one checkpoint of sharpness, noise and orthogonality error.

:func:`layer_checkpoint` measures, at the current parameters and without disturbing training (the
trial's batch generators are rewound afterwards, ``.grad`` is not touched):

- two mini-batch gradients ``G_a``, ``G_b`` (two calls of ``trial.train_loss()``); batch ``a`` is
  the batch that the next training step draws;
- **sharpness**: the top eigenvalue of each layer's diagonal Hessian block on batch ``a``
  (power iteration, ``sharpness_iters`` HVPs; the same computation as
  :func:`steepest.diagnostics.layer_sharpness` with a generator seeded with ``seed``);
- **noise**: ``||G_a - G_b||_*`` in the dual norm of the layer's group geometry (Frobenius norm for
  AdamW-style groups, whose "geometry" is the identity);
- **orthogonality error** (spectral groups only): ``orthogonality_error(geometry.lmo(G_a), rank)``
  with ``rank = min(m, n, numerical rank of G_a)`` (at ``G_a``'s precision): the polar factor of a
  rank-``r`` matrix has only ``r`` unit singular values, so the zero ones are not counted as errors.

A "trial" is any object with a ``train_loss()`` method whose batches come from ``torch.Generator``
attributes (the benchmark tasks' trials, :mod:`steepest.bench.tasks`).

Hidden layers: the 2-D parameters under ``blocks.`` when the model has such parameters (the
benchmark GPT), otherwise every parameter with at least 2 dimensions.

``steepest diagnose`` (:mod:`steepest.bench.diagnose`) and ``steepest bench --diagnostics``
(:mod:`steepest.bench.train`) record these over training.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .sharpness import top_eigenvalue
from .updates import gradient_noise, orthogonality_error

__all__ = ["hidden_layers", "measure_sharpness", "layer_geometries", "layer_checkpoint", "describe_geometry",
           "dual_norm_label", "DUAL_NORM_NAMES"]


def hidden_layers(model: nn.Module) -> list[str]:
    """The parameters diagnosed: 2-D ones under ``blocks.`` if any exist, else all with ndim >= 2."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    blocks = [n for n, p in named if n.startswith("blocks.") and p.ndim == 2]
    if blocks:
        return blocks
    layers = [n for n, p in named if p.ndim >= 2]
    if not layers:
        raise ValueError("the model has no parameter with at least 2 dimensions to diagnose")
    return layers


def measure_sharpness(model: nn.Module, loss_fn: Callable[[], Tensor], layers: Sequence[str], iters: int,
                      seed: int = 0, tol: float = 1e-4) -> dict[str, float]:
    """Top eigenvalue of each named layer's Hessian block, exactly as ``layer_sharpness`` computes it
    (one generator seeded with ``seed`` shared by the layers in order), restricted to ``layers``."""
    params = dict(model.named_parameters())
    gen = torch.Generator(device="cpu").manual_seed(seed)
    # Hessian-vector products differentiate the backward: the fused attention kernels have no double
    # backward, so scaled_dot_product_attention runs its (twice-differentiable) math kernel here
    with sdpa_kernel([SDPBackend.MATH]):
        return {name: top_eigenvalue(loss_fn, [params[name]], iters=iters, tol=tol, generator=gen)[0]
                for name in layers}


def _trial_generators(trial) -> list[torch.Generator]:
    return [v for v in vars(trial).values() if isinstance(v, torch.Generator)]


def layer_geometries(optimizers, model: nn.Module, layers: Sequence[str]) -> dict:
    """``{layer: geometry}`` for the named layers: the geometry of the steepest group that holds the
    parameter, or ``None`` (AdamW-style groups, non-steepest optimizers, parameters of no group),
    whose noise is then measured in the Frobenius norm."""
    by_id = {}
    for opt in optimizers:
        for group in opt.param_groups:
            for p in group["params"]:
                by_id[id(p)] = (opt, group)
    params = dict(model.named_parameters())
    return {name: _geometry(*by_id.get(id(params[name]), (None, None))) for name in layers}


def _geometry(opt, group):
    """The group's geometry, or ``None`` for AdamW-style groups and non-steepest optimizers."""
    if opt is None or not hasattr(opt, "geometry"):
        return None
    if group.get("transform") in ("adam", "diffgrad"):
        return None
    try:
        return opt.geometry(group)
    except Exception:  # pragma: no cover - foreign optimizer
        return None


#: the names of the dual norms that noise is measured in, by geometry name
DUAL_NORM_NAMES = {"spectral": "nuclear", "sign": "l1", "frobenius": "frobenius"}


def dual_norm_label(geometry) -> str:
    """The name of the norm a layer's noise is measured in: ``nuclear`` for spectral layers,
    ``frobenius`` for AdamW-style ones (``geometry`` ``None``), else ``dual of <geometry>``."""
    if geometry is None:
        return "frobenius"
    name = getattr(geometry, "name", type(geometry).__name__)
    return DUAL_NORM_NAMES.get(name, f"dual of {name}")


def describe_geometry(geometry) -> str:
    """How a layer's noise is measured, for reports."""
    return "adamw (frobenius)" if geometry is None else geometry.describe()


def _frobenius(x: Tensor) -> Tensor:
    return torch.linalg.vector_norm(x)


def _grads(loss: Tensor, params: list[Tensor]) -> list[Tensor]:
    out = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g.detach() for g, p in zip(out, params)]


def layer_checkpoint(trial, model: nn.Module, layers: Sequence[str], geoms: dict, sharpness_iters: int,
                     seed: int = 0, orthogonality: bool = True) -> dict[str, dict]:
    """Per-layer diagnostics at the current parameters (the module docstring's list), without
    disturbing training: the trial's batch generators are rewound afterwards, so the next
    ``trial.train_loss()`` draws the batch it would have drawn anyway, and ``.grad`` is not touched.

    Returns ``{layer: {sharpness, noise, noise_norm, orthogonality_error, lmo_rank}}``
    (``orthogonality_error`` only for spectral layers and when ``orthogonality`` is true).
    """
    params = dict(model.named_parameters())
    plist = [params[n] for n in layers]
    gens = _trial_generators(trial)
    start = [g.get_state() for g in gens]
    grads_a = dict(zip(layers, _grads(trial.train_loss(), plist)))
    grads_b = dict(zip(layers, _grads(trial.train_loss(), plist)))

    def fixed_loss() -> Tensor:  # batch a again
        for g, s in zip(gens, start):
            g.set_state(s)
        return trial.train_loss()

    sharp = measure_sharpness(model, fixed_loss, layers, sharpness_iters, seed=seed)
    for g, s in zip(gens, start):  # training step s sees batch a, as without diagnostics
        g.set_state(s)
    out = {}
    for name in layers:
        geom = geoms[name]
        norm = _frobenius if geom is None else geom.dual_norm
        noise = gradient_noise({name: grads_a[name]}, {name: grads_b[name]}, norm)[name]
        row = {"sharpness": sharp[name], "noise": noise,
               "noise_norm": dual_norm_label(geom),
               "orthogonality_error": None, "lmo_rank": None}
        if orthogonality and geom is not None and getattr(geom, "name", "") == "spectral" \
                and grads_a[name].ndim >= 2:
            g = grads_a[name]
            mat = g.reshape(g.shape[0], -1).to(torch.float64)
            # numerical rank at the gradient's own precision (float64 eps would count rounding noise)
            rtol = max(mat.shape) * torch.finfo(g.dtype).eps
            rank = int(torch.linalg.matrix_rank(mat, rtol=rtol)) if mat.abs().max() > 0 else 0
            rank = min(rank, *mat.shape)
            if rank >= 1:
                row["orthogonality_error"] = orthogonality_error(geom.lmo(g), rank=rank)
                row["lmo_rank"] = rank
        out[name] = row
    return out
