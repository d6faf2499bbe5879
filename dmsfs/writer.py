"""FileWriter: the uncommitted state of one file being written.

New bytes go to a sparse spool file in the state dir at their file offsets; the
IntervalSet `dirty` says which ranges of the spool hold data.  Committing
re-chunks only the regions that changed: every committed chunk a write touched
(plus the last chunk when the file grew right after it, so content-defined
boundaries come out as if the whole file had been chunked anew), and leaves the
other chunks as they are.  Zero gaps past the old end become holes.

A large sequential write is chunked while it arrives: once enough bytes are
ahead of the tail region's cursor, a background pass cuts and stores the stable
part, so close() has only the last few MiB left to do and memory stays flat.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import trio

from .chunker import Chunker
from .chunkstore import ChunkStore
from .content import ChunkList, IntervalSet
from .index import HOLE, Location

WINDOW = 8 * 1024 * 1024
MIN_HOLE = 64 * 1024
INLINE_CUT = 128 * 1024


@dataclass
class _Precut:
    """Chunks already cut and stored for [start, end) of the tail region."""

    start: int
    end: int
    chunks: list[tuple[bytes, int]] = field(default_factory=list)


@dataclass
class Commit:
    """What a commit produced, for the caller's index transaction."""

    content: ChunkList
    new_locations: dict[bytes, Location]


