"""BlockCache (dmsfs/store/blockcache.py): the disk cache of pack blocks, over a
LocalStore backend that counts the reads it serves."""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tmpfs import tmpfs

from dmsfs.errors import NoSuchObject
from dmsfs.store.blockcache import READ_AHEAD_BLOCKS, BlockCache
from dmsfs.store.local import LocalStore

BLK = 1000


class CountingStore(LocalStore):
    """A LocalStore that records every ranged read (key, offset, length)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: list[tuple[str, int, int]] = []
        self._lock = threading.Lock()

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        with self._lock:
            self.reads.append((key, offset, length))
        return super().get_range(key, offset, length)

    def block_reads(self, key: str) -> list[int]:
        with self._lock:
            return sorted(off // BLK for k, off, _ in self.reads if k == key and off >= 0)


@pytest.fixture
def store(tmp_path: Path) -> CountingStore:
    return CountingStore(tmp_path / "store")


@pytest.fixture
def make_cache(tmp_path: Path) -> Iterator[Callable[..., BlockCache]]:
    made: list[BlockCache] = []

    def make(store: LocalStore, max_bytes: int, block_size: int = BLK) -> BlockCache:
        made.append(BlockCache(store, tmp_path / "cache", max_bytes, block_size))
        return made[-1]

    yield make
    for c in made:
        c.close()


def pack(store: LocalStore, n: int, size: int) -> tuple[str, bytes]:
    key = f"packs/{n:02x}/{n:02x}" + "0" * 62
    data = random.Random(n).randbytes(size)
    LocalStore.put(store, key, data)
    return key, data


def dir_bytes(path: Path) -> int:
    """The files directly in path (a file removed meanwhile counts nothing)."""
    total = 0
    with os.scandir(path) as it:
        for e in it:
            try:
                if e.is_file():
                    total += e.stat().st_size
            except FileNotFoundError:
                pass
    return total


def disk_bytes(cache_dir: Path) -> int:
    """Every file under the cache dir, temp files included."""
    return dir_bytes(cache_dir) + dir_bytes(cache_dir / ".tmp")


def block_files(cache_dir: Path) -> set[str]:
    with os.scandir(cache_dir) as it:
        return {e.name for e in it if e.is_file()}


def settle(cache: BlockCache) -> None:
    """Wait for read-ahead to finish: nothing in flight, no new fetch for a while."""
    deadline = time.monotonic() + 10
    reads = getattr(cache.backend, "reads", [])
    seen, quiet_since = len(reads), time.monotonic()
    while cache._inflight or time.monotonic() - quiet_since < 0.2:
        assert time.monotonic() < deadline, "read-ahead never settled"
        if len(reads) != seen:
            seen, quiet_since = len(reads), time.monotonic()
        time.sleep(0.01)


def test_ranges_across_blocks(store: CountingStore,
                              make_cache: Callable[..., BlockCache]) -> None:
    key, data = pack(store, 1, 5 * BLK + 123)
    cache = make_cache(store, 100 * BLK)
    assert cache.get_range(key, 900, 2500) == data[900:3400]
    assert store.block_reads(key)[:4] == [0, 1, 2, 3]
    for offset, length in ((0, 1), (999, 2), (1000, 1000), (4500, 10_000), (5 * BLK, 123),
                           (5 * BLK + 100, 50), (0, len(data)), (3 * BLK - 1, 1)):
        assert cache.get_range(key, offset, length) == data[offset:offset + length], \
            (offset, length)
    assert cache.get_range(key, len(data), 10) == b""
    assert cache.size(key) == len(data)
    settle(cache)
    # every block was fetched once: the rest were hits; the short tail came with block 4
    assert store.block_reads(key) == [0, 1, 2, 3, 4]
    assert (key, 4 * BLK, BLK + 123) in store.reads
    assert cache.stats()["hits"] > 0


def test_a_tail_of_half_a_block_or_more_is_a_block_of_its_own(
        store: CountingStore, make_cache: Callable[..., BlockCache]) -> None:
    key, data = pack(store, 2, 2 * BLK + BLK // 2)
    cache = make_cache(store, 100 * BLK)
    assert cache.get_range(key, 0, len(data)) == data
    settle(cache)
    assert store.block_reads(key) == [0, 1, 2]
    assert (key, 2 * BLK, BLK // 2) in store.reads


def test_a_block_file_cut_another_way_is_fetched_again(
        store: CountingStore, make_cache: Callable[..., BlockCache], tmp_path: Path) -> None:
    key, data = pack(store, 3, 2 * BLK + 10)
    # a block file of a cache that did not merge tails: block 1 holds BLK bytes only
    (tmp_path / "cache").mkdir()
    name = f"{key.replace('/', '_')}.1"
    (tmp_path / "cache" / name).write_bytes(data[BLK:2 * BLK])
    cache = make_cache(store, 100 * BLK)
    assert cache.get_range(key, BLK, BLK + 10) == data[BLK:]
    settle(cache)
    assert (tmp_path / "cache" / name).stat().st_size == BLK + 10
    assert cache.bytes == disk_bytes(tmp_path / "cache")


def test_other_objects_and_negative_offsets_pass_through(
        store: CountingStore, make_cache: Callable[..., BlockCache], tmp_path: Path) -> None:
    key, data = pack(store, 2, 3 * BLK)
    LocalStore.put(store, "versions/ds/1", b"a version record")
    cache = make_cache(store, 100 * BLK)
    assert cache.get_range(key, -100, 100) == data[-100:]
    assert cache.get_range(key, -10 * BLK, 50) == data[:50]
    assert store.reads == [(key, -100, 100), (key, -10 * BLK, 50)]
    assert cache.get_range("versions/ds/1", 2, 7) == b"version"
    assert cache.get_range("versions/ds/1", 2, 7) == b"version"
    assert [r for r in store.reads if r[0] == "versions/ds/1"] == [("versions/ds/1", 2, 7)] * 2
    assert cache.get("versions/ds/1") == b"a version record"
    assert block_files(tmp_path / "cache") == set()
    assert cache.stats()["bytes"] == 0


def test_eviction_keeps_the_size_limit(store: CountingStore,
                                       make_cache: Callable[..., BlockCache],
                                       tmp_path: Path) -> None:
    keys = [pack(store, n, 4 * BLK + 500) for n in range(6)]
    limit = 3 * BLK + 600
    cache = make_cache(store, limit)
    rng = random.Random(7)
    for _ in range(300):
        key, data = rng.choice(keys)
        off = rng.randrange(len(data))
        length = rng.randrange(1, 3 * BLK)
        assert cache.get_range(key, off, length) == data[off:off + length]
        assert cache.stats()["bytes"] <= limit
    settle(cache)
    s = cache.stats()
    assert s["max_bytes"] == limit
    assert s["bytes"] == disk_bytes(tmp_path / "cache") <= limit
    assert 3 <= len(block_files(tmp_path / "cache")) <= 4
    assert s["misses"] > 0 and s["hits"] > 0


@pytest.fixture
def tmpfs_cache_dir(tmp_path: Path) -> Iterator[Path]:
    """tmp_path/cache on its own tmpfs: its used blocks are the files' size, all at once."""
    with tmpfs(tmp_path / "cache", "1m") as path:
        yield path


