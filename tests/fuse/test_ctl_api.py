"""The control API and dmsctl: who is calling, errors, OpenAPI, help, and the
version commands (snapshot, versions, tag, untag, diff, export, restore).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pwd
import re
import stat
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import zstandard
from dmsfs.ctl.__main__ import _parser
from dmsfs.daemon import control

from dmsfs.client import Client
from dmsfs.errors import DmsfsError, UsageError
from dmsfs.tree import TreeEntry
from trees import VERSION_LINE

DMSCTL = str(Path(sys.executable).parent / "dmsctl")
NOBODY = 65534
ROUTES = {
    ("GET", "/v1/whoami"), ("GET", "/v1/stats"), ("POST", "/v1/fsck"),
    ("POST", "/v1/reindex"), ("POST", "/v1/flush"),
    ("POST", "/v1/datasets/{ds}/snapshots"), ("GET", "/v1/datasets/{ds}/versions"),
    ("PUT", "/v1/datasets/{ds}/tags/{tag}"), ("DELETE", "/v1/datasets/{ds}/tags/{tag}"),
    ("GET", "/v1/diff"), ("GET", "/v1/datasets/{ds}/versions/{spec}/export"),
    ("POST", "/v1/datasets/{ds}/restore"),
    ("POST", "/v1/datasets"), ("PUT", "/v1/datasets/{ds}/schema"),
    ("GET", "/v1/datasets/{ds}/schema"), ("GET", "/v1/datasets/{ds}/schemas"),
    ("GET", "/v1/datasets/{ds}/rejects"),
}

# relative path -> ("f", sha256) | ("l", target) | ("d", None)
Files = dict[str, tuple[str, str | None]]


def client_of(daemon: Any) -> Client:
    return Client(f"unix:{daemon.state / 'api.sock'}")


def fails(r: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    """dmsctl exited with `code` and one line on stderr holding every word."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


# ------------------------------------------------------------------ who is calling
def test_whoami_is_the_calling_process(daemon: Any) -> None:
    w = daemon.ctl_json("whoami")
    assert (w["uid"], w["gid"]) == (os.getuid(), os.getgid())
    text = daemon.ctl("whoami", check=True).stdout
    assert text.startswith(f"uid {os.getuid()} (")


@pytest.mark.skipif(os.geteuid() != 0, reason="setpriv to nobody needs root")
def test_whoami_as_nobody(daemon: Any) -> None:
    # nobody must reach the socket: let it through the (private) test directories
    for d in (daemon.root, daemon.state):
        d.chmod(d.stat().st_mode | 0o011)
    proc = subprocess.Popen(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         DMSCTL, "--state", str(daemon.state), "whoami", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out) == {"uid": NOBODY, "gid": NOBODY, "pid": proc.pid}


class BrokenVersions:
    """Resolves any version; its walk fails after the first entry."""

    def resolve(self, dataset: str, spec: str) -> Any:
        return SimpleNamespace(bytes=1, number=1)

    async def walk(self, record: Any) -> AsyncIterator[tuple[str, TreeEntry]]:
        yield "d", TreeEntry(b"d", stat.S_IFDIR | 0o755, 0, 0, 0, 0, 0)
        raise RuntimeError("walk failed")


class BrokenRepo:
    versions = BrokenVersions()
    chunks = None
    schemas = None

    def stats(self) -> dict[str, Any]:
        raise RuntimeError("boom")


