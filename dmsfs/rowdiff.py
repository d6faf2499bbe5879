"""Row-level diff of two versions of a tabular file (CSV, JSONL, JSON, Parquet).

With key columns, rows are matched by key (an Arrow hash join): a key only in
the new file is an added row, only in the old one a removed row, in both with
other values a changed row (with the columns that differ).  Without a key,
rows are compared as a multiset: each distinct row is counted on both sides
(an Arrow hash aggregation) and the surplus on either side is added or
removed.  Counts are exact; the rows listed are cut at `limit`.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import IO, Any

import trio

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from .chunkio import open_content
from .chunkstore import ChunkStore
from .content import ChunkList
from .diff import Loader
from .errors import InvalidArgument
from .tree import TreeEntry
from .validation.fileformat import format_of

JSON_TEXT = b"dmsfs.json_text"   # field metadata: values are JSON text (mixed types)
SEP = "\x1f"        # between a row's values in its fingerprint
NULL = "\x00"


def read_table(f: IO[bytes], fmt: str) -> pa.Table:
    """A whole tabular file as an Arrow table (types inferred)."""
    if fmt == "csv":
        return pacsv.read_csv(f, parse_options=pacsv.ParseOptions(newlines_in_values=True))
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


def one_side(table: pa.Table, added: bool, limit: int) -> RowDiff:
    """A file present on one side only: all its rows added (or removed)."""
    rows = rows_of(table, row_numbers(min(limit, table.num_rows)))
    n = table.num_rows
    return RowDiff(n if added else 0, 0 if added else n, 0, rows if added else [],
                   [] if added else rows, [])


def row_diff(old: pa.Table, new: pa.Table, key: list[str] | None, limit: int) -> RowDiff:
    """Rows are compared in comparable form (_common_columns) and listed as the files
    have them."""
    if key:
        missing = [k for k in key if k not in old.column_names or k not in new.column_names]
        if missing:
            raise InvalidArgument(f"key column {missing[0]!r} is not in both files")
        return _keyed(old, new, key, limit)
    return _multiset(old, new, limit)


def _common_columns(old: pa.Table, new: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Both tables with the union of their columns (missing ones null), and a column
    whose type differs between them as text tagged with the type, so 1 and "1"
    differ."""
    names = list(dict.fromkeys(old.column_names + new.column_names))
    cols_a, cols_b = [], []
    for name in names:
        a = old.column(name) if name in old.column_names else None
        b = new.column(name) if name in new.column_names else None
        a = a if a is not None else pa.nulls(old.num_rows, b.type if b is not None else None)
        b = b if b is not None else pa.nulls(new.num_rows, a.type)
        if a.type != b.type:
            a, b = _tagged(a), _tagged(b)
        cols_a.append(a)
        cols_b.append(b)
    return pa.table(cols_a, names=names), pa.table(cols_b, names=names)


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
    return pc.binary_join_element_wise(*parts, SEP)


def _multiset(old: pa.Table, new: pa.Table, limit: int) -> RowDiff:
    counts = []
    for side, table in zip(("a", "b"), _common_columns(old, new), strict=True):
        fp = pa.table({"fp": _fingerprint(table), "row": row_numbers(table.num_rows)})
        counts.append(fp.group_by("fp").aggregate([("row", "count"), ("row", "min")])
                      .rename_columns(["fp", f"n_{side}", f"row_{side}"]))
    joined = counts[0].join(counts[1], "fp", join_type="full outer")
    na = pc.fill_null(joined["n_a"], 0)
    nb = pc.fill_null(joined["n_b"], 0)
    more = pc.subtract(nb, na)
    added_mask, removed_mask = pc.greater(more, 0), pc.less(more, 0)
    added = pc.sum(pc.filter(more, added_mask)).as_py() or 0
    removed = -(pc.sum(pc.filter(more, removed_mask)).as_py() or 0)
    added_rows = _repeated(new, joined["row_b"], more, added_mask, limit)
    removed_rows = _repeated(old, joined["row_a"], pc.negate(more), removed_mask, limit)
    return RowDiff(added, removed, 0, added_rows, removed_rows, [])


def _repeated(table: pa.Table, rows: pa.ChunkedArray, times: pa.ChunkedArray,
              mask: pa.ChunkedArray, limit: int) -> list[dict[str, Any]]:
    """Each surplus row as many times as it is surplus, in file order, up to limit."""
    picked = pa.table({"row": pc.filter(rows, mask), "n": pc.filter(times, mask)}
                      ).sort_by("row").slice(0, limit)
    out: list[int] = []
    for row, n in zip(picked["row"].to_pylist(), picked["n"].to_pylist(), strict=True):
        out += [row] * min(n, limit - len(out))
    return rows_of(table, pa.array(out, pa.int64()))


