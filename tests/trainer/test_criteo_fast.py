"""The vectorized Criteo TSV parser (`criteo_fast`, parser="fast") against the line-by-line reference.

Every test compares the two on the same file: bit-identical tables, the same error (type and
message), the same skip count and the same warnings - with tiny blocks, so that rows, errors,
blank lines and "\\r\\n" fall on block boundaries."""

from __future__ import annotations

import gzip
import logging
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rectrain_trainer import criteo_fast as F
from rectrain_trainer import data as D

BLOCK_SIZES = [1, 7, 64, 333, 4096, F.DEFAULT_BLOCK_SIZE]


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def run(path: str, parser: str, malformed: str, block_size: int = F.DEFAULT_BLOCK_SIZE, chunk: int = 65536):
    """(outcome, warnings): outcome is a Table-like tuple or ('raise', type, message)."""
    h = _Collect()
    logger = logging.getLogger("rectrain.data")
    logger.addHandler(h)
    try:
        kw = {"block_size": block_size} if parser == "fast" else {}
        chunks = list(D.iter_criteo_chunks([path], malformed, chunk, parser=parser, **kw))
    except (D.MalformedRowError, UnicodeDecodeError, OverflowError) as e:
        return ("raise", type(e).__name__, str(e) if isinstance(e, D.MalformedRowError) else ""), h.messages
    finally:
        logger.removeHandler(h)
    for lab, den, cat, _ in chunks:
        assert len(lab) <= chunk and lab.dtype == np.uint8 and den.dtype == np.float32 and cat.dtype == np.uint32
    skipped = chunks[-1][3] if chunks else 0
    lab = np.concatenate([c[0] for c in chunks]) if chunks else np.empty(0, np.uint8)
    den = np.concatenate([c[1] for c in chunks]) if chunks else np.empty((0, 13), np.float32)
    cat = np.concatenate([c[2] for c in chunks]) if chunks else np.empty((0, 26), np.uint32)
    return ("ok", lab.tolist(), den.view(np.uint32).tolist(), cat.tolist(), skipped), h.messages


def assert_same(path: str, block_sizes=BLOCK_SIZES, chunk: int = 65536):
    for malformed in ("error", "skip"):
        want = run(path, "reference", malformed)
        for bs in block_sizes:
            got = run(path, "fast", malformed, bs, chunk)
            assert got == want, (malformed, bs, got[0][:3], want[0][:3])
    return want


def write(path: Path, text: str | bytes, gz: bool = False) -> str:
    raw = text.encode("utf-8") if isinstance(text, str) else text
    if gz:
        with gzip.open(path, "wb") as fh:
            fh.write(raw)
    else:
        path.write_bytes(raw)
    return str(path)


def random_rows(rng: np.random.Generator, n: int) -> list[str]:
    lines = []
    for _ in range(n):
        dense = []
        for _ in range(13):
            u = rng.random()
            if u < 0.15:
                dense.append("")
            elif u < 0.25:
                dense.append(str(-int(rng.integers(0, 5))))
            elif u < 0.3:
                dense.append(str(int(rng.integers(60000, 100_000_000))))  # around/above the log1p table
            else:
                dense.append(str(int(rng.geometric(0.05)) - 1))
        cats = []
        for _ in range(26):
            u = rng.random()
            v = int(rng.integers(0, 2**32))
            if u < 0.1:
                cats.append("")
            elif u < 0.2:
                cats.append(f"{v:08X}")
            elif u < 0.3:
                cats.append(f"{v:x}"[: int(rng.integers(1, 9))])
            else:
                cats.append(f"{v:08x}")
        lines.append("\t".join([str(int(rng.integers(0, 2))), *dense, *cats]))
    return lines


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_random_valid_files_give_bit_identical_tables(tmp_path, gz, eol):
    rng = np.random.default_rng(1 + gz + 2 * (eol == "\r\n"))
    lines = random_rows(rng, 400)
    for i in (0, 57, 58, 200, 399):
        lines.insert(i, "")  # blank lines, including first and (before the last row) near the end
    text = "".join(line + eol for line in lines)
    p = write(tmp_path / ("d.tsv.gz" if gz else "d.tsv"), text, gz)
    out = assert_same(p, [1, 50, 997, 8192, F.DEFAULT_BLOCK_SIZE])
    assert out[0][0] == "ok" and len(out[0][1]) == 400 and out[0][4] == 0
    # no final newline: the last row still counts
    p2 = write(tmp_path / ("e.tsv.gz" if gz else "e.tsv"), text.rstrip("\r\n"), gz)
    assert assert_same(p2, [1, 999, F.DEFAULT_BLOCK_SIZE])[0][1] == out[0][1]


