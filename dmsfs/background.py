"""Worker threads at a lower CPU priority, for work no caller is waiting on.

Compressing a full staging file into a pack is such work: the close() that
staged the chunks has returned, and the raw chunks are safe in the staging file.
While the FUSE loop, chunk cutting and schema validation keep the cores busy,
compression should take what they leave, as a niced process would, rather than
half of the machine; when they are idle it has every core.  Linux schedules
threads, and a thread may lower its own priority but not raise it back without
privilege: hence threads of their own rather than trio's shared worker threads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import trio

NICE = 19   # CFS gives such a thread 1.5% of a core another thread wants
T = TypeVar("T")


def _lower_priority() -> None:
    try:
        os.nice(NICE)   # the calling thread's nice value (Linux: per thread)
    except OSError:
        pass            # no harm: the work runs at normal priority


class BackgroundThreads:
    """A fixed pool of low-priority threads that trio tasks can await."""

    def __init__(self, workers: int, name: str) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=name,
                                        initializer=_lower_priority)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """fn(*args) in one of the threads; like trio.to_thread.run_sync, a
        cancelled caller still waits for the call to end."""
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        future = self._pool.submit(fn, *args)
        future.add_done_callback(lambda _: token.run_sync_soon(done.set))
        with trio.CancelScope(shield=True):
            await done.wait()
        return future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
