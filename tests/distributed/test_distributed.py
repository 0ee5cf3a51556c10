"""DDP and FSDP2 (gloo, CPU) against one process: parity, work sharding, shards, checkpoints, errors.

Each scenario is one ``torchrun`` launch (see ``scenarios.py``) shared by the tests of this module.
Parity bound: 1e-6 relative. Every rank sees the same batch, so the reduced gradients are exactly
the one-process ones (or are set by hand), and the distributed path is exact (bit for bit for Muon,
Scion, LANTON and Lion on two ranks) except where a whole-tensor sum runs over other memory:
NorMuon's row and Frobenius sums (over a gathered copy instead of a transposed view, or over
shards) and AuON's brake differ by ~1e-7.
"""
from __future__ import annotations

import pytest
import torch

from .harness import launch, max_relative_error, requires_gloo
from .scenarios import CKPT_PRESETS, PARITY_PRESETS, SHARD_CASES

pytestmark = requires_gloo
BOUND = 1e-6


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    return launch("parity", 2, tmp_path_factory.mktemp("parity"))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return launch("shards", 4, tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    return out, launch("ckpt-save", 2, out)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
@pytest.mark.parametrize("preset", PARITY_PRESETS)
def test_two_ranks_match_one_process(parity, preset, mode):
    run = parity["runs"][(preset, mode)]
    assert max_relative_error(run["params"], run["reference"]) <= (BOUND if preset == "normuon" else 0.0)
    assert run["losses"] == pytest.approx(run["ref_losses"], rel=1e-6)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_each_matrix_is_orthogonalized_once_across_ranks(parity, mode):
    # Muon's six hidden matrices, 5 steps, one of them without a gradient at step 2
    counts = parity["runs"][("muon", mode)]["lmo_matrices_per_rank"]
    assert sum(counts) == 6 * 5 - 1
    assert all(c > 0 for c in counts)  # both ranks share the work
    counts = parity["runs"][("lion", mode)]["lmo_matrices_per_rank"]
    assert counts == [0, 0]  # the sign geometry never orthogonalizes


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_explain_shows_where_each_lmo_runs(parity, mode):
    lines = parity["runs"][("muon", mode)]["explain"].splitlines()
    assert lines[0].split()[-2:] == ["lmo", "on"]
    where = {line.split()[0].removeprefix("module."): " ".join(line.split()[-2:]) for line in lines[2:]}
    owners = {where[f"blocks.{b}.fc{i}.weight"] for b in (0, 1) for i in (1, 2)}
    assert owners == {"rank 0", "rank 1"}  # the hidden matrices are shared out
    assert where["embed.weight"] == ("local shards" if mode == "fsdp" else "every rank")  # AdamW: elementwise


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_state_is_complete_before_the_first_step(parity, mode):
    # state keys are created with the groups: LANTON's spectral layers carry momentum + 5 noise keys
    # (noise_sq, noise_count, noise_step, noise_prev_valid, noise_prev_grad)
    assert parity["runs"][("lanton", mode)]["state_keys"][-1] == 6


def test_uneven_and_empty_shards_on_four_ranks(shards):
    rows = shards["local_rows"]
    assert [r["a"] for r in rows] == [1, 1, 1, 0]  # a (3, 64) weight: one rank holds nothing
    assert [r["d"] for r in rows] == [1, 1, 0, 0]
    assert set(shards["runs"]) == {label for label, *_ in SHARD_CASES}
    for label, bound in (("muon-hardcap", 1.0), ("muon-stiefel", 1.0)):  # constraints hold on shards
        params = shards["runs"][label]["params"]
        assert all(torch.linalg.matrix_norm(params[n].double(), ord=2) <= bound * (1 + 1e-5) for n in "abc")
    for label, run in shards["runs"].items():
        assert max_relative_error(run["params"], run["reference"]) <= BOUND, label


@pytest.mark.parametrize("world", [1, 2, 4])
def test_checkpoint_saved_on_two_ranks_resumes_on_any(saved, tmp_path, world):
    source, uninterrupted = saved
    resumed = launch("ckpt-load", world, tmp_path, str(source))
    for preset in CKPT_PRESETS:
        run, base = resumed["runs"][preset], uninterrupted["runs"][preset]
        assert max_relative_error(run["params"], base["params"]) <= BOUND, preset
        assert run["losses"] == pytest.approx(base["losses"], rel=1e-6), preset


def test_unsupported_topologies_raise_exact_errors(tmp_path):
    result = launch("errors", 2, tmp_path)
    for rank, messages in enumerate(result["messages"]):
        assert messages["mesh_2d"] == ("ValueError", "distributed_mesh must be a 1-D DeviceMesh, got a 2-D mesh "
                                       "with shape (1, 2) (for HSDP pass the shard sub-mesh)")
        assert messages["bad_type"] == ("TypeError", "distributed_mesh must be a torch.distributed ProcessGroup, "
                                        "a 1-D DeviceMesh or None, got str")
        assert messages["dtensor_without_mesh"] == (
            "TypeError", "Parameter 'param 0 of group 0' is a DTensor; pass distributed_mesh=<its DeviceMesh> "
                         "to the optimizer")
        assert messages["dtensor_with_group"] == (
            "TypeError", "Parameter 'param 0 of group 0' is a DTensor (FSDP2); pass its 1-D DeviceMesh as "
                         "distributed_mesh, not a ProcessGroup")
        assert messages["shard_dim_1"] == (
            "ValueError", "Parameter 'param 0 of group 0' has placement Shard(dim=1); steepest supports "
                          "Shard(dim=0) (FSDP2's default) and Replicate() on a 1-D mesh")
        assert messages["constraint_on_dtensor"][0] == "TypeError"
        assert messages["constraint_on_dtensor"][1].startswith("Constraint 'stiefel' projects whole tensors")
        assert messages["disagree"][0] == "RuntimeError"  # on every rank: nobody hangs
        assert messages["disagree"][1].startswith("Ranks disagree on which parameters have gradients")
        # the NaN sits in the last rank's shard; every rank refuses the step and nothing moves
        assert messages["nan_on_one_rank"][0] == "FloatingPointError"
        assert messages["nan_unchanged"]
    assert "<a shard on another rank>" in result["messages"][0]["nan_on_one_rank"][1]
