"""``matrix-sensing`` and ``matrix-sensing-asym``: recover a low-rank PSD matrix from linear measurements.

The testbed of Xiong, Ding and Du, "How Over-Parameterization Slows Down Gradient Descent in Matrix
Sensing: The Curses of Symmetry and Initialization" (arXiv:2310.01769, ICLR 2024). An unknown
rank-``r`` PSD matrix ``M*`` of size ``n x n`` is seen only through ``m`` linear measurements
``y_i = <A_i, M*>``, and is fitted with a factorisation of width ``k > r`` (over-parameterized) by
minimising ``L = 1/(2m) sum_i (<A_i, M> - y_i)^2``:

* ``matrix-sensing``: ``M = X X^T``, ``X`` of shape ``n x k``. The paper proves that gradient descent
  from a small random init slows from a linear rate (``k = r``) to ``Omega(1/T^2)`` here.
* ``matrix-sensing-asym``: ``M = F G^T``, ``F`` and ``G`` of shape ``n x k``; gradient descent
  converges linearly again, at a rate that depends on the init scale.

Plain gradient descent (lr 0.25, constant) on the default instance shows the first curse: with
``k = r = 2`` the error falls to 1e-7 within 200 steps, with ``k = 8`` it is still 6e-4 after 3000
and falling roughly like ``T^-0.7``. The asymmetric task's linear rate scales with ``alpha^2`` and
is not visible within 3000 steps at the default ``alpha = 1e-2`` (it is at ``alpha = 0.3``).

The metric is the relative recovery error ``||M - M*||_F / ||M*||_F``; its optimum 0 is known, so
convergence rates show on a log plot. Every step uses all ``m`` measurements (full-batch gradients):
the ``batch_size`` of :meth:`Task.trial` is ignored, and the budgets set it to the default ``m``
(400) to say so.

Setup (the defaults; each is an option of the task, named in brackets): ``n = 20`` (``n``),
``r = 2`` (``rank``), ``k = 8`` (``width``), ``m = 400`` (``measurements``, ten times ``n r``),
``||M*||_2 = 1`` (``scale``) and init scale ``alpha = 1e-2`` (``init_scale``).

* Ground truth: ``U`` with i.i.d. N(0, 1) entries, ``n x r``, rescaled to spectral norm
  ``sqrt(scale)``, and ``M* = U U^T``, so ``||M*||_2 = scale`` (``||M*||_F`` is between ``scale``
  and ``sqrt(r) scale``).
* Measurements: ``B_i`` with i.i.d. N(0, 1) entries, ``n x n``. The symmetric task uses
  ``A_i = (B_i + B_i^T) / 2``; the asymmetric one uses ``A_i = B_i`` (so that the measurements also
  see the antisymmetric part of ``F G^T``). For a matrix ``M`` that either operator sees fully
  (symmetric, resp. any), ``<A_i, M> ~ N(0, ||M||_F^2)``: the operator is isotropic in expectation,
  ``E[(1/m) sum_i <A_i, M>^2] = ||M||_F^2``.
* Init: ``X`` (or ``F``, ``G``) with i.i.d. N(0, alpha^2 scale / n) entries: each column has an
  expected norm of ``alpha sqrt(scale)``, small against the true factor's spectral norm
  ``sqrt(scale)``.

The budgets decay the lr to 1 % of its peak (``final_lr_fraction = 0.01``) so that the last steps
show how close each optimizer gets, not how large its steady-state jitter is. With the default
scale, the benchmark's default lrs of AdamW (4e-3) and Muon (0.02) bring the error from 1 to about
3e-4 in the quick budget (600 steps); the sign methods' defaults (Lion 6e-4, Signum 5e-4) move
every entry too little per step and reach only 0.15-0.25 there (twice their lr converges).

A trial with seed ``s`` draws ``U`` from a generator seeded with ``s``, the ``B_i`` from ``s + 1``
and the init from ``s + 2`` (``X``; or ``F`` then ``G``, so ``F`` equals the symmetric task's
``X``). The two tasks therefore share ``M*`` and the raw ``B_i`` for a given seed.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Budget, Task, Trial

SOURCE = ("Xiong, Ding, Du: How Over-Parameterization Slows Down Gradient Descent in Matrix Sensing: "
          "The Curses of Symmetry and Initialization (arXiv:2310.01769, ICLR 2024)")
#: option -> default: size n, true rank r, factor width k, measurements m, ||M*||_2, init scale alpha
DEFAULTS = {"n": 20, "rank": 2, "width": 8, "measurements": 400, "scale": 1.0, "init_scale": 1e-2}


class SymmetricFactor(nn.Module):
    """``M = X X^T`` with ``X`` of shape ``n x k``."""

    def __init__(self, x: torch.Tensor) -> None:
        super().__init__()
        self.X = nn.Parameter(x)

    def forward(self) -> torch.Tensor:
        return self.X @ self.X.T


class AsymmetricFactors(nn.Module):
    """``M = F G^T`` with ``F`` and ``G`` of shape ``n x k``."""

    def __init__(self, f: torch.Tensor, g: torch.Tensor) -> None:
        super().__init__()
        self.F = nn.Parameter(f)
        self.G = nn.Parameter(g)

    def forward(self) -> torch.Tensor:
        return self.F @ self.G.T


class SensingTrial(Trial):
    """One instance: the factor model, the measurement matrix ``(m, n*n)``, ``y`` and ``M*``."""

    def __init__(self, model: nn.Module, measurements: torch.Tensor, truth_factor: torch.Tensor) -> None:
        self.model = model
        self.roles = {name: "hidden" for name, _ in model.named_parameters()}
        self.truth_factor = truth_factor
        self.truth = truth_factor @ truth_factor.T
        self.measurements = measurements
        self.targets = measurements @ self.truth.reshape(-1)

    def loss_of(self, matrix: torch.Tensor) -> torch.Tensor:
        """``1/(2m) sum_i (<A_i, matrix> - y_i)^2``."""
        residual = self.measurements @ matrix.reshape(-1) - self.targets
        return 0.5 * residual.square().mean()

    def train_loss(self) -> torch.Tensor:
        return self.loss_of(self.model())

    def second_loss(self) -> torch.Tensor:
        """The same full-batch loss: this task has no sampling noise, so a second gradient at the
        same point equals the first (noise-adaptive factors stay 1)."""
        return self.train_loss()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        matrix = self.model()
        error = torch.linalg.matrix_norm(matrix - self.truth) / torch.linalg.matrix_norm(self.truth)
        return {"rel_error": error.item(), "train_loss": self.loss_of(matrix).item()}


class MatrixSensing(Task):
    """Over-parameterized symmetric matrix sensing, ``M = X X^T`` (see the module docstring).

    Options (defaults in :data:`DEFAULTS`): ``n``, ``rank``, ``width`` (``k``), ``measurements``
    (``m``), ``scale`` (``||M*||_2``) and ``init_scale`` (``alpha``).
    """

    name = "matrix-sensing"
    parameterisation = "X X^T"
    n_factors = 1
    metric = "rel_error"
    metric_label = "relative error ||M - M*||_F / ||M*||_F"
    metric_log_scale = True
    extra_metrics = ("train_loss",)
    # weight decay pulls the factors towards 0 and would bias the recovered matrix
    adamw_weight_decay = 0.0
    # Full batch: batch_size 400 (the default m) records that every step uses all measurements; the
    # trial ignores it. A step costs well under a millisecond, so a full trial takes about a second.
    budgets = {
        "smoke": Budget(steps=10, batch_size=400, eval_every=5, final_lr_fraction=0.01),
        "quick": Budget(steps=600, batch_size=400, eval_every=30, final_lr_fraction=0.01),
        "full": Budget(steps=1500, batch_size=400, eval_every=75, final_lr_fraction=0.01),
    }

    def __init__(self, **options) -> None:
        unknown = sorted(set(options) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"{self.name}: unknown option {unknown[0]!r}; expected one of {', '.join(DEFAULTS)}")
        super().__init__(**options)
        self.n, self.rank, self.width, self.m = (int(self.setting(k)) for k in ("n", "rank", "width", "measurements"))
        self.scale, self.alpha = float(self.setting("scale")), float(self.setting("init_scale"))
        if not 1 <= self.rank <= self.n:
            raise ValueError(f"{self.name}: rank must be between 1 and n = {self.n}, got {self.rank}")
        if self.width < 1 or self.m < 1:
            raise ValueError(f"{self.name}: width and measurements must be >= 1, got {self.width} and {self.m}")
        if not (self.scale > 0 and self.alpha > 0):
            raise ValueError(f"{self.name}: scale and init_scale must be > 0, got {self.scale} and {self.alpha}")

    def setting(self, key: str):
        """The value of option ``key``, or its default."""
        return self.options.get(key, DEFAULTS[key])

    def prepare(self) -> dict:
        return {"source": SOURCE, "parameterisation": self.parameterisation, "n": self.n, "r": self.rank,
                "k": self.width, "m": self.m, "alpha": self.alpha,
                "scale": self.scale, "ground_truth": "M* = U U^T, U Gaussian n x r rescaled to ||M*||_2 = scale",
                "measurements": self.measurement_description(),
                "init": "i.i.d. N(0, alpha^2 scale / n) entries",
                "batch": "full batch: every step uses all m measurements"}

    def measurement_description(self) -> str:
        return "A_i = (B_i + B_i^T) / 2, B_i i.i.d. N(0, 1) entries"

    def measurement_matrices(self, raw: torch.Tensor) -> torch.Tensor:
        """The ``A_i`` from the raw Gaussian ``B_i`` of shape ``(m, n, n)``."""
        return (raw + raw.transpose(1, 2)) / 2

    def make_model(self, generator: torch.Generator) -> nn.Module:
        return SymmetricFactor(self.init_factor(generator))

    def init_factor(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(self.n, self.width, generator=generator) * (self.alpha * (self.scale / self.n) ** 0.5)

    def trial(self, seed: int, batch_size: int) -> Trial:
        u = torch.randn(self.n, self.rank, generator=torch.Generator().manual_seed(seed))
        u = u * (self.scale ** 0.5 / torch.linalg.matrix_norm(u, ord=2))
        raw = torch.randn(self.m, self.n, self.n, generator=torch.Generator().manual_seed(seed + 1))
        measurements = self.measurement_matrices(raw).reshape(self.m, self.n * self.n)
        model = self.make_model(torch.Generator().manual_seed(seed + 2))
        return SensingTrial(model, measurements, u)

    def describe_model(self) -> str:
        return (f"M = {self.parameterisation}, {self.n_factors} factor(s) of {self.n} x {self.width}, for a "
                f"rank-{self.rank} {self.n} x {self.n} target from {self.m} measurements: "
                f"{self.n_factors * self.n * self.width:,} parameters")


class MatrixSensingAsym(MatrixSensing):
    """The same recovery with an asymmetric ``M = F G^T`` and unsymmetrised measurements."""

    name = "matrix-sensing-asym"
    parameterisation = "F G^T"
    n_factors = 2

    def measurement_description(self) -> str:
        return "A_i = B_i, i.i.d. N(0, 1) entries (not symmetrised)"

    def measurement_matrices(self, raw: torch.Tensor) -> torch.Tensor:
        return raw

    def make_model(self, generator: torch.Generator) -> nn.Module:
        return AsymmetricFactors(self.init_factor(generator), self.init_factor(generator))
