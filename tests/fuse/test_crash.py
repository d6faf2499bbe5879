"""Durability (SPEC section 3): what close() returned 0 for survives kill -9 and a
remount; a file open for writing when the daemon dies keeps its previous committed
content, never a mix; clean stops (SIGTERM, SIGINT, fusermount3 -u) exit 0 and
leave everything closed in the store.  After every crash fsck --read-data is clean.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dmsfs import staging
from dmsfs.chunkstore import pack_key
from dmsfs.client import Client
from dmsfs.staging import StagingFile
from dmsfs.store import open_store
from stored import endpoint, flush_to_store, stored_packs, upload_spool
from trees import file_sha, sha

pytestmark = pytest.mark.backends("file", "s3")

KiB = 1024
MiB = 1024 * KiB


# ------------------------------------------------------------------ helpers
def write_files(root: Path, count: int, seed: int, max_size: int = 20 * KiB
                ) -> dict[str, str]:
    """count closed files of random sizes (some empty, some duplicates): name -> sha256."""
    rng = random.Random(seed)
    out: dict[str, str] = {}
    shared = rng.randbytes(7000)
    for i in range(count):
        sub = root / f"d{i % 7}"
        sub.mkdir(exist_ok=True)
        roll = rng.random()
        data = (b"" if roll < 0.05 else shared if roll < 0.15
                else rng.randbytes(rng.randrange(1, max_size)))
        path = sub / f"f{i:04d}"
        with open(path, "wb") as f:
            f.write(data)
        out[str(path.relative_to(root))] = sha(data)
    return out


def tree_shas(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): file_sha(p) for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def staged_bytes(daemon: Any) -> int:
    """Bytes in staging files (chunks not yet sealed into packs)."""
    return sum(p.stat().st_size for p in (daemon.state / "staging").glob("*.dat"))


def assert_fsck_clean(daemon: Any) -> dict[str, Any]:
    r = daemon.ctl("fsck", "--read-data", "--json")
    assert r.returncode == 0, f"fsck --read-data exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    doc: dict[str, Any] = json.loads(r.stdout)
    assert doc["problems"] == []
    assert doc["unindexed_packs"] == []
    assert doc["checked"]["read_data"] is True
    return doc


def crash_and_remount(daemon: Any) -> None:
    daemon.kill9()
    assert not os.path.ismount(daemon.mnt)
    daemon.start()


# ------------------------------------------------------------------ closed files survive
def test_many_small_closed_files_survive_kill9(daemon, ds) -> None:
    expect = write_files(ds, 300, seed=1)
    crash_and_remount(daemon)
    assert tree_shas(ds) == expect
    doc = assert_fsck_clean(daemon)
    assert doc["checked"]["files"] >= 250
    # and once more: the recovered state itself survives a second crash
    (ds / "more").mkdir()
    more = write_files(ds / "more", 50, seed=2)
    crash_and_remount(daemon)
    assert tree_shas(ds) == {**expect, **{f"more/{k}": v for k, v in more.items()}}
    assert_fsck_clean(daemon)


def test_multi_mib_closed_file_survives_kill9(daemon, ds) -> None:
    data = random.Random(3).randbytes(7 * MiB + 4321)
    (ds / "big.bin").write_bytes(data)
    # rewrite a range in place too: the committed content is the new one
    patch = random.Random(4).randbytes(300 * KiB)
    with open(ds / "big.bin", "r+b") as f:
        f.seek(2 * MiB + 17)
        f.write(patch)
    expect = bytearray(data)
    expect[2 * MiB + 17:2 * MiB + 17 + len(patch)] = patch
    crash_and_remount(daemon)
    assert file_sha(ds / "big.bin") == sha(bytes(expect))
    assert os.stat(ds / "big.bin").st_size == len(expect)
    assert_fsck_clean(daemon)


def test_unsealed_staged_data_survives_kill9(daemon_factory) -> None:
    # default sizes: a 16 MiB pack target, so nothing below it is sealed before idle
    d = daemon_factory(small=False).start()
    ds = d.mnt / "ds"
    ds.mkdir()
    big = random.Random(5).randbytes(5 * MiB)
    (ds / "big.bin").write_bytes(big)
    small = write_files(ds, 40, seed=6)
    # well within the 2 s of idleness after which staged data is sealed
    assert stored_packs(d) == {}
    assert staged_bytes(d) >= len(big)
    d.kill9()
    assert stored_packs(d) == {}  # the crash came before any pack was made
    d.start()
    assert file_sha(ds / "big.bin") == sha(big)
    for name, digest in small.items():
        assert file_sha(ds / name) == digest
    # recovery seals what the dead daemon had staged
    flush_to_store(d)
    assert stored_packs(d) != {}
    assert staged_bytes(d) == 0
    assert_fsck_clean(d)
    assert d.stop() == 0
    d.start()
    assert file_sha(ds / "big.bin") == sha(big)


# ------------------------------------------------------------------ open files at the crash
HOLDER = r"""
import os, random, sys, time
path, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
fd = os.open(path, os.O_RDWR)
size = os.fstat(fd).st_size
os.pwrite(fd, rng.randbytes(100_000), size // 3)          # overwrite in the middle
os.pwrite(fd, rng.randbytes(50_000), 10)                  # and near the start
pos = size
for _ in range(96):                                       # then append 12 MiB
    os.pwrite(fd, rng.randbytes(128 * 1024), pos)
    pos += 128 * 1024
# start writeback of the dirty pages to the daemon (no flush, no fsync: no commit)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
print("written", flush=True)
time.sleep(600)                                           # never closes
"""


def _stats(daemon: Any) -> dict[str, Any]:
    """Stats over the control API from this process.

    Not via a dmsctl subprocess: a child forked while this process holds a file open
    closes its copy of the descriptor at exec, and every close is a FUSE flush, which
    commits the file like the application's own close() would.
    """
    return Client(f"unix:{daemon.state / 'api.sock'}").stats()


def _daemon_has_seen(daemon: Any, before: int, timeout: float = 20) -> None:
    """Wait until the daemon has cut (staged or sealed) chunks of uncommitted data."""
    deadline = time.monotonic() + timeout
    while True:
        s = _stats(daemon)
        if s["chunks"] + s["backlog"]["chunks"] > before:
            return
        assert time.monotonic() < deadline, "the writes never reached the daemon"
        time.sleep(0.1)


def _chunk_total(daemon: Any) -> int:
    s = _stats(daemon)
    return int(s["chunks"] + s["backlog"]["chunks"])


def test_file_open_for_writing_in_another_process_keeps_old_content(daemon, ds) -> None:
    old = random.Random(7).randbytes(2 * MiB + 99)
    (ds / "f.bin").write_bytes(old)
    (ds / "other.bin").write_bytes(b"closed before the crash")
    daemon.ctl("flush", check=True)
    before = _chunk_total(daemon)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(ds / "f.bin"), "8"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "written"
        # the daemon received (and even cut and staged) part of the new content
        _daemon_has_seen(daemon, before)
        daemon.kill9()
    finally:
        holder.kill()
        holder.communicate(timeout=30)
    daemon.start()
    got = (ds / "f.bin").read_bytes()
    assert len(got) == len(old)
    assert sha(got) == sha(old), "a file open for writing at the crash must keep its old content"
    assert (ds / "other.bin").read_bytes() == b"closed before the crash"
    assert_fsck_clean(daemon)
    # the file is usable as ever
    (ds / "f.bin").write_bytes(b"new life")
    assert (ds / "f.bin").read_bytes() == b"new life"


def test_file_open_for_writing_in_this_process_keeps_old_content(daemon, ds) -> None:
    rng = random.Random(9)
    old = rng.randbytes(600 * KiB)
    (ds / "g.bin").write_bytes(old)
    before = _chunk_total(daemon)
    f = open(ds / "g.bin", "r+b")  # noqa: SIM115 -- held open across the crash on purpose
    try:
        f.seek(100 * KiB)
        f.write(rng.randbytes(200 * KiB))       # overwrite
        f.seek(0, os.SEEK_END)
        for _ in range(80):                     # and grow by 10 MiB
            f.write(rng.randbytes(128 * KiB))
        f.flush()                               # into the kernel, not close(): no commit
        # and on to the daemon: writeback of the dirty pages, still no flush or fsync
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        _daemon_has_seen(daemon, before)
        daemon.kill9()
    finally:
        try:
            f.close()
        except OSError:
            pass  # the dead mount refuses the final flush
    daemon.start()
    assert file_sha(ds / "g.bin") == sha(old)
    assert os.stat(ds / "g.bin").st_size == len(old)
    assert_fsck_clean(daemon)


def test_file_created_and_never_closed_is_absent_or_empty(daemon, ds) -> None:
    (ds / "keep.txt").write_bytes(b"committed")
    before = _chunk_total(daemon)
    fd = os.open(ds / "new.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        rng = random.Random(10)
        for _ in range(80):
            os.write(fd, rng.randbytes(128 * KiB))
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        _daemon_has_seen(daemon, before)
        daemon.kill9()
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    daemon.start()
    names = sorted(os.listdir(ds))
    assert "keep.txt" in names
    assert (ds / "keep.txt").read_bytes() == b"committed"
    if "new.bin" in names:
        assert os.stat(ds / "new.bin").st_size == 0
        assert (ds / "new.bin").read_bytes() == b""
    assert_fsck_clean(daemon)


# ------------------------------------------------------------------ a crash during cp -a
def make_tree(root: Path, seed: int, files: int) -> None:
    rng = random.Random(seed)
    for i in range(files):
        sub = root / f"dir{i % 9}" / f"sub{i % 4}"
        sub.mkdir(parents=True, exist_ok=True)
        size = rng.choice([0, 10, 3000, 40 * KiB, 200 * KiB]) if i % 20 else 2 * MiB
        (sub / f"file{i:04d}.bin").write_bytes(rng.randbytes(size))
    (root / "link").symlink_to("dir0/sub0")


def copied(src: Path, dst: Path) -> int:
    """Files cp -a has finished: it sets the mtime last, after close."""
    done = 0
    for p in src.rglob("*.bin"):
        try:
            st = os.stat(dst / p.relative_to(src))
        except FileNotFoundError:
            continue
        done += st.st_mtime_ns == p.stat().st_mtime_ns
    return done


def crash_during(cmd: list[str], src: Path, dst: Path, daemon: Any, fraction: float) -> None:
    """Run cmd, kill -9 the daemon once it copied that fraction of src's files."""
    total = sum(1 for _ in src.rglob("*.bin"))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
            if copied(src, dst) >= total * fraction:
                break
        assert proc.poll() is None, "the copy finished before the crash; the tree is too small"
        daemon.kill9()
    finally:
        proc.kill()
        proc.wait(30)


def test_kill9_during_cp_a_over_an_older_copy(daemon, ds, tmp_path: Path) -> None:
    src = tmp_path / "src"
    old = tmp_path / "old"
    make_tree(src, seed=11, files=300)
    make_tree(old, seed=12, files=300)       # same names, other content: the "before"
    subprocess.run(["cp", "-a", f"{old}/.", str(ds / "tree")], check=True)
    before = tree_shas(ds / "tree")
    assert before == tree_shas(old)
    source = tree_shas(src)

    crash_during(["cp", "-a", f"{src}/.", str(ds / "tree")], src, ds / "tree", daemon, 0.4)
    daemon.start()
    after = tree_shas(ds / "tree")
    assert set(after) == set(before)       # cp -a only rewrote existing names
    new = sum(1 for name, digest in after.items() if digest == source[name])
    kept = sum(1 for name, digest in after.items() if digest == before[name])
    # every file is its old or its new content: cp's open(O_TRUNC) commits nothing
    mixed = [name for name, digest in after.items() if digest not in (source[name], before[name])]
    assert mixed == [], mixed[:10]
    assert new >= len(source) * 0.4 and kept > 0, (new, kept)
    assert_fsck_clean(daemon)


def test_kill9_during_cp_a_of_new_files(daemon, ds, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, seed=13, files=300)
    source = tree_shas(src)
    crash_during(["cp", "-a", str(src), str(ds / "copy")], src, ds / "copy", daemon, 0.5)
    daemon.start()
    after = tree_shas(ds / "copy")
    complete = 0
    for name, digest in after.items():
        if digest == source[name]:
            complete += 1
        else:  # created but its data never committed: empty, never partial
            assert os.stat(ds / "copy" / name).st_size == 0, name
    assert complete >= len(source) * 0.5
    assert_fsck_clean(daemon)


# ------------------------------------------------------------------ a crash while sealing
@pytest.mark.parametrize("stage", ["sealed", "stored", "stored, staged bytes lost"])
def test_kill9_while_a_pack_is_being_stored(daemon, ds, stage: str) -> None:
    """The sealer's steps: compress the staging file into a pack beside it, move the
    pack into the store, point the index at it.  A crash after each step must lose
    nothing, also when a power loss then takes the unsynced staging file's bytes.
    The dead daemon's progress is replayed here with its own code."""
    data = random.Random(16).randbytes(150 * KiB)  # below the 256K pack size: staged
    (ds / "f.bin").write_bytes(data)
    daemon.kill9()
    staging_dir = daemon.state / "staging"
    (sid,) = staging.existing(staging_dir)
    sf = StagingFile(staging_dir, sid)
    assert sf.load()
    pack, _, _ = sf.seal(3)                            # step 1 done
    os.close(sf.fd)
    os.close(sf.idx_fd)
    if stage.startswith("stored"):                     # step 2 done, not step 3
        store = open_store(daemon.url, s3_endpoint=endpoint(daemon))
        store.put_file(pack_key(sid), pack)            # S3: as if uploaded from the spool
        store.close()
        assert not pack.exists()
    if stage.endswith("lost"):
        os.truncate(sf.data_path, 0)
    daemon.start()
    assert file_sha(ds / "f.bin") == sha(data)
    daemon.ctl("flush", check=True)
    assert staged_bytes(daemon) == 0
    assert list(staging_dir.iterdir()) == []
    assert_fsck_clean(daemon)


@pytest.mark.daemon_errors_ok  # reading the lost file logs its EIO
def test_power_loss_of_unsynced_staged_data(daemon, ds) -> None:
    """A power loss may keep a staging file's log but not its blobs (nothing was
    fsynced).  The daemon must still start, keep what is in packs, answer EIO for
    the lost file, have fsck name it, and store the same content anew when it is
    written again (not dedup it against the lost blobs)."""
    kept = random.Random(19).randbytes(300 * KiB)
    (ds / "kept.bin").write_bytes(kept)
    daemon.ctl("flush", check=True)
    lost = random.Random(20).randbytes(120 * KiB)
    (ds / "lost.bin").write_bytes(lost)
    daemon.kill9()
    dats = list((daemon.state / "staging").glob("*.dat"))
    assert dats
    for dat in dats:          # what the disk may hold after the power came back
        os.truncate(dat, 0)
    daemon.start()
    assert file_sha(ds / "kept.bin") == sha(kept)
    with pytest.raises(OSError) as e:
        (ds / "lost.bin").read_bytes()
    assert e.value.errno == errno.EIO
    r = daemon.ctl("fsck", "--read-data")
    assert r.returncode == 1 and "ds/lost.bin" in r.stdout, r.stdout
    assert "ds/kept.bin" not in r.stdout
    # the same bytes written again are stored again: both files read back
    (ds / "again.bin").write_bytes(lost)
    assert file_sha(ds / "again.bin") == sha(lost)
    assert file_sha(ds / "lost.bin") == sha(lost)
    assert_fsck_clean(daemon)


# ------------------------------------------------------------------ clean stops
@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "fusermount3 -u"])
def test_clean_stop_exits_0_and_keeps_everything(daemon, ds, how: str) -> None:
    expect = write_files(ds, 60, seed=14)
    big = random.Random(15).randbytes(3 * MiB)
    (ds / "big.bin").write_bytes(big)
    expect["big.bin"] = sha(big)
    assert staged_bytes(daemon) > 0  # something still to seal at the stop
    if how == "fusermount3 -u":
        rc = daemon.stop()
    else:
        rc = daemon.terminate(getattr(signal, how))
    assert rc == 0
    assert not os.path.ismount(daemon.mnt)
    # nothing left half-done: every staged chunk went into a pack in the store
    assert staged_bytes(daemon) == 0
    assert list((daemon.state / "staging").glob("*.idx")) == []
    assert upload_spool(daemon) == []  # S3: and uploaded before the exit
    daemon.start()
    assert tree_shas(ds) == expect
    assert_fsck_clean(daemon)


def test_sigterm_with_a_file_open_for_writing(daemon, ds) -> None:
    old = random.Random(17).randbytes(300 * KiB)
    (ds / "f.bin").write_bytes(old)
    (ds / "closed.bin").write_bytes(b"closed")
    before = _chunk_total(daemon)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(ds / "f.bin"), "18"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "written"
        _daemon_has_seen(daemon, before)
        assert daemon.terminate(signal.SIGTERM) == 0
    finally:
        holder.kill()
        holder.communicate(timeout=30)
    assert not os.path.ismount(daemon.mnt)
    daemon.start()
    # nothing half-written: the open file has its committed content
    assert file_sha(ds / "f.bin") == sha(old)
    assert (ds / "closed.bin").read_bytes() == b"closed"
    assert_fsck_clean(daemon)
