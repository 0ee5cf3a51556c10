"""steepest.hf with the real transformers Trainer: roles survive, the scheduler drives every group,
and a run resumed from a checkpoint is bit-identical to an uninterrupted one.

Everything is built from a tiny GPT2Config and seeded synthetic tokens (nothing is downloaded).
Training runs with one intra-op thread (restored afterwards): on a busy 2-core machine, two
threads make these microsecond-sized matmuls 100x slower.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a safety net: nothing here should reach the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import steepest  # noqa: E402
import steepest.hf  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
STEPS, SAVE_AT = 6, 3


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_gpt2() -> transformers.GPT2LMHeadModel:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)


def tokens(count: int = 64, length: int = 16) -> list[dict[str, torch.Tensor]]:
    seq = torch.randint(0, 64, (count, length), generator=torch.Generator().manual_seed(1))
    return [{"input_ids": s, "labels": s} for s in seq]


class RecordLRs(transformers.TrainerCallback):
    """Every group's lr at the end of every optimizer step."""

    def __init__(self):
        self.lrs: list[list[float]] = []

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        self.lrs.append([g["lr"] for g in optimizer.param_groups])


def make_trainer(output_dir: Path, preset: str, *, weight_decay: float = 0.0, **options) -> transformers.Trainer:
    args = transformers.TrainingArguments(
        output_dir=str(output_dir), max_steps=STEPS, per_device_train_batch_size=4,
        gradient_accumulation_steps=2, lr_scheduler_type="cosine", warmup_steps=2, weight_decay=weight_decay,
        logging_steps=1, save_strategy="steps", save_steps=SAVE_AT, use_cpu=True, report_to=[],
        dataloader_num_workers=0, disable_tqdm=True, seed=0)
    return transformers.Trainer(model=tiny_gpt2(), args=args, train_dataset=tokens(),
                                optimizer_cls_and_kwargs=steepest.hf.optimizer_cls_and_kwargs(preset, **options))


