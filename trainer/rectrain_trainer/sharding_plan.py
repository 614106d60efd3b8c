"""Where each embedding table lives: the sharding plan and the planner behind `model.sharding`.

A table is one of
    replicated  every rank holds all of it (data parallel; gradients averaged by sparse_exchange)
    table       one rank (its owner) holds all of it
    row         every rank holds one contiguous block of its rows: rank r has rows
                [r*c, min(R, (r+1)*c)) with c = ceil(R / world), DTensor's Shard(0) split, so a
                checkpoint shard is a DTensor box that any other world size can read back.

Contiguous blocks rather than id modulo world: the checkpoint then reshards with plain DCP
boxes at any world size. The price is load balance when low ids are hot (Zipf-ranked ids): rank 0's
block takes the head of the distribution. auto therefore prefers table-wise placement and goes
row-wise only for a table too big for its share of a rank (see docs/sharding.md).

Memory per rank (what auto budgets):
    bytes(table) = rows * dim * 4 * (1 + state(optimizer))   state: adagrad 1, sparseadam 2, sgd 0
    rank load    = sum(replicated) + sum(table-wise owned) + sum(row-wise / world)
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("rectrain.sharding")

# Optimizer state per embedding value, in values (fp32): adagrad's sum, sparseadam's two moments.
# rowwise_adagrad keeps one value per row (about nothing next to the row's dim values).
STATE_PER_VALUE = {"adagrad": 1, "sgd": 0, "sparseadam": 2, "rowwise_adagrad": 0}
BYTES_PER_VALUE = 4  # fp32 tables


@dataclass(frozen=True)
class ShardingPlan:
    """kinds[f]: "replicated" | "table" | "row"; owners[f]: the owning rank of a table-wise table
    (else -1)."""

    world: int
    kinds: tuple[str, ...]
    owners: tuple[int, ...]

    @property
    def sharded(self) -> bool:
        return any(k != "replicated" for k in self.kinds)

    def rows_on(self, rank: int, f: int, table_rows: int) -> tuple[int, int]:
        """(first global row, row count) of table f that `rank` holds."""
        kind = self.kinds[f]
        if kind == "replicated":
            return 0, table_rows
        if kind == "table":
            return (0, table_rows) if self.owners[f] == rank else (0, 0)
        chunk = row_chunk(table_rows, self.world)
        start = min(table_rows, rank * chunk)
        return start, min(table_rows, start + chunk) - start

    def describe(self) -> str:
        counts = {k: self.kinds.count(k) for k in ("replicated", "table", "row") if k in self.kinds}
        return ", ".join(f"{n} {k}" for k, n in counts.items())


def row_chunk(table_rows: int, world: int) -> int:
    """Rows per rank of a row-wise table (the last ranks may hold fewer, or none)."""
    return math.ceil(table_rows / world)


def table_bytes(rows: int, dim: int, optimizer: str) -> int:
    """Parameter plus sparse optimizer state bytes of one table."""
    return rows * dim * BYTES_PER_VALUE * (1 + STATE_PER_VALUE.get(optimizer, 1))


def replicated_plan(tables: int, world: int) -> ShardingPlan:
    return ShardingPlan(world, ("replicated",) * tables, (-1,) * tables)


def place_tables(sizes: list[int], world: int) -> list[int]:
    """Greedy placement (NVIDIA DLRM's): largest table first, onto the least loaded rank.
    Returns each table's owner."""
    load = [0] * world
    owners = [-1] * len(sizes)
    for f in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        rank = min(range(world), key=lambda r: (load[r], r))
        owners[f] = rank
        load[rank] += sizes[f]
    return owners


def _plan(kinds: list[str], sizes: list[int], world: int) -> ShardingPlan:
    """Owners for the table-wise tables among `kinds`."""
    table_wise = [f for f, k in enumerate(kinds) if k == "table"]
    owners = [-1] * len(kinds)
    for f, owner in zip(table_wise, place_tables([sizes[f] for f in table_wise], world)):
        owners[f] = owner
    return ShardingPlan(world, tuple(kinds), tuple(owners))


def rank_loads(plan: ShardingPlan, table_rows: list[int], dim: int, optimizer: str) -> list[int]:
    """Embedding bytes (parameters + optimizer state) each rank holds under `plan`."""
    return [
        sum(table_bytes(plan.rows_on(r, f, rows)[1], dim, optimizer) for f, rows in enumerate(table_rows))
        for r in range(plan.world)
    ]


def make_plan(mode: str, table_rows: list[int], dim: int, world: int, optimizer: str, budget: int) -> ShardingPlan:
    """The plan for `model.sharding` = mode. One rank is always replicated (nothing to shard over)."""
    n = len(table_rows)
    if world == 1 or mode == "replicated":
        return replicated_plan(n, world)
    if mode in ("table", "row"):
        return _plan([mode] * n, table_rows, world)
    return _auto_plan(table_rows, dim, world, optimizer, budget)


def _auto_plan(table_rows: list[int], dim: int, world: int, optimizer: str, budget: int) -> ShardingPlan:
    """Replicated while a replica fits the budget (no all_to_all, no load imbalance: the fastest
    when memory allows). Otherwise shard the k largest tables for the smallest k whose plan fits
    (binary search: more sharded tables never load a rank more); sharded tables go table-wise,
    except that while the most loaded rank is over budget the largest table-wise table turns
    row-wise (it alone overloads its owner)."""
    sizes = [table_bytes(r, dim, optimizer) for r in table_rows]
    if sum(sizes) <= budget:
        return replicated_plan(len(sizes), world)
    largest = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))

    def plan_for(k: int) -> ShardingPlan:
        kinds = ["replicated"] * len(sizes)
        for f in largest[:k]:
            kinds[f] = "table"
        return _fit(kinds, table_rows, dim, world, optimizer, budget)

    def fits(plan: ShardingPlan) -> bool:
        return max(rank_loads(plan, table_rows, dim, optimizer)) <= budget

    lo, hi = 1, len(sizes)
    if not fits(plan_for(hi)):
        plan = plan_for(hi)
        log.warning("sharding auto: the embeddings need %.2f GiB per rank even sharded, over the %.2f GiB budget "
                    "(model.shardingMemoryBudgetGiB); training anyway",
                    max(rank_loads(plan, table_rows, dim, optimizer)) / 2**30, budget / 2**30)
        return plan
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(plan_for(mid)):
            hi = mid
        else:
            lo = mid + 1
    return plan_for(lo)


