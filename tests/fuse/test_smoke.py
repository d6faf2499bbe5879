"""The mount comes up, holds a file, and comes back after a clean remount."""

from __future__ import annotations

import hashlib
import os

import pytest

pytestmark = pytest.mark.backends("file", "s3")


def test_write_remount_read(daemon, ds) -> None:
    data = os.urandom(300_000)
    (ds / "f.bin").write_bytes(data)
    ino = os.stat(ds / "f.bin").st_ino
    assert daemon.stop() == 0
    daemon.start()
    assert hashlib.sha256((ds / "f.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
    assert os.stat(ds / "f.bin").st_ino == ino
    stats = daemon.ctl_json("stats")
    assert stats["logical_bytes"] == len(data)
    assert stats["chunks"] > 3
