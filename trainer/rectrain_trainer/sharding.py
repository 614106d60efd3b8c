"""Sharded embedding tables: lookups served by the rank that owns each row, over all_to_all.

Forward, for the sharded features of a local batch (ids [n, S]):
    1. each id's owner and its row in the owner's local shard weight (vectorised over features), as
       one key per lookup: its position in the rank-major concatenation of every rank's shard;
    2. the distinct keys, sorted (one sort: it deduplicates and groups by owner at once). With
       Criteo-like ids a batch repeats its hot rows, so each rank asks for a row once, not once per
       lookup: about half the exchange and half the owners' lookups at Zipf(1.05);
    3. all_to_all of the per-owner counts (each rank's SIGTERM flag rides along: the step's only
       agreement on stopping when no table is replicated, see any_rank_stopping), then of the
       distinct rows;
    4. each owner looks its rows up (_Lookup: a coalesced sparse COO gradient in backward);
    5. all_to_all of the embeddings back (its backward sends each distinct row's summed gradient to
       its owner), expanded to the lookups by the inverse of step 2.
all_to_all_single runs on gloo and NCCL alike (no reduce-scatter needed). The exchange uses its own
process group so it never interleaves with DDP's gradient allreduces on the default group.

Each owner's shard is one local parameter (`shard`, [local rows, d]), so the sparse optimizer's
state is sharded with it. Its gradient sums every rank's lookups; sparse_exchange divides it by the
world size, which makes it exactly the replicated path's average.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from .fused_sparse import unique_rows
from .hugepages import empty_on_huge_pages
from .model import EmbeddingTables, _Lookup, init_table_rows
from .sharding_plan import ShardingPlan, row_chunk


class _AllToAll(torch.autograd.Function):
    """all_to_all_single of rows [sum(in_splits), d] -> [sum(out_splits), d]; backward sends the
    gradients back the way the rows came."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, out_splits: list[int], in_splits: list[int], group) -> torch.Tensor:
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = rows.new_empty(sum(out_splits), *rows.shape[1:])
        dist.all_to_all_single(out, rows.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out_splits, in_splits = ctx.splits
        back = grad.new_empty(sum(in_splits), *grad.shape[1:])
        dist.all_to_all_single(back, grad.contiguous(), in_splits, out_splits, group=ctx.group)
        return back, None, None, None


class ShardedEmbeddingTables(nn.Module):
    """The embeddings under a sharding plan: replicated tables in one fused EmbeddingTables
    (`replicated`, the single-rank path), this rank's blocks of the sharded tables fused into
    `shard`. forward: [n, F] row ids -> [n, F, d], features in their configured order."""

    def __init__(self, table_sizes: list[int], dim: int, plan: ShardingPlan, rank: int, seed: int,
                 device: torch.device, group=None, stop_source: Callable[[], bool] | None = None):
        super().__init__()
        self.table_sizes, self.dim, self.plan, self.rank, self.group = list(table_sizes), dim, plan, rank, group
        # stop_source: whether this rank got SIGTERM; any_rank_stopping: whether any rank had, as
        # of the last lookup (the same on every rank: it came in the counts' all_to_all).
        self.stop_source = stop_source or (lambda: False)
        self.any_rank_stopping = False
        rep = [f for f, k in enumerate(plan.kinds) if k == "replicated"]
        shd = [f for f, k in enumerate(plan.kinds) if k != "replicated"]
        self.rep_features, self.shd_features = rep, shd
        self.replicated = EmbeddingTables([table_sizes[f] for f in rep], dim, seed=seed, device=device, features=rep) if rep else None
        # local start of each sharded feature's block in every rank's shard: base[r, j]
        base = torch.zeros(plan.world, len(shd), dtype=torch.long)
        for r in range(plan.world):
            at = 0
            for j, f in enumerate(shd):
                base[r, j] = at
                at += plan.rows_on(r, f, table_sizes[f])[1]
        self.local_starts = base[rank].tolist()
        local_rows = sum(plan.rows_on(rank, f, table_sizes[f])[1] for f in shd)
        self.shard = nn.Parameter(empty_on_huge_pages(local_rows, dim, device=device))
        with torch.no_grad():
            for j, f in enumerate(shd):
                start, rows = plan.rows_on(rank, f, table_sizes[f])
                init_table_rows(self.shard[self.local_starts[j] : self.local_starts[j] + rows], f, table_sizes[f], start, seed)
        chunk = [table_sizes[f] if plan.kinds[f] == "table" else row_chunk(table_sizes[f], plan.world) for f in shd]
        first_owner = [plan.owners[f] if plan.kinds[f] == "table" else 0 for f in shd]
        # first key of each rank's shard in the rank-major concatenation (plus the end)
        rank_start = [0]
        for r in range(plan.world):
            rank_start.append(rank_start[-1] + sum(plan.rows_on(r, f, table_sizes[f])[1] for f in shd))
        self.register_buffer("rank_start", torch.tensor(rank_start, dtype=torch.long, device=device), persistent=False)
        self.total_rows = rank_start[-1]
        self.register_buffer("base", base.to(device), persistent=False)
        self.register_buffer("chunk", torch.tensor(chunk, dtype=torch.long, device=device), persistent=False)
        self.register_buffer("first_owner", torch.tensor(first_owner, dtype=torch.long, device=device), persistent=False)
        self.register_buffer("shd_cols", torch.tensor(shd, dtype=torch.long, device=device), persistent=False)
        self.register_buffer("shd_positions", torch.arange(len(shd), device=device), persistent=False)
        self.register_buffer("rep_cols", torch.tensor(rep, dtype=torch.long, device=device), persistent=False)
        # position of feature f in cat([replicated, sharded]) order
        self.register_buffer("feature_order", torch.tensor([(rep + shd).index(f) for f in range(len(table_sizes))],
                                                           dtype=torch.long, device=device), persistent=False)

    def forward(self, cat: torch.Tensor) -> torch.Tensor:
        sharded = self._sharded_lookup(cat.index_select(1, self.shd_cols))
        if self.replicated is None:
            return sharded
        emb = torch.cat([self.replicated(cat.index_select(1, self.rep_cols)), sharded.to(self.replicated.weight.dtype)], dim=1)
        return emb.index_select(1, self.feature_order)

    def _sharded_lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """[n, S] ids of the sharded features -> [n, S, d] (a collective: every rank calls it)."""
        n, s = ids.shape
        owner = self.first_owner + torch.div(ids, self.chunk, rounding_mode="floor")  # [n, S]
        local = self.base[owner, self.shd_positions] + ids - (owner - self.first_owner) * self.chunk
        keys, inverse = unique_rows(self.rank_start[owner] + local, self.total_rows)  # sorted: grouped by owner
        send_counts = torch.searchsorted(keys, self.rank_start).diff()
        heads = torch.stack([send_counts, torch.full_like(send_counts, int(self.stop_source()))], 1)  # [world, 2]
        recv_heads = torch.empty_like(heads)
        dist.all_to_all_single(recv_heads, heads, group=self.group)
        send_split, received = send_counts.tolist(), recv_heads.tolist()
        recv_split = [count for count, _ in received]
        self.any_rank_stopping = any(flag for _, flag in received)
        requested = keys.new_empty(sum(recv_split))
        dist.all_to_all_single(requested, keys, recv_split, send_split, group=self.group)
        served = _Lookup.apply(self.shard, requested - self.rank_start[self.rank])  # [rows asked of this rank, d]
        answered = _AllToAll.apply(served, send_split, recv_split, self.group)  # [distinct keys, d]
        return answered.index_select(0, inverse.flatten()).view(n, s, self.dim)

    def replicated_weight(self) -> nn.Parameter | None:
        return self.replicated.weight if self.replicated is not None else None

    def sharded_weight(self) -> nn.Parameter:
        return self.shard

    def table_slots(self) -> list[tuple[int, nn.Parameter, int, int, int]]:
        """(feature, parameter, local start, global start, rows) of every table block this rank
        holds (row-wise tables: on every rank, possibly 0 rows)."""
        slots = self.replicated.table_slots() if self.replicated is not None else []
        for j, f in enumerate(self.shd_features):
            start, rows = self.plan.rows_on(self.rank, f, self.table_sizes[f])
            if self.plan.kinds[f] == "row" or rows:
                slots.append((f, self.shard, self.local_starts[j], start, rows))
        return sorted(slots, key=lambda s: s[0])
