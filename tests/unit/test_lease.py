"""The writer's lease (dmsfs/lease.py) over a LocalStore."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from dmsfs.errors import LeaseHeld
from dmsfs.lease import LEASE_KEY, Holder, Lease, keep
from dmsfs.stamps import iso_time
from dmsfs.store.local import LocalStore


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def stored(store: LocalStore) -> Holder:
    return Holder.decode(store.get(LEASE_KEY))


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def plant(store: LocalStore, host: str, pid: int, expires_in: float) -> Holder:
    """A lease written by some other daemon."""
    h = Holder(host, pid, time.time() - 100, time.time() + expires_in, "other-token")
    store.put(LEASE_KEY, h.encode())
    return h


def test_acquire_names_this_process(store: LocalStore) -> None:
    before = time.time()
    lease = Lease(store, 30)
    lease.acquire()
    assert lease.held()
    h = stored(store)
    assert (h.host, h.pid) == (socket.gethostname(), os.getpid())
    assert before - 1 <= h.since <= time.time()
    assert before + 29 <= h.expires <= time.time() + 31
    assert set(json.loads(store.get(LEASE_KEY))) == {"host", "pid", "since", "expires", "token",
                                                     "generation", "released"}
    assert (h.generation, h.released) == (1, False)
    assert (lease.previous, lease.generation) == (0, 1)


def test_second_writer_is_refused_with_holder_named(store: LocalStore) -> None:
    a = Lease(store, 30)
    a.acquire()
    h = stored(store)
    b = Lease(store, 30)
    with pytest.raises(LeaseHeld) as e:
        b.acquire()
    msg = str(e.value)
    assert f"pid {os.getpid()} on {socket.gethostname()} since " \
           f"{iso_time(int(h.since * 1e9))}" in msg, msg
    m = re.search(r"expires in (\d+) s", msg)
    assert m and 28 <= int(m.group(1)) <= 30, msg
    assert e.value.exit_code == 1
    assert not b.held()
    assert stored(store) == h, "a refused writer changed the lease"
    assert a.held()


def test_renew_extends_the_lease(store: LocalStore) -> None:
    lease = Lease(store, 1.0)
    lease.acquire()
    first = stored(store)
    time.sleep(0.6)
    assert lease.renew() is True
    second = stored(store)
    assert second.expires > first.expires + 0.5
    assert (second.since, second.token) == (first.since, first.token)
    time.sleep(0.6)
    assert lease.held(), "renewal did not extend how long the lease is ours"
    # another daemon cannot take it: it was renewed
    with pytest.raises(LeaseHeld):
        Lease(store, 1.0).acquire()


def test_held_ends_when_renewal_stops(store: LocalStore) -> None:
    lease = Lease(store, 0.5)
    lease.acquire()
    assert lease.held()
    time.sleep(0.6)
    assert not lease.held()


def test_takeover_after_expiry(store: LocalStore) -> None:
    a = Lease(store, 0.5)
    a.acquire()
    b = Lease(store, 30)
    with pytest.raises(LeaseHeld):
        b.acquire()
    time.sleep(0.7)
    b.acquire()
    assert b.held()
    assert stored(store).token == b._token
    assert a.renew() is False, "the old holder still thinks it holds the lease"
    assert not a.held()
    # the old holder's clean stop leaves the new holder's lease alone
    a.release()
    assert stored(store).token == b._token


def test_takeover_at_once_when_the_holder_process_is_gone(store: LocalStore) -> None:
    plant(store, socket.gethostname(), dead_pid(), expires_in=3600)
    lease = Lease(store, 30)
    lease.acquire()
    assert lease.held() and stored(store).pid == os.getpid()


def test_no_takeover_of_a_live_process_or_another_host(store: LocalStore) -> None:
    plant(store, socket.gethostname(), os.getppid(), expires_in=3600)
    with pytest.raises(LeaseHeld) as e:
        Lease(store, 30).acquire()
    assert f"pid {os.getppid()} on {socket.gethostname()}" in str(e.value)
    # the same pid number on another machine says nothing about that machine
    plant(store, "some-other-host.example", dead_pid(), expires_in=3600)
    with pytest.raises(LeaseHeld) as e:
        Lease(store, 30).acquire()
    assert "on some-other-host.example since" in str(e.value)


def test_release_frees_only_our_own_lease_and_keeps_the_count(store: LocalStore) -> None:
    lease = Lease(store, 30)
    lease.acquire()
    lease.release()
    assert not lease.held()
    h = stored(store)
    assert h.released and h.generation == 1 and h.token == lease._token
    again = Lease(store, 30)
    again.acquire()                   # free again at once
    assert (again.previous, again.generation) == (1, 2)
    assert stored(store).generation == 2 and not stored(store).released
    # a lease someone else holds now stays
    other = plant(store, "elsewhere", 1, expires_in=3600)
    lease.release()
    assert stored(store) == other


def test_each_taking_counts_one_generation_up(store: LocalStore) -> None:
    a = Lease(store, 0.3)
    a.acquire()
    time.sleep(0.4)
    b = Lease(store, 30)
    b.acquire()                       # took the expired lease over
    assert (b.previous, b.generation) == (1, 2)
    assert a.renew() is False and a.lost
    b.release()
    a2 = Lease(store, 30)
    a2.acquire()
    assert (a2.previous, a2.generation) == (2, 3)


def test_a_lease_from_an_older_daemon_without_a_count(store: LocalStore) -> None:
    store.put(LEASE_KEY, json.dumps({"host": "elsewhere", "pid": 1, "since": 0.0,
                                     "expires": 1.0, "token": "old"}).encode())
    lease = Lease(store, 30)
    lease.acquire()
    assert (lease.previous, lease.generation) == (0, 1)


def test_an_acquire_whose_answer_was_lost_finds_its_own_lease(store: LocalStore) -> None:
    lease = Lease(store, 30)
    lease.generation = 4
    store.put(LEASE_KEY, lease._doc())        # our write landed; the answer did not
    lease.acquire()
    assert lease.held() and (lease.previous, lease.generation) == (3, 4)


def test_renew_fails_once_another_daemon_wrote_the_lease(store: LocalStore) -> None:
    lease = Lease(store, 30)
    lease.acquire()
    plant(store, "elsewhere", 1, expires_in=3600)
    assert lease.renew() is False
    assert not lease.held()


async def test_keep_renews_and_reports_a_lost_lease(store: LocalStore) -> None:
    lease = Lease(store, 0.4)
    lease.acquire()
    lost: list[float] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep, lease, lambda: lost.append(time.monotonic()))
        await trio.sleep(1.0)       # 2.5 timeouts: only renewals keep it ours
        assert lease.held() and not lost
        with pytest.raises(LeaseHeld):
            Lease(store, 0.4).acquire()
        taken = time.monotonic()
        plant(store, "elsewhere", 1, expires_in=3600)
        with trio.fail_after(2):
            while not lost:
                await trio.sleep(0.01)
    assert lost[0] - taken < 0.4
    assert not lease.held()
