"""The small demo dataset `make run` mounts, written through the Vfs like any file."""

from __future__ import annotations

import json
import random

from dmsfs.index import ROOT_INO
from dmsfs.vfs import Vfs

README = b"""This is a dmsfs mount.  Each top-level directory is a dataset.

Try:
  ls -l mnt/demo
  cp -a /usr/share/doc mnt/demo/doc
  dmsctl stats
  dmsctl fsck --read-data
"""


def _rows(n: int) -> tuple[bytes, bytes]:
    rng = random.Random(7)
    species = ["setosa", "versicolor", "virginica"]
    csv = ["id,sepal_length,sepal_width,species"]
    jsonl = []
    for i in range(n):
        row = {"id": i, "sepal_length": round(rng.uniform(4, 8), 1),
               "sepal_width": round(rng.uniform(2, 4.5), 1), "species": rng.choice(species)}
        csv.append(f"{i},{row['sepal_length']},{row['sepal_width']},{row['species']}")
        jsonl.append(json.dumps(row))
    return ("\n".join(csv) + "\n").encode(), ("\n".join(jsonl) + "\n").encode()


async def populate_demo(vfs: Vfs) -> None:
    """Create dataset `demo` unless the store already has datasets."""
    with vfs.index.read() as t:
        if t.has_entries(ROOT_INO):
            return
    ds = vfs.mkdir(ROOT_INO, b"demo", 0o755, 0, 0)
    csv, jsonl = _rows(1000)
    for name, data in ((b"README.txt", README), (b"iris.csv", csv), (b"iris.jsonl", jsonl)):
        fh, _ = vfs.create(ds.ino, name, 0o644, 0, 0)
        await vfs.write(fh, 0, data)
        await vfs.release(fh)
