"""WriteBack (dmsfs/store/writeback.py): the upload spool in front of a remote
store, over a LocalStore backend whose uploads a test can hold back or fail."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dmsfs.errors import NoSuchObject, StoreError
from dmsfs.store.local import LocalStore
from dmsfs.store.writeback import WriteBack


class GatedStore(LocalStore):
    """A LocalStore that logs ("start"/"end", op, key) of every upload and delete,
    holds an upload while its key's gate is closed, and fails while `failing`."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.events: list[tuple[str, str, str]] = []
        self.gates: dict[str, threading.Event] = {}
        self.failing = False
        self._lock = threading.Lock()

    def _log(self, what: str, op: str, key: str) -> None:
        with self._lock:
            self.events.append((what, op, key))

    def _pass(self, op: str, key: str) -> None:
        self._log("start", op, key)
        gate = self.gates.get(key)
        if gate is not None:
            assert gate.wait(20), f"gate of {key} never opened"
        if self.failing:
            raise StoreError(f"{key}: store down (test)")

    def put_file(self, key: str, path: Path) -> None:
        self._pass("put", key)
        super().put_file(key, path)
        self._log("end", "put", key)

    def put(self, key: str, data: bytes | memoryview) -> None:
        self._pass("put", key)
        super().put(key, data)
        self._log("end", "put", key)

    def delete(self, key: str) -> None:
        self._pass("del", key)
        super().delete(key)
        self._log("end", "del", key)

    def gate(self, *keys: str) -> dict[str, threading.Event]:
        for k in keys:
            self.gates[k] = threading.Event()
        return {k: self.gates[k] for k in keys}

    def started(self, key: str) -> bool:
        with self._lock:
            return ("start", "put", key) in self.events or ("start", "del", key) in self.events

    def ended(self) -> list[str]:
        with self._lock:
            return [k for what, _, k in self.events if what == "end"]

    def index(self, what: str, key: str) -> int:
        with self._lock:
            return next(i for i, (w, _, k) in enumerate(self.events) if w == what and k == key)


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def store(tmp_path: Path) -> GatedStore:
    return GatedStore(tmp_path / "store")


@pytest.fixture
def make_wb(tmp_path: Path) -> Iterator[Callable[..., WriteBack]]:
    made: list[WriteBack] = []

    def make(backend: LocalStore, fence: Callable[[], bool] = lambda: True) -> WriteBack:
        made.append(WriteBack(backend, tmp_path / "uploads", fence))
        return made[-1]

    yield make
    for wb in made:
        for gate in getattr(wb.backend, "gates", {}).values():
            gate.set()
        wb.close()


def spool_files(wb: WriteBack) -> list[str]:
    return sorted(p.name for p in wb.dir.iterdir() if p.is_file())


P1, P2, P3 = "packs/aa/aa01", "packs/bb/bb02", "packs/cc/cc03"
V1 = "versions/ds/0001"


def test_packs_overlap_and_a_barrier_waits_for_earlier_packs(
        store: GatedStore, make_wb: Callable[..., WriteBack]) -> None:
    gates = store.gate(P1, P2)
    wb = make_wb(store)
    wb.put(P1, b"one")
    wb.put(P2, b"two")
    wb.put(V1, b"version")
    wb.put(P3, b"three")
    # both packs are in flight at once
    wait_for(lambda: store.started(P1) and store.started(P2))
    time.sleep(0.3)
    assert not store.started(V1), "a version record went up before its packs"
    assert not store.started(P3), "a pack spooled after a barrier started before it"
    gates[P1].set()
    wait_for(lambda: P1 in store.ended())
    time.sleep(0.3)
    assert not store.started(V1), "a version record went up while a pack was on its way"
    gates[P2].set()
    assert wb.drain(10)
    assert store.ended().index(V1) > store.ended().index(P2)
    assert store.index("start", V1) > store.index("end", P2)
    assert store.index("start", P3) > store.index("end", V1)
    for key, data in ((P1, b"one"), (P2, b"two"), (V1, b"version"), (P3, b"three")):
        assert store.get(key) == data
    assert spool_files(wb) == []


