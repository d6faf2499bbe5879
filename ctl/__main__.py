"""dmsctl: administer a running dmsfs daemon through its control API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from dmsfs.client import Client, discover
from dmsfs.errors import DmsfsError

from . import commands

EPILOG = """\
Finding the daemon, first match wins: --api or DMSFS_API; --state or
DMSFS_STATE (its api.sock); --mount or DMSFS_MOUNT, else the dmsfs mount that
holds the current directory; else the only dmsfs mount; else the only state
dir under /var/lib/dmsfs (root) or $XDG_STATE_HOME/dmsfs.  A daemon's socket is
STATE/api.sock; dmsfsd prints it when it mounts.

Versions (VER): v<N>, latest, a tag, a version id or a unique prefix of one
(8+ characters).

Exit status: 0 ok, 1 the command failed or found damage,
2 usage error or daemon unreachable."""

Command = Callable[[Client, argparse.Namespace], int]


class _HelpWithDaemon(argparse.Action):
    """-h/--help that also says which daemon this invocation would talk to (found
    only when help is asked for: discovery may look at mounts)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show this help message and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        try:
            address = discover(namespace.api, namespace.state, namespace.mount)
            found = f"this invocation would use {address}"
        except DmsfsError as e:
            found = f"none found now ({e})"
        parser.epilog = f"{EPILOG}\n\nDaemon: {found}."
        parser.print_help()
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dmsctl", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                add_help=False)
    p.add_argument("-h", "--help", action=_HelpWithDaemon)
    p.add_argument("--api", help="unix:PATH or http://HOST:PORT of the control API")
    p.add_argument("--state", help="the daemon's state dir")
    p.add_argument("--mount", help="a dmsfs mountpoint")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Command, help: str, *examples: str) -> argparse.ArgumentParser:
        epilog = "Example" + ("s" if len(examples) > 1 else "") + ":\n" + "\n".join(
            f"  {e}" for e in examples)
        sp = sub.add_parser(name, help=help, description=help, epilog=epilog,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.add_argument("--json", action="store_true", help="print JSON")
        sp.set_defaults(fn=fn)
        return sp

    _store_commands(add)
    _version_commands(add)
    return p


def _store_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    add("stats", commands.stats, "logical and stored bytes, dedup ratio, chunks, packs, "
        "upload backlog, cache", "dmsctl stats --json")
    sp = add("fsck", commands.fsck, "verify the store against the index; exit 1 on damage",
             "dmsctl fsck", "dmsctl fsck --read-data   # also check every chunk's blake3\n\n"
             "Exit status: 0 no damage, 1 damage found (each one named).")
    sp.add_argument("--read-data", action="store_true", help="read and verify every chunk")
    add("reindex", commands.reindex, "rebuild the chunk index from the packs in the store",
        "dmsctl reindex")
    add("flush", commands.flush, "seal staged chunks into packs in the store now",
        "dmsctl flush")
    add("whoami", commands.whoami, "who the daemon sees calling (uid, gid, pid from the "
        "socket's peer credentials)", "dmsctl whoami")


def _version_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    sp = add("snapshot", commands.snapshot, "snapshot a dataset's live tree; prints "
             "v<N> <version-id>", "dmsctl snapshot mydata -m 'cleaned labels' --tag gold")
    sp.add_argument("dataset", metavar="DS", help="the dataset")
    sp.add_argument("-m", "--message", default="", help="what this version is")
    sp.add_argument("--tag", help="also tag the new version")
    sp = add("versions", commands.versions, "list a dataset's versions, newest first",
             "dmsctl versions mydata", "dmsctl versions mydata --json | jq '.[0].id'")
    sp.add_argument("dataset", metavar="DS", help="the dataset")
    sp = add("tag", commands.tag, "point a tag at a version (moves it if it exists); the "
             "version is then also MOUNT/DS/@TAG", "dmsctl tag mydata@v3 gold")
    sp.add_argument("version", metavar="DS@VER", type=commands.version_of,
                    help="the version to tag")
    sp.add_argument("tag", metavar="TAG", help="letters, digits, . _ -, starting with a letter")
    sp = add("untag", commands.untag, "remove a tag (the version stays)",
             "dmsctl untag mydata gold")
    sp.add_argument("dataset", metavar="DS", help="the dataset")
    sp.add_argument("tag", metavar="TAG", help="the tag to remove")
    sp = add("diff", commands.diff, "files added (+), removed (-), modified (M) and renamed "
             "(R) from A to B; a plain DS is its live tree",
             "dmsctl diff mydata@v1 mydata@v2", "dmsctl diff mydata@latest mydata   "
             "# what changed since the last snapshot")
    sp.add_argument("a", metavar="A", type=commands.dataset_or_version, help="DS@VER or DS")
    sp.add_argument("b", metavar="B", type=commands.dataset_or_version, help="DS@VER or DS")
    sp = add("export", commands.export, "write a version as OUT.tar, OUT.tar.zst, OUT.zip or "
             "into the new or empty directory OUT/",
             "dmsctl export mydata@v3 mydata-v3.tar.zst", "dmsctl export mydata@gold ./gold/")
    sp.add_argument("version", metavar="DS@VER", type=commands.version_of,
                    help="the version to export")
    sp.add_argument("out", metavar="OUT", help="ends in .tar, .tar.zst, .zip or /; a progress "
                    "bar shows on stderr when it is a terminal")
    sp = add("restore", commands.restore, "make the live tree (or one path) equal to a "
             "version again: a new live state, every version is kept",
             "dmsctl restore mydata@v3", "dmsctl restore mydata@v3 --path labels/train.csv")
    sp.add_argument("version", metavar="DS@VER", type=commands.version_of,
                    help="the version to restore")
    sp.add_argument("--path", help="one file or directory, relative to the dataset root")


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
