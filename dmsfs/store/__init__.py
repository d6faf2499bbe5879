"""Object stores: open_store(url) picks the backend for a store URL."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from ..errors import UsageError
from .base import ObjectStore


def open_store(url: str) -> ObjectStore:
    """The object store a URL names (file:///path; s3:// follows)."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise UsageError(f"file:// URL must name a local path: {url}")
        from .local import LocalStore

        return LocalStore(Path(parsed.path))
    raise UsageError(f"unsupported store URL {url!r} (use file:///path)")


__all__ = ["ObjectStore", "open_store"]
