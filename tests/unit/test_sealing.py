"""ChunkStore sealing over a real LocalStore and Index, no mount: a pack whose
adoption fails is retried without being stored twice."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from dmsfs.chunker import ChunkerParams
from dmsfs.chunkstore import FLAG_STAGED, ChunkStore
from dmsfs.config import StoreConfig
from dmsfs.errors import NoSpace
from dmsfs.index import Index
from dmsfs.store.local import LocalStore

KiB = 1024


class CountingStore(LocalStore):
    """A LocalStore that remembers the keys put into it as files."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.files_put: list[str] = []

    def put_file(self, key: str, path: Path) -> None:
        super().put_file(key, path)
        self.files_put.append(key)


class FullIndexOnce(ChunkStore):
    """A ChunkStore whose first adoption finds the state disk full."""

    failures = 1

    def adopt(self, *args: object) -> None:
        if self.failures:
            self.failures -= 1
            raise NoSpace("index: mdb_txn_commit: No space left on device")
        super().adopt(*args)  # type: ignore[arg-type]


async def test_a_pack_the_index_had_no_room_for_is_adopted_on_retry_not_stored_again(
        tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "store")
    index = Index(tmp_path / "state" / "index.lmdb", map_size=1 << 30)
    config = StoreConfig(chunker=ChunkerParams(4 * KiB, 16 * KiB, 64 * KiB), pack_size=256 * KiB)
    chunks = FullIndexOnce(store, index, config, tmp_path / "state", 1 << 20)
    blobs = [os.urandom(40 * KiB) for _ in range(5)]
    async with trio.open_nursery() as nursery:
        await nursery.start(chunks.run)
        ids = []
        for blob in blobs:
            cid, loc = await trio.to_thread.run_sync(chunks.put, blob)
            assert loc is not None
            with index.write() as t:
                t.put_location(cid, loc)
            ids.append(cid)
        await chunks.flush()        # stores the pack, cannot adopt it, queues a retry
        assert chunks.failures == 0
        with trio.fail_after(10):
            while chunks.backlog["objects"]:
                await chunks.flush()
        assert chunks.backlog == {"objects": 0, "bytes": 0, "chunks": 0}
        assert len(store.files_put) == 1
        with index.read() as t:
            locs = [t.get_location(cid) for cid in ids]
        assert all(loc is not None and not loc.flags & FLAG_STAGED for loc in locs)
        assert {loc.container.hex() for loc in locs if loc} == {
            key.rsplit("/", 1)[-1] for key in store.files_put}
        chunks.cache.clear()
        assert [await chunks.get(cid) for cid in ids] == blobs
        nursery.cancel_scope.cancel()
    index.close()
