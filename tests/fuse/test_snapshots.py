"""Snapshots through the real mount (SPEC sections 3, 4, 9): the read-only
`@version` folders, their names, immutability, cost, caching, and the dmsctl
version commands as users run them.

Every comparison of trees goes through `tree_state`: the sha256 of every file,
every mode and owner, every symlink target and every user.* extended
attribute, by relative path.
"""

from __future__ import annotations

import calendar
import errno
import glob
import os
import pwd
import random
import re
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from trees import State, VERSION_LINE, file_sha, sha, tree_state, user_xattrs

pytestmark = pytest.mark.backends("file", "s3")

KiB = 1024
MiB = 1024 * KiB
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")



# ------------------------------------------------------------------ helpers
def expect_errno(code: int, fn: Callable[..., object], *args: Any, **kwargs: Any) -> None:
    with pytest.raises(OSError) as e:
        fn(*args, **kwargs)
    assert e.value.errno == code, (
        f"{fn.__name__}{args}: {errno.errorcode.get(e.value.errno or 0)} != "
        f"{errno.errorcode[code]}")


def errno_of(fn: Callable[..., object], *args: Any) -> str:
    """The errno name fn(*args) fails with, or "ok" (closing any descriptor it opened)."""
    try:
        result = fn(*args)
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e.errno))
    if fn is os.open and isinstance(result, int):
        os.close(result)
    return "ok"


def snap(daemon: Any, ds: str = "ds", *args: str) -> tuple[int, str]:
    """dmsctl snapshot: (number, id) from its one line of output."""
    r = daemon.ctl("snapshot", ds, *args, check=True)
    m = VERSION_LINE.fullmatch(r.stdout)
    assert m, r.stdout
    return int(m.group(1)), m.group(2)


def stats(daemon: Any) -> dict[str, Any]:
    s: dict[str, Any] = daemon.ctl_json("stats")
    return s


def populate(root: Path, seed: int) -> None:
    """A small scripted tree: nested dirs, an empty dir, an empty file, a
    multi-chunk file, duplicate content, symlinks (relative, dangling), modes,
    an owner other than root, user.* xattrs on a file and a directory."""
    rng = random.Random(seed)
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "empty_dir").mkdir()
    shared = rng.randbytes(9000)
    files = {
        "small.txt": b"hello\n",
        "empty": b"",
        "big.bin": rng.randbytes(300 * KiB),       # many 4K..64K chunks
        "dup1.bin": shared,
        "sub/dup2.bin": shared,
        "sub/a.csv": b"id,name\n1,a\n2,b\n",
        "sub/deep/b.bin": rng.randbytes(70 * KiB),
        "sub/deep/@at.txt": b"a name starting with @ below the dataset root",
    }
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    with open(root / "sparse", "wb") as f:  # a hole, then data
        f.seek(200 * KiB)
        f.write(b"after the hole")
    os.symlink("sub/a.csv", root / "link")
    os.symlink("/nonexistent/target", root / "sub" / "dangling")
    os.chmod(root / "big.bin", 0o600)
    os.chmod(root / "sub" / "deep" / "b.bin", 0o755)
    os.chmod(root / "sub" / "deep", 0o700)
    os.chown(root / "sub" / "a.csv", 1234, 5678)
    os.setxattr(root / "big.bin", "user.label", b"train")
    os.setxattr(root / "sub" / "deep" / "b.bin", "user.empty", b"")
    os.setxattr(root / "sub", "user.dirlabel", b"\x00binary\xff")


def change(root: Path, seed: int) -> None:
    """Every kind of change to a tree made by populate()."""
    rng = random.Random(seed)
    (root / "small.txt").write_bytes(b"overwritten, and longer than before\n")   # overwrite
    with open(root / "big.bin", "r+b") as f:                                    # in place
        f.seek(100 * KiB)
        f.write(rng.randbytes(10 * KiB))
    with open(root / "sub" / "a.csv", "ab") as f:                               # append
        f.write(b"3,c\n")
    os.truncate(root / "sub" / "deep" / "b.bin", 1000)                          # truncate
    (root / "dup1.bin").unlink()                                                # delete
    os.rename(root / "sub" / "a.csv", root / "renamed.csv")                     # rename
    os.rename(root / "sub" / "deep", root / "deep_moved")                       # dir rename
    (root / "newdir" / "inner").mkdir(parents=True)                             # mkdir
    (root / "newdir" / "inner" / "n.txt").write_bytes(b"new")
    (root / "empty_dir").rmdir()
    os.chmod(root / "small.txt", 0o640)                                         # chmod
    os.chown(root / "empty", 42, 43)                                            # chown
    os.setxattr(root / "big.bin", "user.label", b"changed")                     # xattrs
    os.setxattr(root / "big.bin", "user.new", b"x")
    os.removexattr(root / "sub", "user.dirlabel")
    (root / "link").unlink()
    os.symlink("renamed.csv", root / "link")                                    # retarget


def wait_stable_stats(daemon: Any) -> dict[str, Any]:
    """Stats once the cache counters stop moving (read-ahead tasks finished): still
    for a second, as a read-ahead task waiting for a slow store fetch moves them late."""
    last, still = stats(daemon), 0
    for _ in range(100):
        time.sleep(0.2)
        now = stats(daemon)
        still = still + 1 if now["cache"] == last["cache"] else 0
        if still == 5:
            return now
        last = now
    raise AssertionError("cache counters never settled")


# ------------------------------------------------------------------ immutability
def test_snapshot_stays_byte_identical_while_the_live_tree_changes(
        daemon: Any, ds: Path, tmp_path: Path) -> None:
    populate(ds, seed=1)
    at_snapshot = tree_state(ds, mtime=True)
    assert snap(daemon)[0] == 1
    assert tree_state(ds / "@v1", mtime=True) == at_snapshot
    assert tree_state(ds / "@latest", mtime=True) == at_snapshot

    # the same changes to the live tree and to a mirror on local disk
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    populate(mirror, seed=1)
    change(ds, seed=2)
    change(mirror, seed=2)
    after = tree_state(ds)
    assert after == tree_state(mirror)
    assert after != tree_state(ds / "@v1", mtime=False)
    assert tree_state(ds / "@v1", mtime=True) == at_snapshot
    assert (ds / "@v1" / "sub" / "a.csv").read_bytes() == b"id,name\n1,a\n2,b\n"
    assert os.readlink(ds / "@v1" / "link") == "sub/a.csv"
    assert os.getxattr(ds / "@v1" / "big.bin", "user.label") == b"train"
    assert os.getxattr(ds / "@v1" / "sub", "user.dirlabel") == b"\x00binary\xff"
    with pytest.raises(OSError) as e:
        os.getxattr(ds / "@v1" / "big.bin", "system.posix_acl_access")
    assert e.value.errno == errno.EOPNOTSUPP
    assert os.stat(ds / "@v1" / "sub" / "deep" / "b.bin").st_size == 70 * KiB

    assert daemon.stop() == 0
    daemon.start()
    assert tree_state(ds / "@v1", mtime=True) == at_snapshot
    assert tree_state(ds) == after

    daemon.kill9()
    daemon.start()
    assert tree_state(ds / "@v1", mtime=True) == at_snapshot
    assert tree_state(ds / "@latest", mtime=True) == at_snapshot
    assert tree_state(ds) == after


