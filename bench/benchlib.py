"""Small helpers shared by the benchmark modules: commands, timing, caches, cleanup."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

MB = 1_000_000
MiB = 1 << 20


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(cmd: Sequence[str], *, cwd: Path | str | None = None, env: dict[str, str] | None = None,
        timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output, raise BenchError with its stderr on failure."""
    full_env = None
    if env:
        full_env = dict(os.environ)
        full_env.update(env)
    r = subprocess.run(list(cmd), cwd=cwd, env=full_env, capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise BenchError(f"{' '.join(map(str, cmd))} -> exit {r.returncode}: "
                         f"{(r.stderr or r.stdout).strip()[-1500:]}")
    return r


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def is_root() -> bool:
    return os.geteuid() == 0


_drop_warned = False


def drop_caches() -> bool:
    """sync + echo 3 > /proc/sys/vm/drop_caches; False (and one warning) when not allowed."""
    global _drop_warned
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError as e:
        if not _drop_warned:
            log(f"note: cannot drop page caches ({e}); 'cold' reads may be warm")
            _drop_warned = True
        return False


def du_apparent(path: Path) -> int:
    """Sum of the sizes of all files under path."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def rmtree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)


def fresh(path: Path) -> Path:
    """An empty directory at path (unmounting and removing what was there)."""
    if path.exists():
        for m in mounts_under(path):
            unmount(m, lazy=True)
        rmtree(path)
    path.mkdir(parents=True)
    return path


def made_before(data: Path, want: dict[str, Any]) -> dict[str, Any] | None:
    """The stamp of generated data in `data` if it was made with the parameters
    `want`; else None, with `data` emptied for a new generation."""
    stamp = data / "stamp.json"
    if stamp.exists():
        info = json.loads(stamp.read_text())
        if {k: info.get(k) for k in want} == want:
            return info  # type: ignore[no-any-return]
    rmtree(data)
    data.mkdir(parents=True)
    return None


def rate(amount: float, seconds: float) -> float:
    return amount / seconds if seconds > 0 else float("inf")


def is_mount(path: Path) -> bool:
    try:
        return os.path.ismount(path)
    except OSError:  # a dead FUSE mount: ENOTCONN
        return True


def unmount(path: Path, lazy: bool = False) -> None:
    args = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [str(path)]
    subprocess.run(args, capture_output=True)


def mounts_under(root: Path) -> list[Path]:
    out = []
    prefix = str(root.resolve()).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp.startswith(prefix):
                out.append(Path(mp))
    return sorted(out, key=lambda p: -len(str(p)))


class Procs:
    """Every long-running process and mount the bench started, to stop them all at the end."""

    def __init__(self) -> None:
        self.procs: list[tuple[subprocess.Popen[bytes], Path | None]] = []

    def add(self, proc: subprocess.Popen[bytes], mount: Path | None) -> None:
        self.procs.append((proc, mount))

    def forget(self, proc: subprocess.Popen[bytes]) -> None:
        self.procs = [(p, m) for p, m in self.procs if p is not proc]

    def stop_all(self) -> None:
        for proc, mount in reversed(self.procs):
            if mount is not None and proc.poll() is None:
                unmount(mount)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(30)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            if mount is not None and is_mount(mount):
                unmount(mount, lazy=True)
        self.procs = []


PROCS = Procs()


def wait_mount(path: Path, proc: subprocess.Popen[bytes], what: str, logfile: Path | None,
               timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not is_mount(path):
        if proc.poll() is not None:
            tail = ""
            if logfile and logfile.exists():
                tail = logfile.read_text(errors="replace")[-2000:]
            raise BenchError(f"{what} exited (status {proc.returncode}) before mounting:\n{tail}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: mount did not appear within {timeout:.0f} s")
        time.sleep(0.02)


def stop_mount(proc: subprocess.Popen[bytes], mount: Path, what: str) -> int:
    """Unmount like fusermount3 -u and wait for the serving process to exit."""
    r = subprocess.run(["fusermount3", "-u", str(mount)], capture_output=True, text=True)
    if r.returncode != 0 and proc.poll() is None:
        time.sleep(0.5)  # e.g. still busy for a moment after a reader exited
        r = subprocess.run(["fusermount3", "-u", str(mount)], capture_output=True, text=True)
    try:
        rc = proc.wait(180)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait(10)
        log(f"warning: {what} did not exit after unmount; killed")
    if is_mount(mount):
        unmount(mount, lazy=True)
    PROCS.forget(proc)
    return rc


def read_files(paths: Sequence[Path]) -> int:
    """Read every file whole, in the given order; total bytes."""
    total = 0
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while True:
                b = f.read(1 << 20)
                if not b:
                    break
                total += len(b)
    return total


def cat(path: Path) -> float:
    """Seconds for `cat path > /dev/null`."""
    with open(os.devnull, "wb") as null:
        t0 = time.perf_counter()
        subprocess.run(["cat", str(path)], stdout=null, check=True)
        return time.perf_counter() - t0


def child_cpu() -> tuple[float, float]:
    """(user, system) CPU seconds of all waited-for children so far."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime, ru.ru_stime


def _proc_times() -> dict[int, tuple[int, float, str]]:
    """{pid: (ppid, CPU seconds (user + system), name)} of every process.

    Children's CPU (cutime) is left out: a shell that reaps a long job would
    count all of that job's time at once.
    """
    tck = os.sysconf("SC_CLK_TCK")
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        out[int(name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tck, comm)
    return out


class ForeignLoad:
    """CPU that processes other than the bench and its children used meanwhile (in cores).

    The machine may be shared (a test suite running beside the bench): this says
    when figures were measured under someone else's load.  Kernel threads (which
    also do the bench's own I/O) are not counted.
    """

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.before = _proc_times()

    def stop(self) -> tuple[float, str]:
        """(cores used by others, the busiest of them)."""
        after = _proc_times()
        wall = max(time.monotonic() - self.t0, 1e-6)
        ppid = {pid: v[0] for pid, v in {**self.before, **after}.items()}
        me = os.getpid()

        def foreign(pid: int) -> bool:
            seen = 0
            while pid > 2 and seen < 64:
                if pid == me:
                    return False
                pid = ppid.get(pid, 0)
                seen += 1
            return pid != 2  # children of kthreadd are kernel threads

        by_name: dict[str, float] = {}
        for p in after:
            if p > 2 and foreign(p):  # a process new since start(): all its time counts
                name = after[p][2]
                used = after[p][1] - (self.before[p][1] if p in self.before else 0.0)
                by_name[name] = by_name.get(name, 0.0) + used
        top = sorted(by_name.items(), key=lambda x: -x[1])[:3]
        return (sum(by_name.values()) / wall,
                ", ".join(f"{n} {c / wall:.2f}" for n, c in top if c / wall >= 0.01))
