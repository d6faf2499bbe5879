"""Row diff: the partitioned path against the whole-table path.

A pair of big files is streamed into hash buckets and diffed bucket by bucket;
whatever the input, that must give the diff the whole-table path gives, byte for
byte as JSON: counts, the rows listed and their order, the cut at `limit`, and
the errors.  The tests force partitioning of small files (several buckets, a
group per reader batch, hash slices of a few bytes); hypothesis writes tables
with duplicate keys and rows, nulls, a column missing on one side or of another
type, as CSV, JSONL and Parquet.  A subprocess shows that the partitioned path's
memory does not grow with the files while the whole-table path's does.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmsfs import rowbuckets, rowdiff
from dmsfs.rowbuckets import bucket_of, combined, int_hash, text_hash

EXAMPLES = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
Record = dict[str, Any]


# ------------------------------------------------------------------ files
def csv_bytes(records: list[Record], columns: list[str]) -> bytes:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(columns)
    for r in records:
        w.writerow(["" if r.get(c) is None else r[c] for c in columns])
    return out.getvalue().encode()


def jsonl_bytes(records: list[Record], columns: list[str]) -> bytes:
    return "".join(json.dumps({c: r.get(c) for c in columns}) + "\n" for r in records).encode()


def parquet_bytes(records: list[Record], columns: list[str]) -> bytes:
    table = pa.table({c: pa.array([r.get(c) for r in records]) for c in columns})
    out = io.BytesIO()
    pq.write_table(table, out, row_group_size=3)  # several row groups: several batches
    return out.getvalue()


WRITE = {"csv": csv_bytes, "jsonl": jsonl_bytes, "parquet": parquet_bytes}


def source(data: bytes, fmt: str) -> rowdiff.Source:
    return rowdiff.Source(f"t.{fmt}", len(data), lambda: io.BytesIO(data))


# ------------------------------------------------------------------ the two paths
@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("state") / "rowdiff"


def outcome(old: bytes | None, new: bytes | None, fmt: str, key: list[str] | None,
            limit: int, scratch: Path) -> str:
    """The diff as JSON text, or the error it raises (also Arrow's, e.g. for a key
    column of type null, or json's, for a nested value it cannot write)."""
    try:
        diff = rowdiff.diff_files(None if old is None else source(old, fmt),
                                  None if new is None else source(new, fmt),
                                  fmt, key, limit, scratch)
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return json.dumps(diff.to_json(), default=repr)


@contextmanager
def partitioned(buckets: int = 5, slice_bytes: int = 7) -> Iterator[list[str]]:
    """Every pair partitioned into `buckets` buckets, each reader batch hashed and
    split on its own, hashes computed in slices of a few bytes; yields what became
    of each streamed diff ("streamed" or "fell back")."""
    saved = (rowdiff.BIG, rowdiff.BUCKET, rowdiff.MAX_BUCKETS, rowbuckets.GROUP,
             rowbuckets.SLICE, rowdiff._diff_streamed)
    seen: list[str] = []

    def spy(*args: Any) -> rowdiff.RowDiff:
        try:
            diff = saved[-1](*args)
        except rowdiff._Unstreamable:
            seen.append("fell back")
            raise
        except Exception:
            seen.append("streamed")   # and failed as the whole-table path does
            raise
        seen.append("streamed")
        return diff

    rowdiff.BIG, rowdiff.BUCKET, rowdiff.MAX_BUCKETS = -1, 1, buckets
    rowbuckets.GROUP, rowbuckets.SLICE = 1, slice_bytes
    rowdiff._diff_streamed = spy  # type: ignore[assignment]
    try:
        yield seen
    finally:
        (rowdiff.BIG, rowdiff.BUCKET, rowdiff.MAX_BUCKETS, rowbuckets.GROUP,
         rowbuckets.SLICE, rowdiff._diff_streamed) = saved  # type: ignore[assignment]


def both(old: bytes | None, new: bytes | None, fmt: str, key: list[str] | None, limit: int,
         scratch: Path, expect: str = "streamed", slice_bytes: int = 7) -> str:
    """The diff by both paths, checked equal (and that the partitioned path did
    `expect`)."""
    whole = outcome(old, new, fmt, key, limit, scratch)
    with partitioned(slice_bytes=slice_bytes) as seen:
        parts = outcome(old, new, fmt, key, limit, scratch)
    assert parts == whole
    assert seen == [expect]
    assert not scratch.exists() or not list(scratch.iterdir())
    return whole


# ------------------------------------------------------------------ fixed cases
PEOPLE = ["id", "part", "name", "v"]
OLD: list[Record] = [{"id": 1, "part": "a", "name": "ann", "v": 1.5},
       {"id": 2, "part": "a", "name": "bob", "v": None},
       {"id": 2, "part": "b", "name": "bob", "v": 2.0},
       {"id": 3, "part": "a", "name": "", "v": 3.0},
       {"id": 4, "part": "a", "name": "dee", "v": 4.0},
       {"id": 4, "part": "a", "name": "dee", "v": 4.0},
       {"id": None, "part": "a", "name": "nul", "v": 0.0}]
NEW: list[Record] = [{"id": 4, "part": "a", "name": "dee", "v": 4.0},
       {"id": 1, "part": "a", "name": "ann", "v": 1.25},
       {"id": 2, "part": "b", "name": "bob", "v": None},
       {"id": 5, "part": "b", "name": "eve", "v": 5.0},
       {"id": 2, "part": "a", "name": "bob", "v": None},
       {"id": None, "part": "a", "name": "nul", "v": 0.0},
       {"id": 6, "part": "a", "name": "fay", "v": 6.0}]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
@pytest.mark.parametrize("key", [None, ["id"], ["id", "part"], ["name"], ["part", "id"]])
@pytest.mark.parametrize("limit", [0, 1, 2, 20])
def test_partitioned_equals_whole(fmt: str, key: list[str] | None, limit: int,
                                  scratch: Path) -> None:
    old, new = WRITE[fmt](OLD, PEOPLE), WRITE[fmt](NEW, PEOPLE)
    result = json.loads(both(old, new, fmt, key, limit, scratch))
    if key == ["id"] and limit == 20:   # the duplicate keys 2 and 4 pair every old with every new
        assert (result["added"], result["removed"], result["changed"]) == (3, 2, 4)


def test_listed_rows_in_file_order(scratch: Path) -> None:
    """Rows from different buckets merge into file order (added: the new file's)."""
    old = csv_bytes([{"id": i, "v": i} for i in range(0, 200, 2)], ["id", "v"])
    new = csv_bytes([{"id": i, "v": i + (i % 3 == 0)} for i in range(100)], ["id", "v"])
    result = json.loads(both(old, new, "csv", ["id"], 30, scratch))
    assert [r["id"] for r in result["added_rows"]] == list(range(1, 60, 2))
    assert [r["id"] for r in result["removed_rows"]] == list(range(100, 160, 2))
    assert [r["key"]["id"] for r in result["changed_rows"]] == list(range(0, 100, 6))
    both(old, new, "csv", None, 7, scratch)


def test_duplicate_keys_in_file_order(scratch: Path) -> None:
    """A new row matching several old ones: the pairs in the old file's row order
    (a join gives them in no defined order)."""
    old = [{"id": 1, "v": v} for v in ("c", "a", "d", "b")] * 3
    new = [{"id": 1, "v": "z"}, {"id": 2, "v": "y"}, {"id": 1, "v": "x"}]
    result = json.loads(both(jsonl_bytes(old, ["id", "v"]), jsonl_bytes(new, ["id", "v"]),
                             "jsonl", ["id"], 20, scratch))
    assert result["changed"] == 24
    assert [(r["new"]["v"], r["old"]["v"]) for r in result["changed_rows"]] == (
        [("z", v) for v in "cadb" * 3] + [("x", v) for v in "cadb" * 2])  # cut at 20


def test_duplicate_rows_without_key(scratch: Path) -> None:
    a, b, c = {"k": "a", "n": 1}, {"k": "b", "n": 2}, {"k": "c", "n": 3}
    old = jsonl_bytes([a, a, b, c, c, c], ["k", "n"])
    new = jsonl_bytes([c, a, b, b, b, c], ["k", "n"])
    for limit in (0, 1, 2, 3, 20):
        result = json.loads(both(old, new, "jsonl", None, limit, scratch))
        assert (result["added"], result["removed"]) == (2, 2)
        assert result["added_rows"] == [b, b][:limit]
        assert result["removed_rows"] == [a, c][:limit]


def test_type_differing_and_missing_columns(scratch: Path) -> None:
    """id is a number in one file and text in the other (compared as tagged text);
    a column only in the old file, one only in the new."""
    old = jsonl_bytes([{"id": 1, "v": 1, "gone": "x"}, {"id": 2, "v": 2, "gone": None}],
                      ["id", "v", "gone"])
    new = jsonl_bytes([{"id": "1", "v": 1, "new": True}, {"id": 2, "v": "2", "new": None}],
                      ["id", "v", "new"])
    for key in (None, ["id"], ["v"]):
        both(old, new, "jsonl", key, 20, scratch, expect="fell back")  # mixed: read whole
    old = csv_bytes([{"id": 1, "v": 1, "gone": "x"}, {"id": 2, "v": 2}], ["id", "v", "gone"])
    new = csv_bytes([{"id": "a", "v": 1, "new": "y"}, {"id": 2, "v": "x"}], ["id", "v", "new"])
    for key in (None, ["id"], ["v"]):
        both(old, new, "csv", key, 20, scratch)


def test_empty_files(scratch: Path) -> None:
    header = b"id,v\n"
    rows = csv_bytes([{"id": 1, "v": 2}], ["id", "v"])
    for old, new in ((header, rows), (rows, header), (header, header)):
        for key in (None, ["id"]):
            both(old, new, "csv", key, 20, scratch)
    both(b"", rows, "csv", None, 20, scratch, expect="fell back")   # read_csv fails too
    both(b"\n \n", jsonl_bytes([{"id": 1}], ["id"]), "jsonl", None, 20, scratch,
         expect="fell back")                                         # no stream: no rows
    empty = parquet_bytes([], ["id", "v"])
    for key in (None, ["id"]):
        both(empty, parquet_bytes([{"id": 1, "v": 2.0}], ["id", "v"]), "parquet", key, 20,
             scratch)


def test_parquet_types(scratch: Path) -> None:
    """Keys of any type a join takes (binary that is not UTF-8, fixed-size binary,
    dictionary, float with -0.0 and NaN, timestamps with a zone, decimals), nested
    columns, and types a join or a fingerprint refuses (the same error both ways)."""
    import datetime
    import decimal

    n = 12
    ts = [datetime.datetime(2024, 1, 1 + i, tzinfo=datetime.UTC) for i in range(n)]
    old = pa.table({
        "bin": pa.array([bytes([255, i % 5]) for i in range(n)], pa.binary()),
        "fixed": pa.array([bytes([i % 4, 0, 200]) for i in range(n)], pa.binary(3)),
        "dict": pa.array([f"d{i % 3}" for i in range(n)]).dictionary_encode(),
        "f": pa.array([0.0, -0.0, float("nan"), 1.5] * 3),
        "ts": pa.array(ts, pa.timestamp("us", tz="Europe/Paris")),
        "dec": pa.array([decimal.Decimal(f"{i}.25") for i in range(n)], pa.decimal128(9, 2)),
        "day": pa.array([datetime.date(2020, 1, 1 + i % 3) for i in range(n)]),
        "big": pa.array([str(i) for i in range(n)], pa.large_string()),
        "tags": pa.array([[i, i + 1] if i % 4 else None for i in range(n)]),
        "pt": pa.array([{"x": i % 2, "y": "a"} for i in range(n)]),
    })
    new = pa.concat_tables([old.slice(3), old.slice(0, 2)]).set_column(
        7, "big", pa.array([str(i * (i % 5 != 0)) for i in range(n - 1)], pa.large_string()))

    def data(t: pa.Table) -> bytes:
        out = io.BytesIO()
        pq.write_table(t, out, row_group_size=4)
        return out.getvalue()

    for key in (None, *([c] for c in old.column_names), ["bin", "fixed", "dict"]):
        for limit in (1, 20):
            both(data(old), data(new), "parquet", key, limit, scratch)
    text_only = ["bin", "fixed"]    # a fingerprint is text: it refuses them
    result = both(data(old.drop_columns(text_only)), data(new.drop_columns(text_only)),
                  "parquet", None, 20, scratch)
    assert (json.loads(result)["added"], json.loads(result)["removed"]) == (11, 12)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_a_column_named_like_the_row_numbers(fmt: str, scratch: Path) -> None:
    old = WRITE[fmt]([{"row": i % 3, "id": i} for i in range(10)], ["row", "id"])
    new = WRITE[fmt]([{"row": i % 4, "id": i} for i in range(3, 12)], ["row", "id"])
    for key in (None, ["row"], ["id"]):
        both(old, new, fmt, key, 5, scratch)


def test_a_column_name_twice(scratch: Path) -> None:
    old, new = b"id,a,a\n1,2,3\n", b"id,a,a\n1,2,4\n"
    for key in (None, ["id"]):
        assert both(old, new, "csv", key, 5, scratch).startswith("KeyError")


def test_one_side(scratch: Path) -> None:
    data = parquet_bytes([{"id": i, "v": str(i)} for i in range(10)], ["id", "v"])
    for limit in (0, 4, 20):
        assert json.loads(both(None, data, "parquet", ["id"], limit, scratch))["added"] == 10
        assert json.loads(both(data, None, "parquet", None, limit, scratch))["removed"] == 10


def test_key_not_in_both_files(scratch: Path) -> None:
    old = csv_bytes([{"id": 1, "v": 1}], ["id", "v"])
    new = csv_bytes([{"id": 1, "w": 1}], ["id", "w"])
    assert both(old, new, "csv", ["v"], 20, scratch) == (
        "InvalidArgument: key column 'v' is not in both files")
    # a file that cannot be read is reported first, as when read whole
    bad = b"id,v\n1,2\n3\n"
    assert both(bad, new, "csv", ["v"], 20, scratch, expect="fell back").startswith(
        "InvalidArgument: t.csv cannot be read as csv")


N_TYPED = 200_000


@pytest.mark.parametrize(("fmt", "tail", "counts"), [
    ("csv", b"x,1\n", (N_TYPED + 1, N_TYPED, 0)),    # id: int, then text
    ("csv", b"1,1.5\n", (1, 0, N_TYPED)),            # v: int, then float
    ("jsonl", b'{"id": 1, "v": 1.5}\n', (1, 0, N_TYPED)),
    ("jsonl", b'{"id": 1, "v": 1, "w": 0}\n', (1, 0, 0)),   # a field seen late
    ("jsonl", b'{"id": 1, "v": "x"}\n', (1, 0, N_TYPED)),   # mixed: JSON text
])
def test_types_changing_after_first_block_are_read_whole(
        fmt: str, tail: bytes, counts: tuple[int, int, int], scratch: Path) -> None:
    """read_table infers a column's type from all its values, a streaming reader from
    its first block (1 MiB): a later value needing another type (or a field first
    seen later) makes the pair be diffed whole."""
    old = WRITE[fmt]([{"id": i, "v": i} for i in range(2, N_TYPED + 2)], ["id", "v"])
    result = json.loads(both(old, old + tail, fmt, ["id"], 3, scratch, expect="fell back",
                             slice_bytes=1 << 16))
    assert (result["added"], result["removed"], result["changed"]) == counts


def big_text(t: pa.Table, fmt: str) -> bytes:
    """A table of id (int) and text as CSV or JSONL, written by Arrow."""
    if fmt == "csv":
        out = io.BytesIO()
        pacsv.write_csv(t, out)
        return out.getvalue()
    lines = pc.binary_join_element_wise('{"id": ', pc.cast(t["id"], pa.string()),
                                        ', "text": "', t["text"], '"}\n', "")
    return "".join(lines.to_pylist()).encode()


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_big_files_in_several_batches(fmt: str, scratch: Path) -> None:
    """Several reader batches (1 MiB blocks), row numbers counted across them."""
    n = 200_000
    ids = pa.array(range(n), pa.int64())
    old = pa.table({"id": ids, "text": pc.cast(pc.multiply(ids, 7), pa.string())})
    changed = pc.if_else(pc.equal(pc.bit_wise_and(ids, 4095), 5), -1, pc.multiply(ids, 7))
    new = old.set_column(1, "text", pc.cast(changed, pa.string())).slice(1000)
    a, b = big_text(old, fmt), big_text(new, fmt)
    assert len(a) > 2 << 20
    for key, limit in ((["id"], 5), (["id"], 60), (None, 5)):
        result = json.loads(both(a, b, fmt, key, limit, scratch, slice_bytes=1 << 16))
        if key:   # ids 4096 k + 5 changed, but for id 5: removed
            assert (result["removed"], result["changed"]) == (1000, 48)
            assert result["changed_rows"][-1]["key"]["id"] == min(limit, 48) * 4096 + 5


def test_temp_dir_removed(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = csv_bytes(OLD, PEOPLE)
    new = csv_bytes(NEW, PEOPLE)
    made: list[Path] = []
    spill = rowdiff.spill

    def spy(*args: Any) -> list[Path]:
        made.append(args[-1].parent)
        assert made[-1].parent == scratch and made[-1].is_dir()
        return spill(*args)

    monkeypatch.setattr(rowdiff, "spill", spy)
    with partitioned():
        outcome(old, new, "csv", ["id"], 20, scratch)
        assert made and not made[-1].exists()

        def broken(path: Path) -> Any:
            raise OSError("disk gone")

        monkeypatch.setattr(rowdiff, "read_bucket", broken)
        assert outcome(old, new, "csv", ["id"], 20, scratch) == "OSError: disk gone"
    assert len(made) == 4 and not made[-1].exists()
    assert list(scratch.iterdir()) == []


def test_left_over_bucket_dirs_removed(scratch: Path) -> None:
    """A bucket directory a killed daemon left (old, unlocked) goes at the next
    partitioned diff; one in use (locked) or just made stays."""
    scratch.mkdir(parents=True, exist_ok=True)
    left, busy, new = (scratch / f"rowdiff-{name}" for name in ("left", "busy", "new"))
    for d in (left, busy, new):
        d.mkdir()
        (d / "a-0.arrow").write_bytes(b"x")
    hour_ago = time.time() - 3600
    for d in (left, busy):
        os.utime(d, (hour_ago, hour_ago))
    fd = os.open(busy, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with partitioned():
            outcome(csv_bytes(OLD, PEOPLE), csv_bytes(NEW, PEOPLE), "csv", ["id"], 5, scratch)
        assert not left.exists() and busy.exists() and new.exists()
    finally:
        os.close(fd)
        for d in (busy, new):
            shutil.rmtree(d)


# ------------------------------------------------------------------ the hash
def test_hash_of_equal_bytes_is_equal() -> None:
    words = ["", "a", "ab", "a\x00", "ünïcode", "x" * 100, "1", "-0", "nan"]
    base = text_hash(pa.array(words)).to_pylist()
    assert len(set(base)) == len(words)
    shifted = pa.array(["pad", "more", *words]).slice(2)           # an array offset
    chunked = pa.chunked_array([words[:4], words[4:]])
    for same in (shifted, chunked, pa.array(words, pa.large_string()),
                 pa.array([w.encode() for w in words], pa.binary())):
        assert text_hash(same).to_pylist() == base
    with_slices = rowbuckets.SLICE
    rowbuckets.SLICE = 3
    try:
        assert text_hash(pa.array(words)).to_pylist() == base
    finally:
        rowbuckets.SLICE = with_slices
    assert text_hash(pa.array([], pa.string())).to_pylist() == []


def test_int_hash() -> None:
    ints = [0, 1, -1, 2**63 - 1, -(2**63), 42]
    base = int_hash(pa.array(ints, pa.int64())).to_pylist()
    assert len(set(base)) == len(ints)
    assert int_hash(pa.chunked_array([ints[:2], ints[2:]], pa.int64())).to_pylist() == base
    assert int_hash(pa.array([None, 0], pa.int64())).to_pylist() == [base[0]] * 2


@pytest.mark.parametrize("hashed", [
    lambda n: text_hash(pa.array([str(i) for i in range(n)])),
    lambda n: int_hash(pa.array(range(n), pa.int64())),
    lambda n: combined(int_hash(pa.array([i % 2 for i in range(n)], pa.int64())),
                       text_hash(pa.array([str(i // 2) for i in range(n)]))),
])
def test_buckets_spread(hashed: Any) -> None:
    """Distinct values spread evenly over the buckets (sequential ids too)."""
    counts = pc.value_counts(bucket_of(hashed(20_000), 16)).to_pylist()
    assert len(counts) == 16
    assert all(900 < c["counts"] < 1600 for c in counts)


def test_equal_comparable_values_share_a_bucket(scratch: Path) -> None:
    """The same key in both files lands in the same bucket: each bucket's rows
    are matched alone, so no row is reported added and removed."""
    rows = [{"id": i, "v": i % 7} for i in range(500)]
    old = parquet_bytes(rows, ["id", "v"])
    new = parquet_bytes(rows[::-1], ["id", "v"])
    for key in (None, ["id"], ["v", "id"]):
        with partitioned(buckets=16) as seen:
            assert json.loads(outcome(old, new, "parquet", key, 20, scratch))["added"] == 0
        assert seen == ["streamed"]


# ------------------------------------------------------------------ hypothesis
@st.composite
def pairs(draw: st.DrawFn) -> tuple[str, bytes | None, bytes | None, list[str] | None, int]:
    fmt = draw(st.sampled_from(["csv", "jsonl", "parquet"]))
    ids = st.one_of(st.none(), st.integers(0, 5))
    texts = st.sampled_from([None, "", "a", "b", "a,b", 'q"t', "x\ny", "ünï"])
    nums = st.one_of(st.none(), st.integers(-2, 2), st.sampled_from([0.5, -0.0, 1e20]))
    row = st.fixed_dictionaries({"id": ids, "part": st.sampled_from(["p", "q"]),
                                 "name": texts, "v": nums})
    old = draw(st.lists(row, max_size=12))
    kept = draw(st.permutations(old))[:draw(st.integers(0, len(old)))]
    new = kept + draw(st.lists(row, max_size=6))
    dropped, in_old = draw(st.sampled_from([None, "name", "v"])), draw(st.booleans())
    cols_a = [c for c in PEOPLE if c != dropped or not in_old]
    cols_b = [c for c in PEOPLE if c != dropped or in_old]
    if fmt != "jsonl" and draw(st.booleans()):   # v as text in the new file: another type
        new = [{**r, "v": None if r["v"] is None else f"v{r['v']}"} for r in new]
    a = None if draw(st.integers(0, 9)) == 0 else WRITE[fmt](old, cols_a)
    b = None if a is not None and draw(st.integers(0, 9)) == 0 else WRITE[fmt](new, cols_b)
    key = draw(st.sampled_from([None, ["id"], ["id", "part"], ["name"], ["v"], ["part"]]))
    return fmt, a, b, key, draw(st.sampled_from([0, 1, 3, 20]))


@EXAMPLES
@given(pairs())
def test_partitioned_equals_whole_for_any_tables(
        scratch: Path, case: tuple[str, bytes | None, bytes | None, list[str] | None, int]
        ) -> None:
    fmt, a, b, key, limit = case
    whole = outcome(a, b, fmt, key, limit, scratch)
    with partitioned() as seen:
        assert outcome(a, b, fmt, key, limit, scratch) == whole
    if b"" not in (a, b):   # an empty JSONL file has no stream (nor types)
        assert seen == ["streamed"]


# ------------------------------------------------------------------ memory
# Arrow's own peak allocation: what the diff holds, whatever the allocator keeps
# around it (the process's RSS also varies with the machine's state)
ARROW_PEAK_MIB = 150
SCRIPT = textwrap.dedent("""
    import resource, sys
    from pathlib import Path
    import pyarrow as pa
    from dmsfs import rowdiff
    how, a, b, scratch = sys.argv[1:]
    rowdiff.BIG = 0 if how == "partitioned" else 1 << 62
    def source(p):
        return rowdiff.Source(p, Path(p).stat().st_size, lambda: open(p, "rb"))
    d = rowdiff.diff_files(source(a), source(b), "parquet", ["id"], 20, Path(scratch))
    print(d.added, d.removed, d.changed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
          pa.default_memory_pool().max_memory())
""")


def big_pair(n: int, a: Path, b: Path) -> None:
    """n rows (id, name, value, flag), and the same with every 32768th row changed,
    every 32768th removed and 100 added."""
    ids = pa.array(range(n), pa.int64())
    r = pc.random(n, initializer=7)
    name = pc.binary_join_element_wise("user_", pc.cast(pc.multiply(ids, 13), pa.string()), "")
    old = pa.table({"id": ids, "name": name, "value": r, "flag": pc.less(r, 0.5)})
    step = pc.bit_wise_and(ids, 0x7FFF)
    value = pc.if_else(pc.equal(step, 1), pc.add(r, 1.0), r)
    new = old.set_column(2, "value", value).filter(pc.not_equal(step, 2))
    extra = old.slice(0, 100).set_column(0, "id", pc.add(ids.slice(0, 100), n))
    pq.write_table(old, a)
    pq.write_table(pa.concat_tables([new, extra]), b)


def test_memory_is_bounded(tmp_path: Path) -> None:
    """Two 3,000,000-row Parquet files: the whole-table path holds well over
    ARROW_PEAK_MIB of Arrow memory at once (about 650), the partitioned path well
    under (about 55); its peak RSS is the lower one too."""
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    big_pair(3_000_000, a, b)
    rss, arrow = {}, {}
    for how in ("partitioned", "whole"):
        out = subprocess.run([sys.executable, "-c", SCRIPT, how, str(a), str(b),
                              str(tmp_path / "state")], capture_output=True, text=True,
                             check=True, timeout=120).stdout.split()
        assert out[:3] == ["100", str(3_000_000 // 32768 + 1), str(3_000_000 // 32768 + 1)]
        rss[how], arrow[how] = int(out[3]) // 1024, int(out[4]) >> 20
    assert arrow["partitioned"] < ARROW_PEAK_MIB < arrow["whole"], arrow
    assert rss["partitioned"] < rss["whole"], rss
    assert not list((tmp_path / "state").iterdir())
