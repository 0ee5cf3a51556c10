"""Train a small GPT-2 with Hugging Face's Trainer and a steepest optimizer built by roles.

    pip install 'steepest[hf]'
    python examples/hf_trainer.py                    # LANTON, 40 steps
    python examples/hf_trainer.py --preset muon --steps 20

Nothing is downloaded: the model is built from a tiny ``GPT2Config`` and the data is a synthetic
token stream with a rule a model can learn (each token is ``3 * previous + 1`` modulo the
vocabulary, from a random first token), so the loss visibly falls within a few dozen steps. The one line that matters is
``optimizer_cls_and_kwargs=steepest.hf.optimizer_cls_and_kwargs(args.preset)``: Trainer hands its
model to steepest, which puts every parameter in its role's group (hidden matrices, embeddings,
the tied LM head, vectors) with the preset's lr and weight decay; Trainer's scheduler, gradient
accumulation and checkpoints work on that optimizer as on AdamW.
"""
from __future__ import annotations

import argparse
import tempfile

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

import steepest
import steepest.hf

VOCAB = 64
LENGTH = 32


def synthetic_tokens(count: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``count`` sequences following ``x[t] = (3 * x[t-1] + 1) % VOCAB``, as causal-LM examples."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(0, VOCAB, (count, LENGTH), generator=g)
    for t in range(1, LENGTH):
        seq[:, t] = (3 * seq[:, t - 1] + 1) % VOCAB
    return [{"input_ids": s, "labels": s} for s in seq]


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    """A 2-layer GPT-2 from a config (random init, no download)."""
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=LENGTH,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="lanton", choices=steepest.names())
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--output-dir", default=None, help="checkpoints go here (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        training_args = TrainingArguments(
            output_dir=args.output_dir or scratch,
            max_steps=args.steps,
            per_device_train_batch_size=8,
            gradient_accumulation_steps=2,
            lr_scheduler_type="cosine",
            warmup_steps=max(1, args.steps // 10),
            logging_steps=max(1, args.steps // 10),
            save_strategy="no",
            use_cpu=True,
            report_to=[],
            disable_tqdm=True,
            seed=0,
        )
        trainer = Trainer(
            model=tiny_gpt2(),
            args=training_args,
            train_dataset=synthetic_tokens(512),
            optimizer_cls_and_kwargs=steepest.hf.optimizer_cls_and_kwargs(args.preset),
        )
        trainer.create_optimizer()  # optional: built here only to print it; train() would build it
        print(steepest.explain(steepest.hf.unwrap(trainer)))
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        print(f"{args.preset}: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {args.steps} steps")


if __name__ == "__main__":
    main()
