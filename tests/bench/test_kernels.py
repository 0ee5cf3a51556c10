"""steepest.bench.kernels and kernel_report: the orthogonalization kernel micro-benchmark.

Every run here is tiny (matrices of at most 32 x 32), so the file takes a few seconds; timing
values are only checked for consistency (positive, GFLOP/s matching the FLOP formula), never for
speed, since the test machine may be busy.
"""
from __future__ import annotations

import json
import math
import sys
import time

import pytest
import torch
from torch import nn

from steepest.bench import environment, kernel_backends, kernel_measure, kernel_report, kernel_shapes, kernels
from steepest.bench.kernels import BACKEND_NAMES, KernelConfig, run_kernels
from steepest.polar import dtype as ns_dtype

GPT_SHAPES = {(384, 128), (128, 128), (512, 128), (128, 512)}


def tiny(**overrides) -> KernelConfig:
    values = dict(sizes=[16, 32], shapes=[(8, 32)], repeats=2, min_time_s=0.0, budget_s=5.0, deadline_s=None,
                  seed=1)
    values.update(overrides)
    return KernelConfig(**values)


@pytest.fixture(scope="module")
def results() -> dict:
    return run_kernels(tiny(), progress=False)


def by_key(results: dict) -> dict[tuple[str, str], dict]:
    return {(e["shape"], e["backend"]): e for e in results["measurements"]}


#: the roofline table of each matmul dtype
PRODUCTS_KEY = {"float32": "shape_products", "bfloat16": "shape_products_bf16"}


def test_config_presets_and_validation():
    quick, full = KernelConfig.quick_default(), KernelConfig.full_default()
    assert quick.quick and not full.quick
    assert max(quick.sizes) <= 1024 and max(full.sizes) == 2048 and full.budget_s >= quick.budget_s
    assert quick.backends == list(BACKEND_NAMES) and quick.shapes is None
    assert KernelConfig.quick_default(sizes=[64]).sizes == [64]
    d = tiny().to_dict()
    assert json.loads(json.dumps(d))["shapes"] == [[8, 32]]
    with pytest.raises(ValueError, match="unknown kernel backend 'cuda'"):
        KernelConfig(backends=["keller", "cuda"])
    with pytest.raises(ValueError, match="repeats"):
        KernelConfig(repeats=0)
    with pytest.raises(ValueError, match="budget_s"):
        KernelConfig(budget_s=0)


def test_ns_flops_formula():
    # per step: X X^T (2 m^2 n) + A A (2 m^3) + B X (2 m^2 n), on the wide orientation
    assert kernels.ns_flops(128, 512, 1) == 4 * 128 ** 2 * 512 + 2 * 128 ** 3
    assert kernels.ns_flops(512, 128, 5) == kernels.ns_flops(128, 512, 5) == 5 * kernels.ns_flops(128, 512, 1)


def test_every_backend_and_shape_measured(results):
    labels = [s["label"] for s in results["shapes"]]
    assert sorted(labels) == sorted(["8x32", "16x16", "32x32"])
    # measured cheapest first
    costs = [s["ns_flops_per_step"] for s in results["shapes"]]
    assert costs == sorted(costs)
    table = by_key(results)
    assert len(table) == len(labels) * len(BACKEND_NAMES)
    for label in labels:
        for name in BACKEND_NAMES:
            e = table[(label, name)]
            if name == "torch_muon" and e["status"] == "unavailable":
                continue  # an older torch without torch.optim.Muon
            assert e["status"] == "ok", e
            assert e["ms"] > 0 and e["min_ms"] > 0 and e["repeats"] >= 1
            assert all(t > 0 for t in e["times_ms"])
    assert [b["name"] for b in results["backends"]] == list(BACKEND_NAMES)


