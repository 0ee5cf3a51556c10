"""Sign geometry: the max-entry (l_inf) ball.

Norm ``max_ij |W_ij|``; LMO ``sign(G)``; dual norm ``sum_ij |G_ij|`` (l1). Steepest descent under it
is signSGD / Signum, and with Lion's interpolated momentum it is Lion (arXiv 2302.06675).

``shape_scale`` modes: ``none`` (1) or ``fan_in`` (``1/fan_in``: Scion's ``Sign(normalized=True)``,
the LMO of ``fan_in * max|W_ij|``, a cheap upper bound of the RMS->l_inf operator norm used for
output layers, arXiv 2502.07529).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Geometry, shape_fans, sum_over_rows


class Sign(Geometry):
    name = "sign"
    rowwise_lmo = True
    rowwise_dual_norm = True
    shape_scales = ("none", "fan_in")

    def lmo(self, x: Tensor) -> Tensor:
        return torch.sign(x)

    def lmo_(self, x: Tensor) -> Tensor:
        return x.sign_()

    def lmo_many_(self, xs: list[Tensor]) -> list[Tensor]:
        if len(xs) > 1 and len({(x.device, x.dtype) for x in xs}) == 1:
            torch._foreach_sign_(xs)  # one grouped call
            return xs
        return [x.sign_() for x in xs]

    def dual_norm(self, x: Tensor) -> Tensor:
        a = x.abs() if x.dtype in (torch.float32, torch.float64) else x.float().abs()
        rows = a.flatten(1).sum(dim=1) if a.ndim >= 2 else a  # a row shard's rows are whole
        return sum_over_rows(rows)

    def norm(self, w: Tensor) -> Tensor:
        return w.abs().amax() if w.numel() else w.new_zeros(())

    def shape_scale(self, shape) -> float:
        if self.shape_scale_mode == "fan_in":
            return 1.0 / shape_fans(shape)[1]
        return 1.0

    def init_(self, w: Tensor, scale: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """Random +-``scale`` entries (a vertex of the ball)."""
        bits = torch.randint(0, 2, w.shape, generator=generator, device=w.device)
        with torch.no_grad():
            w.copy_(((bits * 2 - 1) * scale).to(w.dtype))
        return w