async def test_peer_credentials_and_internal_errors_in_process(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The API server alone (no mount): SO_PEERCRED of this very process; an
    unexpected exception is a structured 500, or cuts off a started stream, and is
    logged once."""
    sock = tmp_path / "api.sock"
    client = Client(f"unix:{sock}")

    def export() -> bytes:
        return b"".join(client.export_stream("ds", "v1")[1])

    async with trio.open_nursery() as nursery:
        await nursery.start(control.serve, control.build_app(BrokenRepo(), None), sock)
        who = await trio.to_thread.run_sync(client.whoami)
        with pytest.raises(DmsfsError) as err:
            await trio.to_thread.run_sync(client.stats)
        with pytest.raises(DmsfsError, match="broke off"):
            await trio.to_thread.run_sync(export)
        nursery.cancel_scope.cancel()
    assert who == {"uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid()}
    assert type(err.value) is DmsfsError and "RuntimeError: boom" in str(err.value)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "internal error in GET /v1/stats",
        "internal error in GET /v1/datasets/ds/versions/v1/export"]
    caplog.clear()  # expected; nothing else may log an error


# ------------------------------------------------------------------ documents and errors
def test_openapi_documents_every_route(daemon: Any) -> None:
    doc = client_of(daemon).call("GET", "/openapi.json")
    ops = {(m.upper(), p): op for p, item in doc["paths"].items() for m, op in item.items()}
    assert set(ops) == ROUTES
    for key, op in ops.items():
        assert op.get("summary"), key
        assert "422" not in op["responses"] and "4XX" in op["responses"], key
    export = ops[("GET", "/v1/datasets/{ds}/versions/{spec}/export")]
    assert "application/x-tar" in export["responses"]["200"]["content"]


def test_structured_errors(daemon: Any, ds: Path, tmp_path: Path) -> None:
    (ds / "f").write_bytes(b"x")
    daemon.ctl("snapshot", "ds", check=True)
    fails(daemon.ctl("export", "ds@v9", str(tmp_path / "o.tar")), 1, "ds has no version 'v9'")
    fails(daemon.ctl("tag", "nope@v1", "gold"), 1, "nope")
    fails(daemon.ctl("untag", "ds", "gold"), 1, "no tag 'gold'")
    fails(daemon.ctl("tag", "ds@v1", "v7"), 1, "invalid tag")
    fails(daemon.ctl("snapshot", "nope"), 1, "no dataset 'nope'")
    fails(daemon.ctl("restore", "ds@latest", "--path", "not/there"), 1, "not/there")
    assert not list(tmp_path.iterdir())
    with pytest.raises(UsageError, match=r"body\.version: Field required"):
        client_of(daemon).call("PUT", "/v1/datasets/ds/tags/gold", body={})
    with pytest.raises(UsageError, match="not DATASET or DATASET@VERSION"):
        client_of(daemon).call("GET", "/v1/diff", {"a": "ds@", "b": "ds"})
    with pytest.raises(DmsfsError, match="GET /v1/nope: Not Found"):
        client_of(daemon).call("GET", "/v1/nope")


def test_usage_errors_exit_2(daemon: Any, tmp_path: Path) -> None:
    for args, words in [
        (["tag", "ds", "gold"], ["'ds' is not DATASET@VERSION"]),
        (["tag", "@v1", "gold"], ["is not DATASET@VERSION"]),
        (["restore", "ds@"], ["is not DATASET@VERSION"]),
        (["diff", "ds@", "ds"], ["is not DATASET@VERSION"]),
        (["export", "ds@v1", str(tmp_path / "o.rar")], ["must end in .tar, .tar.zst"]),
        (["snapshot"], ["required: DS"]),
        (["frobnicate"], ["invalid choice"]),
    ]:
        r = daemon.ctl(*args)
        assert r.returncode == 2, (args, r.stderr)
        for w in words:
            assert w in r.stderr, (args, r.stderr)


def test_stopped_daemon_is_one_line_and_exit_2(daemon: Any) -> None:
    assert daemon.stop() == 0
    for args in (["stats"], ["versions", "ds"], ["whoami", "--json"]):
        r = daemon.ctl(*args)
        fails(r, 2, "cannot reach the dmsfs daemon", str(daemon.state / "api.sock"))
        assert r.stdout == ""


def test_help_of_every_command() -> None:
    sub = next(a for a in _parser()._actions if isinstance(a.choices, dict))
    assert {"snapshot", "versions", "tag", "untag", "diff", "export", "restore",
            "whoami", "schema", "dataset", "rejects"} <= set(sub.choices)
    for name in sub.choices:
        r = subprocess.run([DMSCTL, name, "--help"], capture_output=True, text=True)
        assert r.returncode == 0, (name, r.stderr)
        assert "Example" in r.stdout and "--json" in r.stdout, name


def test_help_names_the_socket(tmp_path: Path) -> None:
    r = subprocess.run([DMSCTL, "--state", str(tmp_path), "--help"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert f"Daemon: this invocation would use unix:{tmp_path}/api.sock." in r.stdout
    r = subprocess.run([DMSCTL, "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and "\nDaemon: " in r.stdout, r.stderr


# ------------------------------------------------------------------ versions
def test_snapshot_versions_tag_untag(daemon: Any, ds: Path) -> None:
    (ds / "a.txt").write_bytes(b"one")
    r = daemon.ctl("snapshot", "ds", "-m", "first", check=True)
    m1 = VERSION_LINE.fullmatch(r.stdout)
    assert m1 and m1.group(1) == "1", r.stdout
    (ds / "b.txt").write_bytes(b"two!")
    m2 = VERSION_LINE.fullmatch(daemon.ctl("snapshot", "ds", "--tag", "gold", "-m",
                                           "second\nline", check=True).stdout)
    assert m2 and m2.group(1) == "2"

    versions = daemon.ctl_json("versions", "ds")
    assert [(v["number"], v["id"], v["message"], v["tags"], v["files"], v["bytes"])
            for v in versions] == [(2, m2.group(2), "second\nline", ["gold"], 2, 7),
                                   (1, m1.group(2), "first", [], 1, 3)]
    assert versions[0]["user"] == pwd.getpwuid(os.getuid()).pw_name
    table = daemon.ctl("versions", "ds", check=True).stdout.splitlines()
    assert table[0].split() == ["N", "ID", "TIME", "USER", "MESSAGE", "TAGS", "FILES", "BYTES"]
    assert table[1].startswith(f"v2  {m2.group(2)}  ") and "second line  gold" in table[1]
    assert table[2].startswith(f"v1  {m1.group(2)}  ")

    r = daemon.ctl("tag", f"ds@{m1.group(2)[:13]}", "gold", check=True)
    assert r.stdout == f"ds@gold is v1 {m1.group(2)}\n"
    assert (ds / "@gold" / "a.txt").read_bytes() == b"one"
    assert not (ds / "@gold" / "b.txt").exists()
    assert daemon.ctl_json("tag", "ds@latest", "latest-ok")["number"] == 2
    assert daemon.ctl("untag", "ds", "gold", check=True).returncode == 0
    assert [v["tags"] for v in daemon.ctl_json("versions", "ds")] == [["latest-ok"], []]
    (ds.parent / "other").mkdir()
    assert "has no versions yet" in daemon.ctl("versions", "other", check=True).stdout
    fails(daemon.ctl("versions", "nope"), 1, "no dataset 'nope'")
    stats = daemon.ctl("stats", check=True).stdout
    assert re.search(r"^versions +2$", stats, re.M), stats
    assert "files, 2 versions: no damage" in daemon.ctl("fsck", check=True).stdout


def test_diff_between_versions_and_the_live_tree(daemon: Any, ds: Path) -> None:
    (ds / "keep").write_bytes(b"k" * 100)
    (ds / "gone").write_bytes(b"g" * 10)
    (ds / "grow").write_bytes(b"1" * 1000)
    (ds / "old name").write_bytes(os.urandom(5000))
    daemon.ctl("snapshot", "ds", check=True)
    (ds / "gone").unlink()
    (ds / "grow").write_bytes(b"2" * 3000)
    (ds / "old name").rename(ds / "new\nname")
    (ds / "sub").mkdir()
    (ds / "sub" / "added").write_bytes(b"a" * 2048)
    daemon.ctl("snapshot", "ds", check=True)

    d = daemon.ctl_json("diff", "ds@v1", "ds@v2")
    assert (d["a"], d["b"]) == ("ds@v1", "ds@v2")
    assert d["added"] == [{"path": "sub/added", "size": 2048}]
    assert d["removed"] == [{"path": "gone", "size": 10}]
    assert d["modified"] == [{"path": "grow", "old_size": 1000, "new_size": 3000,
                              "what": ["content"]}]
    assert d["renamed"] == [{"from": "old name", "to": "new\nname", "size": 5000}]
    text = daemon.ctl("diff", "ds@v1", "ds@v2", check=True).stdout.splitlines()
    assert text == ["- gone (10 B)", "M grow (1000 B -> 2.9 KiB)",
                    'R old name -> "new\\nname"', "+ sub/added (2.0 KiB)",
                    "ds@v1 -> ds@v2: 1 added, 1 removed, 1 modified, 1 renamed"]

    (ds / "keep").write_bytes(b"K" * 100)
    (ds / "grow").chmod(0o600)
    live = daemon.ctl_json("diff", "ds@latest", "ds")
    assert live["b"] == "ds" and [c["path"] for c in live["modified"]] == ["grow", "keep"]
    assert daemon.ctl("diff", "ds@latest", "ds", check=True).stdout.splitlines() == [
        "M grow (2.9 KiB -> 2.9 KiB; mode)", "M keep (100 B -> 100 B)",
        "ds@latest -> ds: 0 added, 0 removed, 2 modified, 0 renamed"]
    assert daemon.ctl("diff", "ds", "ds", check=True).stdout.endswith(
        "ds -> ds: 0 added, 0 removed, 0 modified, 0 renamed\n")


# ------------------------------------------------------------------ export and restore
def make_tree(root: Path) -> None:
    """A bit of everything: nested dirs, many chunks, a hole, empty files, odd names,
    relative and absolute symlinks, modes."""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty_dir").mkdir()
    (root / "big.bin").write_bytes(os.urandom(700_000))
    with open(root / "sub" / "sparse", "wb") as f:
        f.seek(300_000)
        f.write(b"tail")  # the gap before it is a hole
    (root / "sub" / "repeat").write_bytes(os.urandom(20_000) * 8)
    (root / "empty").write_bytes(b"")
    for name in ["with space", "ünïcödé ✓", "new\nline", "-dash", "n" * 200]:
        (root / "sub" / "deeper" / name).write_bytes(name.encode() * 7)
    os.symlink("sub/repeat", root / "link_rel")
    os.symlink("../big.bin", root / "sub" / "link_up")
    os.symlink("/etc/hostname", root / "link_abs")
    os.chmod(root / "big.bin", 0o600)
    os.chmod(root / "sub" / "repeat", 0o755)


def files_of_dir(root: Path) -> Files:
    out: Files = {}
    for dirpath, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", None)
            else:
                with open(path, "rb") as f:
                    out[rel] = ("f", hashlib.file_digest(f, "sha256").hexdigest())
    return out


def files_of_tar(f: Any) -> Files:
    out: Files = {}
    with tarfile.open(fileobj=f, mode="r|") as tar:
        for m in tar:
            if m.issym():
                out[m.name] = ("l", m.linkname)
            elif m.isdir():
                out[m.name] = ("d", None)
            else:
                data = tar.extractfile(m)
                assert data is not None
                out[m.name] = ("f", hashlib.sha256(data.read()).hexdigest())
    return out


def files_of_zip(path: Path) -> Files:
    out: Files = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.is_dir():
                out[info.filename.rstrip("/")] = ("d", None)
            elif stat.S_ISLNK(info.external_attr >> 16):
                out[info.filename] = ("l", zf.read(info).decode())
            else:
                out[info.filename] = ("f", hashlib.sha256(zf.read(info)).hexdigest())
    return out


def test_export_round_trip(daemon: Any, ds: Path, tmp_path: Path) -> None:
    make_tree(ds)
    at_snapshot = files_of_dir(ds)
    daemon.ctl("snapshot", "ds", "--tag", "gold", check=True)
    (ds / "big.bin").write_bytes(b"changed after the snapshot")
    (ds / "sub" / "later").write_bytes(b"later")

    out = tmp_path / "out"
    out.mkdir()
    for name in ("v.tar", "v.tar.zst", "v.zip", "dir/"):
        r = daemon.ctl("export", "ds@gold", f"{out}/{name}", check=True)
        assert r.stdout.startswith(f"exported ds@gold to {out}/{name} (")
        assert r.stderr == ""  # no progress bar: stderr is not a terminal
    with open(out / "v.tar", "rb") as f:
        assert files_of_tar(f) == at_snapshot
    with open(out / "v.tar.zst", "rb") as f:
        assert files_of_tar(zstandard.ZstdDecompressor().stream_reader(f)) == at_snapshot
    assert files_of_zip(out / "v.zip") == at_snapshot
    assert files_of_dir(out / "dir") == at_snapshot
    assert sorted(p.name for p in out.iterdir()) == ["dir", "v.tar", "v.tar.zst", "v.zip"]

    with open(out / "v.tar", "rb") as f, tarfile.open(fileobj=f) as tar:
        big = tar.getmember("big.bin")
        assert (big.mode, big.uid, big.size) == (0o600, os.getuid(), 700_000)
        assert big.mtime == pytest.approx((ds / "@gold" / "big.bin").stat().st_mtime, abs=1e-6)
    summary = daemon.ctl_json("export", "ds@v1", f"{out}/again.tar")
    assert summary == {"dataset": "ds", "version": "v1", "out": f"{out}/again.tar",
                       "bytes": daemon.ctl_json("versions", "ds")[0]["bytes"]}


def test_export_stream_through_the_sdk(daemon: Any, ds: Path) -> None:
    (ds / "f.bin").write_bytes(os.urandom(200_000))
    daemon.ctl("snapshot", "ds", check=True)
    total, pieces = client_of(daemon).export_stream("ds", "latest")
    data = b"".join(pieces)
    assert total == 200_000
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        f = tar.extractfile("f.bin")
        assert f is not None and f.read() == (ds / "f.bin").read_bytes()


def test_restore_whole_dataset_and_one_path(daemon: Any, ds: Path) -> None:
    make_tree(ds)
    v1 = files_of_dir(ds)
    daemon.ctl("snapshot", "ds", check=True)
    (ds / "big.bin").write_bytes(b"new")
    (ds / "sub" / "repeat").unlink()
    (ds / "extra").write_bytes(b"extra")

    r = daemon.ctl_json("restore", "ds@v1", "--path", "big.bin")
    assert (r["path"], r["version"]["number"], r["changed"]) == ("big.bin", 1, 1)
    assert (ds / "big.bin").read_bytes() == (ds / "@v1" / "big.bin").read_bytes()
    assert not (ds / "sub" / "repeat").exists()

    text = daemon.ctl("restore", "ds@v1", check=True).stdout
    assert re.fullmatch(r"ds restored to v1 \S+: 1 added, 1 removed, 0 changed\n", text), text
    assert files_of_dir(ds) == v1
    assert [v["number"] for v in daemon.ctl_json("versions", "ds")] == [1]