def test_gflops_follow_the_flop_formula(results):
    steps = {b["name"]: b["steps"] for b in results["backends"]}
    dtypes = {b["name"]: b["dtype"] for b in results["backends"]}
    assert steps["keller"] == 5 and steps["polar_express_8"] == 8 and steps["hybrid_auon"] == 1
    assert steps["keller_bf16"] == steps["auto"] == 5 and steps["polar_express_bf16"] == steps["polar_express"]
    peak = results["roofline"]["peak_gflops"]
    for e in results["measurements"]:
        if e["status"] != "ok":
            continue
        if e["backend"] in ("svd", "auon"):
            assert "gflops" not in e and e["gflop"] is None
            continue
        flops = kernels.ns_flops(e["m"], e["n"], steps[e["backend"]])
        assert e["gflop"] == pytest.approx(flops / 1e9)
        assert e["gflops"] == pytest.approx(flops / (e["ms"] / 1e3) / 1e9, rel=1e-9)
        assert e["pct_peak"] == pytest.approx(100 * e["gflops"] / peak)
        # % of same-size matmul: against the products in the backend's own dtype
        assert e["dtype"] == dtypes[e["backend"]]
        same = results["roofline"][PRODUCTS_KEY[e["dtype"]]][e["shape"]]
        assert same["dtype"] == e["dtype"] and same["status"] == "ok"
        assert e["pct_matmul"] == pytest.approx(100 * e["gflops"] / same["gflops"])
    table = by_key(results)
    for label in ("8x32", "16x16", "32x32"):
        torch_ms = table[(label, "torch_muon")].get("ms")
        if torch_ms:
            assert table[(label, "keller")]["vs_torch_muon"] == pytest.approx(torch_ms / table[(label, "keller")]["ms"])
            assert table[(label, "torch_muon")]["vs_torch_muon"] == pytest.approx(1.0)


def test_roofline_present(results):
    roof = results["roofline"]
    assert [p["n"] for p in roof["square"]] == [16, 32]
    for p in roof["square"]:
        assert p["gflops"] == pytest.approx(2 * p["n"] ** 3 / (p["ms"] / 1e3) / 1e9)
        # the bfloat16 square point is the shape's bfloat16 A A product
        assert p["bf16"] == {k: roof["shape_products_bf16"][f"{p['n']}x{p['n']}"]["products"][1][k]
                             for k in ("ms", "min_ms", "gflops", "repeats", "over_budget")}
    # every shape has its Newton-Schulz products timed in both dtypes (tiny shapes: within budget)
    best = {}
    for dtype, key in PRODUCTS_KEY.items():
        table = roof[key]
        assert set(table) == {"8x32", "16x16", "32x32"}
        for label, entry in table.items():
            assert entry["dtype"] == dtype and entry["status"] == "ok" and entry["gflops"] > 0
            assert entry["flops"] == kernels.ns_flops(*map(int, label.split("x")), 1)
        products = table["8x32"]["products"]
        assert [p["shape"] for p in products] == ["8x32 @ 32x8", "8x8 @ 8x8", "8x8 @ 8x32"]
        best[dtype] = max(p["gflops"] for entry in table.values() for p in entry["products"])
        assert roof["peak_by_dtype"][dtype]["gflops"] == pytest.approx(best[dtype])
    # the peak is the fastest dtype's, and says which dtype that is
    assert roof["peak_gflops"] == pytest.approx(max(best.values())) and roof["peak_at"]
    assert roof["peak_dtype"] == max(best, key=best.get)
    assert roof["peak_at"] == roof["peak_by_dtype"][roof["peak_dtype"]]["at"]
    env = results["environment"]
    assert env["threads"] == torch.get_num_threads() and env["torch"] == torch.__version__
    assert "mkldnn_bf16_supported" in env


def test_backends_in_both_dtypes(results):
    dtype, reason = ns_dtype.auto_ns_dtype("cpu")
    auto_name = str(dtype).removeprefix("torch.")
    described = {b["name"]: b for b in results["backends"]}
    for name in kernels.NS_SCHEDULES:
        assert described[name]["dtype"] == "float32"  # the names earlier runs used keep their meaning
    assert set(kernels.BF16_BACKENDS) >= {"keller_bf16", "polar_express_bf16"}
    for name in kernels.BF16_BACKENDS:
        assert described[name]["dtype"] == "bfloat16" and "bfloat16" in described[name]["label"]
    assert described["torch_muon"]["dtype"] == "bfloat16"
    assert described["auto"]["dtype"] == auto_name
    assert f"resolved to {auto_name}" in described["auto"]["label"] and reason in described["auto"]["label"]
    # the backends compute in the dtype they claim
    G = kernel_measure.gaussian(8, 12, 0)
    built = kernels.build_backends(["keller", "keller_bf16", "polar_express_bf16", "auto"])
    assert built["keller"].fn(G).dtype == torch.float32
    assert built["keller_bf16"].fn(G).dtype == built["polar_express_bf16"].fn(G).dtype == torch.bfloat16
    assert built["auto"].fn(G).dtype == dtype
    # auto is keller in the dtype it picked: same numbers as that backend
    twin = "keller" if dtype == torch.float32 else "keller_bf16"
    table = by_key(results)
    for label in ("8x32", "16x16", "32x32"):
        assert table[(label, "auto")]["accuracy"] == pytest.approx(table[(label, twin)]["accuracy"], rel=1e-6)


