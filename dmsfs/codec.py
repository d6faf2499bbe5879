"""Object ids, compression and the pack format.

A chunk id is the blake3 digest (32 bytes) of the chunk's raw content.  A blob is
a chunk as stored: zstd-compressed, or raw when compression does not shrink it.

Pack object layout (format version 1), all integers little-endian::

    b"DMSPACK1"                       8-byte header magic
    blob 0 .. blob n-1                stored bytes, back to back
    entries                           zstd(n x ENTRY) -- the pack's own index
    u32 entries_len, u32 n, b"DMSPEND1"   16-byte footer

    ENTRY = chunk id (32) | offset u64 | stored length u32 | raw length u32 | flags u8

A reader needs two ranged reads to learn a pack's contents (footer, entries) and
one per blob; this is what lets the LMDB index be rebuilt from the store alone.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass

import blake3
import zstandard

from .errors import Corrupt

ID_SIZE = 32
PACK_MAGIC = b"DMSPACK1"
PACK_END = b"DMSPEND1"
FOOTER = struct.Struct("<II8s")
ENTRY = struct.Struct("<32sQIIB")

FLAG_ZSTD = 1

_local = threading.local()


def chunk_id(data: bytes | memoryview) -> bytes:
    """The content id of raw chunk bytes."""
    return blake3.blake3(data, max_threads=1).digest()


def compress(raw: bytes | memoryview, level: int = 3) -> tuple[bytes | memoryview, int]:
    """Compress a chunk; returns (stored bytes, flags).  Raw when zstd does not shrink it."""
    cctx = getattr(_local, "cctx", None)
    if cctx is None or _local.level != level:
        cctx = _local.cctx = zstandard.ZstdCompressor(level=level)
        _local.level = level
    packed = cctx.compress(raw)
    if len(packed) >= len(raw):
        return raw, 0
    return packed, FLAG_ZSTD


def decompress(stored: bytes | memoryview, flags: int, raw_len: int) -> bytes:
    """Inverse of compress()."""
    if not flags & FLAG_ZSTD:
        return bytes(stored)
    dctx = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    try:
        return dctx.decompress(stored, max_output_size=raw_len)
    except zstandard.ZstdError as e:
        raise Corrupt(f"undecodable blob: {e}") from e


def open_blob(stored: bytes | memoryview, flags: int, raw_len: int, cid: bytes) -> bytes:
    """Decode a stored blob and verify it is the chunk it claims to be."""
    raw = decompress(stored, flags, raw_len)
    if len(raw) != raw_len or chunk_id(raw) != cid:
        raise Corrupt(f"chunk {cid.hex()} fails its blake3 check")
    return raw


@dataclass(frozen=True, slots=True)
class PackEntry:
    """Where one blob sits inside a pack."""

    cid: bytes
    offset: int
    stored_len: int
    raw_len: int
    flags: int

    def pack(self) -> bytes:
        return ENTRY.pack(self.cid, self.offset, self.stored_len, self.raw_len, self.flags)

    @classmethod
    def unpack(cls, buf: bytes | memoryview) -> PackEntry:
        return cls(*ENTRY.unpack(buf))


def encode_pack_index(entries: list[PackEntry]) -> bytes:
    """The tail of a pack: compressed entry table plus footer."""
    table = zstandard.ZstdCompressor(level=3).compress(b"".join(e.pack() for e in entries))
    return table + FOOTER.pack(len(table), len(entries), PACK_END)


def decode_pack_footer(footer: bytes) -> tuple[int, int]:
    """(entries length, entry count) from a pack's last FOOTER.size bytes."""
    if len(footer) != FOOTER.size:
        raise Corrupt("pack too short")
    table_len, count, magic = FOOTER.unpack(footer)
    if magic != PACK_END:
        raise Corrupt("pack footer magic wrong")
    return table_len, count


def decode_pack_index(table: bytes, count: int) -> list[PackEntry]:
    """Entries from a pack's compressed entry table."""
    try:
        raw = zstandard.ZstdDecompressor().decompress(table, max_output_size=count * ENTRY.size)
    except zstandard.ZstdError as e:
        raise Corrupt(f"pack index undecodable: {e}") from e
    if len(raw) != count * ENTRY.size:
        raise Corrupt("pack index has the wrong size")
    return [PackEntry.unpack(raw[i : i + ENTRY.size]) for i in range(0, len(raw), ENTRY.size)]