class FileWriter:
    """Spooled, not yet committed changes to one file."""

    def __init__(self, base: ChunkList, spool_dir: Path, chunks: ChunkStore,
                 chunker: Chunker) -> None:
        self.base = base
        self.size = base.size
        self.chunks = chunks
        self.chunker = chunker
        # An unnamed file: nothing to clean up after a crash (uncommitted data is dropped).
        self.spool = os.open(spool_dir, os.O_TMPFILE | os.O_RDWR, 0o600)
        self.dirty = IntervalSet()
        self.truncated = False
        self.lock = trio.Lock()
        self._pre: _Precut | None = None
        self._locations: dict[bytes, Location] = {}
        self._cutting = False
        self._cut_done = trio.Event()

    @property
    def changed(self) -> bool:
        return bool(self.dirty) or self.truncated

    def close(self) -> None:
        os.close(self.spool)

    # ------------------------------------------------------------ changes
    def write(self, offset: int, data: bytes) -> None:
        """Record a write (a plain write into the page cache: fast, done inline)."""
        os.pwrite(self.spool, data, offset)
        end = offset + len(data)
        if self._pre is not None and offset < self._pre.end:
            self._pre = None
        self.dirty.add(offset, end)
        self.size = max(self.size, end)

    async def truncate(self, size: int) -> None:
        """Shrink or grow to size; grown bytes read as zeros."""
        if size < self.size:
            os.ftruncate(self.spool, size)
            self.dirty.clip(size)
            if self._pre is not None and size < self._pre.end:
                self._pre = None
            if size < self.base.size:
                i = self.base.index_at(size)
                keep_from = self.base.offsets[i]
                if keep_from < size:
                    # the cut chunk's surviving head moves to the spool
                    head = await self.read(keep_from, size - keep_from)
                    os.pwrite(self.spool, head, keep_from)
                    self.dirty.add(keep_from, size)
                self.base = self.base.prefix(i)
        self.size = size
        self.truncated = True

    # ------------------------------------------------------------ reading back
    async def read(self, offset: int, length: int) -> bytes:
        """Current content, committed or not."""
        end = min(offset + length, self.size)
        parts: list[bytes] = []
        for a, b, spooled in self.dirty.pieces(offset, end):
            if spooled:
                parts.append(os.pread(self.spool, b - a, a))
                continue
            pos = a
            for _, off, cid, lo, hi in self.base.spans(a, b):
                data = bytes(hi - lo) if cid == HOLE else (await self.chunks.get(cid))[lo:hi]
                parts.append(data)
                pos = off + hi
            if pos < b:
                parts.append(bytes(b - pos))
        return b"".join(parts)

    def _read_sync(self, offset: int, length: int) -> bytes:
        """read() for worker threads: committed chunks are fetched, not cached."""
        end = offset + length
        parts: list[bytes] = []
        for a, b, spooled in self.dirty.pieces(offset, end):
            if spooled:
                parts.append(os.pread(self.spool, b - a, a))
                continue
            pos = a
            for _, off, cid, lo, hi in self.base.spans(a, b):
                parts.append(bytes(hi - lo) if cid == HOLE else self.chunks.fetch(cid)[lo:hi])
                pos = off + hi
            if pos < b:
                parts.append(bytes(b - pos))
        return b"".join(parts)

    # ------------------------------------------------------------ chunking
    def _plan(self) -> list[tuple[str, int, int, int]]:
        """The new layout as pieces: ("keep", i, off, end), ("cut", -, off, end),
        ("hole", -, off, end), in file order."""
        base, dirty, size = self.base, self.dirty, self.size
        pieces: list[tuple[str, int, int, int]] = []

        def add(kind: str, i: int, a: int, b: int) -> None:
            if pieces and kind == "cut" and pieces[-1][0] == "cut" and pieces[-1][3] == a:
                pieces[-1] = ("cut", -1, pieces[-1][2], b)
            else:
                pieces.append((kind, i, a, b))

        last = len(base) - 1
        for i in range(len(base)):
            a, b = base.offsets[i], base.offsets[i + 1]
            touched = dirty.touches(a, b) if i == last else dirty.overlaps(a, b)
            add("cut" if touched else "keep", i, a, b)
        for a, b, spooled in dirty.pieces(base.size, size):
            add("hole" if not spooled and b - a >= MIN_HOLE else "cut", -1, a, b)
        return pieces

    def tail_region(self) -> tuple[int, int] | None:
        """The region that ends at EOF and is to be cut, if any."""
        pieces = self._plan()
        if pieces and pieces[-1][0] == "cut" and pieces[-1][3] == self.size:
            return pieces[-1][2], pieces[-1][3]
        return None

    def _cut_range(self, start: int, end: int, at_eof: bool) -> list[tuple[bytes, int]]:
        """Cut and store [start, end) (worker thread); at_eof=False leaves the
        unfinished last chunk out.  Returns the chunks made."""
        made: list[tuple[bytes, int]] = []
        pos = start
        while pos < end:
            stop = min(end, pos + WINDOW)
            buf = memoryview(self._read_sync(pos, stop - pos))
            final = at_eof and stop == end
            lengths = self.chunker.cut(buf, at_eof=final)
            if not lengths:
                if final:
                    break
                if stop == end:
                    break  # not at EOF: the remainder waits for more data
                # a single chunk longer than the window cannot happen: WINDOW > max_size
                raise AssertionError("chunker made no progress")
            at = 0
            for n in lengths:
                cid, loc = self.chunks.put(buf[at : at + n])
                if loc is not None:
                    self._locations[cid] = loc
                made.append((cid, n))
                at += n
            pos += at
        return made

    def _spooled(self, start: int, end: int) -> bool:
        """True when [start, end) needs no committed chunk (all in the spool)."""
        return all(inside for _, _, inside in self.dirty.pieces(start, end))

    def wants_background_cut(self) -> bool:
        """True when enough stable bytes wait at the tail to cut them now."""
        if self._cutting:
            return False
        start = self._pre.end if self._pre else 0
        return self.size - start >= WINDOW + self.chunker.params.max_size

    async def background_cut(self) -> None:
        """Cut and store the stable part of the tail region (run as a task)."""
        self._cutting = True
        try:
            region = self.tail_region()
            if region is None:
                return
            if self._pre is None or self._pre.start != region[0]:
                self._pre = _Precut(region[0], region[0])
            pre = self._pre
            stop = self.size - self.chunker.params.max_size
            if stop - pre.end < WINDOW:
                return
            made = await trio.to_thread.run_sync(self._cut_range, pre.end, stop, False,
                                                 limiter=self.chunks.cpu)
            if self._pre is pre:  # no write landed in what we cut meanwhile
                pre.chunks.extend(made)
                pre.end += sum(n for _, n in made)
            self.chunks.wake_sealer()
        finally:
            self._cutting = False
            self._cut_done.set()
            self._cut_done = trio.Event()

    async def commit(self) -> Commit:
        """Cut every changed region and return the file's new content."""
        while self._cutting:
            await self._cut_done.wait()
        pieces = self._plan()
        pre = self._pre
        out: list[tuple[bytes, int]] = []
        for kind, i, a, b in pieces:
            if kind == "keep":
                out.append(self.base.chunks[i])
            elif kind == "hole":
                out.append((HOLE, b - a))
            else:
                if pre is not None and pre.start == a and pre.end <= b:
                    out.extend(pre.chunks)
                    a = pre.end
                if b - a <= INLINE_CUT and self._spooled(a, min(b, self.base.size)):
                    # hashing a small spooled range costs less than the hop to a thread
                    out.extend(self._cut_range(a, b, True))
                else:
                    out.extend(await trio.to_thread.run_sync(self._cut_range, a, b, True,
                                                             limiter=self.chunks.cpu))
        self.chunks.wake_sealer()
        return Commit(ChunkList(out), dict(self._locations))

    def committed(self, content: ChunkList) -> None:
        """The caller stored `content`: it becomes the new base."""
        self.base = content
        self.size = content.size
        self.dirty.clear()
        os.ftruncate(self.spool, 0)
        self.truncated = False
        self._pre = None
        self._locations.clear()
