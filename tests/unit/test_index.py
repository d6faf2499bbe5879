"""The LMDB index on a disk that fills up: ENOSPC, never EIO, and nothing committed lost."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tmpfs import tmpfs

from dmsfs.errors import NoSpace
from dmsfs.index import Index, Location


def _locations(n: int) -> dict[bytes, Location]:
    return {os.urandom(32): Location(os.urandom(32), i, 100, 200, 0) for i in range(n)}


@pytest.mark.parametrize("room", ["none", "a little"])
def test_a_commit_on_a_full_disk_is_no_space_and_keeps_what_was_committed(
        tmp_path: Path, room: str) -> None:
    with tmpfs(tmp_path / "disk", "2m") as disk:
        index = Index(disk / "index.lmdb", map_size=1 << 30)
        kept = _locations(500)
        with index.write() as t:
            for cid, loc in kept.items():
                t.put_location(cid, loc)
        filler = disk / "filler"
        with open(filler, "wb") as f, pytest.raises(OSError):
            f.write(b"\0" * (4 << 20))
        if room == "a little":     # LMDB then gets a short write and says EIO
            os.truncate(filler, os.path.getsize(filler) - 12_288)
        with pytest.raises(NoSpace):
            for _ in range(50):
                with index.write() as t:
                    for cid, loc in _locations(200).items():
                        t.put_location(cid, loc)
        with index.read() as t:
            assert all(t.get_location(cid) == loc for cid, loc in kept.items())
        filler.unlink()
        more = _locations(10)
        with index.write() as t:
            for cid, loc in more.items():
                t.put_location(cid, loc)
        with index.read() as t:
            assert all(t.get_location(cid) == loc for cid, loc in (kept | more).items())
        index.close()
