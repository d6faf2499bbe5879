"""FileWriter over a real ChunkStore and Index on a temp dir, no mount.

A writer is driven the way the Vfs drives it (writes under its lock, background
cuts started when it asks, commit then committed()), and its content is checked
against a bytearray model; edits must re-store only the chunks near them.
"""

from __future__ import annotations

import math
import random
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from dmsfs.chunker import Chunker, ChunkerParams
from dmsfs.chunkstore import ChunkStore
from dmsfs.config import StoreConfig
from dmsfs.content import ChunkList
from dmsfs.index import HOLE, Index
from dmsfs.store.local import LocalStore
from dmsfs.writer import MIN_HOLE, WINDOW, FileWriter, RingPool

KiB = 1024
MiB = 1024 * KiB
PARAMS = ChunkerParams(4 * KiB, 16 * KiB, 64 * KiB)


class Harness:
    """What the Vfs holds for writers: chunk store, index, chunker, ring pool."""

    def __init__(self, root: Path, chunks: ChunkStore) -> None:
        self.root = root
        self.chunks = chunks
        self.index = chunks.index
        self.chunker = Chunker(PARAMS)
        self.rings = RingPool()
        self.spool = root / "state" / "spool"
        self.spool.mkdir(parents=True, exist_ok=True)

    def writer(self, base: ChunkList) -> FileWriter:
        return FileWriter(base, self.spool, self.chunks, self.chunker, self.rings)

    async def write(self, w: FileWriter, offset: int, data: bytes) -> None:
        async with w.lock:
            await w.write(offset, data)
        if w.wants_background_cut():
            self.chunks.start_task(w.background_cut)

    async def truncate(self, w: FileWriter, size: int) -> None:
        async with w.lock:
            await w.truncate(size)

    async def commit(self, w: FileWriter) -> tuple[ChunkList, set[bytes]]:
        """Commit as Vfs._commit does; the content and the ids this commit staged."""
        async with w.lock:
            result = await w.commit()
            with self.index.write() as t:
                for cid, loc in result.new_locations.items():
                    if t.get_location(cid) is None:
                        t.put_location(cid, loc)
            w.committed(result.content)
        return result.content, set(result.new_locations)

    async def content_bytes(self, content: ChunkList) -> bytes:
        parts = []
        for cid, n in content.chunks:
            if cid == HOLE:
                parts.append(bytes(n))
            else:
                data = await self.chunks.get(cid)
                assert len(data) == n
                parts.append(data)
        return b"".join(parts)

    async def new_file(self, data: bytes) -> ChunkList:
        w = self.writer(ChunkList())
        for pos in range(0, len(data), 128 * KiB):
            await self.write(w, pos, data[pos:pos + 128 * KiB])
        content, _ = await self.commit(w)
        w.close()
        return content


@asynccontextmanager
async def harness() -> AsyncIterator[Harness]:
    with tempfile.TemporaryDirectory(prefix="dmsfs-writer-") as tmp:
        root = Path(tmp)
        store = LocalStore(root / "store")
        index = Index(root / "state" / "index.lmdb", map_size=1 << 30)
        config = StoreConfig(chunker=PARAMS, pack_size=256 * KiB)
        chunks = ChunkStore(store, index, config, root / "state", 32 * MiB)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(chunks.run)  # sealer and background cuts
                yield Harness(root, chunks)
                nursery.cancel_scope.cancel()
        finally:
            index.close()


def positioned(content: ChunkList) -> set[tuple[int, bytes, int]]:
    return {(content.offsets[i], cid, n) for i, (cid, n) in enumerate(content.chunks)}


# ------------------------------------------------------------------ locality of edits
async def test_random_writes_restore_only_nearby_chunks() -> None:
    rng = random.Random(3)
    data = bytearray(rng.randbytes(3 * MiB))
    async with harness() as h:
        old = await h.new_file(bytes(data))
        assert len(old) > 100
        for round_ in range(3):
            w = h.writer(old)
            writes = []
            for _ in range(rng.randrange(1, 6)):
                off = rng.randrange(len(data) - 5000)
                patch = rng.randbytes(rng.randrange(1, 5000))
                await h.write(w, off, patch)
                data[off:off + len(patch)] = patch
                writes.append((off, off + len(patch)))
            new, staged = await h.commit(w)
            w.close()
            assert await h.content_bytes(new) == data, round_

            touched = [(off, cid, n) for off, cid, n in positioned(old)
                       if any(a < off + n and off < b for a, b in writes)]
            untouched = positioned(old) - set(touched)
            # every chunk no write touched stays, at its offset
            assert untouched <= positioned(new)
            # what is new lies within the touched chunks
            old_ids = {cid for cid, _ in old.chunks}
            fresh = {(cid, n) for cid, n in new.chunks if cid not in old_ids}
            assert {cid for cid, _ in fresh} == staged
            touched_bytes = sum(n for _, _, n in touched)
            assert sum(n for _, n in fresh) <= touched_bytes
            # a re-cut region yields chunks of at least the minimum size, but its last
            regions = len(writes)
            assert len(staged) <= math.ceil(touched_bytes / PARAMS.min_size) + regions
            assert 1 <= len(staged) <= 3 * len(writes) + len(touched)
            old = new


