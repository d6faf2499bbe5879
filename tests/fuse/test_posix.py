"""POSIX behaviour of the live tree, exercised on a real mount as users do.

Every test checks the exact errno of what is refused, that nothing committed
was lost by a refused operation, and (where it matters) that the result is
still there after a clean remount, i.e. that it came from the store and the
index and not from the kernel's caches.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import random
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from trees import file_sha, sha

pytestmark = pytest.mark.backends("file", "s3")

KiB = 1024
MiB = 1024 * KiB


# ------------------------------------------------------------------ helpers
def remount(daemon: Any) -> None:
    assert daemon.stop() == 0
    daemon.start()


def expect_errno(code: int, fn: Callable[..., object], *args: Any, **kwargs: Any) -> None:
    with pytest.raises(OSError) as e:
        fn(*args, **kwargs)
    assert e.value.errno == code, (
        f"{fn.__name__}{args}: {errno.errorcode.get(e.value.errno)} != {errno.errorcode[code]}")


def live_bytes(daemon: Any) -> int:
    return int(daemon.ctl_json("stats")["logical_bytes"])


def tree_bytes(root: Path) -> int:
    """Sum of the sizes of the regular files under root (as the mount shows them)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def pwrite_all(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        assert os.pwrite(fd, data, offset) == len(data)
    finally:
        os.close(fd)


# ------------------------------------------------------------------ file data
def test_create_read_overwrite_append(daemon: Any, ds: Path) -> None:
    f = ds / "a.txt"
    f.write_bytes(b"hello world\n")
    assert f.read_bytes() == b"hello world\n"
    assert f.stat().st_size == 12
    # overwrite (open "wb" is O_TRUNC) with something shorter: no tail left over
    f.write_bytes(b"bye\n")
    assert f.read_bytes() == b"bye\n"
    # append: O_APPEND writes go to the end whatever the offset says
    fd = os.open(f, os.O_WRONLY | os.O_APPEND)
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"more\n")
        os.write(fd, b"again\n")
    finally:
        os.close(fd)
    assert f.read_bytes() == b"bye\nmore\nagain\n"
    with open(f, "ab") as fh:
        fh.write(b"x" * 100_000)
    expected = b"bye\nmore\nagain\n" + b"x" * 100_000
    # an empty file, and a file written and fsync'd
    (ds / "empty").touch()
    with open(ds / "synced", "wb") as fh:
        fh.write(b"durable")
        fh.flush()
        os.fsync(fh.fileno())
    remount(daemon)
    assert f.read_bytes() == expected
    assert (ds / "empty").stat().st_size == 0
    assert (ds / "empty").read_bytes() == b""
    assert (ds / "synced").read_bytes() == b"durable"
    assert live_bytes(daemon) == tree_bytes(daemon.mnt)


def test_random_offset_writes(daemon: Any, ds: Path) -> None:
    """seek+write and dd conv=notrunc into a many-chunk file, checked against a model."""
    rng = random.Random(1)
    model = bytearray(rng.randbytes(700 * KiB))
    f = ds / "multi.bin"
    f.write_bytes(model)
    assert daemon.ctl_json("stats")["chunks"] > 10  # 4K/16K/64K chunks: many of them

    with open(f, "r+b") as fh:
        for off, n in [(0, 10), (5000, 40_000), (333_333, 1), (699 * KiB, 2 * KiB),
                       (100 * KiB - 3, 6), (rng.randrange(700 * KiB), 64 * KiB)]:
            data = rng.randbytes(n)
            fh.seek(off)
            fh.write(data)
            model[off:off + n] = data
        # read back through the same open file, before anything is committed
        fh.flush()
        fh.seek(0)
        assert sha(fh.read()) == sha(bytes(model))
    assert file_sha(f) == sha(bytes(model))

    # dd conv=notrunc: blocks in the middle, the file keeps its size
    patch = ds.parent.parent / "patch.bin"
    patch.write_bytes(rng.randbytes(3 * 4096))
    subprocess.run(["dd", f"if={patch}", f"of={f}", "bs=4096", "seek=37", "conv=notrunc",
                    "status=none"], check=True)
    model[37 * 4096:40 * 4096] = patch.read_bytes()
    # dd past the end: extends the file
    subprocess.run(["dd", f"if={patch}", f"of={f}", "bs=4096", "seek=180", "count=1",
                    "conv=notrunc", "status=none"], check=True)
    model += bytes(180 * 4096 - len(model)) + patch.read_bytes()[:4096]
    assert len(model) == 181 * 4096
    assert f.stat().st_size == len(model)
    assert file_sha(f) == sha(bytes(model))

    # a write far past the end leaves a gap that reads as zeros (small and large gaps)
    pwrite_all(f, len(model) + 1000, b"tail1")
    model += bytes(1000) + b"tail1"
    pwrite_all(f, len(model) + 300 * KiB, b"tail2")
    model += bytes(300 * KiB) + b"tail2"
    assert file_sha(f) == sha(bytes(model))
    # then write into the middle of that gap
    pwrite_all(f, len(model) - 150 * KiB, b"inside the hole")
    model[len(model) - 150 * KiB:len(model) - 150 * KiB + 15] = b"inside the hole"

    remount(daemon)
    assert f.stat().st_size == len(model)
    assert file_sha(f) == sha(bytes(model))
    with open(f, "rb") as fh:  # random reads, too
        for _ in range(50):
            off = rng.randrange(len(model))
            fh.seek(off)
            assert fh.read(5000) == model[off:off + 5000]
    assert live_bytes(daemon) == len(model)


