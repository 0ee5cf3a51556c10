"""Conformance suite: every check runs over every preset of ``steepest.optim.PRESETS``.

Registering a preset is all it takes to get these checks (the torch.optim ``OptimizerInfo`` /
``TestOptimRenewed`` checklist of PyTorch's torch/testing/_internal/common_optimizers.py and
test/optim/test_optim.py); ``presets.py`` only holds optional knobs.

The test model has every role: an ``nn.Embedding`` (embedding), a ``Conv1d`` (conv), hidden
``nn.Linear`` layers (hidden), a ``LayerNorm`` and biases (vector) and an ``lm_head`` (head).
"""
from __future__ import annotations

import copy
import inspect
import io
import math
import pickle
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import steepest
from steepest.geometry import GEOMETRY_NAMES
from steepest.optim import ENGINE_DEFAULTS, PRESETS
from steepest.polar import SCHEDULE_NAMES
from steepest.roles import ROLES

from state_dict_checks import assert_state_dicts_equal

from .presets import ErrorCase, knobs_for

PRESET_NAMES = list(PRESETS)
VOCAB, DIM, HIDDEN, CLASSES, SEQ = 32, 16, 32, 10, 6


pytestmark = pytest.mark.usefixtures("one_thread")


# -- the problem -------------------------------------------------------------------------------
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.conv = nn.Conv1d(DIM, DIM, 3, padding=1)
        self.fc1 = nn.Linear(DIM, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, DIM)
        self.norm = nn.LayerNorm(DIM)
        self.lm_head = nn.Linear(DIM, CLASSES)

    def forward(self, tokens):
        x = self.embed(tokens)
        x = x + self.conv(x.transpose(1, 2)).transpose(1, 2)
        x = x + self.fc2(torch.relu(self.fc1(x)))
        return self.lm_head(self.norm(x).mean(1))


def make_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> Net:
    torch.manual_seed(seed)
    return Net().to(dtype)


def batch(seed: int = 1, n: int = 64):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n, SEQ), generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def loss_of(model: nn.Module, data) -> torch.Tensor:
    tokens, target = data
    return F.cross_entropy(model(tokens).float(), target)


def backward(model: nn.Module, data, sign: float = 1.0) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    loss = loss_of(model, data)
    (sign * loss).backward()
    return loss.detach()


def accepts(cls, key: str) -> bool:
    params = inspect.signature(cls.__init__).parameters
    return key in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def split_options(cls, options):
    """Options the constructor takes, and the rest (to be put into the parameter groups)."""
    ctor = {k: v for k, v in options.items() if accepts(cls, k)}
    group = {k: v for k, v in options.items() if k not in ctor}
    return ctor, group


def build(model: nn.Module, name: str, **options):
    """``steepest.for_model`` with ``options`` routed to the constructor or, when the preset does
    not take them as arguments, to every role's group."""
    ctor, group = split_options(PRESETS[name], options)
    overrides = {role: dict(group) for role in ROLES} if group else None
    return steepest.for_model(model, name, overrides=overrides, **ctor)


def state_of(opt, p) -> dict:
    """A deep copy of ``p``'s optimizer state (tensors cloned)."""
    return copy.deepcopy(dict(opt.state.get(p, {})))


def same_state(a: dict, b: dict) -> bool:
    """Bitwise equality of two per-parameter state dicts."""
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


def snapshot_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def snapshot_state(opt) -> list[dict]:
    """Deep copy of the state of every parameter, in param-group order."""
    return [copy.deepcopy(dict(opt.state[p])) if p in opt.state else None
            for g in opt.param_groups for p in g["params"]]


def assert_params_equal(a: nn.Module, b: nn.Module) -> None:
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), f"{n} differs: max |diff| {(p - q).abs().max().item()}"


def assert_params_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), f"{n} changed"


def assert_state_equal(s1: list[dict], s2: list[dict]) -> None:
    assert len(s1) == len(s2)
    for a, b in zip(s1, s2):
        if a is None or b is None:
            assert a == b
            continue
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], torch.Tensor):
                assert a[k].dtype == b[k].dtype, k
                assert torch.equal(a[k], b[k]), f"state {k!r} differs"
            else:
                assert a[k] == b[k], k


def train(model, opt, steps: int, first_seed: int = 100) -> None:
    for i in range(steps):
        backward(model, batch(first_seed + i))
        opt.step()


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


parametrize_presets = pytest.mark.parametrize("name", PRESET_NAMES)


def test_registry_is_not_empty_and_names_are_lowercase():
    assert PRESET_NAMES, "steepest.optim.PRESETS is empty"
    for name, cls in PRESETS.items():
        assert name == name.lower()
        assert issubclass(cls, steepest.GeometryOptimizer)
        assert steepest.optim.preset_class(name.upper()) is cls


