"""make bench: dmsfs throughput, dedup and memory against local disk, borg and restic.

    .venv/bin/python -P bench/run.py [--quick] [--only SECTION[,SECTION]] [--keep]
                                      [--workdir DIR] [--reps N] [--profile]

Sections (in this order): ingest, smallfiles, reads, dedup, rss, from
snapshots.py snapshot, diff, snapread, lsR, from validation.py validate,
validate1g, rowdiff, and from s3.py s3ingest, s3coldread, s3smallfiles, s3puts.  Each prints
figures with their ratio to a baseline measured in the same run; the table goes
to stdout, progress to stderr, everything to bench/out/results.json.

MB is 10^6 bytes, MiB 2^20.  Medians of --reps runs (3; 1 with --quick) where a
run is cheap; borg/restic mounts are read once.  Every timed run starts after a
sync; the source tree is in the page cache (it was just generated), so ingest
figures measure the destination.  Nothing is left running or mounted afterwards,
also on Ctrl-C: each section stops what it started, and the end stops the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # run with python -P: the helper modules live beside this file

import baselines  # noqa: E402
import s3  # noqa: E402
import snapshots  # noqa: E402
import validation  # noqa: E402
import workload  # noqa: E402
from benchlib import (  # noqa: E402
    MB,
    PROCS,
    BenchError,
    ForeignLoad,
    MiB,
    cat,
    child_cpu,
    drop_caches,
    du_apparent,
    fresh,
    is_mount,
    log,
    median,
    mounts_under,
    rate,
    read_files,
    rmtree,
    run,
    timed,
    unmount,
)
from dmsd import PEAK, PYSPY, CpuMeter, Daemon, Spy, summarize_pyspy, warn_log_errors  # noqa: E402

SECTIONS = ["ingest", "smallfiles", "reads", "dedup", "rss", *snapshots.SECTIONS,
            *validation.SECTIONS, *s3.SECTIONS]
OUT = HERE / "out"


# ---------------------------------------------------------------- results
@dataclass
class Row:
    section: str
    figure: str
    value: float | None
    unit: str
    baseline: str = ""              # name of what the ratio is taken against
    baseline_value: float | None = None
    ratio: float | None = None      # value / baseline_value
    target: str = ""
    met: bool | None = None
    note: str = ""


@dataclass
class Ctx:
    args: argparse.Namespace
    work: Path
    data: Path
    info: dict[str, Any]
    tools: baselines.Tools
    reps: int
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    v1_store: Path | None = None     # a daemon root whose store holds data/v1 at ds/v1
    borg_repo: Path | None = None    # a borg repo (root) with archive v1
    restic_repo: Path | None = None  # a restic repo (root) with a snapshot of v1
    snapinfo: dict[str, Any] = field(default_factory=dict)  # snapshots.prepare(): its data
    valinfo: dict[str, Any] = field(default_factory=dict)   # validation.prepare(): its data

    def row(self, *a: Any, **kw: Any) -> Row:
        r = Row(*a, **kw)
        if r.ratio is None and r.value is not None and r.baseline_value:
            r.ratio = r.value / r.baseline_value
        self.rows.append(r)
        return r

    def keep_or_remove(self, path: Path) -> None:
        if not self.args.keep:
            rmtree(path)


def cp_a(src: Path, dst: Path, cpu: dict[str, float] | None = None) -> float:
    """Seconds for cp -a src dst; cpu, when given, gets cp's own user/sys CPU seconds."""
    u0, s0 = child_cpu()
    t0 = time.perf_counter()
    run(["cp", "-a", str(src), str(dst)])
    secs = time.perf_counter() - t0
    if cpu is not None:
        u1, s1 = child_cpu()
        cpu.update(user_s=round(u1 - u0, 3), sys_s=round(s1 - s0, 3))
    return secs


