"""Write an exported version (a tar stream from the daemon) as OUT.tar, OUT.tar.zst,
OUT.zip or into OUT_DIR/.

The conversion happens here, in dmsctl, streaming: one member at a time, never a
whole file in memory.  Output goes to a hidden name next to OUT and is renamed
into place when complete, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import zstandard

from dmsfs.errors import DmsfsError, UsageError
from dmsfs.sizes import format_size

FORMATS = (".tar.zst", ".tar", ".zip", "/")
PIECE = 1 << 20
ZIP_TIMES = ((1980, 1, 1, 0, 0, 0), (2107, 12, 31, 23, 59, 58))  # what a zip entry can hold
PROGRESS_EVERY = 0.2  # seconds


def output_kind(out: str) -> str:
    """Which of FORMATS `out` asks for; a UsageError when none (or a full directory)."""
    kind = next((f for f in FORMATS if out.endswith(f)), None)
    if kind is None:
        raise UsageError(f"{out}: OUT must end in .tar, .tar.zst, .zip or / (a directory)")
    if kind == "/" and os.path.isdir(out) and os.listdir(out):
        raise UsageError(f"{out} is not empty: export into a new or empty directory")
    return kind


def write(pieces: Iterable[bytes], out: str, kind: str) -> None:
    """Convert the tar stream `pieces` into `out` of the given kind (see output_kind)."""
    convert = WRITERS[kind]
    pieces = iter(pieces)
    try:
        with _staged(Path(os.path.abspath(out)), is_dir=kind == "/") as tmp:
            convert(pieces, tmp)
            for _ in pieces:  # tarfile stops reading at the end-of-archive blocks
                pass
    except (OSError, tarfile.TarError, zstandard.ZstdError, UnicodeError) as e:
        raise DmsfsError(f"cannot write {out}: {e}") from e


def progress(pieces: Iterable[bytes], total: int, label: str) -> Iterator[bytes]:
    """Pass pieces through, drawing a progress bar on stderr when it is a terminal."""
    if not sys.stderr.isatty():
        yield from pieces
        return
    done, shown = 0, 0.0
    for piece in pieces:
        done += len(piece)
        if time.monotonic() - shown >= PROGRESS_EVERY:
            _draw(label, done, total)
            shown = time.monotonic()
        yield piece
    _draw(label, done, total)
    print(file=sys.stderr)


def _draw(label: str, done: int, total: int) -> None:
    done = min(done, total)  # the tar stream is a little larger than the file bytes
    frac = done / total if total else 1.0
    bar = "#" * int(frac * 30)
    print(f"\r{label} [{bar:<30}] {frac:4.0%} {format_size(done)} of {format_size(total)}",
          end="", file=sys.stderr, flush=True)


@contextmanager
def _staged(out: Path, *, is_dir: bool) -> Iterator[Path]:
    """A temporary path next to `out`, moved to `out` if the block succeeds."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        if is_dir:
            tmp.mkdir()
        yield tmp
        if is_dir and out.is_dir():  # an empty directory: move the contents in
            for child in tmp.iterdir():
                os.rename(child, out / child.name)
            tmp.rmdir()
        else:
            os.replace(tmp, out)
    except BaseException:
        if is_dir:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------ the writers
def write_tar(pieces: Iterable[bytes], path: Path) -> None:
    with open(path, "wb") as f:
        for piece in pieces:
            f.write(piece)


def write_tar_zst(pieces: Iterable[bytes], path: Path) -> None:
    with open(path, "wb") as f, zstandard.ZstdCompressor().stream_writer(f) as z:
        for piece in pieces:
            z.write(piece)


def write_zip(pieces: Iterable[bytes], path: Path) -> None:
    with tarfile.open(fileobj=_reader(pieces), mode="r|") as tar, \
            zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for member in tar:
            info = _zip_info(member)
            if member.isfile():
                src = tar.extractfile(member)
                assert src is not None  # a regular file always has data
                with zf.open(info, "w") as dst:
                    shutil.copyfileobj(src, dst, PIECE)
            else:
                zf.writestr(info, os.fsencode(member.linkname))


def _zip_info(member: tarfile.TarInfo) -> zipfile.ZipInfo:
    """A zip entry for a tar member: Unix mode and type in the external attributes,
    a symlink's target as its content (the Info-ZIP convention)."""
    name = member.name + ("/" if member.isdir() else "")
    when = min(max(ZIP_TIMES[0], tuple(time.localtime(member.mtime)[:6])), ZIP_TIMES[1])
    info = zipfile.ZipInfo(name, when)  # type: ignore[arg-type]
    kind = stat.S_IFDIR if member.isdir() else stat.S_IFLNK if member.issym() else stat.S_IFREG
    info.external_attr = (kind | member.mode) << 16
    if member.isdir():
        info.external_attr |= 0x10  # MS-DOS directory flag
    info.file_size = member.size  # known up front: zipfile picks zip64 when it must
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def extract_dir(pieces: Iterable[bytes], path: Path) -> None:
    with tarfile.open(fileobj=_reader(pieces), mode="r|") as tar:
        tar.extractall(path, filter=_safe_keeping_modes)


def _safe_keeping_modes(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """Refuse what tarfile's "data" filter refuses (absolute or escaping paths,
    device files), but keep every mode bit, as `tar -xp` does, and let a symlink
    pointing outside stay a link (a dataset may hold one; the check still refuses
    any member whose real path leaves `dest`, so nothing is written through it).
    Files belong to whoever extracts."""
    try:
        tarfile.data_filter(member, dest)
    except (tarfile.AbsoluteLinkError, tarfile.LinkOutsideDestinationError):
        pass
    return member.replace(uid=None, gid=None, uname=None, gname=None,  # type: ignore[arg-type]
                          deep=False)


WRITERS: dict[str, Callable[[Iterable[bytes], Path], None]] = {
    ".tar": write_tar, ".tar.zst": write_tar_zst, ".zip": write_zip, "/": extract_dir}


# ------------------------------------------------------------------ a stream as a file
class _PieceReader(io.RawIOBase):
    """A readable file over an iterator of byte strings (tarfile wants read())."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self._pieces = iter(pieces)
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._pending = memoryview(piece)
        n = min(len(buf), len(self._pending))
        buf[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _reader(pieces: Iterable[bytes]) -> io.BufferedReader:
    return io.BufferedReader(_PieceReader(pieces), PIECE)
