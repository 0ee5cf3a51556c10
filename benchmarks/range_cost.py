"""What the numeric-range fixes of 0.7 cost per optimizer step: an in-process A/B.

The 0.7 code paths (range-safe norms, the exact Newton-Schulz prescale, Adam's hypot update,
M-FAC's prescaled window products) are swapped for 0.6-equivalent ones on alternating steps of the
same optimizer, so machine drift hits both alike; separate processes varied by 1-2 ms on a shared
2-core CPU, more than the effect. Prints the median step time of each side per preset.

    python benchmarks/range_cost.py                    # the quick-bench GPT on the CPU, 2 threads
    python benchmarks/range_cost.py --device cuda --gpt2-small
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import steepest
import steepest.optim.fisher_window as mfac_mod
import steepest.optim.transforms as transforms
from steepest.bench.gpt import GPT, GPTConfig
from steepest.geometry import colrow, sign

newton_schulz = sys.modules["steepest.polar.newton_schulz"]


# -- the 0.6 code paths ------------------------------------------------------------------------
def old_prescaled(G, dtype, eps, input_scale):
    return G.to(dtype)


def old_rms_kernel(r, g, beta2):  # r held v in 0.6; the sqrt copy was taken in the caller
    r.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    r.sqrt()


def old_sign_dual_norm(self, x):
    return x.abs().sum()


def old_norms_along(x, dim):
    m = colrow.as_matrix(x)
    return torch.linalg.vector_norm(m if m.dtype in (torch.float32, torch.float64) else m.float(), dim=dim)


def old_normalize_along(x, dim):
    m = colrow.as_matrix(x)
    w = m if m.dtype in (torch.float32, torch.float64) else m.float()
    n = torch.linalg.vector_norm(w, dim=dim, keepdim=True)
    return (w / torch.where(n > 0, n, 1.0)).reshape(x.shape)


def old_insert_gradient(windows, grams, grads, row, whole_sums=None):
    parts = []
    for w, g in zip(windows, grads):
        w[row].copy_(g.reshape(-1))
        parts.append(torch.mv(w, w[row]))
    total = None
    for k, part in zip(grams, parts):
        k[row].copy_(part)
        k[:, row].copy_(part)
        total = part.double() if total is None else total + part.double()
    return total


SWAPS = [  # (module or class, attribute, 0.6 version)
    (newton_schulz, "_prescaled", old_prescaled),
    (transforms, "rms_kernel", old_rms_kernel),
    (sign.Sign, "dual_norm", old_sign_dual_norm),
    (colrow, "_norms_along", old_norms_along),
    (colrow, "_normalize_along", old_normalize_along),
    (mfac_mod, "insert_gradient", old_insert_gradient),
]
NEW = [(owner, name, getattr(owner, name)) for owner, name, _ in SWAPS]


def use(paths):
    for owner, name, value in paths:
        setattr(owner, name, value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="muon,scion,lanton,diffgrad,mfac")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--gpt2-small", action="store_true", help="12 x 768, vocabulary 50304 (else the quick GPT)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = GPTConfig(vocab_size=50304, n_layer=12, d_model=768, n_head=12, ctx=1024) if args.gpt2_small else GPTConfig()
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    print(f"steepest {steepest.__version__}, torch {torch.__version__}, {args.device}, "
          f"{'GPT-2-small shape' if args.gpt2_small else 'quick-bench GPT'}")
    for preset in args.presets.split(","):
        model = GPT(cfg, seed=0).to(args.device)
        opt = steepest.for_model(model, preset)
        gen = torch.Generator(device=args.device).manual_seed(0)
        grads = {p: torch.randn(p.shape, device=args.device, generator=gen) * 1e-2 for p in model.parameters()}
        times = {"0.7": [], "0.6 paths": []}
        for i in range(2 * args.rounds):
            side = "0.7" if i % 2 else "0.6 paths"
            use(NEW if side == "0.7" else SWAPS)
            for p in model.parameters():
                p.grad = grads[p] + 1e-3 * i  # consecutive gradients differ (LANTON's noise estimate)
            sync()
            t = time.perf_counter()
            opt.step()
            sync()
            times[side].append(time.perf_counter() - t)
        use(NEW)
        new, old = (statistics.median(v[10:]) * 1e3 for v in (times["0.7"], times["0.6 paths"]))
        print(f"{preset:10s} 0.7 {new:8.2f} ms   0.6 paths {old:8.2f} ms   {new - old:+.2f} ms ({new / old - 1:+.1%})")


if __name__ == "__main__":
    main()
