"""The change marker: a small object the writer rewrites after every publication
(version, tag, schema), so read-only daemons elsewhere notice news by polling one
GET instead of listing the store."""

from __future__ import annotations

import json
import time
import uuid

from .errors import NoSuchObject
from .store.base import ObjectStore

HEAD_KEY = "head"


def announce(store: ObjectStore) -> None:
    """Tell followers the store changed (blocking); spooled after what it announces."""
    store.put(HEAD_KEY, json.dumps({"time_ns": time.time_ns(),
                                    "id": uuid.uuid4().hex}).encode())


def read_head(store: ObjectStore) -> bytes | None:
    """The current marker (None before the first publication; blocking)."""
    try:
        return store.get(HEAD_KEY)
    except NoSuchObject:
        return None
