"""Schemas and validated writes through the real mount (SPEC sections 4, 5, 9).

Files are written as users write them: cp, rsync, Python open/close, pyarrow
writing Parquet straight into the mount.  For every refused file: close()
fails with EINVAL, the path keeps its previous content byte for byte (or does
not exist), and `dmsctl rejects` names the path, the user, the schema version,
the first failing record, its pointer and jsonschema's message.  Nothing
committed before is lost, also across a restart.  Then the dmsctl schema
commands, schema versions recorded by snapshots, and schema and row diffs.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pwd
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

NOBODY = 65534
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
ROOT_USER = pwd.getpwuid(os.getuid()).pw_name

PEOPLE = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "name": {"type": "string", "minLength": 1},
        "score": {"type": ["number", "null"]},
        "ok": {"type": "boolean"},
        "day": {"type": "string", "format": "date"},
    },
    "required": ["id", "name"],
}


# ------------------------------------------------------------------ helpers
def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_close(path: Path, data: bytes) -> int:
    """Write a file with open/write/close; 0, or the errno close() failed with (a
    write itself must not fail: validation happens at close)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        raise
    try:
        os.close(fd)
    except OSError as e:
        return e.errno or -1
    return 0


def cp(src: Path, dst: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["cp", str(src), str(dst)], capture_output=True, text=True)


