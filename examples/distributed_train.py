"""Train the benchmark GPT with a steepest optimizer under DDP or FSDP2.

    torchrun --nproc-per-node 2 examples/distributed_train.py --mode ddp
    torchrun --nproc-per-node 2 examples/distributed_train.py --mode fsdp2 --checkpoint ckpt/

The data is a synthetic token stream with a simple rule (each token is the sum of the two before
it, modulo the vocabulary), so the example runs anywhere and its loss visibly falls. Each rank
draws its own batches. With ``--checkpoint`` the model and optimizer are saved with
``torch.distributed.checkpoint`` at the end (and loaded first when the directory exists), so a
checkpoint saved on 2 ranks resumes on any number of ranks.
"""
from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP

import steepest
from steepest.bench.gpt import GPT, GPTConfig

VOCAB = 32


def batch(rank: int, step: int, size: int = 8, length: int = 33) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(rank * 100_003 + step)
    seq = torch.randint(0, VOCAB, (size, length), generator=g)
    for t in range(2, length):
        seq[:, t] = (seq[:, t - 1] + seq[:, t - 2]) % VOCAB
    return seq[:, :-1], seq[:, 1:]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("ddp", "fsdp2"), default="fsdp2")
    parser.add_argument("--preset", default="muon")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--checkpoint", default=None)
    args = parser.parse_args()

    dist.init_process_group("gloo")  # "nccl" on GPUs (then move the model to the rank's device)
    rank = dist.get_rank()
    model = GPT(GPTConfig(vocab_size=VOCAB, d_model=64, n_layer=2, n_head=4, ctx=32), seed=0)

    if args.mode == "ddp":
        model = DDP(model)
        topology = model.process_group          # DDP: the process group
    else:
        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        topology = mesh                         # FSDP2: the 1-D device mesh

    opt = steepest.for_model(model, args.preset, distributed_mesh=topology)

    if args.checkpoint and os.path.isdir(args.checkpoint):
        model_sd, optim_sd = get_state_dict(model, opt)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=args.checkpoint)
        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])

    for step in range(args.steps):
        x, y = batch(rank, step)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if rank == 0 and (step % 10 == 0 or step == args.steps - 1):
            print(f"step {step:3d}  loss {loss.item():.3f}", flush=True)

    if args.checkpoint:
        model_sd, optim_sd = get_state_dict(model, opt)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=args.checkpoint)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
