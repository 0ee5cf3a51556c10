"""steepest inside PyTorch Lightning (the real ``lightning`` package, CPU, a few steps each).

What is checked, and why it matters to a Lightning user:

- **Exact resume.** A run interrupted after 3 optimizer steps and resumed with
  ``trainer.fit(ckpt_path=...)`` ends with the same parameters (``torch.equal``), the same
  optimizer and scheduler state and the same logged losses as an uninterrupted 6-step run, for
  Muon and LANTON, with and without ``accumulate_grad_batches=2``, under a step-wise LR scheduler
  and gradient clipping, and with bfloat16 parameters. Lightning saves ``optimizer.state_dict()``
  and restores it with ``load_state_dict`` after ``configure_optimizers`` has built a fresh
  optimizer, so this holds as long as steepest's state round-trips and the schedule does not
  depend on the run's ``max_steps``.
  The checkpoint falls on an epoch boundary: with a plain ``DataLoader`` Lightning restarts an
  interrupted epoch from its first batch, which no optimizer can make exact (docs/lightning.md).
- **The closure protocol.** Automatic optimization calls ``optimizer.step(closure=...)`` with a
  closure that runs ``training_step``, ``backward`` and gradient clipping. steepest evaluates it
  exactly once per step, returns its loss, and steps on the clipped gradients.
- **Step arguments.** LANTON with ``noise_source="second"`` needs ``step(second_grads=...)``; that
  takes manual optimization, where Lightning passes keyword arguments of ``step`` through.
- **Unfreezing.** Lightning's ``BaseFinetuning.unfreeze_and_add_param_group`` adds unnamed
  tensors, which torch refuses next to ``for_model``'s named groups; the docs' role-aware recipe
  works.
- **The example script** ``examples/lightning_train.py`` runs, and resumes from its checkpoint.
"""
from __future__ import annotations

import math
import runpy
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning")

import steepest  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lightning_train.py"
TOTAL_STEPS = 6    # optimizer steps of the uninterrupted run
STEPS_PER_EPOCH = 3
BATCH = 4


class TinyClassifier(L.LightningModule):
    """An MLP with two hidden matrices (so LANTON has layers to compare), a head and biases.

    The schedule is warmup + cosine over a fixed ``total_steps``: a schedule computed from the
    trainer's ``max_steps`` would differ between the 3-step and the 6-step run.
    """

    def __init__(self, preset: str, total_steps: int = TOTAL_STEPS, **optimizer_kwargs):
        super().__init__()
        self.preset, self.total_steps, self.optimizer_kwargs = preset, total_steps, optimizer_kwargs
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
        self.step_losses: list[float] = []     # every training_step's loss
        self.step_returns: list = []           # what optimizer.step(closure) returned

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=False)
        self.step_losses.append(loss.item())
        return loss

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        self.step_returns.append(optimizer.step(closure=optimizer_closure))

    def configure_optimizers(self):
        optimizer = steepest.for_model(self, self.preset, **self.optimizer_kwargs)
        total, warmup = self.total_steps, 2

        def factor(step: int) -> float:  # one multiplier for every role's own lr
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def loader(accumulate: int) -> DataLoader:
    """A fixed, seeded data set of exactly ``STEPS_PER_EPOCH`` optimizer steps per epoch, in order."""
    n = STEPS_PER_EPOCH * accumulate * BATCH
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)


def trainer(root: Path, max_steps: int, **kwargs) -> "L.Trainer":
    kwargs.setdefault("logger", CSVLogger(root, name="logs"))
    return L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, log_every_n_steps=1,
                     enable_progress_bar=False, enable_model_summary=False, **kwargs)


def logged_losses(trainer_: "L.Trainer") -> dict[int, float]:
    """``{global step: train_loss}`` from the CSV logger's file (the last row of each step)."""
    import csv

    with open(Path(trainer_.logger.log_dir) / "metrics.csv", newline="") as f:
        return {int(row["step"]): float(row["train_loss"]) for row in csv.DictReader(f) if row["train_loss"]}


