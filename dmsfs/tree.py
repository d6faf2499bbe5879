"""Tree objects: the immutable, content-addressed manifest of one directory.

A snapshot is a tree of these, like git's: each directory's entries, sorted by
name, with every attribute a restore needs and, for a subdirectory, the id of its
own tree.  A tree's id is the blake3 of its encoding, and trees are stored as
blobs through the chunk store, so an unchanged subtree is the same object in
every version that holds it.  Layout (little-endian):

    "DMSTREE1" | entry*
    entry  = ENTRY header | name | payload | xattr*
    ENTRY  = mode u32 | uid u32 | gid u32 | mtime i64 ns | ctime i64 ns
             | size u64 | count u64 | name len u16 | xattrs u16
    payload: file     count x (chunk id 32 | length u32)      size = file size
             dir      tree id 32; count = files below it,     size = their bytes
             symlink  target (size bytes)
    xattr  = name len u16 | value len u32 | name | value
"""

from __future__ import annotations

import bisect
import stat
import struct
from dataclasses import dataclass, field

from .codec import ID_SIZE
from .errors import Corrupt
from .index import CONTENT_ENTRY

TREE_MAGIC = b"DMSTREE1"
ENTRY = struct.Struct("<IIIqqQQHH")
CHUNK_REF = CONTENT_ENTRY
XATTR = struct.Struct("<HI")


@dataclass(slots=True)
class TreeEntry:
    """One name in a directory manifest."""

    name: bytes
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    ctime_ns: int
    size: int                       # file bytes; for a directory, bytes below it
    chunks: list[tuple[bytes, int]] = field(default_factory=list)
    tree: bytes = b""               # a directory's tree id
    files: int = 0                  # a directory: regular files below it
    target: bytes = b""             # a symlink's target
    xattrs: dict[bytes, bytes] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        if stat.S_ISDIR(self.mode):
            return "dir"
        if stat.S_ISLNK(self.mode):
            return "symlink"
        return "file"

    def same_content(self, other: TreeEntry) -> bool:
        """Same bytes (files), same tree (dirs) or same target (symlinks)."""
        return (self.chunks == other.chunks and self.tree == other.tree
                and self.target == other.target)


@dataclass(slots=True)
class Tree:
    """A decoded directory manifest; entries sorted by name."""

    entries: list[TreeEntry]
    names: list[bytes] = field(init=False)

    def __post_init__(self) -> None:
        self.names = [e.name for e in self.entries]

    def find(self, name: bytes) -> TreeEntry | None:
        i = bisect.bisect_left(self.names, name)
        return self.entries[i] if i < len(self.names) and self.names[i] == name else None

    @property
    def files(self) -> int:
        return sum(e.files if e.kind == "dir" else e.kind == "file" for e in self.entries)

    @property
    def bytes(self) -> int:
        return sum(e.size for e in self.entries if e.kind != "symlink")


def encode_entry(name: bytes, mode: int, uid: int, gid: int, mtime_ns: int, ctime_ns: int,
                 size: int, count: int, payload: bytes,
                 xattrs: list[tuple[bytes, bytes]]) -> bytes:
    """One entry's encoding; payload as the layout above says (for a file, the
    chunk refs exactly as the index stores a file's content)."""
    out = [ENTRY.pack(mode, uid, gid, mtime_ns, ctime_ns, size, count, len(name),
                      len(xattrs)), name, payload]
    for k, v in sorted(xattrs):
        out += (XATTR.pack(len(k), len(v)), k, v)
    return b"".join(out)


def encode_tree(entries: list[bytes]) -> bytes:
    """A tree from encoded entries, which must be sorted by name."""
    return TREE_MAGIC + b"".join(entries)


def decode_tree(buf: bytes) -> Tree:
    """Parse a tree object; Corrupt if it is not one."""
    if not buf.startswith(TREE_MAGIC):
        raise Corrupt("not a tree object")
    view = memoryview(buf)
    pos, end = len(TREE_MAGIC), len(buf)
    entries: list[TreeEntry] = []
    try:
        while pos < end:
            mode, uid, gid, mtime, ctime, size, count, nlen, nx = ENTRY.unpack_from(view, pos)
            pos += ENTRY.size
            e = TreeEntry(bytes(view[pos:pos + nlen]), mode, uid, gid, mtime, ctime, size)
            pos += nlen
            if stat.S_ISDIR(mode):
                e.tree, e.files = bytes(view[pos:pos + ID_SIZE]), count
                pos += ID_SIZE
            elif stat.S_ISLNK(mode):
                e.target = bytes(view[pos:pos + size])
                pos += size
            else:
                n = count * CHUNK_REF.size
                e.chunks = list(CHUNK_REF.iter_unpack(view[pos:pos + n]))
                pos += n
            for _ in range(nx):
                klen, vlen = XATTR.unpack_from(view, pos)
                pos += XATTR.size
                e.xattrs[bytes(view[pos:pos + klen])] = bytes(view[pos + klen:pos + klen + vlen])
                pos += klen + vlen
            entries.append(e)
    except struct.error as exc:
        raise Corrupt("truncated tree object") from exc
    if pos != end:
        raise Corrupt("truncated tree object")
    return Tree(entries)
