"""The known-bug table names real parametrizations of the properties."""
from __future__ import annotations

from properties.invalid_cases import INVALID_COMBOS, KNOB_CASES
from properties.known_bugs import _XFAIL
from properties.test_finite_updates import EDGE_COMBOS, FINITE_COMBOS, ZERO_SIZE_COMBOS
from properties.test_lmo_identity import LMO_COMBOS
from properties.test_polar_band import POLAR_COMBOS, POLAR_SCALE_COMBOS
from properties.test_state_dict_resume import RESUME_COMBOS

ALL_COMBOS: dict[str, list[tuple]] = {
    "lmo": LMO_COMBOS, "polar": POLAR_COMBOS, "polar_scale": POLAR_SCALE_COMBOS, "finite": FINITE_COMBOS,
    "finite_edge": EDGE_COMBOS, "zero_size": ZERO_SIZE_COMBOS, "resume": RESUME_COMBOS, "invalid": INVALID_COMBOS,
    "invalid_knobs": [(name,) for name in KNOB_CASES],
}


def test_known_bug_ids_exist():
    """Every (test, id) of KNOWN_BUGS names a real parametrization (a typo would silently unmark it)."""
    real = {(test, "-".join(map(str, combo))) for test, combos in ALL_COMBOS.items() for combo in combos}
    unknown = sorted(case for case in _XFAIL if case not in real)
    assert not unknown, unknown