def test_auto_backend_follows_the_cpu(monkeypatch):
    # a CPU with AMX-BF16: auto picks bfloat16, in the backend, in polar and in the environment
    monkeypatch.setattr(ns_dtype, "cpu_capabilities", lambda: {"amx_bf16": True, "avx512_bf16": True})
    auto = kernels.build_backends(["auto"])["auto"]
    assert auto.dtype == "bfloat16" and "amx_bf16" in auto.label
    assert auto.fn(kernel_measure.gaussian(8, 12, 0)).dtype == torch.bfloat16
    env = environment.machine_info()
    assert env["bf16_matmul_feature"] == "amx_bf16" and env["ns_dtype_auto"] == "bfloat16"
    assert "amx_bf16" in env["ns_dtype_auto_reason"]
    # and an AVX2-only CPU: float32
    monkeypatch.setattr(ns_dtype, "cpu_capabilities", lambda: {"avx2": True})
    assert kernels.build_backends(["auto"])["auto"].dtype == "float32"
    env = environment.machine_info()
    assert env["bf16_matmul_feature"] is None and env["ns_dtype_auto"] == "float32"


def test_environment_names_the_auto_dtype(results):
    env = results["environment"]
    dtype, reason = ns_dtype.auto_ns_dtype("cpu")
    assert env["ns_dtype_auto"] == str(dtype).removeprefix("torch.") and env["ns_dtype_auto_reason"] == reason
    assert env["bf16_matmul_feature"] == ns_dtype.native_bf16_matmul()
    assert (env["ns_dtype_auto"] == "bfloat16") == (env["bf16_matmul_feature"] is not None)
    if torch.cuda.is_available():
        assert env["ns_dtype_auto_cuda"] == "bfloat16" and env["ns_dtype_auto_cuda_reason"]
    else:
        assert env["ns_dtype_auto_cuda"] is None and env["ns_dtype_auto_cuda_reason"] is None
    for key in ("mkldnn_bf16_supported", "cpu_capability", "processor", "torch_threads"):
        assert key in env  # read by steepest info and the suite's report
    md = kernel_report.render_markdown(results)
    assert f'`ns_dtype="auto"` picks **{env["ns_dtype_auto"]}** on the CPU ("{reason}")' in md


def test_slow_bf16_matmul_skips_costlier_products(monkeypatch):
    real = kernel_measure.matmul_point
    calls = []

    def slow_bf16(a, b, config):
        """A bfloat16 product reports one call over the budget (time_call's part is tested above)."""
        point = real(a, b, config)
        calls.append(a.dtype)
        return dict(point, repeats=0, over_budget=True) if a.dtype == torch.bfloat16 else point

    monkeypatch.setattr(kernel_measure, "matmul_point", slow_bf16)
    res = run_kernels(tiny(shapes=[(4, 8)], backends=["keller", "keller_bf16"], accuracy=False), progress=False)
    assert calls.count(torch.bfloat16) == 3 and calls.count(torch.float32) == 9  # 3 products, 3 shapes
    roof = res["roofline"]
    first = roof["shape_products_bf16"]["4x8"]
    assert first["status"] == "ok" and first["over_budget"] and all(p["repeats"] == 0 for p in first["products"])
    for label in ("16x16", "32x32"):
        skipped = roof["shape_products_bf16"][label]
        assert skipped["status"] == "skipped" and skipped["dtype"] == "bfloat16"
        assert skipped["note"].startswith("skipped: bfloat16 4x8 @ 8x4 took ")
        assert roof["shape_products"][label]["status"] == "ok"  # float32 is not affected
        e = by_key(res)[(label, "keller_bf16")]
        assert e["status"] == "ok" and "pct_matmul" not in e and e["pct_peak"] > 0
    assert [p["bf16"] for p in roof["square"]] == [None, None]
    assert all(p["bf16_note"].startswith("skipped: bfloat16") for p in roof["square"])
    assert roof["peak_by_dtype"]["bfloat16"]["at"].endswith("(for 4x8)")
    assert any("costlier shapes skip the bfloat16 products" in n for n in res["notes"])
    tables = kernel_report.roofline_tables(res)
    assert "skipped: bfloat16 4x8 @ 8x4 took" in tables and "| 4x8 |" in tables