def tensors(state) -> list[torch.Tensor]:
    """Every tensor in a (nested) state dict, in a fixed order."""
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for key in sorted(state, key=str) for t in tensors(state[key])]
    if isinstance(state, (list, tuple)):
        return [t for item in state for t in tensors(item)]
    return []


@pytest.mark.parametrize("preset,accumulate,precision", [
    ("muon", 1, "32-true"), ("muon", 2, "32-true"), ("lanton", 1, "32-true"), ("lanton", 2, "32-true"),
    ("lanton", 2, "bf16-true"),   # bfloat16 parameters, float32 optimizer state through the checkpoint
])
def test_resumed_run_is_identical_to_uninterrupted(tmp_path, preset, accumulate, precision):
    clip = {"gradient_clip_val": 0.5, "accumulate_grad_batches": accumulate, "precision": precision}

    # A: six optimizer steps in one go
    # LANTON measures its noise at steps 2, 4 and 6: the checkpoint after step 3 falls between two
    options = {"noise_every": 2} if preset == "lanton" else {}
    L.seed_everything(0, verbose=False)
    module_a = TinyClassifier(preset, **options)
    trainer_a = trainer(tmp_path / "a", TOTAL_STEPS, enable_checkpointing=False, **clip)
    trainer_a.fit(module_a, loader(accumulate))

    # B: three steps (one epoch) with a checkpoint, then a fresh module and trainer resume to six
    def saver():  # the same callback in both parts, as a restarted job would have
        return ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=STEPS_PER_EPOCH, save_top_k=-1)

    L.seed_everything(0, verbose=False)
    trainer(tmp_path / "b1", STEPS_PER_EPOCH, callbacks=[saver()], **clip).fit(TinyClassifier(preset, **options),
                                                                              loader(accumulate))
    checkpoint = tmp_path / "ckpt" / f"epoch=0-step={STEPS_PER_EPOCH}.ckpt"
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == [checkpoint.name]

    L.seed_everything(123, verbose=False)  # a different seed: nothing may depend on the RNG after a resume
    module_b = TinyClassifier(preset, **options)
    trainer_b = trainer(tmp_path / "b2", TOTAL_STEPS, callbacks=[saver()], **clip)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
        trainer_b.fit(module_b, loader(accumulate), ckpt_path=checkpoint, weights_only=True)
    assert (tmp_path / "ckpt" / f"epoch=1-step={TOTAL_STEPS}.ckpt").exists()

    assert trainer_a.global_step == trainer_b.global_step == TOTAL_STEPS
    for (name, p_a), p_b in zip(module_a.named_parameters(), module_b.parameters()):
        assert torch.equal(p_a, p_b), f"{preset}, accumulate={accumulate}: {name} differs after resuming"
    opt_a, opt_b = trainer_a.optimizers[0], trainer_b.optimizers[0]
    assert type(opt_a) is type(opt_b) is steepest.PRESETS[preset]
    state_a, state_b = tensors(opt_a.state_dict()["state"]), tensors(opt_b.state_dict()["state"])
    assert len(state_a) == len(state_b) > 0 and all(torch.equal(a, b) for a, b in zip(state_a, state_b))
    assert [g["lr"] for g in opt_a.param_groups] == [g["lr"] for g in opt_b.param_groups]

    # the losses logged for steps 4-6 (global steps 3, 4, 5) are the same numbers
    losses_a, losses_b = logged_losses(trainer_a), logged_losses(trainer_b)
    resumed_steps = range(STEPS_PER_EPOCH, TOTAL_STEPS)
    assert sorted(losses_b) == list(resumed_steps)
    assert [losses_a[s] for s in resumed_steps] == [losses_b[s] for s in resumed_steps]
    # ... and every micro-batch's loss after the resume equals the uninterrupted run's
    assert module_b.step_losses == module_a.step_losses[STEPS_PER_EPOCH * accumulate:]

    # the closure ran once per micro-batch (never twice inside step) and step() returned its loss
    assert len(module_a.step_losses) == TOTAL_STEPS * accumulate
    assert len(module_a.step_returns) == TOTAL_STEPS
    for i, returned in enumerate(module_a.step_returns):
        # Lightning's closure returns the stepping micro-batch's loss divided by accumulate_grad_batches
        last_micro_batch = module_a.step_losses[(i + 1) * accumulate - 1]
        assert torch.is_tensor(returned) and returned.item() == pytest.approx(last_micro_batch / accumulate)

    if preset == "lanton":  # the noise estimates survived the round trip and are in use
        assert all(row["noise"] is not None for row in opt_b.layer_stats())


