"""BackgroundThreads: low-priority worker threads that trio tasks await."""

from __future__ import annotations

import os
import time

import pytest
import trio

from dmsfs.background import NICE, BackgroundThreads


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, 0)   # the calling thread's (Linux)


async def test_jobs_run_at_lower_priority_and_return_what_they_return() -> None:
    pool = BackgroundThreads(2, "test")
    try:
        before = _nice()
        assert await pool.run(_nice) == min(before + NICE, 19)
        assert _nice() == before            # the caller's thread keeps its priority
        assert await pool.run(pow, 2, 10) == 1024
        with pytest.raises(ZeroDivisionError):
            await pool.run(divmod, 1, 0)
    finally:
        pool.close()


async def test_a_cancelled_caller_waits_for_its_job() -> None:
    pool = BackgroundThreads(1, "test")
    done: list[bool] = []

    def job() -> None:
        time.sleep(0.3)
        done.append(True)

    try:
        t0 = time.monotonic()
        with trio.move_on_after(0.05):
            await pool.run(job)
        assert done == [True] and time.monotonic() - t0 >= 0.3
    finally:
        pool.close()
