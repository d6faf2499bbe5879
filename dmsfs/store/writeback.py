"""Write-back in front of a remote store: writes land in a local spool, durable
at once, and upload in the background, in order.

Every put or delete becomes a spool file named by a sequence number, so the
order survives a crash.  Uploader threads send packs in parallel, but any other
object (a version record, a tag, a schema, the change marker) is a barrier: it
starts only when everything spooled before it is in the store, and nothing
spooled after it starts first.  So a reader of the store never sees a version
before the packs it references.  While an object waits, reads of it are served
from the spool; when the store is unreachable the spool grows and uploads
resume when it returns.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from ..errors import NoSpace, NoSuchObject, StoreError, out_of_space
from .base import Layer, ObjectStore
from .local import fsync_dir

log = logging.getLogger(__name__)

UPLOADERS = 4
RETRY_CAP_SECONDS = 5.0
TMP = ".tmp"


def _parallel(key: str) -> bool:
    """Packs are referenced by nothing until a later barrier: they may overlap."""
    return key.startswith("packs/")


@dataclass
class Entry:
    seq: int
    op: str            # "put" or "del"
    key: str
    path: Path
    size: int
    created: float     # wall clock, for the backlog's age
    state: str = "queued"   # queued -> sending -> done


class WriteBack(Layer):
    """An ObjectStore whose writes go through a local spool to `backend`; the few
    mutable objects (the lease) change by compare-and-swap straight on it."""

    def __init__(self, backend: ObjectStore, spool_dir: Path,
                 fence: Callable[[], bool] = lambda: True) -> None:
        super().__init__(backend)
        self.dir = spool_dir
        # barriers upload only while this says the store is still ours (the lease)
        self.fence = fence
        (spool_dir / TMP).mkdir(parents=True, exist_ok=True)
        for leftover in (spool_dir / TMP).iterdir():
            leftover.unlink()
        self._cond = threading.Condition()
        self._queue: list[Entry] = []           # in sequence order, until uploaded
        self._latest: dict[str, Entry] = {}     # the newest spooled op per key
        self._seq = 0
        self._stopping = False
        self.uploaded = 0
        self._load()
        self._threads = [threading.Thread(target=self._upload_loop, name=f"upload-{i}",
                                          daemon=True) for i in range(UPLOADERS)]
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------ spool files
    def _load(self) -> None:
        for path in sorted(p for p in self.dir.iterdir() if p.is_file()):
            seq, op, key = path.name.split(".", 2)
            st = path.stat()
            self._add(Entry(int(seq), op, unquote(key), path, st.st_size, st.st_mtime))
        if self._queue:
            log.info("upload spool: %d objects from a previous run", len(self._queue))

    def _add(self, entry: Entry) -> None:
        self._queue.append(entry)
        self._latest[entry.key] = entry
        self._seq = max(self._seq, entry.seq)

    def _spool(self, op: str, key: str, place: Callable[[Path], int]) -> None:
        """Make a spool file for op on key with place(path) -> size, durably, in order."""
        with self._cond:
            self._seq += 1
            seq = self._seq
            path = self.dir / f"{seq:016d}.{op}.{quote(key, safe='')}"
            try:
                size = place(path)
                fsync_dir(self.dir)
            except OSError as e:
                path.unlink(missing_ok=True)
                if out_of_space(e):
                    raise NoSpace(f"local spool full writing {key!r}") from e
                raise StoreError(f"spooling {key}: {e}") from e
            self._add(Entry(seq, op, key, path, size, time.time()))
            self._cond.notify_all()

    def put(self, key: str, data: bytes | memoryview) -> None:
        def place(path: Path) -> int:
            tmp = self.dir / TMP / path.name
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, path)
            return len(data)
        self._spool("put", key, place)

    def put_file(self, key: str, path: Path) -> None:
        def place(dest: Path) -> int:
            with open(path, "rb") as f:
                os.fsync(f.fileno())
                size = os.fstat(f.fileno()).st_size
            os.rename(path, dest)    # the spool and the staging area share the state dir
            return size
        self._spool("put", key, place)

    def delete(self, key: str) -> None:
        def place(path: Path) -> int:
            path.touch()     # the name says it all
            return 0
        self._spool("del", key, place)

    # ------------------------------------------------------------ reads
    def _spooled(self, key: str) -> Entry | None:
        with self._cond:
            entry = self._latest.get(key)
        if entry is not None and entry.op == "del":
            raise NoSuchObject(f"no object {key!r}")
        return entry

    def _read_spooled(self, key: str, offset: int, length: int | None) -> bytes | None:
        entry = self._spooled(key)
        if entry is None:
            return None
        try:
            with open(entry.path, "rb") as f:
                if offset < 0:
                    offset = max(0, entry.size + offset)
                f.seek(offset)
                return f.read() if length is None else f.read(length)
        except FileNotFoundError:
            return None      # uploaded meanwhile: the store has it

    def get(self, key: str) -> bytes:
        data = self._read_spooled(key, 0, None)
        return self.backend.get(key) if data is None else data

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        data = self._read_spooled(key, offset, length)
        return self.backend.get_range(key, offset, length) if data is None else data

    def prefetch(self, key: str, offset: int, length: int) -> None:
        with self._cond:
            spooled = key in self._latest
        if not spooled:      # a spooled object is read from the spool
            self.backend.prefetch(key, offset, length)

    def size(self, key: str) -> int:
        entry = self._spooled(key)
        return self.backend.size(key) if entry is None else entry.size

    def list(self, prefix: str = "") -> Iterator[str]:
        with self._cond:
            latest = {k: e.op for k, e in self._latest.items() if k.startswith(prefix)}
        for key in self.backend.list(prefix):
            if key not in latest:
                yield key
        yield from (k for k, op in latest.items() if op == "put")

    # ------------------------------------------------------------ uploading
    def _next(self) -> Entry | None:
        """The first entry that may start now (called with the lock held)."""
        earlier_pending = False
        for e in self._queue:
            if e.state == "queued":
                if _parallel(e.key) and e.op == "put":
                    return e
                if not earlier_pending and self.fence():
                    return e
                return None      # a barrier waits; so does everything after it
            earlier_pending = True   # sending
            if not _parallel(e.key) or e.op != "put":
                return None      # a barrier is on its way: nothing after it starts
        return None

    def _upload_loop(self) -> None:
        while True:
            with self._cond:
                entry = self._next()
                while entry is None and not self._stopping:
                    self._cond.wait(1.0)   # the fence may change without a notify
                    entry = self._next()
                if self._stopping:
                    return
                assert entry is not None
                entry.state = "sending"
            self._send(entry)

    def _send(self, entry: Entry) -> None:
        delay, failing_since = 0.1, None
        while not self._stopping:
            try:
                if entry.op == "del":
                    self.backend.delete(entry.key)
                else:
                    # a link, consumed by the upload: the spool file keeps serving reads
                    link = self.dir / TMP / entry.path.name
                    link.unlink(missing_ok=True)
                    os.link(entry.path, link)
                    self.backend.put_file(entry.key, link)
                break
            except (StoreError, OSError) as e:
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning("upload of %s failed, retrying until the store answers: %s",
                                entry.key, e)
                time.sleep(delay * (0.5 + random.random() / 2))
                delay = min(RETRY_CAP_SECONDS, delay * 2)
        else:
            with self._cond:
                entry.state = "queued"
            return
        if failing_since is not None:
            log.warning("upload of %s succeeded after %.0f s", entry.key,
                        time.monotonic() - failing_since)
        with self._cond:
            entry.state = "done"
            self._queue.remove(entry)
            if self._latest.get(entry.key) is entry:
                del self._latest[entry.key]
            entry.path.unlink(missing_ok=True)
            self.uploaded += 1
            self._cond.notify_all()

    # ------------------------------------------------------------ state
    def backlog(self) -> dict[str, float]:
        """Objects waiting for upload, their bytes and the oldest one's age in seconds."""
        with self._cond:
            queue = list(self._queue)
        return {"objects": len(queue), "bytes": sum(e.size for e in queue),
                "oldest_age": round(time.time() - min((e.created for e in queue),
                                                      default=time.time()), 1)}

    def drain(self, timeout: float) -> bool:
        """Wait until everything spooled is uploaded; False if time ran out."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 1.0))
        return True

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=10)
        super().close()