def test_gradient_clipping_reaches_the_optimizer(tmp_path):
    """Lightning clips inside the closure, after backward; steepest reads ``p.grad`` only after the
    closure has run, so it steps on the clipped gradients."""
    norms: dict[str, list[float]] = {}
    for label, clip in (("clipped", 1e-3), ("unclipped", None)):
        L.seed_everything(0, verbose=False)
        module = TinyClassifier("muon")
        seen = norms.setdefault(label, [])
        trainer_ = trainer(tmp_path / label, 2, logger=False, enable_checkpointing=False, gradient_clip_val=clip)

        class Record(L.Callback):
            def on_fit_start(self, trainer, pl_module):
                # a step post-hook still sees the gradients the step used (zero_grad comes later)
                def hook(optimizer, args, kwargs):
                    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
                    seen.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
                trainer.optimizers[0].register_step_post_hook(hook)

        trainer_.callbacks.append(Record())
        trainer_.fit(module, loader(1))
    assert len(norms["clipped"]) == len(norms["unclipped"]) == 2
    assert all(n <= 1e-3 * (1 + 1e-4) for n in norms["clipped"])
    assert all(n > 1e-2 for n in norms["unclipped"])


class SecondGradientLANTON(TinyClassifier):
    """LANTON with ``noise_source="second"`` under manual optimization: each batch is split in two
    halves; the first half's gradient is the update, the second half's (an independent sample at the
    same point) goes to ``step(second_grads=...)`` and only measures the noise."""

    def __init__(self):
        super().__init__("lanton", noise_source="second", noise_every=1)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        x, y = batch
        half = x.shape[0] // 2
        params = [p for group in optimizer.param_groups for p in group["params"]]
        noise_loss = F.cross_entropy(self.net(x[half:]), y[half:])
        second = torch.autograd.grad(noise_loss, params)   # leaves p.grad alone
        optimizer.zero_grad()
        loss = F.cross_entropy(self.net(x[:half]), y[:half])
        self.manual_backward(loss)
        optimizer.step(second_grads=second)                 # keyword arguments pass through Lightning
        scheduler.step()
        self.step_losses.append(loss.item())


def test_lanton_second_gradients_under_manual_optimization(tmp_path):
    L.seed_everything(0, verbose=False)
    module = SecondGradientLANTON()
    before = [p.detach().clone() for p in module.parameters()]
    trainer_ = trainer(tmp_path, 3, logger=False, enable_checkpointing=False)
    trainer_.fit(module, loader(1))
    assert trainer_.global_step == 3 and len(module.step_losses) == 3
    assert all(not torch.equal(b, p) for b, p in zip(before, module.parameters()))
    stats = trainer_.optimizers[0].layer_stats()
    assert stats and all(row["noise"] is not None and 0 < row["factor"] <= 1 for row in stats)


