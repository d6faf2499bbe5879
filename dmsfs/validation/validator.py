"""Validate a tabular file against a JSON Schema for one record.

Each block of the file is filtered by the compiled checks (checks.py); only the
rows they suspect are judged by jsonschema (draft 2020-12, formats asserted),
so the verdict is jsonschema's and its message is the one reported, while
valid data never pays for a Python call per row.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any

import pyarrow.compute as pc
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from .checks import Compiled
from .formats import Block, NotARecord, blocks, grouped

WORKERS = 2   # blocks converted and checked at once, beside the one being read
GROUP_ROWS = 65536   # rows checked at once (fewer Python calls per row)


@dataclass
class Verdict:
    """The outcome for one file."""

    records: int = 0
    failed: int = 0
    first: int | None = None      # 1-based record number (JSONL: line) of the first failure
    pointer: str = ""             # JSON pointer of the failing value in that record
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.failed == 0


class Validator:
    """One schema, compiled once, for many files."""

    def __init__(self, schema: Any) -> None:
        self.schema = schema
        self.judge = Draft202012Validator(schema,
                                          format_checker=Draft202012Validator.FORMAT_CHECKER)
        self.compiled = Compiled(schema)

    def validate(self, f: IO[bytes], fmt: str) -> Verdict:
        """The verdict on a whole file (blocking: run it in a worker thread).

        While this thread reads and parses a block, helper threads convert and check
        the ones before (Arrow releases the GIL: every core works)."""
        verdict = Verdict()
        try:
            with ThreadPoolExecutor(WORKERS) as pool:
                pending: deque[tuple[Block, Future[list[int]]]] = deque()
                for block in grouped(blocks(f, fmt, self.schema), GROUP_ROWS):
                    pending.append((block, pool.submit(self._suspects, block)))
                    if len(pending) > WORKERS:
                        self._judge_block(*pending.popleft(), verdict)
                while pending:
                    self._judge_block(*pending.popleft(), verdict)
        except Exception as e:  # noqa: BLE001 -- any file the readers cannot take is refused
            # (not JSON, CSV or Parquet at all, or shaped in a way the readers refuse)
            if verdict.first is None:
                verdict.first, verdict.message = verdict.records + 1, f"unreadable: {e}"
            verdict.failed += 1
        return verdict

    def _suspects(self, block: Block) -> list[int]:
        """Rows of a block that jsonschema must judge."""
        block.ready()
        marks = self.compiled.suspects(block.batch)
        if block.suspects is not None:
            marks = pc.or_(marks, block.suspects)
        return pc.indices_nonzero(marks).to_pylist()

    def _judge_block(self, block: Block, suspects: Future[list[int]], verdict: Verdict
                     ) -> None:
        rows = suspects.result()
        verdict.records += block.batch.num_rows
        for i in rows:
            self._judge(block.record, i, verdict)

    def _judge(self, record_of: Any, row: int, verdict: Verdict) -> None:
        try:
            number, record = record_of(row)
        except NotARecord as e:
            error_pointer, message, number = "", str(e), None
        else:
            error = best_match(self.judge.iter_errors(record))
            if error is None:
                return
            error_pointer, message = pointer(error.absolute_path), error.message
        verdict.failed += 1
        if verdict.first is None:
            verdict.first = number if number is not None else verdict.records
            verdict.pointer, verdict.message = error_pointer, message


def pointer(path: Any) -> str:
    """A JSON pointer (RFC 6901) for a jsonschema error path."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)