# -- goes the right direction -----------------------------------------------------------------
@parametrize_presets
def test_goes_right_direction(name):
    knobs = knobs_for(name)
    model = make_model()
    opt = steepest.for_model(model, name, **dict(knobs.direction_kwargs))
    assert {g["role"] for g in opt.param_groups} == set(ROLES), "the model must exercise every role"
    data = batch()
    before = snapshot_params(model)
    initial = loss_of(model, data).item()
    assert initial == pytest.approx(math.log(CLASSES), rel=0.15)  # sanity: an untrained classifier
    losses = []
    for _ in range(40):
        losses.append(backward(model, data).item())
        opt.step()
    final = loss_of(model, data).item()
    assert math.isfinite(final)
    assert final < knobs.direction_max_ratio * initial, (initial, final)
    assert losses[1] < losses[0], "the first step must already reduce the loss"
    for n, p in model.named_parameters():
        assert not torch.equal(p, before[n]), f"{n} had a gradient but did not move"


# -- state_dict round trips --------------------------------------------------------------------
def _continue_both(model_a, opt_a, model_b, opt_b, steps: int = 6) -> None:
    """Step both pairs with the gradients computed on ``model_a``; after every step the parameters
    and the whole optimizer state are the same bits."""
    for i in range(steps):
        backward(model_a, batch(200 + i))
        for p, q in zip(model_a.parameters(), model_b.parameters()):
            q.grad = p.grad.clone()
        opt_a.step()
        opt_b.step()
        assert_params_equal(model_a, model_b)
        assert_state_dicts_equal(opt_a.state_dict(), opt_b.state_dict())


def _reloaded(name, model_sd, opt_sd, **options):
    model = make_model(seed=123)  # a different init: everything must come from the state dicts
    model.load_state_dict(model_sd)
    opt = build(model, name, **options)
    opt.load_state_dict(opt_sd)
    return model, opt


@parametrize_presets
def test_state_dict_round_trip_continues_bit_identically(name):
    model = make_model()
    opt = build(model, name)
    train(model, opt, 3)
    opt_sd = copy.deepcopy(opt.state_dict())
    model2, opt2 = _reloaded(name, copy.deepcopy(model.state_dict()), opt_sd)
    assert_state_equal(snapshot_state(opt), snapshot_state(opt2))
    assert_state_dicts_equal(opt.state_dict(), opt2.state_dict())
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == \
        [{k: v for k, v in g.items() if k != "params"} for g in opt2.param_groups]
    _continue_both(model, opt, model2, opt2)
    assert_params_equal(model, model2)
    assert_state_equal(snapshot_state(opt), snapshot_state(opt2))


