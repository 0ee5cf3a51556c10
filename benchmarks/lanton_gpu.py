"""LANTON on one GPU: its noise rules against its base, steepest's Muon, torch.optim.Muon and AdamW on a
25M-parameter character GPT (8 blocks, width 512, context 256) for a fixed token budget.

Every optimizer trains the same initial weights on the same batches (seed 0) for ``--steps`` steps
of ``--batch-size`` windows (600 x 32 x 256 = 4.9M tokens by default), warm-up + cosine schedule,
bfloat16 autocast on CUDA, at each multiplier of ``--lr-mults`` times its benchmark base lr
(``steepest.bench.peers.DEFAULT_LRS``, the lrs the CPU study ``steepest bench lanton`` sweeps
around). It records the final validation loss (16 fixed batches), the training seconds, the median
and mean optimizer-step times (CUDA-synchronized) and LANTON's per-layer factors, and writes
``results.json`` and ``report.md`` into ``--out``. The default set finishes in about 5 minutes on
an H100; ``--max-minutes`` stops starting new runs past a budget (those are listed as skipped).

The text is read through ``steepest.bench.data.load_data`` (the verified Shakespeare cache; point
``STEEPEST_CACHE`` at a copy of it on a machine without internet) or from ``--text FILE``.

    python benchmarks/lanton_gpu.py --out bench-out/lanton-gpu            # on a CUDA machine
    python benchmarks/lanton_gpu.py --tiny --device cpu --text FILE        # the CPU check of the script
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

import steepest
from steepest.bench.data import fixed_batches, load_data, random_batch
from steepest.bench.gpt import GPT, GPTConfig, count_parameters
from steepest.bench.peers import DEFAULT_LRS, build_peer
from steepest.bench.tasks import lr_multiplier

OPTIMIZERS = ("adamw", "torch-muon", "steepest-muon", "steepest-lanton-base", "steepest-lanton-min-ratio",
              "steepest-lanton-sqrt-ratio", "steepest-lanton-alpha-sqrt")
FULL = {"model": {"n_layer": 8, "d_model": 512, "n_head": 8, "ctx": 256}, "steps": 600, "batch_size": 32,
        "eval_every": 100, "eval_batches": 16}
TINY = {"model": {"n_layer": 2, "d_model": 32, "n_head": 2, "ctx": 16}, "steps": 6, "batch_size": 4,
        "eval_every": 3, "eval_batches": 2}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and a few steps (checks the script)")
    parser.add_argument("--text", help="train on this UTF-8 file instead of the Shakespeare cache")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS), help="comma-separated bench peer names")
    parser.add_argument("--lr-mults", default="1,2", help="lr multipliers of each base lr (default 1,2)")
    parser.add_argument("--steps", type=int, help="training steps (default 600; tiny 6)")
    parser.add_argument("--batch-size", type=int, help="windows per step (default 32; tiny 4)")
    parser.add_argument("--max-minutes", type=float, default=7.5, help="start no run after this (default 7.5)")
    parser.add_argument("--out", default="bench-out/lanton-gpu", help="output directory")
    return parser.parse_args(argv)


def evaluate(model, batches, autocast) -> float:
    model.eval()
    with torch.no_grad(), autocast():
        losses = [model(x, y)[1].float().item() for x, y in batches]
    model.train()
    return sum(losses) / len(losses)


def train_one(name: str, lr: float, cfg: GPTConfig, data, val, setup: dict, device: torch.device) -> dict:
    """One optimizer at one lr: the loss curve, timings and (LANTON) the last per-layer factors."""
    model = GPT(cfg, seed=0).to(device)
    peer = build_peer(name, model, lr=lr)
    steps = setup["steps"]
    warmup = max(1, round(0.05 * steps))
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: lr_multiplier(s, steps, warmup, 0.1))
                  for o in peer.optimizers]
    generator = torch.Generator().manual_seed(1)
    cuda = device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    curve, opt_s, train_s = [{"step": 0, "val_loss": evaluate(model, val, autocast)}], [], 0.0
    status = "ok"
    for step in range(1, steps + 1):
        x, y = random_batch(data.train, setup["batch_size"], cfg.ctx, generator)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        sync()
        t0 = time.perf_counter()
        peer.zero_grad(set_to_none=True)
        with autocast():
            loss = model(x, y)[1]
        loss.backward()
        sync()
        t1 = time.perf_counter()
        try:
            peer.step()
        except FloatingPointError:
            status = "diverged"
        sync()
        t2 = time.perf_counter()
        for scheduler in schedulers:
            scheduler.step()
        opt_s.append(t2 - t1)
        train_s += t2 - t0
        if status != "ok" or not math.isfinite(loss.item()):
            status = "diverged"
            break
        if step % setup["eval_every"] == 0 or step == steps:
            curve.append({"step": step, "val_loss": evaluate(model, val, autocast), "train_seconds": train_s})
    kept = opt_s[3:] or opt_s
    factors = [row for o in peer.optimizers for row in getattr(o, "layer_stats", lambda: [])()]
    return {"optimizer": name, "lr": lr, "status": status, "final": curve[-1]["val_loss"] if status == "ok" else None,
            "curve": curve, "train_seconds": train_s, "opt_step_ms": statistics.median(kept) * 1e3,
            "opt_step_mean_ms": statistics.fmean(kept) * 1e3,
            "factors": [{"parameter": r["parameter"], "role": r["role"], "factor": r["factor"]} for r in factors]}


def report(results: dict) -> str:
    env = results["environment"]
    lines = ["# LANTON on one GPU", "",
             f"{env['device']}, torch {env['torch']}, steepest {env['steepest']}; model {env['model']} "
             f"({env['parameters']:,} parameters), {env['steps']} steps x {env['batch_size']} windows "
             f"({env['tokens']:,} tokens), seed 0, bfloat16 autocast on CUDA.", "",
             "| optimizer | lr | final val loss | train s | opt.step ms (median) | opt.step ms (mean) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for run in results["runs"]:
        final = "diverged" if run["status"] != "ok" else f"{run['final']:.4f}"
        lines.append(f"| {run['optimizer']} | {run['lr']:.3g} | {final} | {run['train_seconds']:.1f} | "
                     f"{run['opt_step_ms']:.2f} | {run['opt_step_mean_ms']:.2f} |")
    if results["skipped"]:
        lines += ["", f"Skipped (past --max-minutes): {', '.join(results['skipped'])}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("lanton_gpu.py: no CUDA device here (use --device cpu --tiny to check the script)")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    setup = dict(TINY if args.tiny else FULL)
    if args.steps:
        setup["steps"] = args.steps
    if args.batch_size:
        setup["batch_size"] = args.batch_size
    data = load_data(text_file=args.text) if args.text else load_data("shakespeare-char")
    cfg = GPTConfig(vocab_size=data.vocab_size, **setup["model"])
    val = [(x.to(device), y.to(device)) for x, y in fixed_batches(data.val, setup["eval_batches"],
                                                                  setup["batch_size"], cfg.ctx, seed=4321)]
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    mults = [float(m) for m in args.lr_mults.split(",")]
    started = time.perf_counter()
    runs, skipped = [], []
    for name in names:
        for mult in mults:
            label = f"{name} x{mult:g}"
            if time.perf_counter() - started > 60 * args.max_minutes:
                skipped.append(label)
                continue
            run = train_one(name, DEFAULT_LRS[name] * mult, cfg, data, val, setup, device)
            runs.append({**run, "lr_multiplier": mult})
            print(f"{label}: {run['status']} final {run['final']} in {run['train_seconds']:.1f} s, opt.step "
                  f"{run['opt_step_ms']:.2f} ms median / {run['opt_step_mean_ms']:.2f} ms mean", flush=True)
    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "steepest": steepest.__version__, "model": setup["model"],
           "parameters": count_parameters(GPT(cfg)), "steps": setup["steps"], "batch_size": setup["batch_size"],
           "tokens": setup["steps"] * setup["batch_size"] * cfg.ctx, "seconds": time.perf_counter() - started}
    results = {"environment": env, "runs": runs, "skipped": skipped}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    text = report(results)
    (out / "report.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
