"""Shared fixtures: a real dmsfsd process on a temp store, mounted with FUSE.

Tests marked `backends("file", "s3")` run once per store backend: "s3" is a
real moto server on 127.0.0.1 (see s3fixtures.py), a bucket per daemon.

Mount tests are skipped (with a reason) where /dev/fuse or fusermount3 is
unusable, unless DMSFS_TEST_REQUIRE lists "fuse": then they fail, so a green
CI run cannot hide unrun mount tests (`make test` sets it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from s3env import s3_env

pytest_plugins = ["s3fixtures"]

BIN = Path(sys.executable).parent
DMSFSD = str(BIN / "dmsfsd")
DMSCTL = str(BIN / "dmsctl")
# Small chunks and packs, so a few hundred KiB exercise many chunks and packs.
SMALL_CHUNKS = ["--chunk-size", "4K,16K,64K", "--pack-size", "256K"]


def fuse_problem() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed"
    return None


def _require(what: str) -> bool:
    return what in os.environ.get("DMSFS_TEST_REQUIRE", "").split(",")


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("DMSFS_") and key != "DMSFS_TEST_REQUIRE":
            monkeypatch.delenv(key)


def _unmount(path: Path) -> None:
    subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)


class Daemon:
    """One dmsfsd over one store: start, stop cleanly, kill -9, remount."""

    def __init__(self, root: Path, extra: list[str], url: str | None = None,
                 env: dict[str, str] | None = None, store_args: list[str] | None = None
                 ) -> None:
        self.root = root
        self.store = root / "store"
        self.url = url or f"file://{self.store}"
        self.env = env
        self.store_args = store_args or []   # how to reach the store (--s3-endpoint)
        self.state = root / "state"
        self.mnt = root / "mnt"
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "daemon.log"

    def start(self, *args: str) -> Daemon:
        assert self.proc is None, "already running"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [DMSFSD, self.url, str(self.mnt), "--state", str(self.state), "--foreground",
                 "--log-level", "info", *self.store_args, *self.extra, *args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env)
        deadline = time.monotonic() + 30
        while not os.path.ismount(self.mnt):
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError(f"dmsfsd exited at start:\n{self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mount did not appear:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.02)
        return self

    def stop(self) -> int:
        """Unmount cleanly (as fusermount3 -u) and wait for the daemon to exit."""
        assert self.proc is not None
        subprocess.run(["fusermount3", "-u", str(self.mnt)], check=True)
        rc = self.proc.wait(60)
        self.proc = None
        return rc

    def terminate(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        rc = self.proc.wait(60)
        self.proc = None
        return rc

    def kill9(self) -> None:
        """Crash the daemon: SIGKILL, then clear the dead mount."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)
        self.proc = None
        _unmount(self.mnt)

    def restart(self, *args: str) -> Daemon:
        if self.proc is not None:
            self.stop()
        return self.start(*args)

    def ctl(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([DMSCTL, "--state", str(self.state), *args], capture_output=True,
                           text=True, timeout=600)
        if check and r.returncode != 0:
            raise AssertionError(f"dmsctl {' '.join(args)} -> {r.returncode}\n{r.stderr}")
        return r

    def ctl_json(self, *args: str) -> dict:  # type: ignore[type-arg]
        return json.loads(self.ctl(*args, "--json", check=True).stdout)

    def close(self) -> None:
        if self.proc is not None:
            _unmount(self.mnt)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        _unmount(self.mnt)

    def log_problems(self) -> list[str]:
        """ERROR or worse records in the daemon's log (unexpected unless a test says so)."""
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                if "Traceback" in line or "Error" in line:  # not our JSON: a crash
                    out.append(line)
                continue
            if rec.get("level") in ("error", "critical"):
                out.append(rec["msg"])
        return out


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("backends")
    if marker is not None and "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", marker.args, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The store backend of this test's daemons: "file" unless marked `backends`."""
    return str(getattr(request, "param", "file"))


@pytest.fixture
def daemon_factory(request: pytest.FixtureRequest, backend: str) -> Iterator[object]:
    """make(extra_args=[...], small=True, backend=None, store_of=None) -> Daemon (not
    started).  store_of: serve the same store as that daemon (with its own state dir
    and mountpoint); backend: "file" or "s3" (default: the test's).  Unmounted at
    teardown; an ERROR in a daemon log fails the test unless it is marked
    `daemon_errors_ok`."""
    problem = fuse_problem()
    if problem:
        if _require("fuse"):
            pytest.fail(f"FUSE required but unusable: {problem}")
        pytest.skip(problem)
    made: list[Daemon] = []
    roots: list[Path] = []
    buckets: list[str] = []

    def make(extra: list[str] | None = None, small: bool = True, backend: str | None = None,
             store_of: Daemon | None = None, endpoint: str | None = None) -> Daemon:
        # short paths: a Unix socket path must stay under 108 bytes
        root = Path(tempfile.mkdtemp(prefix="dmsfs-", dir="/tmp"))
        roots.append(root)
        args = [*(SMALL_CHUNKS if small else []), *(extra or [])]
        url, env, store_args = None, None, []
        if store_of is not None:
            url, env, store_args = store_of.url, store_of.env, store_of.store_args
        elif (backend or request.getfixturevalue("backend")) == "s3":
            moto = request.getfixturevalue("moto_server")
            bucket = moto.make_bucket(f"dmsfs-{uuid.uuid4().hex[:16]}")
            buckets.append(bucket)
            url, env = f"s3://{bucket}/store", s3_env()
            store_args = ["--s3-endpoint", endpoint or moto.url]
        d = Daemon(root, args, url, env, store_args)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()
    problems = [p for d in made for p in d.log_problems()]
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)
    if buckets:
        moto = request.getfixturevalue("moto_server")
        moto.resume()
        for bucket in buckets:
            moto.drop_bucket(bucket)
    if problems and not request.node.get_closest_marker("daemon_errors_ok"):
        pytest.fail("daemon logged errors:\n" + "\n".join(problems[:20]))


@pytest.fixture
def daemon(daemon_factory) -> Daemon:  # type: ignore[no-untyped-def]
    """A started daemon with small chunks; .mnt is the mountpoint."""
    return daemon_factory().start()


@pytest.fixture
def ds(daemon: Daemon) -> Path:
    """A fresh dataset directory in the mounted tree."""
    path = daemon.mnt / "ds"
    path.mkdir()
    return path
