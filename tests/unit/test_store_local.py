"""The LocalStore object-store contract (see dmsfs/store/base.py)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from dmsfs.errors import NoSuchObject, StoreError
from dmsfs.store import open_store
from dmsfs.store.local import TMP_DIR, LocalStore


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def leftovers(store: LocalStore) -> list[Path]:
    return list((store.root / TMP_DIR).iterdir())


def test_open_store_url(tmp_path: Path) -> None:
    s = open_store(f"file://{tmp_path}/s")
    assert isinstance(s, LocalStore)
    assert s.url == f"file://{tmp_path}/s"
    with pytest.raises(Exception) as e:
        open_store("ftp://example.com/x")
    assert e.value.errno == 22  # type: ignore[attr-defined]


def test_put_get(store: LocalStore) -> None:
    store.put("config", b"abc")
    store.put("packs/ab/ab12", memoryview(b"0123456789"))
    assert store.get("config") == b"abc"
    assert store.get("packs/ab/ab12") == b"0123456789"
    assert store.size("packs/ab/ab12") == 10
    store.put("config", b"replaced")            # put replaces, atomically
    assert store.get("config") == b"replaced"
    store.put("empty", b"")
    assert store.get("empty") == b"" and store.size("empty") == 0
    assert leftovers(store) == []


def test_objects_are_read_only_files(store: LocalStore, tmp_path: Path) -> None:
    store.put("a/b", b"x")
    store.put_if_absent("c", b"y")
    src = tmp_path / "f"
    src.write_bytes(b"z")
    store.put_file("d/e", src)
    for key in ("a/b", "c", "d/e"):
        mode = (store.root / key).stat().st_mode
        assert stat.S_ISREG(mode)
        assert stat.S_IMODE(mode) & 0o222 == 0, (key, oct(mode))


def test_get_range(store: LocalStore) -> None:
    data = bytes(range(256)) * 4
    store.put("k", data)
    assert store.get_range("k", 0, 10) == data[:10]
    assert store.get_range("k", 100, 50) == data[100:150]
    assert store.get_range("k", 1000, 100) == data[1000:]      # short at the end
    assert store.get_range("k", 2000, 10) == b""               # past the end
    assert store.get_range("k", -16, 16) == data[-16:]         # from the end
    assert store.get_range("k", -16, 4) == data[-16:-12]
    assert store.get_range("k", -5000, 3) == data[:3]          # clamped to the start
    assert store.get_range("k", 5, 0) == b""


def test_list(store: LocalStore) -> None:
    keys = {"config", "packs/aa/aa01", "packs/aa/aa02", "packs/bb/bb01", "snap/1"}
    for k in keys:
        store.put(k, k.encode())
    (store.root / TMP_DIR / "half-written").write_bytes(b"junk")
    assert set(store.list()) == keys
    assert set(store.list("packs/")) == {k for k in keys if k.startswith("packs/")}
    assert set(store.list("packs/aa/")) == {"packs/aa/aa01", "packs/aa/aa02"}
    assert set(store.list("packs/aa/aa0")) == {"packs/aa/aa01", "packs/aa/aa02"}
    assert set(store.list("pa")) == {k for k in keys if k.startswith("pa")}
    assert set(store.list("nothing/")) == set()
    assert set(store.list("conf")) == {"config"}


def test_delete_is_idempotent(store: LocalStore) -> None:
    store.put("packs/aa/1", b"x")
    store.delete("packs/aa/1")
    store.delete("packs/aa/1")
    store.delete("never/was")
    assert list(store.list("packs/")) == []
    with pytest.raises(NoSuchObject):
        store.get("packs/aa/1")


def test_put_if_absent(store: LocalStore) -> None:
    assert store.put_if_absent("config", b"first") is True
    assert store.put_if_absent("config", b"second") is False
    assert store.get("config") == b"first"
    assert leftovers(store) == []


def test_put_file_consumes_the_file(store: LocalStore, tmp_path: Path) -> None:
    src = tmp_path / "staged.dat"
    data = os.urandom(100_000)
    src.write_bytes(data)
    store.put_file("packs/cd/cd01", src)
    assert not src.exists()
    assert store.get("packs/cd/cd01") == data
    assert leftovers(store) == []


def cross_device(monkeypatch: pytest.MonkeyPatch, src: Path) -> None:
    """Make moving src fail as across file systems (the state dir may live on another
    file system than a local store)."""
    real = os.replace

    def replace(a: object, b: object, *args: object, **kwargs: object) -> None:
        if Path(str(a)) == src:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real(a, b, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", replace)


def test_put_file_across_file_systems(store: LocalStore, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "staged.dat"
    data = os.urandom(50_000)
    src.write_bytes(data)
    cross_device(monkeypatch, src)
    store.put_file("packs/ef/ef01", src)
    assert not src.exists()
    assert store.get("packs/ef/ef01") == data
    assert leftovers(store) == []
    assert stat.S_IMODE((store.root / "packs/ef/ef01").stat().st_mode) & 0o222 == 0


def test_missing_objects(store: LocalStore, tmp_path: Path) -> None:
    for call in (lambda: store.get("nope"), lambda: store.get_range("nope", 0, 1),
                 lambda: store.get_range("packs/nope", -16, 16), lambda: store.size("nope")):
        with pytest.raises(NoSuchObject):
            call()
    with pytest.raises(NoSuchObject):
        store.put_file("packs/x", tmp_path / "does-not-exist")


@pytest.mark.parametrize("key", ["", "/abs", ".tmp/x", "../escape", "a/../../b", ".hidden"])
def test_bad_keys(store: LocalStore, key: str) -> None:
    with pytest.raises(StoreError):
        store.put(key, b"x")
    with pytest.raises(StoreError):
        store.get(key)


def test_free_bytes(store: LocalStore) -> None:
    free = store.free_bytes()
    assert isinstance(free, int) and free > 0


CRASH_POINTS = ("rename", "replace", "link", "chmod", "unlink", "fsync")


@pytest.mark.parametrize("where", ["same file system", "other file system"])
def test_put_file_crash_leaves_the_bytes_somewhere(store: LocalStore, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   where: str) -> None:
    """A crash at any step of put_file leaves the bytes at the source path or under
    the key: the chunk store's recovery looks in exactly those two places."""

    class Crash(BaseException):
        pass

    crashed_at = 0
    while True:
        crashed_at += 1
        src = tmp_path / "staged.dat"
        src.write_bytes(b"pack bytes")
        calls = 0

        def step(real: object) -> object:
            def wrapper(*args: object, **kwargs: object) -> object:
                nonlocal calls
                calls += 1
                if calls == crashed_at:
                    raise Crash()
                return real(*args, **kwargs)  # type: ignore[operator]
            return wrapper

        if where == "other file system":
            cross_device(monkeypatch, src)
        for name in CRASH_POINTS:
            monkeypatch.setattr(os, name, step(getattr(os, name)))
        try:
            store.put_file("packs/aa/aa99", src)
            done = True
        except Crash:
            done = False
        finally:
            monkeypatch.undo()
        found = [p for p in (src, store.root / "packs/aa/aa99") if p.exists()]
        assert found, f"crash at step {crashed_at}: the bytes are neither at the source "\
                      f"nor under the key ({[p.name for p in leftovers(store)]} in {TMP_DIR})"
        assert found[0].read_bytes() == b"pack bytes"
        if done:
            assert not src.exists()
            break
        src.unlink(missing_ok=True)
        store.delete("packs/aa/aa99")
    # the steps were really interrupted one by one (a copy has more of them)
    assert crashed_at >= (7 if where == "other file system" else 4), crashed_at
