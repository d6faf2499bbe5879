"""Restore: make the live tree of a dataset (or one path in it) equal to a version.

Like `rsync --delete` from the snapshot, but by metadata only: a file that
differs is replaced by one with the version's chunk list (no data is copied),
missing entries are created, extra ones removed, attributes and xattrs set.  The trees
needed are loaded first; the changes then commit in one LMDB transaction, so
the live tree is the old state or the restored one, never a mix.  Directories
whose cached tree already is the version's are skipped whole.  Afterwards the
kernel is told to forget the names and file data that changed.  History stays:
restoring is a change of the live tree like any other.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import NotFound
from .index import ROOT_INO, Inode, Txn
from .tree import Tree, TreeEntry

if TYPE_CHECKING:
    from .vfs import Vfs

PRELOAD_ATTEMPTS = 3


class _NeedTree(Exception):
    """A tree that was not preloaded (the live tree changed meanwhile)."""


@dataclass
class _Plan:
    trees: dict[bytes, Tree] = field(default_factory=dict)
    counts: dict[str, int] = field(
        default_factory=lambda: {"added": 0, "removed": 0, "changed": 0})
    gone_names: list[tuple[int, bytes]] = field(default_factory=list)
    changed_dirs: list[int] = field(default_factory=list)


class Restorer:
    """One restore of one dataset (or path) to one version."""

    def __init__(self, vfs: Vfs) -> None:
        self.vfs = vfs
        self.index = vfs.index
        self.loader = vfs.repo.versions.trees

    async def run(self, dataset: str, spec: str, path: str | None) -> dict[str, object]:
        record = self.vfs.repo.versions.resolve(dataset, spec)
        parts = [p.encode() for p in (path or "").strip("/").split("/") if p]
        for _ in range(PRELOAD_ATTEMPTS):
            plan = _Plan()
            await self._preload(plan, dataset, record.tree, parts)
            try:
                with self.index.write() as t:
                    ds_ino = t.lookup(ROOT_INO, dataset.encode())
                    if ds_ino is None:
                        raise NotFound(f"no dataset {dataset!r}")
                    if parts:
                        self._restore_path(t, plan, ds_ino, record.tree, parts)
                    else:
                        root = self.vfs._get(t, ds_ino)
                        root.mode, root.uid, root.gid = (record.root[k] for k in
                                                         ("mode", "uid", "gid"))
                        t.put_inode(root)
                        self._set_xattrs(t, ds_ino, record.root_xattrs)
                        plan.changed_dirs.append(ds_ino)
                        self._sync_dir(t, plan, ds_ino, record.tree)
                break
            except _NeedTree:
                continue
        else:
            raise RuntimeError("the live tree kept changing during restore")
        await self._tell_kernel(plan)
        return {"version": record.to_json(), "path": path or "", **plan.counts}

    # ------------------------------------------------------------ loading trees
    async def _preload(self, plan: _Plan, dataset: str, tid: bytes, parts: list[bytes]) -> None:
        """Load every tree the commit will read: along the path, then below."""
        with self.index.read() as t:
            live = t.lookup(ROOT_INO, dataset.encode())
        for name in parts:
            tree = plan.trees[tid] = await self.loader.load(tid)
            e = tree.find(name)
            with self.index.read() as t:
                live = t.lookup(live, name) if live is not None else None
            if e is None or e.kind != "dir":
                return
            tid = e.tree
        await self._preload_dir(plan, live, tid)

    async def _preload_dir(self, plan: _Plan, live: int | None, tid: bytes) -> None:
        if live is not None:
            with self.index.read() as t:
                cached = t.get_dirtree(live)
            if cached is not None and cached[0] == tid:
                return
        tree = plan.trees[tid] = await self.loader.load(tid)
        for e in tree.entries:
            if e.kind == "dir":
                with self.index.read() as t:
                    child = t.lookup(live, e.name) if live is not None else None
                await self._preload_dir(plan, child, e.tree)

    @staticmethod
    def _tree(plan: _Plan, tid: bytes) -> Tree:
        tree = plan.trees.get(tid)
        if tree is None:
            raise _NeedTree()
        return tree

    # ------------------------------------------------------------ applying
    def _restore_path(self, t: Txn, plan: _Plan, ino: int, tid: bytes,
                      parts: list[bytes]) -> None:
        """Walk to the path's parent (making directories the version has), then
        restore its last name."""
        for name in parts[:-1]:
            entry = self._tree(plan, tid).find(name)
            child = t.lookup(ino, name)
            if entry is None or entry.kind != "dir":
                raise NotFound(f"{b'/'.join(parts).decode()} is not in that version")
            if child is None or not stat.S_ISDIR(self.vfs._get(t, child).mode):
                self._sync_name(t, plan, ino, name, TreeEntry(
                    name, entry.mode, entry.uid, entry.gid, entry.mtime_ns, entry.ctime_ns, 0,
                    tree=b"", xattrs=entry.xattrs), shallow=True)
                child = t.lookup(ino, name)
                assert child is not None
            ino, tid = child, entry.tree
        name = parts[-1]
        entry = self._tree(plan, tid).find(name)
        if entry is None and t.lookup(ino, name) is None:
            raise NotFound(f"{b'/'.join(parts).decode()} is neither in that version nor live")
        self._sync_name(t, plan, ino, name, entry)

    def _sync_dir(self, t: Txn, plan: _Plan, ino: int, tid: bytes) -> None:
        cached = t.get_dirtree(ino)
        if cached is not None and cached[0] == tid:
            return
        tree = self._tree(plan, tid)
        live = {name: child for _, name, child in t.iter_entries(ino)}
        for name in live.keys() - set(tree.names):
            self._sync_name(t, plan, ino, name, None)
        for entry in tree.entries:
            self._sync_name(t, plan, ino, entry.name, entry)

    def _sync_name(self, t: Txn, plan: _Plan, parent: int, name: bytes,
                   entry: TreeEntry | None, shallow: bool = False) -> None:
        """Make `name` in live directory parent what entry says (None: absent).

        A file or symlink that differs is replaced by a new inode, as rsync
        replaces files: open handles keep reading what they opened, and the kernel,
        which trusts its own size and mtime of a cached file, sees a new one."""
        ino = t.lookup(parent, name)
        inode = self.vfs._get(t, ino) if ino is not None else None
        replace = inode is not None and entry is not None and (
            stat.S_IFMT(inode.mode) != stat.S_IFMT(entry.mode)
            or (entry.kind != "dir" and self._differs(t, inode, entry)))
        if inode is not None and (entry is None or replace):
            self._remove(t, plan, parent, name, inode, counted=not replace)
            inode = None
        if entry is None:
            return
        if inode is None:
            inode = Inode(t.allocate_ino(), entry.mode, entry.uid, entry.gid, 0,
                          entry.mtime_ns, entry.mtime_ns, entry.ctime_ns, parent)
            t.add_entry(parent, name, inode.ino)
            plan.gone_names.append((parent, name))  # a cached miss must go
            if entry.kind == "file":
                t.add_counter("live_bytes", entry.size)
                t.put_content(inode.ino, entry.chunks)
            self._set_attrs(t, inode, entry)
            plan.counts["changed" if replace else "added"] += entry.kind != "dir"
        elif self._differs(t, inode, entry):  # a directory's own attributes
            self._set_attrs(t, inode, entry)
            plan.changed_dirs.append(inode.ino)
            plan.counts["changed"] += 1
        if entry.kind == "dir" and not shallow:
            self._sync_dir(t, plan, inode.ino, entry.tree)

    @staticmethod
    def _differs(t: Txn, inode: Inode, entry: TreeEntry) -> bool:
        if (inode.mode, inode.uid, inode.gid) != (entry.mode, entry.uid, entry.gid):
            return True
        if {n: t.get_xattr(inode.ino, n) for n in t.list_xattrs(inode.ino)} != entry.xattrs:
            return True
        if entry.kind == "file":
            return inode.mtime_ns != entry.mtime_ns or t.get_content(inode.ino) != entry.chunks
        return entry.kind == "symlink" and inode.target != entry.target

    @staticmethod
    def _set_attrs(t: Txn, inode: Inode, entry: TreeEntry) -> None:
        inode.mode, inode.uid, inode.gid = entry.mode, entry.uid, entry.gid
        inode.mtime_ns = inode.atime_ns = entry.mtime_ns
        if entry.kind == "file":
            inode.size = entry.size
        elif entry.kind == "symlink":
            inode.target, inode.size = entry.target, len(entry.target)
        t.put_inode(inode)
        Restorer._set_xattrs(t, inode.ino, entry.xattrs)

    @staticmethod
    def _set_xattrs(t: Txn, ino: int, xattrs: dict[bytes, bytes]) -> None:
        for xname in t.list_xattrs(ino):
            if xname not in xattrs:
                t.delete_xattr(ino, xname)
        for xname, value in xattrs.items():
            t.put_xattr(ino, xname, value)

    def _remove(self, t: Txn, plan: _Plan, parent: int, name: bytes, inode: Inode,
                counted: bool = True) -> None:
        if stat.S_ISDIR(inode.mode):
            for _, child_name, child in list(t.iter_entries(inode.ino)):
                self._remove(t, plan, inode.ino, child_name, self.vfs._get(t, child))
        t.remove_entry(parent, name)
        plan.gone_names.append((parent, name))
        plan.counts["removed"] += counted and not stat.S_ISDIR(inode.mode)
        if stat.S_ISDIR(inode.mode):
            t.delete_inode(inode.ino)
        else:
            self.vfs._drop(t, inode)

    # ------------------------------------------------------------ afterwards
    async def _tell_kernel(self, plan: _Plan) -> None:
        for ino in plan.changed_dirs:
            await self.vfs.kernel.forget_inode(ino)
        for parent, name in plan.gone_names:
            await self.vfs.kernel.forget_entry(parent, name)
