"""A file's content (a chunk list) as a seekable binary file, for readers that
want one (validation with pyarrow).  Blocking: use it in a worker thread."""

from __future__ import annotations

import io
from concurrent.futures import Future, ThreadPoolExecutor

from .chunkstore import ChunkStore
from .content import ChunkList
from .index import HOLE

BUFFER = 1 << 20


class ChunkReader(io.RawIOBase):
    """Reads chunks on demand (the last one is kept), fetching the next one in a
    helper thread meanwhile, so that decompressing overlaps the reader's work."""

    def __init__(self, content: ChunkList, chunks: ChunkStore) -> None:
        self.content = content
        self.chunks = chunks
        self.pos = 0
        self._held: tuple[int, bytes] | None = None
        self._pool = ThreadPoolExecutor(1)
        self._next: tuple[int, Future[bytes]] | None = None

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)
        super().close()

    def _fetch(self, i: int) -> bytes:
        cid, n = self.content.chunks[i]
        return bytes(n) if cid == HOLE else self.chunks.fetch(cid)

    def _chunk(self, i: int) -> bytes:
        ahead, self._next = self._next, None
        data = ahead[1].result() if ahead is not None and ahead[0] == i else self._fetch(i)
        if i + 1 < len(self.content):
            self._next = (i + 1, self._pool.submit(self._fetch, i + 1))
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.content.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        if self.pos >= self.content.size or not len(buf):
            return 0
        i = self.content.index_at(self.pos)
        if self._held is None or self._held[0] != i:
            self._held = (i, self._chunk(i))
        data = self._held[1]
        start = self.pos - self.content.offsets[i]
        n = min(len(buf), len(data) - start)
        memoryview(buf)[:n] = data[start:start + n]
        self.pos += n
        return n


def open_content(content: ChunkList, chunks: ChunkStore) -> io.BufferedReader:
    return io.BufferedReader(ChunkReader(content, chunks), BUFFER)
