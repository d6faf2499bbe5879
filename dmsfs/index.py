"""The LMDB index: the only module that knows key and value layouts.

One LMDB environment (``index.lmdb`` in the state dir) with these named tables;
all integers are big-endian in keys (so they sort) and little-endian in values:

    meta      name (ascii)                    -> value      store id, next inode, counters
    inodes    ino u64                         -> INODE      attributes + parent (+ symlink target)
    dirents   parent u64 | hash62(name) u64 | name -> child ino u64
    content   ino u64                         -> n x (chunk id 32 | length u32)   file data
    xattrs    ino u64 | name                  -> value
    chunks    chunk id 32                     -> LOCATION   where its blob is
    packs     pack id 32                      -> size u64 | blobs u32
    orphans   ino u64                         -> b""        unlinked while still open
    dirtrees  dir ino u64                     -> tree id 32 | files u64 | bytes u64
    versions  dataset | 0 | number u32        -> version record (JSON, as in the store)
    tags      dataset | 0 | tag               -> version number u32
    schemas   dataset | 0 | number u32        -> schema version (JSON, as in the store)
    rejects   dataset | 0 | time ns u64       -> a rejected write (JSON)

    INODE    = mode u32 | uid u32 | gid u32 | size u64 | atime, mtime, ctime i64 ns
               | parent u64 | symlink target (rest)
    LOCATION = container id 32 | offset u64 | stored len u32 | raw len u32 | flags u8

Directory entries sort by a 62-bit hash of the name, so readdir can resume at
any entry with an integer cookie and a lookup is one get.  A chunk id of 32 zero
bytes in a content list is a hole (zeros, nothing stored).  A container is a
pack in the store or, with FLAG_STAGED, a staging file in the state dir.

The inode's parent pointer (no hard links, so exactly one) lets a snapshot
re-serialise only the directories on the path to a change: `dirtrees` caches the
tree object of each directory unchanged since the last snapshot, and every write
that changes a directory's entries or an attribute of one of them (put_inode,
add_entry, remove_entry) deletes the cached tree of that directory and of its
ancestors in the same transaction.  A directory without a cached tree has none
cached above it either, so that walk stops at the first miss.

Transactions are short and synchronous; none is held across an await.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import blake3
import lmdb

from .codec import ID_SIZE
from .errors import NoSpace

U64 = struct.Struct(">Q")
INODE = struct.Struct("<IIIQqqqQ")
CONTENT_ENTRY = struct.Struct("<32sI")
LOCATION = struct.Struct("<32sQIIB")
PACK_INFO = struct.Struct("<QI")
HOLE = bytes(ID_SIZE)
PARTIAL_WRITE_ROOM = 1 << 20   # less free space than this after a failed commit: "full"
ROOT_INO = 1
TABLES = ("meta", "inodes", "dirents", "content", "xattrs", "chunks", "packs", "orphans",
          "dirtrees", "versions", "tags", "schemas", "rejects")
DIRTREE = struct.Struct("<32sQQ")
VERSION_NUMBER = struct.Struct(">I")
COUNTERS = ("live_bytes", "stored_bytes", "packs", "chunks", "chunk_bytes")


def name_hash(name: bytes) -> int:
    """62-bit hash ordering a directory's entries; also the readdir cookie base."""
    return int.from_bytes(blake3.blake3(name).digest(8), "big") >> 2


def _dirent_key(parent: int, name: bytes) -> bytes:
    return U64.pack(parent) + U64.pack(name_hash(name)) + name


@dataclass(slots=True)
class Inode:
    """Attributes of one file, directory or symlink."""

    ino: int
    mode: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    parent: int
    target: bytes = b""

    def encode(self) -> bytes:
        return (
            INODE.pack(self.mode, self.uid, self.gid, self.size, self.atime_ns,
                       self.mtime_ns, self.ctime_ns, self.parent)
            + self.target
        )

    @classmethod
    def decode(cls, ino: int, buf: bytes) -> Inode:
        return cls(ino, *INODE.unpack_from(buf), target=bytes(buf[INODE.size :]))


