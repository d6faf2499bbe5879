"""Which tabular format a file name says (no pyarrow here: the daemon loads pyarrow
only when it first validates or diffs rows)."""

from __future__ import annotations

EXTENSIONS = ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json"), (".csv", "csv"),
              (".parquet", "parquet"), (".pq", "parquet"))


def format_of(name: str) -> str | None:
    lower = name.lower()
    return next((fmt for ext, fmt in EXTENSIONS if lower.endswith(ext)), None)
