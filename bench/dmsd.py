"""One dmsfsd process for the benchmark: start, stop, flush, stats, memory and CPU use."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchlib import PROCS, BenchError, log, run, stop_mount, wait_mount

BIN = Path(sys.executable).parent
DMSFSD = str(BIN / "dmsfsd")
DMSCTL = str(BIN / "dmsctl")
PYSPY = BIN / "py-spy"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The highest VmHWM any daemon of this run reached (KiB), with where it happened.
PEAK: dict[str, object] = {"kib": 0, "where": None}


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (KiB) of a process; {} once it is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def thread_times(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of each thread: {tid: (name, seconds)}."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


class CpuMeter:
    """CPU the daemon used between start() and stop(), split into its main thread and the rest."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.t0 = 0.0
        self.before: dict[int, tuple[str, float]] = {}

    def start(self) -> None:
        self.before = thread_times(self.pid)
        self.t0 = time.perf_counter()

    def stop(self) -> dict[str, float]:
        after = thread_times(self.pid)
        wall = time.perf_counter() - self.t0
        main = after.get(self.pid, ("", 0.0))[1] - self.before.get(self.pid, ("", 0.0))[1]
        total = 0.0
        for tid, (_name, sec) in after.items():
            total += sec - self.before.get(tid, ("", 0.0))[1]
        # threads that ended in between are not counted: a small underestimate
        return {"wall_s": round(wall, 3), "cpu_s": round(total, 3),
                "cores_busy": round(total / wall, 2) if wall else 0.0,
                "main_thread_busy": round(main / wall, 2) if wall else 0.0,
                "threads": len(after)}


class Daemon:
    """dmsfsd over ROOT/store with state ROOT/state, mounted at ROOT/mnt."""

    def __init__(self, root: Path, name: str, extra: list[str] | None = None) -> None:
        self.root = root
        self.name = name
        self.store = root / "store"
        self.state = root / "state"
        self.mnt = root / "mnt"
        self.log = root / "daemon.log"
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None
        self._sampler: threading.Thread | None = None
        self._stop_sampling = threading.Event()
        self.hwm_kib = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Daemon:
        assert self.proc is None
        self.mnt.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [DMSFSD, f"file://{self.store}", str(self.mnt), "--state", str(self.state),
                 "--foreground", *self.extra],
                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        PROCS.add(self.proc, self.mnt)
        wait_mount(self.mnt, self.proc, "dmsfsd", self.log)
        self._stop_sampling.clear()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        return self

    def _sample(self) -> None:
        assert self.proc is not None
        pid = self.proc.pid
        while not self._stop_sampling.wait(0.2):
            self._note(proc_status(pid).get("VmHWM", 0))

    def _note(self, hwm: int) -> None:
        if hwm > self.hwm_kib:
            self.hwm_kib = hwm
        if hwm > int(PEAK["kib"]):  # type: ignore[call-overload]
            PEAK["kib"] = hwm
            PEAK["where"] = self.name

    def rss(self) -> dict[str, int]:
        """Current VmRSS and VmHWM in KiB (and remembers the peak)."""
        st = proc_status(self.pid)
        self._note(st.get("VmHWM", 0))
        return st

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise BenchError(f"dmsfsd ({self.name}) died:\n{self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def stop(self) -> None:
        """fusermount3 -u, then wait for the daemon to finish (it seals what is staged)."""
        if self.proc is None:
            return
        self.rss()
        self._stop_sampling.set()
        rc = stop_mount(self.proc, self.mnt, "dmsfsd")
        self.proc = None
        if rc != 0:
            raise BenchError(f"dmsfsd ({self.name}) exited with {rc}:\n{self.log_tail()}")

    def restart(self) -> None:
        self.stop()
        self.start()

    def ctl(self, *args: str) -> str:
        return run([DMSCTL, "--state", str(self.state), *args], timeout=1200).stdout

    def flush(self) -> None:
        self.ctl("flush")

    def stats(self) -> dict:  # type: ignore[type-arg]
        return json.loads(self.ctl("stats", "--json"))

    def errors_in_log(self) -> list[str]:
        out = []
        if not self.log.exists():
            return out
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                if "Traceback" in line:
                    out.append(line)
                continue
            if isinstance(rec, dict) and rec.get("level") in ("error", "critical"):
                out.append(str(rec.get("msg")))
        return out


def warn_log_errors(d: Daemon) -> None:
    errs = d.errors_in_log()
    if errs:
        log(f"warning: dmsfsd ({d.name}) logged {len(errs)} error(s), first: {errs[0][:300]}")


class Spy:
    """py-spy recording a process (sampling, non-blocking) into a raw collapsed-stack file."""

    def __init__(self, pid: int, rawfile: Path, rate: int = 200) -> None:
        self.pid = pid
        self.rawfile = rawfile
        self.rate = rate
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Spy:
        self.rawfile.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [str(PYSPY), "record", "--pid", str(self.pid), "--format", "raw", "-o",
             str(self.rawfile), "--rate", str(self.rate), "--nonblocking", "--threads"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        PROCS.add(self.proc, None)  # type: ignore[arg-type]
        time.sleep(1)  # py-spy attaches
        return self

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(60)
        PROCS.forget(self.proc)


def summarize_pyspy(rawfile: Path) -> str:
    """Samples by thread; top functions (all lines of a function together) by self and
    inclusive samples; top lines by self samples."""
    if not rawfile.exists():
        return "no py-spy output\n"
    threads: dict[str, int] = {}
    self_f: dict[str, int] = {}
    incl_f: dict[str, int] = {}
    self_l: dict[str, int] = {}
    total = 0
    for line in rawfile.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        frames = stack.split(";")
        total += count
        threads[frames[0]] = threads.get(frames[0], 0) + count
        funcs = [re.sub(r":\d+\)$", ")", f) for f in frames[1:]]
        if len(frames) > 1:
            self_l[frames[-1]] = self_l.get(frames[-1], 0) + count
            self_f[funcs[-1]] = self_f.get(funcs[-1], 0) + count
        for f in set(funcs):
            incl_f[f] = incl_f.get(f, 0) + count
    if not total:
        return "py-spy recorded no samples\n"

    def top(d: dict[str, int], n: int) -> list[str]:
        return [f"  {c:7d} {c / total:6.1%}  {k}"
                for k, c in sorted(d.items(), key=lambda x: -x[1])[:n]]

    out = [f"py-spy samples (non-idle): {total}", "", "by thread:", *top(threads, 10),
           "", "top functions, self:", *top(self_f, 25),
           "", "top functions, inclusive:", *top(incl_f, 25),
           "", "top lines, self:", *top(self_l, 15)]
    return "\n".join(out) + "\n"
