"""``compile=``: the pure kernels (Newton-Schulz, the elementwise state transforms) under ``torch.compile``.

What is checked: the setting is a flat, validated constructor argument of every preset that survives
pickling and deep copies and stays out of ``state_dict``; ``"auto"`` stays eager on CPU; compiled and
eager optimizers give the same parameters and state over a few steps for several presets; compiled
kernels are really used, traced as full graphs, and not recompiled from step to step; the
recompile-limit fallback; the kernel benchmark's compiled-vs-eager section.

Tolerance of the compiled-vs-eager comparisons: inductor fuses the elementwise chain into one loop
and may contract ``a * b + c`` into an FMA or evaluate the scalar arithmetic in another order, so
each compiled op can differ from eager by an ulp or so (float32: ~6e-8 relative); Newton-Schulz
amplifies such differences by its polynomial's slope, and a few steps compound them, to ~1e-6 here.
``rtol=1e-5`` (with an ``atol`` for entries near zero) is far above that and far below any real
difference (a wrong coefficient or a missed state update moves parameters by ~1e-2).

Compilation costs a few seconds per kernel variant on CPU and the compiled kernels are cached per
process, so the tests share one small model (and its kernel variants); the file takes about half a
minute.
"""
from __future__ import annotations

import copy
import inspect
import pickle
import re
import warnings

import pytest
import torch
from torch import nn

import steepest
import steepest.compiled as compiled_mod
from steepest.compiled import CompiledKernel, compiled, resolve_compile
from steepest.optim import PRESETS
from steepest.polar import polar

COMPARED = ["muon", "normuon", "lanton", "lion", "scion", "diffgrad"]
RTOL, ATOL = 1e-5, 1e-6


pytestmark = pytest.mark.usefixtures("one_thread")


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


def make_model(seed: int = 0) -> nn.Module:
    """Hidden matrices of three shapes (tall 16x8, a stack of two 16x16, wide 8x16), biases and a head."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 4))


def data(step: int):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(32, 8, generator=g), torch.randn(32, 4, generator=g)


def backward(model: nn.Module, step: int) -> None:
    x, y = data(step)
    model.zero_grad(set_to_none=True)
    ((model(x) - y) ** 2).mean().backward()


def train(name: str, steps: int, **kwargs):
    model = make_model()
    opt = steepest.for_model(model, name, **kwargs)
    for i in range(steps):
        backward(model, i)
        opt.step()
    return model, opt


def assert_close_models(a: nn.Module, b: nn.Module, **tol) -> None:
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(p, q, msg=lambda m: f"{n}: {m}", **tol)


def unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


# -- the setting ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PRESETS))
def test_compile_is_a_validated_flat_argument_of_every_preset(name):
    torch.manual_seed(10)
    param = inspect.signature(PRESETS[name]).parameters["compile"]
    assert param.default == "auto"
    w = nn.Parameter(torch.randn(4, 3))
    for value in ("auto", True, False):
        assert PRESETS[name]([{"params": [w], "role": "hidden"}], compile=value).compile == value
    with pytest.raises(ValueError, match=exact("Unknown compile 'yes'; expected True, False or 'auto'")):
        PRESETS[name]([w], compile="yes")
    for value, kind in ((1, "int"), (None, "NoneType"), ("auto".encode(), "bytes")):
        with pytest.raises(TypeError, match=exact(f"Invalid type for compile: expected bool or 'auto', got {kind}")):
            PRESETS[name]([w], compile=value)


def test_auto_is_eager_on_every_device_and_true_false_are_as_given():
    """"auto" never compiles: compiled kernels measured slower on CPU and on an H100 (steepest.compiled)."""
    for device in (torch.device("cpu"), torch.device("cuda"), torch.device("mps")):
        assert resolve_compile("auto", device) is False
        assert resolve_compile(True, device) is True and resolve_compile(False, device) is False


@pytest.mark.parametrize("name", ["muon", "lion", "diffgrad"])
def test_auto_and_false_stay_eager_on_cpu(name, monkeypatch):
    """The default never reaches torch.compile on CPU: results are the eager ones, bit for bit."""
    reference, _ = train(name, 2, compile=False)

    def refuse(fn):
        raise AssertionError(f"compiled {fn.__name__} on CPU under compile='auto'")

    monkeypatch.setattr(compiled_mod, "compiled", refuse)
    model, opt = train(name, 2)
    assert opt.compile == "auto" and not opt.compiles(next(model.parameters()))
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.equal(p, q)


# -- compiled against eager ------------------------------------------------------------------------
@pytest.mark.parametrize("name", COMPARED)
def test_compiled_matches_eager(name, monkeypatch):
    used = set()
    real = compiled_mod.compiled

    def spy(fn):
        used.add(fn.__name__)
        return real(fn)

    monkeypatch.setattr(compiled_mod, "compiled", spy)
    eager_model, eager_opt = train(name, 3, compile=False)
    model, opt = train(name, 3, compile=True)
    assert_close_models(model, eager_model, rtol=RTOL, atol=ATOL)
    for p, q in zip(model.parameters(), eager_model.parameters()):
        mine, theirs = opt.state[p], eager_opt.state[q]
        assert mine.keys() == theirs.keys()
        for key in mine:
            torch.testing.assert_close(mine[key], theirs[key], rtol=RTOL, atol=ATOL, msg=lambda m: f"{key}: {m}")
    expected = {"muon": {"momentum_kernel", "newton_schulz_wide", "adam_kernel"},
                "normuon": {"momentum_kernel", "newton_schulz_wide", "adam_kernel"},
                "lanton": {"momentum_kernel", "newton_schulz_wide"},
                "scion": {"momentum_kernel", "newton_schulz_wide"},
                "lion": {"lion_kernel"},
                "diffgrad": {"diffgrad_kernel"}}[name]
    assert used == expected


def test_no_recompilation_from_step_to_step():
    """Adam's bias corrections change every step; they are kernel inputs, not constants."""
    model, opt = train("muon", 2, compile=True)
    before = unique_graphs()
    for i in range(2, 5):
        backward(model, i)
        opt.step()
    assert unique_graphs() == before


