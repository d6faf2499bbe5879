"""S3 sections of the bench: s3ingest, s3coldread, s3smallfiles, s3puts.

The S3 service is moto (tests/s3env.py: `moto_server` in a subprocess on loopback,
one per section, so its memory goes with it); "20 ms" runs go through FaultProxy
(in this process) with delay = 20 ms before each request is forwarded.  dmsfs
daemons get the dummy AWS credentials of s3_env() and --s3-endpoint (moto, or the
proxy).

    s3ingest      cp -a of the workload's v1 tree into an s3:// mount + dmsctl flush
                  ("close-durable"), then until `stats` says backlog.objects == 0
                  ("uploaded"); the same into a file:// mount in the same round (there
                  close-durable = uploaded).  Direct to moto and with 20 ms per request.
                  Target: s3 uploaded >= 0.7x file://.
    s3coldread    cat of a 128 MiB file in @v1 on a --read-only s3 mount with a fresh
                  state dir (empty disk cache) after drop_caches, 20 ms per request:
                  target >= 200 MB/s.  Warm: a new read-only mount over the same state
                  dir (the disk cache kept, the daemon's memory and the page cache not)
                  after drop_caches, against a file:// mount's cold read of the same
                  file: target >= 0.8x.  The ceiling: ranged 4 MiB GETs of the same pack
                  objects with boto3 in a subprocess, 8 threads (the daemon's fetchers)
                  and 1, direct and through the proxy.
    s3smallfiles  3,000 files of 1-16 KiB in @v1, read whole in random order on a cold
                  read-only s3 mount (fresh state, drop_caches), 20 ms per request:
                  target >= 500 files/s; file:// mount and local disk, cold, as baselines.
    s3puts        PUT and POST requests the proxy sees while 3,000 small files are
                  tar -x'ed into an s3 mount, flushed and uploaded (then also after one
                  snapshot, uploaded): target <= 100.  The 1-16 KiB files of s3smallfiles
                  (the figure) and the workload's small3k.tar (8-96 KiB).

Reads start once the daemon has raised its mount's read-ahead to 1 MiB (it does so
0.2 s after the mount appears; a file opened before that keeps the kernel's 128 KiB),
on s3 and file:// mounts alike.  Ratios are medians of per-round ratios (s3 and
file:// measured one after the other in each round).  Each S3 row notes the CPU moto
used meanwhile: moto is one Python process and, on a 2-core machine, a limit of its
own.  The proxy's requests are counted by method and key (packs, versions, head,
lease) and timed (admitted to relayed), which gives the GETs-in-flight figures.

The data (under WORK/data-s3, made once, reused with --keep): big128.bin (128 MiB,
random) and small/ + small.tar (3,000 random files of 1-16 KiB in 30 directories).
Buckets live in moto's memory and are made again by every run.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
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
    log,
    made_before,
    median,
    rate,
    read_files,
    rmtree,
    run,
    timed,
    wait_mount,
)
from dmsd import (
    CLK_TCK,
    DMSFSD,
    PYSPY,
    CpuMeter,
    Daemon,
    Spy,
    summarize_pyspy,
    thread_times,
    warn_log_errors,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import s3env  # noqa: E402
from s3env import FaultProxy, MotoServer, s3_env  # noqa: E402

SECTIONS = ["s3ingest", "s3coldread", "s3smallfiles", "s3puts"]
OWN_DATA = ["s3coldread", "s3smallfiles"]   # need none of workload.py's data
GEN = 1                       # bump when the data below changes
BIG = 128 * MiB
SMALL_FILES = 3000
SMALL_MIN, SMALL_MAX = 1024, 16 * 1024
DELAY = 0.020                 # seconds the proxy adds to every request
DS = "ds"
PREFIX = "store"              # s3://BUCKET/store
BLOCK = 4 << 20               # the ceiling's ranged GETs
FETCHERS = 8                  # its fetch threads (blockcache.FETCHERS)


# ---------------------------------------------------------------- data
def data_dir(work: Path) -> Path:
    return work / "data-s3"


def prepare(work: Path, quick: bool = False) -> dict[str, Any]:
    """Make (or reuse) WORK/data-s3; a description of it."""
    data = data_dir(work)
    want = {"gen": GEN, "big": BIG, "files": SMALL_FILES, "min": SMALL_MIN, "max": SMALL_MAX}
    if (done := made_before(data, want)) is not None:
        return done
    t0 = time.monotonic()
    with open(data / "big128.bin", "wb") as f:
        rng = random.Random(1280)
        for _ in range(BIG // MiB):
            f.write(rng.randbytes(MiB))
    rng = random.Random(16)
    nbytes = 0
    for i in range(SMALL_FILES):
        path = data / "small" / f"d{i % 30:02d}" / f"s{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = rng.randbytes(rng.randint(SMALL_MIN, SMALL_MAX))
        path.write_bytes(payload)
        nbytes += len(payload)
    with tarfile.open(data / "small.tar", "w") as tf:
        tf.add(data / "small", arcname="small")
    info = dict(want)
    info.update(small_bytes=nbytes, seconds=round(time.monotonic() - t0, 1))
    (data / "stamp.json").write_text(json.dumps(info, indent=1))
    log(f"s3 data: generated in {info['seconds']} s ({SMALL_FILES} files, "
        f"{nbytes / MiB:.1f} MiB; big file {BIG // MiB} MiB)")
    return info


def small_rels(data: Path) -> list[str]:
    """The small files' paths relative to small/'s parent, in a fixed random order."""
    rels = sorted(str(p.relative_to(data)) for p in (data / "small").rglob("*.bin"))
    random.Random(7).shuffle(rels)
    return rels


# ---------------------------------------------------------------- S3 service
def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a process so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


_current = threading.local()   # the request a proxy thread is relaying: (start, method, target)


def _timed_serve_one(orig: Callable[[Any], bool]) -> Callable[[Any], bool]:
    def serve_one(pipe: Any) -> bool:
        try:
            return orig(pipe)
        finally:
            req = getattr(_current, "req", None)
            spans = getattr(pipe.proxy, "spans", None)
            if req is not None and spans is not None:
                _current.req = None
                spans.append((req[0], time.perf_counter(), req[1], req[2]))
    serve_one.timed = True  # type: ignore[attr-defined]
    return serve_one


class S3Env:
    """moto on loopback and a FaultProxy in front of it, for one section.

    The proxy also records when each request was admitted and when its response was
    relayed (`spans`), for the GETs-in-flight figures: a wrapper around FaultProxy's
    request accounting, nothing in tests/ changes."""

    def __init__(self) -> None:
        self.moto = MotoServer()
        PROCS.add(self.moto.proc, None)  # type: ignore[arg-type]  # stopped also on Ctrl-C
        self.proxy = FaultProxy(self.moto.url)
        self._n = 0
        self.spans: list[tuple[float, float, str, str]] = []
        pipe_cls = getattr(s3env, "_Pipe", None)
        if pipe_cls is not None and not getattr(pipe_cls.serve_one, "timed", False):
            pipe_cls.serve_one = _timed_serve_one(pipe_cls.serve_one)
        self.proxy.spans = self.spans  # type: ignore[attr-defined]
        admit = self.proxy._admit

        def timed_admit(method: str, target: str) -> Any:
            _current.req = (time.perf_counter(), method, target)
            return admit(method, target)
        self.proxy._admit = timed_admit  # type: ignore[method-assign]

    def bucket(self, name: str) -> str:
        self._n += 1
        return self.moto.make_bucket(f"dmsb-{name}-{self._n}")

    def drop(self, bucket: str) -> None:
        with contextlib.suppress(Exception):  # moto's memory only
            self.moto.drop_bucket(bucket)

    def endpoint(self, delay: float | None) -> str:
        """moto itself (None), or the proxy with this delay per request."""
        if delay is None:
            return self.moto.url
        self.proxy.delay = delay
        return self.proxy.url

    def close(self) -> None:
        self.proxy.close()
        self.moto.stop()
        PROCS.forget(self.moto.proc)  # type: ignore[arg-type]


@contextlib.contextmanager
def s3_service() -> Iterator[S3Env]:
    env = S3Env()
    try:
        yield env
    finally:
        env.close()


class S3Daemon(Daemon):
    """dmsfsd over s3://BUCKET/store (Daemon's state dir, mount point and log)."""

    def __init__(self, root: Path, name: str, bucket: str, endpoint: str,
                 read_only: bool = False) -> None:
        super().__init__(root, name, ["--s3-endpoint", endpoint]
                         + (["--read-only"] if read_only else []))
        self.url = f"s3://{bucket}/{PREFIX}"

    def start(self) -> S3Daemon:
        assert self.proc is None
        self.mnt.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [DMSFSD, self.url, str(self.mnt), "--state", str(self.state), "--foreground",
                 *self.extra], env=s3_env(), stdout=logf, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
        PROCS.add(self.proc, self.mnt)
        wait_mount(self.mnt, self.proc, "dmsfsd", self.log, timeout=300)
        self._stop_sampling.clear()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        return self