def test_truncate_shrink_grow(daemon: Any, ds: Path) -> None:
    rng = random.Random(2)
    model = bytearray(rng.randbytes(400 * KiB))
    f = ds / "t.bin"
    f.write_bytes(model)

    def check() -> None:
        assert f.stat().st_size == len(model)
        assert file_sha(f) == sha(bytes(model))

    os.truncate(f, 150_001)                 # shrink into the middle of a chunk
    del model[150_001:]
    check()
    os.truncate(f, 500 * KiB)              # grow: zeros, not the old bytes
    model += bytes(500 * KiB - len(model))
    check()
    assert f.read_bytes()[150_001:400 * KiB] == bytes(400 * KiB - 150_001)
    subprocess.run(["truncate", "-s", "10000", str(f)], check=True)
    del model[10_000:]
    check()
    subprocess.run(["truncate", "-s", "+90000", str(f)], check=True)
    model += bytes(90_000)
    check()

    # ftruncate on an open file with writes around it: shrink, then grow, then write
    with open(f, "r+b") as fh:
        fh.seek(5000)
        fh.write(b"A" * 20_000)
        model[5000:25_000] = b"A" * 20_000
        fh.flush()
        os.ftruncate(fh.fileno(), 7000)
        del model[7000:]
        os.ftruncate(fh.fileno(), 60_000)
        model += bytes(60_000 - 7000)
        fh.seek(50_000)
        fh.write(b"B" * 100)
        model[50_000:50_100] = b"B" * 100
    check()
    # truncate to zero and grow again: nothing old comes back
    os.truncate(f, 0)
    os.truncate(f, 70_000)
    model = bytearray(70_000)
    check()
    remount(daemon)
    check()
    assert live_bytes(daemon) == len(model)


def test_o_trunc_reopen(daemon: Any, ds: Path) -> None:
    f = ds / "o.bin"
    old = random.Random(3).randbytes(300 * KiB)
    f.write_bytes(old)
    fd = os.open(f, os.O_WRONLY | os.O_TRUNC)
    try:
        assert os.fstat(fd).st_size == 0
        os.write(fd, b"new")
    finally:
        os.close(fd)
    assert f.read_bytes() == b"new"
    # O_TRUNC and nothing written: the file is empty after close
    g = ds / "g.bin"
    g.write_bytes(old)
    os.close(os.open(g, os.O_WRONLY | os.O_TRUNC))
    assert g.stat().st_size == 0
    # O_TRUNC|O_RDWR: reading through the handle sees the new content only
    h = ds / "h.bin"
    h.write_bytes(old)
    with open(h, "w+b") as fh:
        fh.write(b"12345")
        fh.seek(0)
        assert fh.read() == b"12345"
    remount(daemon)
    assert f.read_bytes() == b"new"
    assert g.read_bytes() == b""
    assert h.read_bytes() == b"12345"
    assert live_bytes(daemon) == 8


def test_random_operations_against_model(daemon: Any, ds: Path) -> None:
    """A seeded sequence of writes, truncates, appends and reopens of one file."""
    rng = random.Random(4)
    f = ds / "fuzz.bin"
    model = bytearray()
    f.write_bytes(b"")
    fh = open(f, "r+b")  # noqa: SIM115 - reopened below
    try:
        for step in range(120):
            op = rng.choice(["write", "write", "write", "append", "truncate", "read",
                             "reopen"])
            if op == "write":
                off = rng.randrange(len(model) + 20 * KiB)
                data = rng.randbytes(rng.choice([1, 100, 4096, 30_000, 120_000]))
                fh.seek(off)
                fh.write(data)
                if off > len(model):
                    model += bytes(off - len(model))
                model[off:off + len(data)] = data
            elif op == "append":
                data = rng.randbytes(rng.randrange(1, 50_000))
                fh.seek(0, os.SEEK_END)
                fh.write(data)
                model += data
            elif op == "truncate":
                size = rng.randrange(len(model) + 100 * KiB)
                fh.flush()
                os.ftruncate(fh.fileno(), size)
                if size < len(model):
                    del model[size:]
                else:
                    model += bytes(size - len(model))
            elif op == "read":
                fh.flush()
                off = rng.randrange(len(model) + 1)
                fh.seek(off)
                assert fh.read(70_000) == model[off:off + 70_000], f"step {step}"
            else:
                fh.close()
                assert file_sha(f) == sha(bytes(model)), f"step {step}"
                fh = open(f, "r+b")  # noqa: SIM115
            if len(model) > 1500 * KiB:  # keep the test small
                fh.flush()
                os.ftruncate(fh.fileno(), 200 * KiB)
                del model[200 * KiB:]
    finally:
        fh.close()
    assert file_sha(f) == sha(bytes(model))
    remount(daemon)
    assert f.stat().st_size == len(model)
    assert file_sha(f) == sha(bytes(model))


