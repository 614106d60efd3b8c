"""BatchLoader streams raw columns through a ring of reused host buffers and finishes the batches
on the device; run on CPU here, where the same path runs without pinning. Its batches must be
make_batch's, bit for bit, at every step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rectrain_trainer.data import BatchLoader, Table, make_batch, shard_indices

SIZES = [7, 1000, 3, 2**31 - 1, 2**32 + 5]  # the last: wider than any uint32 value (no wrap-around)


def _table(rows: int) -> Table:
    rng = np.random.default_rng(3)
    cat = rng.integers(0, 2**32, size=(rows, len(SIZES)), dtype=np.uint64).astype(np.uint32)
    cat[:5] = [2**32 - 1, 2**31, 2**31 - 1, 0, 1]  # the edges of the raw uint32 range
    assert (cat >= 2**31).mean() > 0.3
    return Table(rng.integers(0, 2, rows).astype(np.uint8), rng.standard_normal((rows, 6)).astype(np.float32), cat)


def _expected(table: Table, global_batch: int, world: int, rank: int, skip: int) -> list:
    sizes = np.asarray(SIZES, dtype=np.int64)
    steps = list(shard_indices(len(table), global_batch, world, rank, seed=5, epoch=2))
    return [make_batch(table, idx, gsize, sizes) for idx, gsize in steps[skip:]]


def _assert_same(got: list, want: list) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.global_size == w.global_size
        for name in ("dense", "cat", "label"):
            a, b = getattr(g, name), getattr(w, name)
            assert a.dtype == b.dtype and a.device == b.device and a.shape == b.shape, name
            assert torch.equal(a, b), name


@pytest.mark.parametrize("workers", [0, 1, 3])
@pytest.mark.parametrize("world,rank,skip", [(1, 0, 0), (3, 0, 0), (3, 2, 4), (4, 3, 1)])
def test_streamed_batches_equal_make_batch(world, rank, skip, workers):
    """Every step (the last one partial, a rank's share one row short), ranks, a skip, the ring
    wrapping around many times; uint32 categories >= 2^31 hash as their unsigned value."""
    table = _table(1001)  # global batches of 50: 21 steps, the last of 1 row
    loader = BatchLoader(table, 50, world, rank, seed=5, epoch=2, table_sizes=SIZES, skip=skip, workers=workers)
    got = list(loader)
    want = _expected(table, 50, world, rank, skip)
    assert len(got) == 21 - skip and want[-1].global_size == 1
    _assert_same(got, want)


def test_batches_stay_valid_while_later_ones_reuse_the_ring():
    """Batches held past many later steps (which refill every ring slot) keep their values: the
    device side makes tensors of its own, no batch is a view of a slot."""
    table = _table(1001)
    held = list(BatchLoader(table, 50, 1, 0, seed=5, epoch=2, table_sizes=SIZES, workers=1))
    storages = {t.untyped_storage().data_ptr() for b in held for t in (b.dense, b.cat, b.label) if t.numel()}
    assert len(storages) == 3 * len(held)
    _assert_same(held, _expected(table, 50, 1, 0, 0))


def test_memory_mapped_columns_and_a_rank_with_no_rows(tmp_path):
    """Memory-mapped (read-only) columns, as open_binary gives them; a rank whose share of the
    last global batch is empty still gets its (empty) batch."""
    table = _table(203)
    cols = {}
    for name in ("label", "dense", "cat"):
        arr = getattr(table, name)
        np.asarray(arr).tofile(tmp_path / name)
        cols[name] = np.memmap(tmp_path / name, arr.dtype, "r", shape=arr.shape)
    mapped = Table(cols["label"], cols["dense"], cols["cat"])
    got = list(BatchLoader(mapped, 40, 4, 3, seed=5, epoch=2, table_sizes=SIZES, workers=1))
    want = _expected(table, 40, 4, 3, 0)
    assert want[-1].label.shape == (0,)  # 203 = 5 * 40 + 3 rows: rank 3 of 4 has none in the last
    _assert_same(got, want)


def test_loader_errors_surface_and_wait_time_is_counted():
    table = _table(100)
    loader = BatchLoader(table, 10, 1, 0, seed=5, epoch=2, table_sizes=SIZES[:2], workers=1)  # 2 sizes, 5 columns
    with pytest.raises(RuntimeError):
        list(loader)
    loader = BatchLoader(table, 10, 1, 0, seed=5, epoch=2, table_sizes=SIZES, workers=1)
    assert len(list(loader)) == 10 and loader.wait_seconds >= 0.0


def test_cpu_finishing_in_row_chunks_gives_the_same_batches(monkeypatch):
    """On CPU the finishing runs a few rows per op (serial in the prefetch thread): chunk edges
    inside every batch change nothing."""
    from rectrain_trainer import data

    monkeypatch.setattr(data, "_SERIAL_ELEMENTS", 7 * len(SIZES))  # 7 rows per op
    table = _table(1001)
    _assert_same(list(BatchLoader(table, 50, 2, 1, seed=5, epoch=2, table_sizes=SIZES, skip=1, workers=1)),
                 _expected(table, 50, 2, 1, 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("workers", [0, 2])
def test_cuda_streamed_batches_equal_make_batch(workers):
    """The CUDA path: pinned ring, copies and finishing on the loader's stream. The training stream
    is kept busy (torch.cuda._sleep) so it lags the loader: what it reads of each batch right away
    must be the finished batch (its wait on the batch's event), and batches held while the ring
    is refilled many times must keep their values."""
    device = torch.device("cuda", torch.cuda.current_device())
    table = _table(1001)
    loader = BatchLoader(table, 50, 3, 1, seed=5, epoch=2, table_sizes=SIZES, skip=2, workers=workers, device=device)
    assert loader.pin
    got, sums = [], []
    for b in loader:
        torch.cuda._sleep(2_000_000)
        sums.append(torch.stack([b.cat.sum().double(), b.dense.double().sum(), b.label.double().sum()]))
        got.append(b)
    want = [w.to(device) for w in _expected(table, 50, 3, 1, 2)]
    _assert_same(got, want)
    for s, w in zip(sums, want):
        assert torch.equal(s, torch.stack([w.cat.sum().double(), w.dense.double().sum(), w.label.double().sum()]))