def test_snapshot_right_after_many_small_files_and_drop_caches(
        daemon: Any, ds: Path, tmp_path: Path) -> None:
    """A peer file system shipped zero-filled snapshot files in exactly this case."""
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(3)
    shared = rng.randbytes(1500)
    for i in range(1500):
        rel = f"d{i % 30:02d}/f{i:04d}.bin"
        data = shared if i % 50 == 7 else rng.randbytes(rng.randrange(1, 4000))
        for root in (src, ds):
            (root / rel).parent.mkdir(exist_ok=True)
            (root / rel).write_bytes(data)
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("2")
    n, _ = snap(daemon)
    assert n == 1
    expected = tree_state(src)
    assert len(expected) == 1530
    got = tree_state(ds / "@v1")
    zero_filled = [rel for rel, v in got.items()
                   if v[0] == "f" and v != expected.get(rel)]
    assert zero_filled == []
    assert got == expected
    assert tree_state(ds) == expected
    versions = daemon.ctl_json("versions", "ds")
    assert (versions[0]["files"], versions[0]["bytes"]) == (
        1500, sum(p.stat().st_size for p in src.rglob("*.bin")))
    # and once more from a cold kernel cache
    Path("/proc/sys/vm/drop_caches").write_text("3")
    assert tree_state(ds / "@v1") == expected


HOLDER = r"""
import os, random, sys
path, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
fd = os.open(path, os.O_RDWR)
old = os.fstat(fd).st_size
pos = 0
while pos < 12 * 1024 * 1024:               # overwrite all of it, and grow it to 12 MiB
    os.pwrite(fd, rng.randbytes(128 * 1024), pos)
    pos += 128 * 1024
# send the dirty pages to the daemon (no flush, no fsync: no commit)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
print("written", flush=True)
sys.stdin.readline()
os.close(fd)
print("closed", flush=True)
sys.stdin.readline()
"""


def _new_content(seed: int) -> bytes:
    rng = random.Random(seed)
    return b"".join(rng.randbytes(128 * KiB) for _ in range(96))


def test_snapshot_while_a_file_is_open_for_writing(daemon: Any, ds: Path) -> None:
    old = random.Random(4).randbytes(1 * MiB + 17)
    new = _new_content(5)
    (ds / "f.bin").write_bytes(old)
    (ds / "other.txt").write_bytes(b"closed")
    daemon.ctl("flush", check=True)
    before = stats(daemon)["chunks"]
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(ds / "f.bin"), "5"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdin is not None and holder.stdout is not None
        assert holder.stdout.readline() == "written\n"
        # the daemon has received (and cut and staged) part of the new content
        deadline = time.monotonic() + 30
        while True:
            s = stats(daemon)
            if s["chunks"] + s["backlog"]["chunks"] > before:
                break
            assert time.monotonic() < deadline, "the writes never reached the daemon"
            time.sleep(0.1)
        n, _ = snap(daemon)
        assert n == 1
        got = (ds / "@v1" / "f.bin").read_bytes()
        assert sha(got) in (sha(old), sha(new)), "a snapshot holds a mix of old and new"
        assert sha(got) == sha(old), "uncommitted writes went into the snapshot"
        assert os.stat(ds / "@v1" / "f.bin").st_size == len(old)
        holder.stdin.write("close\n")
        holder.stdin.flush()
        assert holder.stdout.readline() == "closed\n"
    finally:
        holder.kill()
        _, err = holder.communicate(timeout=30)
    assert err == ""
    assert os.stat(ds / "f.bin").st_size == len(new)
    assert file_sha(ds / "f.bin") == sha(new)
    assert file_sha(ds / "@v1" / "f.bin") == sha(old)
    assert file_sha(ds / "@latest" / "f.bin") == sha(old)
    assert snap(daemon)[0] == 2
    assert file_sha(ds / "@latest" / "f.bin") == sha(new)
    assert file_sha(ds / "@v1" / "f.bin") == sha(old)
    assert [(v["number"], v["bytes"]) for v in daemon.ctl_json("versions", "ds")] == [
        (2, len(new) + 6), (1, len(old) + 6)]


def test_a_change_during_a_snapshot_is_in_the_next_one(daemon: Any, ds: Path) -> None:
    """A directory whose cached tree a snapshot reuses may change while the snapshot
    is being built.  That snapshot may hold the old or the new content, but the
    change (and every later one there) must reach the next snapshot, and diffs and
    restores against the live tree must see it."""
    from dmsfs.client import Client  # in-process: no dmsctl child inherits our files

    (ds / "D").mkdir()
    (ds / "D" / "f").write_bytes(b"initial")
    many = ds / "many"
    many.mkdir()
    for i in range(2000):  # something for the snapshot to re-serialise each round
        os.symlink("target", many / f"l{i:04d}")
    client = Client(f"unix:{daemon.state / 'api.sock'}")
    client.snapshot("ds")
    stale = []
    for round_, delay in enumerate([0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.06]):
        os.symlink("target", many / f"round{round_}")  # `many` and the root change; D not
        done: list[object] = []
        worker = threading.Thread(
            target=lambda: done.append(client.snapshot("ds")))
        worker.start()
        time.sleep(delay)
        i = 0
        while worker.is_alive():  # D/f changes while the snapshot is built
            (ds / "D" / "f").write_bytes(b"during %d %d" % (round_, i))
            i += 1
        worker.join()
        assert done, "the snapshot failed"
        final = b"after round %d" % round_
        (ds / "D" / "f").write_bytes(final)
        diff = client.diff("ds@latest", "ds")
        number = client.snapshot("ds")["number"]
        got = (ds / "@latest" / "D" / "f").read_bytes()
        if got != final:
            stale.append((round_, number, got, [m["path"] for m in diff["modified"]]))
    assert stale == [], f"the next snapshot missed changes to D/f: {stale}"
    # a directory bigger than one readdir reply lists whole
    assert sorted(os.listdir(ds / "@latest" / "many")) == sorted(os.listdir(many))
    assert (ds / "@latest" / "D" / "f").read_bytes() == (ds / "D" / "f").read_bytes()


