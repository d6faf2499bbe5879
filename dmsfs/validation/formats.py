"""Tabular files as blocks of Arrow record batches, and each row as the JSON record
jsonschema judges.

Formats: JSON (one record, or an array of records), JSONL/NDJSON (a record a
line; blank lines are skipped), CSV (a header row; each value converted to the
type its property declares, see csv_value), Parquet (rows of its batches;
dates and times become ISO strings, decimals floats).  Files are read in
blocks, so memory stays bounded for large files (JSON excepted: one document).
"""

from __future__ import annotations

import csv
import io
import json
import re
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import accumulate
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from .checks import contains, max_bytes

# Bytes parsed at a time.  Arrow's readers hold many blocks in flight, so peak
# memory grows with this (about 40 MiB per MiB for CSV), while speed is the same
# from 1 MiB up (JSONL is even faster with it than with 8 MiB).
BLOCK = 1 << 20
PARQUET_BATCH = 65536
INT_RE = r"^[+-]?[0-9]+$"
FLOAT_RE = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
TRUE, FALSE = ("true", "True", "TRUE"), ("false", "False", "FALSE")
EXACT_DIGITS = 15          # longer numbers may round differently: left to jsonschema


class NotARecord(ValueError):
    """A row that is not a JSON value at all (a JSONL line that does not parse)."""


@dataclass
class Block:
    """Rows of a file as a batch, plus how to get any row as a JSON record."""

    batch: pa.RecordBatch
    record: Callable[[int], tuple[int, Any]]   # row -> (record number, record)
    suspects: pa.Array | None = None           # rows the conversion already doubts
    # work left to make `batch` and `suspects` (CSV type conversion), which the
    # validator runs beside the reading of the next block
    finish: Callable[[Block], None] | None = None

    def ready(self) -> Block:
        if self.finish is not None:
            self.finish(self)
            self.finish = None
        return self


def grouped(parts: Iterator[Block], rows: int) -> Iterator[Block]:
    """Consecutive blocks of one schema merged into blocks of at least `rows` rows:
    the checks cost a Python call per kernel per block, so fewer, larger blocks
    cost less, while the reader keeps parsing small ones (its memory grows with
    its block size)."""
    group: list[Block] = []
    count = 0
    for block in parts:
        if group and (block.batch.schema != group[0].batch.schema
                      or block.finish is not group[0].finish):
            yield _merged(group)
            group, count = [], 0
        group.append(block)
        count += block.batch.num_rows
        if count >= rows:
            yield _merged(group)
            group, count = [], 0
    if group:
        yield _merged(group)


def _merged(group: list[Block]) -> Block:
    if len(group) == 1:
        return group[0]
    ends = list(accumulate(b.batch.num_rows for b in group))
    batch = pa.Table.from_batches([b.batch for b in group]).combine_chunks().to_batches()
    suspects = None
    if any(b.suspects is not None for b in group):
        suspects = pa.concat_arrays([b.suspects if b.suspects is not None else
                                     _const(b.batch.num_rows, False) for b in group])

    def record(i: int) -> tuple[int, Any]:
        k = bisect_right(ends, i)
        return group[k].record(i - (ends[k - 1] if k else 0))

    return Block(batch[0] if batch else group[0].batch, record, suspects, group[0].finish)


def blocks(f: IO[bytes], fmt: str, schema: Any) -> Iterator[Block]:
    """The blocks of a file in format fmt ("json", "jsonl", "csv", "parquet")."""
    if fmt == "csv":
        return _csv_blocks(f, _property_types(schema))
    if fmt == "jsonl":
        return _jsonl_blocks(f, _property_types(schema))
    if fmt == "parquet":
        return _parquet_blocks(f)
    return _json_blocks(f)


# ------------------------------------------------------------------ JSON
def _json_blocks(f: IO[bytes]) -> Iterator[Block]:
    doc = json.load(f)
    records = doc if isinstance(doc, list) else [doc]
    batch = batch_of_records(records) if all(isinstance(r, dict) for r in records) else None
    if batch is None or batch.num_rows != len(records):  # left to jsonschema, row by row
        batch = pa.RecordBatch.from_pydict({"_": pa.nulls(len(records))})
        yield Block(batch, lambda i: (i + 1, records[i]), _const(len(records), True))
        return
    yield Block(batch, lambda i: (i + 1, records[i]))


def batch_of_records(records: list[dict[str, Any]]) -> pa.RecordBatch | None:
    """Records as a batch with a column for every key of any record (a missing key
    is null, which the checks treat as suspect); None if a column mixes types."""
    keys = dict.fromkeys(k for r in records for k in r)
    try:
        return pa.RecordBatch.from_pydict({k: pa.array([r.get(k) for r in records])
                                           for k in keys}) if keys else \
            pa.RecordBatch.from_pydict({"_": pa.nulls(len(records))})
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return None


