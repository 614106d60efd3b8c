"""Fuzzing the Criteo TSV reader (pure, no cluster): a well-formed row parses to exactly its values;
a malformed one raises MalformedRowError naming file:line (malformed="error") or is skipped and
counted (malformed="skip"); a wrong row is never accepted silently."""

from __future__ import annotations

import gzip
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rectrain_trainer.data import CRITEO_CAT, CRITEO_DENSE, MalformedRowError, parse_criteo_line, read_criteo_tsv

EXAMPLES = 600

dense_value = st.one_of(st.just(""), st.integers(-(10**12), 10**12).map(str))
cat_value = st.one_of(st.just(""), st.integers(0, 0xFFFFFFFF).map(lambda v: format(v, "x")),
                      st.integers(0, 0xFFFF).map(lambda v: format(v, "08X")))
good_row = st.tuples(st.sampled_from(["0", "1"]), st.lists(dense_value, min_size=CRITEO_DENSE, max_size=CRITEO_DENSE),
                     st.lists(cat_value, min_size=CRITEO_CAT, max_size=CRITEO_CAT)).map(lambda t: [t[0], *t[1], *t[2]])

# Text a field must never be accepted as: junk around digits, non-ASCII digits, signs, spaces, floats.
junk = st.one_of(
    st.sampled_from(["", "2", "-1", "01", "1.0", " 1", "1 ", "+3", "x", "١", "0x1f", "1e3", "nan", "∞", "\x00", "\r", " "]),
    st.text(min_size=1, max_size=6).filter(lambda s: "\t" not in s and "\n" not in s),
)


def expected(fields: list[str]) -> tuple[int, list[float], list[int]]:
    dense = [math.log1p(int(s)) if s and int(s) > 0 else 0.0 for s in fields[1:1 + CRITEO_DENSE]]
    cats = [int(s, 16) if s else 0 for s in fields[1 + CRITEO_DENSE:]]
    return int(fields[0]), dense, cats


def is_valid_field(column: int, s: str) -> bool:
    import re

    if column == 0:
        return s in ("0", "1")
    if column <= CRITEO_DENSE:
        return s == "" or re.fullmatch(r"-?[0-9]+", s) is not None
    return s == "" or re.fullmatch(r"[0-9a-fA-F]{1,8}", s) is not None


@st.composite
def malformed_row(draw) -> str:
    fields = draw(good_row)
    kind = draw(st.sampled_from(["columns", "field", "field", "field"]))
    if kind == "columns":
        n = draw(st.integers(1, 60).filter(lambda n: n != len(fields)))
        fields = (fields + ["1"] * 60)[:n]
    else:
        column = draw(st.integers(0, len(fields) - 1))
        value = draw(junk.filter(lambda s, c=column: not is_valid_field(c, s)))
        fields[column] = value
        if column > CRITEO_DENSE and draw(st.booleans()):
            fields[column] = "1" * 9  # 9 hex digits: too wide for 32 bits
    return "\t".join(fields)


@settings(max_examples=EXAMPLES, deadline=None)
@given(good_row)
def test_well_formed_rows_parse_to_exactly_their_values(fields):
    label, dense, cats = parse_criteo_line("\t".join(fields) + "\n", "f.tsv:1")
    want = expected(fields)
    assert label == want[0] and cats == want[2]
    assert dense == pytest.approx(want[1])


@settings(max_examples=EXAMPLES, deadline=None)
@given(malformed_row())
def test_malformed_rows_raise_naming_the_place(line):
    with pytest.raises(MalformedRowError) as err:
        parse_criteo_line(line + "\n", "day_3.tsv:42")
    assert str(err.value).startswith("day_3.tsv:42: ")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rows=st.lists(st.one_of(good_row.map(lambda f: ("good", f)), malformed_row().map(lambda s: ("bad", s)),
                               st.just(("blank", ""))), min_size=1, max_size=30),
       gz=st.booleans(), crlf=st.booleans())
def test_files_error_at_the_first_bad_line_or_skip_and_count(rows, gz, crlf):
    eol = "\r\n" if crlf else "\n"
    lines = ["\t".join(r) if kind == "good" else r for kind, r in rows]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("day_0.tsv.gz" if gz else "day_0.tsv")
        data = "".join(line + eol for line in lines)
        if gz:
            with gzip.open(path, "wt", encoding="utf-8", newline="") as fh:
                fh.write(data)
        else:
            path.write_text(data, encoding="utf-8", newline="")
        good = [expected(r) for kind, r in rows if kind == "good"]
        bad_lines = [i + 1 for i, (kind, _) in enumerate(rows) if kind == "bad"]

        if bad_lines:
            with pytest.raises(MalformedRowError) as err:
                read_criteo_tsv([str(path)], malformed="error")
            assert str(err.value).startswith(f"{path}:{bad_lines[0]}: "), (str(err.value), bad_lines)
        else:
            table = read_criteo_tsv([str(path)], malformed="error")
            assert len(table) == len(good)

        table = read_criteo_tsv([str(path)], malformed="skip")
        assert table.rows_skipped == len(bad_lines)
        assert len(table) == len(good), "a malformed row was accepted, or a good one lost"
        if good:
            assert table.label.tolist() == [g[0] for g in good]
            assert table.cat.tolist() == [g[2] for g in good]
            np.testing.assert_allclose(table.dense, np.array([g[1] for g in good], np.float32), rtol=1e-6)


def test_a_row_of_empty_fields_is_malformed_not_a_blank_line(tmp_path):
    """39 tabs is a row with an empty label, not a blank line: it must not vanish uncounted."""
    path = tmp_path / "day_1.tsv"
    good = "\t".join(["1", *["5"] * CRITEO_DENSE, *["a"] * CRITEO_CAT])
    path.write_text(f"{good}\n" + "\t" * (CRITEO_DENSE + CRITEO_CAT) + "\n\n")
    with pytest.raises(MalformedRowError, match=f"^{path}:2: label"):
        read_criteo_tsv([str(path)], malformed="error")
    table = read_criteo_tsv([str(path)], malformed="skip")
    assert (len(table), table.rows_skipped) == (1, 1)
