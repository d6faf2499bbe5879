"""Damage in the store (SPEC section 9: "corrupt stored object: EIO for that read,
reported by fsck; never wrong bytes"), rebuilding the chunk index from the packs'
own indexes, and the statistics dmsctl reports.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import random
import stat
from pathlib import Path
from typing import Any

import lmdb
import pytest

from dmsfs.chunker import Chunker, ChunkerParams
from dmsfs.codec import FOOTER, PackEntry, chunk_id, decode_pack_footer, decode_pack_index
from stored import (
    delete_object,
    flip_byte,
    flush_to_store,
    read_object,
    stored_objects,
    stored_packs,
    wait_uploaded,
    write_object,
)
from trees import sha

pytestmark = pytest.mark.backends("file", "s3")

KiB = 1024
MiB = 1024 * KiB
SMALL = ChunkerParams(4 * KiB, 16 * KiB, 64 * KiB)  # conftest's SMALL_CHUNKS


# ------------------------------------------------------------------ helpers
def pack_entries(daemon: Any, key: str) -> list[PackEntry]:
    """A pack's own index, read from the stored object."""
    buf = read_object(daemon, key)
    table_len, count = decode_pack_footer(buf[-FOOTER.size:])
    return decode_pack_index(buf[-(FOOTER.size + table_len):-FOOTER.size], count)


def chunk_map(daemon: Any) -> dict[bytes, tuple[str, PackEntry]]:
    """chunk id -> (pack key, entry) over every pack in the store."""
    out = {}
    for key in stored_packs(daemon):
        for e in pack_entries(daemon, key):
            out[e.cid] = (key, e)
    return out


def chunks_of(data: bytes) -> list[tuple[bytes, int, int]]:
    """(id, offset, length) of a file written in one go, as the daemon chunks it."""
    out, pos = [], 0
    for n in Chunker(SMALL).cut(data, at_eof=True):
        out.append((chunk_id(data[pos:pos + n]), pos, n))
        pos += n
    return out


def fsck(daemon: Any, *args: str) -> tuple[int, str, dict[str, Any]]:
    """(exit code, text output, JSON report) of dmsctl fsck."""
    text = daemon.ctl("fsck", *args)
    doc = daemon.ctl("fsck", *args, "--json")
    assert text.returncode == doc.returncode, (text, doc)
    return text.returncode, text.stdout + text.stderr, json.loads(doc.stdout)


