"""A store in a local directory.

Each object is one file.  Writes are atomic and durable before put() returns:
temp file, fsync, rename, directory fsync; the file is then made read-only, as
objects never change.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import blake3

from ..errors import NoSpace, NoSuchObject, StoreError, out_of_space
from .base import ObjectStore

TMP_DIR = ".tmp"
CAS_LOCK = ".cas.lock"   # names starting with "." are never keys


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in this directory survive power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _os_error(e: OSError, key: str) -> Exception:
    if e.errno == errno.ENOENT:
        return NoSuchObject(f"no object {key!r}")
    if out_of_space(e):
        return NoSpace(f"store disk full writing {key!r}")
    return StoreError(f"{key}: {e}")


def _tag(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()[:32]


class LocalStore(ObjectStore):
    """Objects as files under a root directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"file://{root}"
        (root / TMP_DIR).mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if not key or key.startswith(("/", ".")) or ".." in key.split("/"):
            raise StoreError(f"bad object key {key!r}")
        return self.root / key

    def _publish(self, tmp: Path, key: str, exclusive: bool) -> bool:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        if exclusive:
            try:
                os.link(tmp, dest)  # fails if dest exists: the atomic "if absent"
            except FileExistsError:
                return False
            finally:
                tmp.unlink()
        else:
            os.replace(tmp, dest)
        fsync_dir(dest.parent)
        return True

    def _write_tmp(self, write: object) -> Path:
        tmp = self.root / TMP_DIR / uuid.uuid4().hex
        try:
            with open(tmp, "wb") as f:
                write(f)  # type: ignore[operator]
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise _os_error(e, str(tmp)) from e
        return tmp

    def put(self, key: str, data: bytes | memoryview) -> None:
        self._publish(self._write_tmp(lambda f: f.write(data)), key, exclusive=False)

    def put_file(self, key: str, path: Path) -> None:
        dest = self._path(key)
        try:
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            dest.parent.mkdir(parents=True, exist_ok=True)
            # same file system: no copy, and straight to the key, so a crash leaves the
            # bytes at path or under key (where recovery looks), never under a temp name
            os.replace(path, dest)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise _os_error(e, key) from e

            def copy(f: object) -> None:
                with open(path, "rb") as src:
                    shutil.copyfileobj(src, f, 1 << 20)  # type: ignore[misc]

            self._publish(self._write_tmp(copy), key, exclusive=False)
            path.unlink()  # only once the object is in place
            return
        # after the move: a staging file left behind by a crash must stay writable
        os.chmod(dest, 0o444)
        fsync_dir(dest.parent)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self._publish(self._write_tmp(lambda f: f.write(data)), key, exclusive=True)

    def get_tagged(self, key: str) -> tuple[bytes, str]:
        data = self.get(key)
        return data, _tag(data)

    def put_if_match(self, key: str, data: bytes, tag: str) -> str | None:
        # the lock makes compare and swap one step for every process on this machine
        with open(self.root / CAS_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current = self.get(key)
            except NoSuchObject:
                return None
            if _tag(current) != tag:
                return None
            self.put(key, data)
        return _tag(data)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except OSError as e:
            raise _os_error(e, key) from e

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except OSError as e:
            raise _os_error(e, key) from e
        try:
            if offset < 0:
                offset = max(0, os.fstat(fd).st_size + offset)
            return os.pread(fd, length, offset)
        except OSError as e:
            raise _os_error(e, key) from e
        finally:
            os.close(fd)

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except OSError as e:
            raise _os_error(e, key) from e

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
        if not base.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if d != TMP_DIR]
            rel = os.path.relpath(dirpath, self.root)
            for name in filenames:
                if name.startswith("."):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    yield key

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as e:
            raise _os_error(e, key) from e
        fsync_dir(path.parent)
