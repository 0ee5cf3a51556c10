"""Distributed execution: the topology argument, owner assignment, the shard exchanges and robust
gradient aggregation as DDP communication hooks (:mod:`.aggregation`)."""
from .aggregation import (AggregationState, attack, attacked, flag_aggregate, flag_hook, mean_aggregate, mean_hook,
                          median_aggregate, median_hook, register_robust_aggregation, trimmed_mean_aggregate,
                          trimmed_mean_hook)
from .owners import assign_owners, matrix_cost
from .topology import (Topology, is_dtensor, is_sharded, local, resolve_topology, row_range, rows_like,
                       rows_stack_like)

__all__ = ["AggregationState", "attack", "attacked", "flag_aggregate", "flag_hook", "mean_aggregate", "mean_hook",
           "median_aggregate", "median_hook", "register_robust_aggregation", "trimmed_mean_aggregate",
           "trimmed_mean_hook", "Topology", "assign_owners", "is_dtensor", "is_sharded", "local", "matrix_cost", "resolve_topology",
           "row_range", "rows_like", "rows_stack_like"]
