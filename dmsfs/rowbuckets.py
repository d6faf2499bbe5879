"""Hash partitioning of record batches into bucket files, for row diffs of files too
big to hold in memory.

A row's bucket is a hash of what the diff matches it by (its key, or its whole row,
in comparable form), equal for rows that can match whichever file they come from,
so that they land in the same bucket.  A bucket file (Arrow IPC) holds its rows in file
order, each with its row number in the file as the last column.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from itertools import pairwise
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

U64 = pa.uint64()
BASE = 0x100000001B3              # odd, so invertible modulo 2**64
BASE_INV = pow(BASE, -1, 1 << 64)
GOLDEN = 0x9E3779B97F4A7C15
SLICE = 1 << 20      # bytes hashed at a time: the per-byte temporaries are 8x that, each
GROUP = 8 << 20      # bytes of input batches hashed and split at once
ROW = "row"          # name of a bucket file's last column
STALE = 60           # seconds after which an unlocked bucket directory is left over

Hash = Callable[[pa.Table], pa.Array]   # a uint64 hash of each row


def row_numbers(n: int) -> pa.Array:
    """0 .. n-1 as int64, made by Arrow (a Python range would cost a second per 10M)."""
    return pc.indices_nonzero(pc.fill_null(pa.nulls(n, pa.bool_()), True)).cast(pa.int64())


def _u64(x: int) -> pa.Scalar:
    return pa.scalar(x, U64)


def _powers(base: int, n: int) -> pa.Array:
    """base**0 .. base**(n-1) modulo 2**64."""
    tail = pc.cumulative_prod(pa.repeat(_u64(base), n - 1)) if n > 1 else pa.array([], U64)
    return pa.concat_arrays([pa.array([1], U64), tail])


_tables = (pa.array([1], U64), pa.array([1], U64))


def _power_tables(n: int) -> tuple[pa.Array, pa.Array]:
    """BASE**i and BASE**-i for i < n; those for about a slice are kept (building them
    costs as much as hashing a slice)."""
    global _tables
    if len(_tables[0]) >= n:
        return _tables
    tables = _powers(BASE, n), _powers(BASE_INV, n)
    if n <= 2 * SLICE:
        _tables = tables
    return tables


def _mix(h: pa.Array) -> pa.Array:
    """splitmix64's finalizer: every input bit affects the high bits bucket_of uses."""
    h = pc.bit_wise_xor(h, pc.shift_right(h, _u64(30)))
    h = pc.multiply(h, _u64(0xBF58476D1CE4E5B9))
    h = pc.bit_wise_xor(h, pc.shift_right(h, _u64(27)))
    h = pc.multiply(h, _u64(0x94D049BB133111EB))
    return pc.bit_wise_xor(h, pc.shift_right(h, _u64(31)))


def _hash_slice(offsets: pa.Array, data: pa.Buffer, powers: pa.Array, inverse: pa.Array
                ) -> pa.Array:
    """Hashes of the values whose n+1 offsets into data are given.  The polynomial
    sum(byte[j] * BASE**(j - start)) of a value is its span of the prefix sums of
    byte[j] * BASE**j, times BASE**-start (uint64 arithmetic wraps modulo 2**64)."""
    n = len(offsets) - 1
    first = offsets[0].as_py()
    size = offsets[n].as_py() - first
    raw = pa.Array.from_buffers(pa.uint8(), size, [None, data], offset=first)
    terms = pc.multiply(raw.cast(U64), powers.slice(0, size))
    sums = pa.concat_arrays([pa.array([0], U64), pc.cumulative_sum(terms)])
    rel = pc.subtract(offsets, first)
    at = pc.take(sums, rel)
    starts, ends = rel.slice(0, n), rel.slice(1)
    h = pc.multiply(pc.subtract(at.slice(1), at.slice(0, n)), pc.take(inverse, starts))
    lengths = pc.subtract(ends, starts).cast(U64)   # so "a" and "a\0" differ
    return _mix(pc.bit_wise_xor(h, pc.multiply(lengths, _u64(GOLDEN))))