def schema_file(tmp_path: Path, schema: Any, name: str = "schema.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(schema))
    return path


def set_schema(daemon: Any, tmp_path: Path, schema: Any, *args: str, ds: str = "ds"
               ) -> subprocess.CompletedProcess[str]:
    return daemon.ctl("schema", "set", ds, str(schema_file(tmp_path, schema)), *args,
                      check=True)


def rejects(daemon: Any, ds: str = "ds") -> list[dict[str, Any]]:
    out = daemon.ctl_json("rejects", ds)
    for r in out:
        assert TIME.fullmatch(r.pop("time")), r
    return out


def reject(path: str, record: int | None, pointer: str, message: str, failed: int,
           records: int, *, version: int = 1, uid: int | None = None,
           user: str | None = None) -> dict[str, Any]:
    """A rejects record as dmsctl rejects --json shows it (without its time)."""
    uid = os.getuid() if uid is None else uid
    return {"path": path, "uid": uid, "user": user or pwd.getpwuid(uid).pw_name,
            "schema_version": version, "record": record, "pointer": pointer,
            "message": message, "failed_records": failed, "records": records}


def refused_new(ds: Path, name: str, data: bytes) -> None:
    """Writing a new file is refused at close and leaves no trace."""
    assert write_close(ds / name, data) == errno.EINVAL
    assert not (ds / name).exists()
    assert (ds / name).name not in os.listdir((ds / name).parent)


def refused_overwrite(ds: Path, name: str, data: bytes) -> None:
    """Overwriting a file is refused at close; the old bytes stay."""
    before = (ds / name).read_bytes()
    assert write_close(ds / name, data) == errno.EINVAL
    assert (ds / name).read_bytes() == before
    assert (ds / name).stat().st_size == len(before)


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def fails(r: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


def schema_message(schema: Any) -> str:
    with pytest.raises(SchemaError) as e:
        Draft202012Validator.check_schema(schema)
    return f"invalid JSON Schema: {e.value.message}"


@pytest.fixture
def people(daemon: Any, ds: Path, tmp_path: Path) -> Path:
    """ds with the PEOPLE schema as version 1 (default globs)."""
    set_schema(daemon, tmp_path, PEOPLE)
    return ds


# ------------------------------------------------------------------ formats
def test_json_one_record_and_arrays(daemon: Any, people: Path, tmp_path: Path) -> None:
    ds = people
    assert write_close(ds / "one.json", b'{"id": 1, "name": "ann"}') == 0
    good = json.dumps([{"id": 1, "name": "a", "day": "2021-02-28"},
                       {"id": 2, "name": "b", "score": None}]).encode()
    assert write_close(ds / "many.json", good) == 0
    assert (ds / "many.json").read_bytes() == good

    refused_new(ds, "bad.json", b'{"id": 0, "name": "x"}')
    refused_new(ds, "bad_array.json", json.dumps(
        [{"id": 1, "name": "a", "day": "2021-02-28"}, {"id": 2},
         {"id": 3, "name": "c", "day": "2021-02-30"}]).encode())
    refused_overwrite(ds, "one.json", b'{"id": 1, "name": "ann", "ok": "yes"}')
    refused_overwrite(ds, "many.json", b'[{"id": 1, "name": "a"}, 7]')
    refused_new(ds, "broken.json", b'[{"id": 1, "name": "a"},')

    got = rejects(daemon)
    assert got[1:] == [
        reject("many.json", 2, "", "7 is not of type 'object'", 1, 2),
        reject("one.json", 1, "/ok", "'yes' is not of type 'boolean'", 1, 1),
        reject("bad_array.json", 2, "", "'name' is a required property", 2, 3),
        reject("bad.json", 1, "/id", "0 is less than the minimum of 1", 1, 1),
    ]
    broken = got[0]
    assert (broken["path"], broken["record"], broken["failed_records"]) == ("broken.json", 1, 1)
    assert broken["message"].startswith("unreadable: ")
    assert sorted(os.listdir(ds)) == ["many.json", "one.json"]


def test_json_array_property_first_seen_in_a_later_record(daemon: Any, people: Path) -> None:
    """Every record of an array is judged, whatever keys the first one has."""
    refused_new(people, "late.json", json.dumps(
        [{"id": 1, "name": "a"}, {"id": 2, "name": "b", "day": "2021-02-30"}]).encode())
    assert rejects(daemon) == [reject("late.json", 2, "/day", "'2021-02-30' is not a 'date'",
                                      1, 2)]


def test_cp_reports_failed_to_close(daemon: Any, people: Path, tmp_path: Path) -> None:
    src = tmp_path / "bad.json"
    src.write_bytes(b'{"id": "7", "name": "x"}')
    r = cp(src, people / "bad.json")
    assert r.returncode == 1
    assert "failed to close" in r.stderr and "Invalid argument" in r.stderr, r.stderr
    assert not (people / "bad.json").exists()
    assert rejects(daemon) == [reject("bad.json", 1, "/id", "'7' is not of type 'integer'",
                                      1, 1)]


def test_jsonl_numbers_lines_and_skips_blank_ones(daemon: Any, people: Path) -> None:
    ds = people
    good = b'{"id": 1, "name": "a"}\n\n{"id": 2, "name": "b", "ok": true}\n   \n'
    assert write_close(ds / "good.jsonl", good) == 0
    assert (ds / "good.jsonl").read_bytes() == good
    bad = (b'{"id": 1, "name": "a"}\n\n\n{"id": 2, "name": "b"}\n\n'
           b'{"id": 3, "name": "c", "day": "2021-13-01"}\n{"id": 4, "name": ""}\n'
           b'{"id": 5, "name": "e"}')
    refused_new(ds, "bad.jsonl", bad)
    refused_overwrite(ds, "good.jsonl", b'{"id": 1, "name": "a"}\n{"id": 2}\n')
    refused_new(ds, "notjson.ndjson", b'{"id": 1, "name": "a"}\n{"id": 2, "name"\n')
    got = rejects(daemon)
    assert got[1:] == [
        reject("good.jsonl", 2, "", "'name' is a required property", 1, 2),
        reject("bad.jsonl", 6, "/day", "'2021-13-01' is not a 'date'", 2, 5),
    ]
    assert got[0]["path"] == "notjson.ndjson" and got[0]["record"] == 2
    assert got[0]["message"].startswith("line 2 is not JSON")
    assert sorted(os.listdir(ds)) == ["good.jsonl"]

    # appending a bad record to a good file (a log) is refused as a whole
    f = open(ds / "good.jsonl", "ab")  # noqa: SIM115 - the close is what we test
    f.write(b'{"id": 3, "name": "c"}\n{"id": "4", "name": "d"}\n')
    with pytest.raises(OSError) as e:
        f.close()
    assert e.value.errno == errno.EINVAL
    assert (ds / "good.jsonl").read_bytes() == good
    assert rejects(daemon)[0] == reject("good.jsonl", 6, "/id", "'4' is not of type 'integer'",
                                        1, 4)


def test_large_files_number_records_across_read_blocks(daemon: Any, people: Path) -> None:
    """Files larger than the validator's read block (1 MiB) and than the pipe that
    feeds it while they are written (8 MiB): record numbers stay exact."""
    line = b'{"id": 1, "name": "a fairly long name to make the lines longer"}\n'
    n = (9 << 20) // len(line) + 1000
    data = line * n + b'{"id": 1, "name": ""}\n' + line
    refused_new(people, "big.jsonl", data)
    assert rejects(daemon)[0] == reject("big.jsonl", n + 1, "/name", "'' should be non-empty", 1,
                                        n + 2)
    assert write_close(people / "big.jsonl", line * n) == 0


def test_large_csv_with_values_spanning_lines(daemon: Any, people: Path) -> None:
    """Quoted CSV values may hold newlines (RFC 4180), also in files larger than one
    read block; a valid file is accepted and a bad row is found by its number."""
    row = b'1,"' + b"A paragraph of text.\n" * 3 + b'",1.5\n'   # a text field
    n = (9 << 20) // len(row) + 1000
    data = b"id,name,score\n" + row * n
    assert write_close(people / "big.csv", data) == 0
    refused_overwrite(people, "big.csv", data + b"0,x,1\n")
    assert rejects(daemon)[0] == reject("big.csv", n + 1, "/id",
                                        "0 is less than the minimum of 1", 1, n + 1)


def test_csv_header_conversion_and_data_rows(daemon: Any, people: Path, tmp_path: Path
                                             ) -> None:
    ds = people
    # empty -> null: a null score is fine (a null day would not be: not a string)
    good = (b'id,name,score,ok,day\n1,ann,,true,2021-02-28\n2,bob,2.5,False,2020-02-29\n'
            b'3,"c, y",7,TRUE,2021-12-31\n')
    assert write_close(ds / "good.csv", good) == 0
    assert (ds / "good.csv").read_bytes() == good
    refused_new(ds, "day.csv", b"id,name,day\n1,a,2021-02-28\n2,b,\n")
    refused_new(ds, "int.csv", b"id,name\n1,a\n2.5,b\nx,c\n")
    refused_new(ds, "num.csv", b'id,name,score\n1,a,1e3\n2,b,"two\nlines"\n3,c,abc\n')
    refused_new(ds, "bool.csv", b"id,name,ok\n1,a,yes\n")
    refused_new(ds, "missing.csv", b"id\n1\n")
    refused_overwrite(ds, "good.csv", b"id,name\n0,a\n")
    src = tmp_path / "bad.csv"
    src.write_bytes(b"id,name\n1,a\n-4,b\n")
    r = cp(src, ds / "cp.csv")
    assert r.returncode == 1 and "failed to close" in r.stderr, r.stderr
    assert rejects(daemon) == [
        reject("cp.csv", 2, "/id", "-4 is less than the minimum of 1", 1, 2),
        reject("good.csv", 1, "/id", "0 is less than the minimum of 1", 1, 1),
        reject("missing.csv", 1, "", "'name' is a required property", 1, 1),
        reject("bool.csv", 1, "/ok", "'yes' is not of type 'boolean'", 1, 1),
        reject("num.csv", 2, "/score", "'two\\nlines' is not of type 'number', 'null'", 2, 3),
        reject("int.csv", 2, "/id", "'2.5' is not of type 'integer'", 2, 3),
        reject("day.csv", 2, "/day", "None is not of type 'string'", 1, 2),
    ]
    assert sorted(os.listdir(ds)) == ["good.csv"]


def test_csv_with_a_byte_order_mark(daemon: Any, people: Path, tmp_path: Path) -> None:
    """Excel saves "CSV UTF-8" with a BOM: such a file validates like any other."""
    src = tmp_path / "excel.csv"
    src.write_bytes(b"\xef\xbb\xbfid,name\r\n1,ann\r\n2,bob\r\n")
    r = cp(src, people / "excel.csv")
    assert r.returncode == 0, r.stderr
    assert (people / "excel.csv").read_bytes() == src.read_bytes()
    src.write_bytes(b"\xef\xbb\xbfid,name\r\n1,ann\r\n0,bob\r\n")
    r = cp(src, people / "excel.csv")
    assert r.returncode == 1 and "Invalid argument" in r.stderr, r.stderr
    assert (people / "excel.csv").read_bytes() == b"\xef\xbb\xbfid,name\r\n1,ann\r\n2,bob\r\n"
    assert rejects(daemon) == [reject("excel.csv", 2, "/id", "0 is less than the minimum of 1",
                                      1, 2)]


def test_csv_with_a_duplicate_column_name(daemon: Any, people: Path) -> None:
    """An odd CSV is refused (EINVAL) or accepted, never an I/O error that leaves
    uncommitted bytes visible."""
    result = write_close(people / "dup.csv", b"id,name,id\n1,a,x\n")
    assert result in (0, errno.EINVAL), errno.errorcode.get(result)
    if result == errno.EINVAL:
        assert not (people / "dup.csv").exists()


def test_csv_message_is_jsonschemas(daemon: Any, people: Path) -> None:
    """The message is jsonschema's own for the converted record (no paraphrase)."""
    refused_new(people, "s.csv", b"id,name,score\n1,a,x\n")
    judge = Draft202012Validator(PEOPLE, format_checker=Draft202012Validator.FORMAT_CHECKER)
    (error,) = judge.iter_errors({"id": 1, "name": "a", "score": "x"})
    assert rejects(daemon)[0]["message"] == error.message


def test_parquet_written_by_pyarrow_into_the_mount(daemon: Any, people: Path) -> None:
    ds = people
    good = pa.table({"id": [1, 2, 3], "name": ["a", "b", "c"], "score": [1.5, None, 2.0]})
    pq.write_table(good, ds / "good.parquet")
    assert pq.read_table(ds / "good.parquet").equals(good)
    before = sha(ds / "good.parquet")

    bad = pa.table({"id": [1, 2, 0, -1], "name": ["a", "b", "c", "d"]})
    with pytest.raises(OSError):
        pq.write_table(bad, ds / "new.parquet")   # Arrow reports the failed close
    assert not (ds / "new.parquet").exists()
    f = open(ds / "good.parquet", "wb")  # noqa: SIM115 - the close is what we test
    pq.write_table(bad, f)
    with pytest.raises(OSError) as e:
        f.close()
    assert e.value.errno == errno.EINVAL
    assert sha(ds / "good.parquet") == before
    no_name = pa.table({"id": pa.array([5, 6], pa.int32()), "name": [None, "x"]})
    assert write_close(ds / "n.parquet", parquet_bytes(no_name)) == errno.EINVAL
    assert rejects(daemon) == [
        reject("n.parquet", 1, "/name", "None is not of type 'string'", 1, 2),
        reject("good.parquet", 3, "/id", "0 is less than the minimum of 1", 2, 4),
        reject("new.parquet", 3, "/id", "0 is less than the minimum of 1", 2, 4),
    ]
    assert sorted(os.listdir(ds)) == ["good.parquet"]


def test_parallel_writers(daemon: Any, people: Path) -> None:
    """Files validated at the same time get each its own verdict."""
    def one(i: int) -> tuple[str, int]:
        bad = i % 3 == 0
        rows = "".join(f"{j},n{j}\n" for j in range(1, 2000))
        data = f"id,name\n{rows}{'0' if bad else '5'},x\n".encode()
        name = f"f{i:02d}.csv"
        return name, write_close(people / name, data)

    with ThreadPoolExecutor(12) as pool:
        results = dict(pool.map(one, range(36)))
    assert results == {f"f{i:02d}.csv": errno.EINVAL if i % 3 == 0 else 0 for i in range(36)}
    assert sorted(os.listdir(people)) == sorted(f"f{i:02d}.csv" for i in range(36) if i % 3)
    got = rejects(daemon)
    assert sorted(r["path"] for r in got) == [f"f{i:02d}.csv" for i in range(0, 36, 3)]
    assert {(r["record"], r["pointer"], r["failed_records"], r["records"]) for r in got} == {
        (2000, "/id", 1, 2000)}


def test_subdirectories_and_rejects_of_many_files(daemon: Any, people: Path) -> None:
    (people / "a" / "b").mkdir(parents=True)
    refused_new(people / "a" / "b", "x.jsonl", b'{"id": 1}\n')
    assert rejects(daemon) == [reject("a/b/x.jsonl", 1, "", "'name' is a required property",
                                      1, 1)]


# ------------------------------------------------------------------ nothing is lost
def test_rejections_lose_nothing_committed(daemon: Any, people: Path, tmp_path: Path) -> None:
    ds = people
    (ds / "sub").mkdir()
    files = {"a.csv": b"id,name\n1,a\n", "b.jsonl": b'{"id": 2, "name": "b"}\n',
             "sub/c.json": b'[{"id": 3, "name": "c"}]', "notes.txt": b"free text",
             "d.parquet": parquet_bytes(pa.table({"id": [4], "name": ["d"]}))}
    for name, data in files.items():
        assert write_close(ds / name, data) == 0
    (ds / "a.csv").chmod(0o600)
    os.setxattr(ds / "a.csv", "user.origin", b"lab")
    os.utime(ds / "a.csv", ns=(1_000_000_000, 1_000_000_000))
    daemon.ctl("snapshot", "ds", "-m", "good", check=True)
    (ds / "b.jsonl").write_bytes(files["b.jsonl"] + b'{"id": 5, "name": "e"}\n')
    files["b.jsonl"] += b'{"id": 5, "name": "e"}\n'

    for name in ["a.csv", "b.jsonl", "sub/c.json", "d.parquet"]:
        refused_overwrite(ds, name, b'{"id": "bad"}\n' if "json" in name else b"id\nbad\n")
    refused_new(ds, "sub/new.csv", b"id,name\nbad,x\n")
    (ds / "tmp").write_bytes(b"id,name\nbad,x\n")
    with pytest.raises(OSError) as e:
        os.rename(ds / "tmp", ds / "a.csv")
    assert e.value.errno == errno.EINVAL
    (ds / "tmp").unlink()

    def check() -> None:
        for name, data in files.items():
            assert (ds / name).read_bytes() == data, name
        st = (ds / "a.csv").stat()       # a refused overwrite keeps the attributes too
        assert (oct(st.st_mode & 0o7777), st.st_mtime_ns) == (oct(0o600), 1_000_000_000)
        assert os.getxattr(ds / "a.csv", "user.origin") == b"lab"
        v1 = {"a.csv", "sub/c.json", "notes.txt", "d.parquet"}
        for name in v1:
            assert (ds / "@v1" / name).read_bytes() == files[name], name
        assert (ds / "@v1" / "b.jsonl").read_bytes() == b'{"id": 2, "name": "b"}\n'
        assert sorted(os.listdir(ds)) == sorted(["a.csv", "b.jsonl", "sub", "notes.txt",
                                                 "d.parquet"])
        assert os.listdir(ds / "sub") == ["c.json"]
        d = daemon.ctl_json("diff", "ds@v1", "ds")
        assert (d["added"], d["removed"], d["renamed"]) == ([], [], [])
        assert [m["path"] for m in d["modified"]] == ["b.jsonl"]
        assert len(rejects(daemon)) == 6

    check()
    assert daemon.stop() == 0
    daemon.start()
    check()
    assert "no damage" in daemon.ctl("fsck", "--read-data", check=True).stdout


# ------------------------------------------------------------------ globs
def test_files_not_matching_the_globs_are_not_validated(daemon: Any, ds: Path,
                                                        tmp_path: Path) -> None:
    bad = b'{"id": "no"}\n'
    assert write_close(ds / "before.jsonl", bad) == 0       # no schema yet
    r = set_schema(daemon, tmp_path, PEOPLE)
    assert r.stdout == "ds: schema version 1 (globs: *.jsonl, *.ndjson, *.csv, *.parquet, " \
        "*.json)\n"
    for name in ["notes.txt", "data.JSONL.bak", "data", "x.jsonl.tmp"]:
        assert write_close(ds / name, bad) == 0, name
    refused_new(ds, "x.ndjson", bad)
    refused_new(ds, "x.jsonl", bad)

    r = set_schema(daemon, tmp_path, PEOPLE, "--glob", "*.csv,raw/*.jsonl")
    assert r.stdout == "ds: schema version 2 (globs: *.csv, raw/*.jsonl)\n"
    (ds / "raw").mkdir()
    assert write_close(ds / "x.jsonl", bad) == 0            # no longer matched
    assert write_close(ds / "x.json", b"not even json") == 0
    refused_new(ds / "raw", "y.jsonl", bad)
    refused_new(ds, "y.csv", b"id\nno\n")
    assert [(r["path"], r["schema_version"]) for r in rejects(daemon)] == [
        ("y.csv", 2), ("raw/y.jsonl", 2), ("x.jsonl", 1), ("x.ndjson", 1)]
    assert daemon.ctl_json("schema", "show", "ds")["globs"] == ["*.csv", "raw/*.jsonl"]


def test_directory_renamed_into_a_path_glob_is_validated(daemon: Any, ds: Path,
                                                         tmp_path: Path) -> None:
    """A rename that gives files names matching the globs validates them, also when
    it is their directory that moves (raw/*.csv)."""
    set_schema(daemon, tmp_path, PEOPLE, "--glob", "raw/*.csv")
    (ds / "staging").mkdir()
    (ds / "staging" / "a.csv").write_bytes(b"id,name\nbad,x\n")
    with pytest.raises(OSError) as e:
        os.rename(ds / "staging", ds / "raw")
    assert e.value.errno == errno.EINVAL
    assert (ds / "staging" / "a.csv").read_bytes() == b"id,name\nbad,x\n"
    assert not (ds / "raw").exists()


# ------------------------------------------------------------------ renames
def test_rename_into_a_matching_name_is_validated(daemon: Any, people: Path) -> None:
    ds = people
    bad, good = b"id,name\n1,a\nx,b\n", b"id,name\n1,a\n"
    (ds / "up.tmp").write_bytes(bad)
    with pytest.raises(OSError) as e:
        os.rename(ds / "up.tmp", ds / "data.csv")
    assert e.value.errno == errno.EINVAL
    assert (ds / "up.tmp").read_bytes() == bad
    assert not (ds / "data.csv").exists()
    assert sorted(os.listdir(ds)) == ["up.tmp"]

    (ds / "data.csv").write_bytes(good)
    with pytest.raises(OSError) as e:
        os.rename(ds / "up.tmp", ds / "data.csv")            # over an existing file
    assert e.value.errno == errno.EINVAL
    assert (ds / "data.csv").read_bytes() == good
    assert (ds / "up.tmp").read_bytes() == bad
    (ds / "sub").mkdir()
    with pytest.raises(OSError) as e:
        os.rename(ds / "up.tmp", ds / "sub" / "d.csv")       # into another directory
    assert e.value.errno == errno.EINVAL

    (ds / "ok.tmp").write_bytes(b"id,name\n2,b\n")
    os.rename(ds / "ok.tmp", ds / "data.csv")
    assert (ds / "data.csv").read_bytes() == b"id,name\n2,b\n"
    assert rejects(daemon) == [
        reject("sub/d.csv", 2, "/id", "'x' is not of type 'integer'", 1, 2),
        reject("data.csv", 2, "/id", "'x' is not of type 'integer'", 1, 2),
        reject("data.csv", 2, "/id", "'x' is not of type 'integer'", 1, 2),
    ]


def test_rsync_of_a_bad_file_leaves_nothing(daemon: Any, people: Path, tmp_path: Path
                                            ) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.csv").write_bytes(b"id,name\n1,a\n")
    (src / "bad.csv").write_bytes(b"id,name\n1,a\n2,\n")
    r = subprocess.run(["rsync", "-a", f"{src}/", f"{people}/"], capture_output=True,
                       text=True)
    assert r.returncode != 0
    assert "Invalid argument" in r.stderr, r.stderr
    assert sorted(os.listdir(people)) == ["good.csv"]   # no target, no .bad.csv.XXXXXX
    assert (people / "good.csv").read_bytes() == b"id,name\n1,a\n"
    (got,) = rejects(daemon)
    assert got == reject("bad.csv", 2, "/name", "None is not of type 'string'", 1, 2)


def test_rename_between_matching_names_is_not_validated_again(daemon: Any, ds: Path,
                                                              tmp_path: Path) -> None:
    set_schema(daemon, tmp_path, {"type": "object"})
    (ds / "sub").mkdir()
    (ds / "a.csv").write_bytes(b"id\nx\n")
    set_schema(daemon, tmp_path, PEOPLE)             # a.csv no longer passes
    os.rename(ds / "a.csv", ds / "b.csv")
    os.rename(ds / "b.csv", ds / "sub" / "c.csv")
    assert (ds / "sub" / "c.csv").read_bytes() == b"id\nx\n"
    daemon.stop()
    daemon.start()                                    # the kernel learns names anew
    os.rename(ds / "sub" / "c.csv", ds / "d.csv")
    assert (ds / "d.csv").read_bytes() == b"id\nx\n"
    assert rejects(daemon) == []


# ------------------------------------------------------------------ schema versions
def test_schema_versions_history_show_and_snapshots(daemon: Any, ds: Path, tmp_path: Path
                                                    ) -> None:
    (ds / "a.txt").write_bytes(b"x")
    daemon.ctl("snapshot", "ds", check=True)                       # v1: no schema
    first = {"type": "object", "properties": {"id": {"type": "integer"}}}
    set_schema(daemon, tmp_path, first)
    daemon.ctl("snapshot", "ds", check=True)                       # v2: schema 1
    r = set_schema(daemon, tmp_path, PEOPLE, "--glob", "*.csv", "--glob", "*.jsonl")
    assert r.stdout == "ds: schema version 2 (globs: *.csv, *.jsonl)\n"
    daemon.ctl("snapshot", "ds", check=True)                       # v3: schema 2
    daemon.ctl("snapshot", "ds", check=True)                       # v4: schema 2

    history = daemon.ctl_json("schema", "history", "ds")
    assert [(h["dataset"], h["version"], h["schema"], h["globs"], h["uid"], h["user"])
            for h in history] == [
        ("ds", 1, first, ["*.jsonl", "*.ndjson", "*.csv", "*.parquet", "*.json"],
         os.getuid(), ROOT_USER),
        ("ds", 2, PEOPLE, ["*.csv", "*.jsonl"], os.getuid(), ROOT_USER)]
    assert all(TIME.fullmatch(h["time"]) for h in history)
    table = daemon.ctl("schema", "history", "ds", check=True).stdout.splitlines()
    assert table[0].split() == ["VERSION", "TIME", "USER", "GLOBS"]
    assert re.fullmatch(rf" *1  \S+Z  {ROOT_USER}  \*\.jsonl, \*\.ndjson, \*\.csv, "
                        r"\*\.parquet, \*\.json", table[1]), table
    assert re.fullmatch(rf" *2  \S+Z  {ROOT_USER}  \*\.csv, \*\.jsonl", table[2]), table

    assert json.loads(daemon.ctl("schema", "show", "ds", "--version", "1",
                                 check=True).stdout) == first
    assert json.loads(daemon.ctl("schema", "show", "ds", check=True).stdout) == PEOPLE
    assert daemon.ctl_json("schema", "show", "ds", "--version", "1") == history[0]
    assert daemon.ctl_json("schema", "show", "ds") == history[1]

    versions = daemon.ctl_json("versions", "ds")
    assert [(v["number"], v["schema"]) for v in versions] == [(4, 2), (3, 2), (2, 1),
                                                              (1, None)]

    # an invalid schema is refused with the validator's message and changes nothing
    for bad in [{"type": "integr"}, {"properties": {"id": {"minimum": "1"}}},
                {"required": "id"}]:
        fails(daemon.ctl("schema", "set", "ds", str(schema_file(tmp_path, bad))), 1,
              schema_message(bad))
    assert len(daemon.ctl_json("schema", "history", "ds")) == 2

    # kept in the store: a new state dir over the same store still has them
    assert daemon.stop() == 0
    subprocess.run(["rm", "-rf", str(daemon.state)], check=True)
    daemon.start()
    assert daemon.ctl_json("schema", "history", "ds") == history
    assert [(v["number"], v["schema"]) for v in daemon.ctl_json("versions", "ds")] == [
        (4, 2), (3, 2), (2, 1), (1, None)]
    refused_new(ds, "x.csv", b"id\n1\n")


def test_schema_command_errors(daemon: Any, ds: Path, tmp_path: Path) -> None:
    good = schema_file(tmp_path, PEOPLE)
    notjson = tmp_path / "not.json"
    notjson.write_text("{ nope")
    fails(daemon.ctl("schema", "set", "ds", str(notjson)), 2, "not.json", "is not JSON")
    fails(daemon.ctl("schema", "set", "ds", str(tmp_path / "missing.json")), 2,
          "missing.json")
    fails(daemon.ctl("schema", "set", "nope", str(good)), 1, "no dataset 'nope'")
    fails(daemon.ctl("schema", "show", "ds"), 1, "ds has no schema")
    assert "ds has no schema" in daemon.ctl("schema", "history", "ds", check=True).stdout
    assert daemon.ctl_json("schema", "history", "ds") == []
    assert daemon.ctl_json("rejects", "ds") == []
    fails(daemon.ctl("schema", "history", "nope"), 1, "no dataset 'nope'")
    assert daemon.ctl("rejects", "ds", check=True).stdout == "ds has no rejected writes\n"
    fails(daemon.ctl("rejects", "nope"), 1, "no dataset 'nope'")
    set_schema(daemon, tmp_path, PEOPLE)
    fails(daemon.ctl("schema", "show", "ds", "--version", "7"), 1, "no schema version 7")
    fails(daemon.ctl("schema", "set", "ds", str(good), "--glob", ","), 2, "--glob")
    for args in (["schema"], ["schema", "set", "ds"], ["schema", "show", "ds", "--version",
                                                       "x"], ["dataset"]):
        assert daemon.ctl(*args).returncode == 2, args


def test_rejects_table(daemon: Any, people: Path) -> None:
    refused_new(people, "a.csv", b"id,name\n1,a\n2,b\n0,c\n")
    refused_new(people, "b.jsonl", b'{"id": 1, "name": "a"}\n{"name": "b"}\n')
    lines = daemon.ctl("rejects", "ds", check=True).stdout.splitlines()
    assert lines[0].split() == ["TIME", "USER", "PATH", "RECORD", "POINTER", "MESSAGE",
                                "FAILED"]
    assert re.fullmatch(rf"\S+Z  {ROOT_USER}  b\.jsonl +2  -  +'id' is a required "
                        r"property +1/2", lines[1]), lines
    assert re.fullmatch(rf"\S+Z  {ROOT_USER}  a\.csv +3  /id +0 is less than the minimum "
                        r"of 1 +1/3", lines[2]), lines


# ------------------------------------------------------------------ dataset create
def test_dataset_create(daemon: Any, tmp_path: Path) -> None:
    s = schema_file(tmp_path, PEOPLE)
    r = daemon.ctl("dataset", "create", "plain", check=True)
    assert r.stdout == "plain: dataset created\n"
    assert (daemon.mnt / "plain").is_dir()
    r = daemon.ctl("dataset", "create", "typed", "--schema", str(s), "--glob", "*.csv",
                   check=True)
    assert r.stdout == "typed: dataset created; schema version 1 (globs: *.csv)\n"
    refused_new(daemon.mnt / "typed", "x.csv", b"id\nq\n")
    assert write_close(daemon.mnt / "typed" / "x.jsonl", b"whatever") == 0
    doc = daemon.ctl_json("dataset", "create", "j", "--schema", str(s))
    assert doc["dataset"] == "j" and doc["schema"]["version"] == 1
    assert doc["schema"]["schema"] == PEOPLE
    fails(daemon.ctl("dataset", "create", "plain"), 1)
    fails(daemon.ctl("dataset", "create", "bad name"), 1, "invalid dataset name")
    fails(daemon.ctl("dataset", "create", "g", "--glob", "*.csv"), 2, "--glob")
    assert sorted(os.listdir(daemon.mnt)) == ["j", "plain", "typed"]


def test_dataset_create_with_an_invalid_schema_creates_nothing(daemon: Any, tmp_path: Path
                                                               ) -> None:
    bad = {"type": 5}
    fails(daemon.ctl("dataset", "create", "d", "--schema", str(schema_file(tmp_path, bad))),
          1, schema_message(bad))
    assert os.listdir(daemon.mnt) == []


# ------------------------------------------------------------------ another user
@pytest.mark.skipif(os.geteuid() != 0, reason="setpriv to nobody needs root")
def test_rejects_name_the_writing_user(daemon_factory: Any, tmp_path: Path) -> None:
    daemon = daemon_factory(["--allow-other"]).start()
    ds = daemon.mnt / "ds"
    ds.mkdir()
    ds.chmod(0o777)
    for d in (daemon.root, daemon.state):   # nobody must get to the mount and the socket
        d.chmod(d.stat().st_mode | 0o011)
    set_schema(daemon, tmp_path, PEOPLE)
    script = ("import os, sys\n"
              "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)\n"
              "os.write(fd, b'id,name\\n1,a\\n2,\\n')\n"
              "try:\n    os.close(fd)\nexcept OSError as e:\n    print(e.errno)\n")
    r = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                        "/usr/bin/python3", "-c", script, str(ds / "x.csv")],
                       capture_output=True, text=True)
    assert (r.returncode, r.stdout.strip()) == (0, str(errno.EINVAL)), r.stderr
    assert not (ds / "x.csv").exists()
    assert rejects(daemon) == [reject("x.csv", 2, "/name", "None is not of type 'string'",
                                      1, 2, uid=NOBODY, user=pwd.getpwuid(NOBODY).pw_name)]
    assert rejects(daemon)[0]["user"] == "nobody"
    # the same for a rename by nobody (mv words EINVAL from rename(2) as "cannot move
    # ... to a subdirectory of itself": os.rename shows the errno)
    script = ("import os, sys\n"
              "open(sys.argv[1], 'wb').write(b'id,name\\nq,a\\n')\n"
              "try:\n    os.rename(sys.argv[1], sys.argv[1] + '.csv')\n"
              "except OSError as e:\n    print(e.errno)\n")
    r = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                        "/usr/bin/python3", "-c", script, str(ds / "t")],
                       capture_output=True, text=True)
    assert (r.returncode, r.stdout.strip()) == (0, str(errno.EINVAL)), r.stderr
    assert (ds / "t").exists() and not (ds / "t.csv").exists()
    got = rejects(daemon)[0]
    assert (got["path"], got["uid"], got["user"]) == ("t.csv", NOBODY, "nobody")


