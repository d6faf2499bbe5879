"""The FUSE protocol adapter: convert arguments, call the Vfs, convert results.

This is the one place where errors become errno: every handler is wrapped by
`fuse_errors`, which turns a DmsfsError into its errno, an OSError (spool disk
full, say) into its own errno, and anything unexpected into a logged EIO.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pyfuse3
import trio

from dmsfs.errors import DmsfsError, NotFound
from dmsfs.index import Inode
from dmsfs.snapfs import is_snapshot
from dmsfs.vfs import Vfs

log = logging.getLogger(__name__)

# Only this daemon changes the tree, and every change passes through the kernel
# (or, for restores and new versions, is invalidated in it), so the kernel may
# keep names and attributes for long; snapshot entries never change at all.
LIVE_TIMEOUT = 300.0
SNAPSHOT_TIMEOUT = 86400.0
BLKSIZE = 1 << 20  # tools size their I/O buffers by st_blksize: ask for big requests

T = TypeVar("T")


class WithdrawnReplies(logging.Filter):
    """pyfuse3 logs an error when a reply finds its request gone (ENOENT): the kernel
    withdrew it (caller interrupted, or an asynchronous release during unmount).
    Nothing is lost then, so it is worth an info line, not an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and "fuse_reply_" in str(record.msg) and \
                record.args and record.args[-1] == os.strerror(errno.ENOENT):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


logging.getLogger("pyfuse3").addFilter(WithdrawnReplies())


