"""The spd-covariance benchmark: a tiny configuration runs every normalizer and writes its report."""
from __future__ import annotations

import json
import math

import pytest
import torch

from steepest.bench import spd_covariance
from steepest.bench.spd_covariance import NORMALIZERS, SPDCovarianceConfig, build_model, make_data, run

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = SPDCovarianceConfig(kappas=(10.0, 1e6), seeds=(0,), lr_multipliers=(1.0,), n=5, hidden=(4, 3), classes=3,
                           train_per_class=16, val_per_class=8, test_per_class=8, samples=10, epochs=1,
                           batch_size=16)


def test_tiny_run_has_every_normalizer_and_finite_accuracies(tmp_path, monkeypatch):
    # the geoopt peer is skipped cleanly when geoopt is missing (and importing geoopt takes seconds)
    monkeypatch.setattr(spd_covariance, "geoopt_available", lambda: False)
    results = run(tmp_path, config=TINY, log=None)
    expected = list(NORMALIZERS)
    assert results["variants"] == expected and list(results["summary"]) == expected
    assert results["peer_skipped"] and not results["geoopt"]
    for cells in results["summary"].values():
        assert list(cells) == ["10", "1e+06"]
        assert all(math.isfinite(c["test_mean"]) and 0 <= c["test_mean"] <= 1 for c in cells.values())
    assert len(results["runs"]) == len(expected) * 2
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["summary"] == results["summary"]
    report = (tmp_path / "report.md").read_text()
    assert all(f"| {v} |" in report for v in expected)
    assert "The geoopt peer was skipped: geoopt is not installed" in report


def test_data_and_models_are_fair():
    a, b = make_data(TINY, 10.0), make_data(TINY, 1e6)
    assert a["train"][0].shape == (48, 5, 5) and torch.equal(a["train"][1], b["train"][1])
    cond = torch.linalg.cond(b["train"][0])
    assert cond.median() > 1e5  # ill-conditioned at kappa 1e6
    none, gbw = build_model(TINY, "none", 3), build_model(TINY, "gbw", 3)
    assert torch.equal(none[0].weight, gbw[0].weight) and torch.equal(none[-1].weight, gbw[-1].weight)
    with pytest.raises(ValueError, match="^Unknown normalizer 'spd'; expected one of: none, lem, aim, bw, gbw$"):
        build_model(TINY, "spd", 0)
