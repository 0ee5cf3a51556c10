"""The orthogonalization backends ``steepest bench kernels`` times: each turns a float32 gradient
matrix into an update direction.

Backends (:data:`BACKEND_NAMES`):

* ``keller``, ``you``, ``quintic``, ``polar_express``, ``polar_express_8``: the library's
  Newton-Schulz schedules, called through :func:`steepest.polar.polar` in float32 with their
  default step counts, exactly as the spectral geometry calls it for a single matrix.
* ``svd``: the exact polar factor by LAPACK SVD (float32, :func:`steepest.polar.svd_polar`).
* ``auon``: AuON's direction, the Frobenius LMO ``G / ||G||_F`` times the cosh brake
  (:func:`steepest.optim.auon.cosh_brakes`); linear in the number of entries.
* ``hybrid_auon``: HybridAuON's direction, one Keller Newton-Schulz step then the brake (which
  renormalizes to unit Frobenius norm).
* ``torch_muon``: ``torch.optim._muon._zeropower_via_newtonschulz`` as shipped, with
  ``torch.optim.Muon``'s default coefficients, steps and eps. It casts to bfloat16 internally: on a
  CPU without native bf16 matmul (``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` false) it runs
  one to several hundred times slower than float32 (docs/benchmarks.md), hence the run's
  per-measurement time budget (:mod:`steepest.bench.kernels`).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..geometry.frobenius import Frobenius
from ..optim.auon import cosh_brakes
from ..polar import SCHEDULES, polar
from .kernel_config import BACKEND_NAMES, NS_EPS, NS_SCHEDULES, TORCH_MUON_DEFAULTS
from .kernel_shapes import ns_flops

__all__ = ["Backend", "build_backends"]


@dataclass
class Backend:
    """One way of computing an update direction from a float32 matrix.

    Attributes:
        name: key in the results.
        label: human-readable description for the report.
        fn: ``G -> O`` (must not modify ``G``).
        steps: Newton-Schulz steps whose matmuls are counted (0: no FLOP count, ms only).
        dtype: the iteration dtype, for the report.
        available: False when the backend cannot run here (``reason`` says why).
    """

    name: str
    label: str
    fn: Callable[[Tensor], Tensor] | None
    steps: int
    dtype: str
    available: bool = True
    reason: str | None = None

    def flops(self, m: int, n: int) -> int | None:
        return ns_flops(m, n, self.steps) if self.steps else None

    def describe(self) -> dict:
        return {"name": self.name, "label": self.label, "steps": self.steps, "dtype": self.dtype,
                "flops_counted": bool(self.steps), "available": self.available, "reason": self.reason}


def _ns_backend(name: str) -> Backend:
    schedule = SCHEDULES[name]
    steps = schedule.default_steps

    def run(G: Tensor) -> Tensor:
        return polar(G, name, steps, torch.float32, NS_EPS)

    return Backend(name, f"steepest NS `{name}` ({steps} steps, float32)", run, steps, "float32")


_FROBENIUS = Frobenius()


def _auon(G: Tensor) -> Tensor:
    X = _FROBENIUS.lmo(G)
    return X.mul_(cosh_brakes([X])[0])


def _hybrid_auon(G: Tensor) -> Tensor:
    Y = polar(G, "keller", 1, torch.float32, NS_EPS)
    return Y.mul_(cosh_brakes([Y])[0])


def _torch_muon_backend() -> Backend:
    """``torch.optim.Muon``'s Newton-Schulz with the optimizer's default arguments, or why not."""
    label = "torch.optim.Muon NS (bfloat16 inside)"
    try:
        from torch.optim import _muon
        fn = _muon._zeropower_via_newtonschulz
    except (ImportError, AttributeError) as exc:
        return Backend("torch_muon", label, None, 0, "bfloat16", False,
                       f"unavailable: torch {torch.__version__} has no "
                       f"torch.optim._muon._zeropower_via_newtonschulz ({type(exc).__name__})")
    params = list(inspect.signature(fn).parameters)
    if params[:4] != ["grad", "ns_coefficients", "ns_steps", "eps"]:
        return Backend("torch_muon", label, None, 0, "bfloat16", False,
                       f"unavailable: unexpected signature _zeropower_via_newtonschulz({', '.join(params)})")
    defaults = dict(TORCH_MUON_DEFAULTS)
    try:
        sig = inspect.signature(torch.optim.Muon).parameters
        for key in defaults:
            if key in sig and sig[key].default is not inspect.Parameter.empty:
                defaults[key] = sig[key].default
    except (AttributeError, TypeError, ValueError):
        pass
    coefficients = tuple(float(c) for c in defaults["ns_coefficients"])
    steps, eps = int(defaults["ns_steps"]), float(defaults["eps"])

    def run(G: Tensor) -> Tensor:
        return fn(G, coefficients, steps, eps)

    return Backend("torch_muon", f"torch.optim.Muon NS ({steps} steps, bfloat16 inside)", run, steps,
                   "bfloat16")


def build_backends(names=BACKEND_NAMES) -> dict[str, Backend]:
    """The backends named, in the given order."""
    out: dict[str, Backend] = {}
    for name in names:
        if name in NS_SCHEDULES:
            out[name] = _ns_backend(name)
        elif name == "svd":
            out[name] = Backend("svd", "steepest exact polar by SVD (float32)",
                                lambda G: polar(G, "svd", dtype=torch.float32), 0, "float32")
        elif name == "auon":
            out[name] = Backend("auon", "AuON: G/||G||_F times the cosh brake (float32)", _auon, 0, "float32")
        elif name == "hybrid_auon":
            out[name] = Backend("hybrid_auon", "HybridAuON: 1 Keller NS step + renormalize + brake (float32)",
                                _hybrid_auon, 1, "float32")
        elif name == "torch_muon":
            out[name] = _torch_muon_backend()
        else:
            raise ValueError(f"unknown kernel backend {name!r}")
    return out