def _serialized(state_dict: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    return buf.getvalue()


@parametrize_presets
def test_state_dict_is_deterministic(name):
    """Two optimizers built and stepped the same way have equal state dicts; asking one for its state
    dict again gives the same bytes (``state_dict()`` changes nothing). The dicts compared are
    independent: two optimizers, or serialized copies taken one after the other (a state dict holds
    the live state tensors, so comparing two of one optimizer's would compare a tensor with itself)."""
    opts = []
    for _ in range(2):
        model = make_model()
        opt = build(model, name)
        train(model, opt, 2)
        opts.append(opt)
    a, b = opts[0].state_dict(), opts[1].state_dict()
    assert a["state"] and len(a["state"]) == sum(len(g["params"]) for g in opts[0].param_groups)
    tensors_a = [v for s in a["state"].values() for v in s.values() if isinstance(v, torch.Tensor)]
    tensors_b = [v for s in b["state"].values() for v in s.values() if isinstance(v, torch.Tensor)]
    assert tensors_a and not {v.data_ptr() for v in tensors_a} & {v.data_ptr() for v in tensors_b if v.numel()}
    assert_state_dicts_equal(a, b)
    first = _serialized(opts[0].state_dict())
    second = _serialized(opts[0].state_dict())
    assert first == second, "a second state_dict() call gave other bytes"
    assert _serialized(b) == first
    assert_state_dicts_equal(torch.load(io.BytesIO(first), weights_only=True), b)


def _via_torch_save_weights_only(model, opt):
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    return loaded["model"], loaded["opt"]


def _via_pickle(model, opt):
    return copy.deepcopy(model.state_dict()), pickle.loads(pickle.dumps(opt.state_dict()))


@parametrize_presets
@pytest.mark.parametrize("transport", [_via_torch_save_weights_only, _via_pickle], ids=["weights_only", "pickle"])
def test_saved_state_dict_continues_bit_identically(name, transport):
    model = make_model()
    opt = build(model, name)
    train(model, opt, 3)
    model_sd, opt_sd = transport(model, opt)
    assert_state_dicts_equal(opt_sd, opt.state_dict())
    model2, opt2 = _reloaded(name, model_sd, opt_sd)
    assert_params_equal(model, model2)
    assert_state_dicts_equal(opt.state_dict(), opt2.state_dict())
    _continue_both(model, opt, model2, opt2)
    assert_params_equal(model, model2)


@parametrize_presets
def test_deepcopy_of_optimizer(name):
    model = make_model()
    opt = build(model, name)
    train(model, opt, 3)
    clone = copy.deepcopy(opt)
    original_params = [p for g in opt.param_groups for p in g["params"]]
    clone_params = [p for g in clone.param_groups for p in g["params"]]
    assert all(p is not q for p, q in zip(original_params, clone_params))
    assert_state_equal(snapshot_state(opt), snapshot_state(clone))
    for i in range(3):
        backward(model, batch(300 + i))
        for p, q in zip(original_params, clone_params):
            q.grad = p.grad.clone()
        opt.step()
        clone.step()
    for p, q in zip(original_params, clone_params):
        assert torch.equal(p, q)
    assert_state_equal(snapshot_state(opt), snapshot_state(clone))



@parametrize_presets
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_keep_settings_and_role_recipes(name, how):
    """torch's Optimizer pickles only defaults, state and param_groups; the engine's settings
    (on_nonfinite, the skip count) and the preset's per-role recipes must survive too."""
    model = make_model()
    opt = build(model, name, on_nonfinite="skip")
    opt.nonfinite_skips = 2
    clone = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    assert clone.on_nonfinite == "skip" and clone.nonfinite_skips == 2
    for role in ROLES:
        shape = (3, 2, 2) if role == "conv" else (4,) if role == "vector" else (4, 3)
        opt.add_param_group({"params": [(f"extra.{role}", torch.zeros(shape, requires_grad=True))], "role": role})
        clone.add_param_group({"params": [(f"extra.{role}", torch.zeros(shape, requires_grad=True))], "role": role})
        # the engine's and the preset's keys decide the update (torch's __setstate__ adds its own
        # "differentiable")
        keys = [*ENGINE_DEFAULTS, *PRESETS[name].PRESET_KEYS]
        mine = {k: opt.param_groups[-1][k] for k in keys}
        theirs = {k: clone.param_groups[-1][k] for k in keys}
        assert mine == theirs, role

# -- bfloat16 --------------------------------------------------------------------------------
@parametrize_presets
def test_bfloat16_params_keep_float32_state(name):
    steps = 5
    model16 = make_model(dtype=torch.bfloat16)
    with torch.no_grad():  # GPT-style embedding init (std 0.1, not 1): its bf16 ulp is 2^-11, not 2^-7
        model16.embed.weight.mul_(0.1)
    model32 = make_model()
    model32.load_state_dict({k: v.float() for k, v in model16.state_dict().items()})  # same start
    start = snapshot_params(model32)
    # The direction knobs' learning rates: with lr 3e-4 an update of a weight near 1.0 is below
    # half a bfloat16 ulp (2^-8) and is rounded away, so the comparison would say nothing.
    kwargs = dict(knobs_for(name).direction_kwargs)
    opt16, opt32 = build(model16, name, **kwargs), build(model32, name, **kwargs)
    for i in range(steps):
        data = batch(400 + i)
        backward(model16, data)
        backward(model32, data)
        opt16.step()
        opt32.step()
    for p in model16.parameters():
        assert p.dtype == torch.bfloat16
        assert torch.isfinite(p).all()
        state = opt16.state[p]
        assert state, "every parameter with a gradient has state"
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                # M-FAC's Grams and LANTON's noise EMA hold squares of gradient-sized numbers: float64
                want = torch.float64 if key in ("gram", "noise_sq") else torch.float32
                assert value.dtype == want, f"state {key!r} is {value.dtype}"
    # Closeness: the bf16 run moves as far as the fp32 run and stays within a fraction of the
    # distance the fp32 run travelled. Measured with the knobs' kwargs: at most 0.16 (muon,
    # norm.weight: entries near 1.0 have a bf16 ulp of 2^-7); a run that did not step gives 1.0
    # and one with twice the step ~1.0, so the bound separates right from wrong.
    bound = knobs_for(name).bf16_max_rel_diff
    for (n, p16), (_, p32) in zip(model16.named_parameters(), model32.named_parameters()):
        travelled = (p32 - start[n]).norm()
        assert travelled > 0
        moved = ((p16.float() - start[n]).norm() / travelled).item()
        assert 0.8 < moved < 1.2, f"{n}: the bf16 run moved {moved:.3f}x as far as the fp32 run"
        rel = ((p16.float() - p32).norm() / travelled).item()
        assert rel < bound, f"{n}: ||W16 - W32|| / ||W32 - W0|| = {rel:.3f}"


@parametrize_presets
def test_bfloat16_state_dict_round_trip_keeps_float32_state(name):
    model = make_model(dtype=torch.bfloat16)
    opt = build(model, name)
    train(model, opt, 2)
    sd = copy.deepcopy(opt.state_dict())
    model2 = make_model(seed=5, dtype=torch.bfloat16)
    model2.load_state_dict(model.state_dict())
    opt2 = build(model2, name)
    opt2.load_state_dict(sd)
    for p in model2.parameters():
        for key, value in opt2.state[p].items():
            if not isinstance(value, torch.Tensor):  # host-side numbers (Adam's rms_bound)
                assert isinstance(value, float), key
                continue
            want = torch.float64 if key in ("gram", "noise_sq") else torch.float32  # squares: float64
            assert value.dtype == want, f"state {key!r} became {value.dtype}"
    assert_state_dicts_equal(opt.state_dict(), opt2.state_dict())
    _continue_both(model, opt, model2, opt2)
    assert_params_equal(model, model2)


# -- LR schedulers -----------------------------------------------------------------------------
def _scheduler_run(opt, model, sched, expected, steps: int = 8) -> None:
    """After every ``sched.step()``, group ``i``'s lr must equal ``expected(base_i, epoch)``."""
    bases = [g["initial_lr"] for g in opt.param_groups]
    for gi, g in enumerate(opt.param_groups):
        assert g["lr"] == pytest.approx(expected(bases[gi], 0), rel=1e-12)
    for epoch in range(1, steps + 1):
        backward(model, batch(500 + epoch))
        opt.step()
        sched.step()
        for gi, g in enumerate(opt.param_groups):
            assert g["lr"] == pytest.approx(expected(bases[gi], epoch), rel=1e-9, abs=1e-15), \
                (g["role"], epoch)


ROLE_LRS = {"embedding": 0.011, "head": 0.007, "hidden": 0.03, "conv": 0.021, "vector": 0.005}


def _distinct_lr_model(name):
    """The preset's own groups (AdamW-style fallback groups included), each with its own lr."""
    model = make_model()
    opt = steepest.for_model(model, name, overrides={role: {"lr": lr} for role, lr in ROLE_LRS.items()})
    assert sorted(g["lr"] for g in opt.param_groups) == sorted(ROLE_LRS.values())
    return model, opt


@parametrize_presets
def test_lambda_lr_drives_every_group(name):
    model, opt = _distinct_lr_model(name)
    bases = [g["lr"] for g in opt.param_groups]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.5**e)
    assert [g["initial_lr"] for g in opt.param_groups] == bases
    _scheduler_run(opt, model, sched, lambda base, e: base * 0.5**e)


