"""A file's content as a list of chunks, and the byte ranges a writer changed."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from itertools import accumulate

from .index import HOLE


class ChunkList:
    """Chunk ids and lengths in file order, with offsets for lookup by position."""

    __slots__ = ("chunks", "offsets")

    def __init__(self, chunks: list[tuple[bytes, int]] | None = None) -> None:
        self.chunks = chunks or []
        self.offsets = [0, *accumulate(n for _, n in self.chunks)]

    @property
    def size(self) -> int:
        return self.offsets[-1]

    def __len__(self) -> int:
        return len(self.chunks)

    def index_at(self, offset: int) -> int:
        """Index of the chunk holding byte `offset` (offset < size)."""
        return bisect.bisect_right(self.offsets, offset) - 1

    def spans(self, start: int, end: int) -> Iterator[tuple[int, int, bytes, int, int]]:
        """(index, chunk offset, chunk id, from, to) for chunks overlapping [start, end);
        from/to are positions inside the chunk."""
        end = min(end, self.size)
        if start >= end:
            return
        i = self.index_at(start)
        while i < len(self.chunks) and self.offsets[i] < end:
            off = self.offsets[i]
            cid, n = self.chunks[i]
            yield i, off, cid, max(start - off, 0), min(end - off, n)
            i += 1

    def prefix(self, count: int) -> ChunkList:
        return ChunkList(self.chunks[:count])

    def holes_only(self) -> bool:
        return all(cid == HOLE for cid, _ in self.chunks)


class IntervalSet:
    """Disjoint, sorted, merged half-open byte ranges."""

    __slots__ = ("starts", "ends")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def __bool__(self) -> bool:
        return bool(self.starts)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self.starts, self.ends, strict=True))

    def add(self, start: int, end: int) -> None:
        if start >= end:
            return
        i = bisect.bisect_left(self.ends, start)      # first range ending at/after start
        j = bisect.bisect_right(self.starts, end)     # ranges starting at/before end
        if i < j:
            start = min(start, self.starts[i])
            end = max(end, self.ends[j - 1])
        self.starts[i:j] = [start]
        self.ends[i:j] = [end]

    def clip(self, size: int) -> None:
        """Forget everything at or beyond size."""
        i = bisect.bisect_left(self.ends, size)
        del self.starts[i + 1 :], self.ends[i + 1 :]
        if i < len(self.starts):
            if self.starts[i] >= size:
                del self.starts[i], self.ends[i]
            else:
                self.ends[i] = size

    def overlaps(self, start: int, end: int) -> bool:
        i = bisect.bisect_right(self.ends, start)
        return i < len(self.starts) and self.starts[i] < end

    def touches(self, start: int, end: int) -> bool:
        """Overlaps [start, end] with the end included (an append right after it)."""
        i = bisect.bisect_left(self.ends, start)
        return i < len(self.starts) and self.starts[i] <= end

    def pieces(self, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
        """Split [start, end) into (from, to, inside) runs."""
        pos = start
        i = bisect.bisect_right(self.ends, start)
        while pos < end:
            if i < len(self.starts) and self.starts[i] <= pos:
                stop = min(self.ends[i], end)
                yield pos, stop, True
                i += 1
            else:
                stop = min(self.starts[i] if i < len(self.starts) else end, end)
                yield pos, stop, False
            pos = stop

    def clear(self) -> None:
        self.starts.clear()
        self.ends.clear()
