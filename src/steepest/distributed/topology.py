"""The distributed topology an optimizer runs on: one process, DDP (a ProcessGroup) or FSDP2 (a 1-D DeviceMesh).

The topology is an explicit constructor argument, ``distributed_mesh``, never discovered from
global state:

- ``None``: one process. Parameters must be plain tensors.
- a ``ProcessGroup`` (DDP, or any data-parallel setup whose gradients are identical on every rank
  of the group): parameters are plain, replicated tensors. Matrices whose LMO needs the whole
  matrix (the spectral geometry, and column/RMS/Frobenius normalizations) are each computed by one
  owner rank and the results are shared, so the orthogonalization work per rank falls with the
  world size. Elementwise and row-wise geometries run on every rank (they are cheap).
- a 1-D ``DeviceMesh`` (FSDP2's ``fully_shard``): parameters are DTensors sharded on dim 0
  (``Shard(0)``; ``Replicate()`` and plain tensors are treated as replicated). Whole-matrix LMOs
  gather each matrix from its shards to its owner rank, run there, and scatter the result back
  (two all-to-alls per dtype per group); elementwise and row-wise LMOs run on the local shards,
  since a dim-0 shard holds whole rows. Uneven and empty local shards are supported.

Optimizer state of a DTensor parameter is a DTensor with the parameter's placement (row
statistics are ``Shard(0)`` vectors), so ``torch.distributed.checkpoint`` saves and reshards it.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from .owners import assign_owners, matrix_cost

try:  # DTensor ships with torch.distributed; builds without it run single-process only
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import DTensor, Replicate, Shard
except ImportError:  # pragma: no cover - torch built without distributed support
    DeviceMesh = DTensor = Replicate = Shard = None  # type: ignore[assignment,misc]


def is_dtensor(t: Any) -> bool:
    """True for a ``torch.distributed.tensor.DTensor``."""
    return DTensor is not None and isinstance(t, DTensor)


def local(t: Tensor) -> Tensor:
    """The local tensor of a DTensor (it shares storage: in-place updates reach the DTensor), else ``t``."""
    return t.to_local() if is_dtensor(t) else t


def is_sharded(t: Tensor) -> bool:
    """True for a DTensor sharded on dim 0 of a 1-D mesh."""
    return is_dtensor(t) and isinstance(t.placements[0], Shard)


def row_range(rows: int, rank: int, world: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of a dim-0 ``Shard`` held by ``rank``: ``torch.chunk``'s split into
    ``ceil(rows / world)``-row pieces, as FSDP2 and ``distribute_tensor`` use (the last ranks may
    hold fewer rows or none)."""
    chunk = -(-rows // world)
    start = min(rank * chunk, rows)
    return start, min(start + chunk, rows)


def rows_like(p: Tensor, dtype: torch.dtype) -> Tensor:
    """A zero vector with one entry per row (dim 0) of ``p``, sharded like ``p``'s rows."""
    if not is_dtensor(p):
        return torch.zeros(p.shape[0], dtype=dtype, device=p.device)
    piece = torch.zeros(local(p).shape[0] if is_sharded(p) else p.shape[0], dtype=dtype, device=local(p).device)
    return DTensor.from_local(piece, p.device_mesh, [Shard(0) if is_sharded(p) else Replicate()],
                              run_check=False, shape=torch.Size([p.shape[0]]), stride=(1,))


def rows_stack_like(p: Tensor, count: int, dtype: torch.dtype) -> Tensor:
    """Zeros holding ``count`` flattened copies of ``p``: ``(count, p.numel())`` for a plain tensor;
    for a sharded DTensor a ``(count, *p.shape)`` DTensor sharded on dim 1 like ``p``'s rows, whose
    local part is ``count`` copies of the local shard."""
    if not is_sharded(p):
        return torch.zeros(count, p.numel(), dtype=dtype, device=local(p).device)
    piece = torch.zeros(count, *local(p).shape, dtype=dtype, device=local(p).device)
    shape = torch.Size([count, *p.shape])
    stride = tuple(int(math.prod(shape[i + 1:])) for i in range(len(shape)))  # contiguous
    return DTensor.from_local(piece, p.device_mesh, [Shard(1)], run_check=False, shape=shape, stride=stride)


def resolve_topology(distributed_mesh: Any) -> "Topology | None":
    """The :class:`Topology` of a ``distributed_mesh`` argument (``None`` for one process)."""
    if distributed_mesh is None:
        return None
    if DeviceMesh is not None and isinstance(distributed_mesh, DeviceMesh):
        if distributed_mesh.ndim != 1:
            raise ValueError(f"distributed_mesh must be a 1-D DeviceMesh, got a {distributed_mesh.ndim}-D mesh "
                             f"with shape {tuple(distributed_mesh.shape)} (for HSDP pass the shard sub-mesh)")
        return Topology(distributed_mesh.get_group(), distributed_mesh)
    if isinstance(distributed_mesh, dist.ProcessGroup):
        return Topology(distributed_mesh, None)
    raise TypeError(f"distributed_mesh must be a torch.distributed ProcessGroup, a 1-D DeviceMesh or None, "
                    f"got {type(distributed_mesh).__name__}")


class Topology:
    """Ranks of one data-parallel group and the collectives the optimizer's stages need.

    Every method is called with the same arguments (the same parameters, in the same order, with
    the same global shapes and dtypes) on every rank of the group; each one that communicates does
    a fixed number of collectives that depends only on those arguments.
    """

    def __init__(self, group: Any, mesh: Any = None):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("distributed_mesh was given but torch.distributed is not initialized "
                               "(call torch.distributed.init_process_group first)")
        self.group = group
        self.mesh = mesh
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)

    def __repr__(self) -> str:
        kind = "DeviceMesh" if self.mesh is not None else "ProcessGroup"
        return f"Topology({kind}, rank {self.rank} of {self.world})"

    # -- parameters ----------------------------------------------------------------------------
    def check_param(self, p: Tensor, name: str) -> None:
        """Raise if ``p`` cannot be stepped on this topology (checked when a group is added)."""
        if not is_dtensor(p):
            return
        if self.mesh is None:
            raise TypeError(f"Parameter {name!r} is a DTensor (FSDP2); pass its 1-D DeviceMesh as "
                            f"distributed_mesh, not a ProcessGroup")
        if p.device_mesh != self.mesh:
            raise ValueError(f"Parameter {name!r} lives on DeviceMesh {p.device_mesh}, but the optimizer's "
                             f"distributed_mesh is {self.mesh}")
        placement = p.placements[0]
        if not (isinstance(placement, Replicate) or (isinstance(placement, Shard) and placement.dim == 0)):
            raise ValueError(f"Parameter {name!r} has placement {placement!r}; steepest supports Shard(dim=0) "
                             f"(FSDP2's default) and Replicate() on a 1-D mesh")
        if isinstance(placement, Shard):
            start, stop = row_range(p.shape[0], self.rank, self.world)
            if p.to_local().shape[0] != stop - start:
                raise ValueError(f"Parameter {name!r}: rank {self.rank} holds {p.to_local().shape[0]} rows of "
                                 f"{p.shape[0]}, expected {stop - start} (torch.chunk's split); uneven "
                                 f"shardings other than FSDP2's are not supported")

    def _held(self, p: Tensor, owner: int, rank: int) -> tuple[int, int]:
        """Rows of ``p`` that ``rank`` contributes when its owner gathers the whole matrix."""
        if is_sharded(p):
            return row_range(p.shape[0], rank, self.world)
        return (0, p.shape[0] if p.ndim else 1) if rank == owner else (0, 0)

    def _wanted(self, p: Tensor, rank: int) -> tuple[int, int]:
        """Rows of the result that ``rank`` keeps (its shard, or everything for a replicated tensor)."""
        if is_sharded(p):
            return row_range(p.shape[0], rank, self.world)
        return 0, p.shape[0] if p.ndim else 1

    def local_part(self, p: Tensor, whole: Tensor) -> Tensor:
        """This rank's part of ``whole``, a tensor shaped like ``p`` (its rows of a sharded ``p``)."""
        if not is_sharded(p):
            return whole
        start, stop = row_range(p.shape[0], self.rank, self.world)
        return whole[start:stop]

    @staticmethod
    def _numel(p: Tensor, rows: tuple[int, int]) -> int:
        """Number of entries in rows ``[start, stop)`` of ``p``."""
        return (rows[1] - rows[0]) * (int(torch.Size(p.shape[1:]).numel()) if p.ndim else 1)

    def lmo_placement(self, params: Sequence[Tensor], rowwise: bool) -> list[str]:
        """Where stage 2 runs for each of ``params``: ``"rank k"`` (the owner of a whole-matrix
        LMO), or for a row-wise LMO ``"local shards"`` (sharded) / ``"every rank"`` (replicated)."""
        if rowwise:
            return ["local shards" if is_sharded(p) else "every rank" for p in params]
        return [f"rank {owner}" for owner in self.owners(params)]

    def owners(self, params: Sequence[Tensor]) -> list[int]:
        """The rank that computes each parameter's whole-matrix LMO (balanced by FLOPs)."""
        return assign_owners([matrix_cost(p.shape) for p in params], self.world)

    # -- collectives ---------------------------------------------------------------------------
    def max_over_ranks(self, values: Sequence[float]) -> list[float]:
        """Element-wise maximum of small host vectors over the ranks (one all-reduce)."""
        if self.world == 1:
            return [float(v) for v in values]
        t = torch.tensor(list(values), dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return t.tolist()

    def shard_sums(self, params: Sequence[Tensor], partial: Tensor) -> Tensor:
        """Whole-tensor sums from per-shard sums: ``partial[i]`` holds sums over ``params[i]``'s local
        entries (any trailing shape); rows of sharded parameters are summed over the ranks, rows of
        replicated ones are returned as they are. One all-reduce when any parameter is sharded."""
        if self.world == 1 or not any(is_sharded(p) for p in params):
            return partial
        keep = [1.0 if (is_sharded(p) or self.rank == 0) else 0.0 for p in params]
        mask = torch.tensor(keep, dtype=partial.dtype, device=partial.device).view(-1, *([1] * (partial.ndim - 1)))
        total = partial * mask
        dist.all_reduce(total, group=self.group)
        return total

    def map_whole(self, params: Sequence[Tensor], tensors: Sequence[Tensor], fn: Callable[..., list[Tensor]],
                  scalar: bool = False, with_index: bool = False) -> list[Tensor]:
        """``fn`` applied to whole tensors, each computed once, on its owner rank.

        ``tensors[i]`` is the local part of a tensor shaped like ``params[i]`` (the local shard for
        a sharded parameter, the whole tensor otherwise). Each owner receives the whole tensors it
        owns, calls ``fn`` once on their list, and the results come back as local parts: the
        rank's shard of each result (``fn`` must keep shapes and dtypes), or, with ``scalar=True``,
        0-d float64 tensors holding the same value on every rank. With ``with_index=True`` ``fn`` is
        called as ``fn(indices, wholes)``, the indices of the tensors into ``tensors``.
        """
        if with_index:
            call = fn
        else:
            def call(indices, wholes):
                return fn(wholes)
        if self.world == 1:  # every tensor is whole and owned here
            outs = call(list(range(len(tensors))), list(tensors))
            return [out.double() for out in outs] if scalar else outs
        results: list[Tensor | None] = [None] * len(tensors)
        owners = self.owners(params)
        buckets: dict[torch.dtype, list[int]] = {}
        for i, t in enumerate(tensors):
            buckets.setdefault(t.dtype, []).append(i)
        scalars = torch.zeros(len(tensors), dtype=torch.float64, device=self._comm_device()) if scalar else None
        for dtype in sorted(buckets, key=str):
            idx = buckets[dtype]
            owned = [i for i in idx if owners[i] == self.rank]
            wholes = self._gather_owned(params, tensors, owners, idx, owned)
            outs = call(owned, wholes) if owned else []
            if scalar:
                for i, out in zip(owned, outs):
                    scalars[i] = out.to(scalars.dtype)
            else:
                for i, part in self._scatter_owned(params, tensors, owners, idx, owned, outs):
                    results[i] = part
        if scalar:
            dist.all_reduce(scalars, group=self.group)  # one owner per entry, zeros elsewhere: exact
            return list(scalars.unbind())
        return results  # type: ignore[return-value]

    def _comm_device(self) -> torch.device:
        backend = dist.get_backend(self.group)
        if backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _gather_owned(self, params, tensors, owners, idx, owned) -> list[Tensor]:
        """Whole tensors of ``owned``, assembled from every rank's rows (one all-to-all, skipped
        when no tensor of the bucket is sharded: owners of replicated tensors hold them already)."""
        if not any(is_sharded(params[i]) for i in idx):
            return [tensors[i] for i in owned]
        ref = tensors[idx[0]]
        send_parts: list[list[Tensor]] = [[] for _ in range(self.world)]
        for i in idx:
            start, stop = self._held(params[i], owners[i], self.rank)
            if stop > start:
                send_parts[owners[i]].append(tensors[i].reshape(-1))
        send_sizes = [sum(t.numel() for t in parts) for parts in send_parts]
        recv_sizes = [sum(self._numel(params[i], self._held(params[i], self.rank, src)) for i in owned)
                      for src in range(self.world)]
        flat = [t for parts in send_parts for t in parts]
        send = torch.cat(flat) if flat else ref.new_empty(0)
        recv = ref.new_empty(sum(recv_sizes))
        dist.all_to_all_single(recv, send, recv_sizes, send_sizes, group=self.group)
        pieces: dict[int, list[Tensor]] = {i: [] for i in owned}
        offset = 0
        for src in range(self.world):
            for i in owned:
                n = self._numel(params[i], self._held(params[i], self.rank, src))
                pieces[i].append(recv[offset:offset + n])
                offset += n
        return [torch.cat(pieces[i]).view(params[i].shape) for i in owned]

    def _scatter_owned(self, params, tensors, owners, idx, owned, outs):
        """Each rank's rows of every result (one all-to-all): pairs ``(index, local part)``."""
        ref = tensors[idx[0]]
        send_parts: list[list[Tensor]] = [[] for _ in range(self.world)]
        for i, out in zip(owned, outs):
            rows = out.to(ref.dtype).reshape(params[i].shape[0] if params[i].ndim else 1,
                                             int(torch.Size(params[i].shape[1:]).numel()))
            for dst in range(self.world):
                start, stop = self._wanted(params[i], dst)
                if stop > start:
                    send_parts[dst].append(rows[start:stop].reshape(-1))
        send_sizes = [sum(t.numel() for t in parts) for parts in send_parts]
        recv_sizes = [0] * self.world
        for i in idx:
            recv_sizes[owners[i]] += self._numel(params[i], self._wanted(params[i], self.rank))
        flat = [t for parts in send_parts for t in parts]
        send = torch.cat(flat) if flat else ref.new_empty(0)
        recv = ref.new_empty(sum(recv_sizes))
        dist.all_to_all_single(recv, send, recv_sizes, send_sizes, group=self.group)
        offsets = [sum(recv_sizes[:r]) for r in range(self.world)]
        for i in idx:  # in bucket order per owner, the order the owners packed them
            n = self._numel(params[i], self._wanted(params[i], self.rank))
            src = owners[i]
            part = recv[offsets[src]:offsets[src] + n]
            offsets[src] += n
            yield i, part.view(tensors[i].shape)
