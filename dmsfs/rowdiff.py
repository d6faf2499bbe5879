"""Row-level diff of two versions of a tabular file (CSV, JSONL, JSON, Parquet).

With key columns, rows are matched by key (an Arrow hash join): a key only in
the new file is an added row, only in the old one a removed row, in both with
other values a changed row (with the columns that differ).  Without a key,
rows are compared as a multiset: each distinct row is counted on both sides
(an Arrow hash aggregation) and the surplus on either side is added or
removed.  Counts are exact; the rows listed are cut at `limit`.

A pair of files bigger than BIG together is not read whole: both are streamed in
record batches and hash-partitioned by key (or by whole row) into bucket files
under the state dir (rowbuckets.py), then diffed bucket by bucket with the same
code, the listed rows of the buckets merged in file order; memory then depends
on the bucket size, not on the files'.
"""

from __future__ import annotations

import functools
import heapq
import io
import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import islice
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
import trio

from .chunkio import open_content
from .chunkstore import ChunkStore
from .content import ChunkList
from .diff import Loader
from .errors import InvalidArgument
from .rowbuckets import bucket_dir, combined, int_hash, read_bucket, row_numbers, spill, text_hash
from .tree import TreeEntry
from .validation.fileformat import format_of

JSON_TEXT = b"dmsfs.json_text"   # field metadata: values are JSON text (mixed types)
SEP = "\x1f"        # between a row's values in its fingerprint
NULL = "\x00"
CSV_PARSE = pacsv.ParseOptions(newlines_in_values=True)
BIG = 256 << 20      # bytes (in memory, about) of a pair above which it is partitioned
BUCKET = 16 << 20    # bytes of both sides per bucket: a bucket's diff holds ~10x that
MAX_BUCKETS = 256    # a side's bucket files are all open while it is partitioned
SAMPLE = 65536       # rows read to estimate a Parquet file's size in memory


def read_table(f: IO[bytes], fmt: str) -> pa.Table:
    """A whole tabular file as an Arrow table (types inferred)."""
    if fmt == "csv":
        return pacsv.read_csv(f, parse_options=CSV_PARSE)
    if fmt == "parquet":
        return pq.read_table(f)
    if fmt == "jsonl":
        lines = [line for line in f.read().split(b"\n") if line.strip()]
        try:
            return pajson.read_json(io.BytesIO(b"\n".join(lines))) if lines else pa.table({})
        except pa.ArrowInvalid:  # a column of mixed types: its values as JSON text
            return table_of_records([json.loads(line) for line in lines])
    doc = json.load(f)
    return table_of_records(doc if isinstance(doc, list) else [doc])