@parametrize_presets
def test_step_lr_drives_every_group(name):
    model, opt = _distinct_lr_model(name)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.1)
    _scheduler_run(opt, model, sched, lambda base, e: base * 0.1 ** (e // 3))


@parametrize_presets
def test_cosine_annealing_drives_every_group(name):
    model, opt = _distinct_lr_model(name)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8, eta_min=0.0)
    _scheduler_run(opt, model, sched, lambda base, e: base * (1 + math.cos(math.pi * e / 8)) / 2)


@parametrize_presets
def test_one_cycle_drives_every_group(name):
    model, opt = _distinct_lr_model(name)
    max_lrs = [g["lr"] for g in opt.param_groups]
    total, pct, div, final_div = 10, 0.3, 25.0, 1e4
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lrs, total_steps=total, pct_start=pct,
                                                div_factor=div, final_div_factor=final_div,
                                                cycle_momentum=False)

    def expected(base, t):  # OneCycleLR's documented cosine schedule; base = max_lr / div
        max_lr = base * div
        lo = base / final_div
        up_end = pct * total - 1
        cos = lambda a, b, f: b + (a - b) / 2 * (math.cos(math.pi * f) + 1)
        if t <= up_end:
            return cos(base, max_lr, t / up_end)
        return cos(max_lr, lo, (t - up_end) / (total - 1 - up_end))

    _scheduler_run(opt, model, sched, expected, steps=total - 1)


@parametrize_presets
def test_scheduled_zero_lr_freezes_every_group(name):
    """The lr a scheduler writes is the lr the step uses, fallback groups included."""
    model, opt = _distinct_lr_model(name)
    train(model, opt, 2)
    torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.0)
    assert all(g["lr"] == 0.0 for g in opt.param_groups)
    before = snapshot_params(model)
    train(model, opt, 2, first_seed=600)
    assert_params_unchanged(model, before)


