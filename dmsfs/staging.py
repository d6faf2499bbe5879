"""Staging files: packs in the making, in the state dir.

A staging file holds raw chunks back to back after the pack magic; beside it an
append-only log records each blob's PackEntry.  Chunks are staged raw so that a
file's close() costs a hash and a write, not a compression: sealing, in a worker
thread, compresses each chunk (kept raw when zstd does not shrink it) into a
pack file beside the staging file, with the entry table and footer, which then
moves into the store under the staging id.  (On a full disk the staging file
itself, with the table and footer appended, becomes the pack, uncompressed.)

Appends are plain writes: once a file commit that references a staged chunk is
in LMDB, the chunk's bytes are in the OS page cache and survive a crash of the
daemon; fsync() makes them survive power loss.  After a crash, load() keeps
exactly the entries whose blobs are complete and decode to their blake3 id.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .codec import ENTRY, PACK_MAGIC, PackEntry, compress, encode_pack_index, open_blob
from .errors import Corrupt


class StagingFile:
    """One open staging container."""

    def __init__(self, directory: Path, sid: bytes) -> None:
        self.id = sid
        self.data_path = directory / f"{sid.hex()}.dat"
        self.idx_path = directory / f"{sid.hex()}.idx"
        self.pack_path = directory / f"{sid.hex()}.pack"
        self.fd = os.open(self.data_path, os.O_RDWR | os.O_CREAT, 0o600)
        self.idx_fd = os.open(self.idx_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self.size = os.fstat(self.fd).st_size
        if self.size == 0:
            os.write(self.fd, PACK_MAGIC)
            self.size = len(PACK_MAGIC)
        self.entries: list[PackEntry] = []

    def append(self, cid: bytes, raw: bytes | memoryview) -> PackEntry:
        """Write one raw chunk at the end (caller serialises appends)."""
        entry = PackEntry(cid, self.size, len(raw), len(raw), 0)
        os.pwrite(self.fd, raw, self.size)
        os.write(self.idx_fd, entry.pack())
        self.size += len(raw)
        self.entries.append(entry)
        return entry

    def read(self, entry: PackEntry) -> bytes:
        return self.read_at(entry.offset, entry.stored_len)

    def read_at(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def load(self) -> list[PackEntry]:
        """Recover the valid entries after a restart; drop a torn tail."""
        valid: list[PackEntry] = []
        end = len(PACK_MAGIC)
        for e in logged(self):
            if e.offset + e.stored_len > self.size:
                continue
            try:
                open_blob(self.read(e), e.flags, e.raw_len, e.cid)
            except Corrupt:
                continue
            valid.append(e)
            end = max(end, e.offset + e.stored_len)
        self.entries = valid
        self.size = end
        return valid

    def seal(self, level: int) -> tuple[Path, list[PackEntry], int]:
        """Make this file's pack, synced: its path, entries and size (blocking and
        CPU-bound: call from a worker thread).

        The pack is written beside the staging file with every chunk compressed at
        zstd `level`.  A full disk has no room for that second copy: then the
        staging file itself becomes the pack, its chunks left raw."""
        try:
            entries, size = self._compress_into_pack(level)
            return self.pack_path, entries, size
        except OSError as e:
            self.pack_path.unlink(missing_ok=True)
            if e.errno != errno.ENOSPC:
                raise
        tail = encode_pack_index(self.entries)
        os.ftruncate(self.fd, self.size)  # drop bytes of blobs that never got an entry
        os.pwrite(self.fd, tail, self.size)
        os.fsync(self.fd)
        return self.data_path, self.entries, self.size + len(tail)

    def _compress_into_pack(self, level: int) -> tuple[list[PackEntry], int]:
        entries: list[PackEntry] = []
        with open(self.pack_path, "wb") as out:
            out.write(PACK_MAGIC)
            at = len(PACK_MAGIC)
            for e in self.entries:
                blob, flags = self.read(e), e.flags
                if not flags:  # (earlier versions staged chunks compressed)
                    blob, flags = compress(blob, level)
                out.write(blob)
                entries.append(PackEntry(e.cid, at, len(blob), e.raw_len, flags))
                at += len(blob)
            out.write(encode_pack_index(entries))
            out.flush()
            os.fsync(out.fileno())
            return entries, out.tell()

    def sync(self) -> None:
        os.fsync(self.fd)
        os.fsync(self.idx_fd)

    def remove(self) -> None:
        """Forget the file (after its pack is stored)."""
        os.close(self.fd)
        os.close(self.idx_fd)
        self.pack_path.unlink(missing_ok=True)
        self.data_path.unlink(missing_ok=True)
        self.idx_path.unlink(missing_ok=True)


def logged(sf: StagingFile) -> list[PackEntry]:
    """The entries a staging file's log names, unverified."""
    log = os.pread(sf.idx_fd, os.fstat(sf.idx_fd).st_size, 0)
    return [PackEntry.unpack(log[p : p + ENTRY.size])
            for p in range(0, len(log) - ENTRY.size + 1, ENTRY.size)]


def existing(directory: Path) -> list[bytes]:
    """Ids of staging files left in the directory (by a previous run)."""
    return [bytes.fromhex(p.stem) for p in sorted(directory.glob("*.idx"))]
