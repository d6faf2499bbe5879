"""A read-only daemon follows the store's writer: it polls the change marker and,
when it moved, indexes what was published and shows it (new @versions, tags,
datasets; each dataset's live tree becomes its newest version)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from .errors import DmsfsError
from .head import read_head
from .restore import Restorer

if TYPE_CHECKING:
    from .repo import Repo
    from .vfs import Vfs

log = logging.getLogger(__name__)


def _latest(repo: Repo) -> dict[str, int]:
    """Each dataset's newest version number."""
    return {ds: repo.versions.list(ds)[0].number for ds in repo.versions.datasets()}


async def follow(repo: Repo, vfs: Vfs, interval: float) -> None:
    """Poll every interval seconds, for ever; store errors are logged and retried."""
    last = await trio.to_thread.run_sync(read_head, repo.store)
    failing = False
    while True:
        await trio.sleep(interval)
        try:
            head = await trio.to_thread.run_sync(read_head, repo.store)
            if head == last:
                failing = False
                continue
            before = _latest(repo)
            tags_before = _tags(repo)
            new = await repo.refresh()
            last = head
        except DmsfsError as e:
            if not failing:
                log.warning("cannot follow the store (will keep trying): %s", e)
            failing = True
            continue
        failing = False
        await _show(repo, vfs, before, tags_before)
        log.info("followed the store: %d new versions", new)


def _tags(repo: Repo) -> dict[str, set[str]]:
    """Each dataset's tag names."""
    return {ds: {t for r in repo.versions.list(ds) for t in r.tags}
            for ds in repo.versions.datasets()}


async def _show(repo: Repo, vfs: Vfs, before: dict[str, int],
                tags_before: dict[str, set[str]]) -> None:
    """Make what refresh() indexed visible through the mount."""
    await vfs.ensure_datasets()
    for dataset, number in _latest(repo).items():
        if before.get(dataset, number) != number:
            await Restorer(vfs).run(dataset, "latest", None)
        # removed tags too: the kernel keeps snapshot names for a day
        tags = {t for r in repo.versions.list(dataset) for t in r.tags}
        tags |= tags_before.get(dataset, set())
        await repo.versions.tell(dataset, [b"@latest", *(f"@{t}".encode() for t in tags)])
