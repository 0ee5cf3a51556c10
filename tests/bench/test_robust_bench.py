"""``steepest bench robust``: the report's tables, the fitted growth exponents and the cost timer (the
4-rank training launch itself runs in tests/distributed/test_robust_aggregation.py)."""
from __future__ import annotations

import pytest

from steepest.bench.robust import RobustConfig, aggregation_cost, growth_exponents, render


def _run(acc, loss, ms):
    return {"test_accuracy": acc, "final_loss": loss, "step_ms": ms, "replica_spread": 0.0}


def test_render_tables():
    runs = {"mean:none": _run(0.85, 0.8, 2.0), "mean:scale": _run(0.02, 7.4, 2.2),
            "flag:none": _run(0.86, 0.9, 5.0), "flag:scale": _run(0.84, 1.1, 5.4)}
    cost = [{"workers": p, "dim": n, "ms": {"mean": 0.01 * p * n / 1e4, "flag": 0.1 * p * p * n / 1e4}}
            for n in (10_000, 100_000) for p in (4, 8)]
    results = {"config": {"rules": ["mean", "flag"], "attacks": ["none", "scale"], "repeats": 3},
               "environment": {"processor": "cpu", "cpu_count": 2, "torch": "x"}, "threads": 1,
               "training": {"runs": runs, "hidden": 32, "world": 4, "steps": 40, "attacker": 1},
               "cost": cost, "growth": growth_exponents(cost)}
    text = render(results)
    assert "| mean | 0.850 (0.800) | 0.020 (7.400) |" in text
    assert "| flag | 0.860 (0.900) | 0.840 (1.100) |" in text
    assert "| mean | 2.10 | 1.00x |" in text  # the median over the attacks, against the mean's
    assert "| flag | 5.20 | 2.48x |" in text
    assert "| 8 | 100,000 | 0.80 | 64.00 | 80.0x |" in text
    assert "flag a=2.00, b=1.00" in text and "mean a=1.00, b=1.00" in text


def test_growth_exponents_recover_power_laws():
    cost = [{"workers": p, "dim": n, "ms": {"mean": p * n * 1e-6, "flag": p ** 3 * 1e-3 + 0 * n}}
            for n in (1000, 10_000, 100_000) for p in (4, 8, 16)]
    growth = growth_exponents(cost)
    assert growth["mean"]["workers"] == pytest.approx(1.0) and growth["mean"]["dim"] == pytest.approx(1.0)
    assert growth["flag"]["workers"] == pytest.approx(3.0) and growth["flag"]["dim"] == pytest.approx(0.0, abs=1e-9)


def test_aggregation_cost_times_every_rule():
    rows = aggregation_cost(workers=(4,), dims=(64, 128), repeats=1)
    assert [(r["workers"], r["dim"]) for r in rows] == [(4, 64), (4, 128)]
    assert all(set(r["ms"]) == {"mean", "median", "trimmed_mean", "flag"} and min(r["ms"].values()) > 0 for r in rows)


def test_config_errors():
    with pytest.raises(ValueError, match=r"^unknown aggregation rule\(s\) krum; choose from mean, median, trimmed_mean, flag$"):
        RobustConfig(rules=("krum",))
    with pytest.raises(ValueError, match=r"^unknown attack\(s\) alie; choose from none, sign_flip, scale, noise$"):
        RobustConfig(attacks=("alie",))
    with pytest.raises(ValueError, match=r"^robust aggregation needs world >= 3 \(one attacker, trimmed mean trim=1\); got 2$"):
        RobustConfig(world=2)


def test_cli_options_of_the_new_commands(capsys, tmp_path, monkeypatch):
    from steepest.bench import spd_covariance
    from steepest.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "robust", "--world", "2"])
    assert "robust aggregation needs world >= 3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--world", "4"])
    assert "--world does not apply to `steepest bench suite` (it applies to: robust)" in capsys.readouterr().err
    calls = []

    def fake_run(out, quick=False, **kwargs):
        calls.append((quick, kwargs["seeds"]))
        (out / "report.md").parent.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text("# spd\n", encoding="utf-8")

    monkeypatch.setattr(spd_covariance, "run", fake_run)
    assert main(["bench", "spd", "--quick", "--seeds", "3", "--out", str(tmp_path / "spd"), "--no-progress"]) == 0
    assert calls == [(True, (3,))]
    assert main(["bench", "langevin", "--smoke", "--out", str(tmp_path / "lang")]) == 0
    assert "planted direction" in (tmp_path / "lang" / "report.md").read_text(encoding="utf-8")