def api(d: Daemon) -> Any:
    from dmsfs.client import Client  # the product's own SDK, as dmsctl uses it

    c = Client(f"unix:{d.state / 'api.sock'}")
    c.whoami()
    return c


def wait_uploaded(c: Any, timeout: float = 900) -> float:
    """Poll the daemon's stats until nothing waits for upload; perf_counter() then."""
    deadline = time.monotonic() + timeout
    while True:
        if c.stats()["backlog"]["objects"] == 0:
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise BenchError(f"upload backlog not empty after {timeout:.0f} s")
        time.sleep(0.05)


def key_class(target: str) -> str:
    """packs, versions, lease, head, ... of a proxied request's path-style target."""
    path = target.split("?", 1)[0].lstrip("/")
    parts = path.split("/")
    if len(parts) < 2 or not parts[1]:
        return "bucket"        # HeadBucket, ListObjects (the key is in the query)
    rest = parts[2:] if parts[1] == PREFIX else parts[1:]
    return rest[0] if rest else "list"


class Meter:
    """Wall time, CPU of the daemon (by thread group) / moto / this process (the proxy)
    and the proxy's requests between start() and stop(); env None: the daemon alone."""

    def __init__(self, env: S3Env | None, d: Daemon | None) -> None:
        self.env, self.d = env, d

    def start(self) -> Meter:
        self.cpu = CpuMeter(self.d.pid) if self.d else None
        if self.cpu:
            self.cpu.start()
            self.threads0 = thread_times(self.cpu.pid)
        if self.env:
            self.moto0 = proc_cpu(self.env.moto.proc.pid)
            self.seen0 = len(self.env.proxy.seen)
        self.self0 = time.process_time()
        self.t0 = time.perf_counter()
        return self

    def stop(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.t0
        out: dict[str, Any] = {"wall_s": round(wall, 3), "moto_cores": 0.0,
                               "proxy_cores": 0.0, "requests": {}, "by_key": {}}
        if self.env:
            seen = self.env.proxy.seen[self.seen0:]
            by = Counter(f"{m} {key_class(t)}" for m, t in seen)
            out.update(
                moto_cores=round((proc_cpu(self.env.moto.proc.pid) - self.moto0) / wall, 2),
                proxy_cores=round((time.process_time() - self.self0) / wall, 2),
                requests=dict(Counter(m for m, _ in seen)),
                by_key=dict(sorted(by.items(), key=lambda x: -x[1])))
            out.update(in_flight(self.env.spans, self.t0, self.t0 + wall, "GET"))
        if self.cpu:
            after = thread_times(self.cpu.pid)
            out["daemon"] = self.cpu.stop()
            groups: Counter[str] = Counter({"main": 0.0, "trio workers": 0.0, "other": 0.0})
            for tid, (name, secs) in after.items():
                groups[thread_group(name, tid == self.cpu.pid)] += \
                    secs - self.threads0.get(tid, ("", 0.0))[1]
            out["daemon"]["cpu_s_by_thread"] = {k: round(v, 2) for k, v in groups.items()}
        return out


def in_flight(spans: list[tuple[float, float, str, str]], t0: float, t1: float,
              method: str) -> dict[str, Any]:
    """How many `method` requests were in flight through the proxy between t0 and t1:
    the most at once, the time-weighted mean, and the share of the time with none."""
    events = []
    for a, b, m, _ in list(spans):
        if m == method and b > t0 and a < t1:
            events += [(max(a, t0), 1), (min(b, t1), -1)]
    if not events:
        return {}
    events.sort()
    busy = area = 0.0
    cur = top = 0
    last = t0
    for t, step in events:
        if cur:
            busy += t - last
            area += cur * (t - last)
        cur += step
        top = max(top, cur)
        last = t
    wall = t1 - t0
    return {f"{method}_in_flight_max": top, f"{method}_in_flight_mean": round(area / wall, 2),
            f"{method}_none_in_flight": round(1 - busy / wall, 2),
            f"{method}_median_ms": round(1000 * median([b - a for a, b, m, _ in spans
                                                        if m == method and t0 < b and a < t1]),
                                       1)}


def flight_note(m: dict[str, Any]) -> str:
    if "GET_in_flight_max" not in m:
        return ""
    return (f"GETs in flight: max {m['GET_in_flight_max']}, mean {m['GET_in_flight_mean']}, "
            f"none {m['GET_none_in_flight']:.0%} of the time; median GET "
            f"{m['GET_median_ms']} ms")


def thread_group(name: str, main: bool) -> str:
    """main (trio + FUSE), trio workers (named by trio), other: the threads Python
    leaves unnamed for the OS, i.e. the spool's uploaders and boto3's transfer threads
    in a writer, the block cache's fetchers in a reader."""
    if main:
        return "main"
    if name.startswith("Trio"):
        return "trio workers"
    return "other"


def cpu_note(m: dict[str, Any]) -> str:
    d = m.get("daemon", {})
    return (f"moto {m['moto_cores']:.2f}, daemon {d.get('cores_busy', 0):.2f}, "
            f"proxy {m['proxy_cores']:.2f} cores")


CEILING = r"""
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
import boto3
from botocore.config import Config
url, bucket, prefix, threads, block, limit = sys.argv[1:7]
threads, block, limit = int(threads), int(block), int(limit)
c = boto3.session.Session().client("s3", endpoint_url=url, config=Config(
    max_pool_connections=64, retries={"total_max_attempts": 1},
    s3={"addressing_style": "path"}))
objs = [(o["Key"], o["Size"]) for p in c.get_paginator("list_objects_v2").paginate(
    Bucket=bucket, Prefix=prefix) for o in p.get("Contents", [])]
jobs = [(k, off, min(block, size - off)) for k, size in sorted(objs)
        for off in range(0, size, block)][:limit or None]
def get(job):
    k, off, n = job
    return len(c.get_object(Bucket=bucket, Key=k, Range=f"bytes={off}-{off + n - 1}")
               ["Body"].read())
c.head_bucket(Bucket=bucket)
t0 = time.perf_counter()
with ThreadPoolExecutor(threads) as ex:
    total = sum(ex.map(get, jobs))
print(json.dumps({"bytes": total, "seconds": time.perf_counter() - t0, "requests": len(jobs)}))
"""


def ceiling(env: S3Env, bucket: str, delay: float | None, threads: int, block: int,
            limit: int = 0) -> dict[str, Any]:
    """Ranged GETs of the bucket's packs with boto3 alone (a subprocess: no GIL shared
    with the proxy), in blocks, `threads` at a time."""
    url = env.endpoint(delay)
    m = Meter(env, None).start()
    out = run([sys.executable, "-c", CEILING, url, bucket, f"{PREFIX}/packs/", str(threads),
               str(block), str(limit)], env=s3_env(), timeout=900).stdout
    usage = m.stop()
    res = json.loads(out.strip().splitlines()[-1])
    res.update(MBps=rate(res["bytes"] / MB, res["seconds"]),
               req_s=rate(res["requests"], res["seconds"]),
               moto_cores=round(usage["moto_cores"] * usage["wall_s"] / res["seconds"], 2))
    return res


# ---------------------------------------------------------------- helpers
def cp_tree(src: Path, dst: Path) -> float:
    t0 = time.perf_counter()
    run(["cp", "-a", str(src), str(dst)])
    return time.perf_counter() - t0


def setup_s3(ctx: Any, env: S3Env, name: str, fill: Callable[[Path], None]
             ) -> tuple[str, dict[str, Any]]:
    """A bucket with dataset ds filled by fill(ds dir) and snapshotted as v1, uploaded
    (a writer daemon straight to moto, stopped after)."""
    bucket = env.bucket(name)
    root = fresh(ctx.work / f"s3-{name}-w")
    d = S3Daemon(root, f"{name}-writer", bucket, env.endpoint(None))
    d.start()
    try:
        (d.mnt / DS).mkdir()
        t0 = time.perf_counter()
        fill(d.mnt / DS)
        d.flush()
        c = api(d)
        rec = c.snapshot(DS, message="bench")
        if rec["number"] != 1:
            raise BenchError(f"first snapshot of {DS} is v{rec['number']}")
        up = wait_uploaded(c) - t0
        st = c.stats()
        d.check_alive()
    finally:
        d.stop()
        warn_log_errors(d)
    rmtree(root)
    return bucket, {"setup_s": round(up, 2), "packs": st["packs"], "chunks": st["chunks"]}


def setup_file(ctx: Any, name: str, fill: Callable[[Path], None]) -> Path:
    """A file:// store (root) with the same dataset and snapshot; kept with --keep."""
    root = ctx.work / f"s3-{name}-file"
    want = {"gen": GEN, "name": name}
    stamp = root / "bench-stamp.json"
    with contextlib.suppress(OSError, ValueError):
        if json.loads(stamp.read_text()) == want:
            return root
    fresh(root)
    d = Daemon(root, f"{name}-file-writer").start()
    try:
        (d.mnt / DS).mkdir()
        fill(d.mnt / DS)
        d.flush()
        rec = api(d).snapshot(DS, message="bench")
        if rec["number"] != 1:
            raise BenchError(f"first snapshot of {DS} is v{rec['number']}")
    finally:
        d.stop()
    stamp.write_text(json.dumps(want))
    return root


READ_AHEAD_KB = 1024   # what dmsfsd sets on its mount (daemon/app.py), 0.2 s after mounting
RA_AT_MOUNT: list[int] = []   # the read-ahead each mount had when it appeared


def settle_read_ahead(mnt: Path, timeout: float = 2.0) -> int:
    """Wait until the daemon has raised the mount's read-ahead (it does so in a task
    0.2 s after the mount appears; a file opened before keeps the kernel's 128 KiB for
    good); the value the mount had when it appeared."""
    devs = [line.split()[2] for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4] == str(mnt)]
    if not devs:
        return -1
    ra = Path(f"/sys/class/bdi/{devs[-1]}/read_ahead_kb")
    first = int(ra.read_text())
    deadline = time.monotonic() + timeout
    while int(ra.read_text()) < READ_AHEAD_KB and time.monotonic() < deadline:
        time.sleep(0.02)
    RA_AT_MOUNT.append(first)
    return first


