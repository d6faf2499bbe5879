"""dmsfs.client: the Python SDK for the control API (dmsctl is built on it).

    from dmsfs.client import Client
    c = Client.discover()          # or Client("unix:/var/lib/dmsfs/<id>/api.sock")
    print(c.stats()["dedup_ratio"])
    v = c.snapshot("mydata", message="nightly")     # {"number": 3, "id": ..., ...}
    total, pieces = c.export_stream("mydata", "v3")  # a tar stream of that version

Finding the daemon (SPEC section 8), first match wins: an explicit address;
DMSFS_API; a state dir (`state=` or DMSFS_STATE) and its api.sock; a mount
(`mount=` or DMSFS_MOUNT, else the dmsfs mount holding the current directory),
which names its socket in the root's `user.dmsfs.api` attribute; the only dmsfs
mount on the machine; the only state dir under the default location.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from .errors import DmsfsError, Unreachable, UsageError, from_code

API_XATTR = "user.dmsfs.api"
STREAM_PIECE = 1 << 20
DEFAULT_STATE_BASES = (Path("/var/lib/dmsfs"),
                       Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local/state"))
                       / "dmsfs")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


def _dmsfs_mounts() -> list[Path]:
    mounts = []
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[2] == "fuse.dmsfs":
                mounts.append(Path(fields[1].replace("\\040", " ")))
    return mounts


def _address_of_mount(mount: Path) -> str:
    try:
        return os.getxattr(mount, API_XATTR).decode()
    except OSError as e:
        raise Unreachable(f"{mount} is not a running dmsfs mount ({e.strerror})") from e


def discover(api: str | None = None, state: str | None = None, mount: str | None = None) -> str:
    """The control API address ("unix:PATH" or "http://HOST:PORT") to use."""
    api = api or os.environ.get("DMSFS_API")
    if api:
        return api
    state = state or os.environ.get("DMSFS_STATE")
    if state:
        return f"unix:{Path(state) / 'api.sock'}"
    mount = mount or os.environ.get("DMSFS_MOUNT")
    if mount:
        return _address_of_mount(Path(mount))
    mounts = _dmsfs_mounts()
    cwd = Path.cwd()
    holding = [m for m in mounts if cwd == m or m in cwd.parents]
    if holding:
        return _address_of_mount(max(holding, key=lambda m: len(m.parts)))
    if len(mounts) == 1:
        return _address_of_mount(mounts[0])
    socks = [s for base in DEFAULT_STATE_BASES for s in base.glob("*/api.sock")]
    if len(socks) == 1:
        return f"unix:{socks[0]}"
    if mounts:
        raise UsageError(f"{len(mounts)} dmsfs mounts: choose one with --mount or --api")
    raise Unreachable("no dmsfs daemon found: give --api, --state or --mount")


class Client:
    """Blocking client of one daemon's control API."""

    def __init__(self, address: str, timeout: float = 3600.0) -> None:
        self.address = address
        self.timeout = timeout

    @classmethod
    def discover(cls, api: str | None = None, state: str | None = None,
                 mount: str | None = None) -> Client:
        return cls(discover(api, state, mount))

    def _connection(self) -> http.client.HTTPConnection:
        if self.address.startswith("unix:"):
            return _UnixConnection(self.address[5:], self.timeout)
        if self.address.startswith("http://"):
            return http.client.HTTPConnection(self.address[7:].rstrip("/"), timeout=self.timeout)
        raise UsageError(f"unsupported API address {self.address!r}")

    def _send(self, method: str, path: str, params: dict[str, Any] | None = None,
              body: Any = None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send one request and read the response head; the caller closes the connection."""
        query = {k: ("true" if v is True else "false" if v is False else v)
                 for k, v in (params or {}).items() if v is not None}
        url = path + (f"?{urlencode(query)}" if query else "")
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        conn = self._connection()
        try:
            conn.request(method, url, body=payload, headers=headers)
            return conn, conn.getresponse()
        except OSError as e:
            conn.close()
            raise self._unreachable(e) from e

    def _unreachable(self, e: OSError) -> Unreachable:
        return Unreachable(f"cannot reach the dmsfs daemon at {self.address}: "
                           f"{e.strerror or e}")

    def call(self, method: str, path: str, params: dict[str, Any] | None = None,
             body: Any = None) -> Any:
        """One request to `path` (quoted already, see _path); returns the decoded JSON,
        raises the DmsfsError it reports."""
        conn, resp = self._send(method, path, params, body)
        try:
            raw = resp.read()
        except OSError as e:
            raise self._unreachable(e) from e
        finally:
            conn.close()
        _raise_for(resp.status, raw)
        return json.loads(raw) if raw else None

    # -- one method per API operation
    def whoami(self) -> dict[str, int]:
        """uid, gid and pid of this process as the daemon sees it."""
        return self.call("GET", "/v1/whoami")

    def stats(self) -> dict[str, Any]:
        return self.call("GET", "/v1/stats")

    def fsck(self, read_data: bool = False) -> dict[str, Any]:
        return self.call("POST", "/v1/fsck", {"read_data": read_data})

    def reindex(self) -> dict[str, int]:
        return self.call("POST", "/v1/reindex")

    def flush(self) -> dict[str, Any]:
        return self.call("POST", "/v1/flush")

    def snapshot(self, dataset: str, message: str = "", tag: str | None = None
                 ) -> dict[str, Any]:
        """Snapshot a dataset's live tree; returns the new version's record."""
        return self.call("POST", _path("datasets", dataset, "snapshots"),
                         body={"message": message, "tag": tag})

    def versions(self, dataset: str) -> list[dict[str, Any]]:
        """Version records of a dataset, newest first."""
        return self.call("GET", _path("datasets", dataset, "versions"))["versions"]

    def tag(self, dataset: str, version: str, tag: str) -> dict[str, Any]:
        """Point a tag at a version; returns that version's record."""
        return self.call("PUT", _path("datasets", dataset, "tags", tag),
                         body={"version": version})

    def untag(self, dataset: str, tag: str) -> None:
        self.call("DELETE", _path("datasets", dataset, "tags", tag))

    def diff(self, a: str, b: str, *, schema: bool = False, rows: bool = False,
             key: list[str] | str | None = None, limit: int | None = None) -> dict[str, Any]:
        """Changes from a to b, each "DATASET@VERSION" or "DATASET" (its live tree).

        schema=True adds "schema": the change of the dataset's schema between the two;
        rows=True adds "rows": rows added, removed and changed in tabular files, matched
        by the columns in `key` (a list or "col,col") or, without a key, by whole-row
        content; `limit` caps the rows listed per file (the counts stay exact)."""
        if isinstance(key, list | tuple):
            key = ",".join(key)
        params: dict[str, Any] = {"a": a, "b": b, "schema": True if schema else None}
        if rows:
            params.update(rows=True, key=key or None, limit=limit)
        return self.call("GET", "/v1/diff", params)

    def export_stream(self, dataset: str, version: str) -> tuple[int, Iterator[bytes]]:
        """(the version's total file bytes, its tar archive in pieces).

        Errors before the stream starts raise here; a stream that breaks off
        raises from the iterator.  Consume the iterator to the end or close it.
        """
        conn, resp = self._send("GET", _path("datasets", dataset, "versions", version, "export"))
        if resp.status >= 400:
            try:
                raw = resp.read()
            finally:
                conn.close()
            _raise_for(resp.status, raw)
        return int(resp.getheader("X-Dmsfs-Bytes") or 0), self._stream(conn, resp)

    def _stream(self, conn: http.client.HTTPConnection,
                resp: http.client.HTTPResponse) -> Iterator[bytes]:
        try:
            while data := resp.read1(STREAM_PIECE):
                yield data
        except (OSError, http.client.HTTPException) as e:
            raise DmsfsError(f"the stream from {self.address} broke off: {e!r}") from e
        finally:
            conn.close()

    def restore(self, dataset: str, version: str, path: str | None = None) -> dict[str, Any]:
        """Bring a dataset's live tree, or one path in it, back to a version."""
        return self.call("POST", _path("datasets", dataset, "restore"),
                         body={"version": version, "path": path})

    # -- datasets, schemas, rejected writes
    def create_dataset(self, name: str, schema: Any = None, globs: list[str] | None = None
                       ) -> dict[str, Any]:
        """Create a dataset (as mkdir at the mount's top level), with a schema if given:
        {"dataset": name, "schema": the schema version's record or None}."""
        body: dict[str, Any] = {"name": name}
        if schema is not None:
            body.update(schema=schema, globs=globs)
        return self.call("POST", "/v1/datasets", body=body)

    def set_schema(self, dataset: str, schema: Any, globs: list[str] | None = None
                   ) -> dict[str, Any]:
        """Register a new version of a dataset's schema; returns its record
        (dataset, version, schema, globs, time, uid, user).  An invalid schema raises
        InvalidArgument with the validator's message."""
        return self.call("PUT", _path("datasets", dataset, "schema"),
                         body={"schema": schema, "globs": globs})

    def schema(self, dataset: str, version: int | None = None) -> dict[str, Any]:
        """One schema version's record: the current one unless `version` is given."""
        return self.call("GET", _path("datasets", dataset, "schema"), {"version": version})

    def schemas(self, dataset: str) -> list[dict[str, Any]]:
        """Every schema version's record of a dataset, oldest first."""
        return self.call("GET", _path("datasets", dataset, "schemas"))["schemas"]

    def rejects(self, dataset: str) -> list[dict[str, Any]]:
        """Recent writes the schema refused, newest first: path, time, uid, user,
        schema_version, record, pointer, message, failed_records, records."""
        return self.call("GET", _path("datasets", dataset, "rejects"))["rejects"]


def _path(*segments: str) -> str:
    """An API path under /v1 from segments, each quoted: no argument can change the route."""
    return "/v1/" + "/".join(quote(s, safe="") for s in segments)


def _raise_for(status: int, raw: bytes) -> None:
    """Raise the error an error response reports."""
    if status < 400:
        return
    try:
        err = json.loads(raw).get("error")
    except (ValueError, AttributeError):
        err = None
    if isinstance(err, dict):
        raise from_code(err.get("code", ""))(err.get("message"))
    raise DmsfsError(f"HTTP {status}: {raw[:200]!r}")
