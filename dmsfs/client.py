"""dmsfs.client: the Python SDK for the control API (dmsctl is built on it).

    from dmsfs.client import Client
    c = Client.discover()          # or Client("unix:/var/lib/dmsfs/<id>/api.sock")
    print(c.stats()["dedup_ratio"])

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
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from .errors import DmsfsError, Unreachable, UsageError, from_code

API_XATTR = "user.dmsfs.api"
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

    def call(self, method: str, path: str, params: dict[str, Any] | None = None,
             body: Any = None) -> Any:
        """One request; returns the decoded JSON, raises the DmsfsError it reports."""
        query = {k: ("true" if v is True else "false" if v is False else v)
                 for k, v in (params or {}).items() if v is not None}
        url = quote(path) + (f"?{urlencode(query)}" if query else "")
        conn = self._connection()
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, url, body=payload, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except OSError as e:
            raise Unreachable(f"cannot reach the dmsfs daemon at {self.address}: "
                              f"{e.strerror or e}") from e
        finally:
            conn.close()
        doc = json.loads(raw) if raw else None
        if resp.status >= 400:
            err = (doc or {}).get("error") if isinstance(doc, dict) else None
            if err:
                raise from_code(err.get("code", ""))(err.get("message"))
            raise DmsfsError(f"HTTP {resp.status}: {raw[:200]!r}")
        return doc

    # -- one method per API operation
    def stats(self) -> dict[str, Any]:
        return self.call("GET", "/v1/stats")

    def fsck(self, read_data: bool = False) -> dict[str, Any]:
        return self.call("POST", "/v1/fsck", {"read_data": read_data})

    def reindex(self) -> dict[str, int]:
        return self.call("POST", "/v1/reindex")

    def flush(self) -> dict[str, Any]:
        return self.call("POST", "/v1/flush")
