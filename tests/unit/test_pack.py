"""The codec and pack format: compression, pack indexes, verified blobs, staging files."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from tmpfs import tmpfs

from dmsfs import staging
from dmsfs.codec import (
    ENTRY,
    FLAG_ZSTD,
    FOOTER,
    PACK_END,
    PACK_MAGIC,
    PackEntry,
    chunk_id,
    compress,
    decode_pack_footer,
    decode_pack_index,
    decompress,
    encode_pack_index,
    open_blob,
)
from dmsfs.errors import Corrupt
from dmsfs.staging import StagingFile

KiB = 1024


def compressible(n: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    return (rng.randbytes(251) * (n // 251 + 1))[:n]


def test_chunk_id_is_blake3_of_content() -> None:
    a = chunk_id(b"hello")
    assert len(a) == 32
    assert chunk_id(memoryview(b"hello")) == a
    assert chunk_id(b"hellp") != a


@pytest.mark.parametrize("n", [1, 100, 64 * KiB, 1024 * KiB + 3])
def test_compress_round_trip(n: int) -> None:
    raw = compressible(n)
    stored, flags = compress(raw)
    assert decompress(stored, flags, n) == raw
    if n >= 1000:
        assert flags == FLAG_ZSTD
        assert len(stored) < n
    assert open_blob(stored, flags, n, chunk_id(raw)) == raw


@pytest.mark.parametrize("level", [1, 3, 19])
def test_compress_levels(level: int) -> None:
    raw = compressible(50 * KiB, seed=level)
    stored, flags = compress(raw, level)
    assert flags == FLAG_ZSTD
    assert decompress(stored, flags, len(raw)) == raw


def test_incompressible_is_stored_raw() -> None:
    raw = os.urandom(64 * KiB)
    stored, flags = compress(raw)
    assert flags == 0
    assert bytes(stored) == raw
    assert decompress(stored, flags, len(raw)) == raw
    assert open_blob(stored, flags, len(raw), chunk_id(raw)) == raw
    # a memoryview in, raw bytes out
    stored, flags = compress(memoryview(raw))
    assert flags == 0 and bytes(stored) == raw


def _entries(n: int) -> list[PackEntry]:
    rng = random.Random(n)
    out, pos = [], len(PACK_MAGIC)
    for _ in range(n):
        stored = rng.randrange(1, 70_000)
        out.append(PackEntry(rng.randbytes(32), pos, stored, stored + rng.randrange(0, 9000),
                             rng.choice([0, FLAG_ZSTD])))
        pos += stored
    return out


def _split(tail: bytes) -> tuple[bytes, bytes]:
    return tail[: -FOOTER.size], tail[-FOOTER.size :]


@pytest.mark.parametrize("n", [0, 1, 7, 1000])
def test_pack_index_round_trip(n: int) -> None:
    entries = _entries(n)
    tail = encode_pack_index(entries)
    table, footer = _split(tail)
    assert footer.endswith(PACK_END)
    table_len, count = decode_pack_footer(footer)
    assert (table_len, count) == (len(table), n)
    assert decode_pack_index(table, count) == entries
    for e in entries:
        assert PackEntry.unpack(e.pack()) == e
        assert len(e.pack()) == ENTRY.size


def test_corrupt_footer_is_detected() -> None:
    table, footer = _split(encode_pack_index(_entries(5)))
    with pytest.raises(Corrupt):
        decode_pack_footer(footer[1:])           # too short
    with pytest.raises(Corrupt):
        decode_pack_footer(b"")
    for i in range(len(footer) - len(PACK_END), len(footer)):  # the magic
        bad = bytearray(footer)
        bad[i] ^= 0x20
        with pytest.raises(Corrupt):
            decode_pack_footer(bytes(bad))


def test_corrupt_entry_table_is_detected() -> None:
    entries = _entries(5)
    table, footer = _split(encode_pack_index(entries))
    _, count = decode_pack_footer(footer)
    with pytest.raises(Corrupt):
        decode_pack_index(table, count + 1)      # the footer's count disagrees
    with pytest.raises(Corrupt):
        decode_pack_index(table, count - 1)
    with pytest.raises(Corrupt):
        decode_pack_index(table[:-3], count)     # truncated
    with pytest.raises(Corrupt):
        decode_pack_index(b"\x00" * len(table), count)
    detected = 0
    for i in range(len(table)):
        bad = bytearray(table)
        bad[i] ^= 0xFF
        try:
            got = decode_pack_index(bytes(bad), count)
        except Corrupt:
            detected += 1
            continue
        # zstd frames carry no checksum by default: a flip may decode, but never
        # into the same entries
        assert got != entries
    assert detected > 0


@pytest.mark.parametrize("kind", ["zstd", "raw"])
def test_open_blob_detects_every_flipped_byte(kind: str) -> None:
    raw = compressible(3000) if kind == "zstd" else os.urandom(3000)
    stored, flags = compress(raw)
    assert flags == (FLAG_ZSTD if kind == "zstd" else 0)
    cid = chunk_id(raw)
    stored = bytes(stored)
    for i in range(len(stored)):
        for bit in (0x01, 0x80):
            bad = bytearray(stored)
            bad[i] ^= bit
            with pytest.raises(Corrupt):
                open_blob(bytes(bad), flags, len(raw), cid)
    with pytest.raises(Corrupt):
        open_blob(stored[:-1], flags, len(raw), cid)              # truncated
    with pytest.raises(Corrupt):
        open_blob(stored, flags, len(raw), chunk_id(b"another"))  # wrong id
    with pytest.raises(Corrupt):
        open_blob(stored, flags, len(raw) - 1, cid)               # wrong length


# ------------------------------------------------------------------ staging files
def _stage(directory: Path, chunks: list[bytes]) -> StagingFile:
    sf = StagingFile(directory, os.urandom(32))
    for raw in chunks:
        sf.append(chunk_id(raw), raw)
    return sf


def _read_pack(buf: bytes) -> list[PackEntry]:
    assert buf.startswith(PACK_MAGIC)
    table_len, count = decode_pack_footer(buf[-FOOTER.size:])
    return decode_pack_index(buf[-(FOOTER.size + table_len):-FOOTER.size], count)


def test_sealed_staging_file_is_a_pack(tmp_path: Path) -> None:
    chunks = [compressible(5000, 1), os.urandom(7000), compressible(20_000, 2), b"x"]
    sf = _stage(tmp_path, chunks)
    path, sealed, size = sf.seal(3)
    assert path == sf.pack_path
    buf = path.read_bytes()
    assert len(buf) == size
    entries = _read_pack(buf)
    assert entries == sealed
    assert [e.cid for e in entries] == [chunk_id(c) for c in chunks]
    # compressed where zstd shrinks the chunk, raw where it does not
    assert [e.flags for e in entries] == [FLAG_ZSTD, 0, FLAG_ZSTD, 0]
    assert entries[0].stored_len < 5000 and entries[1].stored_len == 7000
    for e, raw in zip(entries, chunks, strict=True):
        assert open_blob(buf[e.offset:e.offset + e.stored_len], e.flags, e.raw_len,
                         e.cid) == raw
    sf.remove()
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_seals_the_staging_file_itself_uncompressed(tmp_path: Path) -> None:
    """No room for a compressed copy beside the staging file: the staging file
    becomes the pack as it is, and everything in it stays readable."""
    with tmpfs(tmp_path / "small", "1m") as disk:
        chunks = [compressible(200_000, 3), os.urandom(300_000), compressible(250_000, 4)]
        sf = _stage(disk, chunks)
        filler = disk / "filler"
        with open(filler, "wb") as f:    # leave less room than one more copy
            with pytest.raises(OSError):
                f.write(b"\0" * (1 << 20))
        os.truncate(filler, os.path.getsize(filler) - 100_000)
        path, entries, size = sf.seal(3)
        assert path == sf.data_path and not sf.pack_path.exists()
        buf = path.read_bytes()
        assert len(buf) == size
        assert _read_pack(buf) == entries == sf.entries
        for e, raw in zip(entries, chunks, strict=True):
            assert e.flags == 0
            assert open_blob(buf[e.offset:e.offset + e.stored_len], 0, e.raw_len, e.cid) == raw
        sf.remove()


def test_staging_recovery_drops_a_torn_tail(tmp_path: Path) -> None:
    chunks = [os.urandom(3000 + i) for i in range(4)]
    sf = _stage(tmp_path, chunks)
    sid = sf.id
    # a crash while the last blob was being written: its bytes are cut short
    os.ftruncate(sf.fd, sf.size - 100)
    # and a half-written log record of a blob that never made it
    os.write(sf.idx_fd, b"\x01" * (ENTRY.size // 2))
    os.close(sf.fd)
    os.close(sf.idx_fd)
    assert staging.existing(tmp_path) == [sid]

    again = StagingFile(tmp_path, sid)
    valid = again.load()
    assert [e.cid for e in valid] == [chunk_id(c) for c in chunks[:3]]
    assert again.size == valid[-1].offset + valid[-1].stored_len
    # new blobs go after the last valid one, and the pack is sound
    more = os.urandom(5000)
    again.append(chunk_id(more), more)
    again.seal(3)
    entries = _read_pack(again.pack_path.read_bytes())
    assert [e.cid for e in entries] == [chunk_id(c) for c in [*chunks[:3], more]]
    again.remove()


def test_staging_recovery_drops_a_damaged_blob(tmp_path: Path) -> None:
    chunks = [os.urandom(3000) for _ in range(3)]
    sf = _stage(tmp_path, chunks)
    second = sf.entries[1]
    os.pwrite(sf.fd, b"\x00\x01\x02", second.offset + 10)
    os.close(sf.fd)
    os.close(sf.idx_fd)
    again = StagingFile(tmp_path, sf.id)
    assert [e.cid for e in again.load()] == [chunk_id(chunks[0]), chunk_id(chunks[2])]
    again.remove()
