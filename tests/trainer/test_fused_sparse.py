"""The fused sparse optimizers against torch.optim (and a written-out row-wise Adagrad), on CPU:
duplicate ids, several steps, every way a gradient reaches them."""

from __future__ import annotations

import copy

import pytest
import torch

from rectrain_trainer.fused_sparse import FusedSparseOptimizer, attach_row_grads, dedup_rows, row_grads_of
from rectrain_trainer.model import _Lookup

ROWS, DIM, LR = 40, 6, 0.3


def _batches(steps: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(ids [32, 3] with many duplicates, output gradient [32, 3, DIM]) per step."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, ROWS // 4, (32, 3), generator=g) * 3 % ROWS, torch.randn(32, 3, DIM, generator=g))
            for _ in range(steps)]


def _backward(weight: torch.Tensor, ids: torch.Tensor, out_grad: torch.Tensor) -> None:
    """A backward pass through the real lookup whose output gradient is out_grad."""
    (_Lookup.apply(weight, ids) * out_grad).sum().backward()


def _reference_rowwise(weight: torch.Tensor, acc: torch.Tensor, ids: torch.Tensor, out_grad: torch.Tensor, eps=1e-10):
    """Row-wise Adagrad written out densely: one accumulator per touched row."""
    grad = torch.zeros_like(weight).index_add_(0, ids.flatten(), out_grad.reshape(-1, DIM))
    touched = torch.zeros(ROWS, dtype=torch.bool)
    touched[ids.flatten()] = True
    acc[touched] += (grad[touched] ** 2).mean(1)
    weight[touched] -= LR * grad[touched] / (acc[touched].sqrt() + eps).unsqueeze(1)


def _fused_run(kind: str, path: str, batches, init: torch.Tensor) -> torch.Tensor:
    """path: coo (weight.grad from _Lookup, the distributed contract), rows (_Lookup hands rows to an
    attached RowGrads, exact dedup as on CPU), fixed (the CUDA dedup: fixed-size padded buffers)."""
    weight = torch.nn.Parameter(init.clone())
    opt = FusedSparseOptimizer([weight], kind, LR)
    sink = attach_row_grads(weight) if path in ("rows", "fixed") else None
    for ids, out_grad in batches:
        if path == "fixed":
            sink.add(*dedup_rows(ids.flatten(), out_grad.reshape(-1, DIM), fixed_size=True), unique=False)
        else:
            _backward(weight, ids, out_grad)
            assert (weight.grad is None) == (path == "rows")
        opt.step()
        opt.zero_grad()
    return weight.detach()


@pytest.mark.parametrize("path", ["coo", "rows", "fixed"])
@pytest.mark.parametrize("kind", ["sgd", "adagrad", "rowwise_adagrad"])
def test_fused_update_matches_reference(kind, path):
    batches = _batches(4)
    init = torch.randn(ROWS, DIM, generator=torch.Generator().manual_seed(1))
    got = _fused_run(kind, path, batches, init)
    if kind == "rowwise_adagrad":
        want, acc = init.clone(), torch.zeros(ROWS)
        for ids, out_grad in batches:
            _reference_rowwise(want, acc, ids, out_grad)
    else:
        ref = torch.nn.Parameter(init.clone())
        opt = torch.optim.SGD([ref], lr=LR) if kind == "sgd" else torch.optim.Adagrad([ref], lr=LR)
        for ids, out_grad in batches:
            _backward(ref, ids, out_grad)
            opt.step()
            opt.zero_grad()
        want = ref.detach()
    assert not torch.equal(got, init)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_fixed_size_dedup_sums_rows_and_pads_with_zero():
    ids = torch.tensor([5, 2, 5, 9, 2, 5])
    grad = torch.arange(12, dtype=torch.float32).view(6, 2)
    rows, values = dedup_rows(ids, grad, fixed_size=True)
    assert rows.shape == (6,) and values.shape == (6, 2)  # the lookups' count, whatever the data
    assert rows[:3].tolist() == [2, 5, 9]
    assert values[:3].tolist() == [[2 + 8, 3 + 9], [0 + 4 + 10, 1 + 5 + 11], [6, 7]]
    assert set(rows[3:].tolist()) <= {2, 5, 9} and not values[3:].any()  # padding: a touched row, zero gradient
    exact_rows, exact_values = dedup_rows(ids, grad, fixed_size=False)
    assert torch.equal(exact_rows, rows[:3]) and torch.equal(exact_values, values[:3])


def test_two_backward_passes_before_one_step_accumulate():
    """Gradient accumulation: two lookups' row gradients (one row in both) sum before Adagrad squares them."""
    init = torch.randn(ROWS, DIM)
    fused, ref = torch.nn.Parameter(init.clone()), torch.nn.Parameter(init.clone())
    opt, ref_opt = FusedSparseOptimizer([fused], "adagrad", LR), torch.optim.Adagrad([ref], lr=LR)
    attach_row_grads(fused)
    (ids1, g1), (ids2, g2) = _batches(2, seed=5)
    for weight in (fused, ref):
        _backward(weight, ids1, g1)
        _backward(weight, ids2, g2)
    assert len(row_grads_of(fused).pending) == 2
    opt.step()
    ref_opt.step()
    torch.testing.assert_close(fused.detach(), ref.detach(), rtol=0, atol=1e-6)
    opt.zero_grad()
    assert row_grads_of(fused).pending == []


