"""Snapshot sections of the bench: snapshot, diff, snapread, lsR (SPEC section 4).

    snapshot  first snapshot of a 100,000-file dataset; snapshots after changing 1 file and
              after changing nothing (medians of 5); borg create / restic backup no-change
              re-runs over the 3,000-file tree as the baseline
    diff      diff of two versions of that dataset differing in 10 files (median of 5), and
              whether it found exactly those 10; restic diff of the same change as baseline
    snapread  a 128 MiB file read from @v1 on a fresh mount (cold), then again; the second
              read against the local page cache
    lsR       ls -lR of a 10,000-file snapshot on a fresh mount after drop_caches, against the
              same tree on local disk through bindfs (a C FUSE passthrough), also fresh

Times of snapshot and diff are of the control API call itself, made in this process
(dmsfs.client over the unix socket: connect, request, response); dmsctl's wall time,
which adds ~0.1-0.2 s of Python start-up and imports, is a second row.

The data (under WORK/data-snap, made once, reused with --keep): files.tar (100
directories x 1,000 files of 100-2,000 random bytes), ls10k/ (its first 10 directories
on local disk) and big128.bin; rtree/ (the tar extracted, then changed, for restic diff)
comes with the restic repo in WORK/r-diff.  The 100k dataset is ingested once (tar -x
into the mount + flush) into WORK/snap-base and kept as it is, without any snapshot:
each time a section needs it, it copies that store and state dir to WORK/snap-run and
starts a daemon there, so every first snapshot is really the dataset's first.  With
--quick the dataset is 20 directories (20,000 files; entries suffixed -quick); the
targets are meant for 100,000.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import baselines
from benchlib import (
    MB,
    PROCS,
    BenchError,
    MiB,
    cat,
    drop_caches,
    fresh,
    is_root,
    log,
    made_before,
    median,
    rate,
    rmtree,
    run,
    stop_mount,
    wait_mount,
)
from dmsd import DMSCTL, PYSPY, CpuMeter, Daemon, Spy, summarize_pyspy, warn_log_errors

SECTIONS = ["snapshot", "diff", "snapread", "lsR"]
GEN = 1                      # bump when the data below changes
PER_DIR = 1000               # files per directory
SMALL_MIN, SMALL_MAX = 100, 2000
LS_DIRS = 10                 # lsR: the first 10 directories, 10,000 files
BIG = 128 * MiB
DS = "ds"
REPS_SNAP = 5                # medians of 5 for the cheap snapshot / diff figures


class Conf:
    """The dataset's size: 100 directories (100,000 files); 20 with --quick."""

    ndirs = 100
    suffix = ""               # of the work dir entries that depend on the size


CONF = Conf()


def data_dir(work: Path) -> Path:
    return work / f"data-snap{CONF.suffix}"


# ---------------------------------------------------------------- data
def dname(d: int) -> str:
    return f"d{d:03d}"


def fname(d: int, k: int) -> str:
    """The k-th file of directory d (file numbers run over the whole dataset)."""
    return f"{dname(d)}/f{d * PER_DIR + k:06d}.bin"