def test_nothing_after_a_barrier_starts_before_it_ends(
        store: GatedStore, make_wb: Callable[..., WriteBack]) -> None:
    gates = store.gate(V1)
    wb = make_wb(store)
    wb.put(V1, b"v")
    wb.put(P1, b"p")
    wb.put("tags/ds/gold", b"t")
    wait_for(lambda: store.started(V1))
    time.sleep(0.3)
    assert not store.started(P1) and not store.started("tags/ds/gold")
    gates[V1].set()
    assert wb.drain(10)
    assert store.ended() == [V1, P1, "tags/ds/gold"]


def test_fence_holds_barriers_but_not_packs(
        store: GatedStore, make_wb: Callable[..., WriteBack]) -> None:
    ours = threading.Event()
    wb = make_wb(store, fence=ours.is_set)
    wb.put(P1, b"p")
    wb.put("head", b"h")
    wait_for(lambda: P1 in store.ended())
    time.sleep(0.3)
    assert not store.started("head"), "a barrier went up without the lease"
    assert wb.drain(0.2) is False
    ours.set()
    assert wb.drain(10)
    assert store.get("head") == b"h"


def test_reads_are_served_from_the_spool(
        store: GatedStore, make_wb: Callable[..., WriteBack], tmp_path: Path) -> None:
    gates = store.gate(P1)                      # V1, a barrier, waits behind P1
    wb = make_wb(store)
    data = bytes(range(256)) * 40
    wb.put(P1, data)
    src = tmp_path / "staged"
    src.write_bytes(b"from a file")
    wb.put_file(V1, src)
    assert not src.exists(), "put_file must consume its file"
    LocalStore.put(store, "config", b"in the store already")
    wait_for(lambda: store.started(P1))
    with pytest.raises(NoSuchObject):
        store.get(P1)                         # really not uploaded yet
    assert wb.get(P1) == data
    assert wb.get_range(P1, 1000, 300) == data[1000:1300]
    assert wb.get_range(P1, -100, 100) == data[-100:]
    assert wb.get_range(P1, len(data) - 10, 100) == data[-10:]
    assert wb.size(P1) == len(data)
    assert wb.get(V1) == b"from a file" and wb.size(V1) == 11
    assert wb.get("config") == b"in the store already"
    assert sorted(wb.list()) == sorted([P1, V1, "config"])
    assert list(wb.list("packs/")) == [P1]
    gates[P1].set()
    assert wb.drain(10)
    assert wb.get(P1) == data and wb.get_range(P1, -100, 100) == data[-100:]
    assert wb.get(V1) == b"from a file"
    assert sorted(wb.list()) == sorted([P1, V1, "config"])


def test_delete_is_ordered_after_earlier_puts(
        store: GatedStore, make_wb: Callable[..., WriteBack]) -> None:
    LocalStore.put(store, "tags/ds/old", b"old")
    gates = store.gate(P1)
    wb = make_wb(store)
    wb.put(P1, b"p")
    wb.delete("tags/ds/old")
    wb.put("tags/ds/x", b"x1")
    wb.delete("tags/ds/x")
    wb.put("tags/ds/y", b"y1")
    wb.delete("tags/ds/y")
    wb.put("tags/ds/y", b"y2")
    # the spool answers at once, before anything is uploaded
    for key in ("tags/ds/old", "tags/ds/x"):
        with pytest.raises(NoSuchObject):
            wb.get(key)
        with pytest.raises(NoSuchObject):
            wb.size(key)
    assert wb.get("tags/ds/y") == b"y2"
    assert sorted(wb.list("tags/")) == ["tags/ds/y"]
    time.sleep(0.2)
    assert not store.started("tags/ds/old"), "a delete overtook an earlier pack"
    gates[P1].set()
    assert wb.drain(10)
    assert sorted(store.list("tags/")) == ["tags/ds/y"]
    assert store.get("tags/ds/y") == b"y2"
    assert store.ended() == [P1, "tags/ds/old", "tags/ds/x", "tags/ds/x", "tags/ds/y",
                               "tags/ds/y", "tags/ds/y"]


