"""Restore (the live tree, or one path, back to a version) and rebuilding a state
dir from the store alone (`dmsfsd --reindex`), through the real mount.

Trees are compared with `tree_state`: the sha256 of every file, modes, owners,
symlink targets and user.* extended attributes, by relative path.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import stat
from pathlib import Path
from typing import Any

import pytest
from stored import wait_uploaded
from trees import State, VERSION_LINE, file_sha, sha, tree_state

pytestmark = pytest.mark.backends("file", "s3")

KiB = 1024
MiB = 1024 * KiB



# ------------------------------------------------------------------ helpers
def below(state: State, prefix: str) -> State:
    """The entries of a state at or below one relative path."""
    return {rel: v for rel, v in state.items() if rel == prefix or rel.startswith(prefix + "/")}


def outside(state: State, prefix: str) -> State:
    return {rel: v for rel, v in state.items() if rel not in below(state, prefix)}


def snap(daemon: Any, ds: str = "ds", *args: str) -> tuple[int, str]:
    r = daemon.ctl("snapshot", ds, *args, check=True)
    m = VERSION_LINE.fullmatch(r.stdout)
    assert m, r.stdout
    return int(m.group(1)), m.group(2)


def tree_bytes(root: Path) -> int:
    return sum(os.lstat(p).st_size for p in root.rglob("*")
               if stat.S_ISREG(os.lstat(p).st_mode))


def populate(root: Path, seed: int) -> None:
    """Nested dirs, an empty dir and file, a multi-chunk file, duplicates, symlinks,
    modes, an owner other than root, user.* xattrs on a file and a directory."""
    rng = random.Random(seed)
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "empty_dir").mkdir()
    shared = rng.randbytes(9000)
    for rel, data in {
        "small.txt": b"hello\n",
        "empty": b"",
        "big.bin": rng.randbytes(300 * KiB),
        "dup1.bin": shared,
        "sub/dup2.bin": shared,
        "sub/a.csv": b"id,name\n1,a\n2,b\n",
        "sub/deep/b.bin": rng.randbytes(70 * KiB),
    }.items():
        (root / rel).write_bytes(data)
    os.symlink("sub/a.csv", root / "link")
    os.symlink("/nonexistent/target", root / "sub" / "dangling")
    os.chmod(root / "big.bin", 0o600)
    os.chmod(root / "sub" / "deep" / "b.bin", 0o755)
    os.chmod(root / "sub" / "deep", 0o700)
    os.chown(root / "sub" / "a.csv", 1234, 5678)
    os.setxattr(root / "big.bin", "user.label", b"train")
    os.setxattr(root / "sub", "user.dirlabel", b"\x00binary\xff")


def change(root: Path, seed: int) -> None:
    """Every kind of change to a tree made by populate()."""
    rng = random.Random(seed)
    (root / "small.txt").write_bytes(b"overwritten, and longer than before\n")
    with open(root / "big.bin", "r+b") as f:
        f.seek(100 * KiB)
        f.write(rng.randbytes(10 * KiB))
    with open(root / "sub" / "a.csv", "ab") as f:
        f.write(b"3,c\n")
    os.truncate(root / "sub" / "deep" / "b.bin", 1000)
    (root / "dup1.bin").unlink()
    os.rename(root / "sub" / "a.csv", root / "renamed.csv")
    (root / "newdir" / "inner").mkdir(parents=True)
    (root / "newdir" / "inner" / "n.txt").write_bytes(b"new")
    (root / "empty_dir").rmdir()
    os.chmod(root / "small.txt", 0o640)
    os.chown(root / "empty", 42, 43)
    os.setxattr(root / "big.bin", "user.label", b"changed")
    os.setxattr(root / "big.bin", "user.new", b"x")
    os.removexattr(root / "sub", "user.dirlabel")
    os.chmod(root / "sub" / "deep", 0o755)
    (root / "link").unlink()
    os.symlink("renamed.csv", root / "link")
    (root / "sub" / "dangling").unlink()
    (root / "sub" / "dangling").mkdir()          # a symlink became a directory
    (root / "sub" / "dangling" / "x").write_bytes(b"x")


EMPTY_DIFF = {"added": [], "removed": [], "modified": [], "renamed": []}


# ------------------------------------------------------------------ restore
def test_restore_whole_dataset(daemon: Any, ds: Path) -> None:
    populate(ds, seed=1)
    v1 = tree_state(ds, mtime=True)
    snap(daemon)
    change(ds, seed=2)
    v2 = tree_state(ds, mtime=True)
    snap(daemon, "ds", "-m", "changed", "--tag", "gold")
    (ds / "after_v2.txt").write_bytes(b"never snapshotted")
    os.chmod(ds, 0o700)
    history = daemon.ctl_json("versions", "ds")

    r = daemon.ctl_json("restore", "ds@v1")
    assert (r["path"], r["version"]["number"], r["version"]["id"]) == ("", 1, history[1]["id"])
    # added: dup1.bin, sub/a.csv; removed: renamed.csv, newdir/inner/n.txt,
    # after_v2.txt, sub/dangling/x; changed: big.bin, empty (owner), link, small.txt,
    # sub (xattr), sub/dangling (a directory again a symlink), sub/deep (mode),
    # sub/deep/b.bin
    assert (r["added"], r["removed"], r["changed"]) == (2, 4, 8)
    assert tree_state(ds, mtime=True) == v1
    assert tree_state(ds, mtime=True) == tree_state(ds / "@v1", mtime=True)
    assert os.stat(ds).st_mode & 0o777 == 0o755
    assert daemon.ctl_json("versions", "ds") == history  # history is kept
    assert tree_state(ds / "@v2", mtime=True) == v2
    assert tree_state(ds / "@gold", mtime=True) == v2
    assert daemon.ctl_json("diff", "ds@v1", "ds") == {"a": "ds@v1", "b": "ds", **EMPTY_DIFF}
    stats = daemon.ctl_json("stats")
    assert stats["live_bytes"] == tree_bytes(ds) == history[1]["bytes"]

    # it is a state like any other: it survives a remount, and snapshots as v1 did
    assert daemon.stop() == 0
    daemon.start()
    assert tree_state(ds, mtime=True) == v1
    assert snap(daemon)[0] == 3
    assert daemon.ctl_json("diff", "ds@v1", "ds@v3") == {
        "a": "ds@v1", "b": "ds@v3", **EMPTY_DIFF}
    # and forward again, to v2 by its tag
    r = daemon.ctl_json("restore", "ds@gold")
    assert tree_state(ds, mtime=True) == v2
    daemon.kill9()
    daemon.start()
    assert tree_state(ds, mtime=True) == v2
    assert [v["number"] for v in daemon.ctl_json("versions", "ds")] == [3, 2, 1]


def test_restore_one_file_and_one_directory(daemon: Any, ds: Path) -> None:
    populate(ds, seed=3)
    snap(daemon)
    v1 = tree_state(ds / "@v1", mtime=True)
    change(ds, seed=4)
    snap(daemon)
    history = daemon.ctl_json("versions", "ds")
    live = tree_state(ds, mtime=True)

    # one file: content, mode and xattrs back; nothing else touched
    r = daemon.ctl_json("restore", "ds@v1", "--path", "big.bin")
    assert (r["path"], r["added"], r["removed"], r["changed"]) == ("big.bin", 0, 0, 1)
    live["big.bin"] = v1["big.bin"]
    assert tree_state(ds, mtime=True) == live
    # a file deeper down, by its path
    r = daemon.ctl_json("restore", "ds@v1", "--path", "sub/deep/b.bin")
    assert (r["added"], r["removed"], r["changed"]) == (0, 0, 1)
    live["sub/deep/b.bin"] = v1["sub/deep/b.bin"]
    assert tree_state(ds, mtime=True) == live
    # a directory: everything below it, and nothing outside (renamed.csv, which came
    # from sub/a.csv, stays where it is)
    r = daemon.ctl_json("restore", "ds@v1", "--path", "sub")
    # added sub/a.csv; removed sub/dangling/x; changed sub (xattr), sub/dangling
    # (a symlink again), sub/deep (mode)
    assert (r["added"], r["removed"], r["changed"]) == (1, 1, 3)
    live = {**outside(live, "sub"), **below(v1, "sub")}
    assert tree_state(ds, mtime=True) == live
    assert (ds / "renamed.csv").read_bytes() == b"id,name\n1,a\n2,b\n3,c\n"
    assert (ds / "sub" / "a.csv").read_bytes() == b"id,name\n1,a\n2,b\n"
    # the text form, and a trailing slash
    text = daemon.ctl("restore", "ds@v1", "--path", "empty_dir/", check=True).stdout
    assert re.fullmatch(r"ds/empty_dir/? restored to v1 \S+: \d+ added, 0 removed, "
                        r"\d+ changed\n", text), text
    live["empty_dir"] = v1["empty_dir"]
    assert tree_state(ds, mtime=True) == live
    assert daemon.ctl_json("versions", "ds") == history
    assert daemon.ctl_json("stats")["live_bytes"] == tree_bytes(ds)
    assert daemon.stop() == 0
    daemon.start()
    assert tree_state(ds, mtime=True) == live


def test_restore_of_a_path_absent_from_the_version_removes_it(daemon: Any, ds: Path) -> None:
    populate(ds, seed=5)
    snap(daemon)
    change(ds, seed=6)
    before = tree_state(ds)
    assert "newdir/inner/n.txt" in before and "renamed.csv" in before

    r = daemon.ctl_json("restore", "ds@v1", "--path", "newdir")
    assert (r["added"], r["removed"], r["changed"]) == (0, 1, 0)
    assert not os.path.lexists(ds / "newdir")
    r = daemon.ctl_json("restore", "ds@v1", "--path", "renamed.csv")
    assert (r["added"], r["removed"], r["changed"]) == (0, 1, 0)
    assert not os.path.lexists(ds / "renamed.csv")
    assert tree_state(ds) == {rel: v for rel, v in before.items()
                              if rel not in ("newdir", "newdir/inner", "newdir/inner/n.txt",
                                             "renamed.csv")}
    # a path in neither: an error, and nothing changes
    r = daemon.ctl("restore", "ds@v1", "--path", "not/there")
    assert r.returncode == 1 and "not/there" in r.stderr and r.stdout == ""
    assert tree_state(ds) == {rel: v for rel, v in before.items()
                              if rel not in ("newdir", "newdir/inner", "newdir/inner/n.txt",
                                             "renamed.csv")}
    # a file that is gone live comes back
    r = daemon.ctl_json("restore", "ds@v1", "--path", "dup1.bin")
    assert (r["added"], r["removed"], r["changed"]) == (1, 0, 0)
    assert file_sha(ds / "dup1.bin") == file_sha(ds / "@v1" / "dup1.bin")


def test_restore_keeps_open_readers_on_their_old_content(daemon: Any, ds: Path) -> None:
    rng = random.Random(7)
    old = rng.randbytes(3 * MiB)
    new = rng.randbytes(5 * MiB + 123)
    (ds / "f.bin").write_bytes(old)
    (ds / "g.bin").write_bytes(b"g" * 1000)
    snap(daemon)
    (ds / "f.bin").write_bytes(new)
    (ds / "g.bin").unlink()

    fd = os.open(ds / "f.bin", os.O_RDONLY)
    try:
        assert os.pread(fd, 100 * KiB, 0) == new[:100 * KiB]
        r = daemon.ctl_json("restore", "ds@v1")
        assert (r["added"], r["removed"], r["changed"]) == (1, 0, 1)
        # drop what the kernel cached: what follows is read from the daemon
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert os.fstat(fd).st_size == len(new)
        got = bytearray(os.pread(fd, 100 * KiB, 0))
        pos = len(got)
        while chunk := os.pread(fd, 1 * MiB, pos):
            got += chunk
            pos += len(chunk)
        assert sha(bytes(got)) == sha(new)
        # a new open sees the restored content, while the old descriptor still reads new
        assert file_sha(ds / "f.bin") == sha(old)
        assert os.stat(ds / "f.bin").st_size == len(old)
        assert os.pread(fd, 10, len(new) - 10) == new[-10:]
    finally:
        os.close(fd)
    assert file_sha(ds / "f.bin") == sha(old)
    assert (ds / "g.bin").read_bytes() == b"g" * 1000
    assert daemon.ctl_json("stats")["live_bytes"] == len(old) + 1000
    assert daemon.stop() == 0
    daemon.start()
    assert file_sha(ds / "f.bin") == sha(old)
    assert daemon.ctl_json("stats")["live_bytes"] == len(old) + 1000


# ------------------------------------------------------------------ reindex
def test_reindex_from_the_store_alone(daemon: Any, ds: Path) -> None:
    populate(ds, seed=8)
    snap(daemon, "ds", "-m", "first", "--tag", "gold")
    change(ds, seed=9)
    snap(daemon, "ds", "-m", "second")
    (ds / "big.bin").write_bytes(b"third")
    snap(daemon)
    daemon.ctl("tag", "ds@v2", "alpha", check=True)
    daemon.ctl("tag", "ds@v3", "temp", check=True)
    daemon.ctl("untag", "ds", "temp", check=True)
    daemon.ctl("tag", "ds@v3", "gold", check=True)  # moved
    other = daemon.mnt / "other"
    other.mkdir()
    (other / "o.txt").write_bytes(b"other v1")
    snap(daemon, "other")
    (other / "o.txt").write_bytes(b"live, never snapshotted")
    (ds / "live_only.txt").write_bytes(b"not in any version")
    (daemon.mnt / "nosnap").mkdir()

    versions = {name: daemon.ctl_json("versions", name) for name in ("ds", "other")}
    states = {f"{name}@v{v['number']}": tree_state(daemon.mnt / name / f"@v{v['number']}",
                                                   mtime=True)
              for name, vs in versions.items() for v in vs}
    roots = {name: os.stat(daemon.mnt / name).st_mode for name in ("ds", "other")}
    assert daemon.stop() == 0

    daemon.state = daemon.root / "fresh-state"
    daemon.start("--reindex")
    assert {name: daemon.ctl_json("versions", name) for name in ("ds", "other")} == versions
    for key, state in states.items():
        name, _, number = key.partition("@")
        assert tree_state(daemon.mnt / name / f"@{number}", mtime=True) == state, key
    assert tree_state(ds / "@gold", mtime=True) == states["ds@v3"]
    assert tree_state(ds / "@alpha", mtime=True) == states["ds@v2"]
    assert not os.path.exists(ds / "@temp")
    # the live trees are the latest versions; what only a live tree held is not in
    # the store, so it is gone (a dataset never snapshotted too)
    assert tree_state(ds, mtime=True) == states["ds@v3"]
    assert tree_state(other, mtime=True) == states["other@v1"]
    assert sorted(os.listdir(daemon.mnt)) == ["ds", "other"]
    assert {name: os.stat(daemon.mnt / name).st_mode for name in ("ds", "other")} == roots
    stats = daemon.ctl_json("stats")
    assert stats["live_bytes"] == versions["ds"][0]["bytes"] + versions["other"][0]["bytes"]
    assert stats["versions"] == 4
    r = daemon.ctl("fsck", "--read-data", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["problems"] == []
    # and it goes on from there
    (ds / "next.txt").write_bytes(b"next")
    assert snap(daemon)[0] == 4
    assert daemon.ctl_json("diff", "ds@v3", "ds@v4") == {
        "a": "ds@v3", "b": "ds@v4", "added": [{"path": "next.txt", "size": 4}],
        "removed": [], "modified": [], "renamed": []}
    assert daemon.stop() == 0
    daemon.start()
    assert (ds / "@v4" / "next.txt").read_bytes() == b"next"
    assert tree_state(ds / "@v1", mtime=True) == states["ds@v1"]


@pytest.mark.parametrize("flags", [[], ["--reindex"], ["--read-only"],
                                   ["--read-only", "--reindex"]])
def test_fresh_state_dir_learns_versions_and_tags(daemon_factory: Any, flags: list[str]) -> None:
    """Versions and tags are indexed from the store at every start, so a daemon with a
    fresh state dir (another machine; SPEC 2: many read-only daemons on one store,
    while the writer works on) serves the same history, with or without --reindex."""
    writer = daemon_factory().start()
    ds = writer.mnt / "ds"
    ds.mkdir()
    (ds / "a.txt").write_bytes(b"a")
    snap(writer, "ds", "--tag", "gold")
    (ds / "a.txt").write_bytes(b"A")
    (ds / "b.bin").write_bytes(random.Random(10).randbytes(200 * KiB))
    snap(writer)
    before = writer.ctl_json("versions", "ds")
    # S3: a snapshot is in the spool at once, in the bucket once uploaded
    wait_uploaded(writer)
    if "--read-only" not in flags:
        writer.kill9()  # not even a clean stop: the snapshot is in the store
        d = writer
        d.state = d.root / "fresh-state"
    else:  # a second daemon on the same store, while the writer still runs
        d = daemon_factory(store_of=writer)
    d.start(*flags)
    ds = d.mnt / "ds"
    assert d.ctl_json("versions", "ds") == before
    assert (ds / "@gold" / "a.txt").read_bytes() == b"a"
    assert (ds / "a.txt").read_bytes() == b"A"
    assert tree_state(ds) == tree_state(ds / "@v2") == tree_state(ds / "@latest")
    if "--read-only" in flags:
        with pytest.raises(OSError) as e:
            (ds / "a.txt").write_bytes(b"no")
        assert e.value.errno == errno.EROFS
        r = d.ctl("snapshot", "ds")
        assert r.returncode == 1 and "read-only" in r.stderr, r.stderr
        assert (writer.mnt / "ds" / "a.txt").read_bytes() == b"A"
