"""Vectorized Criteo TSV parsing: whole byte blocks at numpy speed, the exact reference for the rest.

`data.parse_criteo_line` (with the loop of `data.iter_criteo_chunks_reference`) is the reference:
it defines what a row means and every error message. This module only makes the common case fast,
and never decides anything the reference would decide differently:

1. `iter_blocks` reads a file (plain, or .gz through the C zlib stream) in big byte blocks cut after
   the last b"\\n"; the remainder is carried into the next block, so a block holds whole lines and
   the caller can number lines by counting the blocks' newlines (1-based, blank lines included).
2. `parse_block` finds every newline and tab with numpy. A line is *fast* when it has exactly 39
   tabs, a label of exactly "0"/"1", 13 dense fields of at most 8 bytes that are empty or
   `-?[0-9]+`, and 26 categorical fields that are empty or 1-8 ASCII hex digits. All fields of all
   fast lines are decoded at once: each field's last 8 bytes are gathered as one little-endian
   uint64 (bytes before the field's start are replaced by "0"), validated and converted with SWAR
   arithmetic (decimal for dense, hex for categories). log1p comes from a table built with
   `math.log1p` (values >= its size use `math.log1p` itself), so results are bit-identical to the
   reference (Python float -> float32).
3. An empty line (after one trailing "\\r") is blank. Every other line that is not fast (bad
   column count, bad label or field, a dense value longer than 8 bytes, non-ASCII bytes, stray
   "\\r" or spaces, ...) is listed in `FastBlock.slow` and the caller hands its decoded text to the
   reference per-line code, in line order - so error messages, line numbers, skip counts and
   warnings, big-integer dense values and blank-line rules are the reference's by construction.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import BinaryIO, Iterator

import numpy as np

NUM_DENSE = 13
NUM_CAT = 26
NUM_TABS = NUM_DENSE + NUM_CAT  # tabs on a row: 40 columns
DEFAULT_BLOCK_SIZE = 1 << 20  # bytes read per block: the numpy temporaries of a block stay in cache
PAD = 8  # bytes in front of each block, so every field's 8-byte window starts inside the buffer
_PAD_BYTES = b"\0" * PAD
LOG1P_TABLE_SIZE = 1 << 16

_U8 = np.uint64
_ONES = 0x0101010101010101
_H = _U8(0x80 * _ONES)
_LOW7 = _U8(0x7F * _ONES)
_ZERO_CHARS = _U8(0x30 * _ONES)
_HIGH_NIBBLES = _U8(0xF0 * _ONES)
_SIX = _U8(0x06 * _ONES)
# KEEP[L]: the last L bytes of an 8-byte little-endian window (the field), the rest are replaced by "0"
_KEEP = np.array([0] + [((1 << (8 * L)) - 1) << (8 * (8 - L)) for L in range(1, 9)], dtype=np.uint64)
# NEG_FLIP[L]: XOR that turns a leading "-" of an L-byte field into "0" (only for L >= 2)
_NEG_FLIP = np.array([0, 0] + [(ord("-") ^ ord("0")) << (8 * (8 - L)) for L in range(2, 9)], dtype=np.uint64)


@lru_cache(maxsize=1)
def log1p_table() -> np.ndarray:
    """float32(math.log1p(v)) for v < LOG1P_TABLE_SIZE: exactly the reference's rounding."""
    return np.array([math.log1p(v) for v in range(LOG1P_TABLE_SIZE)], dtype=np.float64).astype(np.float32)


@dataclass
class FastBlock:
    """One parsed block. Line indices are 0-based within the block."""

    data: bytes  # the padded block
    lines: int  # newlines in the block (= lines to add to the file's line counter)
    label: np.ndarray  # uint8 [rows]   of the fast lines, in line order
    dense: np.ndarray  # float32 [rows, 13]
    cat: np.ndarray  # uint32 [rows, 26]
    row_lines: np.ndarray  # int64 [rows]: the line index of each fast row
    slow: np.ndarray  # int64: indices of the non-blank lines that need the reference parser
    line_starts: np.ndarray  # int64 [lines]: first byte of each line in `data`
    line_newlines: np.ndarray  # int64 [lines]: position of each line's b"\n" in `data`

    def line_text(self, i: int) -> str:
        """Line i as the reference reads it (text mode, utf-8, newline kept)."""
        return self.data[int(self.line_starts[i]) : int(self.line_newlines[i]) + 1].decode("utf-8")


