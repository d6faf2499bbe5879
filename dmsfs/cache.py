"""A bounded LRU of decompressed chunks, by bytes."""

from __future__ import annotations

from collections import OrderedDict


class ChunkCache:
    """Chunk id -> raw bytes, evicting least recently used beyond max_bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[bytes, bytes] = OrderedDict()

    def get(self, cid: bytes) -> bytes | None:
        data = self._items.get(cid)
        if data is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(cid)
        return data

    def __contains__(self, cid: bytes) -> bool:
        return cid in self._items

    def put(self, cid: bytes, data: bytes) -> None:
        if len(data) > self.max_bytes or cid in self._items:
            return
        self._items[cid] = data
        self.bytes += len(data)
        while self.bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.bytes -= len(old)

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0