# -- param groups ------------------------------------------------------------------------------
def _role_groups(model, lrs):
    labels = steepest.roles.classify(model)
    params = dict(model.named_parameters())
    groups = []
    for role in ROLES:
        items = [(n, params[n]) for n, r in labels.items() if r == role]
        if items:
            groups.append({"params": items, "role": role, "lr": lrs[role]})
    return groups


@parametrize_presets
def test_param_groups_equal_separate_optimizers(name):
    model_a, model_b = make_model(), make_model()
    groups_a = _role_groups(model_a, ROLE_LRS)
    assert len(groups_a) >= 2
    one = PRESETS[name](groups_a)
    separate = [PRESETS[name]([g]) for g in _role_groups(model_b, ROLE_LRS)]
    assert [g["lr"] for g in one.param_groups] == [o.param_groups[0]["lr"] for o in separate]
    for i in range(4):
        data = batch(700 + i)
        backward(model_a, data)
        backward(model_b, data)
        one.step()
        for o in separate:
            o.step()
    assert_params_equal(model_a, model_b)
    moved = snapshot_params(make_model())
    assert all(not torch.equal(p, moved[n]) for n, p in model_a.named_parameters())


# -- None and zero gradients -------------------------------------------------------------------
@parametrize_presets
def test_none_grad_is_untouched_and_its_state_unchanged(name):
    model = make_model()
    opt = build(model, name)
    skipped = {"fc2.weight", "norm.bias", "embed.weight"}
    before = snapshot_params(model)
    initial = {n: state_of(opt, p) for n, p in model.named_parameters()}
    for i in range(2):
        backward(model, batch(800 + i))
        for n, p in model.named_parameters():
            if n in skipped:
                p.grad = None
        opt.step()
    for n, p in model.named_parameters():
        if n in skipped:
            assert torch.equal(p, before[n]), n
            assert same_state(state_of(opt, p), initial[n]), f"{n}'s state changed without a gradient"
        else:
            assert not torch.equal(p, before[n]), n
            assert opt.state.get(p), n


@parametrize_presets
def test_zero_grad_without_weight_decay_is_bitwise_noop(name):
    model = make_model()
    opt = steepest.for_model(model, name, overrides={r: {"weight_decay": 0.0} for r in ROLES})
    assert all(g["weight_decay"] == 0.0 for g in opt.param_groups)
    before = snapshot_params(model)
    for _ in range(3):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
    assert_params_unchanged(model, before)
    for p in model.parameters():
        for key, value in opt.state[p].items():
            if isinstance(value, torch.Tensor):
                assert torch.isfinite(value).all(), key


