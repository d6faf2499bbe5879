"""What dmsfs is compared with: local disk (cp -a, tar -x, cat), borg and restic.

borg and restic come from Debian packages (borgbackup, restic).  When one is
missing, root gets `apt-get install -y borgbackup restic`; anyone else gets a
message and that comparison is skipped.  `borg mount` needs a FUSE module for
the python that runs borg (python3-pyfuse3 or python3-llfuse).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from benchlib import PROCS, BenchError, is_root, log, run, stop_mount, wait_mount

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}


def _apt_install(*pkgs: str) -> bool:
    r = run(["apt-get", "install", "-y", "-q", *pkgs], env=APT_ENV, check=False, timeout=900)
    if r.returncode != 0:
        run(["apt-get", "update", "-q"], env=APT_ENV, check=False, timeout=900)
        r = run(["apt-get", "install", "-y", "-q", *pkgs], env=APT_ENV, check=False, timeout=900)
    return r.returncode == 0


class Tools:
    """Which peers can run here, and why not when they cannot."""

    def __init__(self) -> None:
        self.borg: str | None = shutil.which("borg")
        self.restic: str | None = shutil.which("restic")
        self.why: dict[str, str] = {}
        self.versions: dict[str, str] = {}
        self.borg_mount_ok = False

    def ensure(self) -> Tools:
        if not (self.borg and self.restic):
            if is_root():
                log("installing borgbackup and restic with apt-get ...")
                _apt_install("borgbackup", "restic")
                self.borg, self.restic = shutil.which("borg"), shutil.which("restic")
            else:
                log("borg/restic missing and not root: skipping what needs them "
                    "(apt-get install borgbackup restic)")
        if not self.borg:
            self.why["borg"] = "borg is not installed (Debian package borgbackup)"
        if not self.restic:
            self.why["restic"] = "restic is not installed (Debian package restic)"
        if self.borg:
            self.versions["borg"] = run([self.borg, "--version"], check=False).stdout.strip()
            self.borg_mount_ok = self._borg_fuse()
        if self.restic:
            self.versions["restic"] = run([self.restic, "version"], check=False).stdout.strip()
        return self

    def _borg_fuse(self) -> bool:
        assert self.borg
        with open(os.path.realpath(self.borg), "rb") as f:
            first = f.readline().decode(errors="replace")
        python = first[2:].strip().split()[0] if first.startswith("#!") else "python3"
        probe = [python, "-c", "import importlib.util as u, sys; "
                 "sys.exit(0 if u.find_spec('pyfuse3') or u.find_spec('llfuse') else 1)"]
        if run(probe, check=False).returncode == 0:
            return True
        if is_root() and _apt_install("python3-pyfuse3"):
            return run(probe, check=False).returncode == 0 or self._no_fuse(python)
        return self._no_fuse(python)

    def _no_fuse(self, python: str) -> bool:
        self.why["borg mount"] = (f"borg mount needs pyfuse3 or llfuse for {python} "
                                  "(Debian python3-pyfuse3 / python3-llfuse)")
        return False


# ---------------------------------------------------------------- local disk
def local_cp(src: Path, dst: Path) -> float:
    """Seconds for cp -a src dst + sync."""
    t0 = time.perf_counter()
    run(["cp", "-a", str(src), str(dst)])
    os.sync()
    return time.perf_counter() - t0


def tar_x(archive: Path, dest: Path) -> float:
    dest.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    run(["tar", "-xf", str(archive), "-C", str(dest)])
    return time.perf_counter() - t0


# ---------------------------------------------------------------- borg
class Borg:
    def __init__(self, tools: Tools, repo: Path, base: Path) -> None:
        assert tools.borg
        self.exe = tools.borg
        self.repo = repo
        self.env = {"BORG_BASE_DIR": str(base),
                    "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
                    "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}

    def init(self) -> None:
        run([self.exe, "init", "-e", "none", str(self.repo)], env=self.env)

    def create(self, archive: str, src: Path) -> float:
        """Seconds for `borg create --compression zstd,3 REPO::archive .` inside src."""
        t0 = time.perf_counter()
        run([self.exe, "create", "--compression", "zstd,3", f"{self.repo}::{archive}", "."],
            cwd=src, env=self.env)
        return time.perf_counter() - t0

    def mount(self, archive: str, mnt: Path) -> subprocess.Popen[bytes]:
        mnt.mkdir(parents=True, exist_ok=True)
        logf = mnt.parent / f"{mnt.name}.log"
        env = dict(os.environ)
        env.update(self.env)
        with open(logf, "wb") as out:
            proc = subprocess.Popen([self.exe, "mount", "-f", f"{self.repo}::{archive}", str(mnt)],
                                    env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        PROCS.add(proc, mnt)
        wait_mount(mnt, proc, "borg mount", logf, timeout=120)
        return proc


# ---------------------------------------------------------------- restic
class Restic:
    def __init__(self, tools: Tools, repo: Path, cache: Path) -> None:
        assert tools.restic
        self.exe = tools.restic
        self.repo = repo
        self.env = {"RESTIC_PASSWORD": "bench", "RESTIC_CACHE_DIR": str(cache)}

    def init(self) -> None:
        run([self.exe, "-r", str(self.repo), "init", "-q"], env=self.env)

    def backup(self, path: str, cwd: Path) -> float:
        """Seconds for `restic backup PATH` (relative to cwd: the snapshot holds PATH/...)."""
        t0 = time.perf_counter()
        run([self.exe, "-r", str(self.repo), "backup", "-q", "--host", "bench", path],
            cwd=cwd, env=self.env)
        return time.perf_counter() - t0

    def mount(self, mnt: Path) -> subprocess.Popen[bytes]:
        mnt.mkdir(parents=True, exist_ok=True)
        logf = mnt.parent / f"{mnt.name}.log"
        env = dict(os.environ)
        env.update(self.env)
        with open(logf, "wb") as out:
            proc = subprocess.Popen([self.exe, "-r", str(self.repo), "mount", str(mnt)],
                                    env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        PROCS.add(proc, mnt)
        wait_mount(mnt, proc, "restic mount", logf, timeout=120)
        return proc


def unmount_peer(proc: subprocess.Popen[bytes], mnt: Path, what: str) -> None:
    stop_mount(proc, mnt, what)


def require(tools: Tools, name: str) -> None:
    if name in tools.why:
        raise BenchError(tools.why[name])
