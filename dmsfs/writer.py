"""FileWriter: the uncommitted state of one file being written.

Where new bytes wait, by how they arrive:

- appends at the end of the file go to the *ring*, an anonymous memory map of
  at most RING_CAP bytes holding the file's last bytes [ring_start, size).
  Writing there costs a memcpy into pages that are reused, where a fresh spool
  page would cost an allocation in the page cache;
- a background pass cuts, hashes, compresses and stores the stable part of a
  growing tail (the *precut*) and frees those ring bytes, so close() has only
  the last few MiB left to do and memory stays flat whatever the file size;
- any other write (random offset, overwrite, a gap) goes to the *spool*, a
  sparse unnamed file in the state dir, at its file offset; the ring is spilled
  there first if the write touches it.

`dirty` holds every uncommitted byte range; `spooled` the part of it that is in
the spool.  A file written front to back from empty may have a *stream*: every byte cut
is also handed to it, in order (validation while the file arrives); any other
kind of write drops it.  Committing re-chunks only the regions that changed: every committed
chunk a write touched (plus the last chunk when the file grew right after it,
so content-defined cut points come out as if the whole file had been chunked
anew) and keeps the other chunks.  Zero gaps past the old end become holes.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import trio

from .chunker import Chunker
from .chunkstore import ChunkStore
from .content import ChunkList, IntervalSet
from .index import HOLE, Location

WINDOW = 8 * 1024 * 1024
RING_CAP = 32 * 1024 * 1024
MIN_HOLE = 64 * 1024
INLINE_CUT = 128 * 1024


class Stream(Protocol):
    """What sees a file's bytes in order as they are cut."""

    def feed(self, data: bytes, wait: bool = True) -> None: ...

    def abort(self) -> None: ...


class RingPool:
    """Rings of finished writers, kept for the next ones: a reused ring costs no
    mapping and no page faults, which is most of a small file's write cost."""

    KEEP = 2
    WARM = 1 << 20  # bytes of a returned ring that stay resident

    def __init__(self) -> None:
        self._free: list[mmap.mmap] = []

    def get(self) -> mmap.mmap:
        return self._free.pop() if self._free else mmap.mmap(-1, RING_CAP)

    def put(self, ring: mmap.mmap) -> None:
        if len(self._free) >= self.KEEP:
            ring.close()
            return
        ring.madvise(mmap.MADV_DONTNEED, self.WARM, RING_CAP - self.WARM)
        self._free.append(ring)


@dataclass
class _Precut:
    """Chunks already cut and stored for [start, end) of the tail region."""

    start: int
    end: int
    chunks: list[tuple[bytes, int]] = field(default_factory=list)

    def content(self) -> ChunkList:
        return ChunkList(self.chunks)


@dataclass
class Commit:
    """What a commit produced, for the caller's index transaction."""

    content: ChunkList
    new_locations: dict[bytes, Location]


