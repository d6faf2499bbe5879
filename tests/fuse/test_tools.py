"""Ordinary tools on the mounted tree: cp -a, rsync -a, tar, mv, rm, ls, find, mmap.

A generated source tree (subdirectories, symlinks, odd names, empty files, a
multi-MiB file, modes, owners, nanosecond mtimes) goes into the mount and back
out; every file's type, mode, owner, size, sha256 (or link target) and mtime
must come through unchanged, also after a remount.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import random
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.backends("file", "s3")

KiB = 1024
MiB = 1024 * KiB

ODD_NAMES = ["with space", "new\nline", "tab\there", "ünïcödé ✓", "-starts-with-dash",
             "quote'and\"dq", "star*?[x]", "back\\slash", ".hidden", "n" * 200, "@at-inner",
             "trailing.", "семь"]


# ------------------------------------------------------------------ helpers
def remount(daemon: Any) -> None:
    assert daemon.stop() == 0
    daemon.start()


def run(cmd: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True,
                       **kwargs)
    assert r.returncode == 0, f"{cmd}\nexit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def q(path: Path) -> str:
    return "'" + str(path).replace("'", "'\\''") + "'"


def make_tree(root: Path) -> None:
    """A source tree with a bit of everything the live tree stores."""
    rng = random.Random(11)
    (root / "sub" / "deeper" / "deepest").mkdir(parents=True)
    (root / "empty_dir").mkdir()
    (root / "big.bin").write_bytes(rng.randbytes(3 * MiB + 12_345))
    (root / "sub" / "zeros.bin").write_bytes(bytes(MiB))
    (root / "sub" / "repeat.bin").write_bytes(rng.randbytes(50 * KiB) * 6)
    (root / "empty").write_bytes(b"")
    (root / "sub" / "deeper" / "empty2").write_bytes(b"")
    for name in ODD_NAMES:
        (root / name).write_bytes(name.encode() * 3)
    (root / ("d" * 200)).mkdir()
    (root / ("d" * 200) / "in long dir").write_bytes(b"long")
    for i in range(40):
        (root / "sub" / "deeper" / f"f{i:03d}").write_bytes(rng.randbytes(rng.randrange(20_000)))
    os.symlink("sub/zeros.bin", root / "link_rel")
    os.symlink("sub", root / "link_dir")
    os.symlink("nowhere/at all", root / "link_dangling")
    os.symlink("../big.bin", root / "sub" / "link_up")
    os.symlink("/etc/hostname", root / "link_abs")
    os.chmod(root / "big.bin", 0o600)
    os.chmod(root / "sub" / "zeros.bin", 0o755)
    os.chmod(root / "empty", 0o444)
    os.chown(root / "sub" / "repeat.bin", 1234, 5678)
    os.chown(root / "sub" / "deeper", 4321, 8765)
    os.lchown(root / "link_rel", 2222, 3333)
    os.chmod(root / "sub" / "deeper", 0o750)
    # distinct mtimes with nanoseconds, deepest first so directories keep theirs
    t = 1_600_000_000_000_000_000
    for dirpath, dirs, files in sorted(os.walk(root, topdown=False), key=lambda x: -len(x[0])):
        for name in [*files, *dirs]:
            t += 1_000_000_123
            os.utime(os.path.join(dirpath, name), ns=(t, t), follow_symlinks=False)
    os.utime(root, ns=(t + 7, t + 7))


def snapshot(root: Path, *, times: str = "ns", dir_times: bool = True
             ) -> dict[str, tuple[object, ...]]:
    """relative path -> (kind, mode, uid, gid, size, content hash or target, mtime)."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in [".", *dirs, *files]:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if name == "." and rel != ".":
                continue
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                kind, body = "l", os.readlink(path)
            elif stat.S_ISDIR(st.st_mode):
                kind, body = "d", None
            else:
                with open(path, "rb") as f:
                    kind, body = "f", hashlib.file_digest(f, "sha256").hexdigest()
            mtime: object = st.st_mtime_ns if times == "ns" else st.st_mtime_ns // 10**9
            if kind == "d" and not dir_times:
                mtime = None
            size = st.st_size if kind != "d" else None
            out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, mtime, size, body)
    return out


def assert_same(a: dict[str, tuple[object, ...]], b: dict[str, tuple[object, ...]]) -> None:
    assert sorted(a) == sorted(b)
    diffs = [(k, a[k], b[k]) for k in a if a[k] != b[k]]
    assert not diffs, f"{len(diffs)} differ, e.g. {diffs[:3]}"


def diff_r(a: Path, b: Path) -> None:
    run(f"diff -r --no-dereference {q(a)} {q(b)}")


