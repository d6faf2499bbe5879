"""Exports: the daemon's tar stream (dmsfs.export) and dmsctl's converters (ctl/export.py).

The converters get a tar stream built here with tarfile, cut into pieces of odd
sizes as they come off the socket; every output must hold the same files, bytes,
symlinks and modes.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import stat
import tarfile
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard
from dmsfs.ctl import export as ctl_export

from dmsfs.errors import DmsfsError, UsageError
from dmsfs.export import tar_stream
from dmsfs.index import HOLE
from dmsfs.tree import TreeEntry

MiB = 1 << 20
MTIME = 1_600_000_000

# relative path -> ("f", content, mode) | ("d", None, mode) | ("l", target, None)
Tree = dict[str, tuple[str, object, int | None]]


def sample_tree() -> Tree:
    rng = random.Random(7)
    return {
        "a.txt": ("f", b"hello\n", 0o644),
        "empty": ("f", b"", 0o600),
        "run.sh": ("f", b"#!/bin/sh\n", 0o755),
        "sub": ("d", None, 0o755),
        "sub/big.bin": ("f", rng.randbytes(3 * MiB + 5), 0o640),
        "sub/ünï cödé ✓": ("f", b"odd name", 0o644),
        "sub/deeper": ("d", None, 0o750),
        "sub/deeper/x": ("f", rng.randbytes(1000), 0o644),
        "link_rel": ("l", "sub/big.bin", None),
        "sub/link_up": ("l", "../a.txt", None),
        "link_abs": ("l", "/etc/hostname", None),
    }


def tar_of(tree: Tree) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, (kind, body, mode) in tree.items():
            info = tarfile.TarInfo(path)
            info.mtime = MTIME
            if kind == "f":
                assert isinstance(body, bytes)
                info.size, info.mode = len(body), mode or 0
                tar.addfile(info, io.BytesIO(body))
            else:
                info.type = tarfile.DIRTYPE if kind == "d" else tarfile.SYMTYPE
                info.mode = mode or 0o777
                info.linkname = body if isinstance(body, str) else ""
                tar.addfile(info)
    return buf.getvalue()


def pieces(data: bytes, seed: int = 1) -> Iterator[bytes]:
    """data cut at random points, as a socket would deliver it."""
    rng = random.Random(seed)
    pos = 0
    while pos < len(data):
        n = rng.choice([1, 511, 4096, 65_536, MiB + 3])
        yield data[pos:pos + n]
        pos += n


# ------------------------------------------------------------------ reading outputs back
def files_of_dir(root: Path) -> Tree:
    out: Tree = {}
    for dirpath, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(path), None)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", None, None)
            else:
                out[rel] = ("f", path.read_bytes(), stat.S_IMODE(st.st_mode))
    return out


def files_of_tar(data: bytes) -> Tree:
    out: Tree = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar:
            if m.issym():
                out[m.name] = ("l", m.linkname, None)
            elif m.isdir():
                out[m.name] = ("d", None, m.mode)
            else:
                f = tar.extractfile(m)
                assert f is not None
                out[m.name] = ("f", f.read(), m.mode)
    return out


def files_of_zip(path: Path) -> Tree:
    out: Tree = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            mode = info.external_attr >> 16
            if info.is_dir():
                out[info.filename.rstrip("/")] = ("d", None, stat.S_IMODE(mode))
            elif stat.S_ISLNK(mode):
                out[info.filename] = ("l", zf.read(info).decode(), None)
            else:
                out[info.filename] = ("f", zf.read(info), stat.S_IMODE(mode))
    return out


def without_dir_modes(tree: Tree) -> Tree:
    return {k: (kind, body, None if kind == "d" else mode)
            for k, (kind, body, mode) in tree.items()}


# ------------------------------------------------------------------ converters
def test_tar_is_written_as_is(tmp_path: Path) -> None:
    data = tar_of(sample_tree())
    out = tmp_path / "v.tar"
    ctl_export.write(pieces(data), str(out), ctl_export.output_kind(str(out)))
    assert out.read_bytes() == data


def test_tar_zst_decompresses_to_the_stream(tmp_path: Path) -> None:
    data = tar_of(sample_tree())
    out = tmp_path / "v.tar.zst"
    ctl_export.write(pieces(data), str(out), ctl_export.output_kind(str(out)))
    with open(out, "rb") as f:
        assert zstandard.ZstdDecompressor().stream_reader(f).read() == data


def test_zip_holds_every_member(tmp_path: Path) -> None:
    tree = sample_tree()
    out = tmp_path / "v.zip"
    ctl_export.write(pieces(tar_of(tree)), str(out), ctl_export.output_kind(str(out)))
    assert files_of_zip(out) == tree
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None
        assert zf.getinfo("a.txt").date_time[0] == 2020


def test_directory_gets_files_symlinks_and_modes(tmp_path: Path) -> None:
    tree = sample_tree()
    out = tmp_path / "out"
    ctl_export.write(pieces(tar_of(tree)), f"{out}/", ctl_export.output_kind(f"{out}/"))
    # the "data" filter gives directories default modes and never sets group/other write
    assert files_of_dir(out) == without_dir_modes(tree)
    assert (out / "a.txt").stat().st_mtime == MTIME
    assert not list(tmp_path.glob(".*partial"))


def test_an_empty_existing_directory_is_filled(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    ctl_export.write(pieces(tar_of(sample_tree())), f"{out}/", ctl_export.output_kind(f"{out}/"))
    assert (out / "sub" / "deeper" / "x").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_output_kinds_and_usage_errors(tmp_path: Path) -> None:
    assert [ctl_export.output_kind(n) for n in ("a.tar", "a.tar.zst", "a.zip", "d/")] == \
        [".tar", ".tar.zst", ".zip", "/"]
    for bad in ("a.rar", "a.tgz", str(tmp_path)):
        with pytest.raises(UsageError, match="must end in"):
            ctl_export.output_kind(bad)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_bytes(b"")
    with pytest.raises(UsageError, match="not empty"):
        ctl_export.output_kind(f"{tmp_path}/full/")


@pytest.mark.parametrize("name", ["v.tar", "v.tar.zst", "v.zip", "d/"])
def test_a_broken_stream_leaves_nothing(tmp_path: Path, name: str) -> None:
    data = tar_of(sample_tree())

    def broken() -> Iterator[bytes]:
        yield data[:MiB]
        raise DmsfsError("the stream broke off")

    out = f"{tmp_path}/{name}"
    with pytest.raises(DmsfsError, match="broke off"):
        ctl_export.write(broken(), out, ctl_export.output_kind(out))
    assert list(tmp_path.iterdir()) == []


def test_a_truncated_stream_fails_zip_and_dir(tmp_path: Path) -> None:
    data = tar_of(sample_tree())[:2 * MiB]
    for name in ("v.zip", "d/"):
        out = f"{tmp_path}/{name}"
        with pytest.raises(DmsfsError, match="cannot write"):
            ctl_export.write(pieces(data), out, ctl_export.output_kind(out))
    assert list(tmp_path.iterdir()) == []


def test_directory_export_refuses_paths_leaving_it(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("../evil"), io.BytesIO(b""))
    out = tmp_path / "out"
    with pytest.raises(DmsfsError, match="outside"):
        ctl_export.write(iter([buf.getvalue()]), f"{out}/", "/")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_progress_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    data = [b"x" * 1000] * 10
    for stream, drawn in ((io.StringIO(), False), (Tty(), True)):
        monkeypatch.setattr("sys.stderr", stream)
        assert list(ctl_export.progress(iter(data), 10_000, "ds@v1")) == data
        assert ("100%" in stream.getvalue()) is drawn


# ------------------------------------------------------------------ the daemon's tar stream
class FakeChunks:
    def __init__(self) -> None:
        self.blobs: dict[bytes, bytes] = {}

    def add(self, data: bytes) -> tuple[bytes, int]:
        cid = hashlib.blake2b(data, digest_size=32).digest()
        self.blobs[cid] = data
        return cid, len(data)

    async def get(self, cid: bytes) -> bytes:
        return self.blobs[cid]


class FakeVersions:
    def __init__(self, entries: list[tuple[str, TreeEntry]]) -> None:
        self.entries = entries

    async def walk(self, record: object) -> AsyncIterator[tuple[str, TreeEntry]]:
        for item in self.entries:
            yield item


async def test_tar_stream_of_a_version() -> None:
    chunks = FakeChunks()
    rng = random.Random(3)
    parts = [rng.randbytes(300_000), rng.randbytes(1000)]
    refs = [chunks.add(parts[0]), (HOLE, 2 * MiB + 7), chunks.add(parts[1])]
    content = parts[0] + bytes(2 * MiB + 7) + parts[1]
    mtime_ns = 1_600_000_000_123_456_789
    entries = [
        ("d", TreeEntry(b"d", stat.S_IFDIR | 0o750, 10, 20, mtime_ns, 0, len(content))),
        ("d/f.bin", TreeEntry(b"f.bin", stat.S_IFREG | 0o640, 1000, 1001, mtime_ns, 0,
                              len(content), chunks=refs,
                              xattrs={b"user.k": b"v", b"user.bin": b"\xff\x00"})),
        ("d/\udcffraw", TreeEntry(b"\xffraw", stat.S_IFREG | 0o600, 0, 0, MTIME * 10**9, 0, 5,
                                  chunks=[chunks.add(b"small")])),
        ("l", TreeEntry(b"l", stat.S_IFLNK | 0o777, 0, 0, -1_500_000_000, 0, 5,
                        target=b"d/f.bin")),
    ]
    versions: Any = FakeVersions(entries)
    stream = [p async for p in tar_stream(versions, chunks, object())]  # type: ignore[arg-type]
    assert max(map(len, stream)) <= MiB  # holes too come in bounded pieces
    data = b"".join(stream)
    assert len(data) % tarfile.BLOCKSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(data), encoding="utf-8",
                      errors="surrogateescape") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["d", "d/f.bin", "d/\udcffraw", "l"]
        d, f, raw, link = members
        assert d.isdir() and d.mode == 0o750 and (d.uid, d.gid) == (10, 20)
        assert f.isfile() and f.mode == 0o640 and (f.uid, f.gid) == (1000, 1001)
        assert f.pax_headers["mtime"] == "1600000000.123456789"
        assert f.pax_headers["SCHILY.xattr.user.k"] == "v"
        assert tar.extractfile(f).read() == content  # type: ignore[union-attr]
        assert tar.extractfile(raw).read() == b"small"  # type: ignore[union-attr]
        assert "mtime" not in raw.pax_headers and raw.mtime == MTIME
        assert link.issym() and link.linkname == "d/f.bin"
        assert link.pax_headers["mtime"] == "-1.500000000"
