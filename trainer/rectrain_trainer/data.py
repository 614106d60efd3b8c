"""Data: Criteo TSV parsing, the binary columnar format, the planted synthetic generator, rank sharding.

Every source ends up as a `Table`: three column arrays (numpy, in memory or memory-mapped)
  label  uint8   [rows]
  dense  float32 [rows, numDense]   already transformed: log(1 + max(x, 0)), missing -> 0
  cat    uint32  [rows, numCat]     raw 32-bit category values (Criteo hex), missing -> 0
Categories are hashed into the model's table sizes at batch time (`value % tableSize`), so one
preprocessed dataset serves any model shape.
"""

from __future__ import annotations

import glob
import gzip
import json
import logging
import math
import os
import queue
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from . import criteo_fast

log = logging.getLogger("rectrain.data")

CRITEO_DENSE = 13
CRITEO_CAT = 26
CRITEO_COLUMNS = 1 + CRITEO_DENSE + CRITEO_CAT
BINARY_FORMAT = "rectrain-columnar-v1"
_HEX = re.compile(r"[0-9a-fA-F]{1,8}")
_INT = re.compile(r"-?[0-9]+")


class MalformedRowError(ValueError):
    """A row that cannot be parsed; the message names file and line (1-based)."""


@dataclass
class Table:
    label: np.ndarray
    dense: np.ndarray
    cat: np.ndarray
    rows_skipped: int = 0

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def slice(self, start: int, stop: int) -> "Table":
        return Table(self.label[start:stop], self.dense[start:stop], self.cat[start:stop], self.rows_skipped)


# --------------------------------------------------------------------------------------------
# Criteo TSV
# --------------------------------------------------------------------------------------------


def _open_text(path: str):
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="\n")
    return open(path, "rt", encoding="utf-8", newline="\n")


def parse_criteo_line(line: str, where: str = "<row>") -> tuple[int, list[float], list[int]]:
    """One Criteo TSV row -> (label, 13 transformed dense values, 26 raw category values).

    Raises MalformedRowError naming `where` on a wrong column count, a non-0/1 label,
    a non-integer dense value or a category that is not 1-8 hex digits.
    """
    fields = line.rstrip("\r\n").split("\t")
    if len(fields) != CRITEO_COLUMNS:
        raise MalformedRowError(f"{where}: expected {CRITEO_COLUMNS} tab-separated columns, got {len(fields)}")
    lab = fields[0]
    if lab not in ("0", "1"):
        raise MalformedRowError(f"{where}: label must be 0 or 1, got {lab!r}")
    dense: list[float] = []
    for i in range(CRITEO_DENSE):
        s = fields[1 + i]
        if s == "":
            dense.append(0.0)
            continue
        if not _INT.fullmatch(s):
            raise MalformedRowError(f"{where}: dense feature I{i + 1} is not an integer: {s!r}")
        v = int(s)
        dense.append(math.log1p(v) if v > 0 else 0.0)
    cats: list[int] = []
    for j in range(CRITEO_CAT):
        s = fields[1 + CRITEO_DENSE + j]
        if s == "":
            cats.append(0)
            continue
        if not _HEX.fullmatch(s):
            raise MalformedRowError(f"{where}: categorical feature C{j + 1} is not 1-8 hex digits: {s!r}")
        cats.append(int(s, 16))
    return int(lab), dense, cats


def expand_paths(patterns: list[str]) -> list[str]:
    out: list[str] = []
    for p in patterns:
        hits = sorted(glob.glob(p))
        if not hits:
            raise FileNotFoundError(f"no file matches {p!r}")
        out.extend(hits)
    return out


