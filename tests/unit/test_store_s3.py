"""The S3Store object-store contract (see dmsfs/store/base.py), against a real moto
server, and its retries, through a FaultProxy where faults are needed."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from botocore.exceptions import ConnectionClosedError
from s3env import FaultProxy, MotoServer

from dmsfs.errors import NoSuchObject, StoreConfigError, StoreError, UsageError
from dmsfs.store import open_store
from dmsfs.store.s3 import MULTIPART, S3Store

MakeStore = Callable[..., S3Store]


@pytest.fixture
def make_store(moto_server: MotoServer, s3_bucket: str) -> Iterator[MakeStore]:
    """make(prefix="pre/fix", endpoint=moto, timeout=10, bucket=s3_bucket) -> S3Store,
    closed afterwards."""
    made: list[S3Store] = []

    def make(prefix: str = "pre/fix", endpoint: str | None = None, timeout: float = 10.0,
             bucket: str | None = None) -> S3Store:
        made.append(S3Store(bucket or s3_bucket, prefix, endpoint or moto_server.url, timeout))
        return made[-1]

    yield make
    for s in made:
        s.close()


@pytest.fixture
def store(make_store: MakeStore) -> S3Store:
    return make_store()


@pytest.fixture
def proxied(make_store: MakeStore, fault_proxy: FaultProxy) -> S3Store:
    """A store that talks to moto through the fault proxy."""
    return make_store(endpoint=fault_proxy.url, timeout=5.0)


def test_open_store_url(moto_server: MotoServer) -> None:
    for url, prefix in (("s3://bkt/a/b", "s3://bkt/a/b"), ("s3://bkt/a/", "s3://bkt/a"),
                        ("s3://bkt", "s3://bkt")):
        s = open_store(url, s3_endpoint=moto_server.url, s3_timeout=3)
        assert isinstance(s, S3Store) and s.url == prefix and s.timeout == 3
        s.close()
    for bad in ("s3:///prefix", "ftp://example.com/x"):
        with pytest.raises(UsageError) as e:
            open_store(bad)
        assert e.value.errno == 22
    with pytest.raises(StoreConfigError):
        open_store("s3://bkt/p", s3_endpoint="not a url")


def test_keys_live_under_the_prefix(make_store: MakeStore, moto_server: MotoServer,
                                    s3_bucket: str) -> None:
    make_store("pre/fix").put("packs/aa/1", b"x")
    make_store("").put("config", b"y")
    listing = moto_server.client.list_objects_v2(Bucket=s3_bucket)
    keys = {o["Key"] for o in listing["Contents"]}
    assert keys == {"pre/fix/packs/aa/1", "config"}
    assert list(make_store("pre").list()) == ["fix/packs/aa/1"]


def test_put_get(store: S3Store) -> None:
    store.put("config", b"abc")
    store.put("packs/ab/ab12", memoryview(b"0123456789"))
    assert store.get("config") == b"abc"
    assert store.get("packs/ab/ab12") == b"0123456789"
    assert store.size("packs/ab/ab12") == 10
    store.put("config", b"replaced")
    assert store.get("config") == b"replaced"
    store.put("empty", b"")
    assert store.get("empty") == b"" and store.size("empty") == 0
    assert store.retries == 0 and store.errors == 0


def test_get_range(store: S3Store) -> None:
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
    store.put("empty", b"")
    assert store.get_range("empty", 0, 10) == b""
    assert store.get_range("empty", -16, 16) == b""


def test_list(store: S3Store) -> None:
    keys = {"config", "packs/aa/aa01", "packs/aa/aa02", "packs/bb/bb01", "snap/1"}
    for k in keys:
        store.put(k, k.encode())
    assert set(store.list()) == keys
    assert set(store.list("packs/")) == {k for k in keys if k.startswith("packs/")}
    assert set(store.list("packs/aa/")) == {"packs/aa/aa01", "packs/aa/aa02"}
    assert set(store.list("packs/aa/aa0")) == {"packs/aa/aa01", "packs/aa/aa02"}
    assert set(store.list("pa")) == {k for k in keys if k.startswith("pa")}
    assert set(store.list("nothing/")) == set()
    assert set(store.list("conf")) == {"config"}


def test_list_pages(store: S3Store, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = {f"packs/{i}" for i in range(5)}
    for k in keys:
        store.put(k, b"")
    pages = []
    real = store._client.list_objects_v2

    def list_objects_v2(**kwargs: object) -> dict:  # type: ignore[type-arg]
        pages.append(kwargs)
        return real(**kwargs, MaxKeys=2)   # S3 pages hold up to 1000 keys

    monkeypatch.setattr(store._client, "list_objects_v2", list_objects_v2)
    assert set(store.list("packs/")) == keys
    assert len(pages) == 3


def test_delete_is_idempotent(store: S3Store) -> None:
    store.put("packs/aa/1", b"x")
    store.delete("packs/aa/1")
    store.delete("packs/aa/1")
    store.delete("never/was")
    assert list(store.list("packs/")) == []
    with pytest.raises(NoSuchObject):
        store.get("packs/aa/1")


def test_put_if_absent(store: S3Store) -> None:
    assert store.put_if_absent("config", b"first") is True
    assert store.put_if_absent("config", b"second") is False
    assert store.get("config") == b"first"


def test_put_if_absent_race(store: S3Store) -> None:
    start = threading.Barrier(2)

    def claim(data: bytes) -> bool:
        start.wait()
        return store.put_if_absent("lease", data)

    with ThreadPoolExecutor(2) as pool:
        won = list(pool.map(claim, (b"one", b"two")))
    assert sorted(won) == [False, True]
    assert store.get("lease") == (b"one" if won[0] else b"two")


def test_put_if_absent_after_a_lost_reply(store: S3Store,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The first attempt creates the object but its reply is lost: the retry meets
    the object, sees it is ours, and still reports True."""
    lose_reply(store, monkeypatch)
    assert store.put_if_absent("lease", b"mine") is True
    assert store.retries == 1
    lose_reply(store, monkeypatch)
    assert store.put_if_absent("lease", b"other") is False


