"""DLRM: all categorical features' embedding tables fused into one sparse table, a bottom MLP over
dense features, pairwise dot-product interaction (or a DCNv2 cross network), a top MLP to one logit."""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from rectrain_api.trainer_config import ModelConfig

from .fused_sparse import dedup_rows, row_grads_of
from .hugepages import empty_on_huge_pages


def mlp(sizes: list[int], last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        lin = nn.Linear(sizes[i], sizes[i + 1])
        nn.init.normal_(lin.weight, 0.0, math.sqrt(2.0 / (sizes[i] + sizes[i + 1])))
        nn.init.normal_(lin.bias, 0.0, math.sqrt(1.0 / sizes[i + 1]))
        layers.append(lin)
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class _Lookup(torch.autograd.Function):
    """F.embedding whose sparse gradient comes out coalesced: each touched row once, in order,
    with its lookups' gradients summed. F.embedding(sparse=True) emits a row per lookup instead,
    and every consumer (all-gather, optimizer) would pay for the duplicates and the coalescing.

    When the table has a RowGrads attached (fused_sparse.attach_row_grads: one process, a fused
    sparse optimizer), the rows and values go there instead and weight.grad stays None; on CUDA
    they are deduplicated into fixed-size buffers, so the backward pass never waits for the host."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.weight_shape, ctx.weight_dtype = weight.shape, weight.dtype
        ctx.row_grads = row_grads_of(weight)
        return F.embedding(ids, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (ids,) = ctx.saved_tensors
        dim = ctx.weight_shape[1]
        flat_grad = grad.reshape(-1, dim).to(ctx.weight_dtype)
        if ctx.row_grads is not None:
            fixed_size = grad.is_cuda
            ctx.row_grads.add(*dedup_rows(ids.flatten(), flat_grad, fixed_size, ctx.weight_shape[0]), unique=not fixed_size)
            return None, None
        rows, values = dedup_rows(ids.flatten(), flat_grad, fixed_size=False, bound=ctx.weight_shape[0])
        grad_weight = torch.sparse_coo_tensor(rows.unsqueeze(0), values, ctx.weight_shape, is_coalesced=True, check_invariants=False)
        return grad_weight, None


def coalesced_grad(grad: torch.Tensor) -> torch.Tensor:
    """A sparse row gradient flagged coalesced. Autograd's gradient accumulation drops the flag of
    what _Lookup emits, so check that the rows are still strictly increasing (cheap) rather than
    sort them again; anything else (e.g. gradients accumulated over two backward passes) is
    coalesced the slow way."""
    if grad.is_coalesced():
        return grad
    rows = grad._indices()[0]
    if bool((rows[1:] > rows[:-1]).all()):
        return torch.sparse_coo_tensor(grad._indices(), grad._values(), grad.shape, is_coalesced=True, check_invariants=False)
    return grad.coalesce()


# Rows per independently seeded block of a table's initial values: a rank initialises only the
# blocks its rows fall in, and every sharding of the table gets the same values.
INIT_BLOCK_ROWS = 1 << 16


def _init_seed(seed: int, feature: int, block: int) -> int:
    return ((seed * 1_000_003 + feature) * 65_537 + block) % (1 << 63)


def init_table_rows(out: torch.Tensor, feature: int, table_rows: int, start: int, seed: int) -> None:
    """Fill `out` ([k, d], on its device) with rows start..start+k of table `feature`'s initial
    values: uniform in +-sqrt(1/table_rows) (TorchRec's default; N(0,1) trains markedly worse),
    drawn on the device block by block, each block from its own seeded generator."""
    bound = math.sqrt(1.0 / table_rows)
    end = start + out.shape[0]
    generator = torch.Generator(device=out.device)
    for block in range(start // INIT_BLOCK_ROWS, -(-end // INIT_BLOCK_ROWS)):
        lo, hi = block * INIT_BLOCK_ROWS, min(table_rows, (block + 1) * INIT_BLOCK_ROWS)
        generator.manual_seed(_init_seed(seed, feature, block))
        if start <= lo and hi <= end:  # the whole block is ours: draw it in place
            out[lo - start : hi - start].uniform_(-bound, bound, generator=generator)
        else:
            values = torch.empty(hi - lo, out.shape[1], device=out.device).uniform_(-bound, bound, generator=generator)
            a, b = max(lo, start), min(hi, end)
            out[a - start : b - start] = values[a - lo : b - lo]


class EmbeddingTables(nn.Module):
    """One embedding table per categorical feature, stored as one [sum(rows), d] weight in which
    table f starts at row offsets[f] (table-batched, like FBGEMM's TBE): one lookup, one sparse
    gradient and one optimizer step for all features. Built on `device` directly; `features` are
    the tables' indices in the model (their init seeds), 0.. by default."""

    def __init__(self, table_sizes: list[int], dim: int, seed: int | None = None, device: torch.device | str | None = None,
                 features: list[int] | None = None):
        super().__init__()
        seed = torch.initial_seed() if seed is None else seed
        starts = [0, *itertools.accumulate(table_sizes)][:-1]
        self.table_sizes, self.starts = list(table_sizes), starts
        self.features = list(features) if features is not None else list(range(len(table_sizes)))
        self.weight = nn.Parameter(empty_on_huge_pages(sum(table_sizes), dim, device=device))
        self.register_buffer("offsets", torch.tensor(starts, dtype=torch.long, device=device), persistent=False)
        with torch.no_grad():
            for f, start, rows in zip(self.features, starts, table_sizes):
                init_table_rows(self.weight[start : start + rows], f, rows, 0, seed)

    def forward(self, cat: torch.Tensor) -> torch.Tensor:
        """[n, F] row ids (each within its feature's table) -> [n, F, d]."""
        return _Lookup.apply(self.weight, cat + self.offsets)

    def replicated_weight(self) -> nn.Parameter | None:
        return self.weight

    def sharded_weight(self) -> nn.Parameter | None:
        return None

    def table_slots(self) -> list[tuple[int, nn.Parameter, int, int, int]]:
        """(feature, parameter, local start, global start, rows) of each table (see sharding.py)."""
        return [(f, self.weight, start, 0, rows) for f, start, rows in zip(self.features, self.starts, self.table_sizes)]


class _PairwiseDots(torch.autograd.Function):
    """[n, F, d] -> [n, P]: the dot products of each row's vector pairs i < j, in triu order.
    Z = T T^T is symmetric, so its gradient is one bmm, G_sym T, with G_sym gathered from the
    incoming gradient; autograd through bmm and advanced indexing would run two bmms and a slow
    accumulating index_put instead."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, pairs: torch.Tensor, sym: torch.Tensor) -> torch.Tensor:
        # pairs: the flat position i*F + j of each pair; sym: for each flat position, its pair's
        # column in the gradient, or P (a zero column) on the diagonal.
        ctx.save_for_backward(t, sym)
        return _columns(torch.bmm(t, t.transpose(1, 2)).flatten(1), pairs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        t, sym = ctx.saved_tensors
        n, f, _ = t.shape
        g_sym = _columns(F.pad(grad, (0, 1)), sym).view(n, f, f)
        return torch.bmm(g_sym, t), None, None


def _columns(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x[:, idx]. On CPU index_select along dim 1 is fast for float32 only; gather is fast for all."""
    if x.dtype == torch.float32:
        return x.index_select(1, idx)
    return torch.gather(x, 1, idx.expand(x.shape[0], -1))


def _pair_indices(f: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pairs, sym) for _PairwiseDots over f vectors."""
    i, j = torch.triu_indices(f, f, offset=1)
    p = i.numel()
    sym = torch.full((f, f), p, dtype=torch.long)
    sym[i, j] = sym[j, i] = torch.arange(p)
    return i * f + j, sym.flatten()


class CrossNetV2(nn.Module):
    """DCNv2 cross layers: x_{l+1} = x0 * (W_l x_l + b_l) + x_l."""

    def __init__(self, dim: int, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))
        for lin in self.layers:
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for lin in self.layers:
            x = x0 * lin(x) + x
        return x


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype autocast would run a matmul in (custom Functions are not autocast)."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class DLRM(nn.Module):
    """`embeddings`: the tables' module (sharding.ShardedEmbeddingTables under a sharding plan);
    by default all tables replicated (EmbeddingTables, seeded from torch's current seed)."""

    def __init__(self, cfg: ModelConfig, embeddings: nn.Module | None = None):
        super().__init__()
        d = cfg.embeddingDim
        # rectrain_api.validation.check_trainer refuses such a config; this only turns a programming
        # error (a ModelConfig that skipped it) into a clear one instead of a shape error in forward().
        assert cfg.numDenseFeatures == 0 or cfg.bottomMlp[-1:] == [d], "bottomMlp must end in embeddingDim"
        self.cfg = cfg
        self.num_dense = cfg.numDenseFeatures
        self.embeddings = embeddings if embeddings is not None else EmbeddingTables(cfg.tableSizes, d)
        self.bottom = mlp([cfg.numDenseFeatures, *cfg.bottomMlp], last_activation=True) if cfg.numDenseFeatures > 0 else None
        n_vec = len(cfg.tableSizes) + (1 if self.bottom is not None else 0)
        self.interaction = cfg.interaction
        if cfg.interaction == "dot":
            pairs, sym = _pair_indices(n_vec)
            self.register_buffer("_pairs", pairs, persistent=False)
            self.register_buffer("_pairs_sym", sym, persistent=False)
            top_in = (d if self.bottom is not None else 0) + n_vec * (n_vec - 1) // 2
            self.cross = None
        else:
            top_in = n_vec * d
            self.cross = CrossNetV2(top_in, cfg.dcnLayers)
        self.top = mlp([top_in, *cfg.topMlp, 1], last_activation=False)

    def forward(self, dense: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        emb = self.embeddings(cat)  # [n, F, d]
        z = self.bottom(dense) if self.bottom is not None else None
        if self.cross is not None:
            x = emb.flatten(1) if z is None else torch.cat([z, emb.flatten(1)], dim=1)
            return self.top(self.cross(x)).squeeze(1)
        dtype = _compute_dtype(emb)
        t = emb.to(dtype) if z is None else torch.cat([z.to(dtype).unsqueeze(1), emb.to(dtype)], dim=1)
        inter = _PairwiseDots.apply(t, self._pairs, self._pairs_sym)
        x = inter if z is None else torch.cat([z.to(dtype), inter], dim=1)
        return self.top(x).squeeze(1)

    def sparse_parameters(self) -> list[nn.Parameter]:
        """The embedding parameters a sparse optimizer updates (each gets a sparse COO gradient):
        the fused replicated tables and/or this rank's shard."""
        return [p for p in (self.embeddings.replicated_weight(), self.embeddings.sharded_weight()) if p is not None]

    def dense_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith("embeddings.")]
