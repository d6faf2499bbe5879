"""Several processes using the mount at once: every byte they wrote must be there.

Workers are separate Python processes (so the kernel sees concurrent requests
from different pids) started with a small script; each reports what it wrote
as JSON and checks what it read itself, and the test checks it all again from
outside, and once more after a remount.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.backends("file", "s3")

KiB = 1024

WORKER = r'''
import hashlib, json, os, random, sys, time

def sha(b): return hashlib.sha256(b).hexdigest()

def version(seed, k, size):
    return random.Random(f"{seed}-{k}").randbytes(size)

def drop_cache(fd):
    # clean pages of this file leave the page cache: the next read asks the daemon
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)

role, root = sys.argv[1], sys.argv[2]
if role == "writer":
    seed = int(sys.argv[3])
    rng = random.Random(seed)
    out = {}
    os.makedirs(root, exist_ok=True)
    for i in range(12):
        size = rng.choice([0, 1, 5000, 70_000, 250_000])
        data = bytearray(rng.randbytes(size))
        tmp = os.path.join(root, f".tmp-{i}")
        with open(tmp, "wb") as f:
            pos = 0
            while pos < size:
                n = rng.randrange(1, 40_000)
                f.write(data[pos:pos + n])
                pos += n
        if size and rng.random() < 0.6:   # rewrite a random range in place
            off = rng.randrange(size)
            patch = rng.randbytes(rng.randrange(1, 30_000))
            with open(tmp, "r+b") as f:
                f.seek(off)
                f.write(patch)
            end = off + len(patch)
            if end > len(data):
                data.extend(bytes(end - len(data)))
            data[off:end] = patch
        if rng.random() < 0.3:            # append
            extra = rng.randbytes(rng.randrange(1, 20_000))
            with open(tmp, "ab") as f:
                f.write(extra)
            data += extra
        if rng.random() < 0.2 and data:   # shrink
            cut = rng.randrange(len(data))
            os.truncate(tmp, cut)
            del data[cut:]
        final = os.path.join(root, f"file-{i:02d}")
        os.rename(tmp, final)
        with open(final, "rb") as f:
            drop_cache(f.fileno())
            got = f.read()
        if got != data:
            sys.exit(f"{final}: read back {len(got)} bytes, wrote {len(data)}, differ")
        out[f"file-{i:02d}"] = sha(bytes(data))
    # remove a few again
    for name in sorted(out)[:2]:
        os.unlink(os.path.join(root, name))
        del out[name]
    print(json.dumps(out))
elif role == "reader":
    path, want, rounds = sys.argv[3], sys.argv[4], int(sys.argv[5])
    rng = random.Random(os.getpid())
    with open(path, "rb") as f:
        whole = f.read()
    if sha(whole) != want:
        sys.exit("first read differs")
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(rounds):
            drop_cache(fd)
            off = rng.randrange(len(whole))
            n = rng.randrange(1, 200_000)
            if os.pread(fd, n, off) != whole[off:off + n]:
                sys.exit(f"pread({n}, {off}) differs")
        drop_cache(fd)
        if sha(os.pread(fd, len(whole) + 1, 0)) != want:
            sys.exit("last read differs")
    finally:
        os.close(fd)
    print(json.dumps({"ok": rounds}))
elif role == "replacer":
    seed, versions, size = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    for k in range(1, versions):
        tmp = os.path.join(root, f".shared.{k}")
        with open(tmp, "wb") as f:
            f.write(version(seed, k, size))
        os.rename(tmp, os.path.join(root, "shared"))
    print(json.dumps({"ok": versions}))
elif role == "snapshot-reader":
    seed, versions, size, rounds = sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    known = {sha(version(seed, k, size)): k for k in range(versions)}
    seen = set()
    for _ in range(rounds):
        with open(os.path.join(root, "shared"), "rb") as f:
            drop_cache(f.fileno())
            head = f.read(1000)
            time.sleep(0.0002)
            got = head + f.read()
        k = known.get(sha(got))
        if k is None:
            sys.exit(f"read {len(got)} bytes that are no version of the file")
        seen.add(k)
    print(json.dumps({"seen": sorted(seen)}))
elif role == "appender":
    tag, count = sys.argv[3], int(sys.argv[4])
    fd = os.open(root, os.O_WRONLY | os.O_APPEND)
    try:
        for i in range(count):
            rec = f"{tag}:{i:06d}:".encode().ljust(63, b"x") + b"\n"
            assert os.write(fd, rec) == 64
    finally:
        os.close(fd)
    print(json.dumps({"ok": count}))
elif role == "patcher":
    # overwrites 4 KiB pages with version 1 of the file, committing now and then
    seed, size, count = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    v1 = version(seed, 1, size)
    rng = random.Random(7)
    fd = os.open(root, os.O_RDWR)
    try:
        for i in range(count):
            off = rng.randrange(size // 4096) * 4096
            os.pwrite(fd, v1[off:off + 4096], off)
            if i % 40 == 39:
                os.fsync(fd)
            if i % 8 == 7:
                drop_cache(fd)  # push the writes to the daemon now, not at close
    finally:
        os.close(fd)
    print(json.dumps({"ok": count}))
elif role == "page-reader":
    # Every page the daemon returns is version 0 or version 1 of that page.  The reads
    # use O_DIRECT: from the page cache a read racing the patcher's write() may copy
    # half a page before and half after it, on any Linux filesystem (ext4 too).
    import mmap
    seed, size, rounds = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    v0, v1 = version(seed, 0, size), version(seed, 1, size)
    rng = random.Random(os.getpid())
    buf = mmap.mmap(-1, 64 * 4096)  # page-aligned, as O_DIRECT needs
    fd = os.open(root, os.O_RDONLY | os.O_DIRECT)
    try:
        for _ in range(rounds):
            off = rng.randrange(size // 4096) * 4096
            want = min(rng.randrange(1, 64) * 4096, size - off)
            n = os.preadv(fd, [memoryview(buf)[:want]], off)
            if n != want:
                sys.exit(f"short read at {off}: {n} of {want}")
            for a in range(off, off + n, 4096):
                page = buf[a - off:a - off + 4096]
                if page != v0[a:a + 4096] and page != v1[a:a + 4096]:
                    sys.exit(f"page at {a} is neither version")
    finally:
        os.close(fd)
    print(json.dumps({"ok": rounds}))
elif role == "creator":
    tag, count = sys.argv[3], int(sys.argv[4])
    made = []
    for i in range(count):
        name = f"{tag}-{i:04d}"
        with open(os.path.join(root, name), "wb") as f:
            f.write(name.encode())
        made.append(name)
        if i % 10 == 9:   # churn: a directory comes and goes, a file is renamed
            d = os.path.join(root, f"dir-{tag}-{i}")
            os.mkdir(d)
            os.rmdir(d)
            os.rename(os.path.join(root, name), os.path.join(root, name + ".moved"))
            made[-1] = name + ".moved"
    print(json.dumps(made))
'''


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def version(seed: str, k: int, size: int) -> bytes:
    return random.Random(f"{seed}-{k}").randbytes(size)


def start(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", WORKER, *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(procs: list[subprocess.Popen[str]]) -> list[Any]:
    outputs = [p.communicate(timeout=120) for p in procs]  # all of them, then judge
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, f"{p.args[3:]} failed ({p.returncode}): {err}"
    return [json.loads(out) for out, _ in outputs]


def remount(daemon: Any) -> None:
    assert daemon.stop() == 0
    daemon.start()


def logical_bytes(daemon: Any) -> int:
    return int(daemon.ctl_json("stats")["logical_bytes"])


def tree_bytes(root: Path) -> int:
    return sum(os.lstat(p).st_size for p in root.rglob("*") if stat.S_ISREG(os.lstat(p).st_mode))


# ------------------------------------------------------------------ tests
def test_writers_and_readers(daemon: Any, ds: Path) -> None:
    """4 writers on their own files while 2 readers read a shared file."""
    shared = random.Random(21).randbytes(1024 * KiB)
    (ds / "shared.bin").write_bytes(shared)
    remount(daemon)  # the readers' first reads come from the store
    writers = [start("writer", ds / f"w{k}", 100 + k) for k in range(4)]
    readers = [start("reader", ds / "x", ds / "shared.bin", sha(shared), 150)
               for _ in range(2)]
    results = finish(writers + readers)
    written = {f"w{k}/{name}": digest for k, res in enumerate(results[:4])
               for name, digest in res.items()}
    assert len(written) == 4 * 10

    def check() -> None:
        assert sorted(os.listdir(ds)) == ["shared.bin", "w0", "w1", "w2", "w3"]
        for k in range(4):
            assert sorted(os.listdir(ds / f"w{k}")) == sorted(
                n.split("/")[1] for n in written if n.startswith(f"w{k}/"))
        for name, digest in written.items():
            assert sha((ds / name).read_bytes()) == digest, name
        assert sha((ds / "shared.bin").read_bytes()) == sha(shared)

    check()
    remount(daemon)
    check()
    assert logical_bytes(daemon) == tree_bytes(ds)


def test_readers_see_whole_versions_while_replaced(daemon: Any, ds: Path) -> None:
    """A file replaced by rename again and again: every read is one whole version."""
    seed, versions, size = "rep", 120, 64 * KiB
    (ds / "shared").write_bytes(version(seed, 0, size))
    replacer = start("replacer", ds, seed, versions, size)
    # a reader must never find the name missing, nor open a replaced file that is gone
    readers = [start("snapshot-reader", ds, seed, versions, size, 400) for _ in range(3)]
    finish([replacer, *readers])
    assert (ds / "shared").read_bytes() == version(seed, versions - 1, size)
    assert os.listdir(ds) == ["shared"]  # no temporary file left, no replaced inode
    remount(daemon)
    assert (ds / "shared").read_bytes() == version(seed, versions - 1, size)
    assert logical_bytes(daemon) == size


def test_concurrent_appends(daemon: Any, ds: Path) -> None:
    """O_APPEND writers in 4 processes: no record lost, torn or interleaved."""
    log = ds / "log"
    log.write_bytes(b"")
    count = 400
    finish([start("appender", log, f"p{k}", count) for k in range(4)])

    def check() -> None:
        data = log.read_bytes()
        assert len(data) == 4 * count * 64
        seen: dict[str, list[int]] = {f"p{k}": [] for k in range(4)}
        for i in range(0, len(data), 64):
            rec = data[i:i + 64]
            tag, num, pad = rec.split(b":", 2)
            assert pad == b"x" * (63 - len(tag) - len(num) - 2) + b"\n", rec
            seen[tag.decode()].append(int(num))
        for nums in seen.values():
            assert nums == list(range(count))  # each writer's records in its order

    check()
    remount(daemon)
    check()


def test_threads_write_disjoint_ranges_of_one_file(daemon: Any, ds: Path) -> None:
    """Threads with their own descriptors pwrite interleaved blocks of one file."""
    f = ds / "blocks"
    block, nblocks, nthreads = 16 * KiB, 64, 4
    f.write_bytes(b"")
    blocks = [random.Random(30 + i).randbytes(block) for i in range(nblocks)]
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            fd = os.open(f, os.O_WRONLY)
            try:
                for i in range(t, nblocks, nthreads):
                    assert os.pwrite(fd, blocks[i], i * block) == block
            finally:
                os.close(fd)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    want = sha(b"".join(blocks))
    assert sha(f.read_bytes()) == want
    remount(daemon)
    assert f.stat().st_size == block * nblocks
    assert sha(f.read_bytes()) == want


def test_concurrent_creates_in_one_directory(daemon: Any, ds: Path) -> None:
    d = ds / "shared-dir"
    d.mkdir()
    results = finish([start("creator", d, f"c{k}", 300) for k in range(4)])
    expected = {name for made in results for name in made}
    assert len(expected) == 1200
    assert set(os.listdir(d)) == expected
    remount(daemon)
    names = os.listdir(d)
    assert len(names) == 1200 and set(names) == expected
    for name in ["c0-0000", "c3-0298", "c2-0009.moved"]:
        assert (d / name).read_bytes() == name.removesuffix(".moved").encode()


def test_reads_while_the_file_is_written(daemon_factory: Any) -> None:
    """Readers (O_DIRECT, so every read asks the daemon) of a file that another process
    keeps patching and committing: each page they get is the old or the new version."""
    daemon = daemon_factory(["--memory-cache", "256K"]).start()  # reads wait for the store
    ds = daemon.mnt / "ds"
    ds.mkdir()
    seed, size = "pages", 3 * 1024 * KiB
    f = ds / "f"
    f.write_bytes(version(seed, 0, size))
    remount(daemon)
    finish([start("patcher", f, seed, size, 400),
            *[start("page-reader", f, seed, size, 150) for _ in range(2)]])
    data = f.read_bytes()
    v0, v1 = version(seed, 0, size), version(seed, 1, size)
    assert all(data[a:a + 4096] in (v0[a:a + 4096], v1[a:a + 4096])
               for a in range(0, size, 4096))
    remount(daemon)
    assert f.read_bytes() == data


def test_parallel_reads_over_chunk_boundaries_get_their_own_bytes(daemon_factory: Any) -> None:
    """Readers of different files at once, with O_DIRECT and ranges of up to 64 pages
    (many small chunks each, fetched from the store while other reads wait): every
    reply holds the bytes of its own file and range, none of another read's."""
    daemon = daemon_factory(["--memory-cache", "256K"]).start()  # reads wait for the store
    ds = daemon.mnt / "ds"
    ds.mkdir()
    size = 2 * 1024 * KiB
    for k in range(4):
        (ds / f"f{k}").write_bytes(version(f"mix{k}", 0, size))
    remount(daemon)
    finish([start("page-reader", ds / f"f{k}", f"mix{k}", size, 120) for k in range(4)])
