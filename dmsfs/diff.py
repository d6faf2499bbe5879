"""What changed between two trees: files added, removed, modified and renamed.

The walk descends only where tree ids differ, so two versions of a big dataset
that differ in a few files cost a few tree loads.  A rename is a removed file
and an added file with the same content (same chunk list), as git and restic
see it.  A modification is a change of content, symlink target, mode, owner or
extended attributes; a change of mtime alone is not reported (as in git).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from .tree import Tree, TreeEntry

Loader = Callable[[bytes], Awaitable[Tree]]


async def diff_trees(a: bytes, b: bytes, load: Loader) -> dict[str, list[dict[str, Any]]]:
    """Changes from tree a to tree b, each list sorted by path."""
    removed: list[tuple[str, TreeEntry]] = []
    added: list[tuple[str, TreeEntry]] = []
    modified: list[dict[str, Any]] = []
    await _compare(a, b, "", load, removed, added, modified)
    renamed = _pair_renames(removed, added)
    return {
        "added": [{"path": p, "size": e.size} for p, e in sorted(added, key=_path)],
        "removed": [{"path": p, "size": e.size} for p, e in sorted(removed, key=_path)],
        "modified": sorted(modified, key=lambda m: m["path"]),
        "renamed": sorted(renamed, key=lambda r: r["to"]),
    }


def _path(item: tuple[str, TreeEntry]) -> str:
    return item[0]


async def _compare(a: bytes, b: bytes, prefix: str, load: Loader,
                   removed: list[tuple[str, TreeEntry]], added: list[tuple[str, TreeEntry]],
                   modified: list[dict[str, Any]]) -> None:
    if a == b:
        return
    ta, tb = await load(a), await load(b)
    for name in sorted(set(ta.names) | set(tb.names)):
        ea, eb = ta.find(name), tb.find(name)
        path = prefix + name.decode(errors="surrogateescape")
        if ea is not None and eb is not None and ea.kind == eb.kind:
            if ea.kind == "dir":
                await _compare(ea.tree, eb.tree, path + "/", load, removed, added, modified)
            elif what := _changes(ea, eb):
                modified.append({"path": path, "old_size": ea.size, "new_size": eb.size,
                                 "what": what})
            continue
        if ea is not None:
            await _leaves(ea, path, load, removed)
        if eb is not None:
            await _leaves(eb, path, load, added)


def _changes(a: TreeEntry, b: TreeEntry) -> list[str]:
    what = []
    if not a.same_content(b):
        what.append("content")
    if a.mode != b.mode:
        what.append("mode")
    if (a.uid, a.gid) != (b.uid, b.gid):
        what.append("owner")
    if a.xattrs != b.xattrs:
        what.append("xattrs")
    return what


async def _leaves(e: TreeEntry, path: str, load: Loader,
                  out: list[tuple[str, TreeEntry]]) -> None:
    """Every file and symlink at or below an entry."""
    if e.kind != "dir":
        out.append((path, e))
        return
    for child in (await load(e.tree)).entries:
        await _leaves(child, f"{path}/{child.name.decode(errors='surrogateescape')}", load, out)


def _pair_renames(removed: list[tuple[str, TreeEntry]], added: list[tuple[str, TreeEntry]]
                  ) -> list[dict[str, Any]]:
    """Move (removed, added) pairs of equal non-empty content out of both lists."""
    gone: dict[tuple[Any, ...], list[tuple[str, TreeEntry]]] = defaultdict(list)
    for path, e in removed:
        if e.kind == "file" and e.size:
            gone[tuple(e.chunks)].append((path, e))
    renamed, still_added, paired = [], [], set()
    for path, e in sorted(added, key=_path):
        candidates = gone.get(tuple(e.chunks)) if e.kind == "file" and e.size else None
        if candidates:
            old, _ = candidates.pop(0)
            paired.add(old)
            renamed.append({"from": old, "to": path, "size": e.size})
        else:
            still_added.append((path, e))
    added[:] = still_added
    removed[:] = [(p, e) for p, e in removed if p not in paired]
    return renamed