def test_backlog_figures_and_drain(
        store: GatedStore, make_wb: Callable[..., WriteBack], tmp_path: Path) -> None:
    ours = threading.Event()
    wb = make_wb(store, fence=ours.is_set)
    assert wb.backlog() == {"objects": 0, "bytes": 0, "oldest_age": 0.0}
    wb.put("schemas/a", b"x" * 10)
    time.sleep(1.1)
    wb.put("versions/b", b"y" * 20)
    src = tmp_path / "f"
    src.write_bytes(b"z" * 30)
    wb.put_file("tags/c", src)
    wb.delete("tags/d")
    b = wb.backlog()
    assert (b["objects"], b["bytes"]) == (4, 60)
    assert 1.0 <= b["oldest_age"] < 5, b
    start = time.monotonic()
    assert wb.drain(0.5) is False
    assert 0.4 < time.monotonic() - start < 3
    ours.set()
    assert wb.drain(10) is True
    assert wb.backlog() == {"objects": 0, "bytes": 0, "oldest_age": 0.0}
    assert wb.uploaded == 4


def test_failed_uploads_are_retried_until_the_store_answers(
        store: GatedStore, make_wb: Callable[..., WriteBack]) -> None:
    store.failing = True
    wb = make_wb(store)
    wb.put(P1, b"p")
    wb.put(V1, b"v")
    wait_for(lambda: store.started(P1))
    time.sleep(0.5)
    assert wb.backlog()["objects"] == 2
    assert wb.get(V1) == b"v"
    store.failing = False
    assert wb.drain(15)
    assert store.get(P1) == b"p" and store.get(V1) == b"v"


def test_restart_resumes_the_spool_in_order(tmp_path: Path) -> None:
    down = GatedStore(tmp_path / "store")
    down.failing = True
    wb = WriteBack(down, tmp_path / "uploads")
    wb.put(P1, b"p1")
    wb.put(V1, b"v1")
    wb.put(P2, b"p2")
    wb.put("tags/ds/gold", b"t")
    wb.delete("tags/ds/old")
    time.sleep(0.3)
    wb.close()
    assert len(spool_files(wb)) == 5
    assert not list(LocalStore(tmp_path / "store").list())

    # a crash leaves a half-written temp file behind: it must not be uploaded
    (tmp_path / "uploads" / ".tmp" / "0000000000000099.put.junk").write_bytes(b"junk")
    LocalStore.put(down, "tags/ds/old", b"old")
    up = GatedStore(tmp_path / "store")
    gates = up.gate(P1)                         # held until the spool is checked
    ours = threading.Event()
    wb2 = WriteBack(up, tmp_path / "uploads", ours.is_set)
    try:
        assert wb2.backlog()["objects"] == 5
        assert wb2.get(V1) == b"v1"             # spooled data served after the restart
        with pytest.raises(NoSuchObject):
            wb2.get("tags/ds/old")
        wb2.put("versions/ds/0002", b"v2")      # numbered after the old spool
        assert spool_files(wb2)[-1].endswith(".put.versions%2Fds%2F0002")
        gates[P1].set()
        wait_for(lambda: P1 in up.ended())
        ours.set()
        assert wb2.drain(10)
        assert up.ended() == [P1, V1, P2, "tags/ds/gold", "tags/ds/old", "versions/ds/0002"]
        assert sorted(up.list()) == sorted([P1, P2, V1, "tags/ds/gold", "versions/ds/0002"])
        assert spool_files(wb2) == []
        assert list((tmp_path / "uploads" / ".tmp").iterdir()) == []
    finally:
        ours.set()
        gates[P1].set()
        wb2.close()