class FileWriter:
    """Not yet committed changes to one file."""

    def __init__(self, base: ChunkList, spool_dir: Path, chunks: ChunkStore,
                 chunker: Chunker, rings: RingPool) -> None:
        self.base = base
        self.size = base.size
        self.chunks = chunks
        self.chunker = chunker
        self.dirty = IntervalSet()
        self.spooled = IntervalSet()
        self.truncated = False
        self.lock = trio.Lock()
        self._spool_dir = spool_dir
        self._rings = rings
        self._spool: int | None = None
        self._ring: mmap.mmap | None = None
        self._rlo = self._rhi = 0          # live bytes are ring[_rlo:_rhi]
        self._ring_start = 0               # file offset of ring[_rlo]
        self._pre: _Precut | None = None
        self._locations: dict[bytes, Location] = {}
        self._cutting = False
        self._cut_done = trio.Event()
        self._precut_stale = False         # a write broke the precut: cut at commit only
        self._stream: Stream | None = None
        self._streamed = 0                 # bytes [0, _streamed) went to the stream

    @property
    def changed(self) -> bool:
        return bool(self.dirty) or self.truncated

    def close(self) -> None:
        self._drop_stream()
        if self._spool is not None:
            os.close(self._spool)
            self._spool = None
        if self._ring is not None:
            self._rings.put(self._ring)
            self._ring = None

    # ------------------------------------------------------------ where bytes live
    @property
    def _ring_len(self) -> int:
        return self._rhi - self._rlo

    def _spool_fd(self) -> int:
        if self._spool is None:
            # unnamed: nothing to clean up after a crash (uncommitted data is dropped)
            self._spool = os.open(self._spool_dir, os.O_TMPFILE | os.O_RDWR, 0o600)
        return self._spool

    def _to_spool(self, offset: int, data: bytes | memoryview) -> None:
        os.pwrite(self._spool_fd(), data, offset)
        self.spooled.add(offset, offset + len(data))

    def _spill_ring(self) -> None:
        """Move the ring's bytes to the spool (no cut may be running)."""
        if self._ring_len and self._ring is not None:
            self._to_spool(self._ring_start, memoryview(self._ring)[self._rlo:self._rhi])
        self._rlo = self._rhi = 0

    def _ring_append(self, data: bytes) -> bool:
        """Append at EOF into the ring if it fits (no cut may be running)."""
        if self._ring is None:
            self._ring = self._rings.get()
        if not self._ring_len:
            self._rlo = self._rhi = 0
            self._ring_start = self.size
        if self._rhi + len(data) > RING_CAP and self._rlo:
            self._ring.move(0, self._rlo, self._ring_len)  # reuse the same pages
            self._rhi -= self._rlo
            self._rlo = 0
        if self._rhi + len(data) > RING_CAP:
            return False
        self._ring[self._rhi:self._rhi + len(data)] = data
        self._rhi += len(data)
        return True

    async def _quiesce(self) -> None:
        """Wait until no background cut reads the ring."""
        while self._cutting:
            await self._cut_done.wait()

    def _pieces(self, start: int, end: int) -> Iterator[tuple[int, int, str]]:
        """Split [start, end) by where its bytes are: spool, ring, pre, base or zero."""
        base_end = self.base.size
        for a, b, dirty in self.dirty.pieces(start, end):
            if not dirty:
                if a < base_end:
                    yield a, min(b, base_end), "base"
                if b > base_end:
                    yield max(a, base_end), b, "zero"
                continue
            for c, d, spooled in self.spooled.pieces(a, b):
                if spooled:
                    yield c, d, "spool"
                    continue
                ring_from = self._ring_start if self._ring_len else d
                if c < ring_from:
                    yield c, min(d, ring_from), "pre"
                if d > ring_from:
                    yield max(c, ring_from), d, "ring"

    def _spans(self, a: int, b: int, kind: str) -> Iterator[tuple[bytes, int, int]]:
        """(chunk id, from, to) covering [a, b) of a "base" or "pre" piece."""
        if kind == "base":
            content, shift = self.base, 0
        else:
            assert self._pre is not None, "dirty bytes outside spool, ring and precut"
            content, shift = self._pre.content(), self._pre.start
        for _, _, cid, lo, hi in content.spans(a - shift, b - shift):
            yield cid, lo, hi

    def _direct(self, a: int, b: int, kind: str) -> bytes:
        """Bytes of a "spool", "ring" or "zero" piece."""
        if kind == "spool":
            return os.pread(self._spool_fd(), b - a, a)
        if kind == "ring":
            lo = self._rlo + a - self._ring_start
            return self._ring[lo:lo + b - a]  # type: ignore[index]
        return bytes(b - a)

    def _layout(self, offset: int, end: int) -> Iterator[bytes | tuple[bytes, int, int]]:
        """[offset, end) as bytes where they are at hand, else (chunk id, from, to)."""
        for a, b, kind in self._pieces(offset, min(end, self.size)):
            if kind in ("base", "pre"):
                for cid, lo, hi in self._spans(a, b, kind):
                    yield bytes(hi - lo) if cid == HOLE else (cid, lo, hi)
            else:
                yield self._direct(a, b, kind)

    async def read(self, offset: int, length: int) -> bytes:
        """Current content, committed or not."""
        # the layout is taken whole before the first await: a write or commit that
        # lands while chunks are fetched must not mix two states in one read
        layout = list(self._layout(offset, offset + length))
        parts: list[bytes] = []
        for part in layout:
            if isinstance(part, tuple):
                cid, lo, hi = part
                part = (await self.chunks.get(cid))[lo:hi]
            parts.append(part)
        return b"".join(parts)

    def _read_sync(self, offset: int, length: int) -> bytes | memoryview:
        """read() for worker threads: committed chunks are fetched, not cached, and a
        range wholly in the ring comes back as a view of it (no copy)."""
        end = offset + length
        if self._ring_len and self._ring_start <= offset and not self.spooled.overlaps(
                offset, end):
            lo = self._rlo + offset - self._ring_start
            return memoryview(self._ring)[lo:lo + length]  # type: ignore[arg-type]
        return b"".join(part if isinstance(part, bytes)
                        else self.chunks.fetch(part[0])[part[1]:part[2]]
                        for part in self._layout(offset, end))

    # ------------------------------------------------------------ changes
    async def write(self, offset: int, data: bytes) -> None:
        """Record a write: appends into the ring, anything else into the spool."""
        end = offset + len(data)
        if offset != self.size:
            self._drop_stream()    # bytes it saw may change, or a gap comes
        if offset != self.size or not self._fits(len(data)):
            await self._quiesce()  # what follows may move bytes a running cut reads
        if offset == self.size:
            if not self._ring_append(data):
                self._spill_ring()
                if not self._ring_append(data):
                    self._to_spool(offset, data)
        else:
            if self._ring_len and (offset > self.size or end > self._ring_start):
                self._spill_ring()
            self._to_spool(offset, data)
        self.dirty.add(offset, end)
        self.size = max(self.size, end)

    # ------------------------------------------------------------ the stream
    @property
    def can_stream(self) -> bool:
        """Nothing is committed or cut yet: a stream would see every byte."""
        return self._stream is None and not self.base.size and self._pre is None

    def stream_to(self, stream: Stream) -> None:
        """Hand every byte to stream as it is cut (only while can_stream)."""
        assert self.can_stream
        self._stream, self._streamed = stream, 0

    def take_stream(self) -> Stream | None:
        """After commit(): the stream, if it saw the whole file in order; else it
        is aborted and None comes back."""
        stream, whole = self._stream, self._streamed == self.size
        self._stream = None
        if stream is not None and not whole:
            stream.abort()
            return None
        return stream

    def _drop_stream(self) -> None:
        if self._stream is not None:
            self._stream.abort()
            self._stream = None

    def _fits(self, n: int) -> bool:
        """An append fits the ring as it is: nothing a running cut reads moves."""
        return self._ring_len > 0 and self._rhi + n <= RING_CAP

    async def _materialize_pre(self, end: int) -> None:
        """Copy the precut's bytes below end into the spool and forget the precut."""
        pre, self._pre = self._pre, None
        if pre is None:
            return
        pos = pre.start
        for cid, n in pre.chunks:
            if pos >= end:
                break
            data = await self.chunks.get(cid)
            keep = min(n, end - pos)
            if not self.spooled.overlaps(pos, pos + keep):
                self._to_spool(pos, data[:keep])
            else:  # only the bytes no later write replaced
                # a list: _to_spool merges into self.spooled, which pieces() walks
                for a, b, spooled in list(self.spooled.pieces(pos, pos + keep)):
                    if not spooled:
                        self._to_spool(a, data[a - pos:b - pos])
            pos += n

    async def truncate(self, size: int) -> None:
        """Shrink or grow to size; grown bytes read as zeros."""
        await self._quiesce()
        self._drop_stream()
        if size > self.size and self._ring_len:
            self._spill_ring()  # the ring must end at EOF
        if size < self.size:
            if self._ring_len:
                if size <= self._ring_start:
                    self._rlo = self._rhi = 0
                else:
                    self._rhi = self._rlo + size - self._ring_start
            if self._pre is not None and size < self._pre.end:
                await self._materialize_pre(size)
            if self._spool is not None:
                os.ftruncate(self._spool, size)
            self.dirty.clip(size)
            self.spooled.clip(size)
            if size < self.base.size:
                i = self.base.index_at(size)
                keep_from = self.base.offsets[i]
                if keep_from < size:
                    # the cut chunk's surviving head moves to the spool
                    head = await self.read(keep_from, size - keep_from)
                    self._to_spool(keep_from, head)
                    self.dirty.add(keep_from, size)
                self.base = self.base.prefix(i)
        self.size = size
        self.truncated = True

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
        for a, b, inside in dirty.pieces(base.size, size):
            add("hole" if not inside and b - a >= MIN_HOLE else "cut", -1, a, b)
        return pieces

    def tail_region(self) -> tuple[int, int] | None:
        """The region that ends at EOF and is to be cut, if any."""
        pieces = self._plan()
        if pieces and pieces[-1][0] == "cut" and pieces[-1][3] == self.size:
            return pieces[-1][2], pieces[-1][3]
        return None

    def _cut_range(self, start: int, end: int, at_eof: bool, inline: bool = False
                   ) -> list[tuple[bytes, int]]:
        """Cut and store [start, end) (worker thread, or inline on the trio thread
        for a small range); at_eof=False leaves the unfinished last chunk out.
        Returns the chunks made."""
        made: list[tuple[bytes, int]] = []
        pos = start
        while pos < end:
            stop = min(end, pos + WINDOW)
            buf = self._read_sync(pos, stop - pos)
            lengths = self.chunker.cut(buf, at_eof=at_eof and stop == end)
            if not lengths:
                break  # not at EOF: the remainder waits for more data
            at = 0
            for n in lengths:
                cid, loc = self.chunks.put(buf[at : at + n])
                if loc is not None:
                    self._locations[cid] = loc
                made.append((cid, n))
                at += n
            stream = self._stream      # once: a write may drop it meanwhile
            if stream is not None and pos == self._streamed:
                # a copy: ring bytes are reused once cut; the trio thread never waits
                stream.feed(bytes(buf[:at]), wait=not inline)
                self._streamed += at
            pos += at
            del buf
        return made

    def _cut_limiter(self) -> trio.CapacityLimiter:
        """The limiter of a cut's thread.  A cut that feeds a stream goes at the
        pace of its reader and mostly waits for it: holding one of the CPU slots
        meanwhile would idle a core that other cuts and seals could use."""
        if self._stream is None:
            return self.chunks.cpu
        return trio.to_thread.current_default_thread_limiter()

    def _cuttable(self, start: int, end: int) -> bool:
        """True when [start, end) can be cut on the trio thread: small and spooled
        or in the ring, so no committed chunk must be fetched."""
        return end - start <= INLINE_CUT and all(
            kind in ("spool", "ring") for _, _, kind in self._pieces(start, end))

    def wants_background_cut(self) -> bool:
        """True when enough stable bytes wait at the tail to cut them now."""
        if self._cutting or self._precut_stale:
            return False
        start = self._pre.end if self._pre else 0
        return self.size - start >= WINDOW + self.chunker.params.max_size

    async def background_cut(self) -> None:
        """Cut and store the stable part of the tail region (run as a task)."""
        region = self.tail_region()
        if region is None or self._cutting:
            return
        pre = self._pre
        if pre is None:
            pre = self._pre = _Precut(region[0], region[0])
        elif pre.start != region[0] or self.spooled.overlaps(pre.start, pre.end):
            self._precut_stale = True  # it no longer leads the tail: the commit cuts the rest
            return
        stop = self.size - self.chunker.params.max_size
        if stop - pre.end < WINDOW:
            return
        self._cutting = True
        try:
            made = await trio.to_thread.run_sync(self._cut_range, pre.end, stop, False,
                                                 limiter=self._cut_limiter())
            pre.chunks.extend(made)
            pre.end += sum(n for _, n in made)
            if self._ring_len and pre.end > self._ring_start:
                drop = min(pre.end - self._ring_start, self._ring_len)
                self._rlo += drop
                self._ring_start += drop
            self.chunks.wake_sealer()
        finally:
            self._cutting = False
            self._cut_done.set()
            self._cut_done = trio.Event()

    async def commit(self) -> Commit:
        """Cut every changed region and return the file's new content."""
        await self._quiesce()
        pre = self._pre
        out: list[tuple[bytes, int]] = []
        for kind, i, a, b in self._plan():
            if kind == "keep":
                out.append(self.base.chunks[i])
            elif kind == "hole":
                out.append((HOLE, b - a))
            else:
                if (pre is not None and pre.start == a and pre.end <= b
                        and not self.spooled.overlaps(pre.start, pre.end)):
                    out.extend(pre.chunks)
                    a = pre.end
                if self._cuttable(a, b):
                    # hashing a small range costs less than the hop to a thread
                    out.extend(self._cut_range(a, b, True, inline=True))
                else:
                    out.extend(await trio.to_thread.run_sync(self._cut_range, a, b, True,
                                                             limiter=self._cut_limiter()))
        self.chunks.wake_sealer()
        return Commit(ChunkList(out), dict(self._locations))

    def committed(self, content: ChunkList) -> None:
        """The caller stored `content`: it becomes the new base."""
        self.base = content
        self.size = content.size
        self.dirty.clear()
        self.spooled.clear()
        if self._spool is not None:
            os.ftruncate(self._spool, 0)
        self._rlo = self._rhi = 0
        self.truncated = False
        self._pre = None
        self._precut_stale = False
        self._locations.clear()
        self._drop_stream()
