"""Whether a writer's state dir still describes the store.

A writer's index, staged chunks and upload spool are its view of the store.
They stay true only while no other daemon writes there: if one took the writer
lease over meanwhile (this daemon was cut off or frozen past its lease, or the
store was written from another machine), uploading the old spool would publish
versions that clash with the new writer's, and the old index would hide them.
The state dir records the lease generation it was last written under; if the
store's lease has moved on since, the stale parts are set aside (kept, never
deleted: they may hold the only copy of unpublished work) and the daemon
starts over from the store, as a new state dir would.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from .store.local import fsync_dir

log = logging.getLogger(__name__)

GENERATION_FILE = "writer-generation"
SUPERSEDED_DIR = "superseded"
# what describes the store's content; the disk cache of immutable packs stays
STALE_PARTS = ("index.lmdb", "staging", "uploads")


def _recorded(state_dir: Path) -> int | None:
    try:
        return int((state_dir / GENERATION_FILE).read_text())
    except FileNotFoundError:
        return None


def adopt_generation(state_dir: Path, previous: int, generation: int) -> Path | None:
    """Record that state_dir now writes under lease `generation`, the store's
    lease having been at `previous`; if this state dir last wrote under another
    generation, first move its stale parts aside and return where they went."""
    recorded = _recorded(state_dir)
    moved = None
    if recorded is not None and recorded != previous:
        moved = state_dir / SUPERSEDED_DIR / time.strftime("%Y%m%dT%H%M%S")
        moved.mkdir(parents=True, exist_ok=True)
        for name in STALE_PARTS:
            if (state_dir / name).exists():
                os.rename(state_dir / name, moved / name)
        log.error("another writer changed the store since this state dir last wrote to "
                  "it (lease generation %d, now %d): what it had not published is kept "
                  "in %s and is not uploaded; starting over from the store",
                  recorded, previous, moved)
    tmp = state_dir / f".{GENERATION_FILE}.tmp"
    tmp.write_text(f"{generation}\n")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.rename(tmp, state_dir / GENERATION_FILE)
    fsync_dir(state_dir)
    return moved