def losses(trainer: transformers.Trainer) -> dict[int, float]:
    return {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """Run A per preset, trained once for all the tests that read it: ``(trainer, lrs, dir)``."""
    runs = {}
    for preset in ("lanton", "muon"):
        out = tmp_path_factory.mktemp(f"a_{preset}")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            trainer = make_trainer(out, preset)
            record = RecordLRs()
            trainer.add_callback(record)
            trainer.train()
        finally:
            torch.set_num_threads(threads)
        runs[preset] = (trainer, record.lrs, out)
    return runs


@pytest.mark.parametrize("preset", ["lanton", "muon"])
def test_resume_from_checkpoint_is_bit_identical(preset, uninterrupted, tmp_path):
    a, _, a_dir = uninterrupted[preset]
    checkpoint = a_dir / f"checkpoint-{SAVE_AT}"
    assert (checkpoint / "optimizer.pt").is_file() and (checkpoint / "scheduler.pt").is_file()
    b = make_trainer(tmp_path, preset)
    b.train(resume_from_checkpoint=str(checkpoint))
    assert b.state.global_step == STEPS
    loss_a, loss_b = losses(a), losses(b)
    assert sorted(loss_a) == list(range(1, STEPS + 1))
    assert [loss_b[s] for s in range(SAVE_AT + 1, STEPS + 1)] == [loss_a[s] for s in range(SAVE_AT + 1, STEPS + 1)]
    params_a, params_b = dict(a.model.named_parameters()), dict(b.model.named_parameters())
    assert params_a.keys() == params_b.keys()
    for name, p in params_a.items():
        assert torch.equal(p, params_b[name]), name


def test_resume_without_optimizer_state_differs(uninterrupted, tmp_path):
    """The identity above is not vacuous: without optimizer.pt (momentum, noise EMAs) the run differs."""
    a, _, a_dir = uninterrupted["lanton"]
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(a_dir / f"checkpoint-{SAVE_AT}", checkpoint)
    (checkpoint / "optimizer.pt").unlink()
    b = make_trainer(tmp_path / "out", "lanton")
    b.train(resume_from_checkpoint=str(checkpoint))
    final_a, final_b = dict(a.model.named_parameters()), dict(b.model.named_parameters())
    assert not all(torch.equal(p, final_b[name]) for name, p in final_a.items())


@pytest.mark.parametrize("preset", ["lanton", "muon"])
def test_scheduler_scales_every_group_by_the_same_factor(preset, uninterrupted):
    trainer, lrs, _ = uninterrupted[preset]
    optimizer = steepest.hf.unwrap(trainer)
    base = [g["initial_lr"] for g in optimizer.param_groups]
    assert len(set(base)) > 1, "the presets give roles different lrs"
    assert len(lrs) == STEPS
    schedule = trainer.lr_scheduler.lr_lambdas[0]
    for step, row in enumerate(lrs, start=1):
        assert row == pytest.approx([b * schedule(step) for b in base], rel=1e-12, abs=0)
    factors = [row[0] / base[0] for row in lrs]
    assert factors[0] == pytest.approx(0.5) and factors[1] == pytest.approx(1.0)  # 2 warmup steps, then cosine
    assert factors[1] > factors[2] > factors[-1] >= 0.0


def test_groups_follow_roles_not_trainer_weight_decay(tmp_path):
    trainer = make_trainer(tmp_path, "muon", weight_decay=0.1, adamw_weight_decay=0.01)
    optimizer = steepest.hf.unwrap(trainer.create_optimizer())
    assert isinstance(optimizer, steepest.Muon)
    names = [n for g in optimizer.param_groups for n in g["param_names"]]
    assert sorted(names) == sorted(n for n, _ in trainer.model.named_parameters())  # each tensor exactly once
    roles = {n: g["role"] for g in optimizer.param_groups for n in g["param_names"]}
    assert roles["transformer.wte.weight"] == "head"  # tied to lm_head: one tensor, one group
    assert roles["transformer.wpe.weight"] == "embedding"
    assert roles["transformer.h.0.mlp.c_fc.weight"] == "hidden"
    assert roles["transformer.h.0.ln_1.bias"] == "vector"
    decay = {g["role"]: g["weight_decay"] for g in optimizer.param_groups}
    assert decay == {"embedding": 0.01, "head": 0.01, "hidden": 0.0, "vector": 0.01}  # steepest's, not 0.1


def test_options_reach_the_preset(tmp_path):
    trainer = make_trainer(tmp_path, "LANTON", lr=0.01, sign_lr=1e-3, overrides={"vector": {"lr": 2e-3}})
    optimizer = steepest.hf.unwrap(trainer.create_optimizer())
    assert isinstance(optimizer, steepest.LANTON)
    lrs = {g["role"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == {"embedding": 1e-3, "head": 1e-3, "hidden": 0.01, "vector": 2e-3}


def test_unknown_name_raises_steepest_create_error():
    with pytest.raises(ValueError) as expected:
        steepest.create("adamw-typo", torch.nn.Linear(2, 2))
    with pytest.raises(ValueError) as got:
        steepest.hf.optimizer_cls_and_kwargs("adamw-typo")
    assert str(got.value) == str(expected.value)
    assert str(got.value).startswith("unknown optimizer 'adamw-typo'; choose from muon, ")


def test_bad_inputs_raise_before_training():
    with pytest.raises(TypeError, match=r"takes no option\(s\) sign_lr, wd; its options: "):
        steepest.hf.optimizer_cls_and_kwargs("muon", wd=0.1, sign_lr=1e-3)
    with pytest.raises(TypeError, match="takes the optimizer name, not the model"):
        steepest.hf.optimizer_cls_and_kwargs(tiny_gpt2())
    with pytest.raises(ValueError, match="noise_source='second' needs optimizer.step"):
        steepest.hf.optimizer_cls_and_kwargs("lanton", noise_source="second")
    with pytest.raises(ValueError, match="noise_source='second' needs optimizer.step"):
        steepest.hf.optimizer_cls_and_kwargs("muon", overrides={"hidden": {"noise_source": "second"}})
    with pytest.raises(TypeError, match="needs the model"):
        steepest.hf.TrainerOptimizerFactory()([torch.zeros(2, requires_grad=True)], preset="muon")


def test_unwrap(tmp_path):
    trainer = make_trainer(tmp_path, "muon")
    with pytest.raises(ValueError, match="trainer.optimizer is None"):
        steepest.hf.unwrap(trainer)
    with pytest.raises(TypeError, match="no steepest optimizer inside SGD"):
        steepest.hf.unwrap(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1))
    trainer.create_optimizer()
    assert steepest.hf.unwrap(trainer) is trainer.optimizer
    assert "transformer.h.0.attn.c_attn.weight" in steepest.explain(steepest.hf.unwrap(trainer))


def test_factory_is_what_trainer_calls_a_factory():
    from transformers.trainer_optimizer import is_optimizer_factory

    cls, kwargs = steepest.hf.optimizer_cls_and_kwargs("lion-k", lr=1e-4)
    assert is_optimizer_factory(cls) and kwargs == {"preset": "lion_k", "lr": 1e-4}


def test_missing_or_old_transformers_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers.trainer_optimizer", None)  # a release without factories
    with pytest.raises(ImportError, match=r"has no optimizer factories in Trainer .* optimizers=\(steepest.create"):
        steepest.hf.optimizer_cls_and_kwargs("muon")
    monkeypatch.setitem(sys.modules, "transformers", None)  # not installed
    with pytest.raises(ImportError, match=r"^steepest.hf needs transformers and accelerate: pip install 'steepest\[hf\]'$"):
        steepest.hf.optimizer_cls_and_kwargs("muon")


def test_import_steepest_does_not_import_transformers():
    code = "import sys, steepest, steepest.hf; sys.exit('transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120).returncode == 0


def test_example_script_runs(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "hf_trainer.py"), "--preset", "muon",
                             "--steps", "4", "--output-dir", str(tmp_path)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "transformer.h.0.mlp.c_fc.weight" in result.stdout
    assert "muon: loss " in result.stdout and " in 4 steps" in result.stdout


def test_gpt2_conv1d_weights_get_their_true_fans():
    transformers = pytest.importorskip("transformers")
    import steepest

    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=16)
    model = transformers.GPT2LMHeadModel(config)
    opt = steepest.for_model(model, "muon", lr=0.02)
    by_name = {n: (g, p) for g in opt.param_groups for n, p in zip(g["param_names"], g["params"])}
    for name in ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"):
        group, _ = by_name[f"transformer.h.0.{name}"]
        assert group["layout"] == "in_out" and group["role"] == "hidden"
    # c_fc maps 32 -> 128 (stored 32 x 128): Muon's factor sqrt(max(1, 128/32)) = 2; c_proj 128 -> 32: 1
    group, p = by_name["transformer.h.0.mlp.c_fc.weight"]
    assert opt.effective_lr(group, p) == pytest.approx(0.04)
    group, p = by_name["transformer.h.0.mlp.c_proj.weight"]
    assert opt.effective_lr(group, p) == pytest.approx(0.02)
