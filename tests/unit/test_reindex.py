"""Repo.reindex and Repo.fsck over a real ChunkStore and Index, no mount."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from dmsfs.chunker import ChunkerParams
from dmsfs.chunkstore import FLAG_STAGED
from dmsfs.config import StoreConfig
from dmsfs.repo import Repo
from dmsfs.store.local import LocalStore

KiB = 1024


@asynccontextmanager
async def repo() -> AsyncIterator[Repo]:
    with tempfile.TemporaryDirectory(prefix="dmsfs-repo-") as tmp:
        root = Path(tmp)
        config = StoreConfig(chunker=ChunkerParams(4 * KiB, 16 * KiB, 64 * KiB),
                             pack_size=256 * KiB)
        r = Repo(LocalStore(root / "store"), config, root / "state", 1 << 20)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(r.chunks.run)
                yield r
                nursery.cancel_scope.cancel()
        finally:
            r.close()


def put_chunks(r: Repo, n: int) -> list[bytes]:
    """Store n random chunks and index them as a file commit would (blocking)."""
    ids = []
    for _ in range(n):
        cid, loc = r.chunks.put(os.urandom(8 * KiB))
        if loc is not None:
            with r.index.write() as t:
                if t.get_location(cid) is None:
                    t.put_location(cid, loc)
        ids.append(cid)
    return ids


def assert_all_in_packs(r: Repo, ids: list[bytes]) -> None:
    with r.index.read() as t:
        packs = {pid for pid, _, _ in t.iter_packs()}
        for cid in ids:
            loc = t.get_location(cid)
            assert loc is not None, f"chunk {cid.hex()[:12]} fell out of the index"
            assert not loc.flags & FLAG_STAGED
            assert loc.container in packs
        assert t.counter("chunks") == len(ids)
        assert t.counter("packs") == len(packs)


async def test_reindex_rebuilds_what_was_there() -> None:
    async with repo() as r:
        ids = await trio.to_thread.run_sync(put_chunks, r, 60)
        await r.chunks.flush()
        with r.index.write() as t:
            t.reset_chunk_tables()
        result = await r.reindex()
        assert result["chunks"] == 60 and result["damaged_packs"] == 0
        assert result["packs"] == len(list(r.store.list("packs/")))
        assert_all_in_packs(r, ids)
        report = await r.fsck(read_data=True)
        assert report["problems"] == [] and report["unindexed_packs"] == []


async def test_a_pack_sealed_while_reindex_runs_stays_indexed() -> None:
    """Writes go on during a reindex: a pack the sealer stores after reindex listed
    the store must not fall out of the rebuilt index."""
    async with repo() as r:
        ids = await trio.to_thread.run_sync(put_chunks, r, 40)
        await r.chunks.flush()
        late: list[bytes] = []
        read_pack_index = r.read_pack_index

        def slow_read_pack_index(key: str) -> list:  # type: ignore[type-arg]
            # a worker thread of reindex, after the listing: meanwhile, more data
            # arrives and the sealer stores it as a new pack
            if not late:
                late.extend(put_chunks(r, 5))
                trio.from_thread.run(r.chunks.flush)
                assert len(list(r.store.list("packs/"))) > len(keys)
            return read_pack_index(key)

        keys = list(r.store.list("packs/"))
        r.read_pack_index = slow_read_pack_index  # type: ignore[method-assign]
        result = await r.reindex()
        assert late
        assert result["packs"] == len(list(r.store.list("packs/")))
        assert_all_in_packs(r, ids + late)
        report = await r.fsck(read_data=True)
        assert report["problems"] == []