# ------------------------------------------------------------------ JSONL
def _jsonl_blocks(f: IO[bytes], types: dict[str, set[str]]) -> Iterator[Block]:
    # strings stay strings (Arrow would otherwise make timestamps of dates)
    parse = pajson.ParseOptions(explicit_schema=pa.schema(
        [(name, pa.string()) for name, t in types.items() if t and t <= {"string", "null"}]),
        unexpected_field_behavior="infer")
    line_no = 0
    rest = b""
    while True:
        data = f.read(BLOCK)
        buf = rest + data
        if not data:
            cut = len(buf)
        else:
            cut = buf.rfind(b"\n") + 1
            if cut == 0:
                rest = buf
                continue
        chunk, rest = buf[:cut], buf[cut:]
        if chunk:
            yield from _jsonl_chunk(chunk, line_no, parse)
            line_no += chunk.count(b"\n") + (0 if chunk.endswith(b"\n") else 1)
        if not data:
            return


def _jsonl_chunk(chunk: bytes, first_line: int, parse: pajson.ParseOptions
                 ) -> Iterator[Block]:
    lines = chunk.split(b"\n")
    if chunk.endswith(b"\n"):
        lines.pop()
    kept = [i for i, line in enumerate(lines) if line.strip()]
    if not kept:
        return
    rows = [lines[i] for i in kept] if len(kept) != len(lines) else lines

    def record(i: int) -> tuple[int, Any]:
        number = first_line + kept[i] + 1
        try:
            return number, json.loads(rows[i])
        except ValueError as e:
            raise NotARecord(f"line {number} is not JSON: {e}") from None

    try:
        table = pajson.read_json(io.BytesIO(b"\n".join(rows)), parse_options=parse,
                                 read_options=pajson.ReadOptions(block_size=len(chunk) + 1))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # mixed types in a column, a line that is not an object or not JSON:
        # every row of this chunk goes to jsonschema
        table = None
    if table is None or table.num_rows != len(rows):
        batch = pa.RecordBatch.from_pydict({"_": pa.nulls(len(rows))})
        yield Block(batch, record, _const(len(rows), True))
        return
    yield Block(table.combine_chunks().to_batches()[0] if table.num_rows else
                pa.RecordBatch.from_pylist([]), record)


# ------------------------------------------------------------------ CSV
def _property_types(schema: Any) -> dict[str, set[str]]:
    props = schema.get("properties", {}) if isinstance(schema, dict) else {}
    out = {}
    for name, sub in props.items() if isinstance(props, dict) else ():
        t = sub.get("type") if isinstance(sub, dict) else None
        out[name] = {t} if isinstance(t, str) else set(t) if isinstance(t, list) else set()
    return out


def csv_value(s: str | None, types: set[str]) -> Any:
    """A CSV cell as the JSON value its property's declared types make of it (the
    reader gives an empty cell as None)."""
    if not s:
        return None
    if ("integer" in types or "number" in types) and re.fullmatch(INT_RE, s):
        return int(s)
    if "number" in types and re.fullmatch(FLOAT_RE, s):
        return float(s)
    if "boolean" in types and s in TRUE + FALSE:
        return s in TRUE
    return s


def _csv_header(f: IO[bytes]) -> list[str]:
    head = f.read(1 << 20)
    f.seek(0)
    # utf-8-sig: a byte-order mark is not part of the first name (Arrow skips it too)
    row = next(csv.reader(io.StringIO(head.decode("utf-8-sig", errors="replace"))), [])
    repeated = sorted({n for n in row if row.count(n) > 1})
    if repeated:
        raise ValueError(f"the CSV header repeats column {repeated[0]!r}")
    return row


def _csv_blocks(f: IO[bytes], types: dict[str, set[str]]) -> Iterator[Block]:
    names = _csv_header(f)
    if not names:
        return
    reader = pacsv.open_csv(
        f, read_options=pacsv.ReadOptions(block_size=BLOCK),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            # an empty cell, quoted or not, is null (csv_value): the parser says so
            column_types={n: pa.string() for n in names}, null_values=[""],
            strings_can_be_null=True, quoted_strings_can_be_null=True))
    row = 0

    def convert(block: Block) -> None:
        raw, columns, doubts = block.batch, {}, _const(block.batch.num_rows, False)
        for name in raw.schema.names:
            col, doubt = _convert(raw.column(name), types.get(name, set()))
            columns[name] = col
            doubts = pc.or_(doubts, doubt)
        block.batch, block.suspects = pa.RecordBatch.from_pydict(columns), doubts

    for raw in reader:
        def record(i: int, raw: pa.RecordBatch = raw, first: int = row) -> tuple[int, Any]:
            cells = raw.slice(i, 1).to_pylist()[0]
            return first + i + 1, {k: csv_value(v, types.get(k, set()))
                                   for k, v in cells.items()}

        yield Block(raw, record, finish=convert)
        row += raw.num_rows


