"""Averaging the embedding tables' sparse gradients over ranks, with the SIGTERM flag riding along.

DDP averages the dense (MLP) gradients; the embedding table is excluded from DDP and its sparse
gradient is exchanged here with plain all_gathers: gloo's sparse allreduce (what DDP uses for
sparse gradients) intermittently corrupted the heap in 2-rank CPU runs, and NCCL has no sparse
allreduce to speak of. Every rank ends with the same coalesced average, bit for bit.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .config import DistEnv
from .fused_sparse import unique_rows
from .model import DLRM, coalesced_grad


def finish_sparse_grads(model: DLRM, denv: DistEnv, stop: bool) -> bool:
    """Make the embedding gradients ready for the sparse optimizer: the replicated tables' averaged
    over ranks, this rank's shard's (it already holds every rank's lookups, summed by the
    all_to_all backward) divided by the world size; on one rank just flagged coalesced so the
    optimizer does not sort its rows again. Returns whether any rank got SIGTERM (`stop` here):
    the flags travel with the replicated tables' row counts, or, when no table is replicated, came
    with the sharded lookup's counts in the forward pass (sharding.py)."""
    replicated, shard = model.embeddings.replicated_weight(), model.embeddings.sharded_weight()
    if not denv.distributed:
        for table in (replicated, shard):
            if table is not None and table.grad is not None:
                table.grad = coalesced_grad(table.grad)
        return stop
    if replicated is not None:
        stop = allreduce_sparse_grad(replicated, denv.world_size, stop)
    else:
        stop = model.embeddings.any_rank_stopping
    if shard is not None and shard.grad is not None:
        grad = coalesced_grad(shard.grad)
        grad._values().div_(denv.world_size)
        shard.grad = grad
    return stop


def allreduce_sparse_grad(table: torch.Tensor, world: int, stop: bool) -> bool:
    """Average the fused embedding table's sparse gradient over ranks (what DDP does for sparse
    gradients) with two all_gathers: (row count, SIGTERM flag) per rank, then the rows, ids and
    values packed together. Returns whether any rank got SIGTERM."""
    grad = coalesced_grad(table.grad)
    rows, values = grad._indices()[0], grad._values()
    mine = torch.tensor([rows.numel(), int(stop)], dtype=torch.long, device=table.device)
    heads = mine.new_empty(world * 2)
    dist.all_gather_single(heads, mine)
    heads = heads.view(world, 2)  # per rank: (row count, SIGTERM flag)
    row_counts = heads[:, 0].tolist()
    send = _pack_rows(rows, values, max(row_counts))
    recv = send.new_empty(world * send.shape[0], send.shape[1])
    dist.all_gather_single(recv, send)
    recv = recv.view(world, *send.shape)
    parts = [_unpack_rows(recv[r, :n], values.dtype) for r, n in enumerate(row_counts)]
    merged, inverse = unique_rows(torch.cat([r for r, _ in parts]), table.shape[0])
    summed = values.new_zeros(merged.numel(), values.shape[1])
    for (_, rank_values), rank_inverse in zip(parts, inverse.split(row_counts)):
        summed.index_add_(0, rank_inverse, rank_values)
    table.grad = torch.sparse_coo_tensor(merged.unsqueeze(0), summed.div_(world), table.shape, is_coalesced=True,
                                         check_invariants=False)
    return bool(heads[:, 1].any())


def _pack_rows(rows: torch.Tensor, values: torch.Tensor, length: int) -> torch.Tensor:
    """[n] int64 row ids and [n, d] values -> [length, 8 + d*itemsize] bytes (zero padded), so one
    all_gather carries both."""
    n = rows.numel()
    out = torch.zeros(length, 8 + values.shape[1] * values.element_size(), dtype=torch.uint8, device=rows.device)
    out[:n, :8] = rows.unsqueeze(1).view(torch.uint8)
    out[:n, 8:] = values.contiguous().view(torch.uint8)
    return out


def _unpack_rows(packed: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of _pack_rows; the values are a strided view into `packed`."""
    return packed[:, :8].contiguous().view(torch.long).squeeze(1), packed[:, 8:].view(dtype)
