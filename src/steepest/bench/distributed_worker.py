"""One rank of ``steepest bench distributed`` (run under ``torchrun``; gloo on CPU, NCCL on CUDA).

Times ``optimizer.step()`` on the hidden matrices of the benchmark GPT, replicated (DDP: the
optimizer gets the process group) and sharded with FSDP2's ``fully_shard`` (the optimizer gets the
1-D mesh), for steepest's Muon and LANTON and for ``torch.optim.Muon`` as shipped (bfloat16
Newton-Schulz; on FSDP2 it runs on the sharded DTensors, which DTensor redistributes). Gradients
are fixed random tensors set directly, so only the optimizer step is timed. Each timed step is
bracketed by barriers: its time is the slowest rank's. Rank 0 writes a JSON file.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.distributed as dist
from torch import nn

from ..distributed.shutdown import exit_process_group

OPTIMIZERS = ("steepest-muon", "steepest-lanton", "torch-muon")
MODES = ("ddp", "fsdp")


def hidden_matrices(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The GPT's 2-D parameters inside its blocks (the matrices Muon-class optimizers orthogonalize)."""
    return [(n, p) for n, p in model.named_parameters() if n.startswith("blocks.") and p.ndim == 2]


def build_optimizer(name: str, params: list[tuple[str, nn.Parameter]], topology):
    import steepest

    group = [{"params": params, "role": "hidden"}]
    if name == "steepest-muon":
        return steepest.Muon(group, lr=0.02, distributed_mesh=topology)
    if name == "steepest-lanton":
        return steepest.LANTON(group, lr=0.02, distributed_mesh=topology)
    if name == "torch-muon":
        return torch.optim.Muon([p for _, p in params], lr=0.02)
    raise ValueError(f"unknown optimizer {name!r}")


def gradients(shapes: list[torch.Size], step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7 + step)
    return [torch.randn(shape, generator=g) for shape in shapes]


def time_steps(opt, params: list[nn.Parameter], mesh, sharded: bool, warmup: int, steps: int) -> list[float]:
    from torch.distributed.tensor import Shard, distribute_tensor

    shapes = [p.shape for p in params]
    times = []
    for step in range(warmup + steps):
        for p, g in zip(params, gradients(shapes, step)):
            p.grad = distribute_tensor(g, mesh, [Shard(0)]) if sharded else g
        dist.barrier()
        start = time.perf_counter()
        opt.step()
        dist.barrier()
        if step >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return times


def main(argv: list[str] | None = None) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from .gpt import GPT, GPTConfig

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    mesh = init_device_mesh("cpu", (world,))
    cfg = GPTConfig(vocab_size=84, d_model=args.d_model, n_layer=args.layers, n_head=4)
    rows = []
    for mode in MODES:
        for name in args.optimizers.split(","):
            model = GPT(cfg, seed=0)
            if mode == "fsdp":
                for block in model.blocks:
                    fully_shard(block, mesh=mesh)
                fully_shard(model, mesh=mesh)
            named = hidden_matrices(model)
            topology = mesh if mode == "fsdp" else dist.group.WORLD
            opt = build_optimizer(name, named, topology)
            times = time_steps(opt, [p for _, p in named], mesh, mode == "fsdp", args.warmup, args.steps)
            rows.append({"optimizer": name, "mode": mode, "median_ms": statistics.median(times),
                         "min_ms": min(times), "times_ms": times})
    if rank == 0:
        shapes = sorted({tuple(p.shape) for _, p in hidden_matrices(GPT(cfg, seed=0))})
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump({"world": world, "threads_per_rank": args.threads, "config": cfg.as_dict(),
                       "matrices": len(hidden_matrices(GPT(cfg, seed=0))), "shapes": shapes, "rows": rows},
                      handle, indent=1)
    exit_process_group()


if __name__ == "__main__":
    main()
