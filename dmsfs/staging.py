"""Staging files: packs in the making, in the state dir.

A staging file is laid out exactly like a pack (magic, then blobs); beside it
an append-only log records each blob's PackEntry.  Sealing appends the entry
table and footer and moves the file into the store under the staging id, so
chunk bytes are written once.

Appends are plain writes: once a file commit that references a staged chunk is
in LMDB, the chunk's bytes are in the OS page cache and survive a crash of the
daemon; fsync() makes them survive power loss.  After a crash, load() keeps
exactly the entries whose blobs are complete and decode to their blake3 id.
"""

from __future__ import annotations

import os
from pathlib import Path

from .codec import ENTRY, PACK_MAGIC, PackEntry, encode_pack_index, open_blob
from .errors import Corrupt


class StagingFile:
    """One open staging container."""

    def __init__(self, directory: Path, sid: bytes) -> None:
        self.id = sid
        self.data_path = directory / f"{sid.hex()}.dat"
        self.idx_path = directory / f"{sid.hex()}.idx"
        self.fd = os.open(self.data_path, os.O_RDWR | os.O_CREAT, 0o600)
        self.idx_fd = os.open(self.idx_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self.size = os.fstat(self.fd).st_size
        if self.size == 0:
            os.write(self.fd, PACK_MAGIC)
            self.size = len(PACK_MAGIC)
        self.entries: list[PackEntry] = []

    def append(self, cid: bytes, stored: bytes | memoryview, raw_len: int, flags: int
               ) -> PackEntry:
        """Write one blob at the end (caller serialises appends)."""
        entry = PackEntry(cid, self.size, len(stored), raw_len, flags)
        os.pwrite(self.fd, stored, self.size)
        os.write(self.idx_fd, entry.pack())
        self.size += len(stored)
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

    def seal(self) -> int:
        """Turn the file into a complete pack (entry table + footer), synced; its size."""
        tail = encode_pack_index(self.entries)
        os.ftruncate(self.fd, self.size)  # drop bytes of blobs that never got an entry
        os.pwrite(self.fd, tail, self.size)
        os.fsync(self.fd)
        return self.size + len(tail)

    def sync(self) -> None:
        os.fsync(self.fd)
        os.fsync(self.idx_fd)

    def remove(self) -> None:
        """Forget the file (after its pack is stored, the data file is gone already)."""
        os.close(self.fd)
        os.close(self.idx_fd)
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