# ------------------------------------------------------------------ copies
def test_cp_a_in_within_and_out(daemon: Any, ds: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    want = snapshot(src)
    run(f"cp -a {q(src)} {q(ds / 'copy')}")
    assert_same(snapshot(ds / "copy"), want)
    diff_r(src, ds / "copy")
    # within the mount, with extended attributes that cp -a carries along
    os.setxattr(ds / "copy" / "big.bin", "user.origin", b"generated")
    os.setxattr(ds / "copy" / "sub", "user.kind", b"dir")
    run(f"cp -a {q(ds / 'copy')} {q(ds / 'copy2')}")
    assert_same(snapshot(ds / "copy2"), want)
    assert os.getxattr(ds / "copy2" / "big.bin", "user.origin") == b"generated"
    assert os.getxattr(ds / "copy2" / "sub", "user.kind") == b"dir"
    remount(daemon)
    assert_same(snapshot(ds / "copy"), want)
    assert_same(snapshot(ds / "copy2"), want)
    # and back out
    run(f"cp -a {q(ds / 'copy2')} {q(tmp_path / 'out')}")
    assert_same(snapshot(tmp_path / "out"), want)
    diff_r(src, tmp_path / "out")
    # the store counts each byte once per live file
    sizes = sum(v[5] for v in want.values() if v[0] == "f")  # type: ignore[misc]
    assert daemon.ctl_json("stats")["logical_bytes"] == 2 * sizes


def test_rsync_a(daemon: Any, ds: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    dst = ds / "r"
    run(f"rsync -a {q(src)}/ {q(dst)}/")
    assert_same(snapshot(dst), snapshot(src))
    # a second run finds nothing to do: sizes and mtimes came through
    r = run(f"rsync -ai --dry-run {q(src)}/ {q(dst)}/")
    assert r.stdout == ""

    # change the source: rewrite the middle of the big file, append, delete, add
    rng = random.Random(12)
    with open(src / "big.bin", "r+b") as f:
        f.seek(MiB + 77)
        f.write(rng.randbytes(10_000))
    with open(src / "sub" / "deeper" / "f001", "ab") as f:
        f.write(b"appended")
    os.unlink(src / "sub" / "deeper" / "f002")
    shutil.rmtree(src / "empty_dir")
    (src / "new file").write_bytes(b"new")
    run(f"rsync -a --delete {q(src)}/ {q(dst)}/")
    # rsync sets a directory's mtime before it updates files in it (on ext4 too)
    assert_same(snapshot(dst, dir_times=False), snapshot(src, dir_times=False))

    # --inplace delta transfer: only changed blocks are written, at their offsets
    with open(src / "big.bin", "r+b") as f:
        f.seek(2 * MiB + 5)
        f.write(rng.randbytes(3000))
        f.seek(0, os.SEEK_END)
        f.write(rng.randbytes(70_000))
    os.truncate(src / "sub" / "repeat.bin", 123_456)
    run(f"rsync -a --inplace --no-whole-file {q(src)}/ {q(dst)}/")
    want = snapshot(src, dir_times=False)
    assert_same(snapshot(dst, dir_times=False), want)

    remount(daemon)
    assert_same(snapshot(dst, dir_times=False), want)
    out = tmp_path / "out"
    run(f"rsync -a {q(dst)}/ {q(out)}/")
    assert_same(snapshot(out, dir_times=False), want)
    assert_same(snapshot(out), snapshot(dst))
    diff_r(src, out)


def test_tar_pipe_in_and_out(daemon: Any, ds: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    (ds / "t").mkdir()
    run(f"tar -C {q(src)} -cf - . | tar -C {q(ds / 't')} -xf -")
    # GNU tar's default format keeps whole seconds
    want = snapshot(src, times="s")
    assert_same(snapshot(ds / "t", times="s"), want)
    diff_r(src, ds / "t")
    remount(daemon)
    assert_same(snapshot(ds / "t", times="s"), want)
    (tmp_path / "out").mkdir()
    run(f"tar -C {q(ds / 't')} -cf - . | tar -C {q(tmp_path / 'out')} -xf -")
    assert_same(snapshot(tmp_path / "out", times="s"), want)
    diff_r(src, tmp_path / "out")
    # a tar file written into the mount and listed from there
    run(f"tar -C {q(src)} -czf {q(ds / 'tree.tgz')} .")
    listing = run(f"tar -tzf {q(ds / 'tree.tgz')}").stdout
    assert "./sub/deeper/f039" in listing.splitlines()


def test_mv_rm_ls_find(daemon: Any, ds: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    run(f"cp -a {q(src)} {q(ds / 'c')}")
    want = sorted(p for p in snapshot(src) if p != ".")
    # find walks everything (and does not get lost in directories of st_nlink 1)
    found = run(f"find {q(ds / 'c')} -mindepth 1 -printf '%P\\0'").stdout.split("\0")[:-1]
    assert sorted(found) == want
    files = run(f"find {q(ds / 'c')} -type f -name 'f0*' -printf '%f\\n'").stdout.split()
    assert sorted(files) == [f"f{i:03d}" for i in range(40)]
    links = run(f"find {q(ds / 'c')} -type l -printf '%P\\n'").stdout.split()
    assert sorted(links) == ["link_abs", "link_dangling", "link_dir", "link_rel", "sub/link_up"]
    # ls
    listed = run(f"ls -1A {q(ds / 'c' / 'sub' / 'deeper')}").stdout.split()
    assert sorted(listed) == sorted(os.listdir(src / "sub" / "deeper"))
    long = run(f"ls -la --time-style=+%s {q(ds / 'c')}").stdout
    assert "big.bin" in long and "link_rel -> sub/zeros.bin" in long
    # mv: rename a directory, move files between directories, replace a file
    run(f"mv {q(ds / 'c' / 'sub')} {q(ds / 'c' / 'moved')}")
    run(f"mv {q(ds / 'c' / 'big.bin')} {q(ds / 'c' / 'moved' / 'deeper')}/")
    run(f"mv -f {q(ds / 'c' / 'empty')} {q(ds / 'c' / 'moved' / 'zeros.bin')}")
    assert not (ds / "c" / "sub").exists()
    assert (ds / "c" / "moved" / "zeros.bin").read_bytes() == b""
    assert (ds / "c" / "moved" / "deeper" / "big.bin").read_bytes() == (
        src / "big.bin").read_bytes()
    # rm -r of a directory with many entries: readdir while entries go
    many = ds / "many"
    many.mkdir()
    for i in range(600):
        (many / f"e{i}").write_bytes(b"%d" % i)
    run(f"rm -r {q(many)}")
    assert not many.exists()
    run(f"rm -rf {q(ds / 'c' / 'moved')}")
    left = sorted(os.listdir(ds / "c"))
    assert "moved" not in left and "link_dir" in left
    remount(daemon)
    assert sorted(os.listdir(ds / "c")) == left
    assert not many.exists()
    total = sum(os.lstat(p).st_size for p in (ds / "c").rglob("*")
                if stat.S_ISREG(os.lstat(p).st_mode))
    assert daemon.ctl_json("stats")["logical_bytes"] == total


# ------------------------------------------------------------------ mmap
def test_mmap_read_and_shared_write(daemon: Any, ds: Path) -> None:
    rng = random.Random(15)
    original = rng.randbytes(600 * KiB)
    model = bytearray(original)
    (ds / "r.bin").write_bytes(original)
    (ds / "w.bin").write_bytes(original)
    (ds / "v.bin").write_bytes(original)
    remount(daemon)  # reads come from the store, not from the page cache of the writes
    with open(ds / "r.bin", "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert len(m) == len(original)
        for _ in range(200):
            a = rng.randrange(len(original))
            b = a + rng.randrange(70_000)
            assert m[a:b] == original[a:b]
        assert hashlib.sha256(m).digest() == hashlib.sha256(original).digest()

    # stores through a shared mapping, unmap, close
    with open(ds / "w.bin", "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        for off, n in [(0, 100), (4095, 2), (200_000, 50_000), (600 * KiB - 10, 10)]:
            patch = rng.randbytes(n)
            m[off:off + n] = patch
            model[off:off + n] = patch
    assert (ds / "w.bin").read_bytes() == bytes(model)
    # msync, then more stores, then unmap
    with open(ds / "w.bin", "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        m[10:20] = b"0123456789"
        m.flush()
        m[30:40] = b"abcdefghij"
    model[10:20] = b"0123456789"
    model[30:40] = b"abcdefghij"
    # the descriptor closed first, the mapping written and unmapped after
    v_model = bytearray(original)
    fd = os.open(ds / "v.bin", os.O_RDWR)
    m2 = mmap.mmap(fd, 0)
    os.close(fd)
    m2[300_000:300_005] = b"after"
    v_model[300_000:300_005] = b"after"
    m2.close()
    remount(daemon)
    assert (ds / "w.bin").read_bytes() == bytes(model)
    assert (ds / "v.bin").read_bytes() == bytes(v_model)
    assert (ds / "r.bin").read_bytes() == original
    assert daemon.ctl_json("stats")["logical_bytes"] == 3 * 600 * KiB
