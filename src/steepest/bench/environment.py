"""What benchmark numbers were measured on: Python, torch, threads, CPU model, bfloat16 support, and
the dtype ``ns_dtype="auto"`` picks for Newton-Schulz here (and why)."""
from __future__ import annotations

import os
import platform

import torch

from ..polar.dtype import auto_ns_dtype, native_bf16_matmul


def machine_info() -> dict:
    """What the numbers were measured on.

    Besides versions and the CPU: ``mkldnn_bf16_supported`` (oneDNN's own answer, ``None`` where
    this torch cannot tell), ``bf16_matmul_feature`` (the CPU instruction set that gives native
    bfloat16 matmul, ``amx_bf16`` or ``avx512_bf16``, or ``None``:
    :func:`steepest.polar.dtype.native_bf16_matmul`), ``ns_dtype_auto`` and
    ``ns_dtype_auto_reason`` (the dtype ``ns_dtype="auto"`` iterates in on the CPU, and the
    sentence saying why: :func:`steepest.polar.dtype.auto_ns_dtype`), and ``ns_dtype_auto_cuda``
    and ``ns_dtype_auto_cuda_reason``, the same for CUDA (``None`` when CUDA is unavailable).
    """
    try:
        bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # private API: absent or failing on some builds
        bf16 = None
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:
        capability = None
    cpu_dtype, cpu_reason = auto_ns_dtype("cpu")
    cuda_dtype, cuda_reason = auto_ns_dtype("cuda") if torch.cuda.is_available() else (None, None)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": _cpu_model() or platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": capability,
        "mkldnn_bf16_supported": bf16,
        "bf16_matmul_feature": native_bf16_matmul(),
        "ns_dtype_auto": _dtype_name(cpu_dtype),
        "ns_dtype_auto_reason": cpu_reason,
        "ns_dtype_auto_cuda": _dtype_name(cuda_dtype),
        "ns_dtype_auto_cuda_reason": cuda_reason,
    }


def _dtype_name(dtype: torch.dtype | None) -> str | None:
    """``torch.float32`` -> ``"float32"``."""
    return None if dtype is None else str(dtype).removeprefix("torch.")


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None
