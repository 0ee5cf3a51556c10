"""Choosing the dtype that orthogonalization iterates in.

Policy: the iteration dtype follows the device. On CPU it is float32: on CPUs without AVX512-BF16
or AMX, bfloat16 matmul falls back to a reference path that is two to three orders of magnitude
slower than float32 (docs/benchmarks.md has the measurement). On CUDA it is bfloat16, as in every
reference implementation. ``ns_dtype`` overrides the choice with a flat string.
"""
from __future__ import annotations

import torch

NS_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
NS_DTYPE_NAMES: tuple[str, ...] = ("auto",) + tuple(NS_DTYPES)


def resolve_ns_dtype(name: str, device: torch.device) -> torch.dtype:
    """Map an ``ns_dtype`` name to a dtype for ``device`` (``"auto"``: bfloat16 on CUDA, else float32)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return NS_DTYPES[name]
    except KeyError:
        raise ValueError(
            f"Unknown ns_dtype {name!r}; expected one of: {', '.join(NS_DTYPE_NAMES)}"
        ) from None
