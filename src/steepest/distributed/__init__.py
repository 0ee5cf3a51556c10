"""Distributed execution: the topology argument, owner assignment and the shard exchanges."""
from .owners import assign_owners, matrix_cost
from .topology import (Topology, is_dtensor, is_sharded, local, resolve_topology, row_range, rows_like,
                       rows_stack_like)

__all__ = ["Topology", "assign_owners", "is_dtensor", "is_sharded", "local", "matrix_cost", "resolve_topology",
           "row_range", "rows_like", "rows_stack_like"]
