"""``torch.compile`` for the library's pure kernels: one compiled function per kernel, per process.

The optimizers' ``compile`` setting (``"auto"``, ``True`` or ``False``) decides, per tensor device,
whether a kernel runs compiled (:func:`resolve_compile`); :func:`kernel` then hands out the eager
function or its compiled twin. What is compiled are the pure kernels, never the optimizer step:
the Newton-Schulz iteration (``steepest.polar.newton_schulz``) and the elementwise state
transforms of stage 1 (``steepest.optim.transforms``: momentum/Nesterov, Adam, Lion, diffGrad).
The step's Python (grouping, validation, state bookkeeping, the scalar step sizes) stays eager, so
an optimizer never holds a compiled callable and pickles, deep-copies and checkpoints as before.

How the kernels are compiled, and why:

- ``fullgraph=True``: every kernel traces as one graph (no graph breaks). Kernels are written for
  it: scalars that change every step (Adam's bias corrections) are computed outside the kernel
  and passed in as Python floats, which dynamo keeps symbolic (``specialize_float=False``, the
  default), so a new step count is not a recompile.
- ``dynamic=True``: one graph serves every shape of the same rank (and orientation). With static
  shapes every matrix shape is a graph of its own, and dynamo allows only
  ``torch._dynamo.config.recompile_limit`` (8) graphs per function; under ``fullgraph=True``
  passing it is an error, not a fallback. A model's kernels need a handful of graphs (rank 1-4,
  Nesterov or not, tall or wide, 2-D or a batched stack; a dimension of size 1 is specialized).
  Measured on this library's CPU machine the dynamic graphs are as fast as the static ones (the
  Newton-Schulz time is in the matrix products, which are BLAS calls either way).
- If a process still exceeds the limit (many distinct variants, e.g. a long test session), the
  call runs eagerly instead, with a ``RuntimeWarning`` naming the kernel; results stay correct.
  Raise ``torch._dynamo.config.recompile_limit`` yourself if you need more; this module never
  changes torch's global configuration.

The cache below is keyed by the eager function and holds its compiled wrapper; it is a cache, not
a switch: nothing in it changes what any call computes beyond "compiled or not", which the caller
chooses per call.

``compile="auto"`` (the optimizers' default) runs every kernel eagerly: nowhere has compiling
measured faster. ``compile=True`` compiles both kernel families on any device.

On CUDA (an H100, a GPT-2-small-shaped model, ``python benchmarks/compile_cuda.py``) compiling
Newton-Schulz changed nothing, its time being in the matrix products, which are cuBLAS calls either
way, and compiling the transforms as well made the Muon step slower: they run once per parameter
(141 compiled calls per step there), and each compiled call's guard checks cost more than the
fused passes save. On the CPU compiling does not pay either: Newton-Schulz is bound by its BLAS
products, the compiled elementwise transforms lose to their guards on small tensors and win only on
large ones, a whole Muon or Lion step of the benchmark GPT is slower compiled, and the first
compiled step takes seconds (every new kernel variant seconds more). The numbers, with the machines
and versions that measured them, are in docs/benchmarks.md (the torch.compile section and
"Measurements behind the defaults"); ``steepest bench kernels`` measures the per-kernel table on
any machine.

(With several threads on an oversubscribed CPU the eager transforms look much worse, since every
multi-threaded op waits for descheduled threads at its barrier; a fused kernel has fewer barriers.
That is an artefact of the shared machine, not a reason to compile by default.) The reference
implementations (modded-nanogpt, Dion) compile Newton-Schulz and fused updates; this library's
batched eager kernels gave them nothing to gain in the measurement above, so ``"auto"`` stays
eager until a measurement says otherwise.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, Callable

import torch

#: the accepted values of ``compile=`` (for messages and docs)
COMPILE_CHOICES: tuple[Any, ...] = ("auto", True, False)

_CACHE: dict[Callable, "CompiledKernel"] = {}


def _limit_errors() -> tuple[type[BaseException], ...]:
    """dynamo's "recompile limit hit under fullgraph=True" exception(s), by the names torch has used."""
    try:
        from torch._dynamo import exc
    except ImportError:  # pragma: no cover - torch without dynamo
        return ()
    names = ("FailOnRecompileLimitHit", "FailOnCacheLimitHit")
    return tuple(getattr(exc, n) for n in names if isinstance(getattr(exc, n, None), type))


class CompiledKernel:
    """``torch.compile(fn, fullgraph=True, dynamic=True)``, falling back to ``fn`` (with a warning)
    when dynamo's recompile limit for ``fn`` is reached. Build it with :func:`compiled`."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.compiled = torch.compile(fn, fullgraph=True, dynamic=True)
        self._limit_errors = _limit_errors()
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.compiled(*args, **kwargs)
        except self._limit_errors:
            # raised before the graph runs (while looking for a cache entry), so nothing was modified
            warnings.warn(f"steepest: torch.compile of {self.fn.__qualname__} reached "
                          f"torch._dynamo.config.recompile_limit; this call runs eagerly (raise the "
                          f"limit to compile more variants)", RuntimeWarning, stacklevel=2)
            return self.fn(*args, **kwargs)

    def __reduce__(self):
        return compiled, (self.fn,)  # a copy is the same process-wide kernel


def compiled(fn: Callable) -> CompiledKernel:
    """The process-wide compiled twin of the pure kernel ``fn`` (built on first use, compiled
    lazily by torch on its first call)."""
    kernel_ = _CACHE.get(fn)
    if kernel_ is None:
        kernel_ = _CACHE.setdefault(fn, CompiledKernel(fn))
    return kernel_


def kernel(fn: Callable, compile: bool) -> Callable:
    """``fn`` itself, or its compiled twin when ``compile`` is true."""
    return compiled(fn) if compile else fn


def resolve_compile(setting: bool | str, device: torch.device) -> bool:
    """Whether kernels on ``device`` run compiled under the ``compile=`` ``setting``:
    ``True``/``False`` as given; ``"auto"`` is eager on every device (see the module docstring
    for the measurements; ``device`` is where a future measured gain would be decided)."""
    if setting is True or setting is False:
        return setting
    return False


__all__ = ["COMPILE_CHOICES", "CompiledKernel", "compiled", "kernel", "resolve_compile"]