def test_values_at_the_edges(tmp_path):
    def row(dense, cats=None):
        cats = cats if cats is not None else ["a"] * 26
        return "\t".join(["1", *dense, *cats])

    big = ["65535", "65536", "99999999", "100000000", "1" + "0" * 29, "007", "-0", "-12345678", "0", "00000000",
           "-123456789", "9223372036854775808", "18446744073709551617"]
    lines = [row(big), row(["1"] * 13, ["FFFFFFFF", "ffffffff", "0", "00000000", "AbCdEf01", "1"] + [""] * 20)]
    p = write(tmp_path / "edge.tsv", "\n".join(lines) + "\n")
    out = assert_same(p)
    assert out[0][0] == "ok" and len(out[0][1]) == 2
    den = np.array(out[0][2], np.uint32).view(np.float32)
    assert den[0, 4] == np.float32(math.log1p(10**29)) and den[0, 7] == 0 and den[0, 11] > 0
    assert out[0][3][1][:6] == [0xFFFFFFFF, 0xFFFFFFFF, 0, 0, 0xABCDEF01, 1]


def test_a_huge_dense_value_fails_like_the_reference(tmp_path):
    good = "\t".join(["1", *["5"] * 13, *["a"] * 26])
    huge = "\t".join(["0", "9" * 400, *["5"] * 12, *["a"] * 26])  # float(int) overflows in math.log1p
    p = write(tmp_path / "huge.tsv", f"{good}\n{huge}\n{good}\n")
    out = assert_same(p, [1, 100, F.DEFAULT_BLOCK_SIZE])
    assert out[0][:2] == ("raise", "OverflowError")


BAD_ROWS = [
    "1\t2\t3",
    "\t" * 39,
    " ",  # blank (spaces)
    "\r",  # blank after the newline's "\r"
    "2" + "\t1" * 13 + "\ta" * 26,
    "1" + "\t1.5" + "\t1" * 12 + "\ta" * 26,
    "1" + "\t+5" + "\t1" * 12 + "\ta" * 26,
    "1" + "\t 5" + "\t1" * 12 + "\ta" * 26,
    "1" + "\t1_000" + "\t1" * 12 + "\ta" * 26,
    "1" + "\t١" + "\t1" * 12 + "\ta" * 26,
    "1" + "\t-" + "\t1" * 12 + "\ta" * 26,
    "1" + "\t--1" + "\t1" * 12 + "\ta" * 26,
    "1" + "\t1-" + "\t1" * 12 + "\ta" * 26,
    "1" + "\t1" * 13 + "\t123456789" + "\ta" * 25,
    "1" + "\t1" * 13 + "\t0x12" + "\ta" * 25,
    "1" + "\t1" * 13 + "\tg" + "\ta" * 25,
    "1" + "\t1" * 13 + "\ta" * 25 + "\t-1",
    "1" + "\t1" * 13 + "\ta" * 25 + "\ta\r",  # a stray "\r" (the line also ends in "\r\n" in some files)
    "1" + "\t1" * 13 + "\ta" * 26 + "\t",
    "\ufeff1" + "\t1" * 13 + "\ta" * 26,
    "1" + "\t1" * 13 + "\tÀ" + "\ta" * 25,
]


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("where", ["first", "last", "middle"])
def test_malformed_rows_anywhere_give_the_same_error_and_counts(tmp_path, gz, where):
    rng = np.random.default_rng(7)
    good = random_rows(rng, 30)
    for k, bad in enumerate(BAD_ROWS):
        lines = list(good)
        pos = {"first": 0, "last": len(lines), "middle": 13}[where]
        lines.insert(pos, bad)
        lines.insert(min(pos + 2, len(lines)), BAD_ROWS[(k + 5) % len(BAD_ROWS)])  # a second one after it
        eol = "\r\n" if k % 3 == 0 else "\n"
        p = write(tmp_path / f"m{k}.tsv{'.gz' if gz else ''}", "".join(line + eol for line in lines), gz)
        assert_same(p, [1, 64, 300, 5000, F.DEFAULT_BLOCK_SIZE])


def test_errors_on_every_block_boundary(tmp_path):
    rng = np.random.default_rng(3)
    lines = random_rows(rng, 12)
    lines[5] = "1\t2"
    text = "\n".join(lines) + "\n"
    p = write(tmp_path / "b.tsv", text)
    err = run(p, "reference", "error")[0]
    assert err == ("raise", "MalformedRowError", f"{p}:6: expected 40 tab-separated columns, got 2")
    for bs in range(1, len(text) + 2, 37):
        assert run(p, "fast", "error", bs)[0] == err
        assert run(p, "fast", "skip", bs) == run(p, "reference", "skip")


def test_invalid_utf8_raises_like_the_reference(tmp_path):
    good = "\t".join(["1", *["5"] * 13, *["a"] * 26])
    p = write(tmp_path / "u.tsv", (good + "\n").encode() + b"1\t\xff\xfe" + b"\t" * 38 + b"\n")
    for malformed in ("error", "skip"):
        assert run(p, "fast", malformed)[0][:2] == ("raise", "UnicodeDecodeError") == run(p, "reference", malformed)[0][:2]


