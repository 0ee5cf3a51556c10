"""Exact comparison of optimizer state dicts, shared by the round-trip tests."""
from __future__ import annotations

import torch


def assert_state_dicts_equal(a: dict, b: dict) -> None:
    """Two optimizer state dicts hold the same param groups, the same extra entries (such as
    ``nonfinite_skips``) and the same state: every tensor of ``state`` with the same dtype, shape and
    bits. A corrupted state must not hide behind parameters that happen to match, as those of
    sign-based updates do for a step or two."""
    assert a.keys() == b.keys()
    assert a["param_groups"] == b["param_groups"]
    for extra in a.keys() - {"state", "param_groups"}:
        assert a[extra] == b[extra], extra
    assert a["state"].keys() == b["state"].keys()
    for index, sa in a["state"].items():
        sb = b["state"][index]
        assert sa.keys() == sb.keys(), (index, sorted(sa), sorted(sb))
        for key, va in sa.items():
            vb = sb[key]
            if isinstance(va, torch.Tensor):
                assert isinstance(vb, torch.Tensor), (index, key)
                assert (va.dtype, va.shape) == (vb.dtype, vb.shape), f"state {key!r} of parameter {index}"
                assert torch.equal(va, vb), \
                    f"state {key!r} of parameter {index} differs: max |diff| {(va - vb).abs().max().item()}"
            else:
                assert va == vb, (index, key)
