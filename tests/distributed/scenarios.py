"""Multi-process scenarios for the distributed tests, run under ``torchrun`` (gloo, CPU).

Usage: ``python -m torch.distributed.run --nproc-per-node N scenarios.py SCENARIO OUT_DIR [ARGS]``.
Rank 0 writes the scenario's results to ``OUT_DIR/result.pt``; the tests in ``test_distributed.py``
assert on them. Every rank sees the same batch: the data-parallel mean of identical gradients is
exactly the one-process gradient (a sum of two equal floats and a halving are exact), so the
comparison with one process measures the optimizer's distributed path alone.
"""
from __future__ import annotations

import copy
import os
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from torch.nn.parallel import DistributedDataParallel as DDP

import steepest
from steepest.distributed.shutdown import exit_process_group
from steepest.geometry import Spectral

PARITY_PRESETS = ("muon", "normuon", "scion", "lanton", "lion")
VOCAB, WIDTH = 37, 16
STEPS = 5
#: parameters whose gradient is dropped (set to None on every rank) at step 2
DROPPED = ("blocks.1.fc2.weight", "norm.bias")


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(WIDTH, 3 * WIDTH)
        self.fc2 = nn.Linear(3 * WIDTH, WIDTH, bias=False)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


class TinyLM(nn.Module):
    """Embedding (37 rows: uneven shards), two MLP blocks, a (3, 16) bottleneck, a norm and a head."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.squeeze = nn.Linear(WIDTH, 3)
        self.expand = nn.Linear(3, WIDTH)
        self.norm = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, VOCAB)

    def forward(self, idx):
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        x = x + self.expand(torch.tanh(self.squeeze(x)))
        return self.head(self.norm(x))


def make_model(seed: int = 0) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM()


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    tokens = torch.randint(0, VOCAB, (4, 9), generator=g)
    return tokens[:, :-1], tokens[:, 1:]


def train(model: nn.Module, opt, steps: range, names: dict, drop: bool = True) -> list[float]:
    losses = []
    for step in steps:
        x, y = batch(step)
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step == 2 and drop:
            for name in DROPPED:
                names[name].grad = None
        opt.step()
        losses.append(loss.item())
    return losses


def strip(name: str) -> str:
    return name.removeprefix("module.")


def full_params(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        t = p.full_tensor() if isinstance(p, DTensor) else p
        out[strip(name)] = t.detach().clone()
    return out


def wrap(model: nn.Module, mode: str, mesh):
    if mode == "ddp":
        return DDP(model)
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


#: preset options of the parity and checkpoint scenarios: LANTON measures its noise at steps 2 and 4
#: (so a checkpoint after step 3 falls between two measurements)
BUILD_OPTIONS = {"lanton": {"noise_every": 2}}


def build(model: nn.Module, preset: str, topology):
    return steepest.for_model(model, preset, distributed_mesh=topology, **BUILD_OPTIONS.get(preset, {}))


def named(model: nn.Module) -> dict[str, nn.Parameter]:
    return {strip(n): p for n, p in model.named_parameters()}


def count_lmo_calls():
    """Patch the spectral LMO to count the matrices it orthogonalizes on this rank."""
    counter = {"matrices": 0}
    original = Spectral.lmo_many

    def counting(self, xs, compiles=None):
        counter["matrices"] += len(xs)
        return original(self, xs, compiles)

    Spectral.lmo_many = counting
    return counter, lambda: setattr(Spectral, "lmo_many", original)


# -- scenarios ------------------------------------------------------------------------------------
def scenario_parity(out: str) -> dict:
    """Every parity preset under DDP and FSDP2 against one process; LMO calls counted per rank."""
    world = dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    result = {"world": world, "runs": {}}
    for preset in PARITY_PRESETS:
        reference = make_model()
        ref_losses = train(reference, build(reference, preset, None), range(STEPS), named(reference))
        for mode in ("ddp", "fsdp"):
            model = wrap(make_model(), mode, mesh)
            opt = build(model, preset, dist.group.WORLD if mode == "ddp" else mesh)
            counter, restore = count_lmo_calls()
            losses = train(model, opt, range(STEPS), named(model))
            restore()
            counts = [None] * world
            dist.all_gather_object(counts, counter["matrices"])
            result["runs"][(preset, mode)] = {
                "params": full_params(model), "reference": full_params(reference),
                "losses": losses, "ref_losses": ref_losses, "lmo_matrices_per_rank": counts,
                "state_keys": sorted(len(s) for s in opt.state.values()),
                "explain": steepest.explain(opt),
            }
    return result


class Shards(nn.Module):
    """Matrices with uneven and empty local shards on 4 ranks ((3, 64): one row on ranks 0-2)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.randn(3, 64))
        self.b = nn.Parameter(torch.randn(5, 7))
        self.c = nn.Parameter(torch.randn(8, 8))
        self.d = nn.Parameter(torch.randn(2, 3, 3, 3))  # a conv filter: 2 output channels
        self.v = nn.Parameter(torch.randn(3))