def test_second_gradients_are_required_under_automatic_optimization(tmp_path):
    """Automatic optimization calls ``step(closure)`` only, so a ``noise_source="second"`` group
    fails on its first step with steepest's error, and the parameters are left as they were."""
    L.seed_everything(0, verbose=False)
    module = TinyClassifier("lanton", noise_source="second", noise_every=1)
    before = [p.detach().clone() for p in module.parameters()]
    trainer_ = trainer(tmp_path, 1, logger=False, enable_checkpointing=False)
    with pytest.raises(ValueError, match=r"noise_source='second' but step\(\) got no second gradient"):
        trainer_.fit(module, loader(1))
    assert all(torch.equal(b, p) for b, p in zip(before, module.parameters()))


def add_unfrozen(optimizer, pl_module, module):
    """The docs' recipe: add ``module``'s trainable parameters that ``optimizer`` lacks, one named
    group per role (``steepest.roles.classify`` of the whole LightningModule)."""
    have = {id(p) for group in optimizer.param_groups for p in group["params"]}
    inside = {id(p) for p in module.parameters()}
    labels = steepest.roles.classify(pl_module)
    new = [(n, p) for n, p in pl_module.named_parameters()
           if p.requires_grad and id(p) in inside and id(p) not in have]
    for role in dict.fromkeys(labels[n] for n, _ in new):
        optimizer.add_param_group({"params": [(n, p) for n, p in new if labels[n] == role], "role": role})


class NoScheduler(TinyClassifier):
    def configure_optimizers(self):  # a LambdaLR cannot follow groups added later (torch's limit)
        return steepest.for_model(self, self.preset)


@pytest.mark.parametrize("recipe", ["lightning", "roles"])
def test_unfreezing_a_head_during_training(tmp_path, recipe):
    """Lightning's ``unfreeze_and_add_param_group`` adds bare tensors, which torch refuses next to
    ``for_model``'s named groups; adding ``(name, tensor)`` pairs per role works, and the unfrozen
    head gets the head's recipe (AdamW under Muon), not the hidden matrices' polar update."""
    from lightning.pytorch.callbacks import BaseFinetuning

    class UnfreezeHead(BaseFinetuning):
        def freeze_before_training(self, pl_module):
            self.freeze(pl_module.net[4])

        def finetune_function(self, pl_module, epoch, optimizer):
            if epoch == 1:
                if recipe == "lightning":
                    self.unfreeze_and_add_param_group(pl_module.net[4], optimizer)
                else:
                    self.make_trainable(pl_module.net[4])
                    add_unfrozen(optimizer, pl_module, pl_module.net[4])

    L.seed_everything(0, verbose=False)
    module = NoScheduler("muon")
    trainer_ = trainer(tmp_path, 2 * STEPS_PER_EPOCH, logger=False, enable_checkpointing=False,
                       callbacks=[UnfreezeHead()])
    if recipe == "lightning":
        with pytest.raises(ValueError, match="all optimizer param groups should be with/without names"):
            trainer_.fit(module, loader(1))
        return
    head = module.net[4].weight.detach().clone()
    trainer_.fit(module, loader(1))
    assert not torch.equal(head, module.net[4].weight)
    roles = {n: g["role"] for g in trainer_.optimizers[0].param_groups for n in g["param_names"]}
    assert roles["net.4.weight"] == "head" and roles["net.4.bias"] == "vector"
    assert [row["geometry"] for row in steepest.explain_rows(trainer_.optimizers[0])
            if row["parameter"] == "net.4.weight"] == ["none"]


def test_example_script_trains_and_resumes(tmp_path, capsys):
    main = runpy.run_path(str(EXAMPLE))["main"]
    args = ["--preset", "lanton", "--epochs", "1", "--steps-per-epoch", "3", "--dir", str(tmp_path)]
    first = main(args)
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    resumed = main(args[:2] + ["--epochs", "2"] + args[4:] + ["--resume"])
    assert first["global_step"] == 3 and resumed["global_step"] == 6
    assert math.isfinite(resumed["loss"])
    out = capsys.readouterr().out
    assert "resuming from" in out and "embedding" in out
