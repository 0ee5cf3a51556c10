"""The orthogonalization backends ``steepest bench kernels`` times: each turns a float32 gradient
matrix into an update direction.

Backends (:data:`BACKEND_NAMES`):

* ``keller``, ``you``, ``quintic``, ``polar_express``, ``polar_express_8``: the library's
  Newton-Schulz schedules, called through :func:`steepest.polar.polar` in float32 with their
  default step counts, exactly as the spectral geometry calls it for a single matrix.
  Their form is ``"auto"``: the Gram form on float32 matrices where it needs fewer FLOPs
  (:func:`steepest.polar.choose_form`), whose FLOPs are then the ones counted.
* ``keller_direct``: ``keller`` in the direct form on every shape, to set the Gram form against.
* ``keller_bf16``, ``polar_express_bf16`` (:data:`BF16_BACKENDS`): the same call iterating in
  bfloat16 (the float32 input is cast, the output is bfloat16), what ``ns_dtype="bfloat16"`` or
  ``"auto"`` on a GPU or a CPU with native bfloat16 matmul runs. On a CPU without it they are
  one to several hundred times slower than float32, hence the run's per-measurement time budget
  (:mod:`steepest.bench.kernels`).
* ``auto``: ``polar(G, "keller")`` with no dtype, so the dtype is ``ns_dtype="auto"``'s choice
  for the input's device (:func:`steepest.polar.dtype.auto_ns_dtype`); its label and ``dtype`` say
  which dtype that resolved to and why. It repeats ``keller`` or ``keller_bf16`` through the
  library's own default, which is the point: it shows what a user who sets nothing gets.
* ``svd``: the exact polar factor by LAPACK SVD (float32, :func:`steepest.polar.svd_polar`).
* ``auon``: AuON's direction, the Frobenius LMO ``G / ||G||_F`` times the cosh brake
  (:func:`steepest.optim.auon.cosh_brakes`); linear in the number of entries.
* ``hybrid_auon``: HybridAuON's direction, one Keller Newton-Schulz step then the brake (which
  renormalizes to unit Frobenius norm).
* ``torch_muon``: ``torch.optim._muon._zeropower_via_newtonschulz`` as shipped, with
  ``torch.optim.Muon``'s default coefficients, steps and eps. It casts to bfloat16 internally, so it
  is budget-guarded like the ``_bf16`` backends and set against the bfloat16 matmul roofline.

Each backend's ``dtype`` is the dtype its matrix products run in; the run compares a FLOP-counted
backend with the same shape's products in that dtype.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..geometry.frobenius import Frobenius
from ..optim.auon import cosh_brakes
from ..polar import SCHEDULES, choose_form, polar
from ..polar.dtype import NS_DTYPES
from ..polar.newton_schulz import gram_flops
from ..polar.dtype import auto_ns_dtype
from .kernel_config import (AUTO_SCHEDULE, BACKEND_NAMES, BF16_BACKENDS, BF16_SUFFIX, DIRECT_BACKEND, NS_EPS,
                            NS_SCHEDULES, TORCH_MUON_DEFAULTS)
from .kernel_measure import dtype_name
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
        dtype: the dtype its matrix products run in (``float32`` or ``bfloat16``): the report
            sets its GFLOP/s against the same shape's products in that dtype.
        available: False when the backend cannot run here (``reason`` says why).
        form: the Newton-Schulz form (``"auto"``, ``"direct"``, ``"gram"``:
            :func:`steepest.polar.choose_form`); FLOPs are those of the form the shape runs in.
    """

    name: str
    label: str
    fn: Callable[[Tensor], Tensor] | None
    steps: int
    dtype: str
    available: bool = True
    reason: str | None = None
    form: str = "direct"

    def flops(self, m: int, n: int) -> int | None:
        if not self.steps:
            return None
        if choose_form(self.form, (m, n), self.steps, NS_DTYPES[self.dtype]) == "gram":
            return gram_flops(m, n, self.steps)
        return ns_flops(m, n, self.steps)

    def describe(self) -> dict:
        return {"name": self.name, "label": self.label, "steps": self.steps, "dtype": self.dtype,
                "form": self.form, "flops_counted": bool(self.steps), "available": self.available,
                "reason": self.reason}


def _ns_backend(name: str, schedule: str, dtype: torch.dtype, form: str = "auto") -> Backend:
    """Schedule ``schedule`` through :func:`polar` in ``dtype`` and ``form``, with its default step count."""
    steps = SCHEDULES[schedule].default_steps

    def run(G: Tensor) -> Tensor:
        return polar(G, schedule, steps, dtype, NS_EPS, form=form)

    shown = "" if form == "auto" else f", {form} form"
    return Backend(name, f"steepest NS `{schedule}` ({steps} steps, {dtype_name(dtype)}{shown})", run, steps,
                   dtype_name(dtype), form=form)


def _auto_backend() -> Backend:
    """:data:`AUTO_SCHEDULE` with the dtype left to ``ns_dtype="auto"`` (``polar`` resolves it for
    the input's device); the label names the dtype that resolves to for the benchmark's CPU inputs, and why."""
    dtype, reason = auto_ns_dtype("cpu")
    steps = SCHEDULES[AUTO_SCHEDULE].default_steps

    def run(G: Tensor) -> Tensor:
        return polar(G, AUTO_SCHEDULE, steps, None, NS_EPS)

    return Backend("auto", f"steepest NS `{AUTO_SCHEDULE}` ({steps} steps) with ns_dtype=\"auto\", which resolved "
                           f"to {dtype_name(dtype)} here (\"{reason}\")", run, steps, dtype_name(dtype), form="auto")


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
            out[name] = _ns_backend(name, name, torch.float32)
        elif name == DIRECT_BACKEND:
            out[name] = _ns_backend(name, AUTO_SCHEDULE, torch.float32, form="direct")
        elif name in BF16_BACKENDS:
            out[name] = _ns_backend(name, name.removesuffix(BF16_SUFFIX), torch.bfloat16)
        elif name == "auto":
            out[name] = _auto_backend()
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