def prepare(work: Path, quick: bool = False) -> dict[str, Any]:
    """Make (or reuse) WORK/data-snap (-quick: 20,000 files); a description of it."""
    CONF.ndirs, CONF.suffix = (20, "-quick") if quick else (100, "")
    data = data_dir(work)
    stamp = data / "stamp.json"
    want = {"gen": GEN, "tar": "files.tar", "dirs": CONF.ndirs, "per_dir": PER_DIR,
            "min": SMALL_MIN, "max": SMALL_MAX, "big": BIG}
    if (done := made_before(data, want)) is not None:
        return done
    t0 = time.monotonic()
    rng = random.Random(100)
    nbytes = 0
    tar = data / "files.tar"
    with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT) as tf:
        for d in range(CONF.ndirs):
            ti = tarfile.TarInfo(dname(d))
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tf.addfile(ti)
            for k in range(PER_DIR):
                payload = rng.randbytes(rng.randint(SMALL_MIN, SMALL_MAX))
                ti = tarfile.TarInfo(fname(d, k))
                ti.size, ti.mode, ti.mtime = len(payload), 0o644, 1_700_000_000 + k
                tf.addfile(ti, io.BytesIO(payload))
                nbytes += len(payload)
    (data / "ls10k").mkdir()
    run(["tar", "-xf", str(tar), "-C", str(data / "ls10k"), *[dname(d) for d in range(LS_DIRS)]])
    with open(data / "big128.bin", "wb") as f:
        brng = random.Random(128)
        for _ in range(BIG // MiB):
            f.write(brng.randbytes(MiB))
    info = dict(want)
    info.update(files=CONF.ndirs * PER_DIR, bytes=nbytes, seconds=round(time.monotonic() - t0, 1))
    stamp.write_text(json.dumps(info, indent=1))
    log(f"snapshot data: generated in {info['seconds']} s ({CONF.ndirs * PER_DIR} files, "
        f"{nbytes / MiB:.0f} MiB; big file {BIG // MiB} MiB)")
    return info


def edit_payload(seed: int) -> bytes:
    rng = random.Random(10_000 + seed)
    return rng.randbytes(rng.randint(SMALL_MIN, SMALL_MAX))


def diff_changes() -> dict[str, list[tuple[str, bytes | None]]]:
    """The 10 changes between the two diffed versions, each in its own directory:
    6 files rewritten (new content and size), 2 added, 2 removed."""
    n = CONF.ndirs
    dirs = [3 + i * (n - 4) // 9 for i in range(10)]  # 100 dirs: 3, 13, 24, ..., 99
    return {"modified": [(fname(d, 500 + i), edit_payload(100 + i))
                         for i, d in enumerate(dirs[:6])],
            "added": [(f"{dname(d)}/new{i}.bin", edit_payload(200 + i))
                      for i, d in enumerate(dirs[6:8])],
            "removed": [(fname(d, 700), None) for d in dirs[8:]]}


def apply_changes(top: Path, changes: dict[str, list[tuple[str, bytes | None]]]) -> None:
    for kind in ("modified", "added"):
        for rel, payload in changes[kind]:
            assert payload is not None
            tmp = top / (rel + ".tmp")  # a new inode: rtree is not linked, but be safe
            tmp.write_bytes(payload)
            os.replace(tmp, top / rel)
    for rel, _ in changes["removed"]:
        (top / rel).unlink()


# ---------------------------------------------------------------- the 100k dataset
def _stamp_ok(root: Path, want: dict[str, Any]) -> bool:
    stamp = root / "bench-stamp.json"
    try:
        return json.loads(stamp.read_text()) == want
    except (OSError, ValueError):
        return False


def _base(ctx: Any) -> Path:
    """WORK/snap-base: the 100k-file dataset, ingested and flushed, never snapshotted."""
    root = ctx.work / f"snap-base{CONF.suffix}"
    want = {"gen": GEN, "files": CONF.ndirs * PER_DIR}
    if _stamp_ok(root, want):
        return root
    fresh(root)
    d = Daemon(root, "snapshot-ingest").start()
    try:
        (d.mnt / DS).mkdir()
        t0 = time.perf_counter()
        run(["tar", "-xf", str(data_dir(ctx.work) / "files.tar"), "-C", str(d.mnt / DS)],
            timeout=3600)
        tar_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        d.flush()
        flush_s = time.perf_counter() - t0
        d.check_alive()
    finally:
        d.stop()
        warn_log_errors(d)
    (root / "mnt").rmdir()
    ctx.raw.setdefault("snapshot_data", {})["ingest"] = {
        "tar_s": round(tar_s, 2), "flush_s": round(flush_s, 2)}
    log(f"[snapshot] ingested {CONF.ndirs * PER_DIR} files: tar -x {tar_s:.1f} s "
        f"({rate(CONF.ndirs * PER_DIR, tar_s):.0f} files/s), flush {flush_s:.1f} s")
    (root / "bench-stamp.json").write_text(json.dumps(want))
    return root


def start_100k(ctx: Any, name: str) -> Daemon:
    """A daemon over a fresh copy of the un-snapshotted 100k dataset (WORK/snap-run)."""
    for attempt in (1, 2):
        base = _base(ctx)
        root = fresh(ctx.work / "snap-run")
        t0 = time.perf_counter()
        run(["cp", "-a", str(base / "store"), str(base / "state"), str(root)])
        log(f"[{name}] copied the {CONF.ndirs * PER_DIR:,}-file dataset's store and state in "
            f"{time.perf_counter() - t0:.1f} s")
        d = Daemon(root, name).start()
        if (d.mnt / DS / dname(CONF.ndirs - 1)).is_dir():
            return d
        d.stop()
        if attempt == 1:  # a kept base from an older dmsfs: ingest again
            log(f"[{name}] the kept {base} does not mount as expected; ingesting again")
            rmtree(base)
    raise BenchError(f"dataset {DS} missing from a fresh ingest in {base}")


def api(d: Daemon) -> Any:
    from dmsfs.client import Client  # the product's own SDK, as dmsctl uses it

    c = Client(f"unix:{d.state / 'api.sock'}")
    c.whoami()  # first request: connection set-up paths warmed, not timed
    return c


def api_snapshot(c: Any, msg: str) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    rec = c.snapshot(DS, message=msg)
    return time.perf_counter() - t0, rec


def ctl_snapshot(d: Daemon, msg: str) -> tuple[float, int]:
    """(wall seconds of `dmsctl snapshot`, the version number it printed)."""
    t0 = time.perf_counter()
    out = run([DMSCTL, "--state", str(d.state), "snapshot", DS, "-m", msg]).stdout
    secs = time.perf_counter() - t0
    first = out.split()[0] if out.split() else ""
    if not first.startswith("v") or not first[1:].isdigit():
        raise BenchError(f"dmsctl snapshot printed {out!r}, expected 'v<N> <id>'")
    return secs, int(first[1:])


def change_one(d: Daemon, i: int) -> tuple[str, bytes]:
    """Rewrite one file (a different one each time) through the mount."""
    rel = fname((7 + 13 * i) % CONF.ndirs, (37 * i) % PER_DIR)
    payload = edit_payload(i)
    with open(d.mnt / DS / rel, "wb") as f:
        f.write(payload)
    return rel, payload


# ---------------------------------------------------------------- snapshot
def _peer_rerun(ctx: Any, name: str, reps: int) -> list[float]:
    """Seconds of no-change re-runs of borg create / restic backup over the 3,000-file tree."""
    baselines.require(ctx.tools, name)
    root = fresh(ctx.work / f"{name[0]}-snap")
    src = ctx.data / "small3k"
    secs = []
    try:
        if name == "borg":
            b = baselines.Borg(ctx.tools, root / "repo", root / "base")
            b.init()
            b.create("a0", src)
            secs = [b.create(f"a{i + 1}", src) for i in range(reps)]
        else:
            rs = baselines.Restic(ctx.tools, root / "repo", root / "cache")
            rs.init()
            rs.backup("small3k", ctx.data)
            secs = [rs.backup("small3k", ctx.data) for _ in range(reps)]
    finally:
        rmtree(root)
    return secs


def _first(ctx: Any, r: int, problems: list[str]) -> tuple[Daemon, Any, float, dict[str, Any]]:
    """A daemon over a fresh copy of the 100k dataset and its first snapshot (API, timed)."""
    info = ctx.snapinfo
    d = start_100k(ctx, f"snapshot#{r + 1}")
    try:
        c = api(d)
        cpu = CpuMeter(d.pid)
        cpu.start()
        secs, rec = api_snapshot(c, "first")
        usage = cpu.stop()
    except BaseException:
        d.stop()
        raise
    if rec["number"] != 1 or rec["files"] != info["files"] or rec["bytes"] != info["bytes"]:
        problems.append(f"first snapshot: v{rec['number']} with {rec['files']} files / "
                        f"{rec['bytes']} bytes, expected v1 with {info['files']} / "
                        f"{info['bytes']}")
    log(f"[snapshot] #{r + 1} first snapshot of {info['files']} files: {secs:.3f} s "
        f"(daemon {usage['cores_busy']} cores busy, main thread {usage['main_thread_busy']:.0%})")
    return d, c, secs, usage


def sec_snapshot(ctx: Any) -> None:
    info = ctx.snapinfo
    raw: dict[str, Any] = {"files": info["files"], "bytes": info["bytes"]}
    ctx.raw["snapshot"] = raw
    problems: list[str] = []
    firsts, cpus = [], []
    for r in range(ctx.reps):
        d, c, secs, usage = _first(ctx, r, problems)
        firsts.append(secs)
        cpus.append(usage)
        if r < ctx.reps - 1:
            d.stop()
            continue
        try:  # the last copy goes on: the cheap snapshots, 5 of each kind
            one, flushed, none, one_ctl, none_ctl = [], [], [], [], []
            for i in range(REPS_SNAP):
                rel, payload = change_one(d, i)
                s, rec = api_snapshot(c, f"changed {rel}")
                one.append(s)
                got = (d.mnt / DS / f"@v{rec['number']}" / rel).read_bytes()
                if got != payload:
                    problems.append(f"@v{rec['number']}/{rel} does not hold the content "
                                    "written just before the snapshot")
            for i in range(REPS_SNAP):
                change_one(d, REPS_SNAP + i)
                c.flush()
                flushed.append(api_snapshot(c, "changed one file, flushed")[0])
            for i in range(REPS_SNAP):
                none.append(api_snapshot(c, "no change")[0])
            for i in range(REPS_SNAP):
                change_one(d, 2 * REPS_SNAP + i)
                one_ctl.append(ctl_snapshot(d, "changed one file")[0])
            for i in range(REPS_SNAP):
                none_ctl.append(ctl_snapshot(d, "no change")[0])
            n_latest = len(os.listdir(d.mnt / DS / "@latest"))
            if n_latest != CONF.ndirs:
                problems.append(f"@latest holds {n_latest} entries, expected {CONF.ndirs}")
            nver = len(c.versions(DS))
            if nver != 1 + 5 * REPS_SNAP:
                problems.append(f"{nver} versions listed, expected {1 + 5 * REPS_SNAP}")
            d.check_alive()
            raw["rss_kib"] = d.rss()
        finally:
            d.stop()
            warn_log_errors(d)
    raw.update(first_s=firsts, first_cpu=cpus, one_file_s=one, one_file_flushed_s=flushed,
               no_change_s=none, one_file_dmsctl_s=one_ctl, no_change_dmsctl_s=none_ctl)
    log(f"[snapshot] after changing 1 file: {[round(x * 1000, 1) for x in one]} ms (change "
        f"flushed first: {[round(x * 1000, 1) for x in flushed]} ms); nothing changed: "
        f"{[round(x * 1000, 1) for x in none]} ms; dmsctl: {[round(x * 1000) for x in one_ctl]}"
        f" / {[round(x * 1000) for x in none_ctl]} ms")
    first_ctl = []
    for r in range(ctx.reps):
        d = start_100k(ctx, f"snapshot-dmsctl#{r + 1}")
        try:
            secs, num = ctl_snapshot(d, "first")
            first_ctl.append(secs)
            if num != 1:
                problems.append(f"dmsctl's first snapshot is v{num}, expected v1")
        finally:
            d.stop()
            warn_log_errors(d)
    raw["first_dmsctl_s"] = first_ctl
    raw["problems"] = problems
    log(f"[snapshot] first snapshot with dmsctl: {[round(x, 3) for x in first_ctl]} s")

    peers: dict[str, float] = {}
    for name in ("borg", "restic"):
        try:
            secs_l = _peer_rerun(ctx, name, REPS_SNAP)
            raw[f"{name}_rerun_s"] = secs_l
            peers[name] = median(secs_l)
            log(f"[snapshot] {name} no-change re-run over {ctx.info['tar']['files']} files: "
                f"{[round(x, 2) for x in secs_l]} s")
        except BenchError as e:
            log(f"[snapshot] {name} skipped: {e}")
            raw[f"{name}_skipped"] = str(e)

    bad = "; ".join(problems)
    for p in problems:
        log(f"[snapshot] WRONG RESULT: {p}")
    best = min(peers, key=lambda k: peers[k]) if peers else None
    bname = f"{best} no-change re-run, {ctx.info['tar']['files']:,} files" if best else ""
    bval = peers[best] if best else None

    def row(figure: str, secs: float, unit: str, target: float | None, note: str = "") -> None:
        k = 1000 if unit == "ms" else 1
        met = None if target is None else (secs <= target and not problems)
        ctx.row("snapshot", figure, secs * k, unit, bname if target is not None else "",
                bval * k if bval is not None and target is not None else None,
                target=(f"≤{target * k:g} {unit}" if target is not None else ""), met=met,
                note=(bad[:300] if met is False and problems else note))

    mid = cpus[firsts.index(sorted(firsts)[len(firsts) // 2])]
    row(f"first snapshot, {info['files']:,} files (API, median of {ctx.reps})", median(firsts),
        "s", 3.0, f"daemon {mid['cores_busy']} cores busy")
    row("  same, dmsctl snapshot wall time", median(first_ctl), "s", None)
    row(f"snapshot after changing 1 file (API, median of {REPS_SNAP})", median(one), "ms", 0.050)
    row("  same, dmsctl snapshot wall time", median(one_ctl), "ms", None)
    row("  same, the change flushed before (API)", median(flushed), "ms", None)
    row(f"snapshot, nothing changed (API, median of {REPS_SNAP})", median(none), "ms", 0.050)
    row("  same, dmsctl snapshot wall time", median(none_ctl), "ms", None)
    for name, v in peers.items():
        ctx.row("snapshot", f"  baseline: {name} "
                + ("create" if name == "borg" else "backup")
                + f" no-change re-run, {ctx.info['tar']['files']:,} files", v * 1000, "ms")
    for name in ("borg", "restic"):
        if name not in peers:
            ctx.row("snapshot", f"  baseline: {name}", None, "",
                    note="skipped: " + raw.get(f"{name}_skipped", "?")[:60])


# ---------------------------------------------------------------- diff
def _restic_diff(ctx: Any, changes: dict[str, list[tuple[str, bytes | None]]], reps: int
                 ) -> tuple[list[float], str]:
    """restic diff between backups of the 100k tree before and after the same 10 changes."""
    baselines.require(ctx.tools, "restic")
    data = data_dir(ctx.work)
    root = ctx.work / f"r-diff{CONF.suffix}"
    rs = baselines.Restic(ctx.tools, root / "repo", root / "cache")
    want = {"gen": GEN, "files": CONF.ndirs * PER_DIR, "changes": hashlib.sha256(
        repr(sorted(changes.items())).encode()).hexdigest()}
    if not _stamp_ok(root, want):
        fresh(root)
        rtree = data / "rtree"  # the tree as in the tar, then with the changes
        rmtree(rtree)
        rtree.mkdir()
        run(["tar", "-xf", str(data / "files.tar"), "-C", str(rtree)])
        rs.init()
        a = rs.backup("rtree", data)
        apply_changes(rtree, changes)
        b = rs.backup("rtree", data)
        log(f"[diff] restic backups of the {CONF.ndirs * PER_DIR:,}-file tree: {a:.1f} s, "
            f"then {b:.1f} s after the "
            "10 changes")
        (root / "bench-stamp.json").write_text(json.dumps(want))
    snaps = json.loads(run([rs.exe, "-r", str(rs.repo), "snapshots", "--json"],
                           env=rs.env).stdout)
    snaps.sort(key=lambda s: s["time"])
    ids = [snaps[0]["short_id"], snaps[-1]["short_id"]]
    secs, out = [], ""
    for _ in range(reps):
        t0 = time.perf_counter()
        out = run([rs.exe, "-r", str(rs.repo), "diff", *ids], env=rs.env).stdout
        secs.append(time.perf_counter() - t0)
    return secs, out


def sec_diff(ctx: Any) -> None:
    changes = diff_changes()
    expect = {"added": {p for p, _ in changes["added"]},
              "removed": {p for p, _ in changes["removed"]},
              "modified": {p for p, _ in changes["modified"]}, "renamed": set()}
    raw: dict[str, Any] = {"expected": {k: sorted(v) for k, v in expect.items()}}
    ctx.raw["diff"] = raw
    d = start_100k(ctx, "diff")
    problems: list[str] = []
    try:
        c = api(d)
        _, r1 = api_snapshot(c, "before")
        apply_changes(d.mnt / DS, changes)
        _, r2 = api_snapshot(c, "after 10 changes")
        a, b = f"{DS}@v{r1['number']}", f"{DS}@v{r2['number']}"
        d.restart()  # the first diff loads every tree it needs from a fresh daemon
        c = api(d)
        secs, found = [], {}
        for _ in range(REPS_SNAP):
            t0 = time.perf_counter()
            found = c.diff(a, b)
            secs.append(time.perf_counter() - t0)
        ctl_secs, ctl_found = [], {}
        for _ in range(REPS_SNAP):
            t0 = time.perf_counter()
            out = run([DMSCTL, "--state", str(d.state), "diff", a, b, "--json"]).stdout
            ctl_secs.append(time.perf_counter() - t0)
            ctl_found = json.loads(out)
        d.check_alive()
    finally:
        d.stop()
        warn_log_errors(d)

    def paths(res: dict[str, Any], kind: str) -> set[str]:
        if kind == "renamed":
            return {f"{r.get('from')}->{r.get('to')}" for r in res.get(kind, [])}
        return {x["path"] for x in res.get(kind, [])}

    count = sum(len(found.get(k, [])) for k in expect)
    for who, res in (("API", found), ("dmsctl diff --json", ctl_found)):
        for kind, want in expect.items():
            got = paths(res, kind)
            if got != want:
                problems.append(f"{who}: {kind} {sorted(got)[:4]}{'...' if len(got) > 4 else ''}"
                                f" (expected {sorted(want)})")
    raw.update(found=found, api_s=secs, dmsctl_s=ctl_secs, count=count, problems=problems)
    log(f"[diff] {a} -> {b}: {count} changes; API {[round(x * 1000, 1) for x in secs]} ms, "
        f"dmsctl {[round(x * 1000) for x in ctl_secs]} ms")
    for p in problems:
        log(f"[diff] WRONG RESULT: {p}")

    peer: list[float] = []
    try:
        peer, out = _restic_diff(ctx, changes, REPS_SNAP)
        raw["restic_diff_s"] = peer
        raw["restic_diff_tail"] = out.strip().splitlines()[-8:]
        log(f"[diff] restic diff: {[round(x, 2) for x in peer]} s")
    except BenchError as e:
        log(f"[diff] restic skipped: {e}")
        raw["restic_skipped"] = str(e)

    v = median(secs) * 1000
    pv = median(peer) * 1000 if peer else None
    ok = v <= 200 and not problems
    ctx.row("diff", f"diff of 2 versions, {CONF.ndirs * PER_DIR:,} files, 10 changed (API, median "
            "of 5)", v, "ms", "restic diff, same change" if peer else "", pv,
            target="≤200 ms, finds the 10", met=ok,
            note="; ".join(problems)[:300] if problems else "")
    ctx.row("diff", "  first of the 5 (fresh daemon)", secs[0] * 1000, "ms")
    ctx.row("diff", "  same, dmsctl diff --json wall time (median of 5)", median(ctl_secs) * 1000,
            "ms")
    ctx.row("diff", "  changes found (expected 10: 6 modified, 2 added, 2 removed)", count,
            "files",
            target="= 10", met=count == 10 and not problems)
    if peer:
        ctx.row("diff", "  baseline: restic diff, same 10 changes (median of 5)", pv, "ms")
    else:
        ctx.row("diff", "  baseline: restic diff", None, "",
                note="skipped: " + raw.get("restic_skipped", "?")[:60])


# ---------------------------------------------------------------- snapread
def sec_snapread(ctx: Any) -> None:
    big = data_dir(ctx.work) / "big128.bin"
    nbig = big.stat().st_size
    root = ctx.work / "snapread"
    want = {"gen": GEN, "bytes": nbig}
    d = Daemon(root, "snapread")
    if not _stamp_ok(root, want):
        fresh(root)
        d.start()
        try:
            (d.mnt / DS).mkdir()
            run(["cp", str(big), str(d.mnt / DS / "big.bin")])
            d.flush()
            rec = api(d).snapshot(DS, message="big file")
            if rec["number"] != 1:
                raise BenchError(f"first snapshot of {DS} is v{rec['number']}")
            ctx.raw["snapread_setup_rss_kib"] = d.rss()
        finally:
            d.stop()
        d.hwm_kib = 0  # the peak of the reads alone from here on
        (root / "bench-stamp.json").write_text(json.dumps(want))
    snap = d.mnt / DS / "@v1" / "big.bin"
    live = d.mnt / DS / "big.bin"
    # bindfs -o kernel_cache: a C passthrough that, like dmsfs for snapshots, lets the kernel
    # keep the file's pages across opens: what the kernel's FUSE page-cache path allows
    why = _bindfs()
    mnt = ctx.work / "bindmnt"
    # dmsfs, local disk and bindfs one after the other in each round, so that load from
    # other processes hits them alike; ratios are the median of the rounds' ratios
    reps = max(ctx.reps, 5)
    runs, local, bind = [], [], []
    for _ in range(reps):
        one: dict[str, Any] = {}
        drop_caches()
        d.start()
        try:
            cpu = CpuMeter(d.pid)
            cpu.start()
            one["cold_MBps"] = rate(nbig / MB, cat(snap))
            one["cpu_cold"] = cpu.stop()
            cpu.start()
            one["second_MBps"] = rate(nbig / MB, cat(snap))
            one["cpu_second"] = cpu.stop()
            one["live_second_MBps"] = rate(nbig / MB, timed_twice(live))
            d.check_alive()
        finally:
            d.stop()
        runs.append(one)
        drop_caches()
        cold = rate(nbig / MB, cat(big))
        local.append({"cold_MBps": cold, "second_MBps": rate(nbig / MB, cat(big))})
        if why is None:
            drop_caches()
            proc = bindfs_mount(big.parent, mnt, "-o", "kernel_cache")
            try:
                cold = rate(nbig / MB, cat(mnt / big.name))
                second = rate(nbig / MB, cat(mnt / big.name))
                bind.append({"cold_MBps": cold, "second_MBps": second})
            finally:
                stop_mount(proc, mnt, "bindfs")
        log(f"[snapread] @v1: cold {one['cold_MBps']:.0f} MB/s, second {one['second_MBps']:.0f}"
            f" MB/s (daemon CPU {one['cpu_second']['cpu_s']:.2f} s); live tree second read "
            f"{one['live_second_MBps']:.0f} MB/s; local second read "
            f"{local[-1]['second_MBps']:.0f} MB/s"
            + (f"; bindfs second read {bind[-1]['second_MBps']:.0f} MB/s" if bind else ""))
    warn_log_errors(d)
    ctx.raw["snapread"] = {"bytes": nbig, "dmsfs": runs, "local": local, "bindfs": bind,
                           "bindfs_skipped": why, "daemon_hwm_kib": d.hwm_kib}

    def med(rs: list[dict[str, Any]], k: str) -> float:
        return median([x[k] for x in rs])

    def ratio(a: list[dict[str, Any]], ka: str, b: list[dict[str, Any]], kb: str) -> float:
        return median([x[ka] / y[kb] for x, y in zip(a, b, strict=True)])

    log(f"[snapread] daemon peak RSS (VmHWM) during these reads {d.hwm_kib / 1024:.0f} MiB")
    v, lv = med(runs, "second_MBps"), med(local, "second_MBps")
    r = ratio(runs, "second_MBps", local, "second_MBps")
    ctx.row("snapread", f"second read of a {nbig // MiB} MiB file from @v1", v, "MB/s",
            "local page cache (2nd read)", lv, r, target="≥0.7× local", met=r >= 0.7,
            note=f"medians of {reps}")
    ctx.row("snapread", "  first read from @v1 (fresh mount, drop_caches)", med(runs, "cold_MBps"),
            "MB/s", "local disk, cold", med(local, "cold_MBps"),
            ratio(runs, "cold_MBps", local, "cold_MBps"))
    ctx.row("snapread", "  live-tree copy, second read (after one read)",
            med(runs, "live_second_MBps"), "MB/s", "local page cache (2nd read)", lv,
            ratio(runs, "live_second_MBps", local, "second_MBps"))
    if bind:
        ctx.row("snapread", "  baseline: bindfs -o kernel_cache, second read",
                med(bind, "second_MBps"), "MB/s", "local page cache (2nd read)", lv,
                ratio(bind, "second_MBps", local, "second_MBps"))
    else:
        ctx.row("snapread", "  baseline: bindfs", None, "", note=f"skipped: {why}")


def timed_twice(path: Path) -> float:
    """Seconds of the second of two reads."""
    cat(path)
    return cat(path)


# ---------------------------------------------------------------- lsR
def ls_lr(path: Path) -> float:
    with open(os.devnull, "wb") as null:
        t0 = time.perf_counter()
        subprocess.run(["ls", "-lR", str(path)], stdout=null, check=True)
        return time.perf_counter() - t0


def fuse_requests(path: Path, data: Path) -> dict[str, int] | None:
    """FUSE requests `ls -lR path` sends, by opcode (perf and the fuse:fuse_request_send
    tracepoint; None when unavailable; data is perf's scratch file).  Untimed: perf
    records the whole machine, only requests sent by ls itself are counted."""
    if not shutil.which("perf") or not is_root():
        return None
    r = run(["perf", "record", "-q", "-o", str(data), "-e", "fuse:fuse_request_send", "-a",
             "--", "ls", "-lR", str(path)], check=False, timeout=600)
    if r.returncode != 0:
        return None
    out = run(["perf", "script", "-i", str(data)], check=False, timeout=600).stdout
    data.unlink(missing_ok=True)
    counts: dict[str, int] = {}
    for line in out.splitlines():
        fields = line.split()
        if fields and fields[0] == "ls" and "(FUSE_" in line:
            op = line[line.index("(FUSE_") + 6:].split(")")[0]
            counts[op] = counts.get(op, 0) + 1
    return dict(sorted(counts.items(), key=lambda x: -x[1]))


def count_files(path: Path) -> int:
    return sum(len(files) for _dir, _dirs, files in os.walk(path))


def bindfs_mount(src: Path, mnt: Path, *opts: str) -> subprocess.Popen[bytes]:
    mnt.mkdir(parents=True, exist_ok=True)
    logf = mnt.parent / f"{mnt.name}.log"
    with open(logf, "wb") as out:
        proc = subprocess.Popen(["bindfs", "-f", *opts, str(src), str(mnt)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    PROCS.add(proc, mnt)
    wait_mount(mnt, proc, "bindfs", logf)
    return proc


def _bindfs() -> str | None:
    """Why bindfs cannot run, or None; installs it (Debian bindfs) when root."""
    if shutil.which("bindfs"):
        return None
    if is_root():
        log("installing bindfs with apt-get ...")
        baselines._apt_install("bindfs")
        if shutil.which("bindfs"):
            return None
        return "apt-get install bindfs failed"
    return "bindfs is not installed (Debian package bindfs) and not root"


def sec_lsR(ctx: Any) -> None:  # noqa: N802 (the section's name)
    src = data_dir(ctx.work) / "ls10k"
    nfiles = LS_DIRS * PER_DIR
    root = ctx.work / "lsr"
    want = {"gen": GEN, "files": nfiles}
    d = Daemon(root, "lsR")
    if not _stamp_ok(root, want):
        fresh(root)
        d.start()
        try:
            (d.mnt / DS).mkdir()
            run(["tar", "-xf", str(data_dir(ctx.work) / "files.tar"), "-C",
                 str(d.mnt / DS), *[dname(k) for k in range(LS_DIRS)]])
            d.flush()
            rec = api(d).snapshot(DS, message="10k files")
            if rec["number"] != 1 or rec["files"] != nfiles:
                raise BenchError(f"first snapshot of {DS}: v{rec['number']}, {rec['files']} "
                                 f"files (expected v1, {nfiles})")
        finally:
            d.stop()
        (root / "bench-stamp.json").write_text(json.dumps(want))
    snap, live = d.mnt / DS / "@v1", d.mnt / DS
    why = _bindfs()
    if why is not None:
        log(f"[lsR] bindfs skipped: {why}")
    mnt = ctx.work / "bindmnt"
    # dmsfs, bindfs and local disk one after the other in each round, so that load from
    # other processes hits them alike; ratios are the median of the rounds' ratios
    reps = max(ctx.reps, 3)
    runs, bind, local = [], [], []
    for _ in range(reps):
        one: dict[str, Any] = {}
        drop_caches()
        d.start()
        try:
            cpu = CpuMeter(d.pid)
            cpu.start()
            one["snap_cold_s"] = ls_lr(snap)
            one["cpu_cold"] = cpu.stop()
            one["snap_warm_s"] = ls_lr(snap)
        finally:
            d.stop()
        drop_caches()
        d.start()
        try:
            one["live_cold_s"] = ls_lr(live)
            seen = count_files(snap)
        finally:
            d.stop()
        if seen != nfiles:
            raise BenchError(f"{snap} holds {seen} files, expected {nfiles}")
        runs.append(one)
        if why is None:
            drop_caches()
            proc = bindfs_mount(src, mnt)
            try:
                bind.append({"cold_s": ls_lr(mnt), "warm_s": ls_lr(mnt)})
            finally:
                stop_mount(proc, mnt, "bindfs")
        drop_caches()
        local.append({"cold_s": ls_lr(src), "warm_s": ls_lr(src)})
        log(f"[lsR] dmsfs @v1: cold {one['snap_cold_s']:.2f} s, again {one['snap_warm_s']:.2f} s"
            f" (daemon {one['cpu_cold']['cores_busy']} cores, main thread "
            f"{one['cpu_cold']['main_thread_busy']:.0%}); live tree cold "
            f"{one['live_cold_s']:.2f} s"
            + (f"; bindfs cold {bind[-1]['cold_s']:.2f} s, again {bind[-1]['warm_s']:.2f} s"
               if bind else "")
            + f"; local cold {local[-1]['cold_s']:.2f} s")
    warn_log_errors(d)
    # where the time goes: the FUSE requests of one ls -lR on a fresh mount, both sides
    drop_caches()
    d.start()
    try:
        req_dms = fuse_requests(snap, ctx.work / "fuse-requests.perf")
    finally:
        d.stop()
    req_bind = None
    if why is None and req_dms is not None:
        drop_caches()
        proc = bindfs_mount(src, ctx.work / "bindmnt")
        try:
            req_bind = fuse_requests(ctx.work / "bindmnt", ctx.work / "fuse-requests.perf")
        finally:
            stop_mount(proc, ctx.work / "bindmnt", "bindfs")
    if req_dms is not None:
        log(f"[lsR] FUSE requests of one ls -lR: dmsfs {req_dms}; bindfs {req_bind}")
    ctx.raw["lsR"] = {"files": nfiles, "dmsfs": runs, "bindfs": bind, "bindfs_skipped": why,
                      "local": local, "fuse_requests_dmsfs": req_dms,
                      "fuse_requests_bindfs": req_bind}

    def fps(rs: list[dict[str, Any]], k: str) -> float:
        return rate(nfiles, median([x[k] for x in rs]))

    def ratio(a: list[dict[str, Any]], ka: str, b: list[dict[str, Any]], kb: str) -> float:
        """Speed of a over b: the median of the rounds' time ratios b/a."""
        return median([y[kb] / x[ka] for x, y in zip(a, b, strict=True)])

    v = fps(runs, "snap_cold_s")
    if bind:
        r = ratio(runs, "snap_cold_s", bind, "cold_s")
        ctx.row("lsR", f"ls -lR of a {nfiles:,}-file snapshot, fresh mount + drop_caches", v,
                "files/s", "bindfs of a local copy, same", fps(bind, "cold_s"), r,
                target="≥0.5× bindfs", met=r >= 0.5, note=f"medians of {reps}")
        ctx.row("lsR", "  second ls -lR", fps(runs, "snap_warm_s"), "files/s",
                "bindfs, second ls -lR", fps(bind, "warm_s"),
                ratio(runs, "snap_warm_s", bind, "warm_s"))
    else:
        ctx.row("lsR", f"ls -lR of a {nfiles:,}-file snapshot, fresh mount + drop_caches", v,
                "files/s", note=f"bindfs skipped: {why}")
        ctx.row("lsR", "  second ls -lR", fps(runs, "snap_warm_s"), "files/s")
    ctx.row("lsR", "  live tree, same files, fresh mount", fps(runs, "live_cold_s"), "files/s",
            "local disk, cold", fps(local, "cold_s"), ratio(runs, "live_cold_s", local, "cold_s"))
    ctx.row("lsR", "  baseline: local disk, second ls -lR", fps(local, "warm_s"), "files/s")
    if req_dms is not None:
        def top(req: dict[str, int]) -> str:
            return ", ".join(f"{op} {n:,}" for op, n in list(req.items())[:2])

        per = [x["snap_cold_s"] / max(1, sum(req_dms.values())) for x in runs]
        ctx.row("lsR", "  FUSE requests of one ls -lR (fresh mount)", sum(req_dms.values()), "",
                "bindfs, same" if req_bind else "",
                sum(req_bind.values()) if req_bind else None,
                note=f"dmsfs: {top(req_dms)}"
                + (f"; bindfs: {top(req_bind)}" if req_bind else ""))
        row_b = []
        if req_bind and bind:
            row_b = [x["cold_s"] / max(1, sum(req_bind.values())) for x in bind]
        ctx.row("lsR", "  wall time per FUSE request (cold ls -lR)", median(per) * 1e6, "µs",
                "bindfs, same" if row_b else "", median(row_b) * 1e6 if row_b else None)


# ---------------------------------------------------------------- profiles
def profile(ctx: Any, out: Path, wanted: list[str]) -> None:
    """py-spy profiles of the daemon (untimed) for the snapshot and lsR sections."""
    if not PYSPY.exists():
        log("[profile] py-spy not in the venv; skipped")
        return
    if "snapshot" in wanted:
        profile_snapshots(ctx, out)
    if "lsR" in wanted:
        profile_lsr(ctx, out)


def _spy(d: Daemon, out: Path, name: str, what: str, fn: Any) -> None:
    rawfile = out / f"profile-{name}.raw"
    spy = Spy(d.pid, rawfile, rate=1000).start()
    cpu = CpuMeter(d.pid)
    cpu.start()
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    usage = cpu.stop()
    spy.stop()
    text = (f"{what}: {wall:.3f} s wall, daemon CPU {usage['cpu_s']:.2f} s (main thread "
            f"{usage['main_thread_busy']:.0%} busy); py-spy at 1000 Hz (its sampling slows "
            "the daemon)\n" + summarize_pyspy(rawfile))
    (out / f"profile-{name}.txt").write_text(text)
    log(f"[profile] {out / f'profile-{name}.txt'}")
    sys.stderr.write(text)


def profile_snapshots(ctx: Any, out: Path) -> None:
    """The first snapshot of the 100k dataset, then 30 no-change snapshots, then 30 after
    changing one file each."""
    d = start_100k(ctx, "profile-snapshot")
    try:
        c = api(d)
        _spy(d, out, "snapshot-first", f"first snapshot of {CONF.ndirs * PER_DIR:,} files",
             lambda: c.snapshot(DS, message="first"))
        _spy(d, out, "snapshot-nochange", "30 snapshots, nothing changed",
             lambda: [c.snapshot(DS, message="none") for _ in range(30)])

        def onefile() -> None:
            for i in range(30):
                change_one(d, 100 + i)
                c.snapshot(DS, message="one")
        _spy(d, out, "snapshot-onefile", "30 x (rewrite 1 file + snapshot)", onefile)
    finally:
        d.stop()


def profile_lsr(ctx: Any, out: Path) -> None:
    """ls -lR of the 10k snapshot on a fresh mount after drop_caches, twice."""
    root = ctx.work / "lsr"
    if not (root / "bench-stamp.json").exists():
        log("[profile] no kept lsR dataset; skipped")
        return
    d = Daemon(root, "profile-lsR")
    drop_caches()
    d.start()
    try:
        _spy(d, out, "lsR", "ls -lR of the 10,000-file snapshot, fresh mount, twice",
             lambda: (ls_lr(d.mnt / DS / "@v1"), ls_lr(d.mnt / DS / "@v1")))
    finally:
        d.stop()
