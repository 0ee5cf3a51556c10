"""What the presets with a gradient window per param group share (M-FAC and RegularizedNewton's
Fisher mode): unlabelled groups stay whole, and the parameters with gradients must be the same at
every step, because the window spans every parameter of its group."""
from __future__ import annotations

from typing import Any, Callable

import torch

from .engine import GeometryOptimizer


class WindowOptimizer(GeometryOptimizer):
    """A :class:`GeometryOptimizer` whose groups each keep one gradient window
    (``fisher_window.FisherWindow``). Error messages name the preset by its class."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; an unlabelled group stays one group (one window), with role ``""``."""
        group = dict(param_group)
        group.setdefault("role", "")
        super().add_param_group(group)

    def _windowed(self, group: dict[str, Any]) -> bool:
        """Whether ``group`` keeps a gradient window (every group, unless a subclass says otherwise)."""
        return True

    def _window_step(self, closure: Callable[[], Any] | None, second_grads: Any) -> Any:
        """The closure's loss (if any), the window checks, then the engine's step."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_windows()
        GeometryOptimizer.step(self, second_grads=second_grads)
        return loss

    def _check_windows(self) -> None:
        """Exact errors, before anything moves, when a parameter of a group that has stepped lost (or
        gained) its gradient, or a group's ``ngrads`` changed after its first step."""
        name = type(self).__name__
        for gi, group in enumerate(self.param_groups):
            if not self._windowed(group):
                continue
            params = group["params"]
            has_grad = [p.grad is not None for p in params]
            states = [self.state.get(p) or {} for p in params]
            has_window = [float(s["step"]) > 0 if "step" in s else False for s in states]  # holds gradients
            if not any(has_grad) or not any(has_window):
                continue  # the group is skipped at this step, or this is its first step
            for pi, (grad, window) in enumerate(zip(has_grad, has_window)):
                if window and not grad:
                    raise ValueError(
                        f"{name}: parameter {self._param_name(gi, pi)!r} has no gradient at this step, but "
                        f"its group's gradient window holds it (the window spans every parameter of the "
                        f"group, so the parameters with gradients must be the same at every step); give "
                        f"it a zero gradient instead, or put it in a param group of its own")
                if grad and not window:
                    raise ValueError(
                        f"{name}: parameter {self._param_name(gi, pi)!r} has a gradient at this step, but it "
                        f"had none at its group's first step (the window spans every parameter of the "
                        f"group, so the parameters with gradients must be the same at every step); put it "
                        f"in a param group of its own")
            rows = next(s["grad_window"].shape[0] for s, held in zip(states, has_window) if held)
            if rows != group["ngrads"]:
                raise ValueError(f"{name}: group {gi} has ngrads={group['ngrads']} but its gradient window "
                                 f"holds {rows} gradients; ngrads cannot change after the group's first step")
