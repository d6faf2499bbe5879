"""What the store looks like as a file system: the live tree of every dataset.

The root lists datasets; each dataset is a directory holding an ordinary tree
of files, directories and symlinks, and, reachable by name only (unless
versions are visible), its read-only `@version` folders, which Snapshots
serves.  Every operation here is one short LMDB
transaction on the trio thread, except file data, which goes through a
FileWriter (writes) or the ChunkStore (reads).  Metadata changes commit at once;
file data commits when a writer is flushed (close), so a file is either its old
or its new content, never a mix.

Inputs are raw names (bytes) and inode numbers; outputs are Inode records.  Any
failure is a DmsfsError that says which errno it means.
"""

from __future__ import annotations

import logging
import re
import stat
import time

import trio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .content import ChunkList
from .errors import (
    CrossDataset,
    Exists,
    InvalidArgument,
    InvalidName,
    IsADirectory,
    NameTooLong,
    NoAttribute,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
    NotSupported,
    ReadOnly,
    SchemaRejected,
)
from .index import HOLE, ROOT_INO, Inode, Txn
from .chunkio import open_content
from .repo import Repo
from .schemas import SchemaVersion
from .restore import Restorer
from .snapfs import VERSION_COOKIE_BASE, Snapshots, is_snapshot
from .writer import FileWriter, RingPool

if TYPE_CHECKING:
    from .validation.streaming import StreamedValidation
    from .validation.validator import Verdict

log = logging.getLogger(__name__)

NAME_MAX = 255
XATTR_VALUE_MAX = 65536
DATASET_NAME = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
READ_AHEAD_CHUNKS = 2
# a remote store answers in tens of ms: keep enough in flight to hide that, across packs
REMOTE_READ_AHEAD_CHUNKS = 24
# and further ahead, into its disk cache only (memory holds just the nearer chunks)
REMOTE_WARM_AHEAD_CHUNKS = 96


@dataclass
class Handle:
    """One open file."""

    ino: int
    uid: int = 0
    next_offset: int = 0
    warmed: int = 0      # chunks before this one were handed to the store's read-ahead


@dataclass
class Rule:
    """The schema that applies to one file."""

    dataset: str
    path: str
    version: SchemaVersion
    fmt: str


def _same_rule(a: Rule, b: Rule | None) -> bool:
    """The same schema version applies to the same path in the same format."""
    return b is not None and (a.dataset, a.path, a.version.number, a.fmt) == (
        b.dataset, b.path, b.version.number, b.fmt)


@dataclass
class OpenInode:
    """Per-inode state shared by all of its open handles."""

    content: ChunkList
    handles: int = 0
    writer: FileWriter | None = None
    fresh: bool = False          # created by this open and not yet committed
    # validation running while the file is written, and the rule it applies
    streamed: tuple[Rule, StreamedValidation] | None = None
    # Attribute changes (mode, uid, gid, atime_ns, mtime_ns, ctime_ns) made while
    # the file has uncommitted data: they commit with it, in one transaction.
    # Writes set mtime; the kernel sends its own ctime (writeback caching).
    attrs: dict[str, int] = field(default_factory=dict)

    @property
    def pending(self) -> bool:
        return self.writer is not None and self.writer.changed


class KernelCache(Protocol):
    """What the kernel caches of the tree, for changes made behind its back
    (restore, new versions).  The FUSE layer provides it."""

    async def forget_entry(self, parent: int, name: bytes) -> None: ...

    async def forget_inode(self, ino: int) -> None: ...


class NoKernelCache:
    async def forget_entry(self, parent: int, name: bytes) -> None:
        return None

    async def forget_inode(self, ino: int) -> None:
        return None


def _now() -> int:
    return time.time_ns()


def _with_type(inode: Inode, changes: dict[str, int]) -> dict[str, int]:
    """Attribute changes with a new mode keeping the inode's file type bits."""
    if "mode" not in changes:
        return changes
    return {**changes, "mode": stat.S_IFMT(inode.mode) | stat.S_IMODE(changes["mode"])}


def _check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise NameTooLong()
    if not name or b"/" in name or name in (b".", b".."):
        raise InvalidName(f"invalid name {name!r}")


