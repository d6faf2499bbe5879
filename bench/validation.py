"""Validation and row-diff sections of the bench: validate, validate1g, rowdiff, rowdiff10m
(SPEC 5, 4).

    validate    a flat schema (id integer >= 0, name string maxLength 32, score number, ok
                boolean, day string format date; id and name required) on files of
                1,000,000 rows as CSV, JSONL and Parquet.  The figure is what a user sees:
                the extra time of `cp FILE MOUNT/checked/` (a dataset with the schema) over
                `cp FILE MOUNT/plain/` (none), same daemon, files of equal size and distinct
                content (dmsfs deduplicates), as rows / extra second.  The in-process
                Validator on the same file is a second row; the baseline of both is pyarrow
                reading the file alone (read_csv, read_json, read_table).  A file with one
                bad row (record 777,777: id -5) must be refused with EINVAL and that record
                in `rejects`.
    validate1g  close() of a validated ~1 GiB CSV: the extra time of the cp into the checked
                dataset over the plain one, against pyarrow.csv.read_csv of the same local
                file (in the page cache), timed in the same run; target <= 1.5x
    rowdiff     two 1,000,000-row Parquet files keyed by id, 1,000 rows apart (400 changed,
                300 added, 300 removed), as two snapshots of one dataset: GET /v1/diff
                ?rows=true&key=id on a restarted daemon (median of 3; the first shown too),
                the daemon's peak RSS (VmHWM) during it, and whether the counts are exact;
                `dmsctl diff --rows --key id --json` wall time; the baseline is the same
                work in this process (pq.read_table of both files + dmsfs.rowdiff.row_diff)
    rowdiff10m  the same for two 10,000,000-row Parquet files (~180 MB each; the daemon
                partitions them into hash buckets on disk): one GET /v1/diff on a
                restarted daemon, its VmHWM (target <= 1 GiB) and exact counts; the
                baseline is the whole-table path in this process (read both + row_diff)

Every timed cp starts after `dmsctl flush` and a sync, on a fresh daemon per repetition
(its first validation, which loads pyarrow in the daemon, is done before timing, with a
small file, and reported apart).  The plain and checked copies swap files every
repetition.  The daemons of these sections are left out of the whole-run peak RSS row
(their work holds tables in memory by design); each section reports its own peak.

The data (under WORK/data-val, made once with pyarrow.compute's seeded random numbers,
reused with --keep): a.*/b.* (1,000,000 rows, two seeds, in the three formats), bad.*,
big-a.csv / big-b.csv (~1 GiB each; 256 MiB with --quick), diff-v1/v2.parquet, and
diff10m-v1/v2.parquet (made by rowdiff10m when first run).  With --quick the tables
have 200,000 rows (2,000,000 for rowdiff10m); the targets are meant for the full sizes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchlib import MB, BenchError, MiB, fresh, log, made_before, median, rate, rmtree, run
from dmsd import DMSCTL, PEAK, CpuMeter, Daemon, warn_log_errors

SECTIONS = ["validate", "validate1g", "rowdiff", "rowdiff10m"]
GEN = 2                      # bump when the data below changes
FORMATS = ("csv", "jsonl", "parquet")
LABEL = {"csv": "CSV", "jsonl": "JSONL", "parquet": "Parquet"}
TARGET = {"csv": 1_000_000, "jsonl": 300_000, "parquet": 1_000_000}   # rows/s
BAD_ROW = 777_777            # 1-based record number of the one bad row of bad.*
SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 0},
        "name": {"type": "string", "maxLength": 32},
        "score": {"type": "number"},
        "ok": {"type": "boolean"},
        "day": {"type": "string", "format": "date"},
    },
    "required": ["id", "name"],
}
DIFF_CHANGED, DIFF_ADDED, DIFF_REMOVED = 400, 300, 300
REPS_DIFF = 3


class Conf:
    rows = 1_000_000
    big = 1 << 30             # bytes of the validate1g CSV (at least)
    suffix = ""


CONF = Conf()


def data_dir(work: Path) -> Path:
    return work / f"data-val{CONF.suffix}"


# ---------------------------------------------------------------- data
def make_table(seed: int, start: int, n: int) -> Any:
    """n rows with ids start.., the other columns from pyarrow's seeded random numbers
    (day as date32: Parquet keeps it so, CSV and JSONL write it as YYYY-MM-DD)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def rnd(k: int) -> Any:
        return pc.random(n, initializer=seed * 1000 + k)

    ids = pa.array(range(start, start + n), pa.int64())
    num = pc.cast(pc.floor(pc.multiply(rnd(1), 1e6)), pa.int64())
    name = pc.binary_join_element_wise("user_", pc.cast(num, pa.string()), "")
    score = pc.round(pc.multiply(rnd(2), 1000.0), 3)
    ok = pc.less(rnd(3), 0.5)
    days = pc.cast(pc.add(pc.floor(pc.multiply(rnd(4), 3000.0)), 18000.0), pa.int32())
    day = days.view(pa.date32())
    return pa.table({"id": ids, "name": name, "score": score, "ok": ok, "day": day})