def test_dataset_root_attributes_are_in_the_snapshot(daemon: Any, ds: Path) -> None:
    """The dataset directory is part of the dataset: its mode, owner and user.*
    attributes are the @version folder's, as a ZFS snapshot keeps its root's."""
    (ds / "f").write_bytes(b"f")
    os.chmod(ds, 0o750)
    os.chown(ds, 1000, 2000)
    os.setxattr(ds, "user.team", b"vision")
    snap(daemon)
    st = os.stat(ds / "@v1")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 1000, 2000)
    assert user_xattrs(str(ds / "@v1")) == {"user.team": b"vision"}
    os.chmod(ds, 0o755)
    os.removexattr(ds, "user.team")
    daemon.ctl("restore", "ds@v1", check=True)
    st = os.stat(ds)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 1000, 2000)
    assert user_xattrs(str(ds)) == {"user.team": b"vision"}


# ------------------------------------------------------------------ read-only, reserved
def test_every_change_under_a_snapshot_is_erofs(daemon: Any, ds: Path) -> None:
    populate(ds, seed=6)
    snap(daemon)
    live = tree_state(ds, mtime=True)
    frozen = tree_state(ds / "@v1", mtime=True)
    v = ds / "@v1"
    f = v / "small.txt"
    attempts: dict[str, tuple[Callable[..., object], tuple[Any, ...]]] = {
        "open O_WRONLY": (os.open, (f, os.O_WRONLY)),
        "open O_RDWR": (os.open, (f, os.O_RDWR)),
        "open O_WRONLY|O_TRUNC": (os.open, (f, os.O_WRONLY | os.O_TRUNC)),
        "open O_WRONLY|O_APPEND": (os.open, (f, os.O_WRONLY | os.O_APPEND)),
        "create": (os.open, (v / "new.txt", os.O_WRONLY | os.O_CREAT, 0o644)),
        "create deeper": (os.open, (v / "sub" / "new.txt", os.O_WRONLY | os.O_CREAT, 0o644)),
        "create O_EXCL": (os.open, (v / "new2", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)),
        "mkdir": (os.mkdir, (v / "newdir",)),
        "mkdir deeper": (os.mkdir, (v / "sub" / "deep" / "newdir",)),
        "symlink": (os.symlink, ("small.txt", v / "newlink")),
        "rename inside": (os.rename, (f, v / "moved.txt")),
        "rename inside over a file": (os.rename, (f, v / "empty")),
        "rename dir inside": (os.rename, (v / "sub", v / "sub2")),
        "rename out of": (os.rename, (f, ds / "moved.txt")),
        "rename into": (os.rename, (ds / "small.txt", v / "moved.txt")),
        "rename into over a file": (os.rename, (ds / "small.txt", v / "small.txt")),
        "rename @v1 itself": (os.rename, (v, ds / "not_a_snapshot")),
        "rename @v1 into a subdir": (os.rename, (v, ds / "sub" / "x")),
        "rename @latest itself": (os.rename, (ds / "@latest", ds / "latest")),
        "unlink": (os.unlink, (f,)),
        "unlink a symlink": (os.unlink, (v / "link",)),
        "rmdir": (os.rmdir, (v / "empty_dir",)),
        "rmdir @v1 itself": (os.rmdir, (v,)),
        "truncate": (os.truncate, (v / "big.bin", 10)),
        "truncate to the same size": (os.truncate, (f, 6)),
        "setxattr": (os.setxattr, (v / "big.bin", "user.label", b"x")),
        "setxattr new": (os.setxattr, (f, "user.new", b"x")),
        "setxattr on @v1": (os.setxattr, (v, "user.new", b"x")),
        "removexattr": (os.removexattr, (v / "big.bin", "user.label")),
        "removexattr on a dir": (os.removexattr, (v / "sub", "user.dirlabel")),
        "chmod": (os.chmod, (f, 0o600)),
        "chmod @v1": (os.chmod, (v, 0o700)),
        "chown": (os.chown, (f, 1, 1)),
        "chown to the same owner": (os.chown, (f, os.getuid(), os.getgid())),
        "utime": (os.utime, (f, None)),
        "utime explicit": (os.utime, (v / "sub" / "a.csv", (1, 2))),
    }
    results = {name: errno_of(fn, *args) for name, (fn, args) in attempts.items()}
    assert results == dict.fromkeys(attempts, "EROFS")
    # shell tools say the same
    for cmd in (["touch", str(f)], ["rm", "-f", str(f)], ["mkdir", str(v / "x")],
                ["mv", str(f), str(v / "y")], ["cp", str(ds / "small.txt"), str(v / "z")]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 1 and "Read-only file system" in r.stderr, (cmd, r.stderr)
    # nothing changed anywhere
    assert tree_state(ds, mtime=True) == live
    assert tree_state(ds / "@v1", mtime=True) == frozen
    assert sorted(os.listdir(ds)) == sorted(os.listdir(ds / "@v1"))
    assert daemon.ctl_json("diff", "ds@v1", "ds") == {
        "a": "ds@v1", "b": "ds", "added": [], "removed": [], "modified": [], "renamed": []}
    # reading is fine
    assert f.read_bytes() == b"hello\n"
    fd = os.open(f, os.O_RDONLY)
    try:
        assert os.pread(fd, 100, 0) == b"hello\n"
    finally:
        os.close(fd)


def test_mkfifo_under_a_snapshot_is_erofs(daemon: Any, ds: Path) -> None:
    """mkfifo/mknod is a create too (SPEC 3: every create under @... fails with EROFS)."""
    (ds / "f").write_bytes(b"x")
    snap(daemon)
    expect_errno(errno.EROFS, os.mkfifo, ds / "@v1" / "fifo")
    expect_errno(errno.EPERM, os.mkfifo, ds / "fifo")  # in the live tree: not stored
    assert os.listdir(ds / "@v1") == ["f"]


def test_at_names_reserved_at_the_dataset_root_only(daemon: Any, ds: Path) -> None:
    (ds / "f.txt").write_bytes(b"data")
    (ds / "sub").mkdir()
    results = {
        "mkdir @x": errno_of(os.mkdir, ds / "@x"),
        "mkdir @latest before any snapshot": errno_of(os.mkdir, ds / "@latest"),
        "create @x": errno_of(os.open, ds / "@x", os.O_WRONLY | os.O_CREAT, 0o644),
        "symlink @x": errno_of(os.symlink, "f.txt", ds / "@x"),
        "rename file to @x": errno_of(os.rename, ds / "f.txt", ds / "@x"),
        "rename dir to @x": errno_of(os.rename, ds / "sub", ds / "@x"),
        "rename file from below to @x": errno_of(os.rename, ds / "f.txt", ds / "@x"),
        "dataset named @x": errno_of(os.mkdir, daemon.mnt / "@x"),
    }
    assert results == dict.fromkeys(results, "EINVAL")
    assert sorted(os.listdir(ds)) == ["f.txt", "sub"]
    assert (ds / "f.txt").read_bytes() == b"data"
    # deeper, @ is an ordinary first character
    (ds / "sub" / "@dir").mkdir()
    (ds / "sub" / "@dir" / "@file").write_bytes(b"at")
    os.symlink("@dir/@file", ds / "sub" / "@link")
    os.rename(ds / "f.txt", ds / "sub" / "@moved")
    assert sorted(os.listdir(ds / "sub")) == ["@dir", "@link", "@moved"]
    assert (ds / "sub" / "@link").read_bytes() == b"at"
    snap(daemon)
    assert tree_state(ds / "@v1") == tree_state(ds)
    assert (ds / "@v1" / "sub" / "@dir" / "@file").read_bytes() == b"at"
    assert (ds / "@v1" / "sub" / "@moved").read_bytes() == b"data"
    os.rename(ds / "sub" / "@moved", ds / "sub" / "@dir" / "@moved")
    assert (ds / "sub" / "@dir" / "@moved").read_bytes() == b"data"


# ------------------------------------------------------------------ hidden or visible
def test_version_folders_hidden_from_listings_and_tools(
        daemon: Any, ds: Path, tmp_path: Path) -> None:
    populate(ds, seed=7)
    snap(daemon, "ds", "--tag", "gold")
    (ds / "later.txt").write_bytes(b"after v1")
    snap(daemon)
    live_names = sorted(["small.txt", "empty", "big.bin", "dup1.bin", "sub", "empty_dir",
                         "link", "sparse", "later.txt"])
    assert sorted(os.listdir(ds)) == live_names
    ls = subprocess.run(["ls", "-a", str(ds)], capture_output=True, text=True, check=True)
    assert sorted(set(ls.stdout.split()) - {".", ".."}) == live_names
    found = subprocess.run(["find", str(ds)], capture_output=True, text=True, check=True)
    assert "@v" not in found.stdout and "@latest" not in found.stdout
    assert "@gold" not in found.stdout
    assert sorted(found.stdout.split("\n")[:-1]) == sorted(
        [str(ds)] + [str(ds / rel) for rel in tree_state(ds)])
    du = subprocess.run(["du", "-ab", str(ds)], capture_output=True, text=True, check=True)
    du_paths = {line.split("\t", 1)[1] for line in du.stdout.splitlines()}
    assert du_paths == {str(ds)} | {str(ds / rel) for rel in tree_state(ds)}
    assert sorted(os.path.basename(p) for p in glob.glob(str(ds / "*"))) == live_names
    assert glob.glob(str(ds / "@*")) == []
    assert glob.glob(str(ds / ".*")) == []
    everything = glob.glob(str(ds / "**"), recursive=True)
    assert sorted(everything) == sorted([str(ds) + "/"] + [str(ds / rel) for rel in
                                                           tree_state(ds)])
    assert [p for p in ds.rglob("*") if p.relative_to(ds).parts[0].startswith("@")] == []
    subprocess.run(["cp", "-r", str(ds), str(tmp_path / "copy")], check=True)
    assert tree_state(tmp_path / "copy", owner=False, xattrs=False).keys() == \
        tree_state(ds).keys()
    # still reachable by name
    for name in ("@v1", "@v2", "@latest", "@gold"):
        assert (ds / name).is_dir(), name
        assert "small.txt" in os.listdir(ds / name)
    ls = subprocess.run(["ls", str(ds / "@v1")], capture_output=True, text=True, check=True)
    assert sorted(ls.stdout.split()) == sorted(set(live_names) - {"later.txt"})


def test_version_folders_listed_with_versions_visible(daemon_factory: Any) -> None:
    d = daemon_factory(["--versions-visible"]).start()
    ds = d.mnt / "ds"
    ds.mkdir()
    assert os.listdir(ds) == []  # no versions: no @latest either
    (ds / "a.txt").write_bytes(b"1")
    snap(d, "ds", "--tag", "gold")
    (ds / "b.txt").write_bytes(b"2")
    snap(d)
    d.ctl("tag", "ds@v2", "alpha", check=True)
    assert sorted(os.listdir(ds)) == ["@alpha", "@gold", "@latest", "@v1", "@v2",
                                      "a.txt", "b.txt"]
    ls = subprocess.run(["ls", "-l", str(ds)], capture_output=True, text=True, check=True)
    assert sum(line.startswith("d") and " @" in line for line in ls.stdout.splitlines()) == 5
    assert sorted(os.listdir(ds / "@latest")) == ["a.txt", "b.txt"]
    assert sorted(os.listdir(ds / "@gold")) == ["a.txt"]
    d.ctl("untag", "ds", "gold", check=True)
    (ds / "c.txt").write_bytes(b"3")
    snap(d)
    assert sorted(os.listdir(ds)) == ["@alpha", "@latest", "@v1", "@v2", "@v3",
                                      "a.txt", "b.txt", "c.txt"]
    assert sorted(os.listdir(ds / "@latest")) == ["a.txt", "b.txt", "c.txt"]
    # below a version nothing is extra
    assert sorted(os.listdir(ds / "@v3")) == ["a.txt", "b.txt", "c.txt"]
    # find walks into them now (that is what the option is for)
    found = subprocess.run(["find", str(ds), "-name", "a.txt"], capture_output=True,
                           text=True, check=True).stdout.split()
    assert sorted(found) == sorted(str(ds / n / "a.txt") for n in
                                   ["", "@alpha", "@latest", "@v1", "@v2", "@v3"])
    other = d.mnt / "other"
    other.mkdir()
    (other / "x").write_bytes(b"x")
    assert os.listdir(other) == ["x"]


# ------------------------------------------------------------------ names
def test_version_names(daemon: Any, ds: Path) -> None:
    (ds / "f.txt").write_bytes(b"one")
    t0 = time.time_ns() // 1_000_000
    n1, id1 = snap(daemon)
    t1 = time.time_ns() // 1_000_000
    assert n1 == 1
    # @latest is looked up and cached by the kernel ...
    assert (ds / "@latest" / "f.txt").read_bytes() == b"one"
    assert os.listdir(ds / "@latest") == ["f.txt"]
    latest_ino = os.stat(ds / "@latest").st_ino
    (ds / "f.txt").write_bytes(b"two")
    (ds / "g.txt").write_bytes(b"gee")
    n2, id2 = snap(daemon, "ds", "--tag", "release")
    # ... and follows the new snapshot at once, without waiting for any timeout
    assert n2 == 2
    assert (ds / "@latest" / "f.txt").read_bytes() == b"two"
    assert sorted(os.listdir(ds / "@latest")) == ["f.txt", "g.txt"]
    assert os.stat(ds / "@latest").st_ino != latest_ino
    (ds / "f.txt").write_bytes(b"three")
    n3, id3 = snap(daemon)
    assert n3 == 3
    assert (ds / "@latest" / "f.txt").read_bytes() == b"three"

    ids = [id1, id2, id3]
    for n, vid, content in [(1, id1, b"one"), (2, id2, b"two"), (3, id3, b"three")]:
        assert (ds / f"@v{n}" / "f.txt").read_bytes() == content
        assert (ds / f"@{vid}" / "f.txt").read_bytes() == content
        assert (ds / f"@{vid.upper()}" / "f.txt").read_bytes() == content
        # the shortest unique prefix of 8 or more characters
        k = next(k for k in range(8, 37)
                 if sum(other.startswith(vid[:k]) for other in ids) == 1)
        assert (ds / f"@{vid[:k]}" / "f.txt").read_bytes() == content
    assert (ds / "@release" / "f.txt").read_bytes() == b"two"

    # UUIDv7: version 7, RFC variant, time-ordered, the time is when it was taken
    for vid in ids:
        u = uuid.UUID(vid)
        assert (u.version, u.variant) == (7, uuid.RFC_4122)
    assert sorted(ids) == ids and len(set(ids)) == 3
    assert t0 <= int(id1.replace("-", "")[:12], 16) <= t1

    # an ambiguous prefix names nothing; so does one shorter than 8 characters
    common = os.path.commonprefix(ids)
    if len(common) >= 8:
        expect_errno(errno.ENOENT, os.stat, ds / f"@{common[:8]}")
    expect_errno(errno.ENOENT, os.stat, ds / f"@{id1[:7]}")
    unknown = "@" + "0" * 8 + id1[8:]
    for name in ["@v4", "@v0", "@v01x", "@nope", unknown, "@", "@latest2", "@v1 "]:
        expect_errno(errno.ENOENT, os.stat, ds / name)
        expect_errno(errno.ENOENT, os.listdir, ds / name)

    # tags: set, moved (kernel caches follow), removed
    daemon.ctl("tag", "ds@v1", "gold", check=True)
    assert (ds / "@gold" / "f.txt").read_bytes() == b"one"
    daemon.ctl("tag", f"ds@{id3}", "gold", check=True)
    assert (ds / "@gold" / "f.txt").read_bytes() == b"three"
    daemon.ctl("tag", "ds@release", "gold", check=True)
    assert (ds / "@gold" / "f.txt").read_bytes() == b"two"
    daemon.ctl("untag", "ds", "gold", check=True)
    expect_errno(errno.ENOENT, os.stat, ds / "@gold")
    expect_errno(errno.ENOENT, (ds / "@gold" / "f.txt").read_bytes)
    assert (ds / "@release" / "f.txt").read_bytes() == b"two"

    # numbers count per dataset, from 1
    other = daemon.mnt / "other"
    other.mkdir()
    expect_errno(errno.ENOENT, os.stat, other / "@latest")
    expect_errno(errno.ENOENT, os.stat, other / "@v1")
    (other / "o.txt").write_bytes(b"o")
    assert snap(daemon, "other")[0] == 1
    assert snap(daemon, "other")[0] == 2
    assert snap(daemon, "ds")[0] == 4
    assert (other / "@v1" / "o.txt").read_bytes() == b"o"
    assert (other / "@latest" / "o.txt").read_bytes() == b"o"
    expect_errno(errno.ENOENT, os.stat, other / f"@{id1}")   # ids are per dataset too
    expect_errno(errno.ENOENT, os.stat, other / "@release")
    assert [v["number"] for v in daemon.ctl_json("versions", "other")] == [2, 1]


def test_a_prefix_that_became_ambiguous_names_nothing(daemon: Any, ds: Path) -> None:
    """@<prefix> names a version while the prefix is unique; once a newer version
    shares it, it names nothing (ENOENT, as `dmsctl` calls it ambiguous), even if
    the kernel looked the name up before."""
    (ds / "f").write_bytes(b"1")
    # the first 8 characters of a UUIDv7 change every 65.536 s: stay inside one period
    while (time.time_ns() // 1_000_000) % 65_536 > 60_000:
        time.sleep(0.5)
    _, id1 = snap(daemon)
    prefix = id1[:8]
    assert (ds / f"@{prefix}" / "f").read_bytes() == b"1"   # unique: the kernel caches it
    (ds / "f").write_bytes(b"2")
    _, id2 = snap(daemon)
    assert id2[:8] == prefix
    r = daemon.ctl("diff", f"ds@{prefix}", "ds")
    assert r.returncode == 1 and "ambiguous" in r.stderr, r.stderr
    common = os.path.commonprefix([id1, id2])
    expect_errno(errno.ENOENT, os.stat, ds / f"@{common}")  # never looked up: ENOENT
    expect_errno(errno.ENOENT, os.stat, ds / f"@{prefix}")
    expect_errno(errno.ENOENT, (ds / f"@{prefix}" / "f").read_bytes)
    assert (ds / f"@{id1[:14]}" / "f").read_bytes() == b"1"
    assert (ds / f"@{id2[:14]}" / "f").read_bytes() == b"2"


def test_concurrent_snapshots_get_distinct_numbers(daemon: Any, ds: Path) -> None:
    (ds / "f").write_bytes(b"x")
    dmsctl = str(Path(sys.executable).parent / "dmsctl")
    procs = [subprocess.Popen([dmsctl, "--state", str(daemon.state), "snapshot", "ds",
                               "-m", f"p{i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(6)]
    lines = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        lines.append(out)
    got = sorted((int(m.group(1)), m.group(2)) for m in map(VERSION_LINE.fullmatch, lines)
                 if m)
    assert [n for n, _ in got] == [1, 2, 3, 4, 5, 6]
    assert [vid for _, vid in got] == sorted(vid for _, vid in got)  # numbers follow time
    versions = daemon.ctl_json("versions", "ds")
    assert [(v["number"], v["id"]) for v in versions] == got[::-1]
    assert sorted(v["message"] for v in versions) == [f"p{i}" for i in range(6)]
    for n in range(1, 7):
        assert (ds / f"@v{n}" / "f").read_bytes() == b"x"


# ------------------------------------------------------------------ dmsctl output
def test_versions_json_exact(daemon: Any, ds: Path) -> None:
    (ds / "a.bin").write_bytes(b"a" * 10)
    (ds / "b.bin").write_bytes(random.Random(8).randbytes(20_000))
    (ds / "empty").write_bytes(b"")
    (ds / "sub").mkdir()
    (ds / "sub" / "c.txt").write_bytes(b"ccccc")
    os.symlink("a.bin", ds / "link")                  # not a file: not counted
    (ds / "empty_dir").mkdir()
    message = "first import\nsecond line: ünïcödé ✓"
    times = [time.time_ns()]
    n1, id1 = snap(daemon, "ds", "-m", message, "--tag", "gold")
    times.append(time.time_ns())
    (ds / "a.bin").unlink()
    (ds / "d.bin").write_bytes(b"d" * 100)
    n2, id2 = snap(daemon)
    times.append(time.time_ns())
    daemon.ctl("tag", "ds@v1", "alpha", check=True)
    daemon.ctl("tag", "ds@v2", "beta", check=True)
    daemon.ctl("tag", "ds@v1", "Zeta", check=True)
    daemon.ctl("tag", "ds@v2", "temp", check=True)
    daemon.ctl("untag", "ds", "temp", check=True)

    got = daemon.ctl_json("versions", "ds")
    user = pwd.getpwuid(os.getuid()).pw_name
    for v, lo, hi in [(got[0], times[1], times[2]), (got[1], times[0], times[1])]:
        assert ISO_TIME.fullmatch(v["time"]), v["time"]
        stamp = calendar.timegm(time.strptime(v["time"][:19], "%Y-%m-%dT%H:%M:%S"))
        ns = stamp * 1_000_000_000 + int(v["time"][20:26]) * 1000
        assert lo // 1000 * 1000 <= ns <= hi, (v["time"], lo, hi)
    assert got == [
        {"number": 2, "id": id2, "dataset": "ds", "time": got[0]["time"],
         "uid": os.getuid(), "user": user, "message": "", "tags": ["beta"],
         "files": 4, "bytes": 20_000 + 5 + 100, "schema": None},
        {"number": 1, "id": id1, "dataset": "ds", "time": got[1]["time"],
         "uid": os.getuid(), "user": user, "message": message,
         "tags": ["Zeta", "alpha", "gold"], "files": 4, "bytes": 10 + 20_000 + 5,
         "schema": None},  # the dataset has no schema
    ]
    assert (n1, n2) == (1, 2)
    assert daemon.ctl_json("versions", "ds") == got  # stable


def test_diff_json_exact(daemon: Any, ds: Path) -> None:
    rng = random.Random(9)
    big = rng.randbytes(40_000)
    files = {
        "keep.txt": b"same",
        "mod.txt": b"old content",
        "mode.txt": b"mode",
        "owner.txt": b"owner",
        "x.txt": b"xattrs",
        "mtime.txt": b"only the mtime changes",
        "same_again.txt": b"rewritten with the same bytes",
        "gone.txt": b"gone!!!",
        "big.bin": big,
        "olddir/a.txt": b"aaa",
        "olddir/b/c.txt": b"cccc",
        "stay/inner.txt": b"inner",
    }
    for rel, data in files.items():
        (ds / rel).parent.mkdir(parents=True, exist_ok=True)
        (ds / rel).write_bytes(data)
    os.symlink("keep.txt", ds / "link")
    os.setxattr(ds / "x.txt", "user.k", b"v1")
    snap(daemon)

    (ds / "mod.txt").write_bytes(b"new content!!")
    os.chmod(ds / "mode.txt", 0o600)
    os.chown(ds / "owner.txt", 1234, 1234)
    os.setxattr(ds / "x.txt", "user.k", b"v2")
    os.utime(ds / "mtime.txt", ns=(10**18, 10**18))
    (ds / "same_again.txt").write_bytes(b"rewritten with the same bytes")
    (ds / "gone.txt").unlink()
    (ds / "moved").mkdir()
    os.rename(ds / "big.bin", ds / "moved" / "big.bin")
    subprocess.run(["rm", "-r", str(ds / "olddir")], check=True)
    (ds / "link").unlink()
    os.symlink("mod.txt", ds / "link")
    (ds / "new.txt").write_bytes(b"fresh")
    (ds / "newdir" / "n2").mkdir(parents=True)
    (ds / "newdir" / "n1").write_bytes(b"1")
    (ds / "newdir" / "n2" / "deep").write_bytes(b"22")
    (ds / "emptydir").mkdir()
    snap(daemon)

    expected = {
        "a": "ds@v1", "b": "ds@v2",
        "added": [{"path": "new.txt", "size": 5}, {"path": "newdir/n1", "size": 1},
                  {"path": "newdir/n2/deep", "size": 2}],
        "removed": [{"path": "gone.txt", "size": 7}, {"path": "olddir/a.txt", "size": 3},
                    {"path": "olddir/b/c.txt", "size": 4}],
        "modified": [
            {"path": "link", "old_size": 8, "new_size": 7, "what": ["content"]},
            {"path": "mod.txt", "old_size": 11, "new_size": 13, "what": ["content"]},
            {"path": "mode.txt", "old_size": 4, "new_size": 4, "what": ["mode"]},
            {"path": "owner.txt", "old_size": 5, "new_size": 5, "what": ["owner"]},
            {"path": "x.txt", "old_size": 6, "new_size": 6, "what": ["xattrs"]},
        ],
        "renamed": [{"from": "big.bin", "to": "moved/big.bin", "size": 40_000}],
    }
    assert daemon.ctl_json("diff", "ds@v1", "ds@v2") == expected
    # the live tree (equal to v2) as either side
    assert daemon.ctl_json("diff", "ds@v1", "ds") == {**expected, "b": "ds"}
    reverse = daemon.ctl_json("diff", "ds", "ds@v1")
    assert reverse == {
        "a": "ds", "b": "ds@v1",
        "added": expected["removed"], "removed": expected["added"],
        "modified": [{**m, "old_size": m["new_size"], "new_size": m["old_size"]}
                     for m in expected["modified"]],
        "renamed": [{"from": "moved/big.bin", "to": "big.bin", "size": 40_000}],
    }
    empty = {"added": [], "removed": [], "modified": [], "renamed": []}
    assert daemon.ctl_json("diff", "ds@v2", "ds") == {"a": "ds@v2", "b": "ds", **empty}
    assert daemon.ctl_json("diff", "ds@latest", "ds@v2") == {
        "a": "ds@latest", "b": "ds@v2", **empty}
    # a live change not yet snapshotted, in a directory the snapshot cached
    with open(ds / "stay" / "inner.txt", "ab") as f:
        f.write(b"+")
    assert daemon.ctl_json("diff", "ds@v2", "ds") == {
        "a": "ds@v2", "b": "ds", **empty,
        "modified": [{"path": "stay/inner.txt", "old_size": 5, "new_size": 6,
                      "what": ["content"]}]}
    # the snapshot did not change the live tree it diffed
    assert (ds / "stay" / "inner.txt").read_bytes() == b"inner+"


# ------------------------------------------------------------------ cost and caching
def test_snapshot_costs_metadata_only_and_shares_chunks(daemon: Any, ds: Path) -> None:
    rng = random.Random(10)
    (ds / "a" / "b").mkdir(parents=True)
    total = 0
    for i in range(12):
        data = rng.randbytes(rng.randrange(50 * KiB, 150 * KiB))
        total += len(data)
        (ds / ["", "a", "a/b"][i % 3] / f"f{i}.bin").write_bytes(data)
    daemon.ctl("flush", check=True)
    s0 = stats(daemon)
    assert s0["logical_bytes"] == total
    snap(daemon)
    s1 = stats(daemon)
    # three directories: three new tree objects, nothing else
    assert s1["chunks"] - s0["chunks"] == 3
    assert 0 < s1["stored_bytes"] - s0["stored_bytes"] < 8 * KiB
    # logical bytes count the live tree and every version (as restic counts them)
    assert (s1["live_bytes"], s1["logical_bytes"], s1["versions"]) == (total, 2 * total, 1)
    assert s1["backlog"]["chunks"] == 0  # a snapshot stores what it references first
    # nothing changed: the next snapshot adds nothing at all to the store
    snap(daemon)
    s2 = stats(daemon)
    assert (s2["chunks"], s2["stored_bytes"], s2["unique_bytes"]) == (
        s1["chunks"], s1["stored_bytes"], s1["unique_bytes"])
    # one file changed: its new chunks and the trees on its path, no more
    with open(ds / "a" / "b" / "f2.bin", "r+b") as f:
        f.seek(10)
        f.write(b"changed")
    snap(daemon)
    s3 = stats(daemon)
    assert s3["stored_bytes"] - s2["stored_bytes"] < 150 * KiB + 8 * KiB
    assert 3 < s3["chunks"] - s2["chunks"] <= 3 + 3

    # @v1 and the live tree share chunks: with a cold cache, read the live files,
    # then @v1's: every chunk @v1 needs is then already in the daemon's cache
    assert daemon.stop() == 0
    daemon.start()
    for _ in os.walk(ds / "@v1"):  # load v1's trees
        pass
    live = {p: file_sha(p) for p in sorted(ds.rglob("*.bin"))}
    before = wait_stable_stats(daemon)
    assert before["cache"]["misses"] > 0
    for p, digest in live.items():
        snapshot_copy = ds / "@v1" / p.relative_to(ds)
        if p.name != "f2.bin":
            assert file_sha(snapshot_copy) == digest
    after = wait_stable_stats(daemon)
    assert after["cache"]["misses"] == before["cache"]["misses"]
    assert after["cache"]["hits"] - before["cache"]["hits"] >= 11 * 50 * KiB // (64 * KiB)


def test_second_read_of_a_snapshot_file_comes_from_the_page_cache(
        daemon: Any, ds: Path) -> None:
    data = random.Random(11).randbytes(4 * MiB)
    (ds / "f.bin").write_bytes(data)
    snap(daemon)
    assert daemon.stop() == 0
    daemon.start()  # a cold daemon cache
    path = ds / "@v1" / "f.bin"
    s0 = wait_stable_stats(daemon)
    assert file_sha(path) == sha(data)
    s1 = wait_stable_stats(daemon)
    asked = (s1["cache"]["hits"] + s1["cache"]["misses"]) - (
        s0["cache"]["hits"] + s0["cache"]["misses"])
    assert asked >= 4 * MiB // (64 * KiB)  # the first read went to the daemon
    for _ in range(3):  # each a new open(): the kernel keeps the pages
        assert file_sha(path) == sha(data)
        with open(path, "rb") as f:
            f.seek(3 * MiB + 5)
            assert f.read(100) == data[3 * MiB + 5:3 * MiB + 105]
    s2 = wait_stable_stats(daemon)
    assert s2["cache"]["misses"] == s1["cache"]["misses"]
    # Three more whole reads through the daemon would ask for every chunk three times
    # again.  A few late hits can come from read-ahead tasks of the first read that
    # were still waiting for a store fetch when s1 was taken (seen with S3 under load).
    assert s2["cache"]["hits"] - s1["cache"]["hits"] < asked // 4, (s1, s2)


# ------------------------------------------------------------------ export
@pytest.mark.parametrize("out_name", ["v.tar", "v.tar.zst", "v.zip", "outdir/"])
def test_export_round_trip_with_standard_tools(
        daemon: Any, ds: Path, tmp_path: Path, out_name: str) -> None:
    populate(ds, seed=12)
    (ds / "sub" / "deep" / "empty_inner").mkdir()
    snap(daemon, "ds", "--tag", "gold")
    version = tree_state(ds / "@v1", mtime=True)
    change(ds, seed=13)  # the export is of the version, not of the live tree
    out = tmp_path / out_name
    out_arg = str(out) + ("/" if out_name.endswith("/") else "")
    r = daemon.ctl("export", "ds@gold", out_arg, check=True)
    assert r.stdout.startswith(f"exported ds@gold to {out}")
    dest = tmp_path / "extracted"
    dest.mkdir()
    if out_name == "v.tar":
        subprocess.run(["tar", "--xattrs", "--xattrs-include=user.*", "-xpf", str(out),
                        "-C", str(dest)], check=True)
        assert tree_state(dest, mtime=True) == version
    elif out_name == "v.tar.zst":
        subprocess.run(["tar", "--zstd", "--xattrs", "--xattrs-include=user.*", "-xpf",
                        str(out), "-C", str(dest)], check=True)
        assert tree_state(dest, mtime=True) == version
    elif out_name == "v.zip":
        subprocess.run(["unzip", "-q", str(out), "-d", str(dest)], check=True)
        # zip keeps modes and symlinks, not owners or extended attributes
        assert tree_state(dest, owner=False, xattrs=False) == tree_state(
            ds / "@v1", owner=False, xattrs=False)
    else:
        dest = out
        # directory modes: see test_export_into_a_directory_keeps_modes
        assert without_dir_modes(tree_state(dest, owner=False, xattrs=False)) == \
            without_dir_modes(tree_state(ds / "@v1", owner=False, xattrs=False))
    files = {rel: v[1] for rel, v in version.items() if v[0] == "f"}
    assert {rel: file_sha(dest / rel) for rel in files} == files
    assert len(files) == 9


def without_dir_modes(state: State) -> State:
    return {rel: ("d",) if v[0] == "d" else v for rel, v in state.items()}


def test_export_into_a_directory_keeps_modes(daemon: Any, ds: Path, tmp_path: Path) -> None:
    """OUT_DIR/ holds what `tar -xpf OUT.tar` (or restic restore) would make: the
    version's modes, directories' included, not modes filtered by the umask."""
    (ds / "private").mkdir(mode=0o700)
    (ds / "private" / "key").write_bytes(b"secret")
    os.chmod(ds / "private" / "key", 0o400)
    (ds / "shared").mkdir()
    os.chmod(ds / "shared", 0o2775)
    (ds / "shared" / "group_writable").write_bytes(b"g")
    os.chmod(ds / "shared" / "group_writable", 0o664)
    (ds / "script").write_bytes(b"#!/bin/sh\n")
    os.chmod(ds / "script", 0o750)
    snap(daemon)
    expected = tree_state(ds / "@v1", owner=False, xattrs=False)
    assert {rel: v[-1] for rel, v in expected.items()} == {
        "private": 0o700, "private/key": 0o400, "shared": 0o2775,
        "shared/group_writable": 0o664, "script": 0o750}
    daemon.ctl("export", "ds@v1", f"{tmp_path}/v.tar", check=True)
    (tmp_path / "by_tar").mkdir()
    subprocess.run(["tar", "-xpf", str(tmp_path / "v.tar"), "-C", str(tmp_path / "by_tar")],
                   check=True)
    assert tree_state(tmp_path / "by_tar", owner=False, xattrs=False) == expected
    daemon.ctl("export", "ds@v1", f"{tmp_path}/out/", check=True)
    assert tree_state(tmp_path / "out", owner=False, xattrs=False) == expected


# ------------------------------------------------------------------ dmsctl errors
def one_line_error(r: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert r.returncode == code, (r.args, r.returncode, r.stdout, r.stderr)
    assert r.stdout == "", r.stdout
    if code == 2 and r.stderr.startswith("usage:"):
        assert r.stderr.strip().splitlines()[-1].startswith("dmsctl"), r.stderr
    else:
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


def test_dmsctl_exit_codes(daemon: Any, ds: Path, tmp_path: Path) -> None:
    (ds / "f").write_bytes(b"f")
    snap(daemon)
    out = str(tmp_path / "o.tar")
    for args in (["snapshot", "nope"], ["tag", "nope@v1", "gold"], ["untag", "nope", "gold"],
                 ["diff", "nope@v1", "ds@v1"], ["diff", "ds@v1", "nope"],
                 ["export", "nope@v1", out], ["restore", "nope@v1"]):
        one_line_error(daemon.ctl(*args), 1, "nope")
    for args in (["tag", "ds@v9", "gold"], ["diff", "ds@v9", "ds"], ["diff", "ds", "ds@v9"],
                 ["export", "ds@v9", out], ["restore", "ds@v9"], ["restore", "ds@nope"],
                 ["restore", "ds@v9", "--path", "f"], ["export", "ds@0123456789abc", out]):
        one_line_error(daemon.ctl(*args), 1, "ds has no version")
    for args in (["tag", "ds", "gold"], ["tag", "ds@", "gold"], ["tag", "@v1", "gold"],
                 ["restore", "ds@"], ["restore", "ds"], ["restore", "@"],
                 ["export", "@v1", out], ["export", "ds", out], ["diff", "ds@", "ds"],
                 ["diff", "ds", "@v1"]):
        one_line_error(daemon.ctl(*args), 2, "DATASET@VERSION")
    assert not os.path.exists(out)
    # nothing was changed by any of them
    assert [v["number"] for v in daemon.ctl_json("versions", "ds")] == [1]
    assert os.listdir(ds) == ["f"]

    sock = str(daemon.state / "api.sock")
    assert daemon.stop() == 0
    for args in (["snapshot", "ds"], ["versions", "ds"], ["versions", "ds", "--json"],
                 ["tag", "ds@v1", "gold"], ["untag", "ds", "gold"], ["diff", "ds@v1", "ds"],
                 ["export", "ds@v1", out], ["restore", "ds@v1"], ["stats"]):
        one_line_error(daemon.ctl(*args), 2, sock)
    assert not os.path.exists(out)


# ------------------------------------------------------------------ datasets with history
def test_dataset_with_snapshots_cannot_be_removed_or_renamed(daemon: Any, ds: Path) -> None:
    (ds / "f").write_bytes(b"history")
    snap(daemon)
    (ds / "f").unlink()
    assert os.listdir(ds) == []
    expect_errno(errno.ENOTEMPTY, os.rmdir, ds)
    expect_errno(errno.ENOTEMPTY, os.rename, ds, daemon.mnt / "renamed")
    r = subprocess.run(["rmdir", str(ds)], capture_output=True, text=True)
    assert r.returncode == 1 and "Directory not empty" in r.stderr
    r = subprocess.run(["mv", str(ds), str(daemon.mnt / "renamed")], capture_output=True,
                       text=True)
    assert r.returncode == 1
    assert sorted(os.listdir(daemon.mnt)) == ["ds"]
    assert (ds / "@v1" / "f").read_bytes() == b"history"
    assert [v["number"] for v in daemon.ctl_json("versions", "ds")] == [1]
    # a dataset without snapshots goes as before
    (daemon.mnt / "plain").mkdir()
    os.rename(daemon.mnt / "plain", daemon.mnt / "plain2")
    os.rmdir(daemon.mnt / "plain2")
    assert sorted(os.listdir(daemon.mnt)) == ["ds"]
