"""Criteo TSV parsing, the binary columnar format, synthetic data and rank sharding."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest

from rectrain_trainer import data as D
from rectrain_trainer.cli import preprocess_main


def row(label="1", dense=None, cats=None) -> str:
    dense = dense if dense is not None else [str(i) for i in range(13)]
    cats = cats if cats is not None else [f"{i:08x}" for i in range(26)]
    return "\t".join([label, *dense, *cats]) + "\n"


GOOD_EMPTY = row("0", dense=["", "5", "-3", "", "0", "1", "", "", "", "", "", "", "100"], cats=["", "68fd1e64", "FFFFFFFF", "a"] + [""] * 22)


def test_parse_row_with_empty_fields_applies_standard_preprocessing():
    lab, dense, cats = D.parse_criteo_line(GOOD_EMPTY, "f:1")
    assert lab == 0
    assert dense[0] == 0.0  # missing -> 0
    assert dense[1] == pytest.approx(math.log(6))  # log(1+x)
    assert dense[2] == 0.0  # negatives clamped
    assert dense[4] == 0.0 and dense[5] == pytest.approx(math.log(2))
    assert dense[12] == pytest.approx(math.log(101))
    assert cats[:4] == [0, 0x68FD1E64, 0xFFFFFFFF, 0xA]
    assert cats[4:] == [0] * 22


@pytest.mark.parametrize(
    "line,what",
    [
        ("1\t2\t3\n", "expected 40 tab-separated columns, got 3"),
        (row()[:-1] + "\textra\n", "got 41"),
        (row(dense=["1.5"] + ["1"] * 12), "dense feature I1 is not an integer: '1.5'"),
        (row(dense=["1"] * 12 + ["x"]), "dense feature I13"),
        (row(cats=["zzzz0000"] + ["a"] * 25), "categorical feature C1 is not 1-8 hex digits"),
        (row(cats=["a"] * 25 + ["123456789"]), "categorical feature C26"),
        (row(cats=["0x12"] + ["a"] * 25), "C1"),
        (row(label="2"), "label must be 0 or 1"),
        (row(label=""), "label must be 0 or 1"),
    ],
)
def test_malformed_rows_are_named(line, what):
    with pytest.raises(D.MalformedRowError) as e:
        D.parse_criteo_line(line, "day_0:7")
    assert str(e.value).startswith("day_0:7: ")
    assert what in str(e.value)


def write_tsv(path, lines, gz=False):
    opener = gzip.open if gz else open
    with opener(path, "wt") as f:
        f.writelines(lines)
    return str(path)


def test_reader_errors_with_file_and_line_or_skips_and_counts(tmp_path):
    lines = [row("1"), GOOD_EMPTY, "1\tbad\n", row("0", dense=["q"] * 13), row("1"), "\n"]
    p = write_tsv(tmp_path / "train.txt", lines)
    with pytest.raises(D.MalformedRowError, match=rf"^{p}:3: expected 40"):
        D.read_criteo_tsv([p])
    t = D.read_criteo_tsv([p], malformed="skip")
    assert len(t) == 3 and t.rows_skipped == 2
    assert t.label.tolist() == [1, 0, 1]
    assert t.dense.dtype == np.float32 and t.dense.shape == (3, 13)
    assert t.cat.dtype == np.uint32 and t.cat[1, 1] == 0x68FD1E64

    # gzip (Criteo 1TB day_N.gz) reads the same rows
    g = write_tsv(tmp_path / "day_0.gz", lines, gz=True)
    tg = D.read_criteo_tsv([g], malformed="skip")
    assert np.array_equal(tg.label, t.label) and np.array_equal(tg.dense, t.dense) and np.array_equal(tg.cat, t.cat)
    with pytest.raises(D.MalformedRowError, match=rf"^{g}:3:"):
        D.read_criteo_tsv([g])


def test_only_malformed_rows_still_counted(tmp_path):
    p = write_tsv(tmp_path / "bad.txt", ["x\n", "y\n"])
    t = D.read_criteo_tsv([p], malformed="skip")
    assert len(t) == 0 and t.rows_skipped == 2


def test_preprocess_roundtrip_memmap(tmp_path, capsys):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(300):
        dense = ["" if rng.random() < 0.2 else str(int(rng.integers(-2, 1000))) for _ in range(13)]
        cats = ["" if rng.random() < 0.1 else f"{int(rng.integers(0, 2**32)):08x}" for _ in range(26)]
        lines.append(row(str(i % 2), dense, cats))
    lines.insert(100, "broken line\n")
    a = write_tsv(tmp_path / "a.txt", lines[:150])
    b = write_tsv(tmp_path / "b.gz", lines[150:], gz=True)
    out = tmp_path / "ds"

    # error mode: names file:line, exit 1, nothing visible under the output name
    assert preprocess_main([a, b, "-o", str(out), "--no-progress"]) == 1
    assert f"{a}:101:" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".ds.tmp-*"))

    assert preprocess_main([str(tmp_path / "*.txt"), b, "-o", str(out), "--malformed", "skip"]) == 0
    assert "wrote 300 rows" in capsys.readouterr().out
    ref = D.read_criteo_tsv([a, b], malformed="skip")
    t = D.open_binary(str(out))
    assert isinstance(t.dense, np.memmap)
    assert t.rows_skipped == 1 and len(t) == 300
    assert np.array_equal(t.label, ref.label) and np.array_equal(t.dense, ref.dense) and np.array_equal(t.cat, ref.cat)
    with pytest.raises(FileExistsError):
        D.preprocess([a], str(out), malformed="skip", progress=False)


@pytest.mark.parametrize("rows,batch,world", [(100, 8, 1), (100, 8, 2), (101, 7, 3), (5, 4, 2), (3, 4, 4), (64, 32, 2)])
def test_sharding_sees_every_row_exactly_once_per_epoch(rows, batch, world):
    for epoch in range(2):
        seen = []
        steps = None
        for rank in range(world):
            parts = list(D.shard_indices(rows, batch * world, world, rank, seed=5, epoch=epoch))
            steps = len(parts) if steps is None else steps
            assert len(parts) == steps == D.steps_per_epoch(rows, batch * world)  # all ranks step together
            for idx, gsize in parts:
                assert len(idx) <= batch and gsize <= batch * world
                seen.extend(idx.tolist())
        assert sorted(seen) == list(range(rows))
    # epochs are shuffled differently, identically on every rank
    assert not np.array_equal(D.epoch_order(rows, 5, 0), D.epoch_order(rows, 5, 1)) or rows < 3
    assert np.array_equal(D.epoch_order(rows, 5, 1), D.epoch_order(rows, 5, 1))


@pytest.mark.parametrize("rows,global_batch", [(100, 12), (101, 7), (30, 64)])
def test_a_step_covers_the_same_rows_at_every_world_size(rows, global_batch):
    """A global batch kept constant (training.globalBatchSize) makes step g the same rows whatever
    the world size: an elastic job resumed at another size continues from the right row."""
    def step_rows(world: int) -> list[list[int]]:
        per_rank = [list(D.shard_indices(rows, global_batch, world, rank, seed=2, epoch=1)) for rank in range(world)]
        return [sorted(np.concatenate([part[step][0] for part in per_rank]).tolist()) for step in range(len(per_rank[0]))]

    one = step_rows(1)
    assert len(one) == D.steps_per_epoch(rows, global_batch)
    assert step_rows(2) == one and step_rows(3) == one


def test_batch_loader_prefetch_matches_sync_and_skip_resumes_position():
    # Feature 1 takes 50 values in the data but has a 7-row table: the loader hashes it (value % 7).
    train, _ev, _planted = D.synthetic_datasets(4, [50, 50, 100, 20], 1000, 10, seed=1)
    sizes = [50, 7, 100, 20]
    assert train.cat[:, 1].max() >= 7
    sync = list(D.BatchLoader(train, 128, 2, 1, 3, 0, sizes, workers=0))
    pre = list(D.BatchLoader(train, 128, 2, 1, 3, 0, sizes, workers=2))
    skipped = list(D.BatchLoader(train, 128, 2, 1, 3, 0, sizes, skip=3, workers=1))
    assert len(sync) == len(pre) == 8 and len(skipped) == 5
    for a, b in zip(sync, pre):
        assert a.cat.equal(b.cat) and a.dense.equal(b.dense) and a.label.equal(b.label)
    for a, b in zip(sync[3:], skipped):
        assert a.cat.equal(b.cat)
    # Each batch holds rank 1's rows of its global step (in row order), categories hashed into the tables.
    shards = [np.sort(idx) for idx, _ in D.shard_indices(len(train), 128, 2, 1, seed=3, epoch=0)]
    for b, rows in zip(sync, shards, strict=True):
        assert np.array_equal(b.cat.numpy(), train.cat[rows].astype(np.int64) % np.asarray(sizes))
        assert np.array_equal(b.label.numpy(), train.label[rows].astype(np.float32))


def test_synthetic_is_planted_and_reproducible():
    a_tr, a_ev, planted = D.synthetic_datasets(4, [50, 50], 5000, 3000, seed=9)
    b_tr, _b_ev, _ = D.synthetic_datasets(4, [50, 50], 5000, 3000, seed=9)
    assert np.array_equal(a_tr.cat, b_tr.cat) and np.array_equal(a_tr.label, b_tr.label)
    from rectrain_trainer.metrics import roc_auc

    oracle = roc_auc(a_ev.label, planted.logit(a_ev))
    assert 0.7 < oracle < 1.0
    # the labels really follow the planted model: its calibrated probabilities match the base rate
    p = 1 / (1 + np.exp(-planted.logit(a_tr)))
    assert abs(p.mean() - a_tr.label.mean()) < 0.02


@pytest.mark.parametrize("gz", [False, True])
def test_fast_and_reference_parsers_read_the_same_rows(tmp_path, gz):
    lines = [row("1"), GOOD_EMPTY, "1\tbad\n", "\n", row("0", dense=["q"] * 13), row("1").replace("\n", "\r\n")]
    p = write_tsv(tmp_path / ("x.gz" if gz else "x.txt"), lines, gz=gz)
    fast = D.read_criteo_tsv([p], malformed="skip")
    ref = D.read_criteo_tsv([p], malformed="skip", parser="reference")
    assert (len(fast), fast.rows_skipped) == (3, 2) == (len(ref), ref.rows_skipped)
    assert np.array_equal(fast.label, ref.label) and np.array_equal(fast.cat, ref.cat)
    assert np.array_equal(fast.dense.view(np.uint32), ref.dense.view(np.uint32))
    for parser in ("fast", "reference"):
        with pytest.raises(D.MalformedRowError, match=rf"^{p}:3: expected 40"):
            D.read_criteo_tsv([p], parser=parser)