def test_the_cache_dir_never_holds_more_than_the_limit(
        store: CountingStore, make_cache: Callable[..., BlockCache],
        tmpfs_cache_dir: Path) -> None:
    """The limit bounds the disk the cache takes, blocks on their way in included
    (a thread samples the tmpfs's used bytes while random reads run)."""
    blk = 4096             # whole pages: the tmpfs counts exactly what the files hold
    keys = [pack(store, 20 + n, 4 * blk) for n in range(6)]
    limit = 3 * blk + 600
    cache = make_cache(store, limit, blk)
    worst = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal worst
        while not done.is_set():
            st = os.statvfs(tmpfs_cache_dir)
            worst = max(worst, (st.f_blocks - st.f_bfree) * st.f_frsize)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    rng = random.Random(7)
    try:
        for _ in range(300):
            key, data = rng.choice(keys)
            off = rng.randrange(len(data))
            length = rng.randrange(1, 3 * blk)
            assert cache.get_range(key, off, length) == data[off:off + length]
        settle(cache)
    finally:
        done.set()
        sampler.join()
    assert cache.stats()["bytes"] == disk_bytes(tmpfs_cache_dir) == 3 * blk
    assert worst <= limit, f"the cache dir held {worst} bytes, limit {limit}"


def test_a_block_being_read_is_not_evicted_under_its_reader(
        store: CountingStore, make_cache: Callable[..., BlockCache],
        tmpfs_cache_dir: Path) -> None:
    """Unlinking a block a reader has open would not free its space: the limit
    would be broken until the read ends.  The block stays, the newcomer goes
    uncached, and once the read is over the old block is evicted as usual."""
    blk = 4096
    (key_a, data_a), (key_b, data_b) = pack(store, 40, blk), pack(store, 41, blk)
    limit = blk + blk // 2
    cache = make_cache(store, limit, blk)
    assert cache.get_range(key_a, 0, 10) == data_a[:10]
    name_a = f"{key_a.replace('/', '_')}.0"
    inside, go_on = threading.Event(), threading.Event()
    pread = cache._pread

    def slow_pread(name: str, offset: int, length: int) -> bytes | None:
        if name == name_a:
            inside.set()
            assert go_on.wait(10)
        return pread(name, offset, length)

    cache._pread = slow_pread  # type: ignore[method-assign]
    reader = threading.Thread(target=lambda: cache.get_range(key_a, 5, 10), daemon=True)
    reader.start()
    assert inside.wait(10)
    assert cache.get_range(key_b, 0, blk) == data_b   # wants A's room while A is read
    assert block_files(tmpfs_cache_dir) == {name_a}
    st = os.statvfs(tmpfs_cache_dir)
    assert (st.f_blocks - st.f_bfree) * st.f_frsize <= limit
    go_on.set()
    reader.join(10)
    assert cache.get_range(key_b, 0, blk) == data_b   # now A goes and B stays
    assert block_files(tmpfs_cache_dir) == {f"{key_b.replace('/', '_')}.0"}
    assert cache.stats()["bytes"] == blk