def _convert(col: pa.Array, types: set[str]) -> tuple[pa.Array, pa.Array]:
    """(typed column, rows the typed column may not represent exactly); empty cells
    are null already."""
    values = col
    if "integer" in types or "number" in types:
        target = pa.float64() if "number" in types else pa.int64()
        # bytes, not characters: a number is ASCII, and anything else is no number
        long = pc.fill_null(pc.greater(pc.binary_length(values), EXACT_DIGITS), False) \
            if max_bytes(values) > EXACT_DIGITS else _const(len(values), False)
        try:  # the usual case: Arrow parses every value; only its extras are doubted
            typed = pc.cast(values, target)
            return typed, pc.or_(long, _arrow_only_numbers(values, typed))
        except pa.ArrowInvalid:
            pass
        is_int = pc.match_substring_regex(values, INT_RE)
        is_num = pc.or_(is_int, pc.match_substring_regex(values, FLOAT_RE)) \
            if "number" in types else is_int
        ok = is_num if "number" in types else pc.and_(is_int, pc.invert(long))
        # Arrow's integer parser refuses a leading +, which csv_value accepts
        typed = pc.cast(pc.utf8_ltrim(pc.if_else(ok, values, pa.scalar(None, pa.string())),
                                      characters="+"), target)
        doubt = pc.or_(pc.and_(is_num, long), pc.and_(pc.is_valid(values), pc.invert(is_num)))
        return typed, pc.fill_null(doubt, False)
    if "boolean" in types:
        typed = pc.equal(values, "true")    # the usual spelling: two passes say so
        others = pc.and_(pc.is_valid(values), pc.invert(pc.fill_null(
            pc.or_(typed, pc.equal(values, "false")), False)))
        if not pc.any(others).as_py():
            return typed, _const(len(col), False)
        is_true = pc.is_in(values, value_set=pa.array(TRUE))
        is_bool = pc.or_(is_true, pc.is_in(values, value_set=pa.array(FALSE)))
        typed = pc.if_else(is_bool, is_true, pa.scalar(None, pa.bool_()))
        return typed, pc.fill_null(pc.and_(pc.is_valid(values), pc.invert(is_bool)), False)
    return values, _const(len(col), False)


def _arrow_only_numbers(values: pa.Array, typed: pa.Array) -> pa.Array:
    """Rows Arrow parses as numbers that csv_value does not: hexadecimal integers
    (0x10; Arrow refuses -0x10), and as floats inf, infinity, nan or nan(...), which
    are all Arrow takes beyond csv_value's floats."""
    if pa.types.is_integer(typed.type):
        if not contains(values, b"x", b"X"):
            return _const(len(values), False)
        odd = pc.or_(pc.starts_with(values, "0x"), pc.starts_with(values, "0X"))
    else:
        if not contains(values, b"i", b"I", b"n", b"N"):
            return _const(len(values), False)
        odd = pc.or_(pc.is_nan(typed), pc.is_inf(typed))
    return pc.fill_null(odd, False)


# ------------------------------------------------------------------ Parquet
def _parquet_blocks(f: IO[bytes]) -> Iterator[Block]:
    row = 0
    # column chunks read a piece at a time, not each row group whole
    parquet = pq.ParquetFile(f, pre_buffer=False, buffer_size=BLOCK)
    for raw in parquet.iter_batches(batch_size=PARQUET_BATCH):
        batch = _jsonable(raw)

        def record(i: int, batch: pa.RecordBatch = batch, first: int = row) -> tuple[int, Any]:
            return first + i + 1, batch.slice(i, 1).to_pylist()[0]

        yield Block(batch, record)
        row += raw.num_rows


def _jsonable(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Columns as JSON sees them: temporal values as ISO strings, decimals as floats."""
    cols = []
    for col in batch.columns:
        t = col.type
        if pa.types.is_timestamp(t):
            # RFC 3339: a zone-aware instant in UTC with Z, a naive one without zone
            fmt = "%Y-%m-%dT%H:%M:%SZ" if t.tz else "%Y-%m-%dT%H:%M:%S"
            col = pc.strftime(col, format=fmt, locale="C")
        elif pa.types.is_temporal(t):
            col = pc.cast(col, pa.string())
        elif pa.types.is_decimal(t):
            col = pc.cast(col, pa.float64())
        elif pa.types.is_dictionary(t):
            col = col.dictionary_decode()
        cols.append(col)
    return pa.RecordBatch.from_arrays(cols, names=batch.schema.names)


def _const(n: int, value: bool) -> pa.Array:
    return pc.fill_null(pa.nulls(n, pa.bool_()), value)
