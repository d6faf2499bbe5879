"""Tree objects of the live tree (built for snapshots) and of versions (read back).

TreeBuilder walks one dataset in a single LMDB read transaction, so what it
records is the committed state at one instant: an open file's uncommitted
writes are not in it, never half of them.  Directories whose tree is cached in
`dirtrees` are not entered; a snapshot therefore costs what changed since the
last one.  It runs in a worker thread; trees it makes are stored as blobs
through the chunk store (or, for a diff against the live tree, kept in memory).

TreeLoader reads trees back (from those in memory or the chunk store) and keeps
recently decoded ones.
"""

from __future__ import annotations

import stat
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from .chunkstore import ChunkStore
from .codec import chunk_id
from .index import CONTENT_ENTRY, Index, Location, Txn
from .tree import Tree, TreeEntry, decode_tree, encode_entry, encode_tree

TREE_CACHE_ENTRIES = 200_000


@dataclass
class Built:
    """What one build made."""

    tree: bytes                                  # the dataset's root tree id
    files: int
    bytes: int
    # dir ino -> (tree id, files, bytes, parent ino) of every directory made anew
    made: dict[int, tuple[bytes, int, int, int]] = field(default_factory=dict)
    raw: dict[bytes, bytes] = field(default_factory=dict)    # encoded trees, by id
    locations: dict[bytes, Location] = field(default_factory=dict)


class TreeBuilder:
    """Trees of the live namespace, reusing the cached ones of unchanged directories."""

    def __init__(self, index: Index, chunks: ChunkStore) -> None:
        self.index = index
        self.chunks = chunks

    def build(self, root: int, store: bool) -> Built:
        """Trees for the directory `root` and below (blocking; a worker thread).

        With store=False nothing is written: the trees stay in Built.raw."""
        built = Built(b"", 0, 0)
        with self.index.read() as t:
            built.tree, built.files, built.bytes = self._dir(t, root, built, store)
        return built

    def _dir(self, t: Txn, ino: int, built: Built, store: bool) -> tuple[bytes, int, int]:
        cached = t.get_dirtree(ino)
        if cached is not None:
            return cached
        # entries are encoded straight from the index records (this loop is what a
        # first snapshot of a big dataset costs)
        entries: list[tuple[bytes, bytes]] = []
        files = nbytes = 0
        for _, name, child in t.iter_entries(ino):
            inode = t.get_inode(child)
            if inode is None:
                continue
            mode, size, count = inode.mode, inode.size, 0
            if stat.S_ISDIR(mode):
                payload, count, size = self._dir(t, child, built, store)
                files, nbytes = files + count, nbytes + size
            elif stat.S_ISREG(mode):
                payload = t.get_content_raw(child)
                count = len(payload) // CONTENT_ENTRY.size
                files, nbytes = files + 1, nbytes + size
            else:
                payload = inode.target
            entries.append((name, encode_entry(name, mode, inode.uid, inode.gid,
                                               inode.mtime_ns, inode.ctime_ns, size, count,
                                               payload, t.xattr_items(child))))
        entries.sort()
        raw = encode_tree([e for _, e in entries])
        if store:
            tid, loc = self.chunks.put(raw)
            if loc is not None:
                built.locations[tid] = loc
        else:
            tid = chunk_id(raw)
            built.raw[tid] = raw
        built.made[ino] = (tid, files, nbytes, self._parent(t, ino))
        return tid, files, nbytes

    @staticmethod
    def _parent(t: Txn, ino: int) -> int:
        inode = t.get_inode(ino)
        return inode.parent if inode is not None else 0

    def cache(self, built: Built, changed: set[int]) -> None:
        """Record the built trees as the cached trees of their directories, except
        for directories changed since the build began and every directory above
        them (a directory with no cached tree must have none cached above it)."""
        stale: set[int] = set()
        with self.index.read() as t:
            for ino in changed:
                # up through the parents the build saw and those the index has now
                # (a changed directory may have been reused from its cached tree,
                # or moved, while the build ran)
                seen: set[int] = set()
                todo = [ino]
                while todo:
                    ino = todo.pop()
                    if ino in seen:
                        continue
                    seen.add(ino)
                    stale.add(ino)
                    if ino in built.made:
                        todo.append(built.made[ino][3])
                    inode = t.get_inode(ino)
                    if inode is not None and inode.parent != ino:
                        todo.append(inode.parent)
        with self.index.write() as t:
            for cid, loc in built.locations.items():
                if t.get_location(cid) is None:
                    t.put_location(cid, loc)
            for ino, (tid, files, nbytes, _) in built.made.items():
                if ino not in stale:
                    t.put_dirtree(ino, tid, files, nbytes)


class TreeLoader:
    """Decoded trees by id, from a recent build or the chunk store."""

    def __init__(self, chunks: ChunkStore) -> None:
        self.chunks = chunks
        self._cache: OrderedDict[bytes, Tree] = OrderedDict()
        self._entries = 0

    async def load(self, tid: bytes, extra: dict[bytes, bytes] | None = None) -> Tree:
        """A tree by id; `extra` holds encoded trees not in the store (Built.raw)."""
        tree = self._cache.get(tid)
        if tree is not None:
            self._cache.move_to_end(tid)
            return tree
        raw = extra.get(tid) if extra else None
        tree = decode_tree(raw if raw is not None else await self.chunks.get(tid))
        self._cache[tid] = tree
        self._entries += len(tree.entries) + 1
        while self._entries > TREE_CACHE_ENTRIES and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._entries -= len(old.entries) + 1
        return tree

    async def walk(self, tid: bytes, prefix: str = "") -> AsyncIterator[tuple[str, TreeEntry]]:
        """(path, entry) of everything below a tree, parents before children."""
        for e in (await self.load(tid)).entries:
            path = prefix + e.name.decode(errors="surrogateescape")
            yield path, e
            if e.kind == "dir":
                async for sub in self.walk(e.tree, path + "/"):
                    yield sub