# ---------------------------------------------------------------- ingest
def sec_ingest(ctx: Ctx) -> None:
    src = ctx.data / "v1"
    nbytes = ctx.info["versions"]["v1"]["bytes"]
    raw: dict[str, Any] = {"bytes": nbytes, "files": ctx.info["versions"]["v1"]["files"]}
    ctx.raw["ingest"] = raw

    runs = []
    for r in range(ctx.reps):
        root = fresh(ctx.work / f"i{r}")
        d = Daemon(root, f"ingest#{r + 1}").start()
        try:
            (d.mnt / "ds").mkdir()
            rss_idle = d.rss()
            os.sync()
            cpu = CpuMeter(d.pid)
            cpu.start()
            cp_cpu: dict[str, float] = {}
            cp_s = cp_a(src, d.mnt / "ds" / "v1", cp_cpu)
            cpu_cp = cpu.stop()
            backlog = d.stats()["backlog"]
            cpu.start()
            flush_s = timed(d.flush)
            cpu_flush = cpu.stop()
            d.check_alive()
            st = d.stats()
            rss = d.rss()
            total = cp_s + flush_s
            runs.append({"cp_s": round(cp_s, 3), "flush_s": round(flush_s, 3),
                         "total_s": round(total, 3), "MBps": round(rate(nbytes / MB, total), 1),
                         "backlog_after_cp": backlog, "cpu_cp": cpu_cp, "cpu_flush": cpu_flush,
                         "cp_process_cpu": cp_cpu,
                         "rss_idle_kib": rss_idle, "rss_after_kib": rss,
                         "logical_bytes": st["logical_bytes"], "stored_bytes": st["stored_bytes"],
                         "chunks": st["chunks"], "packs": st["packs"]})
            log(f"[ingest] dmsfs #{r + 1}: cp {cp_s:.2f} s + flush {flush_s:.2f} s = "
                f"{rate(nbytes / MB, total):.1f} MB/s; daemon {cpu_cp['cores_busy']} cores busy "
                f"during cp (main thread {cpu_cp['main_thread_busy']:.0%}), cp itself "
                f"{cp_cpu['user_s']:.1f} s user + {cp_cpu['sys_s']:.1f} s sys, "
                f"RSS {rss.get('VmRSS', 0) / 1024:.0f} MiB")
        finally:
            d.stop()
            warn_log_errors(d)
        if r == ctx.reps - 1:
            ctx.v1_store = root
        else:
            rmtree(root)
    raw["dmsfs"] = runs
    dms = median([x["MBps"] for x in runs])
    dms_cp_only = median([rate(nbytes / MB, x["cp_s"]) for x in runs])

    local = []
    for _ in range(ctx.reps):
        dst = ctx.work / "lc"
        rmtree(dst)
        os.sync()
        local.append(baselines.local_cp(src, dst))
        rmtree(dst)
    raw["local_cp_s"] = local
    local_mbps = rate(nbytes / MB, median(local))
    log(f"[ingest] local cp -a + sync: {local_mbps:.1f} MB/s")

    peers: dict[str, float] = {}
    for name in ("borg", "restic"):
        try:
            baselines.require(ctx.tools, name)
            secs = []
            for r in range(ctx.reps):
                root = fresh(ctx.work / f"{name[0]}{r}")
                os.sync()
                if name == "borg":
                    b = baselines.Borg(ctx.tools, root / "repo", root / "base")
                    b.init()
                    secs.append(b.create("v1", src))
                else:
                    rs = baselines.Restic(ctx.tools, root / "repo", root / "cache")
                    rs.init()
                    secs.append(rs.backup("v1", ctx.data))
                if r == ctx.reps - 1:
                    if name == "borg":
                        ctx.borg_repo = root
                    else:
                        ctx.restic_repo = root
                else:
                    rmtree(root)
            raw[f"{name}_s"] = secs
            peers[name] = rate(nbytes / MB, median(secs))
            log(f"[ingest] {name}: {peers[name]:.1f} MB/s")
        except BenchError as e:
            log(f"[ingest] {name} skipped: {e}")
            raw[f"{name}_skipped"] = str(e)

    desc = f"cp -a tree ({nbytes / MiB:.0f} MiB) into dmsfs + flush"
    if peers:
        best = max(peers, key=lambda k: peers[k])
        ratio = dms / peers[best]
        ctx.row("ingest", desc, dms, "MB/s", f"faster peer: {best}", peers[best], ratio,
                "≥150 MB/s and ≥1.2× peer", dms >= 150 and ratio >= 1.2)
    else:
        ctx.row("ingest", desc, dms, "MB/s", target="≥150 MB/s", met=dms >= 150,
                note="no borg/restic: peer comparison skipped")
    ctx.row("ingest", "  same, vs local disk", dms, "MB/s", "local cp -a + sync", local_mbps)
    ctx.row("ingest", "  cp -a alone (before flush)", dms_cp_only, "MB/s", "local cp -a + sync",
            local_mbps)
    for name, v in peers.items():
        ctx.row("ingest", f"  baseline: {name}"
                + (" create zstd,3" if name == "borg" else " backup"), v, "MB/s")
    cpu = runs[len(runs) // 2]["cpu_cp"]
    ctx.row("ingest", "  daemon CPU during cp: all threads", cpu["cores_busy"], "cores",
            note=f"of {os.cpu_count()}")
    ctx.row("ingest", "  daemon CPU during cp: main (trio/FUSE) thread",
            cpu["main_thread_busy"] * 100, "% of a core")
    mid = runs[len(runs) // 2]
    cp_cores = (mid["cp_process_cpu"]["user_s"] + mid["cp_process_cpu"]["sys_s"]) / mid["cp_s"]
    ctx.row("ingest", "  cp process CPU (user+sys) during cp", cp_cores, "cores",
            note=f"sys {mid['cp_process_cpu']['sys_s']:.1f} s of {mid['cp_s']:.1f} s")


# ---------------------------------------------------------------- small files
def sec_smallfiles(ctx: Ctx) -> None:
    tar = ctx.data / "small3k.tar"
    nfiles = ctx.info["tar"]["files"]
    raw: dict[str, Any] = {"files": nfiles, "bytes": ctx.info["tar"]["bytes"]}
    ctx.raw["smallfiles"] = raw
    runs = []
    for r in range(ctx.reps):
        root = fresh(ctx.work / f"s{r}")
        d = Daemon(root, f"smallfiles#{r + 1}").start()
        try:
            (d.mnt / "ds").mkdir()
            os.sync()
            cpu = CpuMeter(d.pid)
            cpu.start()
            tar_s = baselines.tar_x(tar, d.mnt / "ds")
            cpu_tar = cpu.stop()
            flush_s = timed(d.flush)
            d.check_alive()
            runs.append({"tar_s": round(tar_s, 3), "flush_s": round(flush_s, 3),
                         "cpu_tar": cpu_tar, "rss_after_kib": d.rss()})
            log(f"[smallfiles] dmsfs #{r + 1}: tar -x {tar_s:.2f} s "
                f"({rate(nfiles, tar_s):.0f} files/s), flush {flush_s:.2f} s; "
                f"daemon {cpu_tar['cores_busy']} cores busy, main thread "
                f"{cpu_tar['main_thread_busy']:.0%}")
        finally:
            d.stop()
            warn_log_errors(d)
        rmtree(root)
    raw["dmsfs"] = runs
    local = []
    for _ in range(ctx.reps):
        dest = ctx.work / "st"
        rmtree(dest)
        os.sync()
        tar_s = baselines.tar_x(tar, dest)
        sync_s = timed(os.sync)
        local.append({"tar_s": round(tar_s, 3), "sync_s": round(sync_s, 3)})
        rmtree(dest)
    raw["local"] = local
    dms = rate(nfiles, median([x["tar_s"] for x in runs]))
    loc = rate(nfiles, median([x["tar_s"] for x in local]))
    log(f"[smallfiles] local tar -x: {loc:.0f} files/s")
    ctx.row("smallfiles", f"tar -x {nfiles} small files into dmsfs", dms, "files/s",
            "local tar -x", loc, target="≥1,500 files/s", met=dms >= 1500)
    dms_d = rate(nfiles, median([x["tar_s"] + x["flush_s"] for x in runs]))
    loc_d = rate(nfiles, median([x["tar_s"] + x["sync_s"] for x in local]))
    ctx.row("smallfiles", "  tar -x + flush (durable)", dms_d, "files/s",
            "local tar -x + sync", loc_d)
    cpu = runs[len(runs) // 2]["cpu_tar"]
    ctx.row("smallfiles", "  daemon CPU during tar: main thread", cpu["main_thread_busy"] * 100,
            "% of a core", note=f"all threads {cpu['cores_busy']} cores")


# ---------------------------------------------------------------- reads
def _v1_store(ctx: Ctx) -> Path:
    if ctx.v1_store is not None:
        return ctx.v1_store
    root = fresh(ctx.work / "rd")
    d = Daemon(root, "reads-setup").start()
    try:
        (d.mnt / "ds").mkdir()
        cp_a(ctx.data / "v1", d.mnt / "ds" / "v1")
        d.flush()
    finally:
        d.stop()
    ctx.v1_store = root
    return root


def _peer_reads(ctx: Ctx, name: str, big_rel: str, smalls_rel: list[str], nbig: int
                ) -> dict[str, float]:
    """Cold/warm big-file read and cold small-file reads through a borg or restic mount."""
    baselines.require(ctx.tools, name)
    if name == "borg":
        baselines.require(ctx.tools, "borg mount")
    mnt = ctx.work / f"{name[0]}m"
    if is_mount(mnt):
        unmount(mnt, lazy=True)
    if name == "borg":
        if ctx.borg_repo is None:
            root = fresh(ctx.work / "b-rd")
            baselines.Borg(ctx.tools, root / "repo", root / "base").init()
            baselines.Borg(ctx.tools, root / "repo", root / "base").create("v1", ctx.data / "v1")
            ctx.borg_repo = root
        peer: Any = baselines.Borg(ctx.tools, ctx.borg_repo / "repo", ctx.borg_repo / "base")
        top = mnt

        def mount() -> Any:
            return peer.mount("v1", mnt)
    else:
        if ctx.restic_repo is None:
            root = fresh(ctx.work / "r-rd")
            rs = baselines.Restic(ctx.tools, root / "repo", root / "cache")
            rs.init()
            rs.backup("v1", ctx.data)
            ctx.restic_repo = root
        peer = baselines.Restic(ctx.tools, ctx.restic_repo / "repo", ctx.restic_repo / "cache")
        top = mnt / "snapshots" / "latest" / "v1"

        def mount() -> Any:
            return peer.mount(mnt)
    out = {}
    drop_caches()
    proc = mount()
    try:
        out["big_cold_MBps"] = rate(nbig / MB, cat(top / big_rel))
        out["big_warm_MBps"] = rate(nbig / MB, cat(top / big_rel))
    finally:
        baselines.unmount_peer(proc, mnt, f"{name} mount")
    drop_caches()
    proc = mount()
    try:
        t = timed(lambda: read_files([top / p for p in smalls_rel]))
        out["small_cold_files_s"] = rate(len(smalls_rel), t)
    finally:
        baselines.unmount_peer(proc, mnt, f"{name} mount")
    log(f"[reads] {name} mount: big cold {out['big_cold_MBps']:.0f} MB/s, warm "
        f"{out['big_warm_MBps']:.0f} MB/s; small cold {out['small_cold_files_s']:.0f} files/s")
    return out


def sec_reads(ctx: Ctx) -> None:
    root = _v1_store(ctx)
    src = ctx.data / "v1"
    big_rel = "blobs/blob0.bin"
    nbig = (src / big_rel).stat().st_size
    smalls_rel = [str(p.relative_to(src)) for p in workload.small_paths(src)]
    random.Random(7).shuffle(smalls_rel)
    raw: dict[str, Any] = {"big_bytes": nbig, "small_files": len(smalls_rel)}
    ctx.raw["reads"] = raw

    d = Daemon(root, "reads")
    top = d.mnt / "ds" / "v1"
    runs = []
    for r in range(ctx.reps):
        one: dict[str, Any] = {}
        drop_caches()
        d.start()
        try:
            cpu = CpuMeter(d.pid)
            cpu.start()
            cold = cat(top / big_rel)
            one["cpu_big_cold"] = cpu.stop()
            warm = cat(top / big_rel)
        finally:
            d.stop()
        drop_caches()
        d.start()
        try:
            cpu = CpuMeter(d.pid)
            cpu.start()
            t_small = timed(lambda: read_files([top / p for p in smalls_rel]))
            one["cpu_small_cold"] = cpu.stop()
            t_small_warm = timed(lambda: read_files([top / p for p in smalls_rel]))
            one["rss_after_kib"] = d.rss()
            one["cache"] = d.stats()["cache"]
        finally:
            d.stop()
        one.update({"big_cold_MBps": rate(nbig / MB, cold), "big_warm_MBps": rate(nbig / MB, warm),
                    "small_cold_files_s": rate(len(smalls_rel), t_small),
                    "small_warm_files_s": rate(len(smalls_rel), t_small_warm)})
        runs.append(one)
        log(f"[reads] dmsfs #{r + 1}: big cold {one['big_cold_MBps']:.0f} MB/s, warm "
            f"{one['big_warm_MBps']:.0f} MB/s; small cold {one['small_cold_files_s']:.0f} "
            f"files/s, warm {one['small_warm_files_s']:.0f} files/s")
    warn_log_errors(d)
    raw["dmsfs"] = runs

    local = []
    for _ in range(ctx.reps):
        one = {}
        drop_caches()
        one["big_cold_MBps"] = rate(nbig / MB, cat(src / big_rel))
        one["big_warm_MBps"] = rate(nbig / MB, cat(src / big_rel))
        drop_caches()
        one["small_cold_files_s"] = rate(len(smalls_rel), timed(
            lambda: read_files([src / p for p in smalls_rel])))
        one["small_warm_files_s"] = rate(len(smalls_rel), timed(
            lambda: read_files([src / p for p in smalls_rel])))
        local.append(one)
    raw["local"] = local

    def med(rs: list[dict[str, Any]], k: str) -> float:
        return median([x[k] for x in rs])

    log(f"[reads] local: big cold {med(local, 'big_cold_MBps'):.0f} MB/s, warm "
        f"{med(local, 'big_warm_MBps'):.0f} MB/s; small cold "
        f"{med(local, 'small_cold_files_s'):.0f} files/s")
    peers = {}
    for name in ("borg", "restic"):
        try:
            peers[name] = _peer_reads(ctx, name, big_rel, smalls_rel, nbig)
        except BenchError as e:
            log(f"[reads] {name} mount skipped: {e}")
            raw[f"{name}_skipped"] = str(e)
    raw["peers"] = peers

    mib = nbig / MiB
    v = med(runs, "big_cold_MBps")
    ctx.row("reads", f"cat {mib:.0f} MiB file, fresh mount, cold", v, "MB/s",
            "local disk, cold", med(local, "big_cold_MBps"), target="≥800 MB/s", met=v >= 800)
    v = med(runs, "big_warm_MBps")
    lw = med(local, "big_warm_MBps")
    ctx.row("reads", "  second read of the same file", v, "MB/s", "local page cache", lw,
            target="≥0.6× local", met=v >= 0.6 * lw)
    v = med(runs, "small_cold_files_s")
    ctx.row("reads", f"{len(smalls_rel)} small files, random order, cold", v, "files/s",
            "local disk, cold", med(local, "small_cold_files_s"), target="≥3,000 files/s",
            met=v >= 3000)
    ctx.row("reads", "  same, second pass (warm)", med(runs, "small_warm_files_s"), "files/s",
            "local, warm", med(local, "small_warm_files_s"))
    for name, p in peers.items():
        ctx.row("reads", f"  baseline: {name} mount, big file cold", p["big_cold_MBps"], "MB/s")
        ctx.row("reads", f"  baseline: {name} mount, big file second read", p["big_warm_MBps"],
                "MB/s")
        ctx.row("reads", f"  baseline: {name} mount, small files cold", p["small_cold_files_s"],
                "files/s")
    for name in ("borg", "restic"):
        if name not in peers:
            ctx.row("reads", f"  baseline: {name} mount", None, "",
                    note="skipped: " + raw.get(f"{name}_skipped", "?")[:60])


# ---------------------------------------------------------------- dedup
def sec_dedup(ctx: Ctx) -> None:
    versions = ["v1", "v2", "v3", "v4"]
    logical_sum = sum(ctx.info["versions"][v]["bytes"] for v in versions)
    raw: dict[str, Any] = {"logical_bytes": logical_sum}
    ctx.raw["dedup"] = raw

    root = fresh(ctx.work / "dd")
    d = Daemon(root, "dedup").start()
    steps = []
    try:
        (d.mnt / "ds").mkdir()
        for v in versions:
            os.sync()
            cp_s = cp_a(ctx.data / v, d.mnt / "ds" / v)
            flush_s = timed(d.flush)
            d.check_alive()
            st = d.stats()
            steps.append({"version": v, "cp_s": round(cp_s, 3), "flush_s": round(flush_s, 3),
                          "logical_bytes": st["logical_bytes"], "stored_bytes": st["stored_bytes"],
                          "store_dir_bytes": du_apparent(d.store), "chunks": st["chunks"],
                          "packs": st["packs"], "rss_kib": d.rss()})
            log(f"[dedup] dmsfs after {v}: cp {cp_s:.2f} s, flush {flush_s:.2f} s, "
                f"stored {st['stored_bytes'] / MiB:.1f} MiB, ratio {st['dedup_ratio']}")
    finally:
        d.stop()
        warn_log_errors(d)
    ctx.keep_or_remove(root)
    raw["dmsfs"] = steps

    rsteps = []
    try:
        baselines.require(ctx.tools, "restic")
        rroot = fresh(ctx.work / "rdd")
        rs = baselines.Restic(ctx.tools, rroot / "repo", rroot / "cache")
        rs.init()
        for v in versions:
            os.sync()
            secs = rs.backup(v, ctx.data)
            rsteps.append({"version": v, "backup_s": round(secs, 3),
                           "repo_bytes": du_apparent(rroot / "repo")})
            log(f"[dedup] restic after {v}: {secs:.2f} s, repo "
                f"{rsteps[-1]['repo_bytes'] / MiB:.1f} MiB")
        ctx.keep_or_remove(rroot)
    except BenchError as e:
        log(f"[dedup] restic skipped: {e}")
        raw["restic_skipped"] = str(e)
    raw["restic"] = rsteps

    last = steps[-1]
    if last["logical_bytes"] != logical_sum:
        log(f"warning: dmsfs logical bytes {last['logical_bytes']} != tree bytes {logical_sum}")
    ratio = last["logical_bytes"] / last["stored_bytes"]
    ratio_dir = logical_sum / last["store_dir_bytes"]
    added = [steps[i]["stored_bytes"] - steps[i - 1]["stored_bytes"] for i in range(1, 4)]
    if rsteps:
        r_ratio = logical_sum / rsteps[-1]["repo_bytes"]
        r_added = [rsteps[i]["repo_bytes"] - rsteps[i - 1]["repo_bytes"] for i in range(1, 4)]
        ctx.row("dedup", "dedup ratio, 4 versions (logical/stored)", ratio, "×",
                "restic logical/repo size", r_ratio, target="≥ restic's", met=ratio >= r_ratio)
        ctx.row("dedup", "  same, logical / store dir size", ratio_dir, "×",
                "restic logical/repo size", r_ratio)
        for i, what in enumerate(["v2: 1% of small files rewritten", "v3: rows appended",
                                  "v4: 4 KiB inserted in a blob"]):
            ctx.row("dedup", f"  bytes added by {what}", added[i] / MiB, "MiB",
                    "restic, same step", r_added[i] / MiB,
                    target="(less is better)" if i == 0 else "")
    else:
        ctx.row("dedup", "dedup ratio, 4 versions (logical/stored)", ratio, "×",
                note="restic skipped")
        ctx.row("dedup", "  bytes added by v2", added[0] / MiB, "MiB")
    raw["dmsfs_ratio"] = ratio
    raw["dmsfs_added"] = added


# ---------------------------------------------------------------- memory
def sec_rss(ctx: Ctx) -> None:
    """One daemon: big files, then 3,000 small files, then 2,500 more: RSS after each."""
    root = fresh(ctx.work / "m")
    d = Daemon(root, "rss").start()
    points = []
    try:
        (d.mnt / "ds").mkdir()
        points.append(("idle after mount", 0, d.rss()))
        cp_a(ctx.data / "v1" / "blobs", d.mnt / "ds" / "blobs")
        d.flush()
        points.append(("after 2 big blobs (cp + flush)", 2, d.rss()))
        baselines.tar_x(ctx.data / "small3k.tar", d.mnt / "ds")
        d.flush()
        n3k = ctx.info["tar"]["files"]
        points.append((f"after +{n3k} small files (tar -x)", 2 + n3k, d.rss()))
        cp_a(ctx.data / "v1" / "small", d.mnt / "ds" / "small")
        d.flush()
        nsm = ctx.info["v1_small"]["files"]
        points.append((f"after +{nsm} more small files (cp -a)", 2 + n3k + nsm, d.rss()))
        d.check_alive()
    finally:
        d.stop()
        warn_log_errors(d)
    rmtree(root)
    ctx.raw["rss"] = [{"when": w, "files": n, **st} for w, n, st in points]
    for w, _n, st in points:
        ctx.row("rss", f"daemon RSS {w}", st.get("VmRSS", 0) / 1024, "MiB")
    (_, n1, s1), (_, n2, s2) = points[1], points[-1]
    per_k = (s2.get("VmRSS", 0) - s1.get("VmRSS", 0)) / max(1, (n2 - n1) / 1000)
    ctx.row("rss", "  RSS growth per 1,000 files written", per_k / 1024, "MiB")
    parts = [f"{w}: {st.get('VmRSS', 0) / 1024:.0f} MiB" for w, _n, st in points]
    log("[rss] " + ", ".join(parts))


# ---------------------------------------------------------------- profile
def profile_ingest(ctx: Ctx) -> None:
    """Untimed extra ingest under py-spy (sampling, non-blocking): where the daemon spends time."""
    if not PYSPY.exists():
        log("[profile] py-spy not in the venv; skipped")
        return
    root = fresh(ctx.work / "p")
    d = Daemon(root, "profile").start()
    rawfile = OUT / "profile-ingest.raw"
    try:
        (d.mnt / "ds").mkdir()
        spy = Spy(d.pid, rawfile).start()
        cp_a(ctx.data / "v1", d.mnt / "ds" / "v1")
        d.flush()
        spy.stop()
    finally:
        d.stop()
    rmtree(root)
    summary = summarize_pyspy(rawfile)
    (OUT / "profile-ingest.txt").write_text(summary)
    log(f"[profile] py-spy profile of an ingest: {OUT / 'profile-ingest.txt'}")
    sys.stderr.write(summary)


# ---------------------------------------------------------------- output
def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):
        return f"{v:,}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def table(rows: list[Row]) -> str:
    head = ["section", "figure", "dmsfs", "unit", "baseline", "base", "ratio", "target", "result"]
    lines = []
    for r in rows:
        res = "" if r.met is None else ("met" if r.met else "MISSED")
        lines.append([r.section, r.figure, fmt(r.value), r.unit, r.baseline,
                      fmt(r.baseline_value) if r.baseline_value is not None else "",
                      f"{r.ratio:.2f}×" if r.ratio is not None else "", r.target,
                      res + (f" ({r.note})" if r.note else "")])
    widths = [max(len(h), *(len(x[i]) for x in lines)) if lines else len(h)
              for i, h in enumerate(head)]
    right = {2, 5, 6}

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    out = [line(head), line(["-" * w for w in widths])]
    prev = None
    for x in lines:
        if prev is not None and x[0] != prev:
            out.append("")
        prev = x[0]
        out.append(line(x))
    return "\n".join(out)


def meta(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    def git(*a: str) -> str:
        r = run(["git", "-C", str(HERE.parent), *a], check=False)
        return r.stdout.strip()
    return {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
            "kernel": platform.release(), "cpus": os.cpu_count(),
            "mem_total_kib": int(next(line.split()[1] for line in open("/proc/meminfo")
                                      if line.startswith("MemTotal"))),
            "git_rev": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain")),
            "args": vars(args), "workdir": str(work), "root": os.geteuid() == 0}


# ---------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="sections: " + ", ".join(SECTIONS))
    p.add_argument("--quick", action="store_true",
                   help="~100 MiB workload, 1 repetition: for trying the bench out")
    p.add_argument("--only", metavar="SECTION[,SECTION]",
                   help="run only these sections (" + ", ".join(SECTIONS) + ")")
    p.add_argument("--keep", action="store_true",
                   help="keep the work dir (a kept workload is reused by the next run)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/dmsb"),
                   help="work dir on local disk; keep the path short (default /tmp/dmsb)")
    p.add_argument("--reps", type=int, help="repetitions per cheap figure (default 3, quick 1)")
    p.add_argument("--profile", action="store_true",
                   help="also profile the daemon with py-spy (untimed): an ingest when the "
                   "ingest section runs, snapshots when the snapshot section runs, validated "
                   "writes and a row diff for the validation sections; summaries in bench/out/")
    args = p.parse_args(argv)
    if args.only:
        bad = [s for s in args.only.split(",") if s not in SECTIONS]
        if bad:
            p.error(f"unknown section(s) {', '.join(bad)}; choose from {', '.join(SECTIONS)}")
    return args


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGHUP, _sigterm)
    work = args.workdir.resolve()
    wanted = args.only.split(",") if args.only else SECTIONS
    reps = args.reps or (1 if args.quick else 3)
    OUT.mkdir(exist_ok=True)
    t_start = time.monotonic()
    results: dict[str, Any] = {"meta": meta(args, work)}
    ctx: Ctx | None = None
    interrupted = False
    try:
        if work.exists():
            for m in mounts_under(work):  # left by a killed run
                log(f"unmounting stale {m}")
                unmount(m, lazy=True)
        work.mkdir(parents=True, exist_ok=True)
        params = workload.Params.quick() if args.quick else workload.Params.full()
        data = work / ("data-quick" if args.quick else "data")
        tools = baselines.Tools()
        info: dict[str, Any] = {}
        if not set(wanted) <= {*validation.SECTIONS, *s3.OWN_DATA}:  # those need neither
            info = workload.prepare(data, params, log)
            tools.ensure()
            for k, v in tools.why.items():
                log(f"note: {k}: {v}")
            results["meta"]["tools"] = tools.versions
            results["workload"] = {k: v for k, v in info.items() if k != "v2_rewritten"}
        ctx = Ctx(args, work, data, info, tools, reps)
        if set(wanted) & set(snapshots.SECTIONS):
            ctx.snapinfo = snapshots.prepare(work, args.quick)
        if set(wanted) & set(validation.SECTIONS):
            ctx.valinfo = validation.prepare(work, args.quick)
            results["validation_data"] = ctx.valinfo
        if set(wanted) & set(s3.SECTIONS):
            results["s3_data"] = s3.prepare(work, args.quick)
        funcs = {"ingest": sec_ingest, "smallfiles": sec_smallfiles, "reads": sec_reads,
                 "dedup": sec_dedup, "rss": sec_rss, "snapshot": snapshots.sec_snapshot,
                 "diff": snapshots.sec_diff, "snapread": snapshots.sec_snapread,
                 "lsR": snapshots.sec_lsR, "validate": validation.sec_validate,
                 "validate1g": validation.sec_validate1g, "rowdiff": validation.sec_rowdiff,
                 "rowdiff10m": validation.sec_rowdiff10m,
                 "s3ingest": s3.sec_s3ingest, "s3coldread": s3.sec_s3coldread,
                 "s3smallfiles": s3.sec_s3smallfiles, "s3puts": s3.sec_s3puts}
        for name in SECTIONS:
            if name not in wanted:
                continue
            t0 = time.monotonic()
            log(f"== {name}")
            fl = ForeignLoad()
            fl.start()
            try:
                funcs[name](ctx)
            except Exception as e:  # one broken section must not hide the others
                ctx.errors[name] = f"{type(e).__name__}: {e}"
                log(f"[{name}] FAILED: {e}")
                traceback.print_exc(file=sys.stderr)
                PROCS.stop_all()
            foreign, who = fl.stop()
            ctx.raw.setdefault("foreign_load_cores", {})[name] = {"cores": round(foreign, 2),
                                                                  "top": who}
            if foreign > 0.15:
                ctx.warnings.append(f"{name}: other processes on this machine used "
                                    f"{foreign:.2f} cores meanwhile ({who}); "
                                    "its figures may be low")
                log(f"warning: {ctx.warnings[-1]}")
            log(f"== {name}: {time.monotonic() - t0:.0f} s")
        if PEAK["kib"]:
            peak = int(PEAK["kib"]) / 1024  # type: ignore[call-overload]
            ctx.row("rss", "daemon peak RSS (VmHWM), whole run", peak, "MiB",
                    target="≤150 MiB", met=peak <= 150, note=f"in {PEAK['where']}")
        if args.profile and "ingest" in wanted:
            profile_ingest(ctx)
        if args.profile:
            snapshots.profile(ctx, OUT, wanted)
            validation.profile(ctx, OUT, wanted)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: cleaning up")
    finally:
        PROCS.stop_all()
        for m in mounts_under(work):
            unmount(m, lazy=True)
        if not args.keep:
            rmtree(work)
        if ctx is not None:
            results["rows"] = [r.__dict__ for r in ctx.rows]
            results["raw"] = ctx.raw
            results["errors"] = ctx.errors
            results["warnings"] = ctx.warnings
        results["seconds"] = round(time.monotonic() - t_start, 1)
        results["interrupted"] = interrupted
        (OUT / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    assert ctx is not None or interrupted
    if ctx is not None:
        print(table(ctx.rows))
        for w in ctx.warnings:
            print(f"\nwarning: {w}")
        for name, err in ctx.errors.items():
            print(f"\n{name}: FAILED: {err[:2000]}")
        print(f"\n{'quick, ' if args.quick else ''}{reps} rep(s); MB = 10^6 B, MiB = 2^20 B; "
              f"{results['seconds']:.0f} s; details in {OUT / 'results.json'}")
    if interrupted:
        return 130
    return 1 if ctx is not None and ctx.errors else 0


if __name__ == "__main__":
    sys.exit(main())