#: (label, preset, parameter dtype, preset options) of the shards scenario
SHARD_CASES = [(name, name, torch.float32, {"noise_every": 1} if name == "lanton" else {}) for name in PARITY_PRESETS + (
    "signum", "diffgrad", "lion_k", "auon", "hybrid_auon")] + [
    # M-FAC's float32 result is only as accurate as eps_32 ||g||^2 / (m damp) (fisher_window.py): any
    # other summation order moves it by that much, so it is compared in float64
    ("mfac", "mfac", torch.float64, {}),
    ("muon-bfloat16", "muon", torch.bfloat16, {}),
    ("lanton-second", "lanton", torch.float32, {"noise_source": "second", "noise_every": 1}),
    # stage-4 constraints on sharded matrices: projected once, on the owner rank
    ("muon-hardcap", "muon", torch.float32, {"constraints": {"hidden": ("spectral_hardcap", 1.0)}}),
    ("muon-stiefel", "muon", torch.float32, {"constraints": {"hidden": "stiefel", "conv": ("spectral_softcap", 0.5)}}),
]


def scenario_shards(out: str) -> dict:
    """Hand-set gradients (exact on every layout) on a model with uneven and empty shards."""
    world = dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    result = {"world": world, "runs": {}, "local_rows": {}}
    roles = {"a": "hidden", "b": "hidden", "c": "hidden", "d": "conv", "v": "vector"}
    for label, preset, dtype, options in SHARD_CASES:
        torch.manual_seed(3)
        reference = Shards().to(dtype)
        model = copy.deepcopy(reference)
        fully_shard(model, mesh=mesh)
        ref_opt = steepest.for_model(reference, preset, roles=roles, **options)
        opt = steepest.for_model(model, preset, roles=roles, distributed_mesh=mesh, **options)
        if preset == "scion":  # Scion's init rules, drawn whole and sharded
            ref_opt.init_params_(generator=torch.Generator().manual_seed(5))
            opt.init_params_(generator=torch.Generator().manual_seed(5))
        for step in range(STEPS):
            g = torch.Generator().manual_seed(50 + step)
            ref_second, second = {}, {}
            for (name, p), (_, q) in zip(reference.named_parameters(), model.named_parameters()):
                full = torch.randn(p.shape, generator=g).to(dtype)
                other = torch.randn(p.shape, generator=g).to(dtype)
                if step == 2 and name in ("b", "v") and preset != "mfac":  # M-FAC's window needs them all
                    p.grad = q.grad = None
                    continue
                p.grad = full.clone()
                q.grad = distribute_tensor(full, mesh, [Shard(0)])
                ref_second[p], second[q] = other.clone(), distribute_tensor(other, mesh, [Shard(0)])
            if options.get("noise_source") == "second":
                ref_opt.step(second_grads=ref_second)
                opt.step(second_grads=second)
            else:
                ref_opt.step()
                opt.step()
        result["runs"][label] = {"params": full_params(model), "reference": full_params(reference)}
        result["local_rows"] = {n: p.to_local().shape[0] for n, p in model.named_parameters()}
    rows = [None] * world
    dist.all_gather_object(rows, result["local_rows"])
    result["local_rows"] = rows
    return result


CKPT_PRESETS = ("normuon", "lanton", "mfac")
CKPT_AT = 3


def ckpt_model(preset: str, seed: int = 0) -> TinyLM:
    """The checkpoint scenarios' model; float64 for M-FAC, whose float32 result moves by its own
    accuracy (eps_32 ||g||^2 / (m damp), fisher_window.py) when sums run in another order."""
    model = make_model(seed)
    return model.double() if preset == "mfac" else model


