"""The repository: one store, its index and chunk storage, and whole-store work
(statistics, consistency checks, rebuilding the chunk index from the store)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import trio

from .chunker import Chunker
from .chunkstore import FLAG_STAGED, ChunkStore, pack_key
from .codec import (
    FOOTER,
    PACK_MAGIC,
    PackEntry,
    decode_pack_footer,
    decode_pack_index,
    open_blob,
)
from .config import StoreConfig, load_or_init
from .errors import Corrupt, DmsfsError
from .index import HOLE, ROOT_INO, Index, Location
from .lease import Lease
from .store import open_store
from .store.blockcache import BlockCache
from .store.layers import RemoteOptions, layered
from .store.base import ObjectStore
from .store.writeback import WriteBack
from .schemas import Schemas
from .statedir import adopt_generation
from .versions import VersionRecord, Versions

log = logging.getLogger(__name__)

BLOCK = 4096
LEASE_TIMEOUT = 30.0


class Repo:
    """Everything the daemon holds open for one store."""

    def __init__(self, store: ObjectStore, config: StoreConfig, state_dir: Path,
                 cache_bytes: int, read_only: bool = False) -> None:
        self.store = store
        self.read_only = read_only
        self.config = config
        self.state_dir = state_dir
        self.index = Index(state_dir / "index.lmdb")
        self.chunks = ChunkStore(store, self.index, config, state_dir, cache_bytes)
        self.chunker = Chunker(config.chunker)
        self.schemas = Schemas(self.index, store, read_only=read_only)
        self.versions = Versions(self.index, self.chunks, store, self.schemas,
                                 read_only=read_only)
        self.lease: Lease | None = None
        self.started_over = False   # the state dir was stale: rebuild from the store
        self.uploads = store if isinstance(store, WriteBack) else None
        self.disk_cache = store.backend if isinstance(store, WriteBack) else None
        if isinstance(self.disk_cache, BlockCache):
            self.disk_cache.size_hint = self._pack_size

    @classmethod
    def open(cls, url: str, state_dir: Path | None, cache_bytes: int,
             proposed: StoreConfig | None = None, read_only: bool = False,
             remote: RemoteOptions | None = None, lease_timeout: float = LEASE_TIMEOUT
             ) -> Repo:
        """Open (initialising if new) the store at url with its state dir.

        A writer takes the store's lease first (LeaseHeld if another daemon has it);
        read_only refuses every change to the datasets (the index is still kept).
        A remote store is used through a disk cache and an upload spool in the
        state dir; cache_bytes sizes the in-memory cache of decompressed chunks.
        """
        remote = remote or RemoteOptions()
        backend = open_store(url, s3_endpoint=remote.endpoint, s3_timeout=remote.timeout)
        config = load_or_init(backend, proposed, create=not read_only)
        state = state_dir or default_state_dir(config.store_id)
        state.mkdir(parents=True, exist_ok=True)
        lease, started_over = None, False
        if not read_only:
            lease = Lease(backend, lease_timeout)
            lease.acquire()
            started_over = adopt_generation(state, lease.previous, lease.generation) is not None
        store = layered(backend, state, remote.cache_bytes,
                        fence=lease.held if lease else lambda: False)
        repo = cls(store, config, state, cache_bytes, read_only)
        repo.lease = lease
        repo.started_over = started_over
        return repo

    def close(self, drain_seconds: float = 0) -> None:
        """Close the index and the store; a writer gives its lease up once every
        spooled object is uploaded (else it expires, and the spool goes up at the
        next start)."""
        drained = self.uploads.drain(drain_seconds) if self.uploads else True
        self.chunks.close()
        self.index.close()
        self.store.close()
        if self.lease is not None and drained:
            self.lease.release()

    async def sync(self) -> None:
        """Make everything committed survive a power loss."""
        await trio.to_thread.run_sync(self.chunks.sync)

    # ------------------------------------------------------------ statistics
    def stats(self) -> dict[str, object]:
        """Logical bytes are those of every live tree and every version (what they
        would take without deduplication), as restic counts them."""
        with self.index.read() as t:
            live = t.counter("live_bytes")
            stored = t.counter("stored_bytes")
            counts = {k: t.counter(k) for k in ("chunks", "chunk_bytes", "packs")}
        versions = self._all_versions()
        logical = live + sum(r.bytes for r in versions)
        cache = self.chunks.cache
        return {
            "store": self.store.url,
            "store_id": self.config.store_id,
            "logical_bytes": logical,
            "live_bytes": live,
            "versions": len(versions),
            "stored_bytes": stored,
            "dedup_ratio": round(logical / stored, 3) if stored else None,
            "chunks": counts["chunks"],
            "unique_bytes": counts["chunk_bytes"],
            "packs": counts["packs"],
            "backlog": self.backlog(),
            "cache": {"bytes": cache.bytes, "max_bytes": cache.max_bytes,
                      "hits": cache.hits, "misses": cache.misses},
            "disk_cache": self.disk_cache.stats() if self.disk_cache else None,
        }

    def backlog(self) -> dict[str, float]:
        """What is not in the store yet: chunks staged locally, packs and records
        waiting for upload (objects, bytes, the oldest upload's age in seconds)."""
        staged = self.chunks.backlog
        uploads = self.uploads.backlog() if self.uploads else {
            "objects": 0, "bytes": 0, "oldest_age": 0.0}
        return {"objects": staged["objects"] + uploads["objects"],
                "bytes": staged["bytes"] + uploads["bytes"],
                "oldest_age": uploads["oldest_age"], "chunks": staged["chunks"]}

    def statfs(self) -> dict[str, int]:
        """df figures: used = stored bytes, free = space left where the store is."""
        with self.index.read() as t:
            stored = t.counter("stored_bytes") + int(self.chunks.backlog["bytes"])
            files = t.counter("next_ino")
        free = self.store.free_bytes()
        free_blocks = (free if free is not None else 1 << 50) // BLOCK
        used = -(-stored // BLOCK)
        return {"f_bsize": BLOCK, "f_frsize": BLOCK, "f_blocks": used + free_blocks,
                "f_bfree": free_blocks, "f_bavail": free_blocks, "f_files": files + (1 << 32),
                "f_ffree": 1 << 32, "f_favail": 1 << 32, "f_namemax": 255}

    def _pack_size(self, key: str) -> int | None:
        """A stored pack's size as the index knows it (None: not a known pack)."""
        name = key.rsplit("/", 1)[-1]
        try:
            pack_id = bytes.fromhex(name)
        except ValueError:
            return None
        with self.index.read() as t:
            info = t.get_pack(pack_id)
        return info[0] if info else None

    # ------------------------------------------------------------ pack indexes
    def read_pack_index(self, key: str) -> list[PackEntry]:
        """A stored pack's own entry table (blocking)."""
        return self.chunks.read_pack_index(key)

    async def index_is_blank(self) -> bool:
        """True when the index must be built from the store: it knows no pack but
        the store has some (a new state dir over an existing store: another
        machine, a lost state dir), or the state dir was stale and set aside."""
        if self.started_over:
            return True
        with self.index.read() as t:
            if t.counter("packs"):
                return False
        return await trio.to_thread.run_sync(
            lambda: next(iter(self.store.list("packs/")), None) is not None)

    async def reindex(self) -> dict[str, int]:
        """Rebuild the chunk and pack tables from the packs in the store, and index
        the versions and tags stored there."""
        with self.chunks.adoptions() as adopted:
            return await self._reindex(adopted)

    async def _read_packs(self, keys: list[str]
                          ) -> tuple[list[tuple[bytes, int, list[PackEntry]]], int]:
        """(pack id, size, entries) of each readable pack, and how many were not."""
        found: list[tuple[bytes, int, list[PackEntry]]] = []
        damaged = 0

        async def load(key: str) -> None:
            nonlocal damaged
            try:
                entries = await trio.to_thread.run_sync(self.read_pack_index, key,
                                                        limiter=self.chunks.io)
                size = await trio.to_thread.run_sync(self.store.size, key,
                                                     limiter=self.chunks.io)
            except DmsfsError as e:
                log.error("skipping unreadable pack %s: %s", key, e)
                damaged += 1
                return
            found.append((bytes.fromhex(key.rsplit("/", 1)[1]), size, entries))

        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(load, key)
        return found, damaged

    async def _list_packs(self) -> list[str]:
        return await trio.to_thread.run_sync(lambda: list(self.store.list("packs/")))

    async def refresh(self) -> int:
        """Index what was published to the store since: schemas, versions and tags,
        and (read-only) the packs they use; returns how many versions were new.  A
        read-only daemon follows its writer this way."""
        await self.schemas.sync_from_store()
        if not self.read_only:
            # a writer's index knows its packs: one it lacks is damage for fsck to name
            return await self.versions.sync_from_store()
        # packs are listed after the version records, and indexed before them: every
        # pack a listed version uses was uploaded before its record was
        return await self.versions.sync_from_store(before_indexing=self._adopt_new_packs)

    async def _adopt_new_packs(self) -> None:
        keys = await self._list_packs()
        with self.index.read() as t:
            known = {pack_key(pid) for pid, _, _ in t.iter_packs()}
        found, _ = await self._read_packs([k for k in keys if k not in known])
        for pack_id, size, entries in found:
            self.chunks.adopt(pack_id, entries, size)

    async def _reindex(self, adopted: list[tuple[bytes, int, list[PackEntry]]]
                       ) -> dict[str, int]:
        await self.chunks.flush()
        found, damaged = await self._read_packs(await self._list_packs())
        with self.index.write() as t:
            staged = [(c, loc) for c, loc in t.iter_locations() if loc.flags & FLAG_STAGED]
            t.reset_chunk_tables()
            # the sealer may have stored packs after the listing: add those too
            for pack_id, size, entries in [*found, *adopted]:
                for e in entries:
                    t.put_location(e.cid, Location(pack_id, e.offset, e.stored_len, e.raw_len,
                                                   e.flags))
                t.add_pack(pack_id, size, len(entries))
            for cid, loc in staged:
                if t.get_location(cid) is None:
                    t.put_location(cid, loc)
            chunks, packs = t.counter("chunks"), t.counter("packs")
        self.chunks.cache.clear()
        versions = await self.refresh()
        log.info("reindex: %d packs, %d chunks, %d damaged packs, %d new versions", packs,
                 chunks, damaged, versions)
        return {"packs": packs, "chunks": chunks, "damaged_packs": damaged,
                "new_versions": versions}

    # ------------------------------------------------------------ consistency
    def path_of(self, ino: int) -> str:
        """A human-readable path for an inode, for reports."""
        names: list[str] = []
        with self.index.read() as t:
            while ino != ROOT_INO:
                inode = t.get_inode(ino)
                if inode is None:
                    return f"<inode {ino}>"
                name = next((n for _, n, c in t.iter_entries(inode.parent) if c == ino), None)
                names.append(name.decode(errors="replace") if name else f"<inode {ino}>")
                ino = inode.parent
        return "/".join(reversed(names))

    async def fsck(self, read_data: bool = False) -> dict[str, object]:
        """Check index against store (and every chunk's blake3 with read_data).

        Returns {"problems": [...], "checked": {...}}; any problem is damage.
        """
        await self.chunks.flush()
        with self.index.read() as t:
            packs = {pid: size for pid, size, _ in t.iter_packs()}
            locations = dict(t.iter_locations())
            users: dict[bytes, list[int]] = {}
            for ino, chunks in t.iter_content():
                for cid, _ in chunks:
                    if cid != HOLE:
                        users.setdefault(cid, []).append(ino)
        problems: list[str] = []
        in_versions = await self._version_chunks(problems)

        def files(cid: bytes) -> str:
            names = [self.path_of(i) for i in users.get(cid, [])[:5]]
            names += in_versions.get(cid, [])[:5]
            return ", ".join(names) or "no file"

        for cid in users.keys() | in_versions.keys():
            if cid not in locations:
                problems.append(f"chunk {cid.hex()} used by {files(cid)} is not in the index")
        stored_keys = set(await self._list_packs())
        by_pack: dict[bytes, list[tuple[bytes, Location]]] = {}
        for cid, loc in locations.items():
            if not loc.flags & FLAG_STAGED:
                by_pack.setdefault(loc.container, []).append((cid, loc))
                if loc.container not in packs:
                    problems.append(f"chunk {cid.hex()} points at unknown pack "
                                    f"{loc.container.hex()}")
        for pid, size in packs.items():
            key = pack_key(pid)
            if key not in stored_keys:
                problems.append(f"pack {key} is missing from the store "
                                f"({len(by_pack.get(pid, []))} chunks lost)")
                continue
            # the store's own answer, not the cache's (which knows sizes from the index)
            sizer = self.disk_cache.backend.size if self.disk_cache else self.store.size
            actual = await trio.to_thread.run_sync(sizer, key, limiter=self.chunks.io)
            if actual != size:
                problems.append(f"pack {key} has {actual} bytes, the index expects {size}")
                continue
            if read_data:
                problems.extend(await trio.to_thread.run_sync(
                    self._verify_pack, key, by_pack.get(pid, []), files, limiter=self.chunks.io))
        known = {pack_key(p) for p in packs}
        unindexed = sorted(stored_keys - known)
        return {
            "problems": problems,
            "unindexed_packs": unindexed,
            "checked": {"packs": len(packs), "chunks": len(locations), "files": len(
                {i for inos in users.values() for i in inos}),
                "versions": len(self._all_versions()), "read_data": read_data},
        }

    def _all_versions(self) -> list[VersionRecord]:
        with self.index.read() as t:
            return [VersionRecord.decode(raw) for raw in t.iter_versions()]

    async def _version_chunks(self, problems: list[str]) -> dict[bytes, list[str]]:
        """Chunk id -> names of the version files (and trees) that use it; every
        tree shared by versions is read once."""
        users: dict[bytes, list[str]] = {}
        seen: set[bytes] = set()

        async def visit(tid: bytes, label: str) -> None:
            if tid in seen:
                return
            seen.add(tid)
            users.setdefault(tid, []).append(f"{label}/ (its tree)")
            try:
                tree = await self.versions.trees.load(tid)
            except DmsfsError as e:
                problems.append(f"tree {tid.hex()} of {label} is unreadable: {e}")
                return
            for e in tree.entries:
                path = f"{label}/{e.name.decode(errors='replace')}"
                if e.kind == "dir":
                    await visit(e.tree, path)
                for cid, _ in e.chunks:
                    if cid != HOLE:
                        users.setdefault(cid, []).append(path)

        for record in self._all_versions():
            await visit(record.tree, f"{record.dataset}@v{record.number}")
        return users

    def _verify_pack(self, key: str, chunks: list[tuple[bytes, Location]],
                     files: Callable[[bytes], str]) -> list[str]:
        """Read a whole pack and check its own index and every indexed chunk."""
        problems: list[str] = []
        data = self.store.get(key)
        if not data.startswith(PACK_MAGIC):
            problems.append(f"pack {key}: header damaged")
        try:
            table_len, count = decode_pack_footer(data[-FOOTER.size:])
            own = decode_pack_index(data[-(FOOTER.size + table_len):-FOOTER.size], count)
            if {e.cid for e in own} != {c for c, _ in chunks}:
                problems.append(f"pack {key}: its own index disagrees with the store index")
        except Corrupt as e:
            problems.append(f"pack {key}: {e}")
        for cid, loc in chunks:
            blob = data[loc.offset:loc.offset + loc.stored_len]
            try:
                open_blob(blob, loc.flags, loc.raw_len, cid)
            except Corrupt as e:
                problems.append(f"pack {key}: {e} (files: {files(cid)})")
        return problems


def default_state_dir(store_id: str) -> Path:
    """$XDG_STATE_HOME/dmsfs/<id>, or /var/lib/dmsfs/<id> for root (SPEC section 2)."""
    if os.geteuid() == 0:
        return Path("/var/lib/dmsfs") / store_id
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "dmsfs" / store_id

