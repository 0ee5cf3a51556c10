"""How much of LANTON's "previous gradient" noise estimate is drift rather than noise.

Trains the benchmark GPT with steepest.Muon (lr 0.02, aux AdamW 2e-3, batch 32) and, at steps 20
and 100, compares for every hidden matrix the nuclear norm of ``g_t - g_{t-1}`` (consecutive
batches at consecutive points: noise_source="previous") with that of ``g_t - g'_t`` (two
independent batches at the same point: noise_source="second"). A ratio of 1 means the previous-step
estimate measures noise only; above 1 it also measures how far the gradient moved.

Usage: python benchmarks/lanton_noise_drift.py   (about 30 s on 2 cores)
"""
import torch

import steepest
from steepest.bench.data import load_data, random_batch
from steepest.bench.gpt import GPT, GPTConfig
from steepest.optim.noise import nuclear_norm_estimate


def main() -> None:
    data = load_data("shakespeare-char")
    model = GPT(GPTConfig(vocab_size=data.vocab_size), seed=1234)
    opt = steepest.for_model(model, "muon", lr=0.02, adamw_lr=2e-3, embedding_lr=None)
    gen = torch.Generator().manual_seed(1)
    roles = steepest.roles.classify(model)
    hidden = [(n, p) for n, p in model.named_parameters() if roles[n] == "hidden"]

    def grads(x, y):
        model.zero_grad()
        _, loss = model(x, y)
        loss.backward()
        return [p.grad.detach().clone() for _, p in hidden]

    prev = None
    for step in range(1, 101):
        x, y = random_batch(data.train, 32, 128, gen)
        g = grads(x, y)
        if step in (20, 100):
            x2, y2 = random_batch(data.train, 32, 128, gen)
            g2 = grads(x2, y2)
            moved = nuclear_norm_estimate([a - b for a, b in zip(g, prev)], "quintic")
            same_point = nuclear_norm_estimate([a - b for a, b in zip(g, g2)], "quintic")
            ratios = sorted((float(a / b), n) for a, b, (n, _) in zip(moved, same_point, hidden))
            print(f"step {step}: ||g_t - g_(t-1)||_nuc / ||g_t - g'_t||_nuc over {len(ratios)} hidden "
                  f"matrices: min {ratios[0][0]:.2f} ({ratios[0][1]}), max {ratios[-1][0]:.2f} ({ratios[-1][1]})")
            grads(x, y)  # the step uses the first batch's gradient
        prev = g
        opt.step()


if __name__ == "__main__":
    main()