def run_bounded(fn: Callable[[], None], seconds: float) -> None:
    """fn() in a thread, with the GIL switching as often as it can (so a race
    between a fetch and its caller shows); fails if fn does not return in time."""
    errors: list[BaseException] = []

    def body() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        t = threading.Thread(target=body, daemon=True)
        t.start()
        t.join(seconds)
    finally:
        sys.setswitchinterval(old)
    assert not t.is_alive(), "reads hung (a fetch finished before its caller registered it?)"
    if errors:
        raise errors[0]


def test_uncacheable_blocks_do_not_hang_readers(
        store: CountingStore, make_cache: Callable[..., BlockCache]) -> None:
    """With a limit below one block every fetch skips the cache; reads go on."""
    key, data = pack(store, 9, 100 * BLK)
    cache = make_cache(store, BLK - 1)
    rng = random.Random(1)

    def reads() -> None:
        for _ in range(3000):
            b = rng.randrange(100)
            assert cache.get_range(key, b * BLK, 10) == data[b * BLK:b * BLK + 10]

    run_bounded(reads, 15)


def test_failing_fetches_raise_and_do_not_hang_readers(
        store: CountingStore, make_cache: Callable[..., BlockCache]) -> None:
    """A pack the store does not have fails fast each time, and never hangs."""
    cache = make_cache(store, 100 * BLK)

    def reads() -> None:
        for i in range(3000):
            with pytest.raises(NoSuchObject):
                cache.get_range(f"packs/ee/{i:064x}", 0, 10)

    run_bounded(reads, 15)


def test_a_limit_below_one_block_keeps_nothing(
        store: CountingStore, make_cache: Callable[..., BlockCache], tmp_path: Path) -> None:
    key, data = pack(store, 3, 3 * BLK)
    cache = make_cache(store, BLK - 1)

    def reads() -> None:
        assert cache.get_range(key, 0, 3 * BLK) == data
        settle(cache)
        assert cache.get_range(key, 0, 3 * BLK) == data

    run_bounded(reads, 15)
    assert block_files(tmp_path / "cache") == set()
    assert cache.stats()["bytes"] == 0


def test_restart_keeps_the_blocks_and_their_lru_order(
        store: CountingStore, make_cache: Callable[..., BlockCache], tmp_path: Path) -> None:
    a, b, c, d = (pack(store, n, BLK) for n in range(10, 14))
    cache = make_cache(store, 3 * BLK)
    for key, data in (a, b, c):
        assert cache.get_range(key, 0, BLK) == data
        time.sleep(0.02)
    assert cache.get_range(a[0], 10, 10) == a[1][10:20]   # a is now the most recent
    cache.close()
    reads = len(store.reads)

    cache = make_cache(store, 3 * BLK)
    assert cache.stats()["bytes"] == 3 * BLK
    for key, data in (a, c):
        assert cache.get_range(key, 0, BLK) == data
    assert len(store.reads) == reads, "cached blocks were fetched again after a restart"
    assert cache.stats()["hits"] == 2 and cache.stats()["misses"] == 0
    cache.close()

    # order now (oldest first): b, a, c; a new block evicts b alone
    cache = make_cache(store, 3 * BLK)
    assert cache.get_range(d[0], 0, BLK) == d[1]
    names = block_files(tmp_path / "cache")
    assert names == {cache._name(k, 0) for k in (a[0], c[0], d[0])}

    # a smaller limit at the next start evicts the oldest down to it
    cache.close()
    cache = make_cache(store, 2 * BLK)
    assert block_files(tmp_path / "cache") == {cache._name(k, 0) for k in (c[0], d[0])}
    assert cache.stats()["bytes"] == 2 * BLK


def test_restart_removes_temp_files(store: CountingStore,
                                    make_cache: Callable[..., BlockCache],
                                    tmp_path: Path) -> None:
    (tmp_path / "cache" / ".tmp").mkdir(parents=True)
    (tmp_path / "cache" / ".tmp" / "half-written").write_bytes(b"x" * 500)
    cache = make_cache(store, 10 * BLK)
    assert list((tmp_path / "cache" / ".tmp").iterdir()) == []
    assert cache.stats()["bytes"] == 0


