"""The writer's lease: one writing daemon per store.

The lease is the store object ``lease``, created with put-if-absent and renewed
by compare-and-swap (S3 conditional writes: If-None-Match / If-Match), so two
daemons can never both believe they hold it.  It names its holder (host, pid,
since) for the refusal message.  A holder that stops renewing loses it after
the timeout; one whose process is gone from this very host loses it at once,
so a daemon restarted after a crash does not wait.

Each taking of the lease counts one generation up, and a clean stop leaves the
object in place, marked released, so the count survives: a daemon that finds
a generation other than the one it last held knows another writer changed the
store since (see statedir.py).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass

import trio

from .errors import DmsfsError, LeaseHeld, NoSuchObject
from .stamps import iso_time
from .store.base import ObjectStore

log = logging.getLogger(__name__)

LEASE_KEY = "lease"


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    since: float
    expires: float
    token: str
    generation: int = 0
    released: bool = False

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Holder:
        doc = json.loads(raw)
        return cls(**{k: v for k, v in doc.items() if k in cls.__dataclass_fields__})

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} since {iso_time(int(self.since * 1e9))}"


def _gone(holder: Holder) -> bool:
    """The holder ran on this host and its process no longer exists."""
    if holder.host != socket.gethostname() or holder.pid == os.getpid():
        return False
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Lease:
    """Acquire, renew and release the store's writer lease."""

    def __init__(self, store: ObjectStore, timeout: float) -> None:
        self.store = store
        self.timeout = timeout
        self._token = uuid.uuid4().hex
        self._since = time.time()
        self._tag: str | None = None
        self._valid_until = 0.0      # monotonic: past it we may have lost the lease
        self.generation = 0          # ours, once acquired
        self.previous = 0            # the one found in the store before ours
        self.lost = False            # another daemon took it over from us

    def _doc(self, released: bool = False) -> bytes:
        return Holder(socket.gethostname(), os.getpid(), self._since,
                      0.0 if released else time.time() + self.timeout, self._token,
                      self.generation, released).encode()

    def acquire(self) -> None:
        """Take the lease or raise LeaseHeld naming who has it (blocking)."""
        started = time.monotonic()
        while not self._try_acquire():
            pass     # the object changed between our read and our write: look again
        self._valid_until = started + self.timeout

    def _try_acquire(self) -> bool:
        self.previous, self.generation = 0, 1
        if self.store.put_if_absent(LEASE_KEY, self._doc()):
            _, self._tag = self.store.get_tagged(LEASE_KEY)
            return True
        try:
            raw, tag = self.store.get_tagged(LEASE_KEY)
        except NoSuchObject:
            return False
        holder = Holder.decode(raw)
        if holder.token == self._token:
            # our own write landed though its answer was lost (a retried request)
            self.previous, self.generation, self._tag = holder.generation - 1, \
                holder.generation, tag
            return True
        if not holder.released and time.time() < holder.expires and not _gone(holder):
            left = holder.expires - time.time()
            raise LeaseHeld(f"another writer holds this store: {holder.describe()} "
                            f"(lease expires in {left:.0f} s unless renewed); "
                            "mount it with --read-only, or stop that daemon")
        if not holder.released:
            log.warning("taking over the writer lease of %s (%s)", holder.describe(),
                        "process gone" if _gone(holder) else "expired")
        self.previous, self.generation = holder.generation, holder.generation + 1
        self._tag = self.store.put_if_match(LEASE_KEY, self._doc(), tag)
        return self._tag is not None

    def renew(self) -> bool:
        """Extend the lease; False if another daemon took it (blocking; store errors
        propagate, and the lease stays ours until it would expire)."""
        started = time.monotonic()
        assert self._tag is not None
        tag = self.store.put_if_match(LEASE_KEY, self._doc(), self._tag)
        if tag is None:
            self._valid_until = 0.0
            self.lost = True
            return False
        self._tag = tag
        self._valid_until = started + self.timeout
        return True

    def held(self) -> bool:
        """Whether the lease is surely still ours (checked before publishing)."""
        return time.monotonic() < self._valid_until

    def release(self) -> None:
        """Give the lease up at a clean stop, if it is still ours; the object stays,
        marked released, to keep the generation count."""
        try:
            if self._tag is not None and not self.lost:
                self.store.put_if_match(LEASE_KEY, self._doc(released=True), self._tag)
        except Exception as e:  # noqa: BLE001 -- it expires by itself anyway
            log.warning("could not release the writer lease: %s", e)
        self._valid_until = 0.0


async def keep(lease: Lease, on_lost: Callable[[], None]) -> None:
    """Renew the lease a few times per timeout, for ever; on_lost() if another
    daemon took it over (this one was stopped or cut off for too long)."""
    while True:
        await trio.sleep(lease.timeout / 4)
        try:
            ok = await trio.to_thread.run_sync(lease.renew)
        except DmsfsError as e:
            log.warning("cannot renew the writer lease (store unreachable?): %s", e)
            continue
        if not ok:
            log.error("another daemon took the writer lease over; this one stops writing")
            on_lost()
            return
