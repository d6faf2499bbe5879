"""The object-store interface every backend implements.

Stores move opaque bytes under string keys ("config", "packs/ab/ab12...").
Objects are written once and never modified; every call is idempotent, so a
retry after an ambiguous failure is always safe.  Calls block: the core runs
them in worker threads (trio.to_thread) and never on the trio thread, because a
remote store may take tens of milliseconds per request.

Errors: NoSuchObject for a missing key, StoreError for everything the backend
could not do (after its own retries), NoSpace when local space ran out.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path


class ObjectStore(ABC):
    """put / get / ranged get / list / delete / put-if-absent over immutable objects."""

    url: str
    remote = False   # True: requests are slow and paid for (cache and spool them)

    @abstractmethod
    def put(self, key: str, data: bytes | memoryview) -> None:
        """Store data under key, atomically: readers see all of it or nothing."""

    def put_file(self, key: str, path: Path) -> None:
        """Store a local file's content under key and consume the file.

        Backends may move the file into place or stream it; either way it is
        gone from ``path`` once the call returns.
        """
        self.put(key, path.read_bytes())
        path.unlink()

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Store data unless key exists; True if this call created it."""

    @abstractmethod
    def get_tagged(self, key: str) -> tuple[bytes, str]:
        """The object and an opaque tag of this content (S3: its ETag), for
        put_if_match: the few mutable objects (the writer's lease) change only
        by compare-and-swap."""

    @abstractmethod
    def put_if_match(self, key: str, data: bytes, tag: str) -> str | None:
        """Replace key only while its content still has tag; the new tag, or None
        if the object changed or is gone meanwhile."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The whole object."""

    @abstractmethod
    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """length bytes from offset; a negative offset counts from the end."""

    @abstractmethod
    def size(self, key: str) -> int:
        """Size of the object in bytes."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with prefix, in no particular order."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove key; removing a missing key is not an error."""

    def free_bytes(self) -> int | None:
        """Space left for new objects, when the backend knows it."""
        return None

    def prefetch(self, key: str, offset: int, length: int) -> None:  # noqa: B027
        """A hint that this range will be read soon; returns at once.  Stores with
        a local cache start bringing it near; the others ignore it."""

    def close(self) -> None:  # noqa: B027 -- optional hook
        """Release connections and file handles."""


class Layer(ObjectStore):
    """A store in front of another (cache, spool): every call it does not
    override goes to the backend unchanged."""

    remote = True    # layers are put only in front of remote stores

    def __init__(self, backend: ObjectStore) -> None:
        self.backend = backend
        self.url = backend.url

    def put(self, key: str, data: bytes | memoryview) -> None:
        self.backend.put(key, data)

    def put_file(self, key: str, path: Path) -> None:
        self.backend.put_file(key, path)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self.backend.put_if_absent(key, data)

    def get_tagged(self, key: str) -> tuple[bytes, str]:
        return self.backend.get_tagged(key)

    def put_if_match(self, key: str, data: bytes, tag: str) -> str | None:
        return self.backend.put_if_match(key, data, tag)

    def get(self, key: str) -> bytes:
        return self.backend.get(key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        return self.backend.get_range(key, offset, length)

    def size(self, key: str) -> int:
        return self.backend.size(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        return self.backend.list(prefix)

    def delete(self, key: str) -> None:
        self.backend.delete(key)

    def prefetch(self, key: str, offset: int, length: int) -> None:
        self.backend.prefetch(key, offset, length)

    def close(self) -> None:
        self.backend.close()
