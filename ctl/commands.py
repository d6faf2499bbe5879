"""One function per dmsctl subcommand: call the client once, render the result."""

from __future__ import annotations

import argparse
import grp
import json
import pwd
from typing import Any

from dmsfs.client import Client
from dmsfs.errors import DmsfsError, UsageError
from dmsfs.sizes import format_size

from .export import output_kind, progress, write


def _emit(args: argparse.Namespace, doc: Any, text: str) -> None:
    print(json.dumps(doc, indent=2) if args.json else text)


def _cache_line(name: str, c: dict[str, int]) -> str:
    return (f"{name:<15}{format_size(c['bytes'])} of {format_size(c['max_bytes'])}, "
            f"{c['hits']:,} hits, {c['misses']:,} misses")


def stats(client: Client, args: argparse.Namespace) -> int:
    s = client.stats()
    b, cache = s["backlog"], s["cache"]
    ratio = f"{s['dedup_ratio']:.2f}" if s["dedup_ratio"] else "-"
    _emit(args, s, "\n".join([
        f"store          {s['store']}",
        f"logical bytes  {s['logical_bytes']:>16,}  ({format_size(s['logical_bytes'])}, "
        f"live trees and versions)",
        f"live bytes     {s['live_bytes']:>16,}  ({format_size(s['live_bytes'])})",
        f"versions       {s['versions']:>16,}",
        f"stored bytes   {s['stored_bytes']:>16,}  ({format_size(s['stored_bytes'])})",
        f"dedup ratio    {ratio:>16}",
        f"chunks         {s['chunks']:>16,}",
        f"packs          {s['packs']:>16,}",
        f"upload backlog {b['objects']:>16,} objects, {format_size(b['bytes'])}"
        + (f", oldest {b['oldest_age']:.0f} s" if b["objects"] else ""),
        _cache_line("memory cache", cache),
        *([_cache_line("disk cache", s["disk_cache"])] if s["disk_cache"] else []),
    ]))
    return 0


def fsck(client: Client, args: argparse.Namespace) -> int:
    r = client.fsck(read_data=args.read_data)
    c = r["checked"]
    lines = [f"damage: {p}" for p in r["problems"]]
    lines += [f"note: pack {k} is in the store but not in the index (dmsctl reindex adopts it)"
              for k in r["unindexed_packs"]]
    lines.append(f"checked {c['packs']} packs, {c['chunks']} chunks, {c['files']} files, "
                 f"{c['versions']} versions"
                 + (" (all data read)" if c["read_data"] else "")
                 + (f": {len(r['problems'])} problems" if r["problems"] else ": no damage"))
    _emit(args, r, "\n".join(lines))
    return 1 if r["problems"] else 0


def reindex(client: Client, args: argparse.Namespace) -> int:
    r = client.reindex()
    _emit(args, r, f"rebuilt the chunk index: {r['packs']} packs, {r['chunks']} chunks"
          + (f", {r['damaged_packs']} unreadable packs skipped" if r["damaged_packs"] else "")
          + (f"; {r['new_versions']} versions indexed from the store"
             if r.get("new_versions") else ""))
    return 1 if r["damaged_packs"] else 0


def flush(client: Client, args: argparse.Namespace) -> int:
    r = client.flush()
    _emit(args, r, f"staged data sealed; backlog {r['backlog']['objects']} objects")
    return 0


def whoami(client: Client, args: argparse.Namespace) -> int:
    w = client.whoami()
    _emit(args, w, f"uid {w['uid']} ({_user(w['uid'])}), gid {w['gid']} ({_group(w['gid'])}), "
          f"pid {w['pid']}")
    return 0


# ------------------------------------------------------------------ versions
def snapshot(client: Client, args: argparse.Namespace) -> int:
    r = client.snapshot(args.dataset, args.message, args.tag)
    _emit(args, r, f"v{r['number']} {r['id']}")
    return 0


def versions(client: Client, args: argparse.Namespace) -> int:
    records = client.versions(args.dataset)
    rows = [[f"v{r['number']}", r["id"], r["time"][:19] + "Z", r["user"],
             " ".join(r["message"].split()), ",".join(r["tags"]), f"{r['files']:,}",
             format_size(r["bytes"])] for r in records]
    text = (_table(["N", "ID", "TIME", "USER", "MESSAGE", "TAGS", "FILES", "BYTES"], rows,
                   right={6, 7})
            if rows else f"{args.dataset} has no versions yet (dmsctl snapshot {args.dataset})")
    _emit(args, records, text)
    return 0


def tag(client: Client, args: argparse.Namespace) -> int:
    dataset, version = args.version
    r = client.tag(dataset, version, args.tag)
    _emit(args, r, f"{dataset}@{args.tag} is v{r['number']} {r['id']}")
    return 0


