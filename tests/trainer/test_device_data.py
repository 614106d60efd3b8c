"""Device-resident training data gives the host pipeline's batches, bit for bit (run on CPU here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rectrain_trainer.config import parse_config
from rectrain_trainer.data import BatchLoader, DeviceBatchLoader, DeviceTable, Table
from rectrain_trainer.train import DEVICE_DATA_ENV, train
from trainer_helpers import tiny_config

SIZES = [7, 1000, 3, 2**31 - 1]


def _table(rows: int) -> Table:
    rng = np.random.default_rng(0)
    cat = rng.integers(0, 2**32, size=(rows, len(SIZES)), dtype=np.uint64).astype(np.uint32)  # high bit set in half
    return Table(rng.integers(0, 2, rows).astype(np.uint8), rng.random((rows, 5)).astype(np.float32), cat)


@pytest.mark.parametrize("world,rank,skip", [(1, 0, 0), (2, 1, 2)])
def test_device_batches_equal_host_batches(world, rank, skip):
    table = _table(1000)  # 1000 rows in global batches of 96: the last one partial
    host = list(BatchLoader(table, 96, world, rank, seed=4, epoch=1, table_sizes=SIZES, skip=skip, workers=0))
    device = list(DeviceBatchLoader(DeviceTable(table, SIZES, torch.device("cpu")), 1000, 96, world, rank, seed=4, epoch=1,
                                    skip=skip))
    assert len(device) == len(host) == 11 - skip
    for h, d in zip(host, device):
        assert d.global_size == h.global_size
        for name in ("dense", "cat", "label"):
            a, b = getattr(h, name), getattr(d, name)
            assert a.dtype == b.dtype and torch.equal(a, b), name


def test_training_on_device_data_matches_host_pipeline(monkeypatch):
    cfg = tiny_config(training={**tiny_config()["training"], "maxSteps": 12, "device": "cpu"})
    results = []
    for mode in ("off", "on"):
        monkeypatch.setenv(DEVICE_DATA_ENV, mode)
        results.append(train(parse_config(cfg)))
    assert results[0].train_loss == results[1].train_loss and results[0].auc == results[1].auc