def _drop_cache(fd: int) -> None:
    """Write the file's dirty pages to the daemon and drop them from the page cache,
    so the next read asks the daemon (which serves uncommitted bytes itself)."""
    for _ in range(2):  # the first call only starts writeback of dirty pages
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        time.sleep(0.05)


def test_large_file_written_while_open(daemon: Any, ds: Path) -> None:
    """A file big enough to be cut in the background while it is written; writes
    into the already-cut part, a truncate into it, and reads of uncommitted bytes."""
    rng = random.Random(10)
    f = ds / "large.bin"
    model = bytearray()
    fd = os.open(f, os.O_CREAT | os.O_RDWR, 0o644)

    def check_some() -> None:
        _drop_cache(fd)
        for off in [0, 1 * MiB - 7, len(model) // 2, len(model) - 100_000,
                    rng.randrange(len(model))]:
            got = os.pread(fd, 300_000, off)
            assert got == model[off:off + 300_000], f"offset {off} of {len(model)}"

    try:
        def append(n: int) -> None:
            data = rng.randbytes(n)
            assert os.pwrite(fd, data, len(model)) == n
            model.extend(data)

        for _ in range(48):                  # 12 MiB: past the background cut threshold
            append(256 * KiB)
        check_some()
        for off in (1 * MiB + 5, 6 * MiB, len(model) - 10):  # into what was cut already
            patch = rng.randbytes(3000)
            os.pwrite(fd, patch, off)
            model[off:off + len(patch)] = patch
        for _ in range(136):                 # 34 MiB more: past the 32 MiB ring
            append(256 * KiB)
        check_some()
        os.ftruncate(fd, 7 * MiB + 333)     # back into the cut part
        del model[7 * MiB + 333:]
        check_some()
        for _ in range(44):                  # and 11 MiB again
            append(256 * KiB)
        check_some()
    finally:
        os.close(fd)
    want = sha(bytes(model))
    assert file_sha(f) == want
    remount(daemon)
    assert f.stat().st_size == len(model)
    assert file_sha(f) == want
    assert live_bytes(daemon) == len(model)