@parametrize_presets
def test_zero_grad_changes_params_only_by_weight_decay(name):
    model = make_model()
    wd = 0.1
    opt = steepest.for_model(model, name, overrides={r: {"weight_decay": wd} for r in ROLES})
    before = snapshot_params(model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for g in opt.param_groups:
        shrink = 1 - g["lr"] * wd
        assert shrink < 1
        for n, p in zip(g["param_names"], g["params"]):
            assert torch.isfinite(p).all()
            torch.testing.assert_close(p, before[n] * shrink, rtol=1e-6, atol=0, msg=n)


# -- closure and maximize ----------------------------------------------------------------------
@parametrize_presets
def test_closure_returns_loss_and_matches_plain_step(name):
    model_a, model_b = make_model(), make_model()
    opt_a, opt_b = build(model_a, name), build(model_b, name)
    for i in range(3):
        data = batch(900 + i)

        def closure():
            opt_a.zero_grad()
            loss = loss_of(model_a, data)
            loss.backward()
            return loss

        returned = opt_a.step(closure)
        expected_loss = backward(model_b, data)
        opt_b.step()
        assert isinstance(returned, torch.Tensor)
        assert torch.equal(returned.detach(), expected_loss)
    assert_params_equal(model_a, model_b)
    assert opt_a.step() is None  # no closure: returns None


@parametrize_presets
def test_maximize_equals_minimizing_negated_loss(name):
    model_max, model_min = make_model(), make_model()
    opt_max = build(model_max, name, maximize=True)
    opt_min = build(model_min, name)
    assert all(g["maximize"] for g in opt_max.param_groups)
    for i in range(4):
        data = batch(1000 + i)
        backward(model_max, data, sign=-1.0)
        backward(model_min, data)
        opt_max.step()
        opt_min.step()
    assert_params_equal(model_max, model_min)


# -- errors ------------------------------------------------------------------------------------
GENERIC_ERRORS = [
    ErrorCase("negative_lr", {"lr": -0.1}, ValueError, "Invalid learning rate: -0.1"),
    ErrorCase("lr_string", {"lr": "0.1"}, TypeError, "Invalid type for lr: expected a real number, got str"),
    ErrorCase("momentum_one", {"momentum": 1.0}, ValueError,
              "Invalid momentum value: 1.0; expected 0 <= momentum < 1", group={"transform": "momentum"}),
    ErrorCase("momentum_negative", {"momentum": -0.1}, ValueError,
              "Invalid momentum value: -0.1; expected 0 <= momentum < 1", group={"transform": "momentum"}),
    ErrorCase("unknown_role", {}, ValueError,
              "Unknown role 'hiden'; expected one of: embedding, head, hidden, conv, vector", group={"role": "hiden"}),
    ErrorCase("unknown_geometry", {}, ValueError,
              f"Unknown geometry 'nope'; expected one of: {', '.join(GEOMETRY_NAMES)}", group={"geometry": "nope"}),
    ErrorCase("unknown_ns", {"ns": "nope"}, ValueError,
              f"Unknown Newton-Schulz schedule 'nope'; expected one of: {', '.join(SCHEDULE_NAMES)}",
              group={"geometry": "spectral"}),
    ErrorCase("ns_steps_zero", {"ns_steps": 0}, ValueError, "Invalid ns_steps: 0; expected an integer in [1, 100)",
              group={"geometry": "spectral"}),
    ErrorCase("ns_steps_100", {"ns_steps": 100}, ValueError,
              "Invalid ns_steps: 100; expected an integer in [1, 100)", group={"geometry": "spectral"}),
    ErrorCase("ns_steps_float", {"ns_steps": 2.5}, TypeError,
              "Invalid type for ns_steps: expected an int or None, got float", group={"geometry": "spectral"}),
    ErrorCase("ns_dtype", {"ns_dtype": "nope"}, ValueError,
              "Unknown ns_dtype 'nope'; expected one of: auto, float32, bfloat16, float16, float64",
              group={"geometry": "spectral"}),
    ErrorCase("ns_form", {"ns_form": "fast"}, ValueError,
              "Unknown ns_form 'fast'; expected one of: auto, direct, gram", group={"geometry": "spectral"}),
    ErrorCase("shape_scale", {}, ValueError,
              "Unknown shape_scale 'nope' for geometry 'spectral'; expected one of: "
              "original, match_rms_adamw, rms_to_rms, none",
              group={"geometry": "spectral", "shape_scale": "nope"}),
    ErrorCase("on_nonfinite", {"on_nonfinite": "nope"}, ValueError,
              "Unknown on_nonfinite 'nope'; expected one of: raise, skip"),
    ErrorCase("compile", {"compile": "yes"}, ValueError, "Unknown compile 'yes'; expected True, False or 'auto'"),
    ErrorCase("compile_type", {"compile": 1}, TypeError, "Invalid type for compile: expected bool or 'auto', got int"),
    ErrorCase("weight_decay", {}, ValueError, "Invalid weight_decay value: -0.5", group={"weight_decay": -0.5}),
    ErrorCase("radius", {}, ValueError, "Invalid radius value: 0.0; expected a positive number",
              group={"radius": 0.0}),
    ErrorCase("transform", {}, ValueError, "Unknown transform 'nope'; expected one of: momentum, adam, lion, diffgrad",
              group={"transform": "nope"}),
    ErrorCase("nesterov_type", {"nesterov": "yes"}, TypeError, "Invalid type for nesterov: expected bool, got str",
              group={"transform": "momentum"}),
    ErrorCase("maximize_type", {"maximize": 1}, TypeError, "Invalid type for maximize: expected bool, got int"),
    ErrorCase("betas", {}, ValueError, "Invalid beta parameter at index 1: 1.5",
              group={"transform": "adam", "betas": (0.9, 1.5)}),
]

ERROR_PARAMS = [(name, case) for name in PRESET_NAMES for case in GENERIC_ERRORS + list(knobs_for(name).error_cases)]


def _error_groups(case: ErrorCase, group_options):
    torch.manual_seed(0)
    tensors = {"hidden": ("hidden.weight", nn.Parameter(torch.randn(4, 3))),
               "vector": ("hidden.bias", nn.Parameter(torch.randn(4)))}
    return [{"params": [tensors[role]], "role": role, **group_options, **case.group} for role in case.roles]


@pytest.mark.parametrize("name,case", ERROR_PARAMS, ids=[f"{n}-{c.id}" for n, c in ERROR_PARAMS])
def test_invalid_arguments_raise_exact_errors(name, case):
    cls = PRESETS[name]
    ctor, group_options = split_options(cls, dict(case.options))
    with pytest.raises(case.error, match=exact(case.message)):
        cls(_error_groups(case, group_options), **ctor)


@parametrize_presets
def test_vector_in_spectral_group_names_the_parameter(name):
    cls = PRESETS[name]
    bias = nn.Parameter(torch.randn(4))
    msg = ("Geometry 'spectral' needs parameters with at least 2 dimensions, got shape (4,) for parameter "
           "'fc.bias' (use geometry 'rms', 'sign' or an AdamW-style group for vectors)")
    with pytest.raises(ValueError, match=exact(msg)):
        cls([{"params": [("fc.bias", bias)], "role": "hidden", "geometry": "spectral"}])


@parametrize_presets
def test_failed_add_param_group_leaves_groups_unchanged(name):
    cls = PRESETS[name]
    w = nn.Parameter(torch.randn(5, 3))
    opt = cls([{"params": [("w", w)], "role": "hidden"}])
    before = copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])
    ids = [[id(p) for p in g["params"]] for g in opt.param_groups]
    bad = nn.Parameter(torch.randn(4, 3))
    for extra in ({"lr": -1.0}, {"geometry": "nope"}, {"ns": "nope", "geometry": "spectral"}):
        with pytest.raises(ValueError):
            opt.add_param_group({"params": [("bad", bad)], "role": "hidden", **extra})
        assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == before
        assert [[id(p) for p in g["params"]] for g in opt.param_groups] == ids
    opt.add_param_group({"params": [("bad", bad)], "role": "hidden"})  # the tensor is still free
    assert len(opt.param_groups) == 2


