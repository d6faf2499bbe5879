"""Chunk storage: deduplication, staging, sealing into packs, verified reads.

Write side: put() hashes a chunk, skips it if the index or the staging area
already has it, else appends it raw to the open staging file.  A sealer task
compresses full (or idle) staging files into packs in worker threads, one pack
per thread, so compression runs on every core beside the FUSE loop and never
delays a close(); it moves each pack into the store under the staging id and
repoints the chunks' index entries from staging to the pack in one LMDB
transaction.  Big files are cut and hashed in worker threads while they stream
in.

Read side: get() serves a chunk from the decompressed-chunk cache, else fetches
its blob (staging file or ranged read of a pack) in a worker thread, decodes
it and checks its blake3 id, so damage is an error (EIO), never wrong bytes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

from . import staging
from .background import BackgroundThreads
from .cache import ChunkCache
from .codec import FOOTER, PackEntry, decode_pack_footer, decode_pack_index, open_blob
from .codec import chunk_id as compute_id
from .config import StoreConfig
from .errors import Corrupt, NoSuchObject, out_of_space
from .index import Index, Location
from .staging import StagingFile
from .store.base import ObjectStore

log = logging.getLogger(__name__)

FLAG_STAGED = 0x80
IDLE_SEAL_SECONDS = 2.0
# staged bytes up to which packs are compressed at low priority (see _compress)
BACKGROUND_BACKLOG = 1 << 30
# a small chunk from local disk is read and checked on the calling thread: a
# worker thread's round trip costs more than the read itself
INLINE_FETCH = 128 * 1024


def pack_key(pack_id: bytes) -> str:
    h = pack_id.hex()
    return f"packs/{h[:2]}/{h}"


class ChunkStore:
    """Content-addressed chunks over the object store, staged locally first."""

    def __init__(self, store: ObjectStore, index: Index, config: StoreConfig,
                 state_dir: Path, cache_bytes: int) -> None:
        self.store = store
        self.index = index
        self.config = config
        self.staging_dir = state_dir / "staging"
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        self.cache = ChunkCache(cache_bytes)
        cores = max(2, os.cpu_count() or 2)
        self.cpu = trio.CapacityLimiter(cores)
        self.compressors = BackgroundThreads(cores, "compress")
        # threads waiting on a remote store mostly sleep: more of them hide latency
        self.io = trio.CapacityLimiter(24 if store.remote else 8)
        self._lock = threading.Lock()
        self._pending: dict[bytes, Location] = {}   # staged, maybe not yet in LMDB
        # every staging file not yet removed, by id: readers of staged chunks use
        # its open descriptor, which stays valid while the file moves into the store
        self._containers: dict[bytes, StagingFile] = {}
        self._full: list[StagingFile] = []
        # packs stored but not yet adopted (the index could not commit): a retry
        # adopts them without sealing and storing them again
        self._stored: dict[bytes, tuple[list[PackEntry], int]] = {}
        self._current: StagingFile | None = None
        self._last_append = 0.0
        self._fetching: dict[bytes, trio.Event] = {}
        self._wake = trio.Event()
        self._sealing = 0
        self._sealed_event = trio.Event()
        self._nursery: trio.Nursery | None = None
        # packs adopted while a reindex runs, one list per reindex (see adoptions())
        self._adopt_logs: list[list[tuple[bytes, int, list[PackEntry]]]] = []

    # ------------------------------------------------------------ write side
    def put(self, data: bytes | memoryview) -> tuple[bytes, Location | None]:
        """Store one chunk (blocking; call from a worker thread, or inline for small ones).

        Returns its id and, when this call staged it, its new location, which the
        caller's commit must record in the index.
        """
        cid = compute_id(data)
        if self._pending_or_indexed(cid) is not None:
            return cid, None
        with self._lock:
            if cid in self._pending:
                return cid, None
            if self._current is None:
                self._current = StagingFile(self.staging_dir, os.urandom(32))
                self._containers[self._current.id] = self._current
            cur = self._current
            e = cur.append(cid, data)
            loc = Location(cur.id, e.offset, e.stored_len, e.raw_len, e.flags | FLAG_STAGED)
            self._pending[cid] = loc
            self._last_append = time.monotonic()
            if cur.size >= self.config.pack_size:
                self._rotate()
        return cid, loc

    def _rotate(self) -> None:
        if self._current is not None and self._current.entries:
            self._full.append(self._current)
            self._current = None

    def wake_sealer(self) -> None:
        """Tell the sealer there may be work (call on the trio thread)."""
        if self._full:
            self._wake.set()

    @property
    def backlog(self) -> dict[str, float]:
        """Chunks staged locally and not yet in a stored pack."""
        with self._lock:
            files = list(self._containers.values())
            return {
                "objects": len(files),
                "bytes": sum(f.size for f in files),
                "chunks": len(self._pending),
            }

    def sync(self) -> None:
        """Make every staged chunk and committed index entry survive power loss."""
        with self._lock:  # held: a sealed file's descriptors close under this lock
            for f in self._containers.values():
                f.sync()
        self.index.sync()

    # ------------------------------------------------------------ sealing
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Background work: recover staging files, then seal full ones and idle
        ones after a pause; also hosts read-ahead fetches."""
        await self.recover()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                with trio.move_on_after(IDLE_SEAL_SECONDS / 2):
                    await self._wake.wait()
                self._wake = trio.Event()
                with self._lock:
                    if time.monotonic() - self._last_append > IDLE_SEAL_SECONDS:
                        self._rotate()
                    batch, self._full = self._full, []
                for sf in batch:
                    self._sealing += 1
                    nursery.start_soon(self._seal, sf)

    def close(self) -> None:
        """Stop the compression threads (after the last flush)."""
        self.compressors.close()

    async def flush(self) -> None:
        """Seal everything staged and wait until it is stored."""
        with self._lock:
            self._rotate()
            batch, self._full = self._full, []
        for sf in batch:
            self._sealing += 1
            await self._seal(sf, urgent=True)
        while self._sealing:
            await self._sealed_event.wait()

    async def _seal(self, sf: StagingFile, urgent: bool = False) -> None:
        try:
            if (stored := self._stored.get(sf.id)) is None:
                path, entries, size = await self._compress(sf, urgent)
                await trio.to_thread.run_sync(self.store.put_file, pack_key(sf.id), path,
                                              limiter=self.io)
                stored = self._stored[sf.id] = (entries, size)
            entries, size = stored
            self.adopt(sf.id, entries, size)
            del self._stored[sf.id]
            with self._lock:
                for e in sf.entries:
                    if (loc := self._pending.get(e.cid)) and loc.container == sf.id:
                        del self._pending[e.cid]
                del self._containers[sf.id]
                sf.remove()
            log.debug("sealed pack %s: %d chunks, %d bytes", sf.id.hex()[:12], len(sf.entries),
                      size)
        except Exception as e:
            if out_of_space(e):   # the writes that need room fail with ENOSPC meanwhile
                log.warning("pack %s waits for room on the state disk: %s", sf.id.hex()[:12], e)
            else:
                log.exception("storing pack %s failed; will retry", sf.id.hex()[:12])
            with self._lock:
                self._full.append(sf)
            await trio.sleep(1)
        finally:
            self._sealing -= 1
            self._sealed_event.set()
            self._sealed_event = trio.Event()

    async def _compress(self, sf: StagingFile, urgent: bool
                        ) -> tuple[Path, list[PackEntry], int]:
        """Seal a staging file into a pack: in the background threads while the
        backlog is small, at normal priority when a caller waits (flush) or the
        backlog outgrows BACKGROUND_BACKLOG (as the kernel's writeback starts
        throttling past its dirty limit)."""
        if urgent or self.backlog["bytes"] > BACKGROUND_BACKLOG:
            return await trio.to_thread.run_sync(sf.seal, self.config.zstd_level,
                                                 limiter=self.cpu)
        return await self.compressors.run(sf.seal, self.config.zstd_level)

    def adopt(self, pack_id: bytes, entries: list[PackEntry], size: int) -> None:
        """Point the index at a stored pack's chunks (a chunk another pack already
        holds keeps its place)."""
        with self.index.write() as t:
            for e in entries:
                loc = t.get_location(e.cid)
                if loc is None or loc.container == pack_id or loc.flags & FLAG_STAGED:
                    t.put_location(e.cid, Location(pack_id, e.offset, e.stored_len,
                                                   e.raw_len, e.flags))
            t.add_pack(pack_id, size, len(entries))
        for adopted in self._adopt_logs:
            adopted.append((pack_id, size, entries))

    @contextmanager
    def adoptions(self) -> Iterator[list[tuple[bytes, int, list[PackEntry]]]]:
        """Collect (pack id, size, entries) of every pack adopted inside the block: a
        reindex rebuilding the tables from a listing of the store must add the packs
        sealed after that listing, whose adoption went into the tables it replaces."""
        adopted: list[tuple[bytes, int, list[PackEntry]]] = []
        self._adopt_logs.append(adopted)
        try:
            yield adopted
        finally:
            self._adopt_logs.remove(adopted)

    async def recover(self) -> None:
        """Adopt staging files a previous run left behind: index, then seal them.

        A file whose pack reached the store before the crash is simply sealed
        again (same id, same bytes), unless a power loss took some of its chunks:
        then the stored pack, if there is one, is adopted as it is."""
        for sid in staging.existing(self.staging_dir):
            sf = StagingFile(self.staging_dir, sid)
            logged = staging.logged(sf)
            entries = await trio.to_thread.run_sync(sf.load)
            if len(entries) < len(logged) and await self._adopt_stored(sf):
                continue
            kept = {e.cid for e in entries}
            lost = 0
            with self.index.write() as t:
                for e in entries:
                    if t.get_location(e.cid) is None:
                        t.put_location(e.cid, Location(sid, e.offset, e.stored_len, e.raw_len,
                                                       e.flags | FLAG_STAGED))
                # blobs that never reached the disk: forget them, so no new write dedups
                # against them and fsck names the files that used them
                for e in logged:
                    loc = t.get_location(e.cid)
                    if e.cid not in kept and loc is not None and loc.container == sid:
                        t.delete_location(e.cid)
                        lost += 1
            if lost:
                log.warning("staging file %s lost %d chunks (power loss?); dmsctl fsck "
                            "names the files affected", sid.hex()[:12], lost)
            if entries:
                log.info("recovered %d staged chunks from a previous run", len(entries))
                with self._lock:
                    self._containers[sid] = sf
                    self._full.append(sf)
            else:
                sf.remove()

    async def _adopt_stored(self, sf: StagingFile) -> bool:
        """Adopt the stored pack of a staging file, if the store has it, and remove
        the staging file; False if there is no such pack."""
        key = pack_key(sf.id)
        try:
            size = await trio.to_thread.run_sync(self.store.size, key)
        except NoSuchObject:
            return False
        self.adopt(sf.id, await trio.to_thread.run_sync(self.read_pack_index, key), size)
        sf.remove()
        return True

    def read_pack_index(self, key: str) -> list[PackEntry]:
        """A stored pack's own entry table (blocking)."""
        table_len, count = decode_pack_footer(self.store.get_range(key, -FOOTER.size,
                                                                   FOOTER.size))
        table = self.store.get_range(key, -(FOOTER.size + table_len), table_len)
        return decode_pack_index(table, count)

    # ------------------------------------------------------------ read side
    def _pending_or_indexed(self, cid: bytes) -> Location | None:
        """Where a chunk is: staged, else in the index.  In this order: a seal writes
        the index before it forgets the staged chunk, so a chunk sealed between the
        two looks is found by the second."""
        with self._lock:
            loc = self._pending.get(cid)
        if loc is None:
            with self.index.read() as t:
                loc = t.get_location(cid)
        return loc

    def location(self, cid: bytes) -> Location:
        loc = self._pending_or_indexed(cid)
        if loc is None:
            raise Corrupt(f"chunk {cid.hex()} is not in the index")
        return loc

    def fetch(self, cid: bytes, loc: Location | None = None) -> bytes:
        """Read, decode and verify one chunk (blocking; call from a worker thread)."""
        if loc is None:
            loc = self.location(cid)
        if loc.flags & FLAG_STAGED:
            with self._lock:
                sf = self._containers.get(loc.container)
                stored = sf.read_at(loc.offset, loc.stored_len) if sf else None
            if stored is not None:
                return open_blob(stored, loc.flags & ~FLAG_STAGED, loc.raw_len, cid)
            # sealed and removed meanwhile: the index points at the pack now
            loc = self.location(cid)
        try:
            stored = self.store.get_range(pack_key(loc.container), loc.offset, loc.stored_len)
        except NoSuchObject as e:
            raise Corrupt(f"pack {loc.container.hex()} is missing") from e
        if len(stored) != loc.stored_len:
            raise Corrupt(f"pack {loc.container.hex()} is truncated")
        return open_blob(stored, loc.flags & ~FLAG_STAGED, loc.raw_len, cid)

    async def get(self, cid: bytes) -> bytes:
        """One chunk's raw bytes, from cache or store."""
        while True:
            data = self.cache.get(cid)
            if data is not None:
                return data
            pending = self._fetching.get(cid)
            if pending is None:
                break
            await pending.wait()
            if cid not in self.cache:  # the fetch failed or it was evicted: fetch ourselves
                break
        done = self._fetching[cid] = trio.Event()
        try:
            loc = self.location(cid)
            if loc.raw_len <= INLINE_FETCH and not self.store.remote:
                data = self.fetch(cid, loc)   # cheaper than the trip to a worker and back
            else:
                data = await trio.to_thread.run_sync(self.fetch, cid, loc, limiter=self.io)
            self.cache.put(cid, data)
            return data
        finally:
            if self._fetching.get(cid) is done:
                del self._fetching[cid]
            done.set()

    def start_task(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Run fn(*args) in the background (chunking ahead, read-ahead)."""
        if self._nursery is None:
            raise RuntimeError("ChunkStore.run() is not running")
        self._nursery.start_soon(fn, *args)

    def warm(self, cid: bytes) -> None:
        """Let the store bring one chunk's stored bytes near (deep read-ahead from a
        remote store into its disk cache: no request waits, no memory is held)."""
        with self.index.read() as t:
            loc = t.get_location(cid)
        if loc is not None and not loc.flags & FLAG_STAGED:
            self.store.prefetch(pack_key(loc.container), loc.offset, loc.stored_len)

    def prefetch(self, cid: bytes) -> None:
        """Start warming the cache with one chunk (read-ahead)."""
        if cid not in self.cache and cid not in self._fetching:
            self.start_task(self._prefetch, cid)

    async def _prefetch(self, cid: bytes) -> None:
        try:
            await self.get(cid)
        except Exception:  # noqa: BLE001 -- errors surface on the real read
            log.debug("prefetch of %s failed", cid.hex()[:12], exc_info=True)