def _open_binary(path: str) -> BinaryIO:
    if path.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def iter_blocks(path: str, block_size: int = DEFAULT_BLOCK_SIZE) -> Iterator[tuple[bytes, int]]:
    """Yield (padded block of whole lines, input bytes consumed so far) for a plain or .gz file.

    Each block is PAD filler bytes followed by one or more complete lines ending in b"\\n" (a last
    line without one gets it appended: the reference reads it the same). The second value counts
    file bytes for plain files; for .gz it is 0 until the end, then the file size.
    """
    if block_size < 1:
        raise ValueError("block_size must be >= 1")
    gz = path.endswith(".gz")
    with _open_binary(path) as fh:
        pending: list[bytes] = []  # a line longer than a block, accumulated until its newline
        consumed = 0
        while True:
            chunk = fh.read(block_size)
            if not chunk:
                if pending:
                    pending.append(b"\n")
                    yield b"".join([_PAD_BYTES, *pending]), (0 if gz else consumed)
                break
            consumed += len(chunk)
            cut = chunk.rfind(b"\n")
            if cut < 0:
                pending.append(chunk)
                continue
            mv = memoryview(chunk)
            block = b"".join([_PAD_BYTES, *pending, mv[: cut + 1]])
            pending = [chunk[cut + 1 :]] if cut + 1 < len(chunk) else []
            yield block, (0 if gz else consumed - sum(len(p) for p in pending))


def _empty_block(data: bytes, lines: int, slow: np.ndarray, starts: np.ndarray, nl: np.ndarray) -> FastBlock:
    return FastBlock(data, lines, np.empty(0, np.uint8), np.empty((0, NUM_DENSE), np.float32),
                     np.empty((0, NUM_CAT), np.uint32), np.empty(0, np.int64), slow, starts, nl)