class _ColumnBuffer:
    """Accumulates parsed rows in fixed-size numpy chunks."""

    def __init__(self, chunk: int = 65536):
        self.chunk = chunk
        self.done: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._new()

    def _new(self):
        self.label = np.empty(self.chunk, np.uint8)
        self.dense = np.empty((self.chunk, CRITEO_DENSE), np.float32)
        self.cat = np.empty((self.chunk, CRITEO_CAT), np.uint32)
        self.rows = 0

    def add(self, label, dense, cat):
        self.label[self.rows] = label
        self.dense[self.rows] = dense
        self.cat[self.rows] = cat
        self.rows += 1
        if self.rows == self.chunk:
            self.flush()

    def flush(self):
        if self.rows:
            self.done.append((self.label[: self.rows], self.dense[: self.rows], self.cat[: self.rows]))
            self._new()

    def take(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        self.flush()
        out, self.done = self.done, []
        return out


def _row_or_skip(line: str, where: str, malformed: str, skipped: int) -> tuple[tuple[int, list[float], list[int]] | None, int]:
    """The reference handling of one text line: (parsed row or None, updated skip count).

    Blank lines give None; a malformed row raises (malformed="error") or is counted, logged (first 5)
    and gives None.
    """
    if line.strip("\r\n ") == "":
        # A blank line (often a trailing newline) carries no row. A line of tabs is a
        # row of empty fields (malformed: no label), never a blank line.
        return None, skipped
    try:
        return parse_criteo_line(line, where), skipped
    except MalformedRowError as e:
        if malformed == "error":
            raise
        skipped += 1
        if skipped <= 5:
            log.warning("skipping malformed row (%s)", e)
        return None, skipped


def iter_criteo_chunks_reference(paths: list[str], malformed: str = "error", chunk: int = 65536, on_bytes=None):
    """`iter_criteo_chunks` line by line in Python: the reference the fast parser is tested against."""
    if malformed not in ("error", "skip"):
        raise ValueError("malformed must be 'error' or 'skip'")
    buf = _ColumnBuffer(chunk)
    skipped = 0
    for path in paths:
        size = os.path.getsize(path)
        with _open_text(path) as fh:
            for lineno, line in enumerate(fh, start=1):
                row, skipped = _row_or_skip(line, f"{path}:{lineno}", malformed, skipped)
                if row is None:
                    continue
                buf.add(*row)
                if buf.done:
                    for c in buf.take():
                        yield (*c, skipped)
        if on_bytes:
            on_bytes(size)
    final = buf.take()
    for c in final:
        yield (*c, skipped)
    if not final and skipped:
        yield (np.empty(0, np.uint8), np.empty((0, CRITEO_DENSE), np.float32), np.empty((0, CRITEO_CAT), np.uint32), skipped)


def _iter_criteo_chunks_fast(paths: list[str], malformed: str, chunk: int, on_bytes, block_size: int):
    """`criteo_fast` on whole blocks; every line it does not take goes through `_row_or_skip`, in order."""
    skipped = 0
    last_skipped = None  # the skip count of the last chunk yielded (None: nothing yielded yet)
    for path in paths:
        size = os.path.getsize(path)
        lines_before = 0
        reported = 0
        for data, consumed in criteo_fast.iter_blocks(path, block_size):
            block = criteo_fast.parse_block(data)
            lab, den, cat = block.label, block.dense, block.cat
            if block.slow.shape[0]:
                extra_lines: list[int] = []
                extra_rows: list[tuple[int, list[float], list[int]]] = []
                for i in block.slow.tolist():
                    row, skipped = _row_or_skip(block.line_text(i), f"{path}:{lines_before + i + 1}", malformed, skipped)
                    if row is not None:
                        extra_lines.append(i)
                        extra_rows.append(row)
                if extra_rows:
                    k = len(extra_rows)
                    pos = np.searchsorted(block.row_lines, np.asarray(extra_lines, np.int64)) + np.arange(k)
                    fast_rows = np.ones(len(lab) + k, bool)
                    fast_rows[pos] = False
                    lab2 = np.empty(len(lab) + k, np.uint8)
                    den2 = np.empty((len(lab) + k, CRITEO_DENSE), np.float32)
                    cat2 = np.empty((len(lab) + k, CRITEO_CAT), np.uint32)
                    lab2[fast_rows], den2[fast_rows], cat2[fast_rows] = lab, den, cat
                    lab2[pos] = [r[0] for r in extra_rows]
                    den2[pos] = [r[1] for r in extra_rows]
                    cat2[pos] = [r[2] for r in extra_rows]
                    lab, den, cat = lab2, den2, cat2
            lines_before += block.lines
            if on_bytes and consumed > reported:
                on_bytes(consumed - reported)
                reported = consumed
            for start in range(0, len(lab), chunk):
                yield lab[start : start + chunk], den[start : start + chunk], cat[start : start + chunk], skipped
                last_skipped = skipped
        if on_bytes and size > reported:
            on_bytes(size - reported)
    if skipped and last_skipped != skipped:
        yield (np.empty(0, np.uint8), np.empty((0, CRITEO_DENSE), np.float32), np.empty((0, CRITEO_CAT), np.uint32), skipped)


def iter_criteo_chunks(paths: list[str], malformed: str = "error", chunk: int = 65536, on_bytes=None, *,
                       parser: str = "fast", block_size: int = criteo_fast.DEFAULT_BLOCK_SIZE):
    """Yield (label, dense, cat, skipped_so_far) chunks of at most `chunk` rows from Criteo TSV files (plain or .gz).

    malformed="error" raises MalformedRowError("file:line: ..."); "skip" skips, counts and logs
    the first few. `on_bytes(n)` is called with the compressed/plain bytes consumed (in total, each
    file's size). The last chunk carries the final skip count. parser="fast" (vectorized, see
    `criteo_fast`, reading `block_size` bytes at a time) and parser="reference" (line by line) give
    identical rows, errors and counts.
    """
    if malformed not in ("error", "skip"):
        raise ValueError("malformed must be 'error' or 'skip'")
    if parser == "reference":
        return iter_criteo_chunks_reference(paths, malformed, chunk, on_bytes)
    if parser != "fast":
        raise ValueError("parser must be 'fast' or 'reference'")
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    return _iter_criteo_chunks_fast(paths, malformed, chunk, on_bytes, block_size)


def read_criteo_tsv(paths: list[str], malformed: str = "error", parser: str = "fast") -> Table:
    """Parse Criteo TSV files fully into memory (for small data; use `rectrain-preprocess` for big)."""
    labs, dens, cats = [], [], []
    skipped = 0
    for lab, den, cat, skipped in iter_criteo_chunks(expand_paths(paths), malformed, parser=parser):
        labs.append(lab)
        dens.append(den)
        cats.append(cat)
    if skipped:
        log.warning("skipped %d malformed rows in %s", skipped, ", ".join(paths))
    if not labs:
        return Table(np.empty(0, np.uint8), np.empty((0, CRITEO_DENSE), np.float32), np.empty((0, CRITEO_CAT), np.uint32), skipped)
    return Table(np.concatenate(labs), np.concatenate(dens), np.concatenate(cats), skipped)


# --------------------------------------------------------------------------------------------
# Binary columnar format: a directory with label.u8, dense.f32, cat.u32 (row-major) + meta.json.
# meta.json is written last and the directory is renamed into place, so a half-written dataset
# is never visible under its final name.
# --------------------------------------------------------------------------------------------


def preprocess(paths: list[str], out_dir: str, malformed: str = "error", progress: bool = True, parser: str = "fast") -> dict:
    """Convert Criteo TSV files into the binary columnar format; returns the metadata written."""
    files = expand_paths(paths)
    out = Path(out_dir)
    if (out / "meta.json").exists():
        raise FileExistsError(f"{out} already holds a dataset")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    total = sum(os.path.getsize(f) for f in files)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, desc="preprocess", dynamic_ncols=True)
    rows = 0
    skipped = 0
    try:
        with open(tmp / "label.u8", "wb") as fl, open(tmp / "dense.f32", "wb") as fd, open(tmp / "cat.u32", "wb") as fc:
            for lab, den, cat, skipped in iter_criteo_chunks(files, malformed, on_bytes=bar.update if bar else None, parser=parser):
                fl.write(memoryview(np.ascontiguousarray(lab)))
                fd.write(memoryview(np.ascontiguousarray(den, dtype="<f4")))
                fc.write(memoryview(np.ascontiguousarray(cat, dtype="<u4")))
                rows += len(lab)
                if bar:
                    bar.set_postfix(rows=rows, skipped=skipped, refresh=False)
        meta = {
            "format": BINARY_FORMAT,
            "rows": rows,
            "numDense": CRITEO_DENSE,
            "numCat": CRITEO_CAT,
            "rowsSkipped": skipped,
            "sources": files,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()  # must be empty: we refuse to overwrite a dataset above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bar:
            bar.close()
    if skipped:
        log.warning("skipped %d malformed rows", skipped)
    return meta


def open_binary(path: str) -> Table:
    """Memory-map a dataset written by `preprocess`."""
    p = Path(path)
    meta_file = p / "meta.json"
    if not meta_file.exists():
        raise FileNotFoundError(f"{p} is not a complete rectrain dataset (no meta.json)")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != BINARY_FORMAT:
        raise ValueError(f"{p}: unknown dataset format {meta.get('format')!r}")
    rows, num_dense, num_cat = meta["rows"], meta["numDense"], meta["numCat"]
    if rows == 0:
        return Table(np.empty(0, np.uint8), np.empty((0, num_dense), np.float32), np.empty((0, num_cat), np.uint32), meta["rowsSkipped"])
    return Table(
        np.memmap(p / "label.u8", np.uint8, "r", shape=(rows,)),
        np.memmap(p / "dense.f32", "<f4", "r", shape=(rows, num_dense)),
        np.memmap(p / "cat.u32", "<u4", "r", shape=(rows, num_cat)),
        int(meta.get("rowsSkipped", 0)),
    )


def open_binary_many(paths: list[str]) -> Table:
    dirs: list[str] = []
    for pat in paths:
        hits = sorted(h for h in glob.glob(pat) if os.path.isdir(h))
        if not hits:
            raise FileNotFoundError(f"no dataset directory matches {pat!r}")
        dirs.extend(hits)
    tables = [open_binary(d) for d in dirs]
    if len(tables) == 1:
        return tables[0]
    # Several datasets: concatenated in memory (each part stays memory-mapped until then).
    return Table(
        np.concatenate([t.label for t in tables]),
        np.concatenate([t.dense for t in tables]),
        np.concatenate([t.cat for t in tables]),
        sum(t.rows_skipped for t in tables),
    )


# --------------------------------------------------------------------------------------------
# Planted synthetic data
# --------------------------------------------------------------------------------------------


@dataclass
class PlantedModel:
    """logit = bias + w . dense + sum_f effect_f[category_f]; label ~ Bernoulli(sigmoid(logit))."""

    bias: float
    dense_w: np.ndarray
    effects: list[np.ndarray]
    cardinalities: list[int]

    def logit(self, table: Table) -> np.ndarray:
        z = np.full(len(table), self.bias, np.float64) + table.dense.astype(np.float64) @ self.dense_w
        for f, effect in enumerate(self.effects):
            z += effect[table.cat[:, f].astype(np.int64)]
        return z


def planted_model(num_dense: int, table_sizes: list[int], seed: int) -> PlantedModel:
    rng = np.random.default_rng([seed, 7])
    # At most 1000 distinct values per feature, never more than its table (so hashing is exact).
    cardinalities = [max(2, min(s, 1000)) for s in table_sizes]
    dense_w = rng.normal(0, 0.6, num_dense) / max(1.0, math.sqrt(num_dense / 4))
    scale = 1.2 / math.sqrt(max(1, len(cardinalities)))
    effects = [rng.normal(0, scale * 2.0, c) for c in cardinalities]
    return PlantedModel(-1.0, dense_w, effects, cardinalities)


def synthetic_table(planted: PlantedModel, rows: int, seed: int) -> Table:
    rng = np.random.default_rng(seed)
    num_dense = planted.dense_w.shape[0]
    # Criteo-like dense counts (heavy tailed, many zeros), then the standard log(1+x) transform.
    raw = rng.geometric(0.15, size=(rows, num_dense)) - 1
    raw[rng.random((rows, num_dense)) < 0.2] = 0
    dense = np.log1p(raw).astype(np.float32)
    cats = np.empty((rows, len(planted.cardinalities)), np.uint32)
    for f, c in enumerate(planted.cardinalities):
        # Zipf-ish popularity: a few frequent values, a long tail.
        u = rng.random(rows)
        cats[:, f] = np.minimum((c * u**2.0).astype(np.int64), c - 1)
    table = Table(np.zeros(rows, np.uint8), dense, cats)
    p = 1.0 / (1.0 + np.exp(-planted.logit(table)))
    table.label = (rng.random(rows) < p).astype(np.uint8)
    return table


def synthetic_datasets(num_dense: int, table_sizes: list[int], rows: int, eval_rows: int, seed: int):
    """(train, eval, planted model) drawn from one planted model; eval rows are independent."""
    planted = planted_model(num_dense, table_sizes, seed)
    return synthetic_table(planted, rows, seed * 2 + 1), synthetic_table(planted, eval_rows, seed * 2 + 2), planted


# --------------------------------------------------------------------------------------------
# Batches and rank sharding
# --------------------------------------------------------------------------------------------


@dataclass
class Batch:
    dense: torch.Tensor  # float32 [n, numDense]
    cat: torch.Tensor  # int64 [n, numCat], already hashed into table rows
    label: torch.Tensor  # float32 [n]
    global_size: int  # rows in the global batch this shard belongs to

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return Batch(
            self.dense.to(device, non_blocking=non_blocking),
            self.cat.to(device, non_blocking=non_blocking),
            self.label.to(device, non_blocking=non_blocking),
            self.global_size,
        )


def epoch_order(rows: int, seed: int, epoch: int) -> np.ndarray:
    """The global row order of an epoch: the same on every rank."""
    return np.random.default_rng([seed, epoch, 99]).permutation(rows)


def steps_per_epoch(rows: int, global_batch: int) -> int:
    return math.ceil(rows / global_batch) if rows else 0


def shard_indices(rows: int, global_batch: int, world_size: int, rank: int, seed: int, epoch: int) -> Iterator[tuple[np.ndarray, int]]:
    """Yield (this rank's row indices, global batch size) for each step of an epoch.

    Global step g covers order[g*G : (g+1)*G] (G = global_batch); rank r takes the r-th of W
    near-equal parts (np.array_split), so every row is seen exactly once per epoch across ranks,
    including the last, partial global batch, and step g covers the same rows at any world size
    (what lets an elastic job resume at another size). A rank's part may be empty (then it still
    takes part in the step).
    """
    order = epoch_order(rows, seed, epoch)
    for start in range(0, rows, global_batch):
        chunk = order[start : start + global_batch]
        yield np.array_split(chunk, world_size)[rank], len(chunk)


def make_batch(table: Table, idx: np.ndarray, global_size: int, table_sizes: np.ndarray) -> Batch:
    """The rows `idx` as a batch on the host (the reference every other input path must match)."""
    idx = np.sort(idx)  # sequential reads from the memory map; order inside a batch is irrelevant
    dense = torch.from_numpy(np.ascontiguousarray(table.dense[idx], dtype=np.float32))
    cat = torch.from_numpy((table.cat[idx].astype(np.int64) % table_sizes).astype(np.int64))
    label = torch.from_numpy(table.label[idx].astype(np.float32))
    return Batch(dense, cat, label, global_size)


def hash_categories_(cat: torch.Tensor, sizes: torch.Tensor, uint32_bits: bool) -> torch.Tensor:
    """In place on int64 categories: each into its table's rows (`% sizes`), as make_batch does.
    uint32_bits: the values arrived as the int32 bits of uint32 ones (torch has no uint32 to copy
    them in) and were sign-extended; & 0xFFFFFFFF recovers them first, as astype(int64) would."""
    if uint32_bits:
        cat.bitwise_and_(0xFFFFFFFF)
    return cat.remainder_(sizes)


class _RawSlot:
    """One ring slot of BatchLoader: a batch's raw columns as stored (label, dense, cat; a uint32
    category column as its int32 bits), in host memory reused from batch to batch, page-locked when
    `pin` so the copies to the device are asynchronous DMA. `copied`: on CUDA, the event recorded
    after this slot's last copies were issued; the slot is refilled only once it has completed."""

    def __init__(self, rows: int, table: Table, pin: bool):
        self.label, self.label_np = self._buffer((rows,), table.label.dtype, pin)
        self.dense, self.dense_np = self._buffer((rows, table.dense.shape[1]), table.dense.dtype, pin)
        self.cat, self.cat_np = self._buffer((rows, table.cat.shape[1]), table.cat.dtype, pin)
        self.copied: torch.cuda.Event | None = None

    @staticmethod
    def _buffer(shape: tuple, dtype: np.dtype, pin: bool) -> tuple[torch.Tensor, np.ndarray]:
        """(tensor, numpy view of the same memory in `dtype`); uint32 is held as int32 bits."""
        dtype = np.dtype(dtype)
        bits = np.dtype(np.int32) if dtype == np.uint32 else dtype
        t = torch.empty(shape, dtype=torch.from_numpy(np.empty(0, bits)).dtype, pin_memory=pin)
        return t, t.numpy().view(dtype)


# On CPU the device-side finishing runs in the prefetch thread, next to the training step: ops on
# at most this many elements stay on that thread (torch splits bigger ones over a second OpenMP
# team, which competes with the step's threads for the cores); see BatchLoader._finish.
_SERIAL_ELEMENTS = 32768


def _finished(src: torch.Tensor, device: torch.device, dtype: torch.dtype, fix=None) -> torch.Tensor:
    """`src` (a ring slot's rows) on `device` as `dtype`, with `fix` applied in place: always in
    memory of its own, never a view of the slot, which is refilled. On CPU a few rows per op (at
    most _SERIAL_ELEMENTS elements), on a device all at once."""
    moved = src.to(device, non_blocking=True)  # CPU: src itself
    if fix is None and moved.dtype == dtype and moved.data_ptr() != src.data_ptr():
        return moved  # a device copy already
    out = torch.empty(moved.shape, dtype=dtype, device=device)
    rows = moved.shape[0]
    step = max(1, _SERIAL_ELEMENTS // max(1, math.prod(moved.shape[1:]))) if device.type == "cpu" else max(1, rows)
    for start in range(0, rows, step):
        part = out[start : start + step]
        part.copy_(moved[start : start + step])
        if fix is not None:
            fix(part)
    return out


class BatchLoader:
    """Iterates this rank's batches of one epoch, from step `skip` on, prepared ahead of time, on
    `device` (default CPU): the same rows, order, dtypes and values as make_batch.

    The host does the minimum: it gathers each batch's raw columns (uint8 labels, float32 dense,
    uint32 categories, as stored) into a small ring of reused buffers, pinned when `device` is CUDA
    (`pin`, by default), and copies them to the device asynchronously; the hashing
    (`& 0xFFFFFFFF` then `% table_sizes`, in int64) and the casts run there, as DeviceTable's do.
    With workers > 0 a background thread (numpy's gather and torch's ops release the GIL) keeps up
    to 2*workers batches ready; on CUDA it issues their copies and device work on a stream of its
    own, so they overlap the training step, and the consumer's stream waits for each batch's event.
    A slot is refilled only when its copies are done: on CUDA after its event, on CPU at once (the
    device-side finishing makes new tensors).
    """

    def __init__(self, table: Table, global_batch: int, world_size: int, rank: int, seed: int, epoch: int,
                 table_sizes: list[int], skip: int = 0, workers: int = 1, pin: bool | None = None,
                 device: torch.device | str | None = None):
        self.table = table
        self.args = (len(table), global_batch, world_size, rank, seed, epoch)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.sizes = torch.tensor(table_sizes, dtype=torch.int64, device=self.device)
        self.skip = skip
        self.workers = workers
        self.pin = self.device.type == "cuda" if pin is None else pin
        self.max_rows = -(-global_batch // world_size)  # np.array_split's largest part
        self.wait_seconds = 0.0

    def _gen(self) -> Iterator[tuple[Batch, "torch.cuda.Event | None"]]:
        """(batch on the device, the event its device work was recorded with on CUDA, else None)."""
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None
        ring = [_RawSlot(self.max_rows, self.table, self.pin) for _ in range(2 * max(self.workers, 1) + 2)]
        table = self.table
        for i, (idx, global_size) in enumerate(shard_indices(*self.args)):
            if i < self.skip:
                continue
            slot = ring[i % len(ring)]
            if slot.copied is not None:
                slot.copied.synchronize()  # the device has read what this slot held
            idx = np.sort(idx)  # sequential reads from the memory map (as make_batch)
            n = len(idx)
            np.take(table.label, idx, axis=0, out=slot.label_np[:n], mode="clip")
            np.take(table.dense, idx, axis=0, out=slot.dense_np[:n], mode="clip")
            np.take(table.cat, idx, axis=0, out=slot.cat_np[:n], mode="clip")
            if cuda:
                with torch.cuda.stream(stream):
                    batch = self._finish(slot, n, global_size)
                    ready = torch.cuda.Event()
                    ready.record(stream)
                yield batch, ready
            else:
                yield self._finish(slot, n, global_size), None

    def _finish(self, slot: _RawSlot, n: int, global_size: int) -> Batch:
        """Copy the slot's rows [:n] to the device and finish the batch there, in new tensors."""
        device, sizes, uint32_bits = self.device, self.sizes, slot.cat_np.dtype == np.uint32

        def hashed(part):
            hash_categories_(part, sizes, uint32_bits)

        batch = Batch(_finished(slot.dense[:n], device, torch.float32), _finished(slot.cat[:n], device, torch.int64, hashed),
                      _finished(slot.label[:n], device, torch.float32), global_size)
        if device.type == "cuda":  # after the slot's copies (and the finishing: a few microseconds more)
            if slot.copied is None:
                slot.copied = torch.cuda.Event()
            slot.copied.record()
        return batch

    def __iter__(self) -> Iterator[Batch]:
        if self.workers <= 0:
            for batch, ready in self._gen():
                yield self._handed_over(batch, ready)
            return
        ready_q: queue.Queue = queue.Queue(maxsize=2 * self.workers)
        stop = threading.Event()
        end = object()
        device = self.device

        def produce():
            try:
                if device.type == "cuda":
                    torch.cuda.set_device(device)  # this thread's current device (streams, events)
                for item in self._gen():
                    while not stop.is_set():
                        try:
                            ready_q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                ready_q.put(end)
            except BaseException as e:  # surfaced in the consumer
                ready_q.put(e)

        producer = threading.Thread(target=produce, name="batch-prefetch", daemon=True)
        producer.start()
        import time

        try:
            while True:
                t0 = time.perf_counter()
                item = ready_q.get()
                self.wait_seconds += time.perf_counter() - t0
                if item is end:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield self._handed_over(*item)
        finally:
            stop.set()
            producer.join(timeout=5)

    def _handed_over(self, batch: Batch, ready) -> Batch:
        """On CUDA: the consumer's stream waits for the batch's device work, and the batch's memory
        (allocated on the loader's stream) is marked as in use by the consumer's stream."""
        if ready is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(ready)
            for t in (batch.dense, batch.cat, batch.label):
                t.record_stream(current)
        return batch


# --------------------------------------------------------------------------------------------
# Device-resident training data: the GPU gathers its own batches
# --------------------------------------------------------------------------------------------


class DeviceTable:
    """A Table's columns on the training device, categories hashed into table rows once:
      label  uint8 [rows]; dense float32 [rows, numDense]; cat int32 [rows, numCat] (int64 when a
      table has more than 2^31 rows).
    What make_batch does on the host per batch (gather, modulo, casts, pinning, copy) becomes three
    index_selects on the device per batch."""

    CHUNK_ROWS = 1 << 20  # rows copied (and hashed) at a time: bounds the host copy and the int64 temporary

    def __init__(self, table: Table, table_sizes: list[int], device: torch.device):
        self.device = device
        rows = len(table)
        self.label = torch.empty(rows, dtype=torch.uint8, device=device)
        self.dense = torch.empty(table.dense.shape, dtype=torch.float32, device=device)
        self.cat = torch.empty(table.cat.shape, dtype=self.cat_dtype_for(table_sizes), device=device)
        sizes = torch.tensor(table_sizes, dtype=torch.int64, device=device)
        for start in range(0, rows, self.CHUNK_ROWS):
            part = slice(start, min(rows, start + self.CHUNK_ROWS))
            # np.array copies: the columns may be read-only memory maps, which torch will not wrap.
            self.label[part] = torch.from_numpy(np.array(table.label[part], dtype=np.uint8))
            self.dense[part] = torch.from_numpy(np.array(table.dense[part], dtype=np.float32))
            raw = torch.from_numpy(np.array(table.cat[part], dtype=np.uint32).view(np.int32)).to(device)
            self.cat[part] = hash_categories_(raw.long(), sizes, uint32_bits=True)

    @staticmethod
    def cat_dtype_for(table_sizes: list[int]) -> torch.dtype:
        return torch.int32 if max(table_sizes) <= 2**31 else torch.int64

    @staticmethod
    def nbytes(table: Table, table_sizes: list[int]) -> int:
        """Device memory the columns take."""
        cat_bytes = 4 if DeviceTable.cat_dtype_for(table_sizes) == torch.int32 else 8
        return len(table) * (1 + 4 * table.dense.shape[1] + cat_bytes * table.cat.shape[1])

    def batch(self, idx: np.ndarray, global_size: int) -> Batch:
        """The rows `idx` as make_batch gives them (same order, dtypes and values), on the device."""
        rows = torch.from_numpy(np.sort(idx).astype(np.int64))
        if self.device.type == "cuda":
            rows = rows.pin_memory().to(self.device, non_blocking=True)
        return Batch(self.dense.index_select(0, rows), self.cat.index_select(0, rows).long(),
                     self.label.index_select(0, rows).float(), global_size)


class DeviceBatchLoader:
    """BatchLoader's batches (the same shard_indices, so the same rows at every step) gathered on
    the device from a DeviceTable; nothing to prefetch, so it never waits (wait_seconds stays 0)."""

    def __init__(self, table: DeviceTable, rows: int, global_batch: int, world_size: int, rank: int, seed: int, epoch: int,
                 skip: int = 0):
        self.table = table
        self.args = (rows, global_batch, world_size, rank, seed, epoch)
        self.skip = skip
        self.wait_seconds = 0.0

    def __iter__(self) -> Iterator[Batch]:
        for i, (idx, global_size) in enumerate(shard_indices(*self.args)):
            if i >= self.skip:
                yield self.table.batch(idx, global_size)
