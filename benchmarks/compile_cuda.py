"""torch.optim.Muon against steepest's Muon eager, with Newton-Schulz compiled and with compile=True,
on a GPT-2-small-shaped model (12 x 768, vocabulary 50304, random gradients) on CUDA. The
configurations step in turn, so drift hits all alike; timing them one after another gave
misleading numbers on a shared GPU. The measurement behind compile="auto" staying eager
(steepest.compiled).

    python benchmarks/compile_cuda.py
"""
from __future__ import annotations

import statistics
import sys

import torch

import steepest
import steepest.optim.transforms as transforms
from steepest.bench.gpt import GPT, GPTConfig
from steepest.bench.peers import build_peer


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("compile_cuda.py needs a CUDA device")
    dev = "cuda"
    cfg = GPTConfig(vocab_size=50304, n_layer=12, d_model=768, n_head=12, ctx=1024)
    eager_kernel = transforms.kernel
    steps = {}
    for name, flag in [("torch.optim.Muon (+AdamW)", None), ("steepest, eager", False),
                       ("steepest, Newton-Schulz compiled", True), ("steepest, compile=True", True)]:
        model = GPT(cfg, seed=0).to(dev)
        gen = torch.Generator(device=dev).manual_seed(0)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, device=dev, generator=gen) * 1e-3
        steps[name] = build_peer("torch-muon", model, lr=0.02).step if flag is None else \
            steepest.for_model(model, "muon", compile=flag).step
    times = {name: [] for name in steps}
    for r in range(80):
        for name, step in steps.items():
            # "Newton-Schulz compiled": compile=True with the state transforms kept eager
            transforms.kernel = (lambda fn, c: fn) if name == "steepest, Newton-Schulz compiled" else eager_kernel
            torch.cuda.synchronize()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            step()
            b.record()
            torch.cuda.synchronize()
            if r >= 20:
                times[name].append(a.elapsed_time(b))
    transforms.kernel = eager_kernel
    print(f"steepest {steepest.__version__}, torch {torch.__version__}, {torch.cuda.get_device_name()}")
    for name, values in times.items():
        q = statistics.quantiles(values, n=4)
        print(f"{name:34s} {statistics.median(values):7.2f} ms per step (quartiles {q[0]:.2f}..{q[2]:.2f})")


if __name__ == "__main__":
    main()