@pytest.mark.parametrize("kind", ["adagrad", "rowwise_adagrad", "sgd"])
def test_state_dict_round_trips(kind):
    batches = _batches(4, seed=2)
    a = torch.nn.Parameter(torch.randn(ROWS, DIM))
    opt_a = FusedSparseOptimizer([a], kind, LR)
    for ids, g in batches[:2]:
        _backward(a, ids, g)
        opt_a.step()
        opt_a.zero_grad()
    b = torch.nn.Parameter(a.detach().clone())
    opt_b = FusedSparseOptimizer([b], kind, LR * 7)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # (torch aliases same-device tensors)
    assert opt_b.param_groups[0]["lr"] == LR
    for ids, g in batches[2:]:
        for weight, opt in ((a, opt_a), (b, opt_b)):
            _backward(weight, ids, g)
            opt.step()
            opt.zero_grad()
    assert torch.equal(a, b)


def test_adagrad_state_is_torch_adagrads():
    """Checkpoints written with torch.optim.Adagrad (before the fused update) load into it."""
    batches = _batches(3, seed=4)
    ref = torch.nn.Parameter(torch.randn(ROWS, DIM))
    ref_opt = torch.optim.Adagrad([ref], lr=LR)
    _backward(ref, *batches[0])
    ref_opt.step()
    ref_opt.zero_grad()
    fused = torch.nn.Parameter(ref.detach().clone())
    opt = FusedSparseOptimizer([fused], "adagrad", LR)
    opt.load_state_dict(copy.deepcopy(ref_opt.state_dict()))
    for ids, g in batches[1:]:
        for weight, o in ((ref, ref_opt), (fused, opt)):
            _backward(weight, ids, g)
            o.step()
            o.zero_grad()
    torch.testing.assert_close(fused.detach(), ref.detach(), rtol=0, atol=1e-6)


def test_grad_scaler_unscales_and_skips_overflow():
    """fp16's GradScaler: the step unscales the handed-over rows; an inf in them skips the update."""
    ids, g = _batches(1, seed=6)[0]
    init = torch.randn(ROWS, DIM)
    want = _fused_run("adagrad", "rows", [(ids, g)], init)
    weight = torch.nn.Parameter(init.clone())
    dense = torch.nn.Parameter(torch.ones(3))
    opt, dense_opt = FusedSparseOptimizer([weight], "adagrad", LR), torch.optim.SGD([dense], lr=0.0)
    attach_row_grads(weight)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for out_grad in (g, g.clone().index_fill_(0, torch.tensor([3]), float("inf"))):
        loss = (_Lookup.apply(weight, ids) * out_grad).sum() + dense.sum()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.step(dense_opt)
        scaler.update()
        opt.zero_grad()
        dense_opt.zero_grad()
        torch.testing.assert_close(weight.detach(), want, rtol=0, atol=1e-6)  # the second (inf) step changed nothing


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_step_never_syncs_with_the_host():
    """The single-device CUDA path (lookup, backward, fused Adagrad) under sync debug mode "error"."""
    weight = torch.nn.Parameter(torch.randn(1000, 16, device="cuda"))
    opt = FusedSparseOptimizer([weight], "adagrad", LR)
    attach_row_grads(weight)
    ids = torch.randint(0, 50, (256, 4), device="cuda")
    out_grad = torch.randn(256, 4, 16, device="cuda")
    ref = torch.nn.Parameter(weight.detach().clone())
    ref_opt = torch.optim.Adagrad([ref], lr=LR)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            _backward(weight, ids, out_grad)
            opt.step()
            opt.zero_grad()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for _ in range(3):
        _backward(ref, ids, out_grad)
        ref_opt.step()
        ref_opt.zero_grad()
    torch.testing.assert_close(weight.detach(), ref.detach(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("bound", [1000, 2**31, 2**40])
def test_unique_rows_is_torch_unique_whichever_width_it_sorts_in(bound):
    """unique_rows sorts as int32 when the ids fit: the result must not depend on it (ids near the
    bound, where a wrong width would wrap)."""
    from rectrain_trainer.fused_sparse import unique_rows

    ids = torch.cat([torch.randint(0, min(bound, 50), (300,)), torch.tensor([bound - 1, bound - 2, bound - 1])])
    rows, inverse = unique_rows(ids, bound)
    want_rows, want_inverse = torch.unique(ids, return_inverse=True)
    assert rows.dtype == torch.long and torch.equal(rows, want_rows) and torch.equal(inverse, want_inverse)
