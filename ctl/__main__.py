"""dmsctl: administer a running dmsfs daemon through its control API."""

from __future__ import annotations

import argparse
import sys

from dmsfs.client import Client
from dmsfs.errors import DmsfsError

from . import commands

EPILOG = """\
Finding the daemon, first match wins: --api or DMSFS_API; --state or
DMSFS_STATE (its api.sock); --mount or DMSFS_MOUNT, else the dmsfs mount that
holds the current directory; else the only dmsfs mount; else the only state
dir under /var/lib/dmsfs (root) or $XDG_STATE_HOME/dmsfs.  A daemon's socket is
STATE/api.sock; dmsfsd prints it when it mounts.

Exit status: 0 ok, 1 the command failed or found damage,
2 usage error or daemon unreachable."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dmsctl", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--api", help="unix:PATH or http://HOST:PORT of the control API")
    p.add_argument("--state", help="the daemon's state dir")
    p.add_argument("--mount", help="a dmsfs mountpoint")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: object, help: str, epilog: str = "") -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help, epilog=epilog,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.add_argument("--json", action="store_true", help="print JSON")
        sp.set_defaults(fn=fn)
        return sp

    add("stats", commands.stats, "logical and stored bytes, dedup ratio, chunks, packs, "
        "upload backlog, cache", "Example:\n  dmsctl stats --json")
    sp = add("fsck", commands.fsck, "verify the store against the index; exit 1 on damage",
             "Examples:\n  dmsctl fsck\n  dmsctl fsck --read-data   # also check every "
             "chunk's blake3\n\nExit status: 0 no damage, 1 damage found (each one named).")
    sp.add_argument("--read-data", action="store_true", help="read and verify every chunk")
    add("reindex", commands.reindex, "rebuild the chunk index from the packs in the store")
    add("flush", commands.flush, "seal staged chunks into packs in the store now")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        client = Client.discover(args.api, args.state, args.mount)
        return int(args.fn(client, args))
    except DmsfsError as e:
        print(f"dmsctl: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
