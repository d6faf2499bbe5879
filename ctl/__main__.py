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

    def adder(sub: Any) -> Callable[..., argparse.ArgumentParser]:
        def add(name: str, fn: Command, help: str, *examples: str) -> argparse.ArgumentParser:
            sp = sub.add_parser(name, help=help, description=help, epilog=_examples(examples),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
            sp.add_argument("--json", action="store_true", help="print JSON")
            sp.set_defaults(fn=fn)
            return sp
        return add

    def group(name: str, help: str, *examples: str) -> Callable[..., argparse.ArgumentParser]:
        """A command with subcommands of its own (dmsctl schema set ...)."""
        gp = sub.add_parser(name, help=help, description=help, epilog=_examples(examples)
                            + "\n\nEach subcommand takes --json to print JSON; "
                            f"dmsctl {name} SUBCOMMAND --help tells more.",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        return adder(gp.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND"))

    add = adder(sub)
    _store_commands(add)
    _version_commands(add)
    _schema_commands(add, group)
    return p


def _examples(examples: Sequence[str]) -> str:
    return "Example" + ("s" if len(examples) > 1 else "") + ":\n" + "\n".join(
        f"  {e}" for e in examples)


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
             "# what changed since the last snapshot",
             "dmsctl diff mydata@v1 mydata@v2 --schema",
             "dmsctl diff mydata@v1 mydata --rows --key id --limit 5 --json")
    sp.add_argument("a", metavar="A", type=commands.dataset_or_version, help="DS@VER or DS")
    sp.add_argument("b", metavar="B", type=commands.dataset_or_version, help="DS@VER or DS")
    sp.add_argument("--schema", action="store_true", help="the change of the dataset's schema "
                    "from A to B instead: properties added (+), removed (-), keywords "
                    "changed (~: type, required, enum, format, minimum, ...)")
    sp.add_argument("--rows", action="store_true", help="rows added (+), removed (-) and "
                    "changed (~) in each tabular file (CSV, JSONL, Parquet) instead")
    sp.add_argument("--key", metavar="COL[,COL]", help="with --rows: match rows by these "
                    "columns (default: by whole-row content, so a change is a removed row "
                    "and an added one)")
    sp.add_argument("--limit", metavar="N", type=_count_or_zero, help="with --rows: list at "
                    "most N rows of each kind per file (default 20; 0 for counts only; the "
                    "counts are exact)")
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


def _schema_commands(add: Callable[..., argparse.ArgumentParser],
                     group: Callable[..., Callable[..., argparse.ArgumentParser]]) -> None:
    glob_help = ("comma-separated file name patterns the schema applies to (repeatable; "
                 "default *.jsonl,*.ndjson,*.csv,*.parquet,*.json; a pattern with / "
                 "matches the path in the dataset)")
    sch = group("schema", "a dataset's schema (JSON Schema draft 2020-12 for one record): "
                "files matching its globs are validated at close and rename",
                "dmsctl schema set mydata schema.json --glob '*.csv,*.jsonl'",
                "dmsctl schema show mydata --version 1",
                "dmsctl schema history mydata --json")
    sp = sch("set", commands.schema_set, "register a new version of a dataset's schema; "
             "prints DS: schema version N (globs: ...).  Exit 1 if the schema is invalid, "
             "2 if the file cannot be read or is not JSON",
             "dmsctl schema set mydata schema.json",
             "dmsctl schema set mydata schema.json --glob '*.csv' --glob 'raw/*.jsonl'")
    sp.add_argument("dataset", metavar="DS", help="the dataset")
    sp.add_argument("file", metavar="SCHEMA.json", help="a JSON Schema for one record")
    sp.add_argument("--glob", action="append", metavar="GLOBS", help=glob_help)
    sp = sch("show", commands.schema_show, "print a dataset's schema (the current version, "
             "or --version N); --json prints the whole record (globs, time, user)",
             "dmsctl schema show mydata", "dmsctl schema show mydata --version 1 --json")
    sp.add_argument("dataset", metavar="DS", help="the dataset")
    sp.add_argument("--version", type=_count, metavar="N", help="that schema version")
    sp = sch("history", commands.schema_history, "list every version of a dataset's schema, "
             "oldest first: version, time, user, globs",
             "dmsctl schema history mydata", "dmsctl schema history mydata --json")
    sp.add_argument("dataset", metavar="DS", help="the dataset")

    ds = group("dataset", "datasets: the directories at the mount's top level",
               "dmsctl dataset create mydata --schema schema.json --glob '*.csv'")
    sp = ds("create", commands.dataset_create, "create a dataset (as mkdir MOUNT/DS), with "
            "a schema if --schema is given",
            "dmsctl dataset create mydata",
            "dmsctl dataset create mydata --schema schema.json --glob '*.jsonl,*.csv'")
    sp.add_argument("dataset", metavar="DS",
                    help="the name: [A-Za-z0-9][A-Za-z0-9._-]{0,127}")
    sp.add_argument("--schema", metavar="FILE", help="a JSON Schema for one record")
    sp.add_argument("--glob", action="append", metavar="GLOBS", help=glob_help)

    sp = add("rejects", commands.rejects, "recent writes the schema refused, newest first: "
             "time, user, path, first failing record (line for JSONL, data row for CSV, "
             "row for Parquet, array index + 1 for JSON), JSON pointer, message, "
             "failed/total records",
             "dmsctl rejects mydata", "dmsctl rejects mydata --json | jq '.[0].message'")
    sp.add_argument("dataset", metavar="DS", help="the dataset")


def _count(text: str) -> int:
    """argparse type for a positive integer."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return n


def _count_or_zero(text: str) -> int:
    """argparse type for a non-negative integer."""
    return 0 if text.strip() == "0" else _count(text)


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
