"""``explain(optimizer)``: a table of what every parameter gets (role, geometry, effective lr)."""
from __future__ import annotations

from typing import Any

from .optim.engine import GeometryOptimizer

COLUMNS = ("parameter", "shape", "role", "geometry", "update", "lr", "effective lr", "weight decay")


def explain_rows(optimizer: GeometryOptimizer) -> list[dict[str, Any]]:
    """One dict per parameter with the columns of :func:`explain` (values unformatted).

    ``effective lr`` is stage 3's step size at the group's current lr (``lr * radius *
    shape_scale``); for AdamW-style groups it is the lr that multiplies Adam's direction.
    ``lmo on`` says where stage 2 runs (:meth:`GeometryOptimizer.lmo_placement`); :func:`explain`
    shows it for distributed optimizers.
    """
    if not isinstance(optimizer, GeometryOptimizer):
        raise TypeError(f"explain() needs a steepest optimizer, got {type(optimizer).__name__}")
    rows = []
    for gi, group in enumerate(optimizer.param_groups):
        geom = optimizer.geometry(group)
        names = group.get("param_names")
        update = optimizer.describe_update(group)
        placement = optimizer.lmo_placement(group)
        for pi, p in enumerate(group["params"]):
            rows.append({
                "parameter": names[pi] if names else f"group{gi}.param{pi}",
                "shape": tuple(p.shape),
                "role": group["role"] or "-",
                "geometry": geom.describe() + (f" r={group['radius']:g}" if group["radius"] != 1.0 else ""),
                "update": update,
                "lr": float(group["lr"]),
                "effective lr": optimizer.effective_lr(group, p),
                "weight decay": group["weight_decay"],
                "lmo on": placement[pi],
            })
    return rows


def explain(optimizer: GeometryOptimizer) -> str:
    """A plain-text table: parameter, shape, role, geometry, update rule, lr, effective lr, weight decay."""
    rows = explain_rows(optimizer)
    cells = [[str(r["parameter"]), "x".join(map(str, r["shape"])) or "scalar", r["role"], r["geometry"],
              r["update"], f"{r['lr']:.4g}", f"{r['effective lr']:.4g}", f"{r['weight decay']:g}"] for r in rows]
    columns = COLUMNS
    if any(r["lmo on"] != "this process" for r in rows):  # distributed: where each LMO runs
        columns = COLUMNS + ("lmo on",)
        cells = [c + [r["lmo on"]] for c, r in zip(cells, rows)]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(columns)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(columns, widths)).rstrip(), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)