# ------------------------------------------------------------------ rename
def _renameat2(old: Path, new: Path, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, bytes(old), at_fdcwd, bytes(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(old))


RENAME_NOREPLACE = 1


def test_rename(daemon: Any, ds: Path) -> None:
    (ds / "d1").mkdir()
    (ds / "d2").mkdir()
    a = ds / "d1" / "a"
    a.write_bytes(b"A" * 50_000)
    ino = a.stat().st_ino
    # within a directory
    os.rename(a, ds / "d1" / "b")
    assert not a.exists()
    assert (ds / "d1" / "b").read_bytes() == b"A" * 50_000
    assert (ds / "d1" / "b").stat().st_ino == ino
    # across directories of one dataset
    os.rename(ds / "d1" / "b", ds / "d2" / "c")
    assert os.listdir(ds / "d1") == []
    assert os.listdir(ds / "d2") == ["c"]
    assert (ds / "d2" / "c").stat().st_ino == ino
    # over an existing file: the target is replaced, the source name is gone
    (ds / "d1" / "target").write_bytes(b"old target" * 10_000)
    os.rename(ds / "d2" / "c", ds / "d1" / "target")
    assert (ds / "d1" / "target").read_bytes() == b"A" * 50_000
    assert (ds / "d1" / "target").stat().st_ino == ino
    assert not (ds / "d2" / "c").exists()
    # RENAME_NOREPLACE over an existing name: EEXIST, both kept
    (ds / "d2" / "x").write_bytes(b"x")
    expect_errno(errno.EEXIST, _renameat2, ds / "d2" / "x", ds / "d1" / "target",
                 RENAME_NOREPLACE)
    assert (ds / "d2" / "x").read_bytes() == b"x"
    _renameat2(ds / "d2" / "x", ds / "d1" / "y", RENAME_NOREPLACE)
    assert (ds / "d1" / "y").read_bytes() == b"x"
    # a rename to the same name changes nothing
    os.rename(ds / "d1" / "y", ds / "d1" / "y")
    assert (ds / "d1" / "y").read_bytes() == b"x"
    remount(daemon)
    assert sorted(os.listdir(ds / "d1")) == ["target", "y"]
    assert os.listdir(ds / "d2") == []
    assert (ds / "d1" / "target").read_bytes() == b"A" * 50_000
    assert (ds / "d1" / "target").stat().st_ino == ino
    assert live_bytes(daemon) == 50_001


def test_rename_over_open_target(daemon: Any, ds: Path) -> None:
    """Readers of the replaced file keep reading its old content (atomic replace)."""
    old = random.Random(5).randbytes(200 * KiB)
    new = random.Random(6).randbytes(150 * KiB)
    (ds / "cfg").write_bytes(old)
    tmp = ds / ".cfg.tmp"
    tmp.write_bytes(new)
    with open(ds / "cfg", "rb") as reader:
        head = reader.read(1000)
        os.rename(tmp, ds / "cfg")
        assert (ds / "cfg").read_bytes() == new
        assert head + reader.read() == old
    assert live_bytes(daemon) == len(new)
    remount(daemon)
    assert os.listdir(ds) == ["cfg"]
    assert (ds / "cfg").read_bytes() == new
    assert live_bytes(daemon) == len(new)


def test_rename_directories(daemon: Any, ds: Path) -> None:
    src = ds / "src"
    (src / "sub" / "deep").mkdir(parents=True)
    (src / "f").write_bytes(b"f")
    (src / "sub" / "deep" / "g").write_bytes(b"g" * 30_000)
    inos = {p: p.stat().st_ino for p in [src, src / "f", src / "sub" / "deep" / "g"]}
    (ds / "other").mkdir()
    os.rename(src, ds / "other" / "moved")
    moved = ds / "other" / "moved"
    assert not src.exists()
    assert (moved / "sub" / "deep" / "g").read_bytes() == b"g" * 30_000
    assert moved.stat().st_ino == inos[src]
    assert (moved / "f").stat().st_ino == inos[src / "f"]
    # "..": the moved directory's parent is its new parent
    assert os.stat(moved / "sub" / ".." / "..").st_ino == (ds / "other").stat().st_ino

    # over a non-empty directory: ENOTEMPTY, both trees intact
    (ds / "full").mkdir()
    (ds / "full" / "keep").write_bytes(b"keep me")
    expect_errno(errno.ENOTEMPTY, os.rename, moved, ds / "full")
    assert (ds / "full" / "keep").read_bytes() == b"keep me"
    assert (moved / "f").read_bytes() == b"f"
    # over an empty directory: replaced
    (ds / "empty").mkdir()
    os.rename(moved, ds / "empty")
    assert (ds / "empty" / "f").read_bytes() == b"f"
    assert (ds / "empty").stat().st_ino == inos[src]
    # file over directory, directory over file
    expect_errno(errno.EISDIR, os.rename, ds / "full" / "keep", ds / "empty")
    expect_errno(errno.ENOTDIR, os.rename, ds / "empty", ds / "full" / "keep")
    # a directory into itself
    expect_errno(errno.EINVAL, os.rename, ds / "empty", ds / "empty" / "sub" / "x")
    # a missing source
    expect_errno(errno.ENOENT, os.rename, ds / "nothing", ds / "x")
    assert sorted(os.listdir(ds)) == ["empty", "full", "other"]
    remount(daemon)
    assert sorted(os.listdir(ds)) == ["empty", "full", "other"]
    assert os.listdir(ds / "other") == []
    assert sorted(os.listdir(ds / "empty")) == ["f", "sub"]
    assert (ds / "empty" / "sub" / "deep" / "g").read_bytes() == b"g" * 30_000
    assert (ds / "full" / "keep").read_bytes() == b"keep me"
    assert (ds / "empty" / "sub" / "deep" / "g").stat().st_ino == inos[src / "sub" / "deep" / "g"]


def test_rename_across_datasets(daemon: Any, ds: Path) -> None:
    other = daemon.mnt / "other"
    other.mkdir()
    data = random.Random(7).randbytes(120 * KiB)
    (ds / "f").write_bytes(data)
    (ds / "dir" / "sub").mkdir(parents=True)
    (ds / "dir" / "sub" / "g").write_bytes(b"g")
    expect_errno(errno.EXDEV, os.rename, ds / "f", other / "f")
    expect_errno(errno.EXDEV, os.rename, ds / "dir", other / "dir")
    assert (ds / "f").read_bytes() == data
    assert not (other / "f").exists()
    # a whole dataset into another: EXDEV too; renaming a dataset itself works
    expect_errno(errno.EXDEV, os.rename, other, ds / "other")
    # mv falls back to copy + delete
    subprocess.run(["mv", str(ds / "f"), str(other / "f")], check=True)
    subprocess.run(["mv", str(ds / "dir"), str(other / "dir")], check=True)
    assert os.listdir(ds) == []
    assert (other / "f").read_bytes() == data
    assert (other / "dir" / "sub" / "g").read_bytes() == b"g"
    os.rename(other, daemon.mnt / "renamed")
    remount(daemon)
    assert sorted(os.listdir(daemon.mnt)) == ["ds", "renamed"]
    assert (daemon.mnt / "renamed" / "f").read_bytes() == data
    assert live_bytes(daemon) == len(data) + 1


# ------------------------------------------------------------------ unlink
def test_unlink_while_open(daemon: Any, ds: Path) -> None:
    data = random.Random(8).randbytes(300 * KiB)
    f = ds / "victim"
    f.write_bytes(data)
    reader = open(f, "rb")  # noqa: SIM115
    try:
        assert reader.read(10) == data[:10]
        os.unlink(f)
        assert not f.exists()
        assert os.listdir(ds) == []
        # the name is free again while the old file is still open
        f.write_bytes(b"a new file")
        assert reader.read() == data[10:]
        reader.seek(0)
        assert sha(reader.read()) == sha(data)
        assert os.fstat(reader.fileno()).st_size == len(data)
    finally:
        reader.close()
    assert f.read_bytes() == b"a new file"

    # written after the unlink: still readable through the handle, then gone
    g = ds / "scratch"
    with open(g, "w+b") as fh:
        fh.write(b"x" * 100_000)
        os.unlink(g)
        fh.write(b"y" * 100_000)
        fh.flush()
        fh.seek(0)
        assert fh.read() == b"x" * 100_000 + b"y" * 100_000
    assert os.listdir(ds) == ["victim"]
    assert live_bytes(daemon) == 10

    # a file the kernel still knows (here: an O_PATH descriptor) can be opened again
    # after its name is gone, as on any file system: unlink and rename over it
    for how in ("unlink", "rename"):
        h = ds / f"held-{how}"
        h.write_bytes(how.encode() * 1000)
        pfd = os.open(h, os.O_PATH)
        try:
            if how == "unlink":
                os.unlink(h)
            else:
                (ds / "new").write_bytes(b"replacement")
                os.rename(ds / "new", h)
            assert os.fstat(pfd).st_size == len(how) * 1000
            with open(f"/proc/self/fd/{pfd}", "rb") as again:
                assert again.read() == how.encode() * 1000
        finally:
            os.close(pfd)
    assert (ds / "held-rename").read_bytes() == b"replacement"
    assert sorted(os.listdir(ds)) == ["held-rename", "victim"]
    assert live_bytes(daemon) == 10 + len(b"replacement")
    os.unlink(ds / "held-rename")
    remount(daemon)
    assert os.listdir(ds) == ["victim"]
    assert f.read_bytes() == b"a new file"
    assert live_bytes(daemon) == 10


def test_unlinked_open_file_after_crash(daemon: Any, ds: Path) -> None:
    """The daemon dies while an unlinked file is open: it is gone after the remount."""
    (ds / "keep").write_bytes(b"keep")
    f = ds / "orphan"
    f.write_bytes(b"o" * 80_000)
    fd = os.open(f, os.O_RDONLY)
    try:
        os.unlink(f)
        daemon.kill9()
    finally:
        with contextlib.suppress(OSError):  # the mount it belonged to is gone
            os.close(fd)
    daemon.start()
    assert os.listdir(ds) == ["keep"]
    assert live_bytes(daemon) == 4


# ------------------------------------------------------------------ directories
def test_mkdir_rmdir_errors(daemon: Any, ds: Path) -> None:
    d = ds / "d"
    d.mkdir()
    (d / "f").write_bytes(b"content")
    expect_errno(errno.EEXIST, os.mkdir, d)
    expect_errno(errno.EEXIST, os.mkdir, d / "f")
    expect_errno(errno.ENOTEMPTY, os.rmdir, d)
    expect_errno(errno.ENOTDIR, os.rmdir, d / "f")
    expect_errno(errno.ENOENT, os.rmdir, d / "missing")
    expect_errno(errno.EISDIR, os.unlink, d)
    expect_errno(errno.ENOENT, os.unlink, d / "missing")
    expect_errno(errno.EEXIST, os.open, d / "f", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    expect_errno(errno.ENOTDIR, os.open, d / "f" / "x", os.O_CREAT | os.O_WRONLY)
    expect_errno(errno.ENOTDIR, os.mkdir, d / "f" / "x")
    expect_errno(errno.ENOENT, os.mkdir, d / "no" / "x")
    expect_errno(errno.EISDIR, os.open, d, os.O_WRONLY)
    assert (d / "f").read_bytes() == b"content"
    # nested directories, then remove them bottom-up
    (d / "a" / "b" / "c").mkdir(parents=True)
    assert stat.S_ISDIR((d / "a" / "b" / "c").stat().st_mode)
    expect_errno(errno.ENOTEMPTY, os.rmdir, d / "a")
    os.rmdir(d / "a" / "b" / "c")
    os.rmdir(d / "a" / "b")
    os.rmdir(d / "a")
    assert os.listdir(d) == ["f"]
    remount(daemon)
    assert os.listdir(d) == ["f"]
    assert (d / "f").read_bytes() == b"content"


def test_symlinks_and_no_hard_links(daemon: Any, ds: Path) -> None:
    (ds / "dir").mkdir()
    (ds / "dir" / "file").write_bytes(b"through the link")
    os.symlink("dir/file", ds / "rel")
    os.symlink("dir", ds / "dirlink")
    os.symlink("does/not/exist", ds / "dangling")
    long_target = "x/" * 1500 + "end"
    os.symlink(long_target, ds / "long")
    os.symlink(str(ds / "dir" / "file"), ds / "abs")
    assert (ds / "rel").read_bytes() == b"through the link"
    assert (ds / "abs").read_bytes() == b"through the link"
    assert os.listdir(ds / "dirlink") == ["file"]
    expect_errno(errno.ENOENT, open, ds / "dangling")
    expect_errno(errno.EEXIST, os.symlink, "x", ds / "rel")
    expect_errno(errno.EINVAL, os.readlink, ds / "dir" / "file")
    # writing through a symlink writes the target
    with open(ds / "rel", "ab") as fh:
        fh.write(b"!")
    # renaming and removing a link leaves the target alone
    os.rename(ds / "rel", ds / "dir" / "rel2")
    assert os.readlink(ds / "dir" / "rel2") == "dir/file"  # kept verbatim, now dangling
    os.unlink(ds / "dir" / "rel2")
    # hard links: refused, nothing changes
    expect_errno(errno.EPERM, os.link, ds / "dir" / "file", ds / "hard")
    expect_errno(errno.EPERM, os.link, ds / "dirlink", ds / "hard")
    r = subprocess.run(["ln", str(ds / "dir" / "file"), str(ds / "hard")], capture_output=True,
                       text=True)
    assert r.returncode != 0 and "not permitted" in r.stderr
    assert os.stat(ds / "dir" / "file").st_nlink == 1
    remount(daemon)
    st = os.lstat(ds / "long")
    assert stat.S_ISLNK(st.st_mode)
    assert st.st_size == len(long_target)
    assert os.readlink(ds / "long") == long_target
    assert os.readlink(ds / "dirlink") == "dir"
    assert os.readlink(ds / "dangling") == "does/not/exist"
    assert (ds / "abs").read_bytes() == b"through the link!"
    assert sorted(os.listdir(ds)) == ["abs", "dangling", "dir", "dirlink", "long"]


def test_attributes_kept_across_remount(daemon: Any, ds: Path) -> None:
    f = ds / "f"
    f.write_bytes(b"data")
    d = ds / "d"
    d.mkdir()
    os.symlink("f", ds / "l")
    os.chown(f, 1234, 5678)
    os.chown(d, 4321, 8765)
    os.chmod(f, 0o4751)  # after chown, which clears setuid; kept as a mode bit
    os.chmod(d, 0o700)
    os.lchown(ds / "l", 2222, 3333)
    t_file = (1_500_000_000_123_456_789, 1_600_000_000_987_654_321)
    t_dir = (1_400_000_000_000_000_001, 1_450_000_000_000_000_002)
    t_link = (1_300_000_000_000_000_003, 1_350_000_000_000_000_004)
    os.utime(f, ns=t_file)
    os.utime(d, ns=t_dir)
    os.utime(ds / "l", ns=t_link, follow_symlinks=False)

    # a written file keeps the mtime and ctime stat showed after close
    t0 = time.time_ns()
    (ds / "w").write_bytes(b"z" * 200_000)
    assert os.stat(ds / "w").st_mtime_ns >= t0 - 10**9
    # futimens on an open file with written data (cp -p does this before close)
    with open(ds / "u", "wb") as fh:
        fh.write(b"q" * 100_000)
        fh.flush()  # to the kernel, so the write comes before the utime
        os.utime(fh.fileno(), ns=(10**18, 10**18))
    assert os.stat(ds / "u").st_mtime_ns == 10**18
    # a write after a utime moves mtime and ctime forward
    (ds / "a").write_bytes(b"a")
    os.utime(ds / "a", ns=t_file)
    ctime_a = os.stat(ds / "a").st_ctime_ns
    time.sleep(0.01)
    with open(ds / "a", "ab") as fh:
        fh.write(b"+")
    st_a = os.stat(ds / "a")
    assert st_a.st_mtime_ns > t_file[1] and st_a.st_ctime_ns > ctime_a
    assert abs(st_a.st_mtime_ns - time.time_ns()) < 60 * 10**9

    names = ("f", "d", "l", "w", "u", "a")
    before = {p: os.lstat(ds / p) for p in names}

    def check(st: dict[str, os.stat_result]) -> None:
        assert stat.S_IMODE(st["f"].st_mode) == 0o4751 and stat.S_ISREG(st["f"].st_mode)
        assert stat.S_IMODE(st["d"].st_mode) == 0o700 and stat.S_ISDIR(st["d"].st_mode)
        assert (st["f"].st_uid, st["f"].st_gid) == (1234, 5678)
        assert (st["d"].st_uid, st["d"].st_gid) == (4321, 8765)
        assert (st["l"].st_uid, st["l"].st_gid) == (2222, 3333)
        assert (st["f"].st_atime_ns, st["f"].st_mtime_ns) == t_file
        assert (st["d"].st_atime_ns, st["d"].st_mtime_ns) == t_dir
        assert (st["l"].st_atime_ns, st["l"].st_mtime_ns) == t_link
        assert st["u"].st_mtime_ns == 10**18
        for name in names:
            assert st[name].st_ino == before[name].st_ino
            assert st[name].st_mtime_ns == before[name].st_mtime_ns, name
            assert st[name].st_ctime_ns == before[name].st_ctime_ns, name
            assert st[name].st_size == before[name].st_size, name

    check(before)
    remount(daemon)
    check({p: os.lstat(ds / p) for p in names})
    assert (ds / "a").read_bytes() == b"a+"
    assert (ds / "u").read_bytes() == b"q" * 100_000


def test_xattrs(daemon: Any, ds: Path) -> None:
    f = ds / "f"
    f.write_bytes(b"x")
    d = ds / "d"
    d.mkdir()
    os.setxattr(f, "user.colour", b"blue")
    os.setxattr(f, "user.empty", b"")
    os.setxattr(f, "user.big", bytes(range(256)) * 200)
    os.setxattr(d, "user.kind", b"folder")
    assert os.getxattr(f, "user.colour") == b"blue"
    assert os.getxattr(f, "user.empty") == b""
    assert sorted(os.listxattr(f)) == ["user.big", "user.colour", "user.empty"]
    os.setxattr(f, "user.colour", b"green")  # replace
    expect_errno(errno.EEXIST, os.setxattr, f, "user.colour", b"red", os.XATTR_CREATE)
    expect_errno(errno.ENODATA, os.setxattr, f, "user.new", b"x", os.XATTR_REPLACE)
    assert os.getxattr(f, "user.colour") == b"green"
    expect_errno(errno.ENODATA, os.getxattr, f, "user.missing")
    expect_errno(errno.ENODATA, os.removexattr, f, "user.missing")
    expect_errno(errno.EOPNOTSUPP, os.setxattr, f, "trusted.x", b"1")
    # other namespaces are not supported at all (ls -l then stops asking per file)
    for name in ("trusted.x", "security.selinux", "system.posix_acl_access"):
        expect_errno(errno.EOPNOTSUPP, os.getxattr, f, name)
    os.removexattr(f, "user.empty")
    assert sorted(os.listxattr(f)) == ["user.big", "user.colour"]
    # xattrs follow renames and are independent of the data
    os.rename(f, ds / "g")
    g = ds / "g"
    g.write_bytes(b"rewritten")
    remount(daemon)
    assert sorted(os.listxattr(g)) == ["user.big", "user.colour"]
    assert os.getxattr(g, "user.colour") == b"green"
    assert os.getxattr(g, "user.big") == bytes(range(256)) * 200
    assert os.getxattr(d, "user.kind") == b"folder"
    expect_errno(errno.ENODATA, os.getxattr, g, "user.empty")
    # a new file by an old name does not inherit the old file's attributes
    os.unlink(g)
    g.write_bytes(b"new")
    assert os.listxattr(g) == []


def test_name_lengths_and_statfs(daemon: Any, ds: Path) -> None:
    st = os.statvfs(ds)
    assert st.f_namemax == 255
    assert st.f_bsize > 0 and st.f_frsize > 0
    assert st.f_blocks >= st.f_bfree >= st.f_bavail >= 0
    r = subprocess.run(["df", "-P", str(daemon.mnt)], capture_output=True, text=True,
                       check=True)
    assert r.stdout.splitlines()[1].startswith("dmsfs ")
    n255 = "n" * 255
    n256 = "n" * 256
    (ds / n255).write_bytes(b"ok")
    (ds / ("d" * 255)).mkdir()
    os.symlink(n255, ds / ("s" * 255))
    # multi-byte characters count in bytes: 127 x 2 bytes + 1 = 255
    uni = "é" * 127 + "x"
    assert len(uni.encode()) == 255
    (ds / ("d" * 255) / uni).write_bytes(b"uni")
    for fn, args in [
        (os.open, (ds / n256, os.O_CREAT | os.O_WRONLY)),
        (os.mkdir, (ds / n256,)),
        (os.symlink, ("x", ds / n256)),
        (os.stat, (ds / n256,)),
        (os.rename, (ds / n255, ds / n256)),
        (os.open, (ds / ("é" * 128), os.O_CREAT | os.O_WRONLY)),
    ]:
        expect_errno(errno.ENAMETOOLONG, fn, *args)  # type: ignore[arg-type]
    remount(daemon)
    assert sorted(os.listdir(ds)) == sorted([n255, "d" * 255, "s" * 255])
    assert (ds / n255).read_bytes() == b"ok"
    assert (ds / ("s" * 255)).read_bytes() == b"ok"
    assert (ds / ("d" * 255) / uni).read_bytes() == b"uni"


def test_top_level_dataset_rules(daemon: Any) -> None:
    mnt = daemon.mnt
    for bad in ["bad name", ".hidden", "-dash", "_under", "a" * 129, "x:y",
                "é"]:
        expect_errno(errno.EINVAL, os.mkdir, mnt / bad)
    (mnt / ("a" * 128)).mkdir()
    (mnt / "Good.name_1-2").mkdir()
    expect_errno(errno.EPERM, os.open, mnt / "file", os.O_CREAT | os.O_WRONLY)
    expect_errno(errno.EPERM, os.symlink, "Good.name_1-2", mnt / "link")
    expect_errno(errno.EEXIST, os.mkdir, mnt / "Good.name_1-2")
    # a dataset cannot be renamed to an invalid name, nor a file moved to the top
    (mnt / "Good.name_1-2" / "f").write_bytes(b"f")
    expect_errno(errno.EINVAL, os.rename, mnt / "Good.name_1-2", mnt / "bad name")
    expect_errno(errno.EPERM, os.rename, mnt / "Good.name_1-2" / "f", mnt / "f")
    assert sorted(os.listdir(mnt)) == sorted(["a" * 128, "Good.name_1-2"])
    assert (mnt / "Good.name_1-2" / "f").read_bytes() == b"f"
    remount(daemon)
    assert sorted(os.listdir(mnt)) == sorted(["a" * 128, "Good.name_1-2"])


def test_at_names_reserved_at_dataset_root(daemon: Any, ds: Path) -> None:
    (ds / "f").write_bytes(b"f")
    (ds / "sub").mkdir()
    expect_errno(errno.EINVAL, os.open, ds / "@x", os.O_CREAT | os.O_WRONLY)
    expect_errno(errno.EINVAL, os.mkdir, ds / "@v1")
    expect_errno(errno.EINVAL, os.symlink, "f", ds / "@link")
    expect_errno(errno.EINVAL, os.rename, ds / "f", ds / "@f")
    expect_errno(errno.EINVAL, os.rename, ds / "sub", ds / "@sub")
    assert sorted(os.listdir(ds)) == ["f", "sub"]
    # deeper down, and not at the start, '@' is an ordinary character
    (ds / "sub" / "@deep").write_bytes(b"deep")
    (ds / "sub" / "@dir").mkdir()
    os.rename(ds / "f", ds / "sub" / "@f")
    (ds / "a@b").write_bytes(b"ab")
    remount(daemon)
    assert sorted(os.listdir(ds / "sub")) == ["@deep", "@dir", "@f"]
    assert (ds / "sub" / "@deep").read_bytes() == b"deep"
    assert (ds / "a@b").read_bytes() == b"ab"


def test_inode_numbers_stable(daemon: Any, ds: Path) -> None:
    paths = [ds]
    for i in range(5):
        d = ds / f"d{i}"
        d.mkdir()
        paths.append(d)
        for j in range(5):
            f = d / f"f{j}"
            f.write_bytes(b"%d" % j)
            paths.append(f)
        os.symlink("f0", d / "link")
        paths.append(d / "link")
    before = {p: os.lstat(p).st_ino for p in paths}
    assert len(set(before.values())) == len(paths)  # unique
    assert os.stat(daemon.mnt).st_ino == 1
    remount(daemon)
    assert {p: os.lstat(p).st_ino for p in paths} == before
    # readdir reports the same numbers as stat
    for entry in os.scandir(ds / "d0"):
        assert entry.inode() == before[ds / "d0" / entry.name]


# empty files: all of it is in the state dir's index, none in the store; ~70 s a run
@pytest.mark.backends("file")
def test_huge_directory(daemon: Any, ds: Path) -> None:
    """100,000 entries: all created, all listed, and again after a remount."""
    big = ds / "big"
    big.mkdir()
    count = 100_000
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    dfd = os.open(big, os.O_RDONLY | os.O_DIRECTORY)
    t0 = time.monotonic()
    try:
        for i in range(count):
            os.close(os.open(f"file-{i:06d}", flags, 0o644, dir_fd=dfd))
    finally:
        os.close(dfd)
    t1 = time.monotonic()
    expected = {f"file-{i:06d}" for i in range(count)}
    names = os.listdir(big)
    t2 = time.monotonic()
    assert len(names) == count
    assert set(names) == expected
    print(f"\n100k entries: create {t1 - t0:.1f}s, listdir {t2 - t1:.2f}s")
    expect_errno(errno.ENOTEMPTY, os.rmdir, big)
    expect_errno(errno.EEXIST, os.open, big / "file-012345", flags)
    os.unlink(big / "file-050000")
    remount(daemon)
    t3 = time.monotonic()
    names = os.listdir(big)
    print(f"listdir after remount {time.monotonic() - t3:.2f}s")
    assert len(names) == count - 1
    assert set(names) == expected - {"file-050000"}
    assert os.stat(big / "file-099999").st_size == 0