class Vfs:
    """File-system semantics over a Repo."""

    def __init__(self, repo: Repo, *, versions_visible: bool = False) -> None:
        self.repo = repo
        self.index = repo.index
        self.read_only = repo.read_only
        self.versions_visible = versions_visible
        remote = repo.store.remote
        self._read_ahead = REMOTE_READ_AHEAD_CHUNKS if remote else READ_AHEAD_CHUNKS
        self._warm_ahead = REMOTE_WARM_AHEAD_CHUNKS if remote else 0
        self.snaps = Snapshots(repo.versions)
        self.kernel: KernelCache = NoKernelCache()
        repo.versions.listeners.append(self._versions_changed)
        self._handles: dict[int, Handle] = {}
        self._open: dict[int, OpenInode] = {}
        self._next_fh = 1
        # The kernel's references (lookup counts) per inode, and inodes whose last
        # name is gone but which a handle or the kernel may still use (pyfuse3's
        # contract: an unlinked inode lives on until its lookup count is zero).
        self._lookups: dict[int, int] = {}
        self._orphans: set[int] = set()
        # (parent, name) of live inodes the kernel knows: the path a schema's globs
        # are matched against at close (a directory holds no name of its own)
        self._names: dict[int, tuple[int, bytes]] = {}
        # read-only attributes the daemon publishes on the mount root (its API socket)
        self.root_xattrs: dict[bytes, bytes] = {}
        self._spool_dir = repo.state_dir / "spool"
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        self._rings = RingPool()

    # ------------------------------------------------------------ helpers
    def _writable(self, *inos: int) -> None:
        """Refuse changes on a read-only mount or to anything in a snapshot."""
        if self.read_only or any(map(is_snapshot, inos)):
            raise ReadOnly()

    def refuse_link(self, parent: int) -> None:
        """Hard links: EROFS where nothing may change, else EPERM (not supported)."""
        self._writable(parent)
        raise NotPermitted("hard links are not supported")

    @staticmethod
    def _dataset_name(t: Txn, ino: int) -> str | None:
        """The name of dataset directory ino (None if ino is not one)."""
        if ino == ROOT_INO or is_snapshot(ino):
            return None
        # few datasets: a scan of the root beats keeping names by inode
        return next((name.decode() for _, name, child in t.iter_entries(ROOT_INO)
                     if child == ino), None)

    @staticmethod
    def _get(t: Txn, ino: int) -> Inode:
        inode = t.get_inode(ino)
        if inode is None:
            raise NotFound(f"no inode {ino}")
        return inode

    def _dir(self, t: Txn, ino: int) -> Inode:
        inode = self._get(t, ino)
        if not stat.S_ISDIR(inode.mode):
            raise NotADirectory()
        return inode

    def _check_new_name(self, t: Txn, parent: Inode, name: bytes, is_dir: bool) -> None:
        _check_name(name)
        if parent.ino == ROOT_INO:
            if not is_dir:
                raise NotPermitted("only dataset directories live at the top level")
            if not DATASET_NAME.fullmatch(name):
                raise InvalidName(f"invalid dataset name {name!r}")
        elif parent.parent == ROOT_INO and name.startswith(b"@"):
            raise InvalidName("names starting with @ are reserved at a dataset root")

    def dataset_of(self, t: Txn, ino: int) -> int:
        """Inode of the dataset directory that holds ino (ROOT_INO for the root)."""
        while ino != ROOT_INO:
            inode = self._get(t, ino)
            if inode.parent == ROOT_INO:
                return ino
            ino = inode.parent
        return ROOT_INO

    def _touch_dir(self, t: Txn, parent: Inode, now: int) -> None:
        parent.mtime_ns = parent.ctime_ns = now
        t.put_inode(parent)

    def _drop(self, t: Txn, inode: Inode) -> None:
        """Remove an inode whose last name is gone.  Its bytes leave the live tree
        now; the inode itself stays while it is open or known to the kernel (a path
        looked up just before a rename over it must still open)."""
        if stat.S_ISREG(inode.mode):
            t.add_counter("live_bytes", -inode.size)
        if inode.ino in self._open or self._lookups.get(inode.ino):
            self._orphans.add(inode.ino)
            t.add_orphan(inode.ino)
            return
        t.delete_inode(inode.ino)

    def _reap(self, ino: int) -> None:
        """Delete an orphan once no handle has it open and the kernel forgot it."""
        if ino in self._orphans and ino not in self._open and not self._lookups.get(ino):
            self._orphans.discard(ino)
            with self.index.write() as t:
                t.delete_inode(ino)

    def remember(self, ino: int) -> None:
        """The kernel was given ino once more (an entry from lookup, create, readdir)."""
        if is_snapshot(ino):
            self.snaps.remember(ino)
            return
        self._lookups[ino] = self._lookups.get(ino, 0) + 1

    def forget(self, ino: int, count: int) -> None:
        """The kernel dropped count of its references to ino."""
        if is_snapshot(ino):
            self.snaps.forget(ino, count)
            return
        left = self._lookups.get(ino, 0) - count
        if left > 0:
            self._lookups[ino] = left
            return
        self._lookups.pop(ino, None)
        self._names.pop(ino, None)
        self._reap(ino)

    # ------------------------------------------------------------ attributes
    def ensure_root(self, uid: int, gid: int) -> None:
        """Create the root directory of a new index; clean up orphans of a crash."""
        with self.index.write() as t:
            if t.get_inode(ROOT_INO) is None:
                now = _now()
                t.put_inode(Inode(ROOT_INO, stat.S_IFDIR | 0o755, uid, gid, 0, now, now, now,
                                  ROOT_INO))
            for ino in t.iter_orphans():
                t.delete_inode(ino)  # its bytes left live_bytes when it was unlinked

    def getattr(self, ino: int) -> Inode:
        if is_snapshot(ino):
            return self.snaps.getattr(ino)
        with self.index.read() as t:
            inode = self._get(t, ino)
        state = self._open.get(ino)
        if state is not None and state.writer is not None:
            inode.size = state.writer.size
            for key, value in state.attrs.items():
                setattr(inode, key, value)
        return inode

    async def lookup(self, parent: int, name: bytes) -> Inode:
        if name == b".":
            return self.getattr(parent)
        if name == b"..":
            return self.getattr(self.getattr(parent).parent)
        if len(name) > NAME_MAX:
            raise NameTooLong()
        if is_snapshot(parent):
            return await self.snaps.lookup(parent, name)
        with self.index.read() as t:
            ino = t.lookup(parent, name)
            if ino is None:
                self._dir(t, parent)
                dataset = self._dataset_name(t, parent) if name.startswith(b"@") else None
                if dataset is None:
                    raise NotFound()
        if ino is None:
            return self.snaps.lookup_version(parent, dataset, name)
        self._names[ino] = (parent, name)
        return self.getattr(ino)

    async def readdir(self, ino: int, after: int) -> Iterator[tuple[int, bytes, Inode]]:
        """(cookie, name, attributes) of entries after the cookie `after`."""
        if is_snapshot(ino):
            return await self.snaps.readdir(ino, after)
        return self._readdir(ino, after)

    def _readdir(self, ino: int, after: int) -> Iterator[tuple[int, bytes, Inode]]:
        with self.index.read() as t:
            self._dir(t, ino)
            dataset = self._dataset_name(t, ino) if self.versions_visible else None
            if after < VERSION_COOKIE_BASE:
                for cookie, name, child in t.iter_entries(ino, after):
                    inode = t.get_inode(child)
                    if inode is not None:
                        self._names[child] = (ino, name)
                        yield cookie, name, inode
        if dataset is not None:
            for cookie, name in self.snaps.version_names(dataset):
                if cookie > after:
                    yield cookie, name, self.snaps.lookup_version(ino, dataset, name)

    def setattr(self, ino: int, **changes: int | None) -> Inode:
        """Change mode, uid, gid, atime_ns, mtime_ns or ctime_ns (None: unchanged).

        On a file with uncommitted data the change waits for that data's commit
        (cp -a and tar set owner, mode and times before close: one transaction
        instead of four)."""
        self._writable(ino)
        changes = {k: v for k, v in changes.items() if v is not None}
        changes.setdefault("ctime_ns", _now())
        state = self._open.get(ino)
        if state is not None and state.pending:
            state.attrs.update(_with_type(self.getattr(ino), changes))
            return self.getattr(ino)
        with self.index.write() as t:
            inode = self._get(t, ino)
            for key, value in _with_type(inode, changes).items():
                setattr(inode, key, value)
            t.put_inode(inode)
        return self.getattr(ino)

    async def truncate(self, ino: int, size: int) -> Inode:
        """Set a file's size; committed now unless the file is open for writing."""
        self._writable(ino)
        inode = self.getattr(ino)
        if stat.S_ISDIR(inode.mode):
            raise IsADirectory()
        if size < 0:
            raise InvalidArgument("negative size")
        state = self._state(ino)
        try:
            writer = self._writer(ino, state)
            async with writer.lock:
                await writer.truncate(size)
            state.attrs["mtime_ns"] = _now()
            if state.handles == 1:  # not open elsewhere: truncate(2) is committed now
                await self._commit(ino, state)
        finally:
            self._release_state(ino, state)
        return self.getattr(ino)

    # ------------------------------------------------------------ namespace changes
    def _new_inode(self, t: Txn, parent: int, name: bytes, mode: int, uid: int, gid: int,
                   target: bytes = b"") -> Inode:
        p = self._dir(t, parent)
        self._check_new_name(t, p, name, stat.S_ISDIR(mode))
        if t.lookup(parent, name) is not None:
            raise Exists()
        now = _now()
        inode = Inode(t.allocate_ino(), mode, uid, gid, len(target), now, now, now, parent,
                      target)
        t.put_inode(inode)
        t.add_entry(parent, name, inode.ino)
        self._names[inode.ino] = (parent, name)
        self._touch_dir(t, p, now)
        return inode

    def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Inode:
        self._writable(parent)
        with self.index.write() as t:
            return self._new_inode(t, parent, name, stat.S_IFDIR | stat.S_IMODE(mode), uid, gid)

    def mknod(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Inode:
        self._writable(parent)
        if not stat.S_ISREG(mode):
            raise NotPermitted("only regular files, directories and symlinks are stored")
        with self.index.write() as t:
            return self._new_inode(t, parent, name, mode, uid, gid)

    def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int) -> Inode:
        self._writable(parent)
        with self.index.write() as t:
            return self._new_inode(t, parent, name, stat.S_IFLNK | 0o777, uid, gid, target)

    def readlink(self, ino: int) -> bytes:
        if is_snapshot(ino):
            return self.snaps.readlink(ino)
        inode = self.getattr(ino)
        if not stat.S_ISLNK(inode.mode):
            raise InvalidArgument("not a symlink")
        return inode.target

    def _child(self, t: Txn, parent: int, name: bytes) -> tuple[Inode, Inode]:
        """(parent directory, the inode its entry `name` names)."""
        p = self._dir(t, parent)
        ino = t.lookup(parent, name)
        if ino is None:
            if p.parent == ROOT_INO and name.startswith(b"@") and parent != ROOT_INO:
                raise ReadOnly("@ names at a dataset root are read-only snapshots")
            raise NotFound()
        return p, self._get(t, ino)

    def _check_no_versions(self, t: Txn, parent: int, name: bytes) -> None:
        """A dataset with versions may not be removed or renamed: its history would
        go with the name."""
        if parent == ROOT_INO and next(t.iter_versions(name.decode()), None) is not None:
            raise NotEmpty(f"dataset {name.decode()} has snapshots")

    def unlink(self, parent: int, name: bytes) -> None:
        self._writable(parent)
        with self.index.write() as t:
            p, inode = self._child(t, parent, name)
            if stat.S_ISDIR(inode.mode):
                raise IsADirectory()
            t.remove_entry(parent, name)
            self._touch_dir(t, p, _now())
            self._drop(t, inode)

    def rmdir(self, parent: int, name: bytes) -> None:
        self._writable(parent)
        with self.index.write() as t:
            p, inode = self._child(t, parent, name)
            if not stat.S_ISDIR(inode.mode):
                raise NotADirectory()
            if t.has_entries(inode.ino):
                raise NotEmpty()
            self._check_no_versions(t, parent, name)
            t.remove_entry(parent, name)
            self._touch_dir(t, p, _now())
            t.delete_inode(inode.ino)

    async def rename(self, old_parent: int, old: bytes, new_parent: int, new: bytes,
                     noreplace: bool = False, uid: int = 0) -> None:
        """Move a name, replacing what the target name held, in one transaction.  A
        file that gets a name its dataset's schema applies to is validated first."""
        self._writable(old_parent, new_parent)
        await self._validate_rename(old_parent, old, new_parent, new, uid)
        with self.index.write() as t:
            op, inode = self._child(t, old_parent, old)
            self._check_no_versions(t, old_parent, old)
            ino = inode.ino
            np = op if new_parent == old_parent else self._dir(t, new_parent)
            is_dir = stat.S_ISDIR(inode.mode)
            self._check_new_name(t, np, new, is_dir)
            if old_parent != new_parent and (
                self.dataset_of(t, old_parent) != self.dataset_of(t, new_parent)
                or ROOT_INO in (old_parent, new_parent)
            ):
                raise CrossDataset()
            target_ino = t.lookup(new_parent, new)
            if target_ino == ino:
                return
            if target_ino is not None:
                if noreplace:
                    raise Exists()
                target = self._get(t, target_ino)
                if stat.S_ISDIR(target.mode):
                    if not is_dir:
                        raise IsADirectory()
                    if t.has_entries(target_ino):
                        raise NotEmpty()
                    t.delete_inode(target_ino)
                else:
                    if is_dir:
                        raise NotADirectory()
                    self._drop(t, target)
            now = _now()
            t.remove_entry(old_parent, old)
            t.add_entry(new_parent, new, ino)
            self._names[ino] = (new_parent, new)
            inode.parent = new_parent
            inode.ctime_ns = now
            t.put_inode(inode)
            self._touch_dir(t, op, now)
            if np is not op:
                self._touch_dir(t, np, now)

    # ------------------------------------------------------------ extended attributes
    @staticmethod
    def _xattr_name(name: bytes) -> bytes:
        if len(name) > NAME_MAX:
            raise NameTooLong()
        return name

    def getxattr(self, ino: int, name: bytes) -> bytes:
        if ino == ROOT_INO and name in self.root_xattrs:
            return self.root_xattrs[name]
        if not name.startswith(b"user."):
            # Only user.* is stored.  "Not supported", not "no such attribute": ls -l
            # then stops asking for ACLs and security labels on this mount instead
            # of paying a request per file for each (it remembers per device).
            raise NotSupported("only user.* extended attributes are stored")
        if is_snapshot(ino):
            return self.snaps.getxattr(ino, name)
        with self.index.read() as t:
            value = t.get_xattr(ino, self._xattr_name(name))
            if value is None:
                self._get(t, ino)
                raise NoAttribute()
            return bytes(value)

    def listxattr(self, ino: int) -> list[bytes]:
        if is_snapshot(ino):
            return self.snaps.listxattr(ino)
        with self.index.read() as t:
            self._get(t, ino)
            names = t.list_xattrs(ino)
        return [*self.root_xattrs, *names] if ino == ROOT_INO else names

    def setxattr(self, ino: int, name: bytes, value: bytes) -> None:
        self._writable(ino)
        if not name.startswith(b"user."):
            raise NotSupported("only user.* extended attributes are stored")
        if len(value) > XATTR_VALUE_MAX:
            raise InvalidArgument("extended attribute value too large")
        with self.index.write() as t:
            inode = self._get(t, ino)
            t.put_xattr(ino, self._xattr_name(name), value)
            inode.ctime_ns = _now()
            t.put_inode(inode)

    def removexattr(self, ino: int, name: bytes) -> None:
        self._writable(ino)
        with self.index.write() as t:
            inode = self._get(t, ino)
            if not t.delete_xattr(ino, self._xattr_name(name)):
                raise NoAttribute()
            inode.ctime_ns = _now()
            t.put_inode(inode)

    # ------------------------------------------------------------ file data
    def _state(self, ino: int) -> OpenInode:
        state = self._open.get(ino)
        if state is None:
            if is_snapshot(ino):
                content = self.snaps.content(ino)
            else:
                with self.index.read() as t:
                    content = ChunkList(t.get_content(ino))
            state = self._open[ino] = OpenInode(content)
        state.handles += 1
        return state

    def _release_state(self, ino: int, state: OpenInode) -> None:
        state.handles -= 1
        if state.handles == 0:
            if state.writer is not None:
                state.writer.close()
            del self._open[ino]
            self._reap(ino)

    def _writer(self, ino: int, state: OpenInode) -> FileWriter:
        if state.writer is None:
            state.writer = FileWriter(state.content, self._spool_dir, self.repo.chunks,
                                      self.repo.chunker, self._rings)
        return state.writer

    def _new_handle(self, ino: int, uid: int) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = Handle(ino, uid)
        return fh

    async def open(self, ino: int, write: bool, truncate: bool, uid: int = 0) -> int:
        """Open a regular file; returns a handle."""
        inode = self.getattr(ino)
        if stat.S_ISDIR(inode.mode):
            raise IsADirectory()
        if write:
            self._writable(ino)
        state = self._state(ino)
        if truncate and write:
            writer = self._writer(ino, state)
            async with writer.lock:
                await writer.truncate(0)
            state.attrs["mtime_ns"] = _now()
        return self._new_handle(ino, uid)

    def create(self, parent: int, name: bytes, mode: int, uid: int, gid: int
               ) -> tuple[int, Inode]:
        self._writable(parent)
        with self.index.write() as t:
            inode = self._new_inode(t, parent, name, stat.S_IFREG | stat.S_IMODE(mode), uid, gid)
        self._state(inode.ino).fresh = True
        return self._new_handle(inode.ino, uid), inode

    async def read(self, fh: int, offset: int, length: int) -> list[bytes | memoryview]:
        """The bytes of [offset, offset + length), as the pieces they are kept in
        (views into chunks, mostly): the caller joins them where it needs to."""
        h = self._handles[fh]
        state = self._open[h.ino]
        sequential = offset == h.next_offset
        h.next_offset = offset + length
        writer = state.writer
        if writer is not None and writer.changed:
            # Under the lock: a write, truncate or commit while this read waits for a
            # chunk would change the ranges and the spool it walks (wrong bytes).
            async with writer.lock:
                return [await writer.read(offset, length)]
        content = state.content
        spans = list(content.spans(offset, offset + length))
        if sequential and spans:
            self._ask_ahead(h, content, spans[-1][0] + 1)
        parts: list[bytes | memoryview] = []
        for _, _, cid, lo, hi in spans:
            parts.append(bytes(hi - lo) if cid == HOLE else
                         memoryview(await self.repo.chunks.get(cid))[lo:hi])
        return parts

    def _ask_ahead(self, h: Handle, content: ChunkList, nxt: int) -> None:
        """Ask for what follows chunk nxt before waiting for what is asked now."""
        for cid, _ in content.chunks[nxt : nxt + self._read_ahead]:
            if cid != HOLE:
                self.repo.chunks.prefetch(cid)
        end = nxt + self._warm_ahead
        for cid, _ in content.chunks[max(h.warmed, nxt + self._read_ahead) : end]:
            if cid != HOLE:
                self.repo.chunks.warm(cid)
        h.warmed = max(h.warmed, end)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        self._writable()
        ino = self._handles[fh].ino
        state = self._open[ino]
        writer = self._writer(ino, state)
        async with writer.lock:
            await writer.write(offset, data)
        state.attrs["mtime_ns"] = _now()
        if writer.wants_background_cut():
            self._validate_as_written(ino, state, writer)
            self.repo.chunks.start_task(writer.background_cut)
        return len(data)

    def _validate_as_written(self, ino: int, state: OpenInode, writer: FileWriter) -> None:
        """Start validating a big file written front to back as its bytes are cut,
        so close() does not read it all again."""
        if not writer.can_stream or state.streamed is not None:
            return
        rule = self._schema_rule(ino)
        if rule is None:
            return
        from .validation.streaming import STREAMABLE, StreamedValidation
        if rule.fmt not in STREAMABLE:
            return
        stream = StreamedValidation(rule.version.validator, rule.fmt)
        writer.stream_to(stream)
        state.streamed = (rule, stream)

    async def _commit(self, ino: int, state: OpenInode, uid: int = 0) -> None:
        writer = state.writer
        if writer is None or not writer.changed:
            return
        async with writer.lock:
            if not writer.changed:
                return
            result = await writer.commit()
            whole = writer.take_stream() is not None
            streamed, state.streamed = state.streamed, None
            rule = self._schema_rule(ino)
            if streamed is not None and not (whole and _same_rule(streamed[0], rule)):
                streamed[1].abort()
                streamed = None
            if rule is not None:
                if streamed is not None:
                    verdict = await trio.to_thread.run_sync(streamed[1].verdict)
                    log.info("validated %s/%s while it was written", rule.dataset, rule.path)
                else:
                    verdict = await self._validate(result.content, rule)
                if not verdict.ok:
                    await self._refuse(ino, state, rule, verdict, uid)
            with self.index.write() as t:
                inode = self._get(t, ino)
                for cid, loc in result.new_locations.items():
                    if t.get_location(cid) is None:
                        t.put_location(cid, loc)
                t.put_content(ino, result.content.chunks)
                if ino not in self._orphans:  # an unlinked file is no live bytes
                    t.add_counter("live_bytes", result.content.size - inode.size)
                inode.size = result.content.size
                inode.ctime_ns = _now()
                for key, value in state.attrs.items():
                    setattr(inode, key, value)
                t.put_inode(inode)
            writer.committed(result.content)
            state.content = result.content
            state.attrs.clear()
            state.fresh = False

    async def flush(self, fh: int) -> None:
        """Commit what was written through any handle of this file (close())."""
        h = self._handles[fh]
        await self._commit(h.ino, self._open[h.ino], h.uid)

    async def fsync(self, fh: int) -> None:
        await self.flush(fh)
        await self.repo.sync()

    async def release(self, fh: int) -> None:
        h = self._handles.pop(fh)
        state = self._open[h.ino]
        try:
            await self._commit(h.ino, state, h.uid)
        finally:
            self._release_state(h.ino, state)

    # ------------------------------------------------------------ datasets and schemas
    async def create_dataset(self, dataset: str, uid: int, gid: int) -> None:
        """mkdir at the top level, from the control API."""
        self.mkdir(ROOT_INO, dataset.encode(), 0o755, uid, gid)
        await self.kernel.forget_entry(ROOT_INO, dataset.encode())  # a cached miss


    def _path_in_dataset(self, ino: int) -> tuple[str, str] | None:
        """(dataset, path inside it) of a live inode, from the names the kernel knows."""
        parts: list[bytes] = []
        while ino in self._names:
            parent, name = self._names[ino]
            if parent == ROOT_INO:
                path = b"/".join(reversed(parts)).decode(errors="surrogateescape")
                return name.decode(), path
            parts.append(name)
            ino = parent
        return None

    def _schema_rule(self, ino: int, where: tuple[str, str] | None = None) -> Rule | None:
        """The schema that applies to the file at ino (or at `where`), if any."""
        where = where or self._path_in_dataset(ino)
        if where is None:
            return None
        dataset, path = where
        version = self.repo.schemas.current(dataset)
        fmt = version.applies_to(path) if version is not None and path else None
        return Rule(dataset, path, version, fmt) if version is not None and fmt else None

    async def _validate(self, content: ChunkList, rule: Rule) -> Verdict:
        def run() -> Verdict:
            with open_content(content, self.repo.chunks) as f:
                return rule.version.validator.validate(f, rule.fmt)
        return await trio.to_thread.run_sync(run, limiter=self.repo.chunks.cpu)

    async def _refuse(self, ino: int, state: OpenInode, rule: Rule, verdict: Verdict,
                      uid: int) -> None:
        """Drop a file's uncommitted changes, leave its name with its previous
        committed content (a new inode: the kernel trusts the size it cached for the
        old one) or without it if it was new, record why, raise EINVAL."""
        assert state.writer is not None
        state.writer.committed(state.content)
        state.attrs.clear()
        parent, name = self._names[ino]
        with self.index.write() as t:
            inode = self._get(t, ino)
            if t.lookup(parent, name) == ino:
                t.remove_entry(parent, name)
                if not state.fresh:
                    self._copy_inode(t, inode, parent, name)
                self._drop(t, inode)
        self._names.pop(ino, None)
        error = self._rejected(rule, verdict, uid)
        await self.kernel.forget_entry(parent, name)
        raise error

    def _rejected(self, rule: Rule, verdict: Verdict, uid: int) -> SchemaRejected:
        """Record a refused write; the error that reports it."""
        self.repo.schemas.reject(rule.dataset, rule.path, uid, rule.version, verdict)
        log.info("refused %s/%s: record %s %s: %s", rule.dataset, rule.path, verdict.first,
                 verdict.pointer, verdict.message)
        return SchemaRejected(f"{rule.dataset}/{rule.path} does not match schema version "
                              f"{rule.version.number}: record {verdict.first}: "
                              f"{verdict.message}")

    def _copy_inode(self, t: Txn, inode: Inode, parent: int, name: bytes) -> None:
        """Give name a new inode with inode's committed attributes, content, xattrs."""
        copy = Inode(t.allocate_ino(), inode.mode, inode.uid, inode.gid, inode.size,
                     inode.atime_ns, inode.mtime_ns, inode.ctime_ns, parent, inode.target)
        t.put_inode(copy)
        t.put_content(copy.ino, t.get_content(inode.ino))
        for xname, value in t.xattr_items(inode.ino):
            t.put_xattr(copy.ino, xname, value)
        t.add_entry(parent, name, copy.ino)
        t.add_counter("live_bytes", copy.size)

    async def _validate_rename(self, old_parent: int, old: bytes, new_parent: int,
                               new: bytes, uid: int) -> None:
        """Validate the files a rename gives names the schema applies to (and that
        their old names did not): the file renamed, or, for a directory and globs
        with a /, the files below it."""
        with self.index.read() as t:
            ino = t.lookup(old_parent, old)
            inode = t.get_inode(ino) if ino is not None else None
        parent_where = self._path_in_dataset(new_parent) if new_parent in self._names else None
        if inode is None or parent_where is None:
            return
        self._names.setdefault(inode.ino, (old_parent, old))
        before = self._path_in_dataset(inode.ino)
        dataset, dir_path = parent_where
        version = self.repo.schemas.current(dataset)
        if version is None or (stat.S_ISDIR(inode.mode)
                               and not any("/" in g for g in version.globs)):
            return
        after = f"{dir_path}/{new.decode(errors='surrogateescape')}".lstrip("/")
        for rel, content in self._files_below(inode):
            old_path = f"{before[1]}/{rel}".strip("/") if before else None
            new_path = f"{after}/{rel}".strip("/")
            rule = self._schema_rule(0, (dataset, new_path))
            if rule is None or (old_path is not None and self._schema_rule(0, (dataset,
                                                                               old_path))):
                continue
            verdict = await self._validate(content, rule)
            if not verdict.ok:
                raise self._rejected(rule, verdict, uid)

    def _files_below(self, inode: Inode) -> list[tuple[str, ChunkList]]:
        """(path relative to inode, content) of inode itself if a file, or of every
        file below it if a directory."""
        out: list[tuple[str, ChunkList]] = []
        with self.index.read() as t:
            todo = [(inode, "")]
            while todo:
                node, rel = todo.pop()
                if stat.S_ISREG(node.mode):
                    out.append((rel, ChunkList(t.get_content(node.ino))))
                elif stat.S_ISDIR(node.mode):
                    for _, name, child in t.iter_entries(node.ino):
                        sub = t.get_inode(child)
                        if sub is not None:
                            todo.append((sub, f"{rel}/{name.decode(errors='surrogateescape')}"
                                         .lstrip("/")))
        return out

    # ------------------------------------------------------------ versions
    async def _versions_changed(self, dataset: str, names: list[bytes]) -> None:
        try:
            ino = self.repo.versions.dataset_ino(dataset)
        except NotFound:
            return  # no live directory: the kernel has nothing cached under it
        for name in names:
            await self.kernel.forget_entry(ino, name)

    async def restore(self, dataset: str, spec: str, path: str | None, *, uid: int
                      ) -> dict[str, object]:
        """Make the live tree (or one path of it) equal to a version."""
        self._writable()
        result = await Restorer(self).run(dataset, spec, path)
        log.info("restore of %s%s to %s by uid %d: %s", dataset, f"/{path}" if path else "",
                 spec, uid, {k: result[k] for k in ("added", "removed", "changed")})
        return result

    async def ensure_datasets(self) -> None:
        """Give every dataset known only by its versions (a new state dir over an old
        store) a live tree: its latest version."""
        for dataset in self.repo.versions.datasets():
            with self.index.write() as t:
                if t.lookup(ROOT_INO, dataset.encode()) is not None:
                    continue
                root = self._get(t, ROOT_INO)
                self._new_inode(t, ROOT_INO, dataset.encode(), stat.S_IFDIR | 0o755,
                                root.uid, root.gid)
            await self.kernel.forget_entry(ROOT_INO, dataset.encode())  # a cached miss
            await Restorer(self).run(dataset, "latest", None)

    # ------------------------------------------------------------ file system
    def statfs(self) -> dict[str, int]:
        return self.repo.statfs()