@parametrize_presets
def test_failed_unlabelled_add_param_group_adds_nothing(name):
    cls = PRESETS[name]
    w = nn.Parameter(torch.randn(5, 3))
    opt = cls([{"params": [("w", w)], "role": "hidden"}])
    n_groups = len(opt.param_groups)
    matrix, vector = nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(4))
    # No role: split into a hidden sub-group (valid) and a vector sub-group (1-D under spectral).
    with pytest.raises(ValueError, match="needs parameters with at least 2 dimensions"):
        opt.add_param_group({"params": [("m", matrix), ("v", vector)], "geometry": "spectral"})
    assert len(opt.param_groups) == n_groups


def _one_param_opt(name, p, **options):
    return PRESETS[name]([{"params": [("layer.weight", p)], "role": "hidden"}], **options)


@parametrize_presets
def test_sparse_gradient_raises_runtime_error_at_step(name):
    """The exception type torch.optim.Muon and Adam raise for a sparse gradient."""
    p = nn.Parameter(torch.randn(4, 3))
    before = p.detach().clone()
    opt = _one_param_opt(name, p)
    initial = state_of(opt, p)
    p.grad = torch.randn(4, 3).to_sparse()
    msg = f"{PRESETS[name].__name__} does not support sparse gradients (parameter 'layer.weight')"
    with pytest.raises(RuntimeError, match=exact(msg)):
        opt.step()
    assert torch.equal(p, before)
    assert same_state(state_of(opt, p), initial)


@parametrize_presets
def test_complex_parameter_raises_runtime_error_at_step(name):
    """The exception type torch.optim.Muon raises for a complex parameter."""
    p = nn.Parameter(torch.randn(4, 3, dtype=torch.complex64))
    before = p.detach().clone()
    opt = _one_param_opt(name, p)
    initial = state_of(opt, p)
    p.grad = torch.randn_like(p)
    msg = f"{PRESETS[name].__name__} does not support complex parameters (parameter 'layer.weight')"
    with pytest.raises(RuntimeError, match=exact(msg)):
        opt.step()
    assert torch.equal(p, before)
    assert same_state(state_of(opt, p), initial)


# -- non-finite gradients ----------------------------------------------------------------------
NONFINITE = [("nan", float("nan")), ("inf", float("inf")), ("neg_inf", float("-inf"))]
BAD_PARAMS = ["fc1.weight", "norm.weight", "embed.weight"]


def _poison(model, param_name, value, seed):
    backward(model, batch(seed))
    grad = dict(model.named_parameters())[param_name].grad
    grad.view(-1)[1] = value


@parametrize_presets
@pytest.mark.parametrize("kind,value", NONFINITE, ids=[k for k, _ in NONFINITE])
@pytest.mark.parametrize("bad", BAD_PARAMS)
def test_nonfinite_gradient_raises_and_changes_nothing(name, kind, value, bad):
    model = make_model()
    opt = build(model, name)
    train(model, opt, 3)
    params, state = snapshot_params(model), snapshot_state(opt)
    _poison(model, bad, value, seed=1100)
    msg = (f"Non-finite gradient (NaN or Inf) in parameter {bad!r}; parameters and optimizer state were "
           f"left unchanged. Pass on_nonfinite='skip' to skip such steps instead.")
    with pytest.raises(FloatingPointError, match=exact(msg)):
        opt.step()
    assert_params_unchanged(model, params)
    assert_state_equal(state, snapshot_state(opt))