def test_newton_schulz_compiled_matches_eager():
    gen = torch.Generator().manual_seed(3)
    for shape in [(12, 20), (20, 12), (3, 12, 20), (3, 20, 12)]:
        G = torch.randn(*shape, generator=gen)
        torch.testing.assert_close(polar(G, "keller", compile=True), polar(G, "keller"), rtol=RTOL, atol=ATOL)
    G = torch.randn(20, 12, generator=gen)
    torch.testing.assert_close(polar(G, "polar_express", compile=True), polar(G, "polar_express"),
                               rtol=RTOL, atol=ATOL)
    zero = polar(torch.zeros(12, 20), "keller", compile=True)
    assert torch.equal(zero, torch.zeros(12, 20))
    # the exact factor has nothing to compile
    torch.testing.assert_close(polar(G, "svd", compile=True), polar(G, "svd"), rtol=0, atol=0)


# -- copies and checkpoints -------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_of_a_compiled_optimizer(how):
    """The optimizer holds the setting, never a compiled callable: copies keep it and step the same."""
    model, opt = train("muon", 2, compile=True)
    pair = (model, opt)
    clone_model, clone = copy.deepcopy(pair) if how == "deepcopy" else pickle.loads(pickle.dumps(pair))
    assert clone.compile is True and clone is not opt
    for i in range(2, 4):
        backward(model, i)
        backward(clone_model, i)
        opt.step()
        clone.step()
    assert_close_models(model, clone_model, rtol=0, atol=0)


def test_state_dict_carries_no_compile_setting():
    model, opt = train("muon", 2, compile=True)
    sd = copy.deepcopy(opt.state_dict())  # torch's loader would share the state tensors otherwise
    assert all("compile" not in g for g in sd["param_groups"])
    eager_model = copy.deepcopy(model)
    eager = steepest.for_model(eager_model, "muon", compile=False)
    eager.load_state_dict(sd)
    assert eager.compile is False
    backward(model, 2)
    backward(eager_model, 2)
    opt.step()
    eager.step()
    assert_close_models(model, eager_model, rtol=RTOL, atol=ATOL)


def test_pickle_restores_compile_setting_of_old_pickles():
    _, opt = train("lion", 1, compile=False)
    state = opt.__getstate__()
    del state["compile"]  # an optimizer pickled before the setting existed
    clone = PRESETS["lion"].__new__(PRESETS["lion"])
    clone.__setstate__(state)
    assert clone.compile == "auto"


# -- the cache ---------------------------------------------------------------------------------------
def _scale_and_shift(x, b):
    return x.mul(b).add_(1)


def test_compiled_kernels_are_cached_per_process_and_pickle_as_references():
    kernel = compiled(_scale_and_shift)
    assert compiled(_scale_and_shift) is kernel and isinstance(kernel, CompiledKernel)
    assert pickle.loads(pickle.dumps(kernel)) is kernel
    assert kernel.__name__ == "_scale_and_shift"


def test_recompile_limit_falls_back_to_eager():
    kernel = compiled(_scale_and_shift)
    with torch._dynamo.config.patch(recompile_limit=1), torch.no_grad():
        x = torch.ones(3)
        assert torch.equal(kernel(x, 2.0), torch.full((3,), 3.0))  # compiles (rank 1)
        y = torch.ones(2, 2)
        with pytest.warns(RuntimeWarning, match="reached torch._dynamo.config.recompile_limit"):
            out = kernel(y, 2.0)  # rank 2 would be a second graph: runs eagerly
        assert torch.equal(out, torch.full((2, 2), 3.0))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert torch.equal(kernel(torch.ones(5), 2.0), torch.full((5,), 3.0))  # the cached graph


# -- the benchmark -----------------------------------------------------------------------------------
def test_kernel_benchmark_compares_compiled_with_eager(tmp_path):
    from steepest.bench import kernel_report
    from steepest.bench.kernels import COMPILE_KERNELS, KernelConfig, run_kernels

    config = KernelConfig(sizes=[], shapes=[(8, 16)], backends=["keller"], repeats=2, min_time_s=0.0,
                          budget_s=5.0, deadline_s=None, accuracy=False, bf16_matmul=False, compile=True,
                          compile_shapes=[(16, 8), (16, 16)])
    results = run_kernels(config, progress=False)
    entries = results["compiled"]["entries"]
    assert [(e["shape"], e["kernel"]) for e in entries] == [(s, k) for s in ("16x8", "16x16") for k in COMPILE_KERNELS]
    for e in entries:
        assert e["status"] == "ok", e
        assert e["eager_ms"] > 0 and e["compiled_ms"] > 0 and e["repeats"] >= 2
        assert e["speedup"] == pytest.approx(e["eager_ms"] / e["compiled_ms"])
        assert e["max_rel_diff"] < 1e-5
    md = kernel_report.render_markdown(results)
    assert "## Compiled against eager (torch.compile)" in md and kernel_report.compile_table(results) in md
    assert KernelConfig.quick_default().compile and not KernelConfig().compile
    assert run_kernels(KernelConfig(sizes=[], shapes=[(4, 8)], backends=["auon"], repeats=1, accuracy=False,
                                    bf16_matmul=False), progress=False)["compiled"] is None