@dataclass(frozen=True, slots=True)
class Location:
    """Where a chunk's blob is stored."""

    container: bytes
    offset: int
    stored_len: int
    raw_len: int
    flags: int

    def encode(self) -> bytes:
        return LOCATION.pack(self.container, self.offset, self.stored_len, self.raw_len,
                             self.flags)

    @classmethod
    def decode(cls, buf: bytes) -> Location:
        return cls(*LOCATION.unpack(buf))


def encode_content(chunks: list[tuple[bytes, int]]) -> bytes:
    return b"".join(CONTENT_ENTRY.pack(cid, n) for cid, n in chunks)


def decode_content(buf: bytes) -> list[tuple[bytes, int]]:
    return list(CONTENT_ENTRY.iter_unpack(buf))


def _dataset_key(dataset: str, suffix: bytes) -> bytes:
    return dataset.encode() + b"\0" + suffix


class Txn:
    """Typed access to the tables inside one LMDB transaction."""

    def __init__(self, txn: lmdb.Transaction, index: Index) -> None:
        self.txn = txn
        self.index = index
        self.db = index.dbs
        self._xattr_cursor: lmdb.Cursor | None = None

    # -- meta and counters
    def get_meta(self, key: str) -> bytes | None:
        return self.txn.get(key.encode(), db=self.db["meta"])

    def put_meta(self, key: str, value: bytes) -> None:
        self.txn.put(key.encode(), value, db=self.db["meta"])

    def counter(self, key: str) -> int:
        raw = self.get_meta(key)
        return int.from_bytes(raw, "little", signed=True) if raw else 0

    def add_counter(self, key: str, delta: int) -> None:
        if delta:
            self.put_meta(key, (self.counter(key) + delta).to_bytes(8, "little", signed=True))

    def allocate_ino(self) -> int:
        ino = max(self.counter("next_ino"), ROOT_INO + 1)
        self.put_meta("next_ino", (ino + 1).to_bytes(8, "little", signed=True))
        return ino

    # -- inodes
    def get_inode(self, ino: int) -> Inode | None:
        raw = self.txn.get(U64.pack(ino), db=self.db["inodes"])
        return Inode.decode(ino, raw) if raw is not None else None

    def put_inode(self, inode: Inode) -> None:
        """Store an inode (file content, stored apart, always commits with its inode)."""
        self.txn.put(U64.pack(inode.ino), inode.encode(), db=self.db["inodes"])
        self._stale(inode.parent)

    def delete_inode(self, ino: int) -> None:
        key = U64.pack(ino)
        self.txn.delete(key, db=self.db["inodes"])
        self.txn.delete(key, db=self.db["content"])
        self.txn.delete(key, db=self.db["orphans"])
        self.txn.delete(key, db=self.db["dirtrees"])
        for xkey in list(self._prefix_keys("xattrs", key)):
            self.txn.delete(xkey, db=self.db["xattrs"])

    def iter_inodes(self) -> Iterator[Inode]:
        for key, raw in self.txn.cursor(db=self.db["inodes"]):
            yield Inode.decode(U64.unpack(key)[0], raw)

    # -- directory entries
    def lookup(self, parent: int, name: bytes) -> int | None:
        raw = self.txn.get(_dirent_key(parent, name), db=self.db["dirents"])
        return U64.unpack(raw)[0] if raw is not None else None

    def add_entry(self, parent: int, name: bytes, ino: int) -> None:
        self.txn.put(_dirent_key(parent, name), U64.pack(ino), db=self.db["dirents"])
        self._stale(parent)

    def remove_entry(self, parent: int, name: bytes) -> None:
        self.txn.delete(_dirent_key(parent, name), db=self.db["dirents"])
        self._stale(parent)

    def iter_entries(self, parent: int, after: int = 0) -> Iterator[tuple[int, bytes, int]]:
        """(cookie, name, ino) of parent's entries whose cookie is greater than after."""
        prefix = U64.pack(parent)
        cur = self.txn.cursor(db=self.db["dirents"])
        if not cur.set_range(prefix + U64.pack(after)):
            return
        for key, raw in cur:
            if key[:8] != prefix:
                return
            yield U64.unpack(key[8:16])[0] + 1, key[16:], U64.unpack(raw)[0]

    def has_entries(self, parent: int) -> bool:
        return next(self.iter_entries(parent), None) is not None

    # -- file content
    def get_content(self, ino: int) -> list[tuple[bytes, int]]:
        raw = self.txn.get(U64.pack(ino), db=self.db["content"])
        return decode_content(raw) if raw else []

    def get_content_raw(self, ino: int) -> bytes:
        """A file's content as stored: n x (chunk id 32 | length u32)."""
        return bytes(self.txn.get(U64.pack(ino), db=self.db["content"]) or b"")

    def put_content(self, ino: int, chunks: list[tuple[bytes, int]]) -> None:
        self.txn.put(U64.pack(ino), encode_content(chunks), db=self.db["content"])

    def iter_content(self) -> Iterator[tuple[int, list[tuple[bytes, int]]]]:
        for key, raw in self.txn.cursor(db=self.db["content"]):
            yield U64.unpack(key)[0], decode_content(raw)

    # -- extended attributes
    def get_xattr(self, ino: int, name: bytes) -> bytes | None:
        return self.txn.get(U64.pack(ino) + name, db=self.db["xattrs"])

    def put_xattr(self, ino: int, name: bytes, value: bytes) -> None:
        self.txn.put(U64.pack(ino) + name, value, db=self.db["xattrs"])

    def delete_xattr(self, ino: int, name: bytes) -> bool:
        return bool(self.txn.delete(U64.pack(ino) + name, db=self.db["xattrs"]))

    def list_xattrs(self, ino: int) -> list[bytes]:
        return [k[8:] for k in self._prefix_keys("xattrs", U64.pack(ino))]

    def xattr_items(self, ino: int) -> list[tuple[bytes, bytes]]:
        """(name, value) of every xattr of ino, with one cursor kept per transaction."""
        if self._xattr_cursor is None:
            self._xattr_cursor = self.txn.cursor(db=self.db["xattrs"])
        cur, prefix = self._xattr_cursor, U64.pack(ino)
        items: list[tuple[bytes, bytes]] = []
        if cur.set_range(prefix):
            for key, value in cur:
                if not key.startswith(prefix):
                    break
                items.append((bytes(key[8:]), bytes(value)))
        return items

    def _prefix_keys(self, table: str, prefix: bytes) -> Iterator[bytes]:
        cur = self.txn.cursor(db=self.db[table])
        if not cur.set_range(prefix):
            return
        for key in cur.iternext(values=False):
            if not key.startswith(prefix):
                return
            yield key

    # -- cached trees of unchanged directories
    def get_dirtree(self, ino: int) -> tuple[bytes, int, int] | None:
        """(tree id, files, bytes) of a directory unchanged since its tree was made."""
        raw = self.txn.get(U64.pack(ino), db=self.db["dirtrees"])
        return DIRTREE.unpack(raw) if raw is not None else None

    def put_dirtree(self, ino: int, tree: bytes, files: int, nbytes: int) -> None:
        self.txn.put(U64.pack(ino), DIRTREE.pack(tree, files, nbytes), db=self.db["dirtrees"])

    def _stale(self, ino: int) -> None:
        """Directory ino changed: drop its cached tree and its ancestors'."""
        self.index.note_stale(ino)
        while ino != ROOT_INO and self.txn.delete(U64.pack(ino), db=self.db["dirtrees"]):
            inode = self.get_inode(ino)
            if inode is None:
                return
            ino = inode.parent

    # -- versions and tags
    def get_version(self, dataset: str, number: int) -> bytes | None:
        return self.txn.get(_dataset_key(dataset, VERSION_NUMBER.pack(number)),
                            db=self.db["versions"])

    def put_version(self, dataset: str, number: int, record: bytes) -> None:
        self.txn.put(_dataset_key(dataset, VERSION_NUMBER.pack(number)), record,
                     db=self.db["versions"])

    def iter_versions(self, dataset: str | None = None) -> Iterator[bytes]:
        """Version records of one dataset (or all), oldest first per dataset."""
        return self._records("versions", dataset)

    def get_tag(self, dataset: str, tag: str) -> int | None:
        raw = self.txn.get(_dataset_key(dataset, tag.encode()), db=self.db["tags"])
        return VERSION_NUMBER.unpack(raw)[0] if raw is not None else None

    def put_tag(self, dataset: str, tag: str, number: int) -> None:
        self.txn.put(_dataset_key(dataset, tag.encode()), VERSION_NUMBER.pack(number),
                     db=self.db["tags"])

    def delete_tag(self, dataset: str, tag: str) -> bool:
        return bool(self.txn.delete(_dataset_key(dataset, tag.encode()), db=self.db["tags"]))

    def reset_tags(self) -> None:
        self.txn.drop(self.db["tags"], delete=False)

    def iter_tags(self, dataset: str) -> Iterator[tuple[str, int]]:
        """(tag, version number) of one dataset's tags."""
        prefix = _dataset_key(dataset, b"")
        cur = self.txn.cursor(db=self.db["tags"])
        if not cur.set_range(prefix):
            return
        for key, raw in cur:
            if not key.startswith(prefix):
                return
            yield bytes(key[len(prefix):]).decode(), VERSION_NUMBER.unpack(raw)[0]

    # -- schema versions and rejected writes
    def put_schema(self, dataset: str, number: int, record: bytes) -> None:
        self.txn.put(_dataset_key(dataset, VERSION_NUMBER.pack(number)), record,
                     db=self.db["schemas"])

    def iter_schemas(self, dataset: str | None = None) -> Iterator[bytes]:
        """Schema versions of one dataset (or all), oldest first per dataset."""
        return self._records("schemas", dataset)

    def add_reject(self, dataset: str, time_ns: int, record: bytes) -> None:
        self.txn.put(_dataset_key(dataset, U64.pack(time_ns)), record, db=self.db["rejects"])

    def iter_rejects(self, dataset: str) -> Iterator[bytes]:
        return self._records("rejects", dataset)

    def _records(self, table: str, dataset: str | None) -> Iterator[bytes]:
        prefix = _dataset_key(dataset, b"") if dataset is not None else b""
        cur = self.txn.cursor(db=self.db[table])
        if not cur.set_range(prefix):
            return
        for key, raw in cur:
            if not key.startswith(prefix):
                return
            yield bytes(raw)

    # -- chunks and packs
    def get_location(self, cid: bytes) -> Location | None:
        raw = self.txn.get(cid, db=self.db["chunks"])
        return Location.decode(raw) if raw is not None else None

    def put_location(self, cid: bytes, loc: Location) -> bool:
        """Record where a chunk is; True if the chunk was not indexed before."""
        new = self.txn.get(cid, db=self.db["chunks"]) is None
        self.txn.put(cid, loc.encode(), db=self.db["chunks"])
        if new:
            self.add_counter("chunks", 1)
            self.add_counter("chunk_bytes", loc.raw_len)
        return new

    def delete_location(self, cid: bytes) -> None:
        """Forget a chunk whose blob is lost, so nothing dedups against it again."""
        raw = self.txn.get(cid, db=self.db["chunks"])
        if raw is not None:
            self.txn.delete(cid, db=self.db["chunks"])
            self.add_counter("chunks", -1)
            self.add_counter("chunk_bytes", -Location.decode(raw).raw_len)

    def reset_chunk_tables(self) -> None:
        """Forget every chunk location and pack (before rebuilding them)."""
        self.txn.drop(self.db["chunks"], delete=False)
        self.txn.drop(self.db["packs"], delete=False)
        for key in ("packs", "stored_bytes", "chunks", "chunk_bytes"):
            self.put_meta(key, (0).to_bytes(8, "little", signed=True))

    def iter_locations(self) -> Iterator[tuple[bytes, Location]]:
        for key, raw in self.txn.cursor(db=self.db["chunks"]):
            yield bytes(key), Location.decode(raw)

    def add_pack(self, pack_id: bytes, size: int, blobs: int) -> None:
        if self.txn.get(pack_id, db=self.db["packs"]) is None:
            self.add_counter("packs", 1)
            self.add_counter("stored_bytes", size)
        self.txn.put(pack_id, PACK_INFO.pack(size, blobs), db=self.db["packs"])

    def get_pack(self, pack_id: bytes) -> tuple[int, int] | None:
        """(size, blob count) of a stored pack."""
        raw = self.txn.get(pack_id, db=self.db["packs"])
        return None if raw is None else PACK_INFO.unpack(raw)

    def iter_packs(self) -> Iterator[tuple[bytes, int, int]]:
        for key, raw in self.txn.cursor(db=self.db["packs"]):
            yield (bytes(key), *PACK_INFO.unpack(raw))

    # -- orphans (unlinked while open; removed at last close or next start)
    def add_orphan(self, ino: int) -> None:
        self.txn.put(U64.pack(ino), b"", db=self.db["orphans"])

    def iter_orphans(self) -> list[int]:
        cur = self.txn.cursor(db=self.db["orphans"])
        return [U64.unpack(k)[0] for k in cur.iternext(values=False)]


