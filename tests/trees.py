"""Hashes and snapshots of directory trees, for tests that compare trees."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path
from typing import Any

VERSION_LINE = re.compile(r"v(\d+) ([0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-"
                          r"[0-9a-f]{12})\n")

State = dict[str, tuple[Any, ...]]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha(path: Path | str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def user_xattrs(path: str) -> dict[str, bytes]:
    return {name: os.getxattr(path, name, follow_symlinks=False)
            for name in sorted(os.listxattr(path, follow_symlinks=False))
            if name.startswith("user.")}


def tree_state(root: Path, *, mtime: bool = False, xattrs: bool = True,
               owner: bool = True) -> State:
    """Everything below root (not root itself), by relative path:
    files ("f", sha256, mode, [uid, gid], xattrs, [mtime_ns]), directories
    ("d", mode, [uid, gid], xattrs), symlinks ("l", target)."""
    out: State = {}
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted([*dirs, *files]):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(path))
                continue
            own = (st.st_uid, st.st_gid) if owner else ()
            xa = (user_xattrs(path),) if xattrs else ()
            if stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", stat.S_IMODE(st.st_mode), *own, *xa)
            else:
                assert stat.S_ISREG(st.st_mode), rel
                out[rel] = ("f", file_sha(path), stat.S_IMODE(st.st_mode), *own, *xa,
                            *((st.st_mtime_ns,) if mtime else ()))
    return out