def ro_s3(ctx: Any, env: S3Env, bucket: str, name: str, delay: float | None,
          fresh_state: bool) -> tuple[S3Daemon, float]:
    """A read-only daemon over the bucket (a fresh state dir: empty disk cache), started
    after drop_caches, its read-ahead raised; (daemon, seconds until mounted)."""
    root = ctx.work / f"s3-{name}-ro"
    if fresh_state:
        fresh(root)
    d = S3Daemon(root, f"{name}-ro", bucket, env.endpoint(delay), read_only=True)
    drop_caches()
    t0 = time.perf_counter()
    d.start()
    secs = time.perf_counter() - t0
    settle_read_ahead(d.mnt)
    return d, secs


def ro_file(root: Path, name: str) -> Daemon:
    """A read-only daemon over a file:// store, started after drop_caches, its
    read-ahead raised."""
    d = Daemon(root, name, ["--read-only"])
    drop_caches()
    d.start()
    settle_read_ahead(d.mnt)
    return d


def spy_on(d: Daemon, name: str, what: str, fn: Callable[[], object]) -> None:
    """fn() with py-spy recording the daemon (untimed); summary to bench/out."""
    if not PYSPY.exists():
        log("[profile] py-spy not in the venv; skipped")
        return
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    rawfile = out / f"profile-{name}.raw"
    spy = Spy(d.pid, rawfile, rate=250).start()
    cpu = CpuMeter(d.pid)
    cpu.start()
    t0 = time.perf_counter()
    try:
        fn()
    finally:
        wall = time.perf_counter() - t0
        usage = cpu.stop()
        spy.stop()
    text = (f"{what}: {wall:.3f} s wall, daemon CPU {usage['cpu_s']:.2f} s (main thread "
            f"{usage['main_thread_busy']:.0%} busy); py-spy at 250 Hz, --threads, idle "
            "threads not sampled\n" + summarize_pyspy(rawfile))
    (out / f"profile-{name}.txt").write_text(text)
    log(f"[profile] {out / f'profile-{name}.txt'}")
    sys.stderr.write(text)


