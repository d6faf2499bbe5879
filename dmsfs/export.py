"""One version of a dataset as a POSIX (pax) tar stream, for `dmsctl export`.

Headers come from the stdlib's tarfile (``TarInfo.tobuf``); file data is
streamed chunk by chunk from the chunk store, so memory stays bounded by a few
chunks whatever the file sizes.  Paths are relative to the dataset root, which
itself has no entry.  Nanosecond mtimes and ``user.*`` attributes go into pax
records (``mtime``, ``SCHILY.xattr.*``, as GNU tar writes them).
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from .index import HOLE

if TYPE_CHECKING:
    from .chunkstore import ChunkStore
    from .tree import TreeEntry
    from .versions import VersionRecord, Versions

# Pieces smaller than this (headers, padding, small files) are joined before they
# are sent: one HTTP chunk and one write per tiny member would dominate.
COALESCE = 256 << 10
ZEROS = bytes(1 << 20)
TAR_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE}
NS = 1_000_000_000


async def tar_stream(versions: Versions, chunks: ChunkStore,
                     record: VersionRecord) -> AsyncIterator[bytes]:
    """The tar archive of a version, in pieces of about COALESCE bytes or one chunk."""
    pending = bytearray()
    async for piece in _pieces(versions, chunks, record):
        if len(piece) >= COALESCE:  # a chunk: pass it on without copying
            if pending:
                yield bytes(pending)
                pending.clear()
            yield piece
            continue
        pending += piece
        if len(pending) >= COALESCE:
            yield bytes(pending)
            pending.clear()
    yield bytes(pending)


async def _pieces(versions: Versions, chunks: ChunkStore,
                  record: VersionRecord) -> AsyncIterator[bytes]:
    async for path, entry in versions.walk(record):
        yield tar_header(path, entry)
        if entry.kind == "file":
            async for data in _content(chunks, entry.chunks):
                yield data
            yield bytes(-entry.size % tarfile.BLOCKSIZE)
    yield bytes(2 * tarfile.BLOCKSIZE)  # end of archive


async def _content(chunks: ChunkStore, refs: list[tuple[bytes, int]]) -> AsyncIterator[bytes]:
    """A file's bytes: its chunks, and zeros for holes (in bounded pieces)."""
    for cid, length in refs:
        if cid != HOLE:
            yield await chunks.get(cid)
            continue
        for start in range(0, length, len(ZEROS)):
            yield ZEROS[:min(len(ZEROS), length - start)]


def tar_header(path: str, entry: TreeEntry) -> bytes:
    """The pax header block(s) of one entry."""
    info = tarfile.TarInfo(path)
    info.type = TAR_TYPES[entry.kind]
    info.mode = stat.S_IMODE(entry.mode)
    info.uid, info.gid = entry.uid, entry.gid
    info.mtime = entry.mtime_ns // NS
    info.size = entry.size if entry.kind == "file" else 0
    info.linkname = os.fsdecode(entry.target)
    info.pax_headers = {f"SCHILY.xattr.{os.fsdecode(k)}": os.fsdecode(v)
                        for k, v in entry.xattrs.items()}
    if entry.mtime_ns % NS:
        info.pax_headers["mtime"] = _pax_time(entry.mtime_ns)
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _pax_time(ns: int) -> str:
    """Seconds with nine decimals, exactly (a float would lose the nanoseconds)."""
    sec, frac = divmod(abs(ns), NS)
    return f"{'-' if ns < 0 else ''}{sec}.{frac:09d}"