def _texty(table: Any) -> Any:
    """The table with day as a string column (as CSV and JSONL hold it)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    i = table.column_names.index("day")
    return table.set_column(i, "day", pc.cast(table.column("day"), pa.string()))


def write_csv(table: Any, path: Path) -> None:
    import pyarrow.csv as pacsv

    pacsv.write_csv(_texty(table), str(path))


def jsonl_bytes(table: Any) -> bytes:
    import pyarrow as pa
    import pyarrow.compute as pc

    t = _texty(table)

    def s(name: str) -> Any:
        return pc.cast(t.column(name), pa.string())

    lines = pc.binary_join_element_wise(
        '{"id":', s("id"), ',"name":"', t.column("name"), '","score":', s("score"),
        ',"ok":', s("ok"), ',"day":"', t.column("day"), '"}', "")
    return ("\n".join(lines.to_pylist()) + "\n").encode()


def write_jsonl(table: Any, path: Path) -> None:
    path.write_bytes(jsonl_bytes(table))


def write_parquet(table: Any, path: Path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(table, str(path))


WRITERS = {"csv": write_csv, "jsonl": write_jsonl, "parquet": write_parquet}


def bad_row() -> int:
    """The bad row's record number (BAD_ROW; the last row of a smaller --quick table)."""
    return min(BAD_ROW, CONF.rows)


def with_bad_row(table: Any) -> Any:
    """The table with id -5 (below the minimum) in record BAD_ROW."""
    import pyarrow as pa
    import pyarrow.compute as pc

    idx = pa.array(range(table.num_rows), pa.int64())
    ids = pc.if_else(pc.equal(idx, bad_row() - 1), -5, table.column("id"))
    return table.set_column(0, "id", ids)


def _write_big(path: Path, seed: int, want: int) -> int:
    """A CSV of at least `want` bytes in blocks of 1,000,000 rows; its row count."""
    import pyarrow.csv as pacsv

    rows = 0
    block = 1_000_000
    with pacsv.CSVWriter(str(path), _texty(make_table(seed, 0, 1)).schema) as w:
        k = 0
        while path.stat().st_size < want or rows == 0:
            w.write_table(_texty(make_table(seed * 100 + k, rows, block)))
            rows += block
            k += 1
    return rows


