"""Sparse optimizers applied straight to the touched rows of an embedding table.

torch.optim's sparse path (Adagrad/SGD on a sparse COO gradient) coalesces, masks and builds new
sparse tensors every step; on CUDA it also synchronises with the host. `FusedSparseOptimizer`
instead updates the touched rows in place with index_add_/index_select, for

    sgd              w[r] -= lr * g[r]
    adagrad          s[r] += g[r]^2 (per element);    w[r] -= lr * g[r] / (sqrt(s[r]) + eps)
    rowwise_adagrad  s[r] += mean(g[r]^2) (per row);  w[r] -= lr * g[r] / (sqrt(s[r]) + eps)

(adagrad is torch.optim.Adagrad's update with lr_decay 0 and the same state layout, "step" and
"sum", so checkpoints written with either load into the other; rowwise_adagrad is FBGEMM's
row-wise Adagrad: one accumulator per row, a d-th of the optimizer memory).

Gradients reach it two ways:
- the contract every table honours: `param.grad` is a sparse COO tensor (coalesced, as
  `_Lookup` and the distributed sparse exchange produce it; a dense gradient works too), then
  `step()`;
- the single-device fast path: a `RowGrads` attached to the parameter (`attach_row_grads`) makes
  `_Lookup`'s backward hand its deduplicated (rows, values) here directly, with no COO tensor and,
  on CUDA, no host synchronisation: rows are deduplicated into fixed-size buffers (`dedup_rows`
  with fixed_size), so no shape depends on the data.
Both run the same update: on rows known to be distinct, gathered, computed and written back
(index_copy_, the fastest form on CPU); on padded buffers, where rows repeat, accumulated
(index_add_), so a padding slot (a touched row with a zero gradient) changes nothing.
"""

from __future__ import annotations

import torch

from .hugepages import empty_on_huge_pages

SPARSE_KINDS = ("sgd", "adagrad", "rowwise_adagrad")
_ROW_GRADS_ATTR = "_rectrain_row_grads"


