"""The read-only `@version` folders: inodes for the entries of stored trees.

Snapshot entries have no LMDB inode; they get inode numbers from a range of
their own (SNAP_INO_BASE and up) when the kernel first looks them up, and keep
them while the kernel holds a reference (lookup counts, as for live inodes).
A `@name` at a dataset root resolves to a version each time it is looked up, so
`@latest` and tags follow new snapshots; the node made for it stays bound to
the version it named, as its content may never change.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .content import ChunkList
from .errors import InvalidArgument, NoAttribute, NotADirectory, NotFound
from .index import Inode
from .tree import Tree, TreeEntry
from .versions import Versions

SNAP_INO_BASE = 1 << 56
VERSION_COOKIE_BASE = 1 << 62   # readdir cookies of @names, after the live entries


def is_snapshot(ino: int) -> bool:
    return ino >= SNAP_INO_BASE


@dataclass(slots=True)
class Node:
    """One entry of a version the kernel knows."""

    ino: int
    parent: int
    key: tuple[int, bytes, str]
    entry: TreeEntry
    lookups: int = 0

    def inode(self) -> Inode:
        e = self.entry
        size = 0 if e.kind == "dir" else e.size
        return Inode(self.ino, e.mode, e.uid, e.gid, size, e.mtime_ns, e.mtime_ns, e.ctime_ns,
                     self.parent, e.target)


class Snapshots:
    """Nodes of the `@version` trees, by inode number."""

    def __init__(self, versions: Versions) -> None:
        self.versions = versions
        self._nodes: dict[int, Node] = {}
        self._by_key: dict[tuple[int, bytes, str], int] = {}
        self._next = SNAP_INO_BASE
        # @names bound by an id prefix: later versions may make them ambiguous
        self._by_prefix: set[tuple[int, bytes]] = set()

    def _node(self, ino: int) -> Node:
        node = self._nodes.get(ino)
        if node is None:
            raise NotFound(f"no snapshot inode {ino}")
        return node

    def _bind(self, parent: int, entry: TreeEntry, version: str, name: bytes) -> Node:
        """The node for `name` in parent (one per name and version), made if new."""
        key = (parent, name, version)
        ino = self._by_key.get(key)
        if ino is None:
            ino, self._next = self._next, self._next + 1
            self._nodes[ino] = Node(ino, parent, key, entry)
            self._by_key[key] = ino
        return self._nodes[ino]

    def _version_of(self, node: Node) -> str:
        return node.key[2]

    # ------------------------------------------------------------ lookups
    def lookup_version(self, dataset_ino: int, dataset: str, name: bytes) -> Inode:
        """`@spec` at a dataset root: the top directory of that version."""
        try:
            spec = name[1:].decode()
        except UnicodeDecodeError:
            raise NotFound() from None
        try:
            record, by_prefix = self.versions.resolve_how(dataset, spec)
        except InvalidArgument:  # an ambiguous prefix names nothing
            raise NotFound() from None
        if by_prefix:
            self._by_prefix.add((dataset_ino, name))
        return self._bind(dataset_ino, record.root_entry(), record.id, name).inode()

    def named_by_prefix(self, parent: int, name: bytes) -> bool:
        """The kernel must not cache this name: a later version may share the prefix."""
        return (parent, name) in self._by_prefix

    async def _tree(self, node: Node) -> Tree:
        if node.entry.kind != "dir":
            raise NotADirectory()
        return await self.versions.trees.load(node.entry.tree)

    async def lookup(self, parent: int, name: bytes) -> Inode:
        node = self._node(parent)
        entry = (await self._tree(node)).find(name)
        if entry is None:
            raise NotFound()
        return self._bind(parent, entry, self._version_of(node), name).inode()

    def getattr(self, ino: int) -> Inode:
        return self._node(ino).inode()

    def parent_of(self, ino: int) -> int:
        return self._node(ino).parent

    async def readdir(self, ino: int, after: int) -> Iterator[tuple[int, bytes, Inode]]:
        """(cookie, name, attributes) of the entries after cookie `after`; a node is
        made as each entry is taken (the kernel takes as many as fit its buffer)."""
        node = self._node(ino)
        tree = await self._tree(node)
        version = self._version_of(node)
        return ((i + 1, tree.entries[i].name,
                 self._bind(ino, tree.entries[i], version, tree.entries[i].name).inode())
                for i in range(after, len(tree.entries)))

    def readlink(self, ino: int) -> bytes:
        entry = self._node(ino).entry
        if entry.kind != "symlink":
            raise InvalidArgument("not a symlink")
        return entry.target

    def content(self, ino: int) -> ChunkList:
        return ChunkList(list(self._node(ino).entry.chunks))

    def getxattr(self, ino: int, name: bytes) -> bytes:
        value = self._node(ino).entry.xattrs.get(name)
        if value is None:
            raise NoAttribute()
        return value

    def listxattr(self, ino: int) -> list[bytes]:
        return list(self._node(ino).entry.xattrs)

    # ------------------------------------------------------------ kernel references
    def remember(self, ino: int) -> None:
        self._node(ino).lookups += 1

    def forget(self, ino: int, count: int) -> None:
        node = self._nodes.get(ino)
        if node is None:
            return
        node.lookups -= count
        if node.lookups <= 0:
            del self._nodes[ino]
            del self._by_key[node.key]

    def version_names(self, dataset: str) -> Iterator[tuple[int, bytes]]:
        """(cookie, name) of the @names a dataset root lists with --versions-visible."""
        records = self.versions.list(dataset)
        names = [b"@latest"] if records else []
        names += [f"@v{r.number}".encode() for r in reversed(records)]
        names += sorted({f"@{t}".encode() for r in records for t in r.tags})
        for i, name in enumerate(names):
            yield VERSION_COOKIE_BASE + i + 1, name
