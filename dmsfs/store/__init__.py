"""Object stores: open_store(url) picks the backend for a store URL."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from ..errors import UsageError
from .base import ObjectStore


def open_store(url: str, *, s3_endpoint: str | None = None,
               s3_timeout: float = 30.0) -> ObjectStore:
    """The object store a URL names: file:///path, or s3://bucket[/prefix] (the bucket
    must exist; s3_endpoint for S3-compatible servers, s3_timeout bounds each call)."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise UsageError(f"file:// URL must name a local path: {url}")
        from .local import LocalStore

        return LocalStore(Path(parsed.path))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise UsageError(f"s3:// URL must name a bucket: {url}")
        from .s3 import S3Store

        return S3Store(parsed.netloc, parsed.path, endpoint=s3_endpoint, timeout=s3_timeout)
    raise UsageError(f"unsupported store URL {url!r} (use file:///path or s3://bucket/prefix)")


__all__ = ["ObjectStore", "open_store"]
