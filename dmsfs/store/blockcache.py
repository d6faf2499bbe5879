"""A local disk cache of a remote store's packs, in fixed-size blocks.

Packs never change, so any range of one may be kept for ever; the cache keeps
blocks of them (like JuiceFS) in the state dir, up to a size limit, evicting
the least recently used.  Block files survive restarts (their mtimes give the
order back).  A miss fetches the whole block: neighbouring small chunks come
with it, so a random walk over small files costs a request per block, not per
file.  Sequential readers get read-ahead: the next blocks of the same pack are
fetched in parallel, so a cold read is not one round trip per chunk.  Packs
run a little over their target size, so a short tail joins the block before
it: a pack costs two requests, not three.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from .base import Layer, ObjectStore

log = logging.getLogger(__name__)

BLOCK = 8 << 20     # within the 8-16 MiB ranged GETs S3 serves best
READ_AHEAD_BLOCKS = 3
FETCHERS = 8
TMP = ".tmp"


def _cacheable(key: str) -> bool:
    return key.startswith("packs/")


class BlockCache(Layer):
    """Ranged reads of packs through a bounded on-disk LRU of blocks."""

    def __init__(self, backend: ObjectStore, cache_dir: Path, max_bytes: int,
                 block_size: int = BLOCK) -> None:
        super().__init__(backend)
        self.dir = cache_dir
        self.max_bytes = max_bytes
        self.block = block_size
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._lru: OrderedDict[str, int] = OrderedDict()   # block file name -> size
        self._inflight: dict[str, Future[bytes]] = {}
        self._reading: dict[str, int] = {}     # block file name -> preads under way
        self._last_block: dict[str, int] = {}                # per pack, for read-ahead
        self._sizes: dict[str, int] = {}
        # the index knows every pack's size: asking it saves a request per pack
        self.size_hint: Callable[[str], int | None] = lambda key: None
        self._pool = ThreadPoolExecutor(FETCHERS, thread_name_prefix="fetch")
        self._load()

    def _load(self) -> None:
        (self.dir / TMP).mkdir(parents=True, exist_ok=True)
        for leftover in (self.dir / TMP).iterdir():
            leftover.unlink()
        found = []
        for entry in os.scandir(self.dir):
            if entry.is_file():
                st = entry.stat()
                found.append((st.st_mtime_ns, entry.name, st.st_size))
        for _, name, size in sorted(found):
            self._lru[name] = size
            self.bytes += size
        with self._lock:
            self._evict(0)
        if found:
            log.info("chunk cache: %d blocks, %d bytes from a previous run", len(self._lru),
                     self.bytes)

    # ------------------------------------------------------------ blocks
    def _name(self, key: str, block: int) -> str:
        return f"{key.replace('/', '_')}.{block}"

    def _evict(self, room: int) -> None:
        """Drop least recently used blocks until room more bytes fit (lock held).

        A block being read stays: its space would stay taken until the reader
        closed it, and the limit is on the disk, not on our count."""
        kept = []
        while self._lru and self.bytes + room > self.max_bytes:
            name, size = self._lru.popitem(last=False)
            if self._reading.get(name):
                kept.append((name, size))
                continue
            self.bytes -= size
            (self.dir / name).unlink(missing_ok=True)
        for name, size in reversed(kept):
            self._lru[name] = size
            self._lru.move_to_end(name, last=False)

    def _cached(self, name: str, offset: int, length: int, block_len: int) -> bytes | None:
        with self._lock:
            if self._lru.get(name) != block_len:   # absent, or cut another way once
                return None
            self._lru.move_to_end(name)
            self._reading[name] = self._reading.get(name, 0) + 1
        try:
            return self._pread(name, offset, length)
        finally:
            with self._lock:
                if self._reading[name] == 1:
                    del self._reading[name]
                else:
                    self._reading[name] -= 1

    def _pread(self, name: str, offset: int, length: int) -> bytes | None:
        try:
            fd = os.open(self.dir / name, os.O_RDONLY)
        except FileNotFoundError:   # removed behind our back
            with self._lock:
                size = self._lru.pop(name, None)
                if size is not None:
                    self.bytes -= size
            return None
        try:
            os.utime(fd)     # the LRU order after a restart
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def _last(self, key: str) -> int:
        """The index of a pack's last block, which takes in a tail under half a block."""
        size = self._size(key)
        last = max(0, (size - 1) // self.block)
        if last and size - last * self.block < self.block // 2:
            last -= 1
        return last

    def _span(self, key: str, block: int) -> tuple[int, int]:
        """Where a block starts in its pack, and its length."""
        start = block * self.block
        if block == self._last(key):
            return start, self._size(key) - start
        return start, self.block

    def _fetch(self, key: str, block: int, name: str) -> bytes:
        data = self.backend.get_range(key, *self._span(key, block))
        if len(data) > self.max_bytes:
            return data
        with self._lock:     # room first: the limit holds for blocks on their way in too
            self._evict(len(data))
            if self.bytes + len(data) > self.max_bytes:
                return data      # the room is promised to blocks still being written
            self.bytes += len(data)
        tmp = self.dir / TMP / name
        try:
            tmp.write_bytes(data)
            os.rename(tmp, self.dir / name)
            with self._lock:
                old = self._lru.pop(name, None)
                if old is not None:       # a block file cut another way once
                    self.bytes -= old
                self._lru[name] = len(data)
        except OSError as e:    # a full disk costs the cache, not the read
            tmp.unlink(missing_ok=True)
            with self._lock:
                self.bytes -= len(data)
            log.warning("chunk cache: cannot keep a block: %s", e)
        return data

    def _future(self, key: str, block: int) -> Future[bytes] | None:
        """The fetch of a block, started now unless it runs already; None when the
        block is in the cache (it may have arrived since the caller looked)."""
        name = self._name(key, block)
        block_len = self._span(key, block)[1]
        with self._lock:
            if self._lru.get(name) == block_len:
                return None
            fut = self._inflight.get(name)
            if fut is not None:
                return fut
            fut = self._pool.submit(self._fetch, key, block, name)
            self._inflight[name] = fut
        # outside the lock: a fetch already done runs the callback here, at once
        fut.add_done_callback(lambda done: self._done(name, done))
        return fut

    def _done(self, name: str, fut: Future[bytes]) -> None:
        with self._lock:
            if self._inflight.get(name) is fut:
                del self._inflight[name]

    def _read_ahead(self, key: str, first: int, last: int) -> None:
        """After a sequential step, start fetching the blocks that follow."""
        with self._lock:
            prev = self._last_block.get(key)
            self._last_block[key] = last
            if len(self._last_block) > 1024:
                self._last_block.pop(next(iter(self._last_block)))
        if prev is not None and prev <= first <= prev + 1:
            # the pack's size may take a request: learn it off the reader's thread
            self._pool.submit(self._fetch_ahead, key, last)

    def _fetch_ahead(self, key: str, last: int) -> None:
        for block in range(last + 1, min(last + READ_AHEAD_BLOCKS, self._last(key)) + 1):
            self._future(key, block)

    def _size(self, key: str) -> int:
        size = self._sizes.get(key)
        if size is None:
            size = self.size_hint(key)
            if size is None:
                size = self.backend.size(key)
            self._sizes[key] = size
        return size

    def _blocks(self, key: str, offset: int, length: int) -> range:
        """The blocks that hold a byte range of a pack."""
        last = self._last(key)
        return range(min(offset // self.block, last),
                     min((offset + max(length, 1) - 1) // self.block, last) + 1)

    # ------------------------------------------------------------ the interface
    def get_range(self, key: str, offset: int, length: int) -> bytes:
        if offset < 0 or not _cacheable(key):
            return self.backend.get_range(key, offset, length)
        blocks = self._blocks(key, offset, length)
        self._read_ahead(key, blocks[0], blocks[-1])
        parts = []
        for block in blocks:
            at, block_len = self._span(key, block)
            start = max(offset, at) - at
            stop = min(offset + length, at + block_len) - at
            if stop <= start:
                break        # past the end of the object
            parts.append(self._read_block(key, block, start, stop, block_len))
        return b"".join(parts)

    def _read_block(self, key: str, block: int, start: int, stop: int, block_len: int
                    ) -> bytes:
        name = self._name(key, block)
        while True:      # again if it was evicted between the looks
            data = self._cached(name, start, stop - start, block_len)
            if data is not None:
                self.hits += 1
                return data
            fut = self._future(key, block)
            if fut is not None:
                self.misses += 1
                return fut.result()[start:stop]

    def prefetch(self, key: str, offset: int, length: int) -> None:
        if not _cacheable(key) or offset < 0:
            return
        if key not in self._sizes and self.size_hint(key) is None:
            return   # its size would take a request, on a thread that must not wait
        for block in self._blocks(key, offset, length):
            self._future(key, block)

    def size(self, key: str) -> int:
        return self._size(key) if _cacheable(key) else self.backend.size(key)

    def delete(self, key: str) -> None:
        self.backend.delete(key)
        with self._lock:
            for name in [n for n in self._lru if n.startswith(self._name(key, 0)[:-1])]:
                self.bytes -= self._lru.pop(name)
                (self.dir / name).unlink(missing_ok=True)

    def stats(self) -> dict[str, int]:
        return {"bytes": self.bytes, "max_bytes": self.max_bytes, "hits": self.hits,
                "misses": self.misses}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        super().close()