def test_sequential_reads_fetch_the_following_blocks_ahead(
        store: CountingStore, make_cache: Callable[..., BlockCache]) -> None:
    key, data = pack(store, 4, 12 * BLK)
    cache = make_cache(store, 100 * BLK)
    assert cache.get_range(key, 0, BLK) == data[:BLK]
    settle(cache)
    assert store.block_reads(key) == [0], "a first read must not read ahead"
    assert cache.get_range(key, BLK, BLK) == data[BLK:2 * BLK]
    settle(cache)
    assert store.block_reads(key) == list(range(2 + READ_AHEAD_BLOCKS))
    assert cache.stats()["misses"] == 2
    for block in range(2, 12):    # each step keeps the window ahead, up to the end
        assert cache.get_range(key, block * BLK, BLK) == data[block * BLK:(block + 1) * BLK]
        settle(cache)
        assert store.block_reads(key) == list(range(min(12, block + 1 + READ_AHEAD_BLOCKS)))
    assert cache.stats()["misses"] == 2, "read-ahead did not keep ahead of the reader"


def test_random_reads_do_not_read_ahead(
        store: CountingStore, make_cache: Callable[..., BlockCache]) -> None:
    key, data = pack(store, 5, 20 * BLK)
    cache = make_cache(store, 100 * BLK)
    for block in (10, 3, 17, 0, 8):
        assert cache.get_range(key, block * BLK + 5, 10) == data[block * BLK + 5:block * BLK + 15]
    settle(cache)
    assert store.block_reads(key) == [0, 3, 8, 10, 17]


def test_concurrent_misses_of_one_block_fetch_it_once(
        tmp_path: Path, make_cache: Callable[..., BlockCache]) -> None:
    class Slow(CountingStore):
        def get_range(self, key: str, offset: int, length: int) -> bytes:
            time.sleep(0.2)
            return super().get_range(key, offset, length)

    store = Slow(tmp_path / "store")
    key, data = pack(store, 6, BLK)
    cache = make_cache(store, 10 * BLK)
    out: list[bytes] = []
    threads = [threading.Thread(target=lambda: out.append(cache.get_range(key, 100, 200)))
               for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == [data[100:300]] * 5
    assert store.block_reads(key) == [0]


def test_delete_drops_the_cached_blocks(store: CountingStore,
                                        make_cache: Callable[..., BlockCache],
                                        tmp_path: Path) -> None:
    key, data = pack(store, 7, 2 * BLK)
    other, odata = pack(store, 8, BLK)
    cache = make_cache(store, 10 * BLK)
    assert cache.get_range(key, 0, 2 * BLK) == data
    assert cache.get_range(other, 0, BLK) == odata
    settle(cache)
    cache.delete(key)
    assert block_files(tmp_path / "cache") == {cache._name(other, 0)}
    assert cache.stats()["bytes"] == BLK


def test_a_block_file_removed_behind_the_caches_back_is_fetched_again(
        store: CountingStore, make_cache: Callable[..., BlockCache], tmp_path: Path) -> None:
    """Someone cleans the cache dir while the daemon runs: reads fetch again."""
    key, data = pack(store, 30, 3 * BLK)
    cache = make_cache(store, 100 * BLK)
    assert cache.get_range(key, 0, 10) == data[:10]
    settle(cache)
    name = cache._name(key, 0)
    (tmp_path / "cache" / name).unlink()
    out: list[bytes] = []
    t = threading.Thread(target=lambda: out.append(cache.get_range(key, 0, 10)), daemon=True)
    t.start()
    t.join(5)
    if t.is_alive():     # put the block back so the reader's thread can end
        (tmp_path / "cache" / name).write_bytes(data[:BLK])
        t.join(5)
        pytest.fail("a read of a block whose file is gone never returned")
    assert out == [data[:10]]
    assert store.block_reads(key).count(0) == 2


def test_prefetch_starts_fetches_and_returns_at_once(
        store: CountingStore, make_cache: Callable[..., BlockCache]) -> None:
    key, data = pack(store, 4, 6 * BLK)
    cache = make_cache(store, 100 * BLK)
    cache.size_hint = lambda k: len(data) if k == key else None
    cache.prefetch(key, 2 * BLK + 10, 2 * BLK)      # blocks 2, 3 and 4
    settle(cache)
    assert store.block_reads(key) == [2, 3, 4]
    assert cache.get_range(key, 2 * BLK, 3 * BLK) == data[2 * BLK:5 * BLK]
    assert cache.stats()["misses"] == 0
    # a pack whose size only the store knows is left alone: learning it takes a request
    other, _ = pack(store, 5, 3 * BLK)
    cache.prefetch(other, 0, BLK)
    settle(cache)
    assert store.block_reads(other) == []
