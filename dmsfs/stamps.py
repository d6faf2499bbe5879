"""Who and when, as records (versions, schemas, rejects) show them."""

from __future__ import annotations

import pwd
import time


def user_name(uid: int) -> str:
    """The login name of uid, or the number when it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def iso_time(ns: int) -> str:
    """UTC time with microseconds, e.g. 2026-11-26T02:23:53.244084Z."""
    sec, rest = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{rest // 1000:06d}Z"
