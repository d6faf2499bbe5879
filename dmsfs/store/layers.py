"""How a daemon uses a store: a remote one through a local disk cache (reads) and
an upload spool (writes) in its state dir; a local directory as it is."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .base import ObjectStore
from .blockcache import BlockCache
from .writeback import WriteBack

CACHE_DIR = "cache"
UPLOAD_DIR = "uploads"


@dataclass(frozen=True)
class RemoteOptions:
    """Settings that matter only for a remote (S3) store."""

    endpoint: str | None = None     # S3-compatible service; None: boto3's own choice
    timeout: float = 30.0           # longest a request may take, retries included
    cache_bytes: int = 4 << 30      # the disk cache of packs


def layered(store: ObjectStore, state_dir: Path, cache_bytes: int,
            fence: Callable[[], bool]) -> ObjectStore:
    """store behind a disk cache and an upload spool if it is remote.  fence says
    whether this daemon may still publish (its writer lease)."""
    if not store.remote:
        return store
    cached = BlockCache(store, state_dir / CACHE_DIR, cache_bytes)
    return WriteBack(cached, state_dir / UPLOAD_DIR, fence)
