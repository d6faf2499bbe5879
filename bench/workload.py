"""The benchmark's data: a deterministic tree in four versions, and a tar of small files.

    DATA/v1/small/dNN/fNNNN.{txt,bin}   small files, 8-96 KiB, half text-like, half random
    DATA/v1/tables/*.csv, *.jsonl       tables, a few tens of MiB
    DATA/v1/blobs/blob{0,1}.bin         two big blobs: first half random, second half repetitive
    DATA/v2  = v1 with 1% of the small files rewritten
    DATA/v3  = v2 with rows appended to every table
    DATA/v4  = v3 with 4 KiB inserted in the middle of blobs/blob0.bin
    DATA/small3k/...  + DATA/small3k.tar  ~3,000 more small files for the tar -x test

Versions share unchanged files by hard links (cp -al) to save disk space and
time; a changed file is always a new inode, so no version alters another.
Everything comes from seeded random.Random instances: the same parameters give
the same bytes on every run.  A stamp file lets a kept work dir skip the work.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

KiB = 1 << 10
MiB = 1 << 20
GENERATOR_VERSION = 3


@dataclass(frozen=True)
class Params:
    small_files: int = 2500
    small_dirs: int = 25
    small_min: int = 8 * KiB
    small_max: int = 96 * KiB
    table_mib: tuple[tuple[str, float], ...] = (
        ("events.csv", 20), ("metrics.csv", 10), ("events.jsonl", 16), ("logs.jsonl", 10))
    blob_mib: int = 100
    blobs: int = 2
    rewrite_fraction: float = 0.01     # v2
    append_fraction: float = 0.05      # v3: rows appended, relative to the table's size
    insert_bytes: int = 4 * KiB        # v4
    tar_files: int = 3000

    @classmethod
    def full(cls) -> Params:
        return cls()

    @classmethod
    def quick(cls) -> Params:
        return cls(small_files=700, small_dirs=7,
                   table_mib=(("events.csv", 5), ("metrics.csv", 2.5), ("events.jsonl", 4),
                              ("logs.jsonl", 2.5)),
                   blob_mib=25, tar_files=1000)


# ---------------------------------------------------------------- text material
_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "shi", "po", "ven", "dor", "al", "is", "um",
              "tra", "qu", "ex", "ba", "zen", "fi", "go", "ha", "jo", "ly", "mo", "sta", "er"]
_LEVELS = ["INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"]


class Text:
    """A vocabulary and a pool of log-like lines; text files are draws from the pool."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        words = set()
        while len(words) < 3000:
            words.add("".join(rng.choices(_SYLLABLES, k=rng.randint(1, 4))))
        self.words = sorted(words)
        self.lines = [self._line(rng) for _ in range(20000)]

    def _line(self, rng: random.Random) -> str:
        ts = 1_700_000_000 + rng.randrange(10_000_000)
        msg = " ".join(rng.choices(self.words, k=rng.randint(4, 12)))
        return (f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(ts))}.{rng.randrange(1000):03d} "
                f"{rng.choice(_LEVELS)} svc-{rng.randrange(40)} req={rng.randrange(1 << 32):08x} "
                f"{msg} took={rng.random() * 100:.2f}ms\n")

    def make(self, rng: random.Random, size: int) -> bytes:
        parts: list[str] = []
        have = 0
        while have < size:
            batch = rng.choices(self.lines, k=max(8, (size - have) // 70))
            parts.extend(batch)
            have += sum(len(x) for x in batch)
        return "".join(parts).encode()[:size]


def small_file(text: Text, rng: random.Random, p: Params) -> tuple[str, bytes]:
    size = rng.randint(p.small_min, p.small_max)
    if rng.random() < 0.5:
        return "txt", text.make(rng, size)
    return "bin", rng.randbytes(size)


# ---------------------------------------------------------------- tables
_USERS = [f"user{i:04d}" for i in range(500)]
_EVENTS = ["view", "click", "purchase", "login", "logout", "search", "share", "error"]


def table_rows(name: str, seed: int, first: int, target_bytes: int, text: Text) -> bytes:
    """Rows numbered from `first` until about target_bytes (no header)."""
    rng = random.Random(seed)
    out: list[str] = []
    have = 0
    i = first
    kind = name.split(".")[0]
    jsonl = name.endswith(".jsonl")
    while have < target_bytes:
        ts = 1_700_000_000 + i * 3 + rng.randrange(3)
        if kind == "events":
            rec = {"id": i, "ts": ts, "user": rng.choice(_USERS), "event": rng.choice(_EVENTS),
                   "value": round(rng.random() * 1000, 4), "count": rng.randrange(100),
                   "ok": rng.random() < 0.97}
        elif kind == "metrics":
            rec = {"id": i, "ts": ts, "host": f"h{rng.randrange(64):02d}",
                   "cpu": round(rng.random(), 3), "mem": rng.randrange(1 << 34),
                   "lat_ms": round(rng.expovariate(0.1), 3)}
        else:  # logs
            rec = {"id": i, "ts": ts, "level": rng.choice(_LEVELS),
                   "msg": text.lines[rng.randrange(len(text.lines))].rstrip("\n")}
        if jsonl:
            line = json.dumps(rec, separators=(",", ":")) + "\n"
        else:
            line = ",".join(str(v) for v in rec.values()) + "\n"
        out.append(line)
        have += len(line)
        i += 1
    return "".join(out).encode()


def table_header(name: str) -> bytes:
    if name.endswith(".jsonl"):
        return b""
    kind = name.split(".")[0]
    cols = {"events": "id,ts,user,event,value,count,ok",
            "metrics": "id,ts,host,cpu,mem,lat_ms"}.get(kind, "id,ts,level,msg")
    return (cols + "\n").encode()


# ---------------------------------------------------------------- blobs
def blob(seed: int, size: int, text: Text) -> bytes:
    """First half random, second half a 1 MiB text-like block repeated."""
    rng = random.Random(seed)
    half = size // 2
    block = text.make(rng, MiB)
    reps = (size - half) // len(block) + 1
    return rng.randbytes(half) + (block * reps)[: size - half]


# ---------------------------------------------------------------- the tree
def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()  # a new inode: never change a file other versions link to
    with open(path, "wb") as f:
        f.write(data)


def small_paths(root: Path) -> list[Path]:
    return sorted(p for p in (root / "small").rglob("*") if p.is_file())


def tree_bytes(root: Path) -> tuple[int, int]:
    """(number of files, total bytes) of a tree."""
    n = total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            n += 1
            total += os.lstat(os.path.join(dirpath, f)).st_size
    return n, total


def _gen_v1(root: Path, p: Params, text: Text) -> None:
    rng = random.Random(1)
    for i in range(p.small_files):
        ext, data = small_file(text, rng, p)
        _write(root / "small" / f"d{i % p.small_dirs:02d}" / f"f{i:05d}.{ext}", data)
    for k, (name, mib) in enumerate(p.table_mib):
        _write(root / "tables" / name,
               table_header(name) + table_rows(name, 100 + k, 0, int(mib * MiB), text))
    for k in range(p.blobs):
        _write(root / "blobs" / f"blob{k}.bin", blob(200 + k, p.blob_mib * MiB, text))


def _link_copy(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "-al", str(src), str(dst)], check=True)


def _gen_v2(prev: Path, root: Path, p: Params, text: Text) -> list[str]:
    _link_copy(prev, root)
    rng = random.Random(2)
    files = small_paths(root)
    chosen = rng.sample(files, max(1, round(len(files) * p.rewrite_fraction)))
    for path in chosen:
        _ext, data = small_file(text, rng, p)
        _write(path, data)  # same name, new content (and size)
    return [str(c.relative_to(root)) for c in chosen]


def _gen_v3(prev: Path, root: Path, p: Params, text: Text) -> None:
    _link_copy(prev, root)
    for k, (name, mib) in enumerate(p.table_mib):
        path = root / "tables" / name
        old = path.read_bytes()
        rows = old.count(b"\n") - (1 if table_header(name) else 0)
        _write(path, old + table_rows(name, 300 + k, rows, int(mib * MiB * p.append_fraction),
                                      text))


def _gen_v4(prev: Path, root: Path, p: Params) -> int:
    _link_copy(prev, root)
    path = root / "blobs" / "blob0.bin"
    old = path.read_bytes()
    at = len(old) // 2 + 777
    _write(path, old[:at] + random.Random(4).randbytes(p.insert_bytes) + old[at:])
    return at


def _gen_tar(data: Path, p: Params, text: Text) -> None:
    rng = random.Random(5)
    root = data / "small3k"
    for i in range(p.tar_files):
        ext, payload = small_file(text, rng, p)
        _write(root / f"d{i % 30:02d}" / f"t{i:05d}.{ext}", payload)
    subprocess.run(["tar", "-cf", str(data / "small3k.tar"), "-C", str(data), "small3k"],
                   check=True)


def prepare(data: Path, p: Params, log=print) -> dict:  # type: ignore[no-untyped-def]
    """Make (or reuse) the four versions and the tar; a description of them."""
    stamp = data / "stamp.json"
    want = {"generator": GENERATOR_VERSION, "params": asdict(p)}
    if stamp.exists():
        info = json.loads(stamp.read_text())
        if {k: info.get(k) for k in want} == json.loads(json.dumps(want)):
            log(f"workload: reusing {data}")
            return info
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    t0 = time.monotonic()
    text = Text(0)
    _gen_v1(data / "v1", p, text)
    rewritten = _gen_v2(data / "v1", data / "v2", p, text)
    _gen_v3(data / "v2", data / "v3", p, text)
    insert_at = _gen_v4(data / "v3", data / "v4", p)
    _gen_tar(data, p, text)
    info = dict(want)
    info["versions"] = {}
    for v in ("v1", "v2", "v3", "v4"):
        n, b = tree_bytes(data / v)
        info["versions"][v] = {"files": n, "bytes": b}
    n, b = tree_bytes(data / "small3k")
    info["tar"] = {"files": n, "bytes": b, "archive_bytes": (data / "small3k.tar").stat().st_size}
    sm = small_paths(data / "v1")
    info["v1_small"] = {"files": len(sm), "bytes": sum(x.stat().st_size for x in sm)}
    info["v2_rewritten"] = rewritten
    info["v4_insert_at"] = insert_at
    info["seconds"] = round(time.monotonic() - t0, 1)
    stamp.write_text(json.dumps(info, indent=1))
    log(f"workload: generated in {info['seconds']} s: v1 {info['versions']['v1']['files']} files, "
        f"{info['versions']['v1']['bytes'] / MiB:.0f} MiB; tar {n} files, {b / MiB:.0f} MiB")
    return info