def _fit(kinds: list[str], table_rows: list[int], dim: int, world: int, optimizer: str, budget: int) -> ShardingPlan:
    """Turn the largest table-wise tables row-wise while the most loaded rank is over budget."""
    plan = _plan(kinds, table_rows, world)
    while max(rank_loads(plan, table_rows, dim, optimizer)) > budget:
        table_wise = [f for f, k in enumerate(kinds) if k == "table"]
        if not table_wise:
            break
        biggest = max(table_wise, key=lambda f: (table_rows[f], -f))
        kinds[biggest] = "row"
        plan = _plan(kinds, table_rows, world)
    return plan


# ------------------------------------------------------------------------------------------------
# The per-rank memory budget


def default_budget(device_kind: str, local_world: int, device_total: int | None = None) -> int:
    """Half of this rank's memory: the rest is left for data, activations, gradients and the
    communication buffers. Memory: the CUDA device's (device_total) on GPUs; on CPU the cgroup
    limit (a pod's resources.limits.memory) when there is one, else the host's memory divided
    by the ranks on it."""
    if device_kind == "cuda" and device_total:
        return device_total // 2
    host = _host_memory()
    limit = _cgroup_limit()
    mine = min(limit, host) if limit else host // max(1, local_world)
    return mine // 2


def _host_memory() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _cgroup_limit() -> int | None:
    """This process's cgroup memory limit in bytes, or None when unlimited/unknown (v2, then v1)."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # v1 reports "unlimited" as a huge number
            return int(text)
    return None