# ------------------------------------------------------------------ schema diff
V1 = {"type": "object",
      "properties": {"id": {"type": "integer"}, "name": {"type": "string"},
                     "age": {"type": "integer", "minimum": 0}},
      "required": ["id"]}
V2 = {"type": "object",
      "properties": {"id": {"type": "string"}, "name": {"type": "string", "maxLength": 50},
                     "email": {"type": "string", "format": "email"},
                     "tags": {"type": "array", "items": {"type": "string"}}},
      "required": ["id", "name"], "additionalProperties": False}
V3 = {**V2, "properties": {**V2["properties"],
                           "tags": {"type": "array", "items": {"type": "integer"}}}}


def test_schema_diff(daemon: Any, ds: Path, tmp_path: Path) -> None:
    (ds / "f").write_bytes(b"x")
    daemon.ctl("snapshot", "ds", check=True)          # v1: no schema
    set_schema(daemon, tmp_path, V1)
    daemon.ctl("snapshot", "ds", check=True)          # v2: schema 1
    set_schema(daemon, tmp_path, V2)
    daemon.ctl("snapshot", "ds", check=True)          # v3: schema 2
    set_schema(daemon, tmp_path, V3)                  # live: schema 3

    d = daemon.ctl_json("diff", "ds@v2", "ds@v3", "--schema")["schema"]
    root = d["changed"][0]
    assert root["pointer"] in ("", "/")   # "" is right: test_schema_diff_root_pointer
    root["pointer"] = ""
    assert d == {
        "a_version": 1, "b_version": 2,
        "added": [{"pointer": "/properties/email", "schema": {"type": "string",
                                                              "format": "email"}},
                  {"pointer": "/properties/tags", "schema": V2["properties"]["tags"]}],
        "removed": [{"pointer": "/properties/age", "schema": {"type": "integer",
                                                              "minimum": 0}}],
        "changed": [
            {"pointer": "", "what": "additionalProperties", "old": None, "new": False},
            {"pointer": "/properties/id", "what": "type", "old": "integer", "new": "string"},
            {"pointer": "/properties/name", "what": "maxLength", "old": None, "new": 50},
            {"pointer": "/properties/name", "what": "required", "old": False, "new": True},
        ]}
    text = daemon.ctl("diff", "ds@v2", "ds@v3", "--schema", check=True).stdout.splitlines()
    assert text == [
        '+ /properties/email {"format": "email", "type": "string"}',
        '+ /properties/tags {"items": {"type": "string"}, "type": "array"}',
        '- /properties/age {"minimum": 0, "type": "integer"}',
        "~ (root) additionalProperties: null -> false",
        '~ /properties/id type: "integer" -> "string"',
        "~ /properties/name maxLength: null -> 50",
        "~ /properties/name required: false -> true",
        "schema v1 -> schema v2: 2 added, 1 removed, 4 changed"]

    live = daemon.ctl_json("diff", "ds@v3", "ds", "--schema")["schema"]
    assert live == {"a_version": 2, "b_version": 3, "added": [], "removed": [],
                    "changed": [{"pointer": "/properties/tags/items", "what": "type",
                                 "old": "string", "new": "integer"}]}
    same = daemon.ctl_json("diff", "ds@v3", "ds@latest", "--schema")["schema"]
    assert same == {"a_version": 2, "b_version": 2, "added": [], "removed": [],
                    "changed": []}
    none = daemon.ctl_json("diff", "ds@v1", "ds@v2", "--schema")["schema"]
    assert (none["a_version"], none["b_version"], none["removed"]) == (None, 1, [])
    assert {a["pointer"] for a in none["added"]} >= {"/properties/id", "/properties/name",
                                                     "/properties/age"}
    assert daemon.ctl("diff", "ds@v1", "ds@v2", "--schema", check=True).stdout \
        .splitlines()[-1].startswith("no schema -> schema v1: ")


