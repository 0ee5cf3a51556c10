"""Choosing the dtype that orthogonalization iterates in.

Policy of ``ns_dtype="auto"`` (:func:`auto_ns_dtype`), decided from the device and, on the CPU, from
the instruction sets the CPU reports (``torch.cpu.get_capabilities()``), never from a timing:

* CUDA: bfloat16, as in every reference implementation (tensor cores).
* CPU with native bfloat16 matrix instructions, AMX-BF16 (``amx_bf16``, Intel Sapphire Rapids and
  later) or AVX512-BF16 (``avx512_bf16``): bfloat16. oneDNN runs bfloat16 matmul there on those
  instructions, at a multiple of float32's throughput, and the iteration's accuracy in bfloat16 is
  tested for every schedule (the ``polar_band`` property allows 0.06 outside the band).
* Any other CPU: float32. Without those instructions a bfloat16 matmul falls back to a reference
  path one to several hundred times slower than float32 (docs/benchmarks.md has the measurement).
* Other devices (MPS, XPU, ...): float32.

``steepest bench kernels`` times both dtypes per shape on the machine it runs on and its report
says which one auto chose and why, so the choice can be checked where it matters. ``ns_dtype``
overrides the choice with a name or a ``torch.dtype``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

NS_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
NS_DTYPE_NAMES: tuple[str, ...] = ("auto",) + tuple(NS_DTYPES)

#: CPU features (names as ``torch.cpu.get_capabilities()`` spells them) that give native bfloat16
#: matrix multiplication, strongest first.
BF16_MATMUL_FEATURES: tuple[str, ...] = ("amx_bf16", "avx512_bf16")


def cpu_capabilities() -> Mapping[str, Any]:
    """The CPU's instruction-set flags as torch detects them (``torch.cpu.get_capabilities()``,
    cached by torch); an empty mapping where this torch build cannot tell."""
    getter = getattr(torch.cpu, "get_capabilities", None)
    if getter is None:
        return {}
    try:
        return getter()
    except Exception:  # a build without cpuinfo support
        return {}


def native_bf16_matmul(capabilities: Mapping[str, Any] | None = None) -> str | None:
    """The first of :data:`BF16_MATMUL_FEATURES` the CPU has, or ``None``.

    ``capabilities`` defaults to :func:`cpu_capabilities`; pass a mapping to ask about another CPU.
    """
    caps = cpu_capabilities() if capabilities is None else capabilities
    for feature in BF16_MATMUL_FEATURES:
        if caps.get(feature):
            return feature
    return None


def auto_ns_dtype(device: torch.device | str, capabilities: Mapping[str, Any] | None = None
                  ) -> tuple[torch.dtype, str]:
    """What ``ns_dtype="auto"`` iterates in on ``device``, and why (one sentence).

    ``capabilities`` (CPU only) defaults to this machine's (:func:`cpu_capabilities`).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16, "bfloat16 on CUDA (tensor-core matmul)"
    if device.type != "cpu":
        return torch.float32, f"float32 on {device.type} (no bfloat16 policy for this device)"
    feature = native_bf16_matmul(capabilities)
    if feature is not None:
        return torch.bfloat16, f"bfloat16: the CPU has {feature} (native bfloat16 matmul)"
    return torch.float32, ("float32: the CPU has neither " + " nor ".join(BF16_MATMUL_FEATURES)
                           + " (bfloat16 matmul would take a slow reference path)")


def resolve_ns_dtype(name: str, device: torch.device, capabilities: Mapping[str, Any] | None = None) -> torch.dtype:
    """Map an ``ns_dtype`` name to a dtype for ``device`` (``"auto"``: :func:`auto_ns_dtype`)."""
    if name == "auto":
        return auto_ns_dtype(device, capabilities)[0]
    try:
        return NS_DTYPES[name]
    except KeyError:
        raise ValueError(
            f"Unknown ns_dtype {name!r}; expected one of: {', '.join(NS_DTYPE_NAMES)}"
        ) from None