def _keyed(old: pa.Table, new: pa.Table, key: list[str], limit: int) -> RowDiff:
    ca, cb = _common_columns(old, new)
    a = ca.append_column("__row_a", row_numbers(old.num_rows))
    b = cb.append_column("__row_b", row_numbers(new.num_rows))
    keys_a = a.select([*key, "__row_a"])
    keys_b = b.select([*key, "__row_b"])
    joined = keys_a.join(keys_b, key, join_type="full outer")
    ra, rb = joined["__row_a"], joined["__row_b"]
    only_b = pc.is_null(ra)
    only_a = pc.is_null(rb)
    both = pc.and_(pc.is_valid(ra), pc.is_valid(rb))
    added_idx, removed_idx = pc.filter(rb, only_b), pc.filter(ra, only_a)
    # pairs in the new file's row order (a join's output order is not defined)
    pairs = pa.table({"a": pc.filter(ra, both), "b": pc.filter(rb, both)}).sort_by("b")
    pa_idx, pb_idx = pairs["a"], pairs["b"]
    left, right = ca.take(pa_idx), cb.take(pb_idx)
    values = [n for n in ca.column_names if n not in key]
    differs = {n: _differs(left[n], right[n]) for n in values}
    any_diff = pc.fill_null(pa.nulls(len(pa_idx), pa.bool_()), False)
    for mask in differs.values():
        any_diff = pc.or_(any_diff, mask)
    changed_at = pc.indices_nonzero(any_diff)
    changed_rows = []
    shown = changed_at.slice(0, limit).to_pylist()
    if shown:
        l_rows = rows_of(old, pc.take(pa_idx, pa.array(shown)))
        r_rows = rows_of(new, pc.take(pb_idx, pa.array(shown)))
        for i, lr, rr in zip(shown, l_rows, r_rows, strict=True):
            changed_rows.append({"key": {k: lr[k] for k in key},
                                 "columns": [n for n in values if differs[n][i].as_py()],
                                 "old": lr, "new": rr})
    return RowDiff(len(added_idx), len(removed_idx), len(changed_at),
                   rows_of(new, _first(added_idx, limit)),
                   rows_of(old, _first(removed_idx, limit)), changed_rows)


def row_numbers(n: int) -> pa.Array:
    """0 .. n-1 as int64, made by Arrow (a Python range would cost a second per 10M)."""
    return pc.indices_nonzero(pc.fill_null(pa.nulls(n, pa.bool_()), True)).cast(pa.int64())


def _first(rows: pa.ChunkedArray | pa.Array, limit: int) -> pa.Array:
    """The lowest `limit` row numbers, in order: rows are listed as the file has them."""
    return pc.take(rows, pc.sort_indices(rows)).slice(0, limit)


def _differs(a: pa.ChunkedArray, b: pa.ChunkedArray) -> pa.Array:
    """Per row: values differ (null equals only null)."""
    if pa.types.is_nested(a.type):
        a, b = _as_text(a), _as_text(b)
    out = pc.or_(pc.fill_null(pc.not_equal(a, b), False), pc.xor(pc.is_null(a), pc.is_null(b)))
    return out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out


async def diff_rows(files: dict[str, Any], a: bytes, b: bytes, load: Loader,
                    chunks: ChunkStore, key: list[str] | None, limit: int
                    ) -> list[dict[str, Any]]:
    """Row diffs of the tabular files a file diff found added, removed or modified."""
    jobs = [(m["path"], m["path"]) for m in files["modified"]]  # type: ignore[index]
    jobs += [(None, m["path"]) for m in files["added"]]  # type: ignore[index]
    jobs += [(m["path"], None) for m in files["removed"]]  # type: ignore[index]
    out = []
    for old_path, new_path in sorted(jobs, key=lambda j: j[1] or j[0] or ""):
        path = new_path or old_path
        assert path is not None
        fmt = format_of(path)
        if fmt is None:
            continue
        old = await _table(a, old_path, fmt, load, chunks) if old_path else None
        new = await _table(b, new_path, fmt, load, chunks) if new_path else None
        if old is None and new is not None:
            diff = one_side(new, True, limit)
        elif new is None and old is not None:
            diff = one_side(old, False, limit)
        elif old is not None and new is not None:
            diff = await trio.to_thread.run_sync(row_diff, old, new, key, limit)
        else:
            continue
        out.append({"path": path, "format": fmt, **diff.to_json()})
    return out


async def _table(root: bytes, path: str, fmt: str, load: Loader, chunks: ChunkStore
                 ) -> pa.Table | None:
    entry = await _find(root, path, load)
    if entry is None or entry.kind != "file":
        return None

    def read() -> pa.Table:
        with open_content(ChunkList(list(entry.chunks)), chunks) as f:
            try:
                return read_table(f, fmt)
            except (pa.ArrowInvalid, ValueError) as e:
                raise InvalidArgument(f"{path} cannot be read as {fmt}: {e}") from None
    return await trio.to_thread.run_sync(read)


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