@parametrize_presets
@pytest.mark.parametrize("kind,value", NONFINITE[:2], ids=[k for k, _ in NONFINITE[:2]])
def test_nonfinite_gradient_skip_option(name, kind, value):
    model = make_model()
    opt = build(model, name, on_nonfinite="skip")
    train(model, opt, 3)
    assert opt.nonfinite_skips == 0
    params, state = snapshot_params(model), snapshot_state(opt)
    cls_name = PRESETS[name].__name__
    for count in (1, 2):
        _poison(model, "fc2.weight", value, seed=1200 + count)
        msg = (f"{cls_name}: skipped a step with a non-finite gradient in parameter 'fc2.weight' "
               f"({count} skipped so far)")
        with pytest.warns(RuntimeWarning, match=exact(msg)):
            opt.step()
        assert opt.nonfinite_skips == count
        assert_params_unchanged(model, params)
        assert_state_equal(state, snapshot_state(opt))
    # A finite step afterwards trains normally and does not count.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(model, opt, 1, first_seed=1300)
    assert opt.nonfinite_skips == 2
    assert all(not torch.equal(p, params[n]) for n, p in model.named_parameters())


@parametrize_presets
def test_nonfinite_skip_count_survives_state_dict(name):
    """The skip count is part of the state dict, so a resumed run keeps counting from it."""
    model = make_model()
    opt = build(model, name, on_nonfinite="skip")
    train(model, opt, 1)
    _poison(model, "fc2.weight", float("nan"), seed=1400)
    with pytest.warns(RuntimeWarning):
        opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    assert saved["nonfinite_skips"] == 1
    fresh = build(make_model(), name, on_nonfinite="skip")
    fresh.load_state_dict(saved)
    assert fresh.nonfinite_skips == 1
    del saved["nonfinite_skips"]  # a state dict of steepest 0.6 (or one rebuilt from state and groups)
    fresh.load_state_dict(saved)
    assert fresh.nonfinite_skips == 1


# -- named parameters --------------------------------------------------------------------------
@parametrize_presets
def test_named_parameters_fill_param_names_and_survive_round_trip(name):
    model = make_model()
    opt = PRESETS[name](model.named_parameters())
    named = dict(model.named_parameters())
    seen = []
    for g in opt.param_groups:
        assert len(g["param_names"]) == len(g["params"])
        for n, p in zip(g["param_names"], g["params"]):
            assert named[n] is p
            seen.append(n)
    assert sorted(seen) == sorted(named)
    train(model, opt, 2)
    sd = pickle.loads(pickle.dumps(opt.state_dict()))
    assert [g["param_names"] for g in sd["param_groups"]] == [g["param_names"] for g in opt.param_groups]
    model2 = make_model(seed=9)
    model2.load_state_dict(model.state_dict())
    opt2 = PRESETS[name](model2.named_parameters())
    opt2.load_state_dict(sd)
    assert [g["param_names"] for g in opt2.param_groups] == [g["param_names"] for g in opt.param_groups]
    named2 = dict(model2.named_parameters())
    for g in opt2.param_groups:
        assert all(named2[n] is p for n, p in zip(g["param_names"], g["params"]))
    assert_state_dicts_equal(opt.state_dict(), opt2.state_dict())
    _continue_both(model, opt, model2, opt2)
    assert_params_equal(model, model2)


@parametrize_presets
def test_for_model_fills_param_names(name):
    model = make_model()
    opt = steepest.for_model(model, name)
    labels = steepest.roles.classify(model)
    for g in opt.param_groups:
        assert all(labels[n] == g["role"] for n in g["param_names"])
    assert sorted(n for g in opt.param_groups for n in g["param_names"]) == sorted(labels)


# -- distributed topology argument (the multi-process behaviour is in tests/distributed) ------------
@parametrize_presets
def test_distributed_mesh_is_a_flat_argument_of_every_preset(name):
    assert "distributed_mesh" in inspect.signature(PRESETS[name]).parameters
    p = nn.Parameter(torch.randn(4, 3))
    opt = _one_param_opt(name, p, distributed_mesh=None)
    assert opt._topology is None
    msg = "distributed_mesh must be a torch.distributed ProcessGroup, a 1-D DeviceMesh or None, got str"
    with pytest.raises(TypeError, match=exact(msg)):
        _one_param_opt(name, p, distributed_mesh="world")


@parametrize_presets
def test_state_keys_exist_before_the_first_step(name):
    # torch.distributed.checkpoint loads into the keys of a fresh optimizer's state_dict, so a key
    # created later would silently not be restored
    model = make_model()
    opt = build(model, name)
    before = {n: sorted(opt.state[p]) for n, p in model.named_parameters()}
    assert all(before.values())
    for i in range(2):
        backward(model, batch(900 + i))
        opt.step()
    assert {n: sorted(opt.state[p]) for n, p in model.named_parameters()} == before
