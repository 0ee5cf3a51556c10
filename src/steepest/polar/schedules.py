"""Named Newton-Schulz coefficient schedules for the polar factor.

Every schedule applies the odd quintic step ``X <- a X + b (X X^T) X + c (X X^T)^2 X`` to the wide
orientation of ``X`` after ``X <- X / (input_scale * ||X||_F + eps)``; each step acts on every
singular value independently as ``x <- a x + b x^3 + c x^5``. A schedule is a list of ``(a, b, c)``
tuples; asking for more steps than listed repeats the last tuple.

Sources:

- ``keller``: (3.4445, -4.7750, 2.0315) for 5 steps, from Keller Jordan's Muon
  (github.com/KellerJordan/Muon) and the default of ``torch.optim.Muon``. It does not converge to ``U V^T``: singular values land roughly in
  [0.68, 1.13] for sigma >= 1e-2 ||X||_F, which trains just as well; below that the five-fold
  composition peaks at 1.20 near sigma = 4e-3 ||X||_F (measured on square Gaussian inputs by
  ``steepest bench kernels``) and falls to 0.47 at 1e-3.
- ``you``: the 6-step schedule with rational coefficients /1024 attributed to You Jiacheng (his
  post x.com/YouJiacheng/status/1893704552689303901; modula's docs list it too); output
  singular values in [0.87, 0.9993] for sigma >= 1e-3 ||X||_F.
- ``quintic``: the 5-step schedule used by modded-nanogpt (github.com/KellerJordan/modded-nanogpt)
  and Dion's Muon (github.com/microsoft/dion).
- ``polar_express``: Polar Express (Amsel, Persson, Musco, Gower; arXiv 2505.16932), the 5-step list
  designed for sigma_min/sigma_max >= 1e-3 with the 2e-2 safety factor baked in, input scaled by
  1.02 ||X||_F (the modded-nanogpt / Dion list). Output range [0.85, 1.14].
- ``polar_express_8``: the paper's 8-polynomial list (safety 1e-2 divided into all but the last),
  input scaled by 1.01 ||X||_F; converges to the polar factor to fp64 precision for
  sigma >= 1e-3 ||X||_F.

The ``svd`` schedule name (exact polar factor) is handled by :mod:`steepest.polar.svd`.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

Coefficients = tuple[float, float, float]


@dataclass(frozen=True)
class Schedule:
    """A Newton-Schulz coefficient schedule.

    Attributes:
        name: registry name.
        coefficients: per-iteration ``(a, b, c)``; the last repeats past the end.
        default_steps: steps used when the caller does not ask for a number.
        input_scale: the input is divided by ``input_scale * ||X||_F + eps``.
        band: documented output range of the singular values for inputs whose singular values
            are >= 1e-2 of the Frobenius norm (tests check this).
    """

    name: str
    coefficients: tuple[Coefficients, ...]
    default_steps: int
    input_scale: float
    band: tuple[float, float]

    def coefficients_for(self, steps: int) -> list[Coefficients]:
        """The ``(a, b, c)`` list for ``steps`` iterations (the last tuple repeats)."""
        listed = list(self.coefficients[:steps])
        listed += [self.coefficients[-1]] * (steps - len(listed))
        return listed


_YOU = tuple(
    (a / 1024, b / 1024, c / 1024)
    for a, b, c in [
        (3955, -8306, 5008),
        (3735, -6681, 3463),
        (3799, -6499, 3211),
        (4019, -6385, 2906),
        (2677, -3029, 1162),
        (2172, -1833, 682),
    ]
)


def _with_safety(polys: list[Coefficients], safety: float) -> tuple[Coefficients, ...]:
    """Divide every polynomial but the last by (1+safety)^{1,3,5} (Polar Express's safety step)."""
    s = 1.0 + safety
    out = [(a / s, b / s**3, c / s**5) for a, b, c in polys[:-1]]
    return tuple(out + [polys[-1]])


_PE8_RAW = [
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
]

SCHEDULES: dict[str, Schedule] = {
    "keller": Schedule("keller", ((3.4445, -4.7750, 2.0315),), 5, 1.0, (0.68, 1.14)),
    "you": Schedule("you", _YOU, 6, 1.0, (0.99, 1.0)),
    "quintic": Schedule(
        "quintic",
        (
            (4.0848, -6.8946, 2.9270),
            (3.9505, -6.3029, 2.6377),
            (3.7418, -5.5913, 2.3037),
            (2.8769, -3.1427, 1.2046),
            (2.8366, -3.0525, 1.2012),
        ),
        5,
        1.0,
        (0.97, 1.04),
    ),
    "polar_express": Schedule(
        "polar_express",
        (
            (8.156554524902461, -22.48329292557795, 15.878769915207462),
            (4.042929935166739, -2.808917465908714, 0.5000178451051316),
            (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
            (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
            (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
        ),
        5,
        1.02,
        (0.85, 1.15),
    ),
    "polar_express_8": Schedule("polar_express_8", _with_safety(_PE8_RAW, 0.01), 8, 1.01, (0.999, 1.001)),
}

#: Every name accepted by ``ns=``; ``svd`` is the exact polar factor.
SCHEDULE_NAMES: tuple[str, ...] = tuple(SCHEDULES) + ("svd",)


#: steps of a custom ``(a, b, c)`` schedule when none are asked for (torch.optim.Muon's ``ns_steps``)
CUSTOM_STEPS = 5


@functools.lru_cache(maxsize=64)
def custom_schedule(coefficients: Coefficients) -> Schedule:
    """The fixed ``(a, b, c)`` applied at every step (``torch.optim.Muon``'s ``ns_coefficients``),
    input scaled by ``||X||_F``. Its ``band`` is computed: the range of the scalar map
    ``x <- a x + b x^3 + c x^5`` composed :data:`CUSTOM_STEPS` times over ``x`` in ``[1e-2, 1]``
    (2,001 log-spaced points), as the named schedules' bands are stated."""
    a, b, c = coefficients
    outputs = []
    for i in range(2001):
        x = 10.0 ** (-2 + 2 * i / 2000)
        for _ in range(CUSTOM_STEPS):
            x = a * x + b * x**3 + c * x**5
            if not math.isfinite(x):
                break
        outputs.append(abs(x) if math.isfinite(x) else math.inf)
    name = f"({a:g}, {b:g}, {c:g})"
    return Schedule(name, (coefficients,), CUSTOM_STEPS, 1.0, (min(outputs), max(outputs)))


def get_schedule(name: str | Coefficients) -> Schedule:
    """Look up a Newton-Schulz schedule by name, or build the fixed schedule of an ``(a, b, c)``
    tuple (``svd`` is not a schedule: see ``polar``)."""
    if isinstance(name, tuple):
        return custom_schedule(tuple(float(v) for v in name))
    try:
        return SCHEDULES[name]
    except KeyError:
        raise ValueError(
            f"Unknown Newton-Schulz schedule {name!r}; expected one of: {', '.join(SCHEDULE_NAMES)}"
        ) from None