def table_of_records(records: list[Any]) -> pa.Table:
    """Records as a table with a column for every key of any record; a column whose
    values Arrow cannot hold in one type has them as JSON text."""
    rows = [r if isinstance(r, dict) else {"value": r} for r in records]
    fields, arrays = [], []
    for k in dict.fromkeys(k for r in rows for k in r):
        values = [r.get(k) for r in rows]
        try:
            arrays.append(pa.array(values))
            fields.append(pa.field(k, arrays[-1].type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            arrays.append(pa.array([None if v is None else json.dumps(v) for v in values]))
            fields.append(pa.field(k, pa.string(), metadata={JSON_TEXT: b"1"}))
    if not fields:
        return pa.table({"value": pa.nulls(len(rows))})
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def rows_of(table: pa.Table, indices: Any) -> list[dict[str, Any]]:
    """Rows as records, values of JSON-text columns decoded again."""
    rows = table.take(indices).to_pylist()
    texts = [f.name for f in table.schema if f.metadata and JSON_TEXT in f.metadata]
    for row in rows:
        for name in texts:
            if row[name] is not None:
                row[name] = json.loads(row[name])
    return rows


@dataclass
class RowDiff:
    added: int
    removed: int
    changed: int
    added_rows: list[dict[str, Any]]
    removed_rows: list[dict[str, Any]]
    changed_rows: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"added": self.added, "removed": self.removed, "changed": self.changed,
                "added_rows": self.added_rows, "removed_rows": self.removed_rows,
                "changed_rows": self.changed_rows}


Listed = list[tuple[Any, dict[str, Any]]]   # (place in the output order, row)


@dataclass
class Part:
    """The diff of some of the rows (a bucket's, or all): exact counts and the first
    `limit` rows of each kind, each with its place in the output order (row numbers
    in the files), so that parts merge into the diff of all their rows."""
    added: int = 0
    removed: int = 0
    changed: int = 0
    added_rows: Listed = field(default_factory=list)
    removed_rows: Listed = field(default_factory=list)
    changed_rows: Listed = field(default_factory=list)

    def add(self, other: Part, limit: int) -> None:
        """Other rows' diff added to this one."""
        self.added += other.added
        self.removed += other.removed
        self.changed += other.changed
        for name in ("added_rows", "removed_rows", "changed_rows"):
            merged = heapq.merge(getattr(self, name), getattr(other, name), key=itemgetter(0))
            setattr(self, name, list(islice(merged, limit)))

    def diff(self) -> RowDiff:
        return RowDiff(self.added, self.removed, self.changed,
                       *([row for _, row in rows]
                         for rows in (self.added_rows, self.removed_rows, self.changed_rows)))


def one_side(table: pa.Table, added: bool, limit: int, count: int | None = None) -> RowDiff:
    """A file present on one side only: all its rows (count, or the table's) added
    (or removed); the table holds at least the first `limit` of them."""
    rows = rows_of(table, row_numbers(min(limit, table.num_rows)))
    n = table.num_rows if count is None else count
    return RowDiff(n if added else 0, 0 if added else n, 0, rows if added else [],
                   [] if added else rows, [])


def row_diff(old: pa.Table, new: pa.Table, key: list[str] | None, limit: int) -> RowDiff:
    """Rows are compared in comparable form (_comparable) and listed as the files
    have them."""
    plan = _plan(old.schema, new.schema)
    _check_key(plan, key)
    rows_a, rows_b = row_numbers(old.num_rows), row_numbers(new.num_rows)
    return _part(old, new, rows_a, rows_b, plan, key, limit).diff()


Plan = list[tuple[str, pa.DataType | None, pa.DataType | None]]


def _plan(old: pa.Schema, new: pa.Schema) -> Plan:
    """Every column of either file, with its type in each (None: not there)."""
    def type_in(schema: pa.Schema, name: str) -> pa.DataType | None:
        # by position: a name twice in a file fails later, in table.column(), as ever
        return schema.types[schema.names.index(name)] if name in schema.names else None
    return [(name, type_in(old, name), type_in(new, name))
            for name in dict.fromkeys(old.names + new.names)]


def _check_key(plan: Plan, key: list[str] | None) -> None:
    """Refuses key columns that are not in both files."""
    in_both = {name for name, a, b in plan if a is not None and b is not None}
    missing = [k for k in key or [] if k not in in_both]
    if missing:
        raise InvalidArgument(f"key column {missing[0]!r} is not in both files")


def _comparable(table: pa.Table, plan: Plan, side: int) -> pa.Table:
    """The table (side 0 old, 1 new) with every column of the plan, a missing one null
    (of the other file's type), and a column whose type differs between the files as
    text tagged with the type, so 1 and "1" differ."""
    cols = []
    for name, *types in plan:
        own, other = types[side], types[1 - side]
        col = table.column(name) if own is not None else pa.nulls(table.num_rows, other)
        differ = own is not None and other is not None and own != other
        cols.append(_tagged(col) if differ else col)
    return pa.table(cols, names=[name for name, _, _ in plan])


def _as_text(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    if pa.types.is_null(col.type):
        return col.cast(pa.string())
    if pa.types.is_nested(col.type):
        return pa.array([json.dumps(v) if v is not None else None for v in col.to_pylist()],
                        pa.string())
    return pc.cast(col, pa.string())


def _tagged(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    return pc.binary_join_element_wise(f"{col.type}:", _as_text(col), "")


def _fingerprint(table: pa.Table) -> pa.ChunkedArray | pa.Array:
    """One string per row standing for all its values (null distinct from "")."""
    parts = [pc.fill_null(_as_text(table.column(n)), NULL) for n in table.column_names]
    if not parts:
        return pa.array([""] * table.num_rows, pa.string())
    return pc.binary_join_element_wise(*parts, SEP) if len(parts) > 1 else parts[0]


_BYTES = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view,
          pa.types.is_binary, pa.types.is_large_binary, pa.types.is_binary_view,
          pa.types.is_fixed_size_binary)


def _key_bytes(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """A key column's values as bytes (large_binary), equal for values a join matches
    (null as NULL).  Not its text: binary values need not be UTF-8."""
    t = col.type
    if pa.types.is_dictionary(t):
        return _key_bytes(col.cast(t.value_type))
    null = pa.scalar(NULL.encode(), pa.large_binary())
    if any(is_bytes(t) for is_bytes in _BYTES):
        return pc.fill_null(col.cast(pa.large_binary()), null)
    if not pa.types.is_nested(t):
        try:
            return pc.fill_null(pc.cast(col, pa.string()).cast(pa.large_binary()), null)
        except pa.ArrowNotImplementedError:
            pass
    # no text form (a join refuses nested keys anyway): all in one bucket, still exact
    return pa.repeat(null, len(col))


def _row_hash(table: pa.Table, plan: Plan, side: int, key: list[str] | None) -> pa.Array:
    """A hash of what each row is matched by, its key or its fingerprint: equal for
    rows that can match, in either file."""
    if not key:
        return text_hash(_fingerprint(_comparable(table, plan, side)))
    comparable = _comparable(table, [c for c in plan if c[0] in key], side)
    hashes = [int_hash(col) if pa.types.is_integer(col.type) else text_hash(_key_bytes(col))
              for col in (comparable.column(k) for k in key)]
    return functools.reduce(combined, hashes)


def _part(old: pa.Table, new: pa.Table, rows_a: pa.Array | pa.ChunkedArray,
          rows_b: pa.Array | pa.ChunkedArray, plan: Plan, key: list[str] | None,
          limit: int) -> Part:
    """The diff of these rows (in file order, with their row numbers in the files)."""
    if key:
        return _keyed(old, new, rows_a, rows_b, plan, key, limit)
    return _multiset(old, new, rows_a, rows_b, plan, limit)


def _listed(table: pa.Table, rows: pa.Array | pa.ChunkedArray, at: pa.Array) -> Listed:
    """The rows at these positions, each with its row number."""
    return list(zip(pc.take(rows, at).to_pylist(), rows_of(table, at), strict=True))


def _multiset(old: pa.Table, new: pa.Table, rows_a: pa.Array | pa.ChunkedArray,
              rows_b: pa.Array | pa.ChunkedArray, plan: Plan, limit: int) -> Part:
    counts = []
    for side, table in enumerate((old, new)):
        fp = pa.table({"fp": _fingerprint(_comparable(table, plan, side)),
                       "row": row_numbers(table.num_rows)})
        name = "ab"[side]
        counts.append(fp.group_by("fp").aggregate([("row", "count"), ("row", "min")])
                      .rename_columns(["fp", f"n_{name}", f"row_{name}"]))
    joined = counts[0].join(counts[1], "fp", join_type="full outer")
    na = pc.fill_null(joined["n_a"], 0)
    nb = pc.fill_null(joined["n_b"], 0)
    more = pc.subtract(nb, na)
    added_mask, removed_mask = pc.greater(more, 0), pc.less(more, 0)
    added = pc.sum(pc.filter(more, added_mask)).as_py() or 0
    removed = -(pc.sum(pc.filter(more, removed_mask)).as_py() or 0)
    added_rows = _repeated(new, rows_b, joined["row_b"], more, added_mask, limit)
    removed_rows = _repeated(old, rows_a, joined["row_a"], pc.negate(more), removed_mask,
                             limit)
    return Part(added, removed, 0, added_rows, removed_rows)


def _repeated(table: pa.Table, rows: pa.Array | pa.ChunkedArray, first: pa.ChunkedArray,
              times: pa.ChunkedArray, mask: pa.ChunkedArray, limit: int) -> Listed:
    """Each surplus row as many times as it is surplus, in file order, up to limit."""
    picked = pa.table({"row": pc.filter(first, mask), "n": pc.filter(times, mask)}
                      ).sort_by("row").slice(0, limit)
    out: list[int] = []
    for row, n in zip(picked["row"].to_pylist(), picked["n"].to_pylist(), strict=True):
        out += [row] * min(n, limit - len(out))
    return _listed(table, rows, pa.array(out, pa.int64()))


def _keyed(old: pa.Table, new: pa.Table, rows_a: pa.Array | pa.ChunkedArray,
           rows_b: pa.Array | pa.ChunkedArray, plan: Plan, key: list[str], limit: int
           ) -> Part:
    ca, cb = _comparable(old, plan, 0), _comparable(new, plan, 1)
    keys_a = ca.select(key).append_column("__row_a", row_numbers(old.num_rows))
    keys_b = cb.select(key).append_column("__row_b", row_numbers(new.num_rows))
    joined = keys_a.join(keys_b, key, join_type="full outer")
    ra, rb = joined["__row_a"], joined["__row_b"]
    only_b = pc.is_null(ra)
    only_a = pc.is_null(rb)
    both = pc.and_(pc.is_valid(ra), pc.is_valid(rb))
    added_idx, removed_idx = pc.filter(rb, only_b), pc.filter(ra, only_a)
    # pairs in the new file's row order (a join's output order is not defined), a new
    # row matching several old ones (duplicate keys) in the old file's
    pairs = pa.table({"a": pc.filter(ra, both), "b": pc.filter(rb, both)}
                     ).sort_by([("b", "ascending"), ("a", "ascending")])
    pa_idx, pb_idx = pairs["a"], pairs["b"]
    left, right = ca.take(pa_idx), cb.take(pb_idx)
    values = [n for n in ca.column_names if n not in key]
    differs = {n: _differs(left[n], right[n]) for n in values}
    any_diff = pc.fill_null(pa.nulls(len(pa_idx), pa.bool_()), False)
    for mask in differs.values():
        any_diff = pc.or_(any_diff, mask)
    changed_at = pc.indices_nonzero(any_diff)
    changed_rows: Listed = []
    shown = changed_at.slice(0, limit)
    if len(shown):
        at_a, at_b = pc.take(pa_idx, shown), pc.take(pb_idx, shown)
        places = zip(pc.take(rows_b, at_b).to_pylist(), pc.take(rows_a, at_a).to_pylist(),
                     strict=True)
        for i, place, lr, rr in zip(shown.to_pylist(), places, rows_of(old, at_a),
                                    rows_of(new, at_b), strict=True):
            changed_rows.append((place, {
                "key": {k: lr[k] for k in key},
                "columns": [n for n in values if differs[n][i].as_py()],
                "old": lr, "new": rr}))
    return Part(len(added_idx), len(removed_idx), len(changed_at),
                _listed(new, rows_b, _first(added_idx, limit)),
                _listed(old, rows_a, _first(removed_idx, limit)), changed_rows)


def _first(rows: pa.ChunkedArray | pa.Array, limit: int) -> pa.Array:
    """The lowest `limit` positions, in order: rows are listed as the file has them."""
    return pc.take(rows, pc.sort_indices(rows)).slice(0, limit)


def _differs(a: pa.ChunkedArray, b: pa.ChunkedArray) -> pa.Array:
    """Per row: values differ (null equals only null)."""
    if pa.types.is_nested(a.type):
        a, b = _as_text(a), _as_text(b)
    out = pc.or_(pc.fill_null(pc.not_equal(a, b), False), pc.xor(pc.is_null(a), pc.is_null(b)))
    return out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out


# ---------------------------------------------------------------- files
@dataclass(frozen=True)
class Source:
    """A tabular file to diff: its path (for messages), size in bytes, and how to open
    it (a new binary file each call)."""
    path: str
    size: int
    open: Callable[[], IO[bytes]]


class _Unstreamable(Exception):
    """A file that cannot be read in batches as read_table reads it whole."""


def diff_files(old: Source | None, new: Source | None, fmt: str, key: list[str] | None,
               limit: int, scratch: Path) -> RowDiff:
    """Row diff of two versions of a file (None: not on that side).  A pair bigger
    than BIG is partitioned into bucket files in a directory under scratch (removed
    afterwards).  Blocking: run it in a worker thread."""
    sides = [s for s in (old, new) if s is not None]
    # a JSON document is parsed whole whatever its size
    size = sum(_size_in_memory(s, fmt) for s in sides) if fmt != "json" else 0
    if size > BIG:
        try:
            return _diff_streamed(old, new, fmt, key, limit, scratch, size)
        except _Unstreamable:
            pass    # diffed whole below, as read_table reads it
    ta = _read(old, fmt) if old is not None else None
    tb = _read(new, fmt) if new is not None else None
    if ta is None or tb is None:
        assert ta is not None or tb is not None
        return one_side(tb if ta is None else ta, ta is None, limit)
    return row_diff(ta, tb, key, limit)


def _read(src: Source, fmt: str) -> pa.Table:
    """The whole file as a table (InvalidArgument if it is not of its format)."""
    with src.open() as f:
        try:
            return read_table(f, fmt)
        except (pa.ArrowInvalid, ValueError) as e:
            raise InvalidArgument(f"{src.path} cannot be read as {fmt}: {e}") from None


def _size_in_memory(src: Source, fmt: str) -> int:
    """About the bytes the file takes as an Arrow table: its size (text is no smaller),
    for Parquet (compressed, dictionary-encoded) its row count times the size of a
    sample of its rows."""
    if fmt != "parquet":
        return src.size
    with src.open() as f:
        try:
            pf = _parquet(f)
            sample = next(pf.iter_batches(batch_size=SAMPLE), None)
        except (pa.ArrowException, ValueError):
            return src.size     # read_table will say what is wrong with it
    if sample is None or sample.num_rows == 0:
        return src.size
    return max(src.size, sample.nbytes * pf.metadata.num_rows // sample.num_rows)


def _parquet(f: IO[bytes]) -> pq.ParquetFile:
    # column chunks read in pieces as batches need them, not whole row groups at once
    return pq.ParquetFile(f, pre_buffer=False, buffer_size=1 << 20)


def _stream(f: IO[bytes], fmt: str) -> pa.RecordBatchReader:
    """The file as record batches.  CSV and JSONL readers infer the types from the
    first block (read_table's default block size, so a record too long for a block
    fails alike) and fail on a later value that needs another type, where read_table
    infers them from all values: a file that streams to its end has read_table's
    types."""
    try:
        if fmt == "csv":
            return pacsv.open_csv(f, parse_options=CSV_PARSE)
        if fmt == "jsonl":
            return pajson.open_json(f)
        pf = _parquet(f)
        return pa.RecordBatchReader.from_batches(pf.schema_arrow, pf.iter_batches())
    except (pa.ArrowException, ValueError) as e:
        raise _Unstreamable(str(e)) from e


def _batches(reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
    """The reader's batches; a reading error makes the file unstreamable (a file read
    whole either fails the same way or has values of mixed types: read_table decides)."""
    try:
        yield from reader
    except (pa.ArrowException, ValueError) as e:
        raise _Unstreamable(str(e)) from e


def _diff_streamed(old: Source | None, new: Source | None, fmt: str,
                   key: list[str] | None, limit: int, scratch: Path, size: int) -> RowDiff:
    if old is None or new is None:
        side = new if old is None else old
        assert side is not None
        return _one_side_streamed(side, fmt, old is None, limit)
    with ExitStack() as stack:
        readers = [_stream(stack.enter_context(s.open()), fmt) for s in (old, new)]
        plan = _plan(readers[0].schema, readers[1].schema)
        try:
            _check_key(plan, key)
        except InvalidArgument:
            for r in readers:   # a file that cannot be read is reported first
                for _ in _batches(r):
                    pass
            raise
        work = stack.enter_context(bucket_dir(scratch))
        parts = min(MAX_BUCKETS, max(2, -(-size // BUCKET)))
        buckets = [spill(_batches(r), r.schema,
                         functools.partial(_row_hash, plan=plan, side=side, key=key),
                         parts, work / "ab"[side]) for side, r in enumerate(readers)]
        total = Part()
        for path_a, path_b in zip(*buckets, strict=True):
            (ta, rows_a), (tb, rows_b) = read_bucket(path_a), read_bucket(path_b)
            total.add(_part(ta, tb, rows_a, rows_b, plan, key, limit), limit)
        return total.diff()


def _one_side_streamed(src: Source, fmt: str, added: bool, limit: int) -> RowDiff:
    """A big file on one side only: its rows counted and the first `limit` kept."""
    with src.open() as f:
        reader = _stream(f, fmt)
        head, n = [], 0
        for batch in _batches(reader):
            if n < limit:
                head.append(batch.slice(0, limit - n))
            n += batch.num_rows
    return one_side(pa.Table.from_batches(head, reader.schema), added, limit, n)


async def diff_rows(files: dict[str, Any], a: bytes, b: bytes, load: Loader,
                    chunks: ChunkStore, key: list[str] | None, limit: int
                    ) -> list[dict[str, Any]]:
    """Row diffs of the tabular files a file diff found added, removed or modified."""
    jobs = [(m["path"], m["path"]) for m in files["modified"]]  # type: ignore[index]
    jobs += [(None, m["path"]) for m in files["added"]]  # type: ignore[index]
    jobs += [(m["path"], None) for m in files["removed"]]  # type: ignore[index]
    scratch = chunks.staging_dir.parent / "rowdiff"   # in the state dir, not /tmp
    out = []
    for old_path, new_path in sorted(jobs, key=lambda j: j[1] or j[0] or ""):
        path = new_path or old_path
        assert path is not None
        fmt = format_of(path)
        if fmt is None:
            continue
        old = await _source(a, old_path, load, chunks) if old_path else None
        new = await _source(b, new_path, load, chunks) if new_path else None
        if old is None and new is None:
            continue
        diff = await trio.to_thread.run_sync(diff_files, old, new, fmt, key, limit, scratch)
        out.append({"path": path, "format": fmt, **diff.to_json()})
    return out


async def _source(root: bytes, path: str, load: Loader, chunks: ChunkStore) -> Source | None:
    entry = await _find(root, path, load)
    if entry is None or entry.kind != "file":
        return None
    content = ChunkList(list(entry.chunks))
    return Source(path, content.size, functools.partial(open_content, content, chunks))


async def _find(root: bytes, path: str, load: Loader) -> TreeEntry | None:
    """The entry at a relative path below a tree."""
    tid, entry = root, None
    for part in path.split("/"):
        if entry is not None and entry.kind != "dir":
            return None
        entry = (await load(tid)).find(part.encode(errors="surrogateescape"))
        if entry is None:
            return None
        tid = entry.tree
    return entry