def test_bf16_products_off():
    res = run_kernels(tiny(sizes=[16], backends=["keller", "keller_bf16"], accuracy=False, bf16_matmul=False),
                      progress=False)
    roof = res["roofline"]
    assert set(roof["shape_products_bf16"]) == {"8x32", "16x16"}
    assert all(e["status"] == "skipped" and "bf16_matmul is off" in e["note"]
               for e in roof["shape_products_bf16"].values())
    assert roof["peak_dtype"] == "float32" and roof["peak_by_dtype"]["bfloat16"] is None
    assert roof["square"][0]["bf16"] is None
    e = by_key(res)[("16x16", "keller_bf16")]
    assert "pct_matmul" not in e and e["pct_peak"] == pytest.approx(100 * e["gflops"] / roof["peak_gflops"])
    assert "float32 not measured" not in kernel_report.peak_sentence(res)
    assert "bfloat16 not measured" in kernel_report.peak_sentence(res)


def test_accuracy_numbers(results):
    table = by_key(results)
    for label in ("8x32", "16x16", "32x32"):
        svd = table[(label, "svd")]["accuracy"]
        assert svd["rel_dist_polar"] < 1e-4 and svd["max_abs_sigma_minus_1"] < 1e-4
    # 8 x 32 Gaussian: sigma_max / sigma_min about 3, well conditioned: every NS schedule moves the
    # singular values much closer to 1 than the Frobenius-normalized input
    start = results["input_accuracy"]["8x32"]["max_abs_sigma_minus_1"]
    assert start > 0.5
    for name in kernels.NS_SCHEDULES + kernels.BF16_BACKENDS + ("auto", "torch_muon"):
        if table[("8x32", name)]["status"] == "ok":
            assert table[("8x32", name)]["accuracy"]["max_abs_sigma_minus_1"] < 0.5 * start
    # bfloat16 lands where float32 does, to bfloat16's precision (8-bit mantissa)
    for name in kernels.BF16_BACKENDS:
        bf16, fp32 = table[("8x32", name)]["accuracy"], table[("8x32", name.removesuffix("_bf16"))]["accuracy"]
        assert bf16 != fp32
        assert bf16["sigma_min"] == pytest.approx(fp32["sigma_min"], abs=0.06)
        assert bf16["sigma_max"] == pytest.approx(fp32["sigma_max"], abs=0.06)
    assert table[("8x32", "polar_express_8")]["accuracy"]["max_abs_sigma_minus_1"] < 1e-3
    assert table[("8x32", "keller")]["accuracy"]["sigma_min"] > 0.6
    # AuON is only normalized and braked: close to the normalized input
    auon = table[("8x32", "auon")]["accuracy"]
    assert auon["max_abs_sigma_minus_1"] == pytest.approx(start, abs=0.05)


def test_singular_values64_matches_svdvals():
    g = torch.randn(12, 5, generator=torch.Generator().manual_seed(0))
    got = kernels.singular_values64(g)
    want = torch.linalg.svdvals(g.double()).flip(0)
    assert torch.allclose(got, want, atol=1e-10)


def test_time_call_budget_and_repeats():
    calls = []
    r = kernels.time_call(lambda: calls.append(1) or 7, repeats=3, budget_s=10.0)
    assert r["output"] == 7 and len(r["times_s"]) == 3 and len(calls) == 4 and not r["over_budget"]
    calls.clear()
    r = kernels.time_call(lambda: calls.append(1), repeats=2, budget_s=10.0, min_time_s=0.01)
    assert len(r["times_s"]) > 2  # cheap calls are repeated until min_time_s
    calls.clear()
    r = kernels.time_call(lambda: calls.append(1) or time.sleep(0.02), repeats=5, budget_s=0.01)
    assert r["over_budget"] and r["times_s"] == [] and len(calls) == 1 and r["seconds"] >= 0.02