def read_error(path: Path, offset: int, length: int) -> int | None:
    """errno of a pread through a fresh descriptor, None if it succeeds."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.pread(fd, length, offset)
        return None
    except OSError as e:
        return e.errno
    finally:
        os.close(fd)


PAGE = 4096


def direct_read(path: Path, offset: int, length: int) -> bytes:
    """Read page-aligned bytes with O_DIRECT: the request the daemon sees is exactly this."""
    buf = mmap.mmap(-1, length)  # page-aligned memory
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        n = os.preadv(fd, [buf], offset)
        return bytes(buf[:n])
    finally:
        os.close(fd)
        buf.close()


def write_corpus(ds: Path) -> dict[str, bytes]:
    """A multi-chunk file and small single-chunk files (each under the minimum)."""
    rng = random.Random(21)
    files = {"big.bin": rng.randbytes(1536 * KiB)}
    (ds / "sub").mkdir()
    for i in range(30):
        files[f"sub/s{i:02d}.txt"] = rng.randbytes(rng.randrange(100, 4000))
    for name, data in files.items():
        (ds / name).write_bytes(data)
    return files


def assert_all_read_back(ds: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        assert sha((ds / name).read_bytes()) == sha(data), name


def drop_chunk_tables(state: Path, tables: tuple[str, ...]) -> None:
    """Lose index tables while the daemon is stopped (the namespace stays)."""
    env = lmdb.open(str(state / "index.lmdb"), max_dbs=16, map_size=1 << 36)
    try:
        with env.begin(write=True) as txn:
            for name in tables:
                db = env.open_db(name.encode(), txn=txn)
                assert txn.stat(db)["entries"] > 0, name
                txn.drop(db, delete=True)
        env.sync(True)
    finally:
        env.close()


# ------------------------------------------------------------------ corrupt blob
@pytest.mark.daemon_errors_ok
def test_flipped_byte_in_a_blob(daemon, ds) -> None:
    files = write_corpus(ds)
    flush_to_store(daemon)
    assert len(stored_packs(daemon)) >= 3
    where = chunk_map(daemon)
    big = chunks_of(files["big.bin"])
    assert all(cid in where for cid, _, _ in big)

    # damage a chunk in the middle of big.bin, in the middle of its blob
    victim, v_off, v_len = big[len(big) // 2]
    key, entry = where[victim]
    flip_byte(daemon, key, entry.offset + entry.stored_len // 2)

    rc, out, doc = fsck(daemon, "--read-data")
    assert rc == 1, out
    assert key in out and "ds/big.bin" in out, out
    assert len(doc["problems"]) == 1 and victim.hex() in doc["problems"][0]
    assert doc["checked"]["read_data"] is True

    # a fresh daemon and mount: no page cache, no chunk cache
    assert daemon.stop() == 0
    daemon.start()
    for _ in range(2):  # every time, not only the first
        assert read_error(ds / "big.bin", v_off, v_len) == errno.EIO
        assert read_error(ds / "big.bin", v_off + v_len // 2, 1) == errno.EIO
    with pytest.raises(OSError) as e:
        (ds / "big.bin").read_bytes()
    assert e.value.errno == errno.EIO
    # other files read fine
    assert_all_read_back(ds, {n: d for n, d in files.items() if n != "big.bin"})
    # so do the other chunks of big.bin, also those in the damaged pack: read with
    # O_DIRECT, so no read-ahead pulls the damaged chunk into the request
    neighbours = [(o, n) for cid, o, n in big if cid != victim and where[cid][0] == key]
    assert neighbours
    for off, n in [*neighbours, (big[0][1], big[0][2]), (big[-1][1], big[-1][2])]:
        lo, hi = -(-off // PAGE) * PAGE, (off + n) // PAGE * PAGE
        if hi > lo:
            assert direct_read(ds / "big.bin", lo, hi - lo) == files["big.bin"][lo:hi]
    with pytest.raises(OSError) as e:  # the page holding the damaged chunk's start
        direct_read(ds / "big.bin", v_off // PAGE * PAGE, PAGE)
    assert e.value.errno == errno.EIO
    # fsck is still damning, also after the restart
    rc, out, _ = fsck(daemon, "--read-data")
    assert rc == 1 and key in out


@pytest.mark.daemon_errors_ok
def test_flipped_byte_in_a_small_file_blob(daemon, ds) -> None:
    files = write_corpus(ds)
    flush_to_store(daemon)
    where = chunk_map(daemon)
    name = "sub/s07.txt"
    key, entry = where[chunk_id(files[name])]
    flip_byte(daemon, key, entry.offset)  # the blob's first byte
    rc, out, _ = fsck(daemon, "--read-data")
    assert rc == 1 and key in out and f"ds/{name}" in out, out
    assert daemon.stop() == 0
    daemon.start()
    assert read_error(ds / name, 0, 10) == errno.EIO
    assert_all_read_back(ds, {n: d for n, d in files.items() if n != name})


def test_damaged_pack_footer_is_reported(daemon, ds) -> None:
    files = write_corpus(ds)
    flush_to_store(daemon)
    key = next(iter(stored_packs(daemon)))
    flip_byte(daemon, key, -1)  # the footer magic
    rc, out, doc = fsck(daemon, "--read-data")
    assert rc == 1 and key in out, out
    assert any("footer" in p for p in doc["problems"])
    # the blobs themselves are intact: the index in LMDB still finds them
    assert daemon.stop() == 0
    daemon.start()
    assert_all_read_back(ds, files)


# ------------------------------------------------------------------ missing pack
@pytest.mark.daemon_errors_ok
def test_deleted_and_truncated_packs(daemon, ds) -> None:
    files = write_corpus(ds)
    flush_to_store(daemon)
    rc, out, _ = fsck(daemon)
    assert rc == 0, out
    where = chunk_map(daemon)
    big = chunks_of(files["big.bin"])
    deleted, _ = where[big[-1][0]]
    truncated, first = where[big[0][0]]
    assert deleted != truncated
    cut = first.offset + first.stored_len // 2  # inside big.bin's first blob
    lost = {cid for cid, (k, e) in where.items()
            if k == deleted or (k == truncated and e.offset + e.stored_len > cut)}
    delete_object(daemon, deleted)
    write_object(daemon, truncated, read_object(daemon, truncated)[:cut])

    # no --read-data: both are seen from the listing and the sizes alone
    rc, out, doc = fsck(daemon)
    assert rc == 1, out
    assert doc["checked"]["read_data"] is False
    assert len(doc["problems"]) == 2, doc["problems"]
    assert any(deleted in p and "missing" in p for p in doc["problems"]), out
    assert any(truncated in p and "bytes" in p for p in doc["problems"]), out
    assert deleted in out and truncated in out

    assert daemon.stop() == 0
    daemon.start()
    for _, off, n in (big[0], big[-1]):
        assert read_error(ds / "big.bin", off, n) == errno.EIO
    for name, data in files.items():
        if name != "big.bin" and chunk_id(data) not in lost:
            assert (ds / name).read_bytes() == data


# ------------------------------------------------------------------ reindex
def test_dmsctl_reindex_rebuilds_a_lost_chunk_index(daemon, ds) -> None:
    files = write_corpus(ds)
    daemon.ctl("flush", check=True)
    before = daemon.ctl_json("stats")
    assert daemon.stop() == 0
    drop_chunk_tables(daemon.state, ("chunks",))
    daemon.start()

    rc, out, doc = fsck(daemon)
    assert rc == 1 and "not in the index" in out, out
    r = daemon.ctl("reindex", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result == {"packs": before["packs"], "chunks": before["chunks"], "damaged_packs": 0,
                      "new_versions": 0}

    assert_all_read_back(ds, files)
    rc, out, doc = fsck(daemon, "--read-data")
    assert rc == 0, out
    after = daemon.ctl_json("stats")
    for field in ("logical_bytes", "stored_bytes", "chunks", "unique_bytes", "packs"):
        assert after[field] == before[field], field


def test_dmsfsd_reindex_after_a_crash(daemon, ds) -> None:
    """Chunks sealed into packs and chunks only staged when the daemon died: both
    come back after the chunk and pack tables are lost and rebuilt at start."""
    files = write_corpus(ds)
    daemon.ctl("flush", check=True)
    staged = random.Random(22).randbytes(100 * KiB)  # below the pack size: stays staged
    (ds / "staged.bin").write_bytes(staged)
    files["staged.bin"] = staged
    assert any((daemon.state / "staging").glob("*.dat"))
    daemon.kill9()
    drop_chunk_tables(daemon.state, ("chunks", "packs"))
    daemon.start("--reindex")
    assert_all_read_back(ds, files)
    rc, out, doc = fsck(daemon, "--read-data")
    assert rc == 0, out
    s = wait_uploaded(daemon)
    assert s["packs"] == len(stored_packs(daemon))
    assert s["stored_bytes"] == sum(stored_packs(daemon).values())
    assert s["chunks"] == len(chunk_map(daemon))


def test_reindex_adopts_an_unindexed_pack(daemon, ds) -> None:
    files = write_corpus(ds)
    flush_to_store(daemon)
    assert daemon.stop() == 0
    drop_chunk_tables(daemon.state, ("packs",))
    daemon.start()
    _, out, doc = fsck(daemon)
    assert sorted(doc["unindexed_packs"]) == sorted(stored_packs(daemon))
    assert "dmsctl reindex" in out
    daemon.ctl("reindex", check=True)
    rc, out, doc = fsck(daemon, "--read-data")
    assert rc == 0 and doc["unindexed_packs"] == [], out
    assert_all_read_back(ds, files)


# ------------------------------------------------------------------ statistics
def test_stats_dedup_of_identical_files(daemon, ds) -> None:
    data = random.Random(23).randbytes(MiB)
    for i in range(5):
        (ds / f"copy{i}.bin").write_bytes(data)
    s = flush_to_store(daemon)
    expected_chunks = chunks_of(data)
    assert s["logical_bytes"] == 5 * MiB
    assert s["chunks"] == len({cid for cid, _, _ in expected_chunks})
    assert s["unique_bytes"] == MiB
    assert s["packs"] == len(stored_packs(daemon))
    stored = sum(stored_packs(daemon).values())
    assert s["stored_bytes"] == stored
    assert MiB <= stored < MiB + 64 * KiB  # random data: raw blobs plus pack indexes
    assert s["dedup_ratio"] >= 4
    assert s["dedup_ratio"] == round(s["logical_bytes"] / s["stored_bytes"], 3)
    assert s["backlog"] == {"objects": 0, "bytes": 0, "oldest_age": 0.0, "chunks": 0}

    # the human form says the same
    text = daemon.ctl("stats", check=True).stdout
    assert f"{5 * MiB:,}" in text and f"{s['dedup_ratio']:.2f}" in text

    for i in range(2):
        (ds / f"copy{i}.bin").unlink()
    s = daemon.ctl_json("stats")
    assert s["logical_bytes"] == 3 * MiB


def test_stats_before_flush_and_compressible_data(daemon, ds) -> None:
    s = daemon.ctl_json("stats")
    assert s["logical_bytes"] == 0 and s["stored_bytes"] == 0 and s["dedup_ratio"] is None
    text = (b"the quick brown fox jumps over the lazy dog\n" * 50_000)  # ~2.1 MiB
    (ds / "text.txt").write_bytes(text)
    s = daemon.ctl_json("stats")
    assert s["logical_bytes"] == len(text)
    daemon.ctl("flush", check=True)
    s = daemon.ctl_json("stats")
    assert s["backlog"]["chunks"] == 0
    assert 0 < s["stored_bytes"] < len(text) // 20  # dedup of the repeats + zstd
    assert s["dedup_ratio"] > 20


def test_many_small_files_make_few_packs(daemon_factory, backend) -> None:
    d = daemon_factory(small=False).start()
    ds = d.mnt / "ds"
    ds.mkdir()
    rng = random.Random(24)
    total = 0
    for i in range(10_000):
        sub = ds / f"d{i // 500:02d}"
        if i % 500 == 0:
            sub.mkdir()
        data = rng.randbytes(rng.randrange(50, 1500))
        total += len(data)
        with open(sub / f"f{i:05d}", "wb") as f:
            f.write(data)
    s = flush_to_store(d)
    n = len(stored_packs(d))
    assert s["packs"] == n
    assert 1 <= n <= 36, f"{n} pack objects for 10,000 small files"
    assert s["chunks"] == 10_000
    assert s["logical_bytes"] == total
    # one object per pack, not per file: the store holds a handful of objects
    assert len(stored_objects(d)) <= n + 5
    if backend == "file":  # S3 objects have no mode
        assert all(stat.S_IMODE((d.store / key).stat().st_mode) == 0o444
                   for key in stored_packs(d))