def unique_rows(ids: torch.Tensor, bound: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.unique(ids, return_inverse=True) of int64 ids in [0, bound): (sorted distinct ids as
    int64, inverse). Ids that fit in int32 are sorted as int32: half the bytes to move, about 2x
    faster on CPU (53k ids: 1.1 vs 2.0 ms)."""
    if bound <= 2**31:
        rows, inverse = torch.unique(ids.int(), return_inverse=True)
        return rows.long(), inverse
    return torch.unique(ids, return_inverse=True)


def dedup_rows(ids: torch.Tensor, grad: torch.Tensor, fixed_size: bool, bound: int = 2**63) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [n] int64, grad [n, d] -> (rows [m] int64, values [m, d]): each touched row with the sum
    of its lookups' gradients.

    fixed_size=False: m = the distinct rows, sorted (unique_rows; its size is data, so on CUDA the
    host waits for it). fixed_size=True: m = n, no host sync: one sort of the ids; the distinct
    rows, sorted, fill the first slots, and every later slot is padding that repeats some touched
    row with a zero gradient (spread over rows, so accumulating updates do not all hit one row).
    bound: the ids are below it (the table's rows; int32 sorting when it allows)."""
    if not fixed_size:
        rows, inverse = unique_rows(ids, bound)
        values = grad.new_zeros(rows.numel(), grad.shape[1])
        return rows, values.index_add_(0, inverse, grad)
    n = ids.numel()
    sorted_ids, order = torch.sort(ids)
    new_row = torch.ones(n, dtype=torch.long, device=ids.device)
    if n > 1:
        new_row[1:] = sorted_ids[1:] != sorted_ids[:-1]
    segment = torch.cumsum(new_row, 0) - 1  # slot of each sorted lookup's row, in [0, distinct)
    rows = sorted_ids.clone()  # slots past the distinct rows keep some touched row: the padding
    rows.scatter_(0, segment, sorted_ids)  # every lookup of a row writes the same id
    slot = torch.empty_like(segment).scatter_(0, order, segment)  # each lookup's slot, original order: no [n, d] permuted copy
    values = grad.new_zeros(n, grad.shape[1])
    return rows, values.index_add_(0, slot, grad)


class RowGrads:
    """Row gradients handed over by _Lookup's backward for one parameter, until the optimizer
    steps (a list, so two backward passes before one step accumulate)."""

    def __init__(self):
        self.pending: list[tuple[torch.Tensor, torch.Tensor, bool]] = []

    def add(self, rows: torch.Tensor, values: torch.Tensor, unique: bool) -> None:
        """unique: each row once (dedup_rows without fixed_size); False for padded buffers."""
        self.pending.append((rows, values, unique))

    def clear(self) -> None:
        self.pending = []


def attach_row_grads(param: torch.Tensor) -> RowGrads:
    """Make _Lookup hand `param`'s row gradients to a RowGrads (read by FusedSparseOptimizer)
    instead of setting param.grad. Only for a parameter whose gradient needs no exchange (one
    process): the distributed path needs the COO .grad."""
    sink = RowGrads()
    setattr(param, _ROW_GRADS_ATTR, sink)
    return sink


def detach_row_grads(param: torch.Tensor) -> None:
    if hasattr(param, _ROW_GRADS_ATTR):
        delattr(param, _ROW_GRADS_ATTR)


def row_grads_of(param: torch.Tensor) -> RowGrads | None:
    return getattr(param, _ROW_GRADS_ATTR, None)


class FusedSparseOptimizer(torch.optim.Optimizer):
    """sgd / adagrad / rowwise_adagrad on the touched rows of 2-D parameters (see the module doc).

    Works with torch.amp.GradScaler (fp16): GradScaler passes the scale and its inf check in
    (`grad_scale`, `found_inf`), the step unscales, checks the handed-over rows for inf/NaN itself
    and skips the update on overflow without a host sync. Stepped on its own that way, an overflow
    seen only in the embedding gradient skips this update but does not lower the scale; the train
    loop therefore steps both optimizers as one (train._scaled_step), so GradScaler checks the
    embedding rows too.
    """

    _step_supports_amp_scaling = True

    def __init__(self, params, kind: str, lr: float, eps: float = 1e-10, initial_accumulator_value: float = 0.0):
        if kind not in SPARSE_KINDS:
            raise ValueError(f"kind must be one of {SPARSE_KINDS}, got {kind!r}")
        self.kind = kind
        super().__init__(params, {"lr": lr, "eps": eps, "initial_accumulator_value": initial_accumulator_value})
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"FusedSparseOptimizer updates rows of 2-D tables; got a parameter of shape {tuple(p.shape)}")
                self._init_state(p, group["initial_accumulator_value"])

    def _init_state(self, p: torch.Tensor, init: float) -> None:
        """State from the start (as torch.optim.Adagrad), so a checkpoint can load into it in place."""
        if self.kind == "sgd":
            return
        shape = p.shape if self.kind == "adagrad" else p.shape[:1]
        accumulator = empty_on_huge_pages(*shape, dtype=p.dtype, device=p.device).fill_(init)
        self.state[p] = {"step": torch.tensor(0.0), "sum": accumulator}

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for group in self.param_groups:
            for p in group["params"]:
                sink = row_grads_of(p)
                if sink is not None:
                    sink.clear()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        scale = getattr(self, "grad_scale", None)  # set by GradScaler (fp16) for this call
        found_inf = getattr(self, "found_inf", None)
        for group in self.param_groups:
            for p in group["params"]:
                grads = self._row_grads(p)
                if grads is None:
                    continue
                rows, values, unique = grads
                if scale is not None:
                    values = self._unscaled(values, scale, found_inf)
                self._update(p, rows, values, unique, group)
        return loss

    def _row_grads(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool] | None:
        """(rows, values, unique) of everything p received since the last zero_grad, or None.
        unique: every row once (exact dedup, a coalesced COO or a dense gradient); False for the
        padded fixed-size buffers of the CUDA path."""
        parts = []
        sink = row_grads_of(p)
        if sink is not None:
            parts.extend(sink.pending)
        if p.grad is not None:
            g = p.grad
            if g.is_sparse:
                g = g if g.is_coalesced() else g.coalesce()
                parts.append((g._indices()[0], g._values(), True))
            else:
                parts.append((torch.arange(p.shape[0], device=p.device), g, True))
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        # Several backward passes (or both paths) before one step: sum per row again.
        rows = torch.cat([r for r, _, _ in parts])
        values = torch.cat([v for _, v, _ in parts])
        fixed_size = rows.is_cuda
        return (*dedup_rows(rows, values, fixed_size, p.shape[0]), not fixed_size)

    @staticmethod
    def _unscaled(values: torch.Tensor, scale: torch.Tensor, found_inf) -> torch.Tensor:
        """values / scale, or all zeros (no update) when they or the dense gradients overflowed."""
        values = values * scale.double().reciprocal().float()
        overflow = ~torch.isfinite(values).all()
        if isinstance(found_inf, torch.Tensor):
            overflow = overflow | (found_inf.to(values.device) > 0)
        return torch.where(overflow, torch.zeros((), dtype=values.dtype, device=values.device), values)

    def _update(self, p: torch.Tensor, rows: torch.Tensor, values: torch.Tensor, unique: bool, group: dict) -> None:
        """The update on `rows`. Unique rows: gather, compute, write back (index_copy_; on CPU 1.6-2.7x
        faster than accumulating, and than torch.optim's sparse path). Padded rows repeat: the
        accumulating form (index_add_), where a padding slot's zero gradient adds nothing."""
        lr, eps = group["lr"], group["eps"]
        values = values.to(p.dtype)
        if self.kind == "sgd":
            if unique:
                p.index_copy_(0, rows, p.index_select(0, rows).add_(values, alpha=-lr))
            else:
                p.index_add_(0, rows, values, alpha=-lr)
            return
        state = self.state[p]
        state["step"] += 1
        acc = state["sum"]
        square = values * values if self.kind == "adagrad" else (values * values).mean(1)
        if unique:
            summed = acc.index_select(0, rows).add_(square)
            acc.index_copy_(0, rows, summed)
        else:
            acc.index_add_(0, rows, square)
            summed = acc.index_select(0, rows)
        std = summed.sqrt_().add_(eps)
        step = values / (std if self.kind == "adagrad" else std.unsqueeze(1))
        if unique:
            p.index_copy_(0, rows, p.index_select(0, rows).add_(step, alpha=-lr))
        else:
            p.index_add_(0, rows, step, alpha=-lr)