def untag(client: Client, args: argparse.Namespace) -> int:
    client.untag(args.dataset, args.tag)
    _emit(args, {"dataset": args.dataset, "tag": args.tag},
          f"tag {args.tag} of {args.dataset} removed (its version stays)")
    return 0


def diff(client: Client, args: argparse.Namespace) -> int:
    if not args.rows and (args.key is not None or args.limit is not None):
        raise UsageError("--key and --limit go with --rows")
    d = client.diff(args.a, args.b, schema=args.schema, rows=args.rows, key=args.key,
                    limit=args.limit)
    parts = []
    for wanted, key, render in ((args.schema, "schema", _schema_diff_text),
                                (args.rows, "rows", _rows_diff_text)):
        if not wanted:
            continue
        if not isinstance(d.get(key), dict):
            raise DmsfsError(f"the daemon did not answer diff --{key} (is it older than "
                             "this dmsctl?)")
        parts.append(render(d[key]))
    _emit(args, d, "\n\n".join(parts) if parts else _diff_text(d))
    return 0


def _diff_text(d: dict[str, Any]) -> str:
    """One line per change, ordered by path, then a summary line."""
    changes = [(c["path"], f"+ {_q(c['path'])} ({format_size(c['size'])})") for c in d["added"]]
    changes += [(c["path"], f"- {_q(c['path'])} ({format_size(c['size'])})")
                for c in d["removed"]]
    changes += [(c["path"], f"M {_q(c['path'])} ({format_size(c['old_size'])} -> "
                 f"{format_size(c['new_size'])}{_besides_content(c)})") for c in d["modified"]]
    changes += [(c["to"], f"R {_q(c['from'])} -> {_q(c['to'])}") for c in d["renamed"]]
    counts = ", ".join(f"{len(d[k])} {k}" for k in ("added", "removed", "modified", "renamed"))
    return "\n".join([*(line for _, line in sorted(changes)), f"{d['a']} -> {d['b']}: {counts}"])


def _schema_diff_text(s: dict[str, Any]) -> str:
    """+ added, - removed, ~ changed keyword at a pointer into the schema; a summary."""
    def version(n: int | None) -> str:
        return "no schema" if n is None else f"schema v{n}"

    def j(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False, sort_keys=True)

    def at(pointer: str) -> str:
        return pointer if pointer not in ("", "/") else "(root)"

    lines = [f"+ {at(c['pointer'])} {j(c['schema'])}" for c in s["added"]]
    lines += [f"- {at(c['pointer'])} {j(c['schema'])}" for c in s["removed"]]
    lines += [f"~ {at(c['pointer'])} {c['what']}: {j(c['old'])} -> {j(c['new'])}"
              for c in s["changed"]]
    counts = ", ".join(f"{len(s[k])} {k}" for k in ("added", "removed", "changed"))
    return "\n".join([*lines, f"{version(s['a_version'])} -> {version(s['b_version'])}: "
                      f"{counts}"])


def _rows_diff_text(r: dict[str, Any]) -> str:
    """Per tabular file: its counts, then its rows (+ added, - removed, ~ changed)."""
    def j(value: Any) -> str:   # columns in the file's order
        return json.dumps(value, ensure_ascii=False)

    out = []
    for f in r["files"]:
        out.append(f"{_q(f['path'])} ({f['format']}): {f['added']} added, {f['removed']} "
                   f"removed, {f['changed']} changed")
        out += [f"  + {j(row)}" for row in f["added_rows"]]
        out += [f"  - {j(row)}" for row in f["removed_rows"]]
        for c in f["changed_rows"]:
            what = "; ".join(f"{col}: {j(c['old'].get(col))} -> {j(c['new'].get(col))}"
                             for col in c["columns"])
            out.append(f"  ~ {j(c['key'])}: {what}")
        shown = len(f["added_rows"]) + len(f["removed_rows"]) + len(f["changed_rows"])
        total = f["added"] + f["removed"] + f["changed"]
        if shown < total:
            out.append(f"  ... {total - shown} more rows not listed (--limit)")
    key = r.get("key")
    differ = sum(1 for f in r["files"] if f["added"] or f["removed"] or f["changed"])
    out.append(f"{len(r['files'])} tabular files compared, {differ} with row changes; rows "
               "matched " + (f"by key {', '.join(key)}" if key else "by whole-row content"))
    return "\n".join(out)


def _besides_content(change: dict[str, Any]) -> str:
    """"; mode, owner" when more than the bytes changed (sizes alone would not show it)."""
    what = change.get("what", ["content"])
    return "" if what == ["content"] else "; " + ", ".join(what)


