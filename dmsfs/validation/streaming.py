"""Validation that runs while a file is being written.

A big CSV or JSONL file copied in would otherwise be validated only at close(),
after all of it arrived: close() would wait as long as reading the file again.
Instead, the bytes the writer cuts (in file order, from offset 0) are also
handed to a validator running in its own thread; at close() only the tail is
left.  If the file is written any other way than by appending (a seek back, a
truncate), the writer drops the stream and the file is validated at close as
before: the verdict is always that of the whole, final file.
"""

from __future__ import annotations

import io
import threading
from collections import deque

from .validator import Validator, Verdict

STREAMABLE = ("csv", "jsonl")        # read front to back (Parquet needs its footer first)
BUFFER_CAP = 24 << 20                # bytes handed over and not yet read
HEAD = 1 << 20                       # kept to let a reader look at the start twice


class Aborted(Exception):
    """The writer gave the stream up."""


class BytePipe(io.RawIOBase):
    """Bytes handed from writer threads to one reader thread, in order.

    A read returns as many bytes as asked unless the stream ended.  The first
    HEAD bytes are kept, so the reader may seek back to 0 after peeking at
    them (the CSV reader reads the header row first)."""

    def __init__(self) -> None:
        super().__init__()
        self._cond = threading.Condition()
        self._parts: deque[memoryview] = deque()
        self._buffered = 0
        self._head = bytearray()
        self._pos = 0                 # the reader's position in the stream
        self._taken = 0               # bytes taken out of _parts
        self._ended = False
        self._aborted = False
        self._reader_gone = False

    # ------------------------------------------------------------ writer side
    def feed(self, data: bytes, wait: bool = True) -> None:
        """Append data; with wait, block while the buffer is full (never on the
        event loop's thread: pass wait=False there)."""
        with self._cond:
            if len(self._head) < HEAD:
                self._head += data[:HEAD - len(self._head)]
            while wait and self._buffered >= BUFFER_CAP and not self._reader_gone:
                self._cond.wait()
            if self._reader_gone:
                return
            self._parts.append(memoryview(data))
            self._buffered += len(data)
            self._cond.notify_all()

    def finish(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._cond.notify_all()

    def reader_gone(self) -> None:
        """The reader stopped: later feeds are dropped, blocked ones return."""
        with self._cond:
            self._reader_gone = True
            self._parts.clear()
            self._buffered = 0
            self._cond.notify_all()

    # ------------------------------------------------------------ reader side
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("a stream has no end to seek from")
        if offset != self._pos and (offset > self._taken or self._taken > len(self._head)):
            raise io.UnsupportedOperation("a stream seeks back only within its head")
        self._pos = offset
        return offset

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        out = memoryview(buffer).cast("B")
        got = 0
        for piece in self._take(len(out)):
            out[got:got + len(piece)] = piece
            got += len(piece)
        return got

    def read_buffer(self, n: int) -> bytes | memoryview:
        """Up to n bytes (fewer only at the end) without a copy where they lie in
        one fed piece: Arrow's readers call this instead of read() when it exists."""
        pieces = self._take(n)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _take(self, want: int) -> list[bytes | memoryview]:
        """The next `want` bytes as pieces (fewer only at the end of the stream)."""
        pieces: list[bytes | memoryview] = []
        got = 0
        with self._cond:
            while got < want:
                if self._aborted:
                    raise Aborted("the file was not written front to back")
                if self._pos < self._taken:      # re-reading the head (a copy: it grows)
                    n = min(want - got, self._taken - self._pos)
                    pieces.append(bytes(self._head[self._pos:self._pos + n]))
                elif self._parts:
                    part = self._parts[0]
                    n = min(want - got, len(part))
                    pieces.append(part[:n])
                    if n == len(part):
                        self._parts.popleft()
                    else:
                        self._parts[0] = part[n:]
                    self._buffered -= n
                    self._taken += n
                    self._cond.notify_all()
                elif self._ended:
                    break
                else:
                    self._cond.wait()
                    continue
                got += n
                self._pos += n
        return pieces


class StreamedValidation:
    """One file's validation, fed as the file is written."""

    def __init__(self, validator: Validator, fmt: str) -> None:
        self.pipe = BytePipe()
        self._verdict: Verdict | None = None
        self._thread = threading.Thread(target=self._run, args=(validator, fmt),
                                        name="validate-stream", daemon=True)
        self._thread.start()

    def _run(self, validator: Validator, fmt: str) -> None:
        try:
            self._verdict = validator.validate(self.pipe, fmt)
        finally:
            self.pipe.reader_gone()

    def feed(self, data: bytes, wait: bool = True) -> None:
        self.pipe.feed(data, wait)

    def abort(self) -> None:
        self.pipe.abort()

    def verdict(self) -> Verdict:
        """The verdict once everything was fed (blocking: run it in a worker thread)."""
        self.pipe.finish()
        self._thread.join()
        assert self._verdict is not None
        return self._verdict