def test_slow_backend_skips_costlier_shapes(monkeypatch):
    real = kernel_backends._auon

    def slow_auon(G):
        time.sleep(0.3)
        return real(G)

    monkeypatch.setattr(kernel_backends, "_auon", slow_auon)
    res = run_kernels(tiny(shapes=[(4, 8)], backends=["keller", "auon"], budget_s=0.2, accuracy=False,
                           bf16_matmul=False), progress=False)
    table = by_key(res)
    first = table[("4x8", "auon")]
    assert first["status"] == "ok" and first["single_call"] and first["repeats"] == 0 and first["ms"] >= 300
    for label in ("16x16", "32x32"):
        skipped = table[(label, "auon")]
        assert skipped["status"] == "skipped" and skipped["note"].startswith("skipped: 4x8 took ")
        assert table[(label, "keller")]["status"] == "ok"
    assert any("costlier shapes are skipped" in n for n in res["notes"])
    assert "skipped" in kernel_report.kernel_table(res)


def test_deadline_skips_remaining_shapes():
    res = run_kernels(tiny(deadline_s=1e-9, backends=["keller", "svd"]), progress=False)
    assert all(e["status"] == "skipped" and "time limit" in e["note"] for e in res["measurements"])
    assert any("time limit" in n for n in res["notes"])
    for key in PRODUCTS_KEY.values():
        assert len(res["roofline"][key]) == 3
        assert all(e["status"] == "skipped" and "time limit" in e["note"] for e in res["roofline"][key].values())
    assert res["roofline"]["peak_gflops"] is None and res["roofline"]["peak_dtype"] is None
    kernel_report.render_markdown(res)  # renders without any measurement


def test_torch_muon_unavailable(monkeypatch):
    from torch.optim import _muon

    monkeypatch.delattr(_muon, "_zeropower_via_newtonschulz", raising=False)
    backend = kernels.build_backends(["torch_muon"])["torch_muon"]
    assert not backend.available and backend.reason.startswith("unavailable")
    res = run_kernels(tiny(sizes=[], backends=["keller", "torch_muon"]), progress=False)
    e = by_key(res)[("8x32", "torch_muon")]
    assert e["status"] == "unavailable" and "vs_torch_muon" not in by_key(res)[("8x32", "keller")]
    assert any(n.startswith("torch_muon: unavailable") for n in res["notes"])


def test_threads_are_set_and_restored():
    before = torch.get_num_threads()
    res = run_kernels(tiny(sizes=[], backends=["auon"], threads=1, accuracy=False), progress=False)
    assert res["environment"]["threads"] == 1 and res["config"]["threads"] == 1
    assert torch.get_num_threads() == before


def test_progress_lines_go_to_stderr(capsys):
    run_kernels(tiny(sizes=[16], backends=["keller"]), progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = [line for line in captured.err.splitlines() if line.startswith("kernels ")]
    assert len(lines) == 2 and "keller" in lines[0]


class _ConvTrial:
    def __init__(self):
        self.model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 24),
                                   nn.ReLU(), nn.Linear(24, 10))
        self.roles = None


class _ConvTask:
    def __init__(self, **options):
        pass

    def prepare(self):
        return {}

    def trial(self, seed, batch_size):
        return _ConvTrial()


class _BrokenTask:
    def __init__(self, **options):
        pass

    def prepare(self):
        raise RuntimeError("no data offline")

    def trial(self, seed, batch_size):
        raise RuntimeError("not prepared")


def test_model_shapes_from_registered_tasks(monkeypatch):
    from steepest.bench import tasks

    monkeypatch.setitem(tasks.TASK_CLASSES, "fake-conv", _ConvTask)
    monkeypatch.setitem(tasks.TASK_CLASSES, "fake-broken", _BrokenTask)
    shapes, notes = kernels.discover_model_shapes()
    found = {(s["m"], s["n"]): s["sources"] for s in shapes}
    assert GPT_SHAPES <= set(found)
    assert found[(384, 128)] == ["gpt: blocks.*.attn.qkv.weight (x4)"]
    assert found[(8, 27)] == ["fake-conv: 0.weight"]  # conv 8x3x3x3 flattened to out x in*kh*kw
    assert found[(24, 128)] == ["fake-conv: 3.weight"]  # hidden Linear; the last Linear is the head
    assert (10, 24) not in found
    assert notes == ["task fake-broken: shapes unavailable (RuntimeError: no data offline)"]
    # char-LM tasks are skipped (their model is the GPT), only the GPT is scanned with tasks=[]
    only_gpt, notes = kernels.discover_model_shapes(tasks=[])
    assert {(s["m"], s["n"]) for s in only_gpt} == GPT_SHAPES and notes == []


