"""Host reads per optimizer step: how often a step waits for the device.

On CUDA every read of a device tensor's value on the host (``bool(t)``, ``float(t)``, ``t.item()``,
``t.tolist()``) blocks until the device has caught up. The step reads values the device holds at
most once (the non-finite check, which also covers every scalar the step needs before it modifies
anything), except where a preset's math needs a value after the direction is computed; those are
listed here and in docs/design.md ("Host reads").

The test runs on the ``meta`` device, which has shapes but no data, standing in for CUDA: the
optimizer's state and directions live there, its CPU step counters stay on the CPU (as torch.optim
keeps them), and every host read of a meta tensor goes through the dispatcher, where it is counted
and answered (the non-finite check with "finite", a Cholesky status with "success"). The CPU-only
prescale check of Newton-Schulz (a read of a CPU tensor, no synchronization) does not arise there.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import steepest
from steepest.optim.registry import REGISTRY

#: Reads beyond the one of the non-finite check, and why.
EXTRA_READS = {
    "auon": "the cosh brake's per-matrix statistics, one read for all matrices of the step",
    "hybrid_auon": "the cosh brake's per-matrix statistics, one read for all matrices of the step",
    "mfac": "the Cholesky status of each M-FAC group's window system (a failed factorization retries "
            "with a larger shift)",
    "lanton": "at a measuring step (every noise_every-th), the noise EMAs of every group, in one read",
}


class CountReads(TorchDispatchMode):
    """Counts host reads of meta tensors and answers them: True, 0 for integers, 1.0 for floats."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
            self.reads += 1
            dtype = args[0].dtype
            return True if dtype == torch.bool else 0 if not dtype.is_floating_point else 1.0
        return func(*args, **(kwargs or {}))


@pytest.fixture
def counting(monkeypatch):
    """A fresh counter per step; ``Tensor.tolist`` of a meta tensor counts as one read (it has no
    dispatcher op of its own) and returns ones."""
    current: list[CountReads] = []
    tolist = torch.Tensor.tolist

    def counted_tolist(self):
        if self.device.type == "meta":
            current[-1].reads += 1
            return torch.ones(self.shape).tolist()
        return tolist(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist)

    def step(opt) -> int:
        current.append(CountReads())
        with current[-1]:
            opt.step()
        return current[-1].reads

    return step


def meta_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(20, 16), torch.nn.Linear(16, 96), torch.nn.LayerNorm(96),
                                torch.nn.Linear(96, 96), torch.nn.GELU(), torch.nn.Linear(96, 20))
    return model.to("meta")


@pytest.mark.parametrize("name", list(REGISTRY))
def test_host_reads_per_step(name, counting):
    model = meta_model()
    opt = steepest.for_model(model, name)
    groups = {"mfac": sum(g["transform"] == "momentum" and "ngrads" in g for g in opt.param_groups)}
    reads = []
    for _ in range(12):
        for p in model.parameters():
            p.grad = torch.empty_like(p)
        reads.append(counting(opt))
    if name == "lanton":
        every = opt.param_groups[0]["noise_every"]
        # the noise_every-th step measures (and every noise_every-th after it): one read more
        assert every == 10
        assert reads == [2 if (i + 1) % every == 0 else 1 for i in range(12)], reads
    elif name in ("auon", "hybrid_auon"):
        assert reads == [2] * 12, reads
    elif name == "mfac":
        assert groups["mfac"] >= 1
        assert reads == [1 + groups["mfac"]] * 12, reads
    else:
        assert reads == [1] * 12, reads


def test_every_extra_read_is_explained():
    assert set(EXTRA_READS) <= set(REGISTRY)