# ---------------------------------------------------------------- s3ingest
def _ingest_file(ctx: Any, src: Path, r: int) -> dict[str, Any]:
    root = fresh(ctx.work / f"s3i-file{r}")
    d = Daemon(root, f"s3ingest-file#{r + 1}").start()
    try:
        (d.mnt / DS).mkdir()
        os.sync()
        m = Meter(None, d).start()
        cp_s = cp_tree(src, d.mnt / DS / "v1")
        flush_s = timed(d.flush)
        usage = m.stop()
        d.check_alive()
    finally:
        d.stop()
        warn_log_errors(d)
    rmtree(root)
    return {"cp_s": round(cp_s, 3), "flush_s": round(flush_s, 3),
            "durable_s": round(cp_s + flush_s, 3), "uploaded_s": round(cp_s + flush_s, 3),
            "usage": usage, "hwm_kib": d.hwm_kib}


def _ingest_s3(ctx: Any, env: S3Env, src: Path, r: int, delay: float | None,
               profile: bool = False) -> dict[str, Any]:
    tag = "20ms" if delay else "direct"
    bucket = env.bucket(f"ingest-{tag}")
    root = fresh(ctx.work / f"s3i-{tag}{r}")
    d = S3Daemon(root, f"s3ingest-{tag}#{r + 1}", bucket, env.endpoint(delay)).start()
    try:
        (d.mnt / DS).mkdir()
        c = api(d)
        wait_uploaded(c)
        os.sync()
        m = Meter(env, d).start()

        def work() -> tuple[float, float, float]:
            t0 = time.perf_counter()
            run(["cp", "-a", str(src), str(d.mnt / DS / "v1")])
            t1 = time.perf_counter()
            d.flush()
            t2 = time.perf_counter()
            return t0, t1, t2

        if profile:
            box: list[tuple[float, float, float]] = []
            spy_on(d, "s3ingest", f"cp -a {src} + flush + upload, {tag}",
                   lambda: (box.append(work()), wait_uploaded(c)))
            return {}
        t0, t1, t2 = work()
        backlog = c.stats()["backlog"]
        t3 = wait_uploaded(c)
        usage = m.stop()
        st = c.stats()
        d.check_alive()
    finally:
        d.stop()
        warn_log_errors(d)
        rmtree(root)
        env.drop(bucket)
    one = {"cp_s": round(t1 - t0, 3), "flush_s": round(t2 - t1, 3),
           "durable_s": round(t2 - t0, 3), "uploaded_s": round(t3 - t0, 3),
           "backlog_after_flush": backlog, "packs": st["packs"], "usage": usage,
           "hwm_kib": d.hwm_kib}
    return one