def lose_reply(store: S3Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next put_object happen, then fail as if the connection dropped."""
    real = store._client.put_object

    def put_object(**kwargs: object) -> object:
        monkeypatch.undo()
        real(**kwargs)
        raise ConnectionClosedError(endpoint_url="http://moto")

    monkeypatch.setattr(store._client, "put_object", put_object)


def test_compare_and_swap(store: S3Store) -> None:
    store.put("lease", b"v1")
    data, tag = store.get_tagged("lease")
    assert data == b"v1" and tag
    new_tag = store.put_if_match("lease", b"v2", tag)
    assert new_tag is not None and new_tag != tag
    assert store.get_tagged("lease") == (b"v2", new_tag)
    assert store.put_if_match("lease", b"v3", tag) is None      # stale tag
    assert store.get("lease") == b"v2"
    assert store.put_if_match("gone", b"v1", tag) is None       # no such object
    with pytest.raises(NoSuchObject):
        store.get("gone")


def test_put_if_match_after_a_lost_reply(store: S3Store,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    store.put("lease", b"v1")
    _, tag = store.get_tagged("lease")
    lose_reply(store, monkeypatch)
    new_tag = store.put_if_match("lease", b"v2", tag)
    assert new_tag is not None and store.get_tagged("lease") == (b"v2", new_tag)
    lose_reply(store, monkeypatch)
    assert store.put_if_match("lease", b"v3", tag) is None


@pytest.mark.parametrize("size", [100_000, MULTIPART, MULTIPART + 12345])
def test_put_file_consumes_the_file(proxied: S3Store, fault_proxy: FaultProxy,
                                    tmp_path: Path, size: int) -> None:
    src = tmp_path / "staged.dat"
    data = os.urandom(size)
    src.write_bytes(data)
    proxied.put_file("packs/cd/cd01", src)
    assert not src.exists()
    assert proxied.get("packs/cd/cd01") == data
    multipart = [t for m, t in fault_proxy.seen if m == "POST" and t.endswith("?uploads")]
    assert len(multipart) == (1 if size >= MULTIPART else 0)
    if size >= MULTIPART:
        assert fault_proxy.requests["PUT"] == -(-size // (MULTIPART // 2))   # the parts


def test_put_file_retries_the_upload(proxied: S3Store, fault_proxy: FaultProxy,
                                     tmp_path: Path) -> None:
    src = tmp_path / "staged.dat"
    data = os.urandom(MULTIPART + 1)
    src.write_bytes(data)
    fault_proxy.fail_next(1)
    proxied.put_file("packs/cd/cd02", src)
    assert proxied.get("packs/cd/cd02") == data and not src.exists()
    assert proxied.retries == 1


def test_missing_objects(store: S3Store, tmp_path: Path) -> None:
    for call in (lambda: store.get("nope"), lambda: store.get_range("nope", 0, 1),
                 lambda: store.get_range("packs/nope", -16, 16), lambda: store.size("nope"),
                 lambda: store.get_range("nope", 0, 0), lambda: store.get_tagged("nope")):
        with pytest.raises(NoSuchObject):
            call()
    with pytest.raises(NoSuchObject):
        store.put_file("packs/x", tmp_path / "does-not-exist")
    assert store.retries == 0 and store.errors == 0


def test_missing_bucket(make_store: MakeStore) -> None:
    s = make_store(bucket="no-such-bucket-here")
    for call in (lambda: s.get("config"), lambda: s.put("config", b"x")):
        with pytest.raises(StoreError, match="no-such-bucket-here.*does not exist"):
            call()
    assert s.errors == 2


def test_slow_down_is_retried(proxied: S3Store, fault_proxy: FaultProxy) -> None:
    proxied.put("k", b"v")
    fault_proxy.fail_next(2)
    proxied.put("k", b"w")
    assert proxied.retries == 2
    fault_proxy.fail_next(1)
    assert proxied.size("k") == 1   # HEAD: an error without a body
    for status, code in ((500, "InternalError"), (503, "ServiceUnavailable"),
                         (400, "RequestTimeout"), (429, "TooManyRequests"),
                         (400, "ThrottlingException"), (409, "ConditionalRequestConflict")):
        fault_proxy.fail_next(1, status, code)
        assert proxied.get("k") == b"w"
    assert proxied.retries == 9 and proxied.errors == 0


def test_client_errors_are_not_retried(proxied: S3Store, fault_proxy: FaultProxy) -> None:
    proxied.put("k", b"v")
    fault_proxy.fail_next(1, 403, "AccessDenied")
    with pytest.raises(StoreError, match="AccessDenied"):
        proxied.get("k")
    fault_proxy.fail_next(1, 404, "NoSuchKey")
    with pytest.raises(NoSuchObject):
        proxied.get("k")
    assert proxied.retries == 0 and proxied.errors == 1
    assert proxied.get("k") == b"v"


def test_unreachable_fails_within_the_timeout(make_store: MakeStore,
                                              fault_proxy: FaultProxy) -> None:
    s = make_store(endpoint=fault_proxy.url, timeout=3.0)
    s.put("k", b"v")
    fault_proxy.down()
    start = time.monotonic()
    with pytest.raises(StoreError, match=r"unreachable after \d+ attempts"):
        s.get("k")
    assert time.monotonic() - start < 3.5
    assert s.retries >= 1 and s.errors == 1


def test_hung_server_fails_within_the_timeout(make_store: MakeStore,
                                              moto_server: MotoServer) -> None:
    s = make_store(timeout=2.0)
    s.put("k", b"v")
    moto_server.pause()
    try:
        start = time.monotonic()
        with pytest.raises(StoreError, match="unreachable"):
            s.get("k")
        assert time.monotonic() - start < 2.5
    finally:
        moto_server.resume()
    assert s.get("k") == b"v"


def test_back_before_the_deadline(proxied: S3Store, fault_proxy: FaultProxy) -> None:
    proxied.put("k", b"v")
    fault_proxy.down()
    threading.Timer(0.5, fault_proxy.up).start()
    proxied.put("k", b"w")   # refused at first, then through once the proxy is back
    assert proxied.get("k") == b"w"
    assert proxied.retries >= 1 and proxied.errors == 0