def test_schema_diff_root_pointer(daemon: Any, ds: Path, tmp_path: Path) -> None:
    """A keyword of the root schema changes at the JSON pointer "" (RFC 6901: "/"
    would be the member named "" of the root)."""
    set_schema(daemon, tmp_path, {"type": "object"})
    (ds / "f").write_bytes(b"x")
    daemon.ctl("snapshot", "ds", check=True)
    set_schema(daemon, tmp_path, {"type": "object", "additionalProperties": False})
    d = daemon.ctl_json("diff", "ds@v1", "ds", "--schema")["schema"]
    assert d["changed"] == [{"pointer": "", "what": "additionalProperties", "old": None,
                             "new": False}]


# ------------------------------------------------------------------ row diff
def csv_text(rows: list[tuple[Any, ...]], header: str) -> bytes:
    return (header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows)).encode()


def jsonl(records: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def rows_of(daemon: Any, *args: str) -> dict[str, Any]:
    return daemon.ctl_json("diff", *args)["rows"]


def by_path(rows: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in rows["files"]}


def file_diff(path: str, fmt: str, added: list[Any] = (), removed: list[Any] = (),  # type: ignore[assignment]
              changed: list[Any] = (), counts: tuple[int, int, int] | None = None  # type: ignore[assignment]
              ) -> dict[str, Any]:
    a, r, c = counts or (len(added), len(removed), len(changed))
    return {"path": path, "format": fmt, "added": a, "removed": r, "changed": c,
            "added_rows": list(added), "removed_rows": list(removed),
            "changed_rows": list(changed)}


@pytest.fixture
def two_versions(daemon: Any, ds: Path) -> Path:
    """v1 and v2 of a dataset with scripted changes in CSV, JSONL and Parquet files."""
    (ds / "people.csv").write_bytes(csv_text([(1, "ann", 30), (2, "bob", 40), (3, "cy", 50)],
                                             "id,name,age"))
    (ds / "same.csv").write_bytes(b"id,x\n1,a\n")
    (ds / "gone.jsonl").write_bytes(jsonl([{"id": i, "v": i * 10} for i in (1, 2, 3)]))
    pq.write_table(pa.table({"id": [1, 2, 3], "score": [1.0, 2.0, 3.0]}), ds / "s.parquet")
    (ds / "notes.txt").write_bytes(b"one")
    daemon.ctl("snapshot", "ds", check=True)
    (ds / "people.csv").write_bytes(csv_text([(1, "ann", 31), (3, "cy", 50), (4, "dee", 20)],
                                             "id,name,age"))
    (ds / "gone.jsonl").unlink()
    (ds / "new.jsonl").write_bytes(jsonl([{"id": i} for i in range(1, 31)]))
    pq.write_table(pa.table({"id": [1, 2, 4], "score": [1.0, 2.5, 4.0]}), ds / "s.parquet")
    (ds / "notes.txt").write_bytes(b"two")
    daemon.ctl("snapshot", "ds", check=True)
    return ds


def test_row_diff_by_key(daemon: Any, two_versions: Path) -> None:
    rows = rows_of(daemon, "ds@v1", "ds@v2", "--rows", "--key", "id")
    assert rows["key"] == ["id"]
    assert rows["files"] == [
        file_diff("gone.jsonl", "jsonl", removed=[{"id": i, "v": i * 10} for i in (1, 2, 3)]),
        file_diff("new.jsonl", "jsonl", added=[{"id": i} for i in range(1, 21)],
                  counts=(30, 0, 0)),
        file_diff("people.csv", "csv", added=[{"id": 4, "name": "dee", "age": 20}],
                  removed=[{"id": 2, "name": "bob", "age": 40}],
                  changed=[{"key": {"id": 1}, "columns": ["age"],
                            "old": {"id": 1, "name": "ann", "age": 30},
                            "new": {"id": 1, "name": "ann", "age": 31}}]),
        file_diff("s.parquet", "parquet", added=[{"id": 4, "score": 4.0}],
                  removed=[{"id": 3, "score": 3.0}],
                  changed=[{"key": {"id": 2}, "columns": ["score"],
                            "old": {"id": 2, "score": 2.0}, "new": {"id": 2, "score": 2.5}}]),
    ]
    limited = by_path(rows_of(daemon, "ds@v1", "ds@v2", "--rows", "--key", "id", "--limit",
                              "5"))
    assert limited["new.jsonl"]["added_rows"] == [{"id": i} for i in range(1, 6)]
    assert limited["new.jsonl"]["added"] == 30
    text = daemon.ctl("diff", "ds@v1", "ds@v2", "--rows", "--key", "id", "--limit", "2",
                      check=True).stdout.splitlines()
    assert text == [
        "gone.jsonl (jsonl): 0 added, 3 removed, 0 changed",
        '  - {"id": 1, "v": 10}', '  - {"id": 2, "v": 20}',
        "  ... 1 more rows not listed (--limit)",
        "new.jsonl (jsonl): 30 added, 0 removed, 0 changed",
        '  + {"id": 1}', '  + {"id": 2}', "  ... 28 more rows not listed (--limit)",
        "people.csv (csv): 1 added, 1 removed, 1 changed",
        '  + {"id": 4, "name": "dee", "age": 20}', '  - {"id": 2, "name": "bob", "age": 40}',
        '  ~ {"id": 1}: age: 30 -> 31',
        "s.parquet (parquet): 1 added, 1 removed, 1 changed",
        '  + {"id": 4, "score": 4.0}', '  - {"id": 3, "score": 3.0}',
        '  ~ {"id": 2}: score: 2.0 -> 2.5',
        "4 tabular files compared, 4 with row changes; rows matched by key id"]


def test_row_diff_without_key(daemon: Any, two_versions: Path) -> None:
    rows = rows_of(daemon, "ds@v1", "ds@v2", "--rows")
    assert rows["key"] is None
    people = by_path(rows)["people.csv"]
    assert people == file_diff(
        "people.csv", "csv",
        added=[{"id": 1, "name": "ann", "age": 31}, {"id": 4, "name": "dee", "age": 20}],
        removed=[{"id": 1, "name": "ann", "age": 30}, {"id": 2, "name": "bob", "age": 40}])
    assert [f["path"] for f in rows["files"]] == ["gone.jsonl", "new.jsonl", "people.csv",
                                                  "s.parquet"]
    live = rows_of(daemon, "ds@v2", "ds", "--rows")
    assert live == {"key": None, "files": []}


def test_row_diff_duplicate_rows(daemon: Any, ds: Path) -> None:
    """Without a key rows are a multiset: each surplus copy is one added or removed row,
    and (within the limit) each is listed."""
    a, b, c = {"k": "a", "n": 1}, {"k": "b", "n": 2}, {"k": "c", "n": 3}
    (ds / "d.jsonl").write_bytes(jsonl([a, a, b]))
    daemon.ctl("snapshot", "ds", check=True)
    (ds / "d.jsonl").write_bytes(jsonl([a, b, b, b, c]))
    rows = rows_of(daemon, "ds@v1", "ds", "--rows")
    assert rows["files"] == [file_diff("d.jsonl", "jsonl", added=[b, b, c], removed=[a])]
    limited = rows_of(daemon, "ds@v1", "ds", "--rows", "--limit", "2")["files"][0]
    assert (limited["added"], limited["added_rows"]) == (3, [b, b])


def test_row_diff_composite_key(daemon: Any, ds: Path) -> None:
    (ds / "m.jsonl").write_bytes(jsonl([{"id": 1, "part": "a", "v": 1},
                                        {"id": 1, "part": "b", "v": 2},
                                        {"id": 2, "part": "a", "v": 3}]))
    daemon.ctl("snapshot", "ds", check=True)
    (ds / "m.jsonl").write_bytes(jsonl([{"id": 1, "part": "a", "v": 1},
                                        {"id": 1, "part": "b", "v": 5},
                                        {"id": 2, "part": "b", "v": 3}]))
    rows = rows_of(daemon, "ds@v1", "ds", "--rows", "--key", "id,part")
    assert rows == {"key": ["id", "part"], "files": [file_diff(
        "m.jsonl", "jsonl", added=[{"id": 2, "part": "b", "v": 3}],
        removed=[{"id": 2, "part": "a", "v": 3}],
        changed=[{"key": {"id": 1, "part": "b"}, "columns": ["v"],
                  "old": {"id": 1, "part": "b", "v": 2},
                  "new": {"id": 1, "part": "b", "v": 5}}])]}
    fails(daemon.ctl("diff", "ds@v1", "ds", "--rows", "--key", "nope"), 1, "nope")
    fails(daemon.ctl("diff", "ds@v1", "ds", "--key", "id"), 2, "--rows")
    assert daemon.ctl("diff", "ds@v1", "ds", "--rows", "--limit", "-1").returncode == 2
    counts = rows_of(daemon, "ds@v1", "ds", "--rows", "--key", "id,part", "--limit", "0")
    assert counts["files"] == [file_diff("m.jsonl", "jsonl", counts=(1, 1, 1))]


def test_row_diff_type_change(daemon: Any, ds: Path) -> None:
    """A value that changes type (1 -> "1") is a changed row, shown with its real
    old and new values."""
    (ds / "t.jsonl").write_bytes(jsonl([{"id": 1, "v": 1}, {"id": 2, "v": 2}]))
    daemon.ctl("snapshot", "ds", check=True)
    (ds / "t.jsonl").write_bytes(jsonl([{"id": 1, "v": "1"}, {"id": 2, "v": "x"}]))
    rows = rows_of(daemon, "ds@v1", "ds", "--rows", "--key", "id")
    assert rows["files"] == [file_diff("t.jsonl", "jsonl", changed=[
        {"key": {"id": 1}, "columns": ["v"], "old": {"id": 1, "v": 1},
         "new": {"id": 1, "v": "1"}},
        {"key": {"id": 2}, "columns": ["v"], "old": {"id": 2, "v": 2},
         "new": {"id": 2, "v": "x"}}])]
    rows = rows_of(daemon, "ds@v1", "ds", "--rows")
    assert rows["files"] == [file_diff(
        "t.jsonl", "jsonl", added=[{"id": 1, "v": "1"}, {"id": 2, "v": "x"}],
        removed=[{"id": 1, "v": 1}, {"id": 2, "v": 2}])]


def test_row_diff_json_keys_first_seen_in_later_records(daemon: Any, ds: Path) -> None:
    (ds / "j.json").write_bytes(b'[{"id": 1}, {"id": 2, "x": 5}]')
    daemon.ctl("snapshot", "ds", check=True)
    (ds / "j.json").write_bytes(b'[{"id": 1}, {"id": 2, "x": 6}]')
    rows = rows_of(daemon, "ds@v1", "ds", "--rows", "--key", "id")
    assert rows["files"] == [file_diff("j.json", "json", changed=[
        {"key": {"id": 2}, "columns": ["x"], "old": {"id": 2, "x": 5},
         "new": {"id": 2, "x": 6}}])]


def test_row_diff_of_a_column_with_mixed_types(daemon: Any, ds: Path, tmp_path: Path) -> None:
    """JSONL whose column holds values of several types (valid for a schema with a
    type list) can still be diffed."""
    set_schema(daemon, tmp_path, {"type": "object", "properties": {
        "v": {"type": ["integer", "string"]}}})
    (ds / "m.jsonl").write_bytes(jsonl([{"id": 1, "v": 1}, {"id": 2, "v": "two"}]))
    daemon.ctl("snapshot", "ds", check=True)
    (ds / "m.jsonl").write_bytes(jsonl([{"id": 1, "v": 1}, {"id": 2, "v": "deux"}]))
    rows = rows_of(daemon, "ds@v1", "ds", "--rows", "--key", "id")
    assert rows["files"] == [file_diff("m.jsonl", "jsonl", changed=[
        {"key": {"id": 2}, "columns": ["v"], "old": {"id": 2, "v": "two"},
         "new": {"id": 2, "v": "deux"}}])]


def test_row_diff_of_csv_with_values_spanning_lines(daemon: Any, ds: Path) -> None:
    """A text column with newlines (RFC 4180 quoting) in a CSV of several MiB."""
    para = "A paragraph of text.\n" * 3

    def make(changed: str) -> bytes:
        rows = [f'{i},"{changed if i == 5 else para}"\n' for i in range(150_000)]
        return ("id,text\n" + "".join(rows)).encode()

    (ds / "docs" / "big.csv").parent.mkdir()
    (ds / "docs" / "big.csv").write_bytes(make(para))
    daemon.ctl("snapshot", "ds", check=True)
    (ds / "docs" / "big.csv").write_bytes(make("edited\ntext"))
    rows = rows_of(daemon, "ds@v1", "ds", "--rows", "--key", "id")
    assert rows["files"] == [file_diff("docs/big.csv", "csv", changed=[
        {"key": {"id": 5}, "columns": ["text"], "old": {"id": 5, "text": para},
         "new": {"id": 5, "text": "edited\ntext"}}])]


# ------------------------------------------------------------------ validated as written
STREAMED = "validated ds/{} while it was written"


def big_csv(rows: int, bad_at: int | None = None) -> bytes:
    """A PEOPLE CSV of about 60 bytes a row; row bad_at (1-based) has id 0."""
    out = [b"id,name,score,ok,day\n"]
    for i in range(1, rows + 1):
        ident = 0 if i == bad_at else i
        out.append(b"%d,person number %08d,%d.5,true,2024-01-%02d\n" % (ident, i, i % 97,
                                                                         i % 28 + 1))
    return b"".join(out)


def test_a_big_file_written_front_to_back_is_validated_as_it_arrives(
        daemon: Any, people: Path, tmp_path: Path) -> None:
    """Past the first cut (8 MiB here) validation runs beside the writes; the verdict
    and the rejects record are those of the whole file."""
    n = 400_000                                   # ~22 MiB
    good = big_csv(n)
    src = tmp_path / "good.csv"
    src.write_bytes(good)
    assert cp(src, people / "good.csv").returncode == 0
    assert sha(people / "good.csv") == hashlib.sha256(good).hexdigest()
    assert STREAMED.format("good.csv") in daemon.log.read_text()
    bad = big_csv(n, bad_at=n - 5)                # in the last bytes: found at close
    refused_overwrite(people, "good.csv", bad)
    early = big_csv(n, bad_at=7)                  # in the first block: found early
    refused_new(people, "early.csv", early)
    assert rejects(daemon)[:2] == [
        reject("early.csv", 7, "/id", "0 is less than the minimum of 1", 1, n),
        reject("good.csv", n - 5, "/id", "0 is less than the minimum of 1", 1, n)]
    assert STREAMED.format("early.csv") in daemon.log.read_text()
    assert (people / "good.csv").read_bytes() == good


def seek_back_and_write(path: Path, data: bytes, at: int, patch: bytes) -> int:
    """Write data front to back, then patch bytes at `at`; close()'s errno or 0.
    O_DIRECT: the kernel's page cache would otherwise merge the patch into pages
    not yet sent, and the daemon would see the final bytes front to back."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.pwrite(fd, patch, at)
    finally:
        try:
            os.close(fd)
        except OSError as e:
            return e.errno or -1
    return 0


def test_a_big_file_not_written_front_to_back_is_judged_as_it_ends(
        daemon: Any, people: Path) -> None:
    """A write behind the end or a truncate makes what was validated meanwhile
    worthless: the final content is validated at close, whatever it is."""
    n = 400_000
    bad = big_csv(n, bad_at=10)
    at = bad.index(b"\n0,person") + 1
    # a bad row mended by a write behind the end: accepted
    assert seek_back_and_write(people / "mended.csv", bad, at, b"9") == 0
    assert (people / "mended.csv").read_bytes() == bad[:at] + b"9" + bad[at + 1:]
    # a good file broken behind the end: refused
    good = big_csv(n)
    assert seek_back_and_write(people / "broken.csv", good, at, b"0") == errno.EINVAL
    assert not (people / "broken.csv").exists()
    # a bad tail cut off by ftruncate before close: accepted
    tail = b"0,bad,1,true,2024-01-01\n"
    with open(people / "cut.csv", "wb") as f:
        f.write(good + tail)
        f.truncate(len(good))
    assert (people / "cut.csv").read_bytes() == good
    assert rejects(daemon)[0] == reject("broken.csv", 10, "/id",
                                        "0 is less than the minimum of 1", 1, n)
    log = daemon.log.read_text()
    for name in ("mended.csv", "broken.csv", "cut.csv"):
        assert STREAMED.format(name) not in log, name


def test_a_big_file_fsynced_halfway_is_judged_whole_at_close(daemon: Any, people: Path
                                                             ) -> None:
    """fsync() commits (and validates) the first half; what follows is validated with
    it at close, the record numbers counted from the start of the file."""
    n = 400_000
    data = big_csv(n, bad_at=n - 3)
    half = data.index(b"\n", len(data) // 2) + 1
    fd = os.open(people / "halves.csv", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data[:half])
        os.fsync(fd)                         # the first half is valid: committed
        os.write(fd, data[half:])
    finally:
        with pytest.raises(OSError) as e:
            os.close(fd)
    assert e.value.errno == errno.EINVAL
    assert (people / "halves.csv").read_bytes() == data[:half]
    assert rejects(daemon)[0] == reject("halves.csv", n - 3, "/id",
                                        "0 is less than the minimum of 1", 1, n)