class Index:
    """The LMDB environment.  Commits are not fsynced (see sync())."""

    def __init__(self, path: Path, map_size: int = 1 << 36) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        # sync=False: a committed transaction is in the OS page cache, which is what
        # survives a daemon crash; fsync()/sync() make it survive power loss too.
        self.env = lmdb.open(str(path), map_size=map_size, max_dbs=len(TABLES) + 2,
                             sync=False, metasync=False, readahead=False, max_readers=512)
        with self.env.begin(write=True) as txn:
            self.dbs = {name: self.env.open_db(name.encode(), txn=txn) for name in TABLES}
        self._stale_logs: list[set[int]] = []

    def disk_full(self, error: lmdb.Error) -> bool:
        """Whether a failed commit failed for want of room: ENOSPC, or the EIO LMDB
        reports when the disk took only part of a write."""
        if isinstance(error, lmdb.DiskError):
            return True
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize < PARTIAL_WRITE_ROOM

    def note_stale(self, ino: int) -> None:
        for log in self._stale_logs:
            log.add(ino)

    @contextmanager
    def watch_stale(self) -> Iterator[set[int]]:
        """Collect the directories changed inside the block (see TreeBuilder)."""
        log: set[int] = set()
        self._stale_logs.append(log)
        try:
            yield log
        finally:
            self._stale_logs.remove(log)

    def read(self) -> _TxnContext:
        """A read-only transaction, as a context manager yielding Txn."""
        return _TxnContext(self, write=False)

    def write(self) -> _TxnContext:
        """A write transaction, committed when the block exits without error."""
        return _TxnContext(self, write=True)

    def sync(self) -> None:
        """Flush committed transactions to disk (blocks; run in a thread)."""
        self.env.sync(True)

    def close(self) -> None:
        self.env.sync(True)
        self.env.close()


class _TxnContext:
    def __init__(self, index: Index, write: bool) -> None:
        self.index = index
        self.write = write

    def __enter__(self) -> Txn:
        self.txn = self.index.env.begin(write=self.write)
        return Txn(self.txn, self.index)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None and self.write:
            try:
                self.txn.commit()
            except lmdb.Error as e:
                if self.index.disk_full(e):
                    raise NoSpace(f"index: {e}") from e
                raise
        else:
            self.txn.abort()
