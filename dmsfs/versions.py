"""Versions of datasets: snapshots, their records, tags, and resolving names.

A version record is a small immutable JSON object in the store,
``versions/<id>``, naming the dataset, its number there, the root tree and who
made it when.  A tag is a small object ``tags/<dataset>/<tag>`` naming a
version; tags move, versions never change.  The LMDB tables `versions` and
`tags` mirror these objects; `sync_from_store` rebuilds them from the store
alone, which is how a new state dir (or another machine) learns every version.

A version is published only after everything it references is in the store:
the snapshot seals the staged chunks and trees into packs first, then writes
the record, then indexes it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from .chunkstore import ChunkStore
from .diff import diff_trees
from .errors import InvalidArgument, InvalidName, NotFound, ReadOnly
from .head import announce
from .index import ROOT_INO, Index
from .manifest import TreeBuilder, TreeLoader
from .schemadiff import schema_diff
from .schemas import SchemaVersion, Schemas
from .stamps import iso_time, user_name
from .store.base import ObjectStore
from .tree import Tree, TreeEntry

log = logging.getLogger(__name__)

RECORD_FORMAT = 1
MIN_PREFIX = 8
TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,127}")
NUMBERED = re.compile(r"v([0-9]+)")

# (dataset, names under the dataset root whose meaning changed) -> kernel caches
Listener = Callable[[str, list[bytes]], Awaitable[None]]


def uuid7() -> str:
    """A time-ordered UUID (RFC 9562 version 7), strictly increasing in this process."""
    global _last_ms
    with _uuid_lock:
        ms = _last_ms = max(time.time_ns() // 1_000_000, _last_ms + 1)
    value = (ms << 80) | (0x7 << 76) | (int.from_bytes(os.urandom(10)) & ((1 << 76) - 1))
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # the RFC 4122 variant
    return str(uuid.UUID(int=value))


_uuid_lock = threading.Lock()
_last_ms = 0


def version_key(vid: str) -> str:
    return f"versions/{vid}"


def tag_key(dataset: str, tag: str) -> str:
    return f"tags/{dataset}/{tag}"


@dataclass
class VersionRecord:
    """One snapshot of one dataset."""

    id: str
    dataset: str
    number: int
    time_ns: int
    uid: int
    user: str
    message: str
    tree: bytes
    files: int
    bytes: int
    root: dict[str, Any]              # the dataset directory's mode, uid, gid, mtime_ns, xattrs
    schema: int | None = None         # the schema version the live tree was validated by
    tags: list[str] = field(default_factory=list)

    def encode(self) -> bytes:
        """The stored record (tags are not part of it: they move)."""
        return json.dumps({
            "format": RECORD_FORMAT, "id": self.id, "dataset": self.dataset,
            "number": self.number, "time_ns": self.time_ns, "uid": self.uid,
            "user": self.user, "message": self.message, "tree": self.tree.hex(),
            "files": self.files, "bytes": self.bytes, "root": self.root,
            "schema": self.schema,
        }, sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> VersionRecord:
        d = json.loads(raw)
        return cls(d["id"], d["dataset"], d["number"], d["time_ns"], d["uid"], d["user"],
                   d["message"], bytes.fromhex(d["tree"]), d["files"], d["bytes"], d["root"],
                   d.get("schema"))

    def to_json(self) -> dict[str, object]:
        return {"number": self.number, "id": self.id, "dataset": self.dataset,
                "time": iso_time(self.time_ns), "uid": self.uid, "user": self.user,
                "message": self.message, "tags": self.tags, "files": self.files,
                "bytes": self.bytes, "schema": self.schema}

    def root_entry(self) -> TreeEntry:
        """The snapshot's top directory as a tree entry."""
        r = self.root
        return TreeEntry(f"@v{self.number}".encode(), r["mode"], r["uid"], r["gid"],
                         r["mtime_ns"], self.time_ns, self.bytes, tree=self.tree,
                         files=self.files, xattrs=self.root_xattrs)

    @property
    def root_xattrs(self) -> dict[bytes, bytes]:
        return {bytes.fromhex(k): bytes.fromhex(v)
                for k, v in self.root.get("xattrs", {}).items()}


