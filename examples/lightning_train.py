"""Train a tiny next-token model with a steepest optimizer under PyTorch Lightning.

    pip install 'steepest[lightning]'
    python examples/lightning_train.py --preset muon
    python examples/lightning_train.py --preset lanton --accumulate 2 --clip 1.0
    python examples/lightning_train.py --preset lanton --resume  # after an interruption: same arguments

The task is synthetic and runs on a CPU in well under a minute: given two tokens ``a, b`` predict
``(a + b) mod vocab``. The model has the roles of a typical network (an embedding, hidden
matrices, a LayerNorm and biases, an output head named ``head``), and the table printed at the
start (``steepest.explain``) shows what each parameter gets from the chosen preset.

The steepest part is ``configure_optimizers``: one line builds the optimizer with a param group
per role, and a ``LambdaLR`` scales every group's own lr by one warmup + cosine factor, stepped
after every optimizer step (``"interval": "step"``). Everything else is ordinary Lightning:
``accumulate_grad_batches``, ``gradient_clip_val``, and a ``ModelCheckpoint`` that writes
``last.ckpt`` at the end of every epoch. Run again with the same arguments plus ``--resume`` and
training continues from there exactly as if it had never stopped (optimizer state, scheduler
position, step counter, data order); with a larger ``--epochs`` it continues on a longer
schedule instead. Logs go to ``<dir>/logs`` (CSV).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import steepest


class NextToken(nn.Module):
    def __init__(self, vocab: int, dim: int = 32, hidden: int = 64):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)                      # role: embedding
        self.mlp = nn.Sequential(nn.Linear(2 * dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, hidden), nn.GELU())  # role: hidden (biases: vector)
        self.norm = nn.LayerNorm(hidden)                           # role: vector
        self.head = nn.Linear(hidden, vocab)                       # role: head (by its name)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.mlp(self.embed(pairs).flatten(1))))


class Task(L.LightningModule):
    def __init__(self, preset: str = "muon", lr: float | None = None, vocab: int = 16, warmup: int = 2):
        super().__init__()
        self.save_hyperparameters()
        self.model = NextToken(vocab)

    def training_step(self, batch, batch_idx):
        pairs, target = batch
        loss = F.cross_entropy(self.model(pairs), target)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def configure_optimizers(self):
        optimizer = steepest.for_model(self, self.hparams.preset, lr=self.hparams.lr)
        print(steepest.explain(optimizer))
        # estimated_stepping_batches: optimizer steps of the whole run (accumulation included).
        # An exact resume needs the same number, i.e. the same max_epochs / max_steps.
        total, warmup = self.trainer.estimated_stepping_batches, self.hparams.warmup

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_epoch_end(self):
        optimizer = self.optimizers().optimizer
        lrs = ", ".join(f"{g['role']} {g['lr']:.3g}" for g in optimizer.param_groups)
        loss = self.trainer.callback_metrics["train_loss_epoch"].item()
        print(f"epoch {self.current_epoch}  step {self.global_step}  loss {loss:.4f}  lr: {lrs}")


def data(vocab: int, samples: int, batch_size: int, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    pairs = torch.randint(0, vocab, (samples, 2), generator=g)
    dataset = TensorDataset(pairs, pairs.sum(1) % vocab)
    # Shuffled by (seed, epoch): Lightning calls the sampler's set_epoch with the restored epoch, so a
    # resumed run sees the same batches as an uninterrupted one (shuffle=True would draw a fresh order
    # from the global RNG, which a checkpoint does not restore). One replica: a single-device sampler.
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="muon", choices=steepest.names())
    parser.add_argument("--lr", type=float, default=None, help="the preset's main lr (default: its own)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--steps-per-epoch", type=int, default=40, help="optimizer steps per epoch")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--accumulate", type=int, default=1, help="accumulate_grad_batches")
    parser.add_argument("--clip", type=float, default=None, help="gradient_clip_val (global norm)")
    parser.add_argument("--dir", default="lightning_run", help="checkpoints and CSV logs go here")
    parser.add_argument("--resume", action="store_true", help="continue from <dir>/checkpoints/last.ckpt")
    args = parser.parse_args(argv)

    L.seed_everything(0, verbose=False)
    root = Path(args.dir)
    module = Task(args.preset, args.lr)
    samples = args.steps_per_epoch * args.accumulate * args.batch_size
    trainer = L.Trainer(
        accelerator="auto", devices=1, max_epochs=args.epochs,
        accumulate_grad_batches=args.accumulate, gradient_clip_val=args.clip,
        callbacks=[ModelCheckpoint(dirpath=root / "checkpoints", save_last=True)],
        logger=CSVLogger(root, name="logs"), log_every_n_steps=min(10, args.steps_per_epoch),
        enable_progress_bar=False, enable_model_summary=False,
    )
    last = root / "checkpoints" / "last.ckpt"
    ckpt_path = str(last) if args.resume and last.exists() else None
    if ckpt_path:
        print(f"resuming from {ckpt_path}")
    trainer.fit(module, data(module.hparams.vocab, samples, args.batch_size), ckpt_path=ckpt_path)
    return {"global_step": trainer.global_step, "loss": trainer.callback_metrics["train_loss_epoch"].item()}


if __name__ == "__main__":
    main()
