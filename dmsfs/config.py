"""Store configuration: fixed at init, kept as the store's ``config`` object."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field

from .chunker import ChunkerParams
from .errors import NoSuchObject, StoreConfigError
from .store.base import ObjectStore

FORMAT_VERSION = 1
CONFIG_KEY = "config"


@dataclass(frozen=True)
class StoreConfig:
    """What every daemon opening a store must agree on."""

    store_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    format: int = FORMAT_VERSION
    chunker: ChunkerParams = field(default_factory=ChunkerParams)
    pack_size: int = 16 * 1024 * 1024
    zstd_level: int = 3
    created: float = field(default_factory=time.time)

    def encode(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> StoreConfig:
        try:
            doc = json.loads(raw)
            doc["chunker"] = ChunkerParams(**doc["chunker"])
            cfg = cls(**doc)
        except (ValueError, TypeError, KeyError) as e:
            raise StoreConfigError(f"store config unreadable: {e}") from e
        if cfg.format != FORMAT_VERSION:
            raise StoreConfigError(
                f"store format {cfg.format} is not supported (this dmsfs reads {FORMAT_VERSION})")
        return cfg


def load_or_init(store: ObjectStore, proposed: StoreConfig | None = None,
                 create: bool = True) -> StoreConfig:
    """The store's config; a store without one is initialised with `proposed`
    (unless not create: then StoreConfigError)."""
    try:
        return StoreConfig.decode(store.get(CONFIG_KEY))
    except NoSuchObject:
        if not create:
            raise StoreConfigError(f"no dmsfs store at {store.url} (a writer "
                                   "initialises it on first use)") from None
    cfg = proposed or StoreConfig()
    if not store.put_if_absent(CONFIG_KEY, cfg.encode()):
        return StoreConfig.decode(store.get(CONFIG_KEY))  # another process won the race
    return cfg