def text_hash(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A 64-bit hash of the bytes of each value (string or binary, no nulls), the same
    for equal bytes wherever they are.  Computed in slices of about SLICE bytes of
    whole values, so a batch of long texts needs no temporaries of 8 bytes per byte."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    n = len(values)
    if n == 0:
        return pa.array([], U64)
    v = values.cast(pa.large_binary())
    offsets = pa.Array.from_buffers(pa.int64(), n + 1, [None, v.buffers()[1]], offset=v.offset)
    starts = offsets.slice(0, n)
    window = pc.divide(pc.subtract(starts, offsets[0]), SLICE)
    bounds = [0, *pc.run_end_encode(window).run_ends.to_pylist()]
    at = pc.take(offsets, pa.array(bounds, pa.int64())).to_pylist()
    longest = max(b - a for a, b in pairwise(at))
    powers, inverse = _power_tables(max(longest + 1, SLICE + 1))
    return pa.concat_arrays([
        _hash_slice(offsets.slice(r0, r1 - r0 + 1), v.buffers()[2], powers, inverse)
        for r0, r1 in pairwise(bounds)])


def int_hash(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A 64-bit hash of each integer (null as 0): no text needed for the usual ids."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    bits = pc.cast(pc.fill_null(values, 0), U64, safe=False)  # negatives wrap: still 1:1
    return _mix(bits)


def combined(a: pa.Array, b: pa.Array) -> pa.Array:
    """One hash of two (of a composite key's columns), depending on their order."""
    return _mix(pc.add(pc.multiply(a, _u64(GOLDEN)), b))


def bucket_of(hashes: pa.Array, parts: int) -> pa.Array:
    """The bucket (0 .. parts-1) of each hash: its high 32 bits, scaled."""
    high = pc.shift_right(hashes, _u64(32))
    return pc.shift_right(pc.multiply(high, _u64(parts)), _u64(32))


def _groups(batches: Iterable[pa.RecordBatch], schema: pa.Schema) -> Iterator[pa.Table]:
    """The batches gathered into tables of about GROUP bytes: readers give blocks of
    1 MiB, too small to pay for a pass over every bucket each."""
    group: list[pa.RecordBatch] = []
    size = 0
    for batch in batches:
        group.append(batch)
        size += batch.nbytes
        if size >= GROUP:
            yield pa.Table.from_batches(group, schema)
            group, size = [], 0
    if group:
        yield pa.Table.from_batches(group, schema)


def spill(batches: Iterable[pa.RecordBatch], schema: pa.Schema, hash_of: Hash, parts: int,
          prefix: Path) -> list[Path]:
    """Writes each row to the bucket file (prefix-0.arrow ...) its hash picks, in file
    order, with its row number; the bucket files."""
    row_field = pa.field(ROW, pa.int64())   # by position: a file may have a "row" column
    out = schema.append(row_field)
    paths = [prefix.with_name(f"{prefix.name}-{i}.arrow") for i in range(parts)]
    with ExitStack() as stack:
        writers = [stack.enter_context(pa.ipc.new_file(str(p), out)) for p in paths]
        first = 0
        for group in _groups(batches, schema):
            bucket = bucket_of(hash_of(group), parts)
            rows = pc.add(row_numbers(group.num_rows), first)
            first += group.num_rows
            order = pc.sort_indices(bucket)  # stable: each bucket keeps file order
            table = group.append_column(row_field, rows).combine_chunks().take(order)
            runs = pc.run_end_encode(bucket.take(order))
            start = 0
            for b, end in zip(runs.values.to_pylist(), runs.run_ends.to_pylist(), strict=True):
                writers[b].write_table(table.slice(start, end - start))
                start = end
    return paths


def read_bucket(path: Path) -> tuple[pa.Table, pa.ChunkedArray]:
    """A bucket's rows (in file order) and their row numbers in the file."""
    with pa.OSFile(str(path)) as f:   # one chunk per column: take() over many is slow
        table = pa.ipc.open_file(f).read_all().combine_chunks()
    last = table.num_columns - 1
    return table.remove_column(last), table.column(last)


@contextmanager
def bucket_dir(parent: Path) -> Iterator[Path]:
    """A new directory under parent for one diff's bucket files, removed afterwards
    (also on errors).  It is locked while in use, so that those a killed process left
    (unlocked, not new) are removed here."""
    parent.mkdir(parents=True, exist_ok=True)
    for old in parent.iterdir():
        _remove_if_left(old)
    path = Path(tempfile.mkdtemp(prefix="rowdiff-", dir=parent))
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


def _remove_if_left(path: Path) -> None:
    """Removes a bucket directory a killed process left."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        # the age check covers a directory just made, not locked yet
        if time.time() - os.fstat(fd).st_mtime > STALE:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            shutil.rmtree(path, ignore_errors=True)
    except BlockingIOError:
        pass    # in use
    finally:
        os.close(fd)