def export(client: Client, args: argparse.Namespace) -> int:
    dataset, version = args.version
    kind = output_kind(args.out)  # a bad OUT is a usage error before any transfer
    total, pieces = client.export_stream(dataset, version)
    write(progress(pieces, total, f"{dataset}@{version}"), args.out, kind)
    _emit(args, {"dataset": dataset, "version": version, "out": args.out, "bytes": total},
          f"exported {dataset}@{version} to {args.out} ({format_size(total)} of files)")
    return 0


def restore(client: Client, args: argparse.Namespace) -> int:
    dataset, version = args.version
    r = client.restore(dataset, version, args.path)
    where = f"{dataset}/{r['path']}" if r["path"] else dataset
    v = r["version"]
    _emit(args, r, f"{where} restored to v{v['number']} {v['id']}: {r['added']} added, "
          f"{r['removed']} removed, {r['changed']} changed")
    return 0


# ------------------------------------------------------------------ datasets and schemas
def _schema_file(path: str) -> Any:
    """The JSON in a schema file; unreadable or not JSON is a usage error (exit 2)."""
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise UsageError(f"{path} is not JSON: {e}") from None


def _globs(values: list[str] | None) -> list[str] | None:
    """--glob 'a,b' (repeatable) as a list; None for the daemon's default."""
    if not values:
        return None
    globs = [g.strip() for v in values for g in v.split(",") if g.strip()]
    if not globs:
        raise UsageError("--glob needs at least one pattern")
    return globs


def _schema_line(dataset: str, v: dict[str, Any]) -> str:
    return f"{dataset}: schema version {v['version']} (globs: {', '.join(v['globs'])})"


def schema_set(client: Client, args: argparse.Namespace) -> int:
    schema = _schema_file(args.file)
    v = client.set_schema(args.dataset, schema, _globs(args.glob))
    _emit(args, v, _schema_line(args.dataset, v))
    return 0


def schema_show(client: Client, args: argparse.Namespace) -> int:
    v = client.schema(args.dataset, args.version)
    _emit(args, v, json.dumps(v["schema"], indent=2, ensure_ascii=False))
    return 0


def schema_history(client: Client, args: argparse.Namespace) -> int:
    records = client.schemas(args.dataset)
    rows = [[str(v["version"]), v["time"][:19] + "Z", v["user"], ", ".join(v["globs"])]
            for v in records]
    text = (_table(["VERSION", "TIME", "USER", "GLOBS"], rows, right={0}) if rows else
            f"{args.dataset} has no schema (dmsctl schema set {args.dataset} SCHEMA.json)")
    _emit(args, records, text)
    return 0


def dataset_create(client: Client, args: argparse.Namespace) -> int:
    if args.glob and args.schema is None:
        raise UsageError("--glob goes with --schema")
    schema = _schema_file(args.schema) if args.schema is not None else None
    r = client.create_dataset(args.dataset, schema, _globs(args.glob))
    text = f"{args.dataset}: dataset created"
    if r.get("schema"):
        text += f"; {_schema_line(args.dataset, r['schema']).split(': ', 1)[1]}"
    _emit(args, r, text)
    return 0


def rejects(client: Client, args: argparse.Namespace) -> int:
    records = client.rejects(args.dataset)
    rows = [[r["time"][:19] + "Z", r["user"], _q(r["path"]),
             "-" if r["record"] is None else str(r["record"]), r["pointer"] or "-",
             " ".join(r["message"].split()), f"{r['failed_records']}/{r['records']}"]
            for r in records]
    text = (_table(["TIME", "USER", "PATH", "RECORD", "POINTER", "MESSAGE", "FAILED"], rows,
                   right={3, 6})
            if rows else f"{args.dataset} has no rejected writes")
    _emit(args, records, text)
    return 0


# ------------------------------------------------------------------ argument types
def version_of(text: str) -> tuple[str, str]:
    """argparse type for DATASET@VERSION."""
    dataset, at, version = text.partition("@")
    if not (dataset and at and version):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not DATASET@VERSION (e.g. mydata@v3, mydata@latest, mydata@TAG)")
    return dataset, version


def dataset_or_version(text: str) -> str:
    """argparse type for DATASET (its live tree) or DATASET@VERSION."""
    if "@" in text:
        version_of(text)
    elif not text:
        raise argparse.ArgumentTypeError("empty dataset name")
    return text


# ------------------------------------------------------------------ rendering
def _table(header: list[str], rows: list[list[str]], right: set[int]) -> str:
    """Columns padded to their widest cell; those in `right` right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                  for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
        for row in [header, *rows])


def _q(path: str) -> str:
    """A path as is, or JSON-quoted if it holds characters that would garble the line."""
    return path if path.isprintable() else json.dumps(path, ensure_ascii=False)


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "unknown user"


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return "unknown group"