class Versions:
    """Snapshots, tags and version names of every dataset in one repository."""

    def __init__(self, index: Index, chunks: ChunkStore, store: ObjectStore, schemas: Schemas,
                 *, read_only: bool = False) -> None:
        self.read_only = read_only
        self.schemas = schemas
        self.index = index
        self.chunks = chunks
        self.store = store
        self.builder = TreeBuilder(index, chunks)
        self.trees = TreeLoader(chunks)
        self.listeners: list[Listener] = []
        self._lock = trio.Lock()

    # ------------------------------------------------------------ reading
    def list(self, dataset: str) -> list[VersionRecord]:
        """Every version of a dataset, newest first, with its tags."""
        with self.index.read() as t:
            records = [VersionRecord.decode(raw) for raw in t.iter_versions(dataset)]
            tags = list(t.iter_tags(dataset))
            if not records and t.lookup(ROOT_INO, dataset.encode()) is None:
                raise NotFound(f"no dataset {dataset!r}")
        by_number = {r.number: r for r in records}
        for tag, number in sorted(tags):
            if number in by_number:
                by_number[number].tags.append(tag)
        return records[::-1]

    def resolve(self, dataset: str, spec: str) -> VersionRecord:
        """The version `spec` names: v<N>, latest, a tag, an id or a unique prefix."""
        return self.resolve_how(dataset, spec)[0]

    def resolve_how(self, dataset: str, spec: str) -> tuple[VersionRecord, bool]:
        """(the version spec names, whether spec named it by an id prefix: such a name
        can come to name nothing when a later id shares the prefix)."""
        versions = self.list(dataset)
        found: list[VersionRecord] = []
        if m := NUMBERED.fullmatch(spec):
            found = [r for r in versions if r.number == int(m.group(1))]
        elif spec == "latest":
            found = versions[:1]
        else:
            found = ([r for r in versions if spec in r.tags]
                     or [r for r in versions if r.id == spec.lower()])
            if not found and len(spec) >= MIN_PREFIX:
                found = [r for r in versions if r.id.startswith(spec.lower())]
                if len(found) > 1:
                    raise InvalidArgument(f"version prefix {spec!r} of {dataset} is ambiguous")
                if found:
                    return found[0], True
        if not found:
            raise NotFound(f"{dataset} has no version {spec!r}")
        return found[0], False

    def datasets(self) -> list[str]:
        """Datasets that have versions."""
        with self.index.read() as t:
            return sorted({VersionRecord.decode(raw).dataset for raw in t.iter_versions()})

    async def walk(self, record: VersionRecord) -> AsyncIterator[tuple[str, TreeEntry]]:
        """(path, entry) of everything in a version, parents before children."""
        async for item in self.trees.walk(record.tree):
            yield item

    async def live_tree(self, dataset: str) -> tuple[bytes, dict[bytes, bytes]]:
        """The live tree of a dataset as encoded trees in memory (nothing stored)."""
        ino = self.dataset_ino(dataset)
        built = await trio.to_thread.run_sync(self.builder.build, ino, False,
                                              limiter=self.chunks.cpu)
        return built.tree, built.raw

    async def diff(self, a: tuple[str, str | None], b: tuple[str, str | None], *,
                   schema: bool = False, rows: bool = False, key: list[str] | None = None,
                   limit: int = 20) -> dict[str, object]:
        """Files added, removed, modified and renamed from a to b ((dataset, version
        spec), a spec of None meaning the live tree); with schema, the change of
        their schemas; with rows, the rows that changed in their tabular files."""
        sides = []
        extra: dict[bytes, bytes] = {}
        for dataset, spec in (a, b):
            if spec is None:
                tid, trees = await self.live_tree(dataset)
                extra.update(trees)
                sides.append((dataset, tid))
            else:
                sides.append((f"{dataset}@{spec}", self.resolve(dataset, spec).tree))

        async def load(tid: bytes) -> Tree:
            return await self.trees.load(tid, extra)

        result: dict[str, object] = {"a": sides[0][0], "b": sides[1][0],
                                     **await diff_trees(sides[0][1], sides[1][1], load)}
        if schema:
            result["schema"] = self._schema_diff(a, b)
        if rows:
            from .rowdiff import diff_rows  # pyarrow: loaded when first needed
            result["rows"] = {"key": key, "files": await diff_rows(
                result, sides[0][1], sides[1][1], load, self.chunks, key, limit)}
        return result

    def _schema_of(self, dataset: str, spec: str | None) -> SchemaVersion | None:
        number = (self.resolve(dataset, spec).schema if spec is not None else
                  schema_number(self.schemas.current(dataset)))
        return self.schemas.get(dataset, number) if number is not None else None

    def _schema_diff(self, a: tuple[str, str | None], b: tuple[str, str | None]
                     ) -> dict[str, object]:
        sa, sb = self._schema_of(*a), self._schema_of(*b)
        return {"a_version": schema_number(sa), "b_version": schema_number(sb),
                **schema_diff(sa.schema if sa else {}, sb.schema if sb else {})}

    # ------------------------------------------------------------ changing
    def _writable(self) -> None:
        if self.read_only:
            raise ReadOnly("this daemon serves the store read-only")

    def dataset_ino(self, dataset: str) -> int:
        """The live dataset directory's inode; NotFound if there is none."""
        with self.index.read() as t:
            ino = t.lookup(ROOT_INO, dataset.encode())
        if ino is None:
            raise NotFound(f"no dataset {dataset!r}")
        return ino

    async def snapshot(self, dataset: str, *, message: str = "", tag: str | None = None,
                       uid: int) -> VersionRecord:
        """Record the live tree of a dataset as its next version."""
        self._writable()
        if tag is not None:
            check_tag(tag)
        ino = self.dataset_ino(dataset)
        async with self._lock:
            with self.index.watch_stale() as changed:
                built = await trio.to_thread.run_sync(self.builder.build, ino, True,
                                                      limiter=self.chunks.cpu)
                self.builder.cache(built, changed)
            with self.index.read() as t:
                root = t.get_inode(ino)
                root_xattrs = {k.hex(): v.hex() for k, v in t.xattr_items(ino)}
                last = max((VersionRecord.decode(r).number for r in t.iter_versions(dataset)),
                           default=0)
            assert root is not None
            root_attrs = {"mode": root.mode, "uid": root.uid, "gid": root.gid,
                          "mtime_ns": root.mtime_ns, "xattrs": root_xattrs}
            record = VersionRecord(
                uuid7(), dataset, last + 1, time.time_ns(), uid, user_name(uid), message,
                built.tree, built.files, built.bytes, root_attrs,
                schema_number(self.schemas.current(dataset)))
            await self.chunks.flush()  # everything it references is stored first
            await self._put(version_key(record.id), record.encode())
            with self.index.write() as t:
                t.put_version(dataset, record.number, record.encode())
            names = [b"@latest", f"@v{record.number}".encode(), f"@{record.id}".encode()]
            if tag is not None:
                await self._set_tag(record, tag, uid)
                record.tags.append(tag)
                names.append(f"@{tag}".encode())
        await self._notify(dataset, names)
        log.info("snapshot %s@v%d %s: %d files, %d bytes", dataset, record.number, record.id,
                 record.files, record.bytes)
        return record

    async def tag(self, dataset: str, spec: str, tag: str, *, uid: int) -> VersionRecord:
        """Point a tag at a version (moving it if it named another)."""
        self._writable()
        check_tag(tag)
        async with self._lock:
            record = self.resolve(dataset, spec)
            await self._set_tag(record, tag, uid)
        await self._notify(dataset, [f"@{tag}".encode()])
        return self.resolve(dataset, f"v{record.number}")

    async def untag(self, dataset: str, tag: str, *, uid: int) -> None:
        self._writable()
        async with self._lock:
            with self.index.read() as t:
                if t.get_tag(dataset, tag) is None:
                    raise NotFound(f"{dataset} has no tag {tag!r}")
            await trio.to_thread.run_sync(self.store.delete, tag_key(dataset, tag))
            with self.index.write() as t:
                t.delete_tag(dataset, tag)
        log.info("untag %s %s by uid %d", dataset, tag, uid)
        await self._notify(dataset, [f"@{tag}".encode()])

    async def _set_tag(self, record: VersionRecord, tag: str, uid: int) -> None:
        doc = {"version": record.id, "time_ns": time.time_ns(), "uid": uid}
        await self._put(tag_key(record.dataset, tag), json.dumps(doc).encode())
        with self.index.write() as t:
            t.put_tag(record.dataset, tag, record.number)

    async def _put(self, key: str, data: bytes) -> None:
        await trio.to_thread.run_sync(self.store.put, key, data, limiter=self.chunks.io)

    async def _notify(self, dataset: str, names: list[bytes]) -> None:
        await trio.to_thread.run_sync(announce, self.store, limiter=self.chunks.io)
        await self.tell(dataset, names)

    async def tell(self, dataset: str, names: list[bytes]) -> None:
        """Tell the listeners (the kernel's caches) that these names of a dataset's
        versions may now mean something else."""
        for listener in self.listeners:
            await listener(dataset, names)

    # ------------------------------------------------------------ rebuilding
    async def sync_from_store(
            self, before_indexing: Callable[[], Awaitable[None]] | None = None) -> int:
        """Index every version and tag in the store that the index lacks; returns how
        many versions were new.  before_indexing runs once the records are read and
        before anyone can see them (the caller indexes the packs they use)."""
        keys = await trio.to_thread.run_sync(lambda: list(self.store.list("versions/")))
        with self.index.read() as t:
            known = {VersionRecord.decode(raw).id for raw in t.iter_versions()}
        new = [VersionRecord.decode(await trio.to_thread.run_sync(self.store.get, key))
               for key in keys if key.removeprefix("versions/") not in known]
        tag_keys = await trio.to_thread.run_sync(lambda: list(self.store.list("tags/")))
        tags = []
        for key in tag_keys:
            _, dataset, tag = key.split("/", 2)
            doc = json.loads(await trio.to_thread.run_sync(self.store.get, key))
            tags.append((dataset, tag, doc["version"]))
        if before_indexing is not None:
            await before_indexing()
        with self.index.write() as t:
            for r in new:
                t.put_version(r.dataset, r.number, r.encode())
            t.reset_tags()  # the store's tags are the truth: some may be gone
            numbers = {r.id: r.number
                       for r in map(VersionRecord.decode, t.iter_versions())}
            for dataset, tag, vid in tags:
                if vid in numbers:
                    t.put_tag(dataset, tag, numbers[vid])
        if new:
            log.info("indexed %d versions from the store", len(new))
        return len(new)


def schema_number(version: SchemaVersion | None) -> int | None:
    return version.number if version is not None else None


def check_tag(tag: str) -> None:
    """Tags name versions in paths (@tag): they must not look like another name."""
    if not TAG_NAME.fullmatch(tag) or NUMBERED.fullmatch(tag) or tag == "latest":
        raise InvalidName(f"invalid tag {tag!r}: letters, digits, . _ -, starting with a "
                          "letter; not v<N> or latest")