def diff_tables(n: int) -> tuple[Any, Any, dict[str, set[int]]]:
    """v1 (ids 0..n-1) and v2: DIFF_REMOVED rows removed, DIFF_CHANGED rows with a new
    score, DIFF_ADDED rows appended (new ids); the ids of each kind."""
    import pyarrow as pa
    import pyarrow.compute as pc

    v1 = make_table(31, 0, n)
    removed = {17 + i * (n // DIFF_REMOVED) for i in range(DIFF_REMOVED)}
    changed = {(1001 + i * (n // DIFF_CHANGED)) % n for i in range(DIFF_CHANGED)} - removed
    k = 0
    while len(changed) < DIFF_CHANGED:  # never for these sizes; keeps the counts exact
        if k not in removed:
            changed.add(k)
        k += 1
    added = set(range(n, n + DIFF_ADDED))
    ids = v1.column("id")
    keep = pc.invert(pc.is_in(ids, value_set=pa.array(sorted(removed), pa.int64())))
    is_changed = pc.is_in(ids, value_set=pa.array(sorted(changed), pa.int64()))
    score = pc.if_else(is_changed, pc.add(v1.column("score"), 0.5), v1.column("score"))
    v2 = v1.set_column(2, "score", score).filter(keep)
    v2 = pa.concat_tables([v2, make_table(32, n, DIFF_ADDED)])
    return v1, v2, {"changed": changed, "added": added, "removed": removed}


def prepare(work: Path, quick: bool = False) -> dict[str, Any]:
    """Make (or reuse) WORK/data-val; a description of it."""
    CONF.rows, CONF.big, CONF.suffix = ((200_000, 256 * MiB, "-quick") if quick
                                        else (1_000_000, 1 << 30, ""))
    data = data_dir(work)
    stamp = data / "stamp.json"
    want = {"gen": GEN, "rows": CONF.rows, "big": CONF.big, "bad_row": BAD_ROW,
            "schema": SCHEMA}
    if (done := made_before(data, want)) is not None:
        return done
    t0 = time.monotonic()
    info: dict[str, Any] = dict(want)
    files: dict[str, Any] = {}
    tables = {"a": make_table(1, 0, CONF.rows), "b": make_table(2, 0, CONF.rows)}
    tables["bad"] = with_bad_row(make_table(3, 0, CONF.rows))
    for tag, table in tables.items():
        for fmt in FORMATS:
            p = data / f"{tag}.{fmt}"
            WRITERS[fmt](table, p)
            files[p.name] = p.stat().st_size
    small = make_table(4, 0, 100)
    for fmt in FORMATS:
        WRITERS[fmt](small, data / f"warm.{fmt}")
    del tables
    for tag, seed in (("big-a", 11), ("big-b", 12)):
        p = data / f"{tag}.csv"
        info[f"{tag}_rows"] = _write_big(p, seed, CONF.big)
        files[p.name] = p.stat().st_size
    v1, v2, ids = diff_tables(CONF.rows)
    write_parquet(v1, data / "diff-v1.parquet")
    write_parquet(v2, data / "diff-v2.parquet")
    files["diff-v1.parquet"] = (data / "diff-v1.parquet").stat().st_size
    files["diff-v2.parquet"] = (data / "diff-v2.parquet").stat().st_size
    info["diff"] = {"v1_rows": v1.num_rows, "v2_rows": v2.num_rows,
                    **{k: len(v) for k, v in ids.items()}}
    info["files"] = files
    info["seconds"] = round(time.monotonic() - t0, 1)
    stamp.write_text(json.dumps(info, indent=1))
    log(f"validation data: generated in {info['seconds']} s: "
        + ", ".join(f"{k} {v / MiB:.1f} MiB" for k, v in files.items()))
    return info


# ---------------------------------------------------------------- helpers
def api(d: Daemon) -> Any:
    from dmsfs.client import Client  # the product's own SDK, as dmsctl uses it

    c = Client(f"unix:{d.state / 'api.sock'}")
    c.whoami()
    return c


def cp(src: Path, dst: Path) -> tuple[float, int, str]:
    """(seconds, exit status, stderr) of `cp src dst`."""
    t0 = time.perf_counter()
    r = run(["cp", str(src), str(dst)], check=False, timeout=3600)
    return time.perf_counter() - t0, r.returncode, r.stderr.strip()


def cp_ok(src: Path, dst: Path) -> float:
    secs, rc, err = cp(src, dst)
    if rc != 0:
        raise BenchError(f"cp {src} {dst} -> exit {rc}: {err}")
    return secs


def settle(d: Daemon) -> None:
    """Nothing left for the daemon to do in the background before a timed cp."""
    d.flush()
    os.sync()


def warm_cache(*paths: Path) -> None:
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.read(8 << 20):
                pass


def start(root: Path, name: str) -> tuple[Daemon, Any]:
    """A fresh daemon with datasets plain (no schema) and checked (SCHEMA, default globs)."""
    d = Daemon(fresh(root), name).start()
    try:
        c = api(d)
        c.create_dataset("plain")
        rec = c.create_dataset("checked", schema=SCHEMA)
        if not rec.get("schema"):
            raise BenchError(f"POST /v1/datasets with a schema returned {rec}")
    except BaseException:
        d.stop()
        raise
    return d, c


def warm_up(d: Daemon, data: Path) -> float:
    """Seconds of the daemon's first validated closes (small files: pyarrow loads)."""
    t0 = time.perf_counter()
    for fmt in FORMATS:
        cp_ok(data / f"warm.{fmt}", d.mnt / "checked" / f"warm.{fmt}")
    return time.perf_counter() - t0


class PeakGuard:
    """Keeps this section's daemons out of the whole-run peak RSS (PEAK), remembering
    their own peak instead."""

    def __enter__(self) -> PeakGuard:
        self.saved = (PEAK["kib"], PEAK["where"])
        return self

    def __exit__(self, *exc: object) -> None:
        PEAK["kib"], PEAK["where"] = self.saved


def read_alone(path: Path, fmt: str) -> float:
    """Seconds pyarrow needs to read the file into a table (the baseline)."""
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    if fmt == "csv":
        t = pacsv.read_csv(str(path))
    elif fmt == "jsonl":
        t = pajson.read_json(str(path))
    else:
        t = pq.read_table(str(path))
    secs = time.perf_counter() - t0
    del t
    return secs


def validate_inproc(path: Path, fmt: str) -> tuple[float, Any]:
    """(seconds, verdict) of dmsfs.validation's Validator on a local file."""
    from dmsfs.validation.validator import Validator

    v = Validator(SCHEMA)
    with open(path, "rb") as f:
        t0 = time.perf_counter()
        verdict = v.validate(f, fmt)
        return time.perf_counter() - t0, verdict


# ---------------------------------------------------------------- validate
def sec_validate(ctx: Any) -> None:
    info = ctx.valinfo
    data = data_dir(ctx.work)
    n = CONF.rows
    raw: dict[str, Any] = {"rows": n, "files": info["files"]}
    ctx.raw["validate"] = raw
    problems: dict[str, list[str]] = {f: [] for f in FORMATS}
    runs: list[dict[str, Any]] = []
    hwm = 0
    with PeakGuard():
        for r in range(ctx.reps):
            d, c = start(ctx.work / "val", f"validate#{r + 1}")
            one: dict[str, Any] = {}
            try:
                one["warm_up_s"] = round(warm_up(d, data), 3)
                for fmt in FORMATS:
                    a, b = data / f"a.{fmt}", data / f"b.{fmt}"
                    if r % 2:
                        a, b = b, a
                    warm_cache(a, b)
                    settle(d)
                    plain = cp_ok(a, d.mnt / "plain" / f"t.{fmt}")
                    settle(d)
                    cpu = CpuMeter(d.pid)
                    cpu.start()
                    secs, rc, err = cp(b, d.mnt / "checked" / f"t.{fmt}")
                    usage = cpu.stop()
                    if rc != 0:
                        problems[fmt].append(f"valid {b.name} refused: {err}")
                    one[fmt] = {"plain_s": round(plain, 3), "checked_s": round(secs, 3),
                                "plain_file": a.name, "checked_file": b.name,
                                "cpu_checked": usage}
                    log(f"[validate] #{r + 1} {LABEL[fmt]}: cp plain {plain:.2f} s, cp checked "
                        f"{secs:.2f} s: extra {secs - plain:.2f} s = "
                        f"{rate(n, secs - plain):,.0f} rows/s (daemon {usage['cores_busy']} "
                        f"cores busy during the checked cp)")
                if r == ctx.reps - 1:
                    _check_rejects(d, c, data, problems)
                d.check_alive()
                hwm = max(hwm, d.rss().get("VmHWM", 0), d.hwm_kib)
            finally:
                d.stop()
                warn_log_errors(d)
            runs.append(one)
        rmtree(ctx.work / "val")
    raw["dmsfs"] = runs
    raw["daemon_hwm_kib"] = hwm
    # this process: pyarrow alone and the Validator, same files (in the page cache)
    inproc: dict[str, Any] = {}
    for fmt in FORMATS:
        p = data / f"a.{fmt}"
        warm_cache(p)
        base = [read_alone(p, fmt) for _ in range(ctx.reps)]
        val = []
        for _ in range(ctx.reps):
            secs, verdict = validate_inproc(p, fmt)
            val.append(secs)
            if not verdict.ok or verdict.records != n:
                problems[fmt].append(f"in-process Validator on {p.name}: {verdict}")
        bsecs, bverdict = validate_inproc(data / f"bad.{fmt}", fmt)
        if bverdict.ok or bverdict.first != bad_row() or bverdict.pointer != "/id":
            problems[fmt].append(f"in-process Validator on bad.{fmt}: {bverdict} (expected "
                                 f"record {bad_row()}, /id)")
        inproc[fmt] = {"pyarrow_read_s": base, "validator_s": val, "bad_s": round(bsecs, 3),
                       "bad_verdict": vars(bverdict)}
        log(f"[validate] in-process {LABEL[fmt]}: pyarrow read {median(base):.2f} s, Validator "
            f"{median(val):.2f} s ({rate(n, median(val)):,.0f} rows/s)")
    raw["inproc"] = inproc
    raw["problems"] = problems
    for fmt, ps in problems.items():
        for p in ps:
            log(f"[validate] WRONG RESULT ({fmt}): {p}")

    for fmt in FORMATS:
        extra = [x[fmt]["checked_s"] - x[fmt]["plain_s"] for x in runs]
        ex = median(extra)
        base_rps = rate(n, median(inproc[fmt]["pyarrow_read_s"]))
        size = info["files"][f"a.{fmt}"]
        bad = "; ".join(problems[fmt])
        if ex > 0:
            v: float | None = rate(n, ex)
            met = v >= TARGET[fmt] and not bad
            note = bad[:300] if bad else f"extra {ex:.2f} s, median of {ctx.reps}"
        else:
            v, met = None, not bad
            note = bad[:300] if bad else f"no extra time measurable ({ex:+.2f} s)"
        ctx.row("validate", f"validated cp, {LABEL[fmt]} {n:,} rows ({size / MB:.0f} MB): "
                "rows / extra s", v, "rows/s", f"pyarrow reads {LABEL[fmt]} alone", base_rps,
                target=f"≥{TARGET[fmt]:,} rows/s", met=met, note=note)
        vs = median(inproc[fmt]["validator_s"])
        ctx.row("validate", f"  in-process Validator, {LABEL[fmt]}", rate(n, vs), "rows/s",
                f"pyarrow reads {LABEL[fmt]} alone", base_rps)
        ctx.row("validate", f"  cp into plain / checked dataset, {LABEL[fmt]}",
                median([x[fmt]["checked_s"] for x in runs]), "s", "cp into plain dataset",
                median([x[fmt]["plain_s"] for x in runs]))
    ctx.row("validate", f"  bad row refused (EINVAL; rejects: record {bad_row():,}, /id)",
            None, "", target="all 3 formats", met=not any(problems.values()),
            note="; ".join(f"{f}: {p[0]}" for f, p in problems.items() if p)[:300])
    ctx.row("validate", "  first validated closes of a daemon (3 small files)",
            median([x["warm_up_s"] for x in runs]) * 1000, "ms", note="pyarrow loads")
    ctx.row("validate", "  daemon peak RSS (VmHWM)", hwm / 1024, "MiB")


def _check_rejects(d: Daemon, c: Any, data: Path, problems: dict[str, list[str]]) -> None:
    """cp of bad.* into the checked dataset: refused with EINVAL, the path left absent,
    and rejects naming record BAD_ROW, /id."""
    for fmt in FORMATS:
        dst = d.mnt / "checked" / f"bad.{fmt}"
        secs, rc, err = cp(data / f"bad.{fmt}", dst)
        if rc == 0:
            problems[fmt].append(f"cp bad.{fmt} into the checked dataset succeeded")
            continue
        if "Invalid argument" not in err:
            problems[fmt].append(f"cp bad.{fmt}: {err!r} (expected Invalid argument)")
        if dst.exists():
            problems[fmt].append(f"checked/bad.{fmt} exists after the refused cp")
        recs = [x for x in c.rejects("checked") if x.get("path") == f"bad.{fmt}"]
        if not recs:
            problems[fmt].append(f"no reject recorded for bad.{fmt}")
        elif recs[0].get("record") != bad_row() or recs[0].get("pointer") != "/id":
            problems[fmt].append(f"reject of bad.{fmt}: record {recs[0].get('record')} "
                                 f"{recs[0].get('pointer')!r} (expected {bad_row()} '/id'): "
                                 f"{recs[0].get('message')}")
        log(f"[validate] cp bad.{fmt}: refused in {secs:.2f} s: {err[-120:]}")


# ---------------------------------------------------------------- validate1g
def sec_validate1g(ctx: Any) -> None:
    info = ctx.valinfo
    data = data_dir(ctx.work)
    a, b = data / "big-a.csv", data / "big-b.csv"
    size, nrows = a.stat().st_size, info["big-a_rows"]
    raw: dict[str, Any] = {"bytes": size, "bytes_b": b.stat().st_size, "rows": nrows}
    ctx.raw["validate1g"] = raw
    runs: list[dict[str, Any]] = []
    problems: list[str] = []
    hwm = 0
    with PeakGuard():
        for r in range(ctx.reps):
            src_plain, src_checked = (a, b) if r % 2 == 0 else (b, a)
            d, _c = start(ctx.work / "val1g", f"validate1g#{r + 1}")
            try:
                warm_up(d, data)
                warm_cache(a, b)
                settle(d)
                plain = cp_ok(src_plain, d.mnt / "plain" / "big.csv")
                settle(d)
                cpu = CpuMeter(d.pid)
                cpu.start()
                secs, rc, err = cp(src_checked, d.mnt / "checked" / "big.csv")
                usage = cpu.stop()
                if rc != 0:
                    problems.append(f"valid {src_checked.name} refused: {err}")
                d.check_alive()
                hwm = max(hwm, d.rss().get("VmHWM", 0), d.hwm_kib)
            finally:
                d.stop()
                warn_log_errors(d)
            rmtree(ctx.work / "val1g")
            warm_cache(a)
            base = read_alone(a, "csv")
            runs.append({"plain_s": round(plain, 3), "checked_s": round(secs, 3),
                         "pyarrow_read_csv_s": round(base, 3), "cpu_checked": usage})
            log(f"[validate1g] #{r + 1}: cp plain {plain:.2f} s, cp checked {secs:.2f} s: extra "
                f"{secs - plain:.2f} s; pyarrow read_csv {base:.2f} s; daemon "
                f"{usage['cores_busy']} cores busy during the checked cp")
    warm_cache(a)
    vsecs, verdict = validate_inproc(a, "csv")
    if not verdict.ok or verdict.records != nrows:
        problems.append(f"in-process Validator on {a.name}: {verdict}")
    raw.update(dmsfs=runs, inproc_validator_s=round(vsecs, 3), daemon_hwm_kib=hwm,
               problems=problems)
    for p in problems:
        log(f"[validate1g] WRONG RESULT: {p}")
    extra = median([x["checked_s"] - x["plain_s"] for x in runs])
    base = median([x["pyarrow_read_csv_s"] for x in runs])
    ratio = extra / base
    label = f"{size / MiB:,.0f} MiB" + ("" if size >= (1 << 30) * 0.95 else
                                        " (smaller than 1 GiB: --quick)")
    ctx.row("validate1g", f"close() of a validated {label} CSV ({nrows:,} rows): extra s",
            extra, "s", "pyarrow.csv.read_csv, same file", base, ratio,
            target="≤1.5× read_csv", met=ratio <= 1.5 and not problems,
            note="; ".join(problems)[:300] if problems else f"median of {ctx.reps}")
    ctx.row("validate1g", "  same as rows / extra s", rate(nrows, extra), "rows/s")
    ctx.row("validate1g", "  cp into checked dataset", median([x["checked_s"] for x in runs]),
            "s", "cp into plain dataset", median([x["plain_s"] for x in runs]))
    ctx.row("validate1g", "  in-process Validator, same file", vsecs, "s",
            "pyarrow.csv.read_csv, same file", base)
    ctx.row("validate1g", "  daemon peak RSS (VmHWM)", hwm / 1024, "MiB")


# ---------------------------------------------------------------- rowdiff
def two_snapshots(d: Daemon, v1: Path, v2: Path) -> tuple[str, str]:
    """Dataset tab with t.parquet = v1 in one snapshot and = v2 in the next; their names."""
    c = api(d)
    c.create_dataset("tab")
    cp_ok(v1, d.mnt / "tab" / "t.parquet")
    r1 = c.snapshot("tab", message="v1")
    cp_ok(v2, d.mnt / "tab" / "t.parquet")
    r2 = c.snapshot("tab", message="v2")
    return f"tab@v{r1['number']}", f"tab@v{r2['number']}"


def counts_row(ctx: Any, section: str, got: dict[str, int], expect: dict[str, int],
               problems: list[str]) -> None:
    """The row that says whether a row diff found exactly the expected rows."""
    bad = "; ".join(problems)
    ctx.row(section, "  rows found (changed / added / removed)",
            sum(got.values()) if got else None, "rows", target="400 / 300 / 300",
            met=got == expect and not problems,
            note=(" / ".join(str(got[k]) for k in expect) if got else "") +
            (f"; {bad[:250]}" if bad else ""))


@contextmanager
def diff_daemon(ctx: Any, name: str, v1: Path, v2: Path
                ) -> Iterator[tuple[Daemon, str, str, int]]:
    """A daemon holding v1 and v2 in two snapshots, restarted so that its peak RSS
    from here on is the diff's: (daemon, a, b, VmHWM KiB before); stopped after."""
    root = ctx.work / name
    with PeakGuard():
        d = Daemon(fresh(root), name).start()
        try:
            a, b = two_snapshots(d, v1, v2)
            d.restart()
            yield d, a, b, d.rss().get("VmHWM", 0)
            d.check_alive()
        finally:
            d.stop()
            warn_log_errors(d)
        ctx.keep_or_remove(root)


def row_counts(result: dict[str, Any], expect: dict[str, int], problems: list[str],
               who: str) -> dict[str, int] | None:
    """The changed/added/removed counts of t.parquet in a row diff (problems noted)."""
    files = (result.get("rows") or {}).get("files") or []
    if len(files) != 1 or files[0].get("path") != "t.parquet":
        problems.append(f"{who}: row diff of {[f.get('path') for f in files]} "
                        "(expected t.parquet alone)")
        return None
    got = {k: files[0].get(k) for k in expect}
    if got != expect:
        problems.append(f"{who}: {got} (expected {expect})")
    return got


def sec_rowdiff(ctx: Any) -> None:
    info = ctx.valinfo
    data = data_dir(ctx.work)
    v1, v2 = data / "diff-v1.parquet", data / "diff-v2.parquet"
    expect = {"changed": DIFF_CHANGED, "added": DIFF_ADDED, "removed": DIFF_REMOVED}
    raw: dict[str, Any] = {"expected": expect, "data": info["diff"]}
    ctx.raw["rowdiff"] = raw
    problems: list[str] = []
    with diff_daemon(ctx, "rowdiff", v1, v2) as (d, a, b, hwm0):
        c = api(d)
        secs, hwms, res = [], [], {}
        cpu = CpuMeter(d.pid)
        for i in range(REPS_DIFF):
            if i == 0:
                cpu.start()
            t0 = time.perf_counter()
            res = c.diff(a, b, rows=True, key="id")
            secs.append(time.perf_counter() - t0)
            if i == 0:
                usage = cpu.stop()
            hwms.append(d.rss().get("VmHWM", 0))
        ctl_s, ctl_res, ctl_err = [], {}, ""
        for _ in range(REPS_DIFF):
            t0 = time.perf_counter()
            rr = run([DMSCTL, "--state", str(d.state), "diff", a, b, "--rows", "--key", "id",
                      "--json"], check=False, timeout=600)
            if rr.returncode != 0:
                ctl_err = (rr.stderr or rr.stdout).strip()[-300:]
                break
            ctl_s.append(time.perf_counter() - t0)
            ctl_res = json.loads(rr.stdout)

    got = row_counts(res, expect, problems, "API")
    if ctl_res:
        row_counts(ctl_res, expect, problems, "dmsctl diff --rows --json")
    modified = [m.get("path") for m in res.get("modified", [])]
    if modified != ["t.parquet"]:
        problems.append(f"API: modified files {modified} (expected ['t.parquet'])")

    # the same work in this process: read both files, row_diff
    import pyarrow.parquet as pq

    from dmsfs.rowdiff import row_diff

    warm_cache(v1, v2)
    inproc, alone = [], []
    for _ in range(REPS_DIFF):
        t0 = time.perf_counter()
        ta, tb = pq.read_table(str(v1)), pq.read_table(str(v2))
        t1 = time.perf_counter()
        rd = row_diff(ta, tb, ["id"], 20)
        t2 = time.perf_counter()
        inproc.append(t2 - t0)
        alone.append(t2 - t1)
        mine = {"changed": rd.changed, "added": rd.added, "removed": rd.removed}
        if mine != expect:
            problems.append(f"in-process row_diff: {mine} (expected {expect})")
            break
        del ta, tb, rd
    raw.update(api_s=secs, hwm_before_kib=hwm0, hwm_after_kib=hwms, cpu_first=usage,
               counts=got, dmsctl_s=ctl_s, dmsctl_error=ctl_err, inproc_s=inproc,
               row_diff_alone_s=alone, problems=problems)
    for p in problems:
        log(f"[rowdiff] WRONG RESULT: {p}")
    log(f"[rowdiff] {a} -> {b}: API {[round(x, 3) for x in secs]} s (first: daemon "
        f"{usage['cores_busy']} cores busy); VmHWM {hwm0 / 1024:.0f} MiB before, "
        f"{[round(h / 1024) for h in hwms]} MiB after each; dmsctl "
        f"{[round(x, 3) for x in ctl_s] or ctl_err}; in-process {[round(x, 3) for x in inproc]} s"
        f" (row_diff alone {[round(x, 3) for x in alone]} s)")

    bad = "; ".join(problems)
    n = info["diff"]["v1_rows"]
    v = median(secs)
    ctx.row("rowdiff", f"row diff, 2 x {n:,}-row Parquet, 1,000 rows differ (API, median of "
            f"{REPS_DIFF})", v, "s", "in-process: read both + row_diff", median(inproc),
            target="≤3 s, exact counts", met=v <= 3.0 and not problems,
            note=bad[:300] if bad else "")
    ctx.row("rowdiff", "  first of them (restarted daemon: loads pyarrow)", secs[0], "s")
    peak = max(hwms)
    ctx.row("rowdiff", "  daemon peak RSS (VmHWM) during the diffs", peak / 1024, "MiB",
            target="≤1,024 MiB", met=peak <= 1024 * 1024,
            note=f"{hwm0 / 1024:.0f} MiB before; after the first {hwms[0] / 1024:.0f} MiB")
    counts_row(ctx, "rowdiff", got, expect, problems)
    if ctl_s:
        ctx.row("rowdiff", "  same, dmsctl diff --rows --key id --json wall time",
                median(ctl_s), "s")
    else:
        ctx.row("rowdiff", "  dmsctl diff --rows --key id --json", None, "",
                note=f"failed: {ctl_err[:120]}")
    ctx.row("rowdiff", "  in-process row_diff alone (tables in memory)", median(alone), "s")


# ---------------------------------------------------------------- rowdiff10m
def diff10m_files(work: Path) -> tuple[Path, Path, dict[str, Any]]:
    """diff10m-v1/v2.parquet: as diff-v1/v2 with 10 x CONF.rows rows (made once)."""
    data = data_dir(work)
    v1, v2, stamp = (data / "diff10m-v1.parquet", data / "diff10m-v2.parquet",
                     data / "diff10m.json")
    want = {"gen": GEN, "rows": 10 * CONF.rows}
    if stamp.exists() and v2.exists():
        info = json.loads(stamp.read_text())
        if {k: info.get(k) for k in want} == want:
            return v1, v2, info
    t0 = time.monotonic()
    t1, t2, ids = diff_tables(want["rows"])
    write_parquet(t1, v1)
    write_parquet(t2, v2)
    info = {**want, "v1_rows": t1.num_rows, "v2_rows": t2.num_rows,
            **{k: len(v) for k, v in ids.items()},
            "bytes": [v1.stat().st_size, v2.stat().st_size],
            "seconds": round(time.monotonic() - t0, 1)}
    stamp.write_text(json.dumps(info, indent=1))
    log(f"rowdiff10m data: generated in {info['seconds']} s: 2 x {v1.stat().st_size / MiB:.0f}"
        " MiB")
    return v1, v2, info


def sec_rowdiff10m(ctx: Any) -> None:
    v1, v2, info = diff10m_files(ctx.work)
    expect = {"changed": DIFF_CHANGED, "added": DIFF_ADDED, "removed": DIFF_REMOVED}
    raw: dict[str, Any] = {"expected": expect, "data": info}
    ctx.raw["rowdiff10m"] = raw
    problems: list[str] = []
    with diff_daemon(ctx, "rowdiff10m", v1, v2) as (d, a, b, hwm0):
        cpu = CpuMeter(d.pid)
        cpu.start()
        t0 = time.perf_counter()
        res = api(d).diff(a, b, rows=True, key="id")
        secs = time.perf_counter() - t0
        usage = cpu.stop()
        hwm = d.rss().get("VmHWM", 0)
        scratch = d.state / "rowdiff"
        left = [p.name for p in scratch.iterdir()] if scratch.exists() else []
    got = row_counts(res, expect, problems, "API")
    if left:
        problems.append(f"bucket files left in the state dir: {left}")

    # the whole-table path in this process, for comparison
    import pyarrow.parquet as pq

    from dmsfs.rowdiff import row_diff

    warm_cache(v1, v2)
    t0 = time.perf_counter()
    rd = row_diff(pq.read_table(str(v1)), pq.read_table(str(v2)), ["id"], 20)
    whole = time.perf_counter() - t0
    if {"changed": rd.changed, "added": rd.added, "removed": rd.removed} != expect:
        problems.append(f"in-process row_diff: {rd.changed, rd.added, rd.removed}")
    del rd
    raw.update(api_s=secs, hwm_before_kib=hwm0, hwm_after_kib=hwm, cpu=usage, counts=got,
               whole_table_s=whole, problems=problems)
    for p in problems:
        log(f"[rowdiff10m] WRONG RESULT: {p}")
    log(f"[rowdiff10m] {a} -> {b}: API {secs:.1f} s (daemon {usage['cores_busy']} cores "
        f"busy); VmHWM {hwm0 / 1024:.0f} MiB before, {hwm / 1024:.0f} MiB after; "
        f"whole-table path in-process {whole:.1f} s")

    bad = "; ".join(problems)
    n = info["v1_rows"]
    ctx.row("rowdiff10m", f"row diff, 2 x {n:,}-row Parquet, 1,000 rows differ (API, "
            "partitioned)", secs, "s", "in-process: read both + row_diff (whole tables)",
            whole, note=bad[:300] if bad else "")
    ctx.row("rowdiff10m", "  daemon peak RSS (VmHWM) during the diff", hwm / 1024, "MiB",
            target="≤1,024 MiB", met=hwm <= 1024 * 1024,
            note=f"{hwm0 / 1024:.0f} MiB before")
    counts_row(ctx, "rowdiff10m", got, expect, problems)


# ---------------------------------------------------------------- profiles
def profile(ctx: Any, out: Path, wanted: list[str]) -> None:
    """py-spy profiles of the daemon (untimed): a validated cp of the 1,000,000-row CSV
    and JSONL (validate), of the big CSV (validate1g), a row diff on a fresh daemon
    (rowdiff)."""
    from dmsd import PYSPY
    from snapshots import _spy

    if not PYSPY.exists():
        log("[profile] py-spy not in the venv; skipped")
        return
    data = data_dir(ctx.work)
    with PeakGuard():
        if "validate" in wanted or "validate1g" in wanted:
            d, _c = start(ctx.work / "val-prof", "profile-validate")
            try:
                warm_up(d, data)
                jobs = []
                if "validate" in wanted:
                    jobs += [("validate-csv", f"cp of the {CONF.rows:,}-row CSV into the "
                              "checked dataset", data / "a.csv"),
                             ("validate-jsonl", f"cp of the {CONF.rows:,}-row JSONL into the "
                              "checked dataset", data / "a.jsonl")]
                if "validate1g" in wanted:
                    jobs.append(("validate1g", "cp of the big CSV into the checked dataset",
                                 data / "big-a.csv"))
                for name, what, src in jobs:
                    warm_cache(src)
                    settle(d)
                    _spy(d, out, name, what,
                         lambda src=src: cp_ok(src, d.mnt / "checked" / src.name))
            finally:
                d.stop()
            rmtree(ctx.work / "val-prof")
        if "rowdiff" in wanted:
            d = Daemon(fresh(ctx.work / "rowdiff-prof"), "profile-rowdiff").start()
            try:
                a, b = two_snapshots(d, data / "diff-v1.parquet", data / "diff-v2.parquet")
                d.restart()
                c = api(d)
                _spy(d, out, "rowdiff", "row diff (API), fresh daemon, then again",
                     lambda: [c.diff(a, b, rows=True, key="id") for _ in (1, 2)])
            finally:
                d.stop()
            rmtree(ctx.work / "rowdiff-prof")