def sec_s3ingest(ctx: Any) -> None:
    src = ctx.data / "v1"
    nbytes = ctx.info["versions"]["v1"]["bytes"]
    raw: dict[str, Any] = {"bytes": nbytes, "files": ctx.info["versions"]["v1"]["files"]}
    ctx.raw["s3ingest"] = raw
    runs: dict[str, list[dict[str, Any]]] = {"file": [], "direct": [], "20ms": []}
    with s3_service() as env:
        for r in range(ctx.reps):
            runs["file"].append(_ingest_file(ctx, src, r))
            runs["direct"].append(_ingest_s3(ctx, env, src, r, None))
            runs["20ms"].append(_ingest_s3(ctx, env, src, r, DELAY))
            f, s, s2 = runs["file"][-1], runs["direct"][-1], runs["20ms"][-1]
            log(f"[s3ingest] #{r + 1}: file:// {rate(nbytes / MB, f['uploaded_s']):.0f} MB/s "
                f"(cp {f['cp_s']:.2f} s, daemon CPU {f['usage']['daemon']['cpu_s']:.1f} s); "
                f"s3 cp {s['cp_s']:.2f} / {s2['cp_s']:.2f} s (direct / 20 ms), daemon CPU "
                f"{s['usage']['daemon']['cpu_s']:.1f} / {s2['usage']['daemon']['cpu_s']:.1f} s "
                f"(by thread: file:// {f['usage']['daemon']['cpu_s_by_thread']}, s3 direct "
                f"{s['usage']['daemon']['cpu_s_by_thread']}); "
                f"s3 direct: durable {rate(nbytes / MB, s['durable_s']):.0f}, uploaded "
                f"{rate(nbytes / MB, s['uploaded_s']):.0f} MB/s ({cpu_note(s['usage'])}); "
                f"s3 20 ms: durable {rate(nbytes / MB, s2['durable_s']):.0f}, uploaded "
                f"{rate(nbytes / MB, s2['uploaded_s']):.0f} MB/s ({cpu_note(s2['usage'])}); "
                f"requests {s2['usage']['requests']}")
        if ctx.args.profile:
            _ingest_s3(ctx, env, src, 99, DELAY, profile=True)
    local = []
    for _ in range(ctx.reps):
        dst = ctx.work / "s3i-local"
        rmtree(dst)
        os.sync()
        local.append(baselines.local_cp(src, dst))
        rmtree(dst)
    raw.update(runs=runs, local_cp_s=local)

    def mbps(kind: str, key: str) -> float:
        return median([rate(nbytes / MB, x[key]) for x in runs[kind]])

    def ratio(kind: str, key: str) -> float:
        return median([y["uploaded_s"] / x[key] for x, y in
                       zip(runs[kind], runs["file"], strict=True)])

    fv = mbps("file", "uploaded_s")
    desc = f"cp -a tree ({nbytes / MiB:.0f} MiB) into s3:// + flush, until uploaded"
    rr = ratio("direct", "uploaded_s")
    mid = runs["direct"][len(runs["direct"]) // 2]
    ctx.row("s3ingest", desc, mbps("direct", "uploaded_s"), "MB/s", "file:// cp -a + flush", fv,
            rr, "≥0.7× file://", rr >= 0.7, note=cpu_note(mid["usage"]))
    ctx.row("s3ingest", "  close-durable (cp -a + flush)", mbps("direct", "durable_s"), "MB/s",
            "file:// cp -a + flush", fv, ratio("direct", "durable_s"))
    rr = ratio("20ms", "uploaded_s")
    mid = runs["20ms"][len(runs["20ms"]) // 2]
    ctx.row("s3ingest", "  20 ms per request: until uploaded", mbps("20ms", "uploaded_s"), "MB/s",
            "file:// cp -a + flush", fv, rr, "≥0.7× file://", rr >= 0.7,
            note=cpu_note(mid["usage"]))
    ctx.row("s3ingest", "  20 ms per request: close-durable", mbps("20ms", "durable_s"), "MB/s",
            "file:// cp -a + flush", fv, ratio("20ms", "durable_s"))
    req = mid["usage"]["requests"]
    ctx.row("s3ingest", "  requests (20 ms run): PUT + POST",
            req.get("PUT", 0) + req.get("POST", 0),
            "requests", note=f"{mid['packs']} packs; " + ", ".join(
                f"{k} {v}" for k, v in list(mid["usage"]["by_key"].items())[:5]))

    def cpu(kind: str, group: str | None = None) -> float:
        return median([x["usage"]["daemon"]["cpu_s"] if group is None else
                       x["usage"]["daemon"]["cpu_s_by_thread"][group] for x in runs[kind]])

    ctx.row("s3ingest", "  daemon CPU, cp -a to uploaded (direct)", cpu("direct"), "s",
            "file://, cp -a + flush", cpu("file"))
    for group, what in [("main", "main (trio/FUSE) thread"),
                        ("other", "unnamed threads (s3: uploaders, boto3)")]:
        ctx.row("s3ingest", f"    of which {what}", cpu("direct", group), "s",
                "file://, same", cpu("file", group))
    ctx.row("s3ingest", "  moto CPU during the direct run", median(
        [x["usage"]["moto_cores"] for x in runs["direct"]]), "cores", note=f"of {os.cpu_count()}")
    ctx.row("s3ingest", "  daemon peak RSS (VmHWM), s3 direct / 20 ms",
            max(x["hwm_kib"] for x in runs["direct"] + runs["20ms"]) / 1024, "MiB", "file://",
            max(x["hwm_kib"] for x in runs["file"]) / 1024)
    ctx.row("s3ingest", "  baseline: local cp -a + sync", rate(nbytes / MB, median(local)), "MB/s")


# ---------------------------------------------------------------- s3coldread
def sec_s3coldread(ctx: Any) -> None:
    big = data_dir(ctx.work) / "big128.bin"
    nbig = big.stat().st_size
    raw: dict[str, Any] = {"bytes": nbig}
    ctx.raw["s3coldread"] = raw
    RA_AT_MOUNT.clear()

    def fill(ds: Path) -> None:
        run(["cp", str(big), str(ds / "big.bin")])

    froot = setup_file(ctx, "coldread", fill)
    reps = ctx.reps
    runs, files = [], []
    with s3_service() as env:
        bucket, raw["setup"] = setup_s3(ctx, env, "coldread", fill)
        log(f"[s3coldread] set up: {raw['setup']}")
        for r in range(reps):
            one: dict[str, Any] = {}
            # cold, 20 ms: fresh state dir, page cache dropped
            d, one["mount_s"] = ro_s3(ctx, env, bucket, "coldread", DELAY, fresh_state=True)
            snap = d.mnt / DS / "@v1" / "big.bin"
            try:
                m = Meter(env, d).start()
                one["cold_MBps"] = rate(nbig / MB, cat(snap))
                one["cold"] = m.stop()
                drop_caches()
                m = Meter(env, d).start()
                one["same_mount_MBps"] = rate(nbig / MB, cat(snap))
                one["same_mount"] = m.stop()
                one["disk_cache"] = api(d).stats()["disk_cache"]
                d.check_alive()
            finally:
                d.stop()
            one["hwm_kib"] = d.hwm_kib
            # warm: a new mount over the same state dir (the disk cache), page cache dropped
            d, one["warm_mount_s"] = ro_s3(ctx, env, bucket, "coldread", DELAY, fresh_state=False)
            try:
                m = Meter(env, d).start()
                one["warm_MBps"] = rate(nbig / MB, cat(snap))
                one["warm"] = m.stop()
            finally:
                d.stop()
            # cold without injected latency: straight to moto
            d, one["direct_mount_s"] = ro_s3(ctx, env, bucket, "coldread", None, fresh_state=True)
            try:
                m = Meter(env, d).start()
                one["direct_MBps"] = rate(nbig / MB, cat(snap))
                one["direct"] = m.stop()
            finally:
                d.stop()
            warn_log_errors(d)
            # file://: a fresh read-only mount after drop_caches
            fd = ro_file(froot, "coldread-file")
            try:
                files.append({"cold_MBps": rate(nbig / MB, cat(fd.mnt / DS / "@v1" / "big.bin"))})
            finally:
                fd.stop()
            files[-1]["hwm_kib"] = fd.hwm_kib
            runs.append(one)
            log(f"[s3coldread] #{r + 1}: cold 20 ms {one['cold_MBps']:.0f} MB/s "
                f"({one['cold']['requests'].get('GET', 0)} GETs; {flight_note(one['cold'])}; "
                f"{cpu_note(one['cold'])}); "
                f"same mount after drop_caches {one['same_mount_MBps']:.0f}; new mount, kept "
                f"disk cache {one['warm_MBps']:.0f} ({one['warm']['requests']}); cold direct "
                f"{one['direct_MBps']:.0f} MB/s ({cpu_note(one['direct'])}); "
                f"file:// cold {files[-1]['cold_MBps']:.0f} MB/s; mount (fresh state, 20 ms) "
                f"{one['mount_s']:.2f} s")
        ceil = {
            "direct_8": ceiling(env, bucket, None, FETCHERS, BLOCK),
            "proxy_8": ceiling(env, bucket, DELAY, FETCHERS, BLOCK),
            "proxy0_8": ceiling(env, bucket, 0.0, FETCHERS, BLOCK),
            "direct_1": ceiling(env, bucket, None, 1, BLOCK),
            "proxy_1": ceiling(env, bucket, DELAY, 1, BLOCK),
        }
        for k, v in ceil.items():
            log(f"[s3coldread] ceiling {k}: {v['MBps']:.0f} MB/s, {v['requests']} GETs "
                f"in {v['seconds']:.2f} s, moto {v['moto_cores']} cores")
        if ctx.args.profile:
            d, _ = ro_s3(ctx, env, bucket, "coldread", DELAY, fresh_state=True)
            try:
                spy_on(d, "s3coldread", f"cold cat of the {nbig // MiB} MiB @v1 file, 20 ms",
                       lambda: cat(d.mnt / DS / "@v1" / "big.bin"))
            finally:
                d.stop()
    raw.update(runs=runs, file=files, ceiling=ceil, read_ahead_kb_at_mount=RA_AT_MOUNT[:])
    if any(x < READ_AHEAD_KB for x in RA_AT_MOUNT):
        log(f"[s3coldread] note: the mounts' read-ahead when they appeared: {RA_AT_MOUNT} KiB "
            f"(raised to {READ_AHEAD_KB} ~0.2 s later; reads here start after that)")

    def med(k: str) -> float:
        return median([x[k] for x in runs])

    def ratio(k: str) -> float:
        return median([x[k] / y["cold_MBps"] for x, y in zip(runs, files, strict=True)])

    fv = median([x["cold_MBps"] for x in files])
    mid = runs[len(runs) // 2]
    v = med("cold_MBps")
    ctx.row("s3coldread", f"cat {nbig // MiB} MiB @v1 file, read-only s3 mount, cold, 20 ms/req",
            v, "MB/s", "file:// mount, cold", fv, ratio("cold_MBps"), "≥200 MB/s", v >= 200,
            note=f"medians of {reps}; {cpu_note(mid['cold'])}")
    ctx.row("s3coldread", "  same, no injected latency (daemon straight to moto)",
            med("direct_MBps"), "MB/s", "file:// mount, cold", fv, ratio("direct_MBps"),
            note=cpu_note(mid["direct"]))
    r = ratio("warm_MBps")
    ctx.row("s3coldread", "  warm: new mount, kept disk cache, drop_caches", med("warm_MBps"),
            "MB/s", "file:// mount, cold", fv, r, "≥0.8× file://", r >= 0.8,
            note=f"{mid['warm']['requests'].get('HEAD', 0)} HEADs, "
                 f"{mid['warm']['requests'].get('GET', 0)} GETs meanwhile")
    ctx.row("s3coldread", "  disk cache, same mount, after drop_caches", med("same_mount_MBps"),
            "MB/s", "file:// mount, cold", fv, ratio("same_mount_MBps"))
    gets = mid["cold"]["requests"].get("GET", 0)
    ctx.row("s3coldread", "  GETs during the cold read", gets, "requests",
            note=", ".join(f"{k} {v}" for k, v in list(mid["cold"]["by_key"].items())[:4]))
    ctx.row("s3coldread", "  GETs in flight during the cold read, mean",
            mid["cold"].get("GET_in_flight_mean"), "requests", note=flight_note(mid["cold"]))
    ctx.row("s3coldread", "  mount, fresh state dir (reindex), 20 ms/req", med("mount_s"), "s")
    ctx.row("s3coldread", "  daemon peak RSS (VmHWM), cold read + re-read",
            max(x["hwm_kib"] for x in runs) / 1024, "MiB", "file:// mount, cold read",
            max(x["hwm_kib"] for x in files) / 1024)
    for k, what in [("direct_8", "8 threads, straight to moto"),
                    ("proxy0_8", "8 threads, through the proxy, no delay"),
                    ("proxy_8", "8 threads, through the proxy, 20 ms"),
                    ("direct_1", "1 thread, straight to moto"),
                    ("proxy_1", "1 thread, through the proxy, 20 ms")]:
        c = ceil[k]
        ctx.row("s3coldread", f"  ceiling: boto3 ranged 4 MiB GETs of the packs, {what}",
                c["MBps"], "MB/s", note=f"{c['requests']} GETs, moto {c['moto_cores']} cores")


# ---------------------------------------------------------------- s3smallfiles
def sec_s3smallfiles(ctx: Any) -> None:
    data = data_dir(ctx.work)
    rels = small_rels(data)
    n = len(rels)
    raw: dict[str, Any] = {"files": n}
    ctx.raw["s3smallfiles"] = raw

    def fill(ds: Path) -> None:
        run(["tar", "-xf", str(data / "small.tar"), "-C", str(ds)])

    froot = setup_file(ctx, "smallfiles", fill)
    runs, files, local = [], [], []
    with s3_service() as env:
        bucket, raw["setup"] = setup_s3(ctx, env, "smallfiles", fill)
        log(f"[s3smallfiles] set up: {raw['setup']}")
        for r in range(ctx.reps):
            one: dict[str, Any] = {}
            d, one["mount_s"] = ro_s3(ctx, env, bucket, "smallfiles", DELAY, fresh_state=True)
            top = d.mnt / DS / "@v1"
            try:
                m = Meter(env, d).start()
                one["cold_files_s"] = rate(n, timed(lambda: read_files([top / p for p in rels])))
                one["cold"] = m.stop()
                one["warm_files_s"] = rate(n, timed(lambda: read_files([top / p for p in rels])))
                one["disk_cache"] = api(d).stats()["disk_cache"]
                d.check_alive()
            finally:
                d.stop()
            warn_log_errors(d)
            fd = ro_file(froot, "smallfiles-file")
            try:
                ftop = fd.mnt / DS / "@v1"
                files.append({"cold_files_s": rate(n, timed(
                    lambda: read_files([ftop / p for p in rels])))})
            finally:
                fd.stop()
            drop_caches()
            local.append(rate(n, timed(lambda: read_files([data / p for p in rels]))))
            runs.append(one)
            log(f"[s3smallfiles] #{r + 1}: cold 20 ms {one['cold_files_s']:.0f} files/s "
                f"({one['cold']['requests'].get('GET', 0)} GETs: "
                f"{dict(list(one['cold']['by_key'].items())[:4])}; {flight_note(one['cold'])}; "
                f"{cpu_note(one['cold'])}); "
                f"second pass {one['warm_files_s']:.0f}; file:// cold "
                f"{files[-1]['cold_files_s']:.0f}; local cold {local[-1]:.0f} files/s")
        ceil = ceiling(env, bucket, DELAY, 1, 16 * 1024, limit=100)
        log(f"[s3smallfiles] ceiling: serial 16 KiB GETs through the proxy, 20 ms: "
            f"{ceil['req_s']:.1f}/s")
        if ctx.args.profile:
            d, _ = ro_s3(ctx, env, bucket, "smallfiles", DELAY, fresh_state=True)
            try:
                spy_on(d, "s3smallfiles", f"{n} small files of @v1, random order, cold, 20 ms",
                       lambda: read_files([d.mnt / DS / "@v1" / p for p in rels]))
            finally:
                d.stop()
    raw.update(runs=runs, file=files, local=local, ceiling=ceil)
    v = median([x["cold_files_s"] for x in runs])
    fv = median([x["cold_files_s"] for x in files])
    r = median([x["cold_files_s"] / y["cold_files_s"] for x, y in zip(runs, files, strict=True)])
    mid = runs[len(runs) // 2]
    ctx.row("s3smallfiles", f"{n} files of 1-16 KiB in @v1, random order, cold s3 mount, 20 ms/req",
            v, "files/s", "file:// mount, cold", fv, r, "≥500 files/s", v >= 500,
            note=cpu_note(mid["cold"]))
    ctx.row("s3smallfiles", "  second pass, same mount", median([x["warm_files_s"] for x in runs]),
            "files/s")
    ctx.row("s3smallfiles", "  GETs during the cold pass", mid["cold"]["requests"].get("GET", 0),
            "requests", note=", ".join(f"{k} {c}" for k, c in
                                       list(mid["cold"]["by_key"].items())[:4]))
    ctx.row("s3smallfiles", "  GETs in flight during the cold pass, mean",
            mid["cold"].get("GET_in_flight_mean"), "requests", note=flight_note(mid["cold"]))
    ctx.row("s3smallfiles", "  mount, fresh state dir (reindex), 20 ms/req",
            median([x["mount_s"] for x in runs]), "s")
    ctx.row("s3smallfiles", "  baseline: local disk, cold", median(local), "files/s")
    ctx.row("s3smallfiles", "  ceiling: serial 16 KiB GETs through the proxy, 20 ms",
            ceil["req_s"], "GETs/s", note="files/s if each file cost one GET")


# ---------------------------------------------------------------- s3puts
def _puts(ctx: Any, env: S3Env, tar: Path, name: str) -> dict[str, Any]:
    bucket = env.bucket(f"puts-{name}")
    root = fresh(ctx.work / f"s3p-{name}")
    d = S3Daemon(root, f"s3puts-{name}", bucket, env.endpoint(DELAY)).start()
    try:
        (d.mnt / DS).mkdir()
        c = api(d)
        wait_uploaded(c)
        m = Meter(env, d).start()
        t0 = time.perf_counter()
        run(["tar", "-xf", str(tar), "-C", str(d.mnt / DS)])
        d.flush()
        t1 = wait_uploaded(c)
        ingest = m.stop()
        st = c.stats()
        m = Meter(env, d).start()
        c.snapshot(DS, message="bench")
        t2 = wait_uploaded(c)
        snap = m.stop()
        d.check_alive()
    finally:
        d.stop()
        warn_log_errors(d)
        rmtree(root)
        env.drop(bucket)
    return {"ingest": ingest, "snapshot": snap, "packs": st["packs"],
            "ingest_s": round(t1 - t0, 2), "snapshot_s": round(t2 - t1, 2)}


def _writes(m: dict[str, Any]) -> int:
    return int(m["requests"].get("PUT", 0) + m["requests"].get("POST", 0))


def _by_key(m: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in m["by_key"].items()
                     if k.startswith(("PUT", "POST")))


def sec_s3puts(ctx: Any) -> None:
    data = data_dir(ctx.work)
    raw: dict[str, Any] = {}
    ctx.raw["s3puts"] = raw
    with s3_service() as env:
        raw["small"] = _puts(ctx, env, data / "small.tar", "small")
        raw["small3k"] = _puts(ctx, env, ctx.data / "small3k.tar", "small3k")
    for key, what in [("small", f"{SMALL_FILES} files of 1-16 KiB"),
                      ("small3k", f"{ctx.info['tar']['files']} files of 8-96 KiB (small3k.tar)")]:
        x = raw[key]
        log(f"[s3puts] {what}: ingest {_writes(x['ingest'])} PUT/POST ({_by_key(x['ingest'])}) "
            f"in {x['ingest_s']} s, {x['packs']} packs; snapshot {_writes(x['snapshot'])} more "
            f"({_by_key(x['snapshot'])})")
        v = _writes(x["ingest"])
        ctx.row("s3puts", f"PUT+POST: tar -x {what} + flush, until uploaded", v, "requests",
                target="≤100", met=v <= 100, note=_by_key(x["ingest"]))
        v2 = v + _writes(x["snapshot"])
        ctx.row("s3puts", "  same + one snapshot", v2, "requests", note=_by_key(x["snapshot"]))
