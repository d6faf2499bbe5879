"""The schema registry: versions of each dataset's JSON Schema, and rejected writes.

A schema version is an immutable JSON object in the store,
``schemas/<dataset>/<number>``, holding the schema (draft 2020-12, for one
record), the globs of the files it applies to and who set it when; the LMDB
table `schemas` mirrors them and is rebuilt from the store like versions.  The
newest version applies to writes.  Rejected writes are kept in the local
index only (`rejects`): they are what this daemon refused.
"""

from __future__ import annotations

import fnmatch
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

import trio

from .errors import InvalidArgument, NotFound, ReadOnly
from .head import announce
from .index import Index
from .stamps import iso_time, user_name
from .store.base import ObjectStore
from .validation.fileformat import format_of

if TYPE_CHECKING:
    from .validation.validator import Validator, Verdict

DEFAULT_GLOBS = ["*.jsonl", "*.ndjson", "*.csv", "*.parquet", "*.json"]
REJECTS_SHOWN = 1000


@dataclass
class SchemaVersion:
    """One version of one dataset's schema."""

    dataset: str
    number: int
    schema: Any
    globs: list[str]
    time_ns: int
    uid: int
    user: str
    _validator: Validator | None = field(default=None, repr=False, compare=False)

    def encode(self) -> bytes:
        return json.dumps({"format": 1, "dataset": self.dataset, "number": self.number,
                           "schema": self.schema, "globs": self.globs,
                           "time_ns": self.time_ns, "uid": self.uid, "user": self.user},
                          sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> SchemaVersion:
        d = json.loads(raw)
        return cls(d["dataset"], d["number"], d["schema"], d["globs"], d["time_ns"],
                   d["uid"], d["user"])

    def to_json(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "version": self.number, "schema": self.schema,
                "globs": self.globs, "time": iso_time(self.time_ns), "uid": self.uid,
                "user": self.user}

    def applies_to(self, path: str) -> str | None:
        """The format of the file at path (relative to the dataset root) if one of the
        globs matches it (a glob without / matches the file name)."""
        name = path.rsplit("/", 1)[-1]
        if not any(fnmatch.fnmatchcase(path if "/" in g else name, g) for g in self.globs):
            return None
        return format_of(name)

    @property
    def validator(self) -> Validator:
        if self._validator is None:
            # imported here: pyarrow adds ~60 MiB to a daemon that never validates
            from .validation.validator import Validator
            self._validator = Validator(self.schema)
        return self._validator


def check_schema(schema: Any) -> None:
    """InvalidArgument with the validator's message unless schema is a valid
    draft 2020-12 schema."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        raise InvalidArgument(f"invalid JSON Schema: {e.message}") from None


def schema_key(dataset: str, number: int) -> str:
    return f"schemas/{dataset}/{number:08d}"


class Schemas:
    """Schema versions of every dataset in one repository."""

    def __init__(self, index: Index, store: ObjectStore, *, read_only: bool = False) -> None:
        self.index = index
        self.store = store
        self.read_only = read_only
        self._current: dict[str, SchemaVersion | None] = {}

    @staticmethod
    def check(schema: Any, globs: list[str] | None) -> list[str]:
        """The globs to use; InvalidArgument if the schema or a glob is invalid."""
        check_schema(schema)
        globs = globs or DEFAULT_GLOBS
        if not all(isinstance(g, str) and g for g in globs):
            raise InvalidArgument("globs must be non-empty strings")
        return globs

    def history(self, dataset: str) -> list[SchemaVersion]:
        """Every schema version of a dataset, oldest first."""
        with self.index.read() as t:
            return [SchemaVersion.decode(raw) for raw in t.iter_schemas(dataset)]

    def current(self, dataset: str) -> SchemaVersion | None:
        """The version that applies to writes now (cached: checked at every close)."""
        if dataset not in self._current:
            history = self.history(dataset)
            self._current[dataset] = history[-1] if history else None
        return self._current[dataset]

    def get(self, dataset: str, number: int | None = None) -> SchemaVersion:
        history = self.history(dataset)
        found = history[-1:] if number is None else [s for s in history if s.number == number]
        if not found:
            raise NotFound(f"{dataset} has no schema" + (f" version {number}" if number else ""))
        return found[0]

    async def set(self, dataset: str, schema: Any, globs: list[str] | None, *, uid: int
                  ) -> SchemaVersion:
        """Register a new schema version (refused with the validator's message if the
        schema is not a valid draft 2020-12 schema)."""
        if self.read_only:
            raise ReadOnly("this daemon serves the store read-only")
        globs = self.check(schema, globs)
        last = self.history(dataset)
        version = SchemaVersion(dataset, (last[-1].number if last else 0) + 1, schema, globs,
                                time.time_ns(), uid, user_name(uid))
        raw = version.encode()
        await trio.to_thread.run_sync(self.store.put, schema_key(dataset, version.number), raw)
        await trio.to_thread.run_sync(announce, self.store)
        with self.index.write() as t:
            t.put_schema(dataset, version.number, raw)
        self._current[dataset] = version
        return version

    async def sync_from_store(self) -> int:
        """Index the schema versions in the store that the index lacks."""
        keys = await trio.to_thread.run_sync(lambda: list(self.store.list("schemas/")))
        with self.index.read() as t:
            known = {(s.dataset, s.number) for s in map(SchemaVersion.decode, t.iter_schemas())}
        new = []
        for key in keys:
            _, dataset, number = key.split("/", 2)
            if (dataset, int(number)) not in known:
                new.append(await trio.to_thread.run_sync(self.store.get, key))
        with self.index.write() as t:
            for raw in new:
                s = SchemaVersion.decode(raw)
                t.put_schema(s.dataset, s.number, raw)
        self._current.clear()
        return len(new)

    # ------------------------------------------------------------ rejected writes
    def reject(self, dataset: str, path: str, uid: int, version: SchemaVersion,
               verdict: Verdict) -> dict[str, Any]:
        """Record a refused write; returns the record."""
        now = time.time_ns()
        record = {"path": path, "time": iso_time(now), "uid": uid, "user": user_name(uid),
                  "schema_version": version.number, "record": verdict.first,
                  "pointer": verdict.pointer, "message": verdict.message,
                  "failed_records": verdict.failed, "records": verdict.records}
        with self.index.write() as t:
            t.add_reject(dataset, now, json.dumps(record).encode())
        return record

    def rejects(self, dataset: str) -> list[dict[str, Any]]:
        """Recent rejected writes of a dataset, newest first."""
        with self.index.read() as t:
            records = [json.loads(raw) for raw in t.iter_rejects(dataset)]
        return records[::-1][:REJECTS_SHOWN]