def fuse_errors(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except DmsfsError as e:
            if e.errno == errno.EIO:
                log.error("%s failed: %s", fn.__name__, e)
            raise pyfuse3.FUSEError(e.errno) from None
        except OSError as e:
            log.error("%s failed: %s", fn.__name__, e)
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except Exception:
            log.exception("%s failed unexpectedly", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


class ReplyBuffer:
    """One buffer in which read replies made of several chunks are put together.

    pyfuse3 sends a read's reply as soon as the handler returns, with no await in
    between, so no other request can touch the buffer before the kernel has
    copied it.  A new 1 MiB object per read would cost a page fault per page."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def join(self, parts: Sequence[bytes | memoryview]) -> memoryview:
        size = sum(len(p) for p in parts)
        if len(self._buf) < size:
            self._buf = bytearray(size)   # a new one: views of the old may live on
        view = memoryview(self._buf)
        at = 0
        for p in parts:
            view[at:at + len(p)] = p
            at += len(p)
        return view[:size]


def entry(inode: Inode) -> pyfuse3.EntryAttributes:
    a = pyfuse3.EntryAttributes()
    a.st_ino = inode.ino
    a.entry_timeout = a.attr_timeout = SNAPSHOT_TIMEOUT if is_snapshot(inode.ino) \
        else LIVE_TIMEOUT
    a.st_mode = inode.mode
    a.st_nlink = 1
    a.st_uid = inode.uid
    a.st_gid = inode.gid
    a.st_size = inode.size
    a.st_blksize = BLKSIZE
    a.st_blocks = -(-inode.size // 512)
    a.st_atime_ns = inode.atime_ns
    a.st_mtime_ns = inode.mtime_ns
    a.st_ctime_ns = inode.ctime_ns
    return a


class KernelCache:
    """Invalidation of the kernel's caches, for changes made behind its back.

    The calls block until the kernel is done (and may wait for requests on the
    same names), so they run in worker threads while this loop keeps serving."""

    async def forget_entry(self, parent: int, name: bytes) -> None:
        await trio.to_thread.run_sync(self._quietly, pyfuse3.invalidate_entry, parent, name)

    async def forget_inode(self, ino: int) -> None:
        await trio.to_thread.run_sync(self._quietly, pyfuse3.invalidate_inode, ino)

    @staticmethod
    def _quietly(fn: Callable[..., None], *args: object) -> None:
        try:
            fn(*args)
        except OSError as e:  # ENOENT: the kernel had nothing cached
            if e.errno != errno.ENOENT:
                log.warning("cache invalidation %s%s failed: %s", fn.__name__, args, e)


class Operations(pyfuse3.Operations):
    """pyfuse3 request handlers over one Vfs."""

    enable_writeback_cache = True
    supports_dot_lookup = True

    def __init__(self, vfs: Vfs) -> None:
        super().__init__()
        self.vfs = vfs
        self._reply = ReplyBuffer()
        self.initialized = trio.Event()
        vfs.kernel = KernelCache()

    def init(self) -> None:
        """The kernel's INIT came; the reply goes out when this returns."""
        self.initialized.set()

    @fuse_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
                     ) -> pyfuse3.EntryAttributes:
        try:
            found = self._entry(await self.vfs.lookup(parent_inode, name))
            if self.vfs.snaps.named_by_prefix(parent_inode, name):
                found.entry_timeout = 0
            return found
        except NotFound:
            negative = pyfuse3.EntryAttributes()  # st_ino 0: the kernel caches the miss
            # ... except of @names, which a snapshot or tag may bring at any time
            negative.entry_timeout = 0 if name.startswith(b"@") else LIVE_TIMEOUT
            return negative

    def _entry(self, inode: Inode) -> pyfuse3.EntryAttributes:
        """An entry the kernel will hold a reference to (until it sends forget)."""
        self.vfs.remember(inode.ino)
        return entry(inode)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        # no reply to the kernel: nothing may be raised
        for ino, count in inode_list:
            try:
                self.vfs.forget(ino, count)
            except Exception:
                log.exception("forget of inode %d failed", ino)

    @fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None
                      ) -> pyfuse3.EntryAttributes:
        return entry(self.vfs.getattr(inode))

    @fuse_errors
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if fields.update_size:
            await self.vfs.truncate(inode, attr.st_size)
        changed = self.vfs.setattr(
            inode,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            ctime_ns=attr.st_ctime_ns if fields.update_ctime else None,
        )
        return entry(changed)

    @fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return self.vfs.readlink(inode)

    @fuse_errors
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(self.vfs.mknod(parent_inode, name, mode, ctx.uid, ctx.gid))

    @fuse_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(self.vfs.mkdir(parent_inode, name, mode, ctx.uid, ctx.gid))

    @fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.vfs.unlink(parent_inode, name)

    @fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.vfs.rmdir(parent_inode, name)

    @fuse_errors
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(self.vfs.symlink(parent_inode, name, target, ctx.uid, ctx.gid))

    @fuse_errors
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        await self.vfs.rename(parent_inode_old, name_old, parent_inode_new, name_new,
                              noreplace=bool(flags & pyfuse3.RENAME_NOREPLACE), uid=ctx.uid)

    @fuse_errors
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self.vfs.refuse_link(new_parent_inode)

    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext
                   ) -> pyfuse3.FileInfo:
        write = flags & os.O_ACCMODE != os.O_RDONLY
        fh = await self.vfs.open(inode, write=write, truncate=bool(flags & os.O_TRUNC),
                                 uid=ctx.uid)
        # The page cache stays valid across opens: only this mount changes files.
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @fuse_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        fh, inode = self.vfs.create(parent_inode, name, mode, ctx.uid, ctx.gid)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True), self._entry(inode)

    @fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        parts = await self.vfs.read(fh, off, size)
        return parts[0] if len(parts) == 1 else self._reply.join(parts)

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self.vfs.write(fh, off, buf)

    @fuse_errors
    async def flush(self, fh: int) -> None:
        await self.vfs.flush(fh)

    @fuse_errors
    async def release(self, fh: int) -> None:
        await self.vfs.release(fh)

    @fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.vfs.fsync(fh)

    @fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        self.vfs.getattr(inode)
        return inode

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = await self.vfs.readdir(fh, start_id)
        try:
            for cookie, name, inode in entries:
                if not pyfuse3.readdir_reply(token, name, entry(inode), cookie):
                    break
                self.vfs.remember(inode.ino)  # readdirplus: the kernel holds the entry
        finally:
            entries.close()

    @fuse_errors
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self.vfs.repo.sync()

    @fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = pyfuse3.StatvfsData()
        for key, value in self.vfs.statfs().items():
            setattr(st, key, value)
        return st

    @fuse_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        self.vfs.setxattr(inode, name, value)

    @fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        return self.vfs.getxattr(inode, name)

    @fuse_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        return self.vfs.listxattr(inode)

    @fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.vfs.removexattr(inode, name)