def scenario_ckpt_save(out: str) -> dict:
    """Train STEPS steps on FSDP2, saving a DCP checkpoint after CKPT_AT steps."""
    world = dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    result = {"world": world, "runs": {}}
    for preset in CKPT_PRESETS:
        model = wrap(ckpt_model(preset), "fsdp", mesh)
        opt = build(model, preset, mesh)
        names = named(model)
        train(model, opt, range(CKPT_AT), names, drop=preset != "mfac")  # M-FAC's window needs every grad
        model_sd, optim_sd = get_state_dict(model, opt)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=os.path.join(out, f"ckpt-{preset}"))
        losses = train(model, opt, range(CKPT_AT, STEPS), names, drop=preset != "mfac")
        result["runs"][preset] = {"params": full_params(model), "losses": losses}
    return result


def scenario_ckpt_load(out: str, source: str) -> dict:
    """Load the checkpoints of ``scenario_ckpt_save`` (saved in ``source``) and finish the run."""
    world = dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    result = {"world": world, "runs": {}}
    for preset in CKPT_PRESETS:
        model = wrap(ckpt_model(preset, seed=99), "fsdp", mesh)  # another init: all must come from the file
        opt = build(model, preset, mesh)
        model_sd, optim_sd = get_state_dict(model, opt)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=os.path.join(source, f"ckpt-{preset}"))
        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        losses = train(model, opt, range(CKPT_AT, STEPS), named(model), drop=preset != "mfac")
        result["runs"][preset] = {"params": full_params(model), "losses": losses}
    return result


def scenario_errors(out: str) -> dict:
    """The exact errors of unsupported topologies (2 ranks)."""
    world = dist.get_world_size()
    messages = {}

    def capture(key, fn):
        try:
            fn()
            messages[key] = None
        except Exception as exc:  # noqa: BLE001 - the test checks type and message
            messages[key] = (type(exc).__name__, str(exc))

    mesh2d = init_device_mesh("cpu", (1, world))
    mesh = init_device_mesh("cpu", (world,))
    capture("mesh_2d", lambda: steepest.Muon(nn.Linear(4, 4).parameters(), distributed_mesh=mesh2d))
    capture("bad_type", lambda: steepest.Muon(nn.Linear(4, 4).parameters(), distributed_mesh="world"))
    sharded = nn.Linear(8, 8)
    fully_shard(sharded, mesh=mesh)
    capture("dtensor_without_mesh", lambda: steepest.Muon([sharded.weight]))
    capture("dtensor_with_group", lambda: steepest.Muon([sharded.weight], distributed_mesh=dist.group.WORLD))
    other = nn.Linear(8, 8)
    other.weight = nn.Parameter(distribute_tensor(other.weight.detach(), mesh, [Shard(1)]))
    capture("shard_dim_1", lambda: steepest.Muon([other.weight], distributed_mesh=mesh))
    # ranks that disagree on which parameters have gradients: an error on every rank, no hang
    lin = nn.Linear(4, 4)
    opt = steepest.Muon([{"params": [lin.weight], "role": "hidden"}, {"params": [lin.bias], "role": "vector"}],
                        distributed_mesh=dist.group.WORLD)
    lin.weight.grad = torch.ones(4, 4)
    lin.bias.grad = torch.ones(4) if dist.get_rank() == 0 else None
    capture("disagree", opt.step)
    capture("constraint_on_dtensor", lambda: steepest.constraints.make_constraint("stiefel").project(sharded.weight))
    # a NaN in one rank's shard stops the step on every rank
    net = nn.Linear(8, 8, bias=False)
    fully_shard(net, mesh=mesh)
    opt = steepest.Muon([{"params": [net.weight], "role": "hidden"}], distributed_mesh=mesh)
    bad = torch.ones(8, 8)
    bad[-1, -1] = float("nan")  # lives on the last rank's shard
    net.weight.grad = distribute_tensor(bad, mesh, [Shard(0)])
    before = net.weight.full_tensor().clone()
    capture("nan_on_one_rank", opt.step)
    messages["nan_unchanged"] = bool(torch.equal(before, net.weight.full_tensor()))
    gathered = [None] * world
    dist.all_gather_object(gathered, messages)
    return {"world": world, "messages": gathered}


SCENARIOS = {"parity": scenario_parity, "shards": scenario_shards, "ckpt-save": scenario_ckpt_save,
             "ckpt-load": scenario_ckpt_load, "errors": scenario_errors}


def main() -> None:
    name, out, *args = sys.argv[1:]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    result = SCENARIOS[name](out, *args)
    if dist.get_rank() == 0:
        torch.save(result, os.path.join(out, "result.pt"))
    exit_process_group()


if __name__ == "__main__":
    main()