def test_square_and_model_shapes_merge():
    shapes, _ = kernel_shapes.shape_list(KernelConfig(sizes=[128, 64], tasks=[]))
    by_label = {s["label"]: s for s in shapes}
    assert set(by_label) == {"384x128", "128x128", "512x128", "128x512", "64x64"}
    assert by_label["128x128"]["kind"] == "model+square" and by_label["128x128"]["square"]
    assert by_label["64x64"]["kind"] == "square" and not by_label["384x128"]["square"]


def test_write_kernel_report(results, tmp_path):
    res = json.loads(json.dumps(results))  # a copy
    res["measurements"][0]["ms_extra"] = float("nan")
    res["roofline"]["square"][0]["inf_field"] = float("inf")
    paths = kernel_report.write_kernel_report(res, tmp_path / "out")
    assert set(paths) == {"report", "results", "plot"}
    for path in paths.values():
        assert path.is_file() and path.stat().st_size > 0
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def no_constants(name):
        raise ValueError(f"non-strict JSON constant {name}")

    data = json.loads(paths["results"].read_text(encoding="utf-8"), parse_constant=no_constants)
    assert data["measurements"][0]["ms_extra"] is None and data["roofline"]["square"][0]["inf_field"] is None
    md = paths["report"].read_text(encoding="utf-8")
    for heading in ("## Environment", "## Matmul roofline", "## Time and throughput", "## Accuracy", "## Notes"):
        assert heading in md
    assert kernel_report.kernel_table(results) in md
    assert "| 8x32 | keller | float32 |" in md and "| 8x32 | keller_bf16 | bfloat16 |" in md
    assert "**Peak matmul: " in md and f"GFLOP/s, {results['roofline']['peak_dtype']}**" in md and "input G/‖G‖_F" in md
    assert "| 8x32 | polar_express_bf16 |" in kernel_report.accuracy_table(results)
    # every markdown table row has the same number of cells as its header
    for block in md.split("\n\n"):
        rows = [r for r in block.splitlines() if r.startswith("| ")]
        if rows:
            counts = {r.replace("\\|", "").count("|") for r in rows}
            assert len(counts) == 1, block


def test_report_without_matplotlib(results, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    res = json.loads(json.dumps(results))
    paths = kernel_report.write_kernel_report(res, tmp_path)
    assert "plot" not in paths and not (tmp_path / "kernels.png").exists()
    assert kernel_report.PNG_SKIPPED in paths["report"].read_text(encoding="utf-8")


def test_kernel_table_rows(results):
    table = kernel_report.kernel_table(results)
    lines = table.splitlines()
    assert lines[0].startswith("| shape | backend | dtype | ms |")
    assert f"% of peak ({results['roofline']['peak_dtype']} matmul)" in lines[0]
    assert len(lines) == 2 + 3 * len(BACKEND_NAMES)
    svd_row = next(line for line in lines if line.startswith("| 16x16 | svd |"))
    assert svd_row.split("|")[6].strip() == "–"  # no GFLOP/s for SVD
    muon_row = next(line for line in lines if line.startswith("| 16x16 | torch_muon |"))
    assert muon_row.split("|")[3].strip() == "bfloat16"
    assert not math.isnan(results["roofline"]["peak_gflops"])


def test_busy_machine_is_flagged(monkeypatch, capsys):
    monkeypatch.setattr(kernels, "_loadavg", lambda: [99.0, 99.0, 99.0])
    res = run_kernels(tiny(sizes=[], backends=["auon"], accuracy=False), progress=True)
    assert res["environment"]["loadavg_start"] == [99.0, 99.0, 99.0]
    assert any("machine was busy" in n for n in res["notes"])
    assert "machine is busy" in capsys.readouterr().err
