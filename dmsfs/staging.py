"""Staging files: where new chunks wait, raw, until they are sealed into a pack.

A staging file is an append-only data file plus a sidecar log of its entries
(PackEntry records), both in the state dir.  Appends are plain writes: once a
file commit that references a staged chunk is in LMDB, the chunk's bytes are in
the OS page cache and survive a crash of the daemon; fsync() makes them survive
power loss.  After a crash, load() keeps exactly the entries whose bytes are
complete and match their blake3 id.
"""

from __future__ import annotations

import os
from pathlib import Path

from .codec import ENTRY, PackEntry, chunk_id


class StagingFile:
    """One open staging container."""

    def __init__(self, directory: Path, sid: bytes) -> None:
        self.id = sid
        self.data_path = directory / f"{sid.hex()}.dat"
        self.idx_path = directory / f"{sid.hex()}.idx"
        self.fd = os.open(self.data_path, os.O_RDWR | os.O_CREAT, 0o600)
        self.idx_fd = os.open(self.idx_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self.size = os.fstat(self.fd).st_size
        self.entries: list[PackEntry] = []

    def append(self, cid: bytes, raw: bytes | memoryview) -> PackEntry:
        """Write a raw chunk at the end (caller serialises appends)."""
        entry = PackEntry(cid, self.size, len(raw), len(raw), 0)
        os.pwrite(self.fd, raw, self.size)
        os.write(self.idx_fd, entry.pack())
        self.size += len(raw)
        self.entries.append(entry)
        return entry

    def read(self, entry: PackEntry) -> bytes:
        return os.pread(self.fd, entry.raw_len, entry.offset)

    def load(self) -> list[PackEntry]:
        """Recover the valid entries after a restart; drop a torn tail."""
        log = os.pread(self.idx_fd, os.fstat(self.idx_fd).st_size, 0)
        valid: list[PackEntry] = []
        for pos in range(0, len(log) - ENTRY.size + 1, ENTRY.size):
            e = PackEntry.unpack(log[pos : pos + ENTRY.size])
            if e.offset + e.raw_len > self.size or chunk_id(self.read(e)) != e.cid:
                continue
            valid.append(e)
        self.entries = valid
        return valid

    def sync(self) -> None:
        os.fsync(self.fd)
        os.fsync(self.idx_fd)

    def remove(self) -> None:
        os.close(self.fd)
        os.close(self.idx_fd)
        self.data_path.unlink(missing_ok=True)
        self.idx_path.unlink(missing_ok=True)


def read_staged(directory: Path, sid: bytes, offset: int, length: int) -> bytes | None:
    """Bytes of a staged chunk by container id, or None once it was sealed away."""
    try:
        fd = os.open(directory / f"{sid.hex()}.dat", os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def existing(directory: Path) -> list[bytes]:
    """Ids of staging files left in the directory (by a previous run)."""
    return [bytes.fromhex(p.stem) for p in sorted(directory.glob("*.dat"))]