async def test_appends_chunk_as_if_the_file_were_new() -> None:
    """Committed appends re-cut only the last chunk: cuts equal chunking the whole file."""
    rng = random.Random(4)
    data = b""
    async with harness() as h:
        content = ChunkList()
        for size in (100 * KiB, 1, 37 * KiB, 600 * KiB, 3 * KiB, 12 * MiB, 5):
            w = h.writer(content)
            piece = rng.randbytes(size)
            for pos in range(0, size, 64 * KiB):
                await h.write(w, len(data) + pos, piece[pos:pos + 64 * KiB])
                await trio.sleep(0)  # let a background cut run, as between FUSE requests
            data += piece
            before = positioned(content)
            content, _ = await h.commit(w)
            w.close()
            assert [n for _, n in content.chunks] == h.chunker.cut(data, at_eof=True)
            # all but the old last chunk are kept as they were
            last = max(before, default=None)
            assert before - {last} <= positioned(content)
        assert await h.content_bytes(content) == data


async def test_large_stream_with_background_cut_and_edits() -> None:
    rng = random.Random(5)
    model = bytearray()
    async with harness() as h:
        w = h.writer(ChunkList())
        total = 2 * WINDOW + 3 * MiB
        step = 128 * KiB
        while len(model) < total:
            piece = rng.randbytes(step)
            await h.write(w, len(model), piece)
            model += piece
            await trio.sleep(0)
            if rng.random() < 0.03:  # rewrite something already written
                off = rng.randrange(len(model))
                patch = rng.randbytes(rng.randrange(1, 20 * KiB))
                await h.write(w, off, patch)
                end = off + len(patch)
                model[off:end] = patch
            if rng.random() < 0.05:
                off = rng.randrange(len(model))
                assert await w.read(off, 70 * KiB) == model[off:off + 70 * KiB]
        assert await w.read(0, len(model)) == model
        content, _ = await h.commit(w)
        assert content.size == len(model)
        assert await h.content_bytes(content) == model
        w.close()


# ------------------------------------------------------------------ truncation
async def test_truncate_keeps_chunks_before_the_cut() -> None:
    rng = random.Random(6)
    data = rng.randbytes(2 * MiB)
    async with harness() as h:
        old = await h.new_file(data)
        cut_at = old.offsets[len(old) // 2] + 1234  # inside a chunk
        w = h.writer(old)
        await h.truncate(w, cut_at)
        assert w.size == cut_at and w.changed
        assert await w.read(cut_at - 10, 100) == data[cut_at - 10:cut_at]
        new, staged = await h.commit(w)
        w.close()
        assert new.size == cut_at
        assert await h.content_bytes(new) == data[:cut_at]
        kept = {p for p in positioned(old) if p[0] + p[2] <= cut_at - 1234}
        assert kept <= positioned(new)
        assert len(staged) == 1  # only the cut chunk's head is new

        # grow with a gap: zeros, stored as a hole when long enough
        w = h.writer(new)
        await h.truncate(w, cut_at + 3 * MIN_HOLE)
        await h.write(w, cut_at + 3 * MIN_HOLE, b"tail")
        grown, _ = await h.commit(w)
        w.close()
        expect = data[:cut_at] + bytes(3 * MIN_HOLE) + b"tail"
        assert await h.content_bytes(grown) == expect
        assert any(cid == HOLE for cid, _ in grown.chunks)
        assert positioned(new) <= positioned(grown) | {max(positioned(new))}

        # to zero and back
        w = h.writer(grown)
        await h.truncate(w, 0)
        empty, staged = await h.commit(w)
        assert empty.size == 0 and empty.chunks == [] and staged == set()
        await h.write(w, 0, b"again")
        again, _ = await h.commit(w)
        w.close()
        assert await h.content_bytes(again) == b"again"


# ------------------------------------------------------------------ against a model
op = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 300_000), st.integers(1, 60_000),
              st.integers(0, 3)),
    st.tuples(st.just("truncate"), st.integers(0, 300_000), st.just(0), st.just(0)),
    st.tuples(st.just("read"), st.integers(0, 300_000), st.integers(0, 100_000), st.just(0)),
    st.tuples(st.just("commit"), st.just(0), st.just(0), st.just(0)),
    st.tuples(st.just("reopen"), st.just(0), st.just(0), st.just(0)),
)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), initial=st.integers(0, 250_000),
       ops=st.lists(op, max_size=14))
async def test_writer_matches_bytearray_model(seed: int, initial: int,
                                              ops: list[tuple[str, int, int, int]]) -> None:
    rng = random.Random(seed)
    model = bytearray(rng.randbytes(initial))
    async with harness() as h:
        committed = await h.new_file(bytes(model))
        assert committed.size == initial
        w = h.writer(committed)
        for kind, a, b, flavour in ops:
            if kind == "write":
                # random, compressible or zero bytes; sometimes an append
                if flavour == 3:
                    a = len(model)
                data = (rng.randbytes(b) if flavour != 1
                        else bytes(b) if a % 2 else (rng.randbytes(61) * (b // 61 + 1))[:b])
                await h.write(w, a, data)
                if a > len(model):
                    model.extend(bytes(a - len(model)))
                model[a:a + b] = data
            elif kind == "truncate":
                await h.truncate(w, a)
                del model[a:]
                model.extend(bytes(a - len(model)))
            elif kind == "read":
                assert await w.read(a, b) == model[a:a + b]
            else:
                committed, _ = await h.commit(w)
                assert committed.size == len(model)
                assert await h.content_bytes(committed) == model
                if kind == "reopen":
                    w.close()
                    w = h.writer(committed)
            assert w.size == len(model)
        committed, _ = await h.commit(w)
        w.close()
        assert await h.content_bytes(committed) == model
        # a re-opened writer reads the committed content through the chunk store
        w = h.writer(committed)
        await h.write(w, 0, b"")
        assert await w.read(0, len(model) + 10) == model
        w.close()
