"""A daemon's store seen from outside, for either backend: the files under
`daemon.store` (file://), or the objects in its moto bucket (s3://) through a
plain boto3 client, never through dmsfs's own store code.

With S3, a sealed pack or a record is in the store only once the daemon's
upload spool sent it: `flush_to_store` / `wait_uploaded` wait for that.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3
from s3env import DUMMY_AWS

TMP_DIR = ".tmp"   # LocalStore's scratch directory: not objects


def endpoint(daemon: Any) -> str | None:
    """The --s3-endpoint the daemon was started with (None for file://)."""
    args = list(daemon.store_args)
    return args[args.index("--s3-endpoint") + 1] if "--s3-endpoint" in args else None


@functools.cache
def _s3_client(url: str) -> Any:
    return boto3.session.Session(
        aws_access_key_id=DUMMY_AWS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=DUMMY_AWS["AWS_SECRET_ACCESS_KEY"],
        region_name=DUMMY_AWS["AWS_DEFAULT_REGION"]).client("s3", endpoint_url=url)


def _s3(daemon: Any) -> tuple[Any, str, str] | None:
    """(client, bucket, key prefix) of an s3:// daemon, None for file://."""
    url = urlparse(daemon.url)
    if url.scheme != "s3":
        return None
    prefix = url.path.strip("/")
    return _s3_client(endpoint(daemon)), url.netloc, f"{prefix}/" if prefix else ""


def _path(daemon: Any, key: str) -> Path:
    return Path(daemon.store) / key


def stored_objects(daemon: Any, prefix: str = "") -> dict[str, int]:
    """Every object in the store whose key starts with prefix: key -> size."""
    s3 = _s3(daemon)
    if s3 is None:
        root = Path(daemon.store)
        return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))
                if p.is_file() and TMP_DIR not in p.relative_to(root).parts
                and str(p.relative_to(root)).startswith(prefix)}
    client, bucket, root = s3
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                  Prefix=root + prefix):
        for obj in page.get("Contents", ()):
            out[obj["Key"][len(root):]] = obj["Size"]
    return dict(sorted(out.items()))


def stored_packs(daemon: Any) -> dict[str, int]:
    """The pack objects in the store: key ("packs/ab/ab12...") -> size."""
    return stored_objects(daemon, "packs/")


def read_object(daemon: Any, key: str) -> bytes:
    s3 = _s3(daemon)
    if s3 is None:
        return _path(daemon, key).read_bytes()
    client, bucket, root = s3
    return bytes(client.get_object(Bucket=bucket, Key=root + key)["Body"].read())


def write_object(daemon: Any, key: str, data: bytes) -> None:
    """Create or replace an object behind the daemon's back (a local one keeps its
    read-only mode)."""
    s3 = _s3(daemon)
    if s3 is None:
        path = _path(daemon, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            os.chmod(path, 0o644)
        path.write_bytes(data)
        os.chmod(path, 0o444)
        return
    client, bucket, root = s3
    client.put_object(Bucket=bucket, Key=root + key, Body=data)


def delete_object(daemon: Any, key: str) -> None:
    s3 = _s3(daemon)
    if s3 is None:
        _path(daemon, key).unlink()
        return
    client, bucket, root = s3
    client.delete_object(Bucket=bucket, Key=root + key)


def flip_byte(daemon: Any, key: str, offset: int) -> None:
    """Damage one byte of a stored object (a negative offset counts from the end)."""
    data = bytearray(read_object(daemon, key))
    data[offset] ^= 0xFF
    write_object(daemon, key, bytes(data))


def wait_uploaded(daemon: Any, timeout: float = 60) -> dict[str, Any]:
    """Wait until nothing is waiting for upload (`backlog.objects == 0`: at once for
    a file:// store); the last stats."""
    deadline = time.monotonic() + timeout
    while True:
        stats: dict[str, Any] = daemon.ctl_json("stats")
        if stats["backlog"]["objects"] == 0:
            return stats
        assert time.monotonic() < deadline, f"upload backlog never drained: {stats['backlog']}"
        time.sleep(0.05)


def upload_spool(daemon: Any) -> list[Path]:
    """Objects in the daemon's upload spool (its state dir's uploads/, S3 only),
    not yet in the store: readable while the daemon is stopped."""
    spool = Path(daemon.state) / "uploads"
    return sorted(p for p in spool.iterdir() if p.is_file()) if spool.exists() else []


def flush_to_store(daemon: Any) -> dict[str, Any]:
    """dmsctl flush, then wait until what it sealed is in the store; the stats."""
    daemon.ctl("flush", check=True)
    return wait_uploaded(daemon)
