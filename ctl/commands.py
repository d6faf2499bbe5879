"""One function per dmsctl subcommand: call the client once, render the result."""

from __future__ import annotations

import argparse
import json
from typing import Any

from dmsfs.client import Client
from dmsfs.sizes import format_size


def _emit(args: argparse.Namespace, doc: Any, text: str) -> None:
    print(json.dumps(doc, indent=2) if args.json else text)


def stats(client: Client, args: argparse.Namespace) -> int:
    s = client.stats()
    b, cache = s["backlog"], s["cache"]
    ratio = f"{s['dedup_ratio']:.2f}" if s["dedup_ratio"] else "-"
    _emit(args, s, "\n".join([
        f"store          {s['store']}",
        f"logical bytes  {s['logical_bytes']:>16,}  ({format_size(s['logical_bytes'])})",
        f"stored bytes   {s['stored_bytes']:>16,}  ({format_size(s['stored_bytes'])})",
        f"dedup ratio    {ratio:>16}",
        f"chunks         {s['chunks']:>16,}",
        f"packs          {s['packs']:>16,}",
        f"upload backlog {b['objects']:>16,} objects, {format_size(b['bytes'])}",
        f"chunk cache    {format_size(cache['bytes'])} of {format_size(cache['max_bytes'])}, "
        f"{cache['hits']:,} hits, {cache['misses']:,} misses",
    ]))
    return 0


def fsck(client: Client, args: argparse.Namespace) -> int:
    r = client.fsck(read_data=args.read_data)
    c = r["checked"]
    lines = [f"damage: {p}" for p in r["problems"]]
    lines += [f"note: pack {k} is in the store but not in the index (dmsctl reindex adopts it)"
              for k in r["unindexed_packs"]]
    lines.append(f"checked {c['packs']} packs, {c['chunks']} chunks, {c['files']} files"
                 + (" (all data read)" if c["read_data"] else "")
                 + (f": {len(r['problems'])} problems" if r["problems"] else ": no damage"))
    _emit(args, r, "\n".join(lines))
    return 1 if r["problems"] else 0


def reindex(client: Client, args: argparse.Namespace) -> int:
    r = client.reindex()
    _emit(args, r, f"rebuilt the chunk index: {r['packs']} packs, {r['chunks']} chunks"
          + (f", {r['damaged_packs']} unreadable packs skipped" if r["damaged_packs"] else ""))
    return 1 if r["damaged_packs"] else 0


def flush(client: Client, args: argparse.Namespace) -> int:
    r = client.flush()
    _emit(args, r, f"staged data sealed; backlog {r['backlog']['objects']} objects")
    return 0
