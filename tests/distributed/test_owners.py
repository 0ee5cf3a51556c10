"""Owner assignment and shard rows (no processes needed)."""
import pytest
import torch

from steepest.distributed import assign_owners, matrix_cost, row_range


def test_costs_are_newton_schulz_flops_up_to_a_constant():
    assert matrix_cost((64, 16)) == 64 * 16 * 16
    assert matrix_cost((8, 3, 3, 3)) == 8 * 27 * 8
    assert matrix_cost((5,)) == 5
    assert matrix_cost((0, 7)) == 0


def test_owners_balance_flops_and_are_deterministic():
    costs = [matrix_cost(s) for s in [(512, 512)] * 2 + [(128, 512)] * 8 + [(16, 16)] * 5]
    owners = assign_owners(costs, 4)
    assert owners == assign_owners(costs, 4)
    loads = [sum(c for c, o in zip(costs, owners) if o == r) for r in range(4)]
    assert max(loads) - min(loads) <= max(costs)
    assert max(loads) <= sum(costs) / 4 + max(costs)


def test_one_rank_owns_everything_and_more_ranks_than_matrices_leave_some_idle():
    assert assign_owners([3, 2, 1], 1) == [0, 0, 0]
    assert sorted(assign_owners([3, 2], 4)) == [0, 1]
    with pytest.raises(ValueError, match="world must be >= 1, got 0"):
        assign_owners([1], 0)


@pytest.mark.parametrize("rows,world", [(3, 4), (5, 2), (37, 2), (8, 3), (0, 2), (1, 4)])
def test_row_ranges_follow_torch_chunk(rows, world):
    chunks = list(torch.arange(rows).chunk(world)) if rows else []
    chunks += [torch.empty(0)] * (world - len(chunks))
    got = [row_range(rows, r, world) for r in range(world)]
    assert [stop - start for start, stop in got] == [len(c) for c in chunks]
    assert sum(stop - start for start, stop in got) == rows