def test_iter_blocks_yields_whole_lines_and_counts_bytes(tmp_path):
    text = "a\nbb\n\nccccccccccccccc\r\ndd"
    p = write(tmp_path / "x.tsv", text)
    for bs in range(1, 30):
        blocks = list(F.iter_blocks(p, bs))
        assert all(b[: F.PAD] == b"\0" * F.PAD and b.endswith(b"\n") for b, _ in blocks)
        assert b"".join(b[F.PAD :] for b, _ in blocks) == (text + "\n").encode()
        assert blocks[-1][1] == len(text)
        assert [c for _, c in blocks] == sorted(c for _, c in blocks)


def test_chunks_and_final_skip_count_and_preprocess_output(tmp_path):
    rng = np.random.default_rng(11)
    lines = random_rows(rng, 50) + ["bad", "", "bad too"]
    p = write(tmp_path / "c.tsv", "\n".join(lines) + "\n")
    chunks = list(D.iter_criteo_chunks([p], "skip", chunk=8, block_size=500))
    assert all(len(c[0]) <= 8 for c in chunks) and sum(len(c[0]) for c in chunks) == 50
    assert chunks[-1][3] == 2
    assert assert_same(p, [1, 500], chunk=8)[0][4] == 2

    seen: list[int] = []
    meta = D.preprocess([p, p], str(tmp_path / "fast"), malformed="skip", progress=False)
    D.preprocess([p, p], str(tmp_path / "ref"), malformed="skip", progress=False, parser="reference")
    for name in ("label.u8", "dense.f32", "cat.u32"):
        assert (tmp_path / "fast" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
    assert meta["rows"] == 100 and meta["rowsSkipped"] == 4
    list(D.iter_criteo_chunks([p], "skip", block_size=64, on_bytes=seen.append))
    assert sum(seen) == Path(p).stat().st_size and len(seen) > 1
    with pytest.raises(ValueError):
        list(D.iter_criteo_chunks([p], "skip", parser="nope"))


# ---------------------------------------------------------------------------------------------
# Property: any mix of valid and invalid rows, any block size, plain or gzip, \n or \r\n.
# ---------------------------------------------------------------------------------------------

dense_ok = st.one_of(st.just(""), st.integers(-(10**9), 10**9).map(str), st.integers(0, 10**30).map(str),
                     st.integers(0, 99).map(lambda v: f"{v:05d}"))
cat_ok = st.one_of(st.just(""), st.integers(0, 0xFFFFFFFF).map(lambda v: format(v, "x")),
                   st.integers(0, 0xFFFFFFFF).map(lambda v: format(v, "08X")))
junk = st.one_of(
    st.sampled_from(["", "2", "-1", "01", "1.0", " 1", "1 ", "+3", "x", "١", "0x1f", "1e3", "nan", "\x00", "\r", " ", "-",
                     "--1", "1-", "123456789", "ffffffffff", "g", "G", "1_0", "é", "\x0b", "\x1c", "ab\rc", "-a", "AF-"]),
    st.text(min_size=1, max_size=10).filter(lambda s: "\t" not in s and "\n" not in s),
)


@st.composite
def any_line(draw) -> str:
    kind = draw(st.sampled_from(["good"] * 5 + ["field", "columns", "blank", "special"]))
    fields = [draw(st.sampled_from(["0", "1"]))] + [draw(dense_ok) for _ in range(13)] + [draw(cat_ok) for _ in range(26)]
    if kind == "field":
        for _ in range(draw(st.integers(1, 3))):
            fields[draw(st.integers(0, 39))] = draw(junk)
    elif kind == "columns":
        n = draw(st.integers(1, 45).filter(lambda n: n != 40))
        fields = (fields + ["1"] * 45)[:n]
    elif kind == "blank":
        return draw(st.sampled_from(["", " ", "\r", "  \r", "\r\r"]))
    elif kind == "special":
        return draw(st.sampled_from(["\t" * 39, "\t" * 38, "\t" * 40, "0" + "\t" * 39, "\x00"]))
    return "\t".join(fields) + draw(st.sampled_from([""] * 6 + ["\r", "\r\r", " "]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(lines=st.lists(any_line(), min_size=0, max_size=25), gz=st.booleans(), crlf=st.booleans(),
       final_eol=st.booleans(), block_size=st.sampled_from([1, 5, 100, 1000, F.DEFAULT_BLOCK_SIZE]))
def test_fast_parser_matches_the_reference_on_anything(lines, gz, crlf, final_eol, block_size):
    eol = "\r\n" if crlf else "\n"
    text = eol.join(lines) + (eol if final_eol else "")
    with tempfile.TemporaryDirectory() as tmp:
        p = write(Path(tmp) / ("f.tsv.gz" if gz else "f.tsv"), text, gz)
        for malformed in ("error", "skip"):
            assert run(p, "fast", malformed, block_size) == run(p, "reference", malformed)