def parse_block(data: bytes) -> FastBlock:
    """Parse a padded block from `iter_blocks` (PAD bytes, then whole lines each ending in b"\\n")."""
    buf = np.frombuffer(data, np.uint8)
    nl = np.flatnonzero(buf == 10)
    n = int(nl.shape[0])
    starts = np.empty(n, np.int64)
    if n:
        starts[0] = PAD
        starts[1:] = nl[:-1] + 1
    ends = nl.copy()
    ends -= (buf[nl - 1] == 13) & (nl > starts)  # one trailing "\r"
    nonblank = ends > starts
    all_nonblank = bool(nonblank.all())
    lines = np.arange(n, dtype=np.int64) if all_nonblank else np.flatnonzero(nonblank)
    m = int(lines.shape[0])
    tabs = np.flatnonzero(buf == 9)

    # Structure: exactly 39 tabs on each non-blank line. Quick check first: the right total, and
    # each line's 39-tab group starting and ending inside that line (then no line can have more).
    cand = lines
    t: np.ndarray | None = None
    if tabs.shape[0] == NUM_TABS * m and m:
        t = tabs.reshape(m, NUM_TABS)
        good = (t[:, 0] > starts[lines]) & (t[:, -1] < ends[lines])
        if not good.all():
            t = None
    if t is None:
        line_of_tab = np.searchsorted(nl, tabs)
        counts = np.bincount(line_of_tab, minlength=n)
        okline = nonblank & (counts == NUM_TABS)
        cand = np.flatnonzero(okline)
        t = tabs[okline[line_of_tab]].reshape(-1, NUM_TABS)
    r = int(cand.shape[0])
    if r == 0:
        return _empty_block(data, n, lines, starts, nl)

    s0 = starts[cand]
    # Label: exactly one byte, "0" or "1".
    lab = buf[s0]
    bad = (t[:, 0] - s0 != 1) | ((lab & 0xFE) != 0x30)

    # Fields 1..39: end positions (exclusive) and lengths.
    fend = np.empty((r, NUM_TABS), np.int64)
    fend[:, :-1] = t[:, 1:]
    fend[:, -1] = ends[cand]
    flen = fend - t - 1
    long_field = flen > 8
    if long_field.any():
        bad |= long_field.any(axis=1)
        np.minimum(flen, 8, out=flen)
    window = np.ndarray(shape=(buf.shape[0] - 7,), dtype="<u8", buffer=data, strides=(1,))
    w = np.take(window, fend - 8)  # [r, 39] the 8 bytes ending at each field's end (little-endian)
    keep = _KEEP[flen]
    w ^= _ZERO_CHARS
    w &= keep
    w ^= _ZERO_CHARS  # bytes before the field are now "0": an empty field reads as 0

    # Dense: optional leading "-", then digits.
    wd = w[:, :NUM_DENSE]
    neg = buf[t[:, :NUM_DENSE] + 1] == ord("-")  # first byte of the field (a tab if it is empty)
    wd ^= _NEG_FLIP[flen[:, :NUM_DENSE]] * neg
    dok = ((wd & _HIGH_NIBBLES) == _ZERO_CHARS) & (((wd + _SIX) & _HIGH_NIBBLES) == _ZERO_CHARS)
    x = wd - _ZERO_CHARS
    x = (x & _U8(0x00FF00FF00FF00FF)) * _U8(10) + ((x >> _U8(8)) & _U8(0x00FF00FF00FF00FF))
    x = (x & _U8(0x0000FFFF0000FFFF)) * _U8(100) + ((x >> _U8(16)) & _U8(0x0000FFFF0000FFFF))
    x = (x & _U8(0xFFFFFFFF)) * _U8(10000) + (x >> _U8(32))
    x[neg] = 0  # negative -> 0 (like 0 and missing)

    # Categories: 1-8 ASCII hex digits (either case).
    wc = w[:, NUM_DENSE:]
    ah = (wc & _LOW7) | _H
    isdig = (ah - _U8(0x30 * _ONES)) & ~(ah - _U8(0x3A * _ONES))
    lh = ah | _U8(0x20 * _ONES)
    islet = (lh - _U8(0x61 * _ONES)) & ~(lh - _U8(0x67 * _ONES))
    cok = (((isdig | islet) & _H) == _H) & ((wc & _H) == 0)
    nib = (wc & _U8(0x0F * _ONES)) + ((wc >> _U8(6)) & _U8(_ONES)) * _U8(9)
    y = ((nib & _U8(0x00FF00FF00FF00FF)) << _U8(4)) | ((nib >> _U8(8)) & _U8(0x00FF00FF00FF00FF))
    y = (y | (y >> _U8(8))) & _U8(0x0000FFFF0000FFFF)
    y = (y | (y >> _U8(16))) & _U8(0xFFFFFFFF)
    cat = y.astype(np.uint32)
    cat.byteswap(inplace=True)  # the first hex digit is the most significant

    if not (dok.all() and cok.all()):
        bad |= ~dok.all(axis=1) | ~cok.all(axis=1)
    if bad.any():
        keep_rows = ~bad
        cand, lab, x, cat = cand[keep_rows], lab[keep_rows], x[keep_rows], cat[keep_rows]
    tbl = log1p_table()
    big = x >= LOG1P_TABLE_SIZE
    if big.any():
        dense = tbl[np.where(big, 0, x)]
        dense[big] = np.array([math.log1p(v) for v in x[big].tolist()], dtype=np.float64).astype(np.float32)
    else:
        dense = tbl[x]
    label = lab - np.uint8(0x30)
    if cand.shape[0] == m:
        slow = np.empty(0, np.int64)
    else:
        fast = np.zeros(n, bool)
        fast[cand] = True
        slow = np.flatnonzero(nonblank & ~fast)
    return FastBlock(data, n, label, dense, cat, cand, slow, starts, nl)
