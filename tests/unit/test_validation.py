"""The validator against jsonschema itself.

The compiled Arrow checks only pick the rows jsonschema judges, so for any
schema made of the compiled keywords and any file, the verdict must be exactly
what jsonschema says record by record: how many records fail, the first one,
its JSON pointer and message (jsonschema's best_match).  Hypothesis generates
flat object schemas and records full of edge cases (big integers, integral
floats, bools, nulls, unicode, impossible dates, missing and extra keys) and
writes them as JSONL, a JSON array, CSV and Parquet.  Plain tests pin record
numbering per format and check_schema.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match

from dmsfs.errors import InvalidArgument
from dmsfs.schemas import check_schema
from dmsfs.validation import formats, validator
from dmsfs.validation.formats import csv_value
from dmsfs.validation.validator import Validator, Verdict

EXAMPLES = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ------------------------------------------------------------------ the reference
Expected = tuple[int, int, int | None, str, str]   # records, failed, first, pointer, message


def json_pointer(path: Any) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def reference(schema: Any, records: list[Any]) -> Expected:
    """jsonschema applied record by record."""
    judge = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    failed, first, ptr, msg = 0, None, "", ""
    for number, record in enumerate(records, 1):
        error = best_match(judge.iter_errors(record))
        if error is None:
            continue
        failed += 1
        if first is None:
            first, ptr, msg = number, json_pointer(error.absolute_path), error.message
    return len(records), failed, first, ptr, msg


def outcome(v: Verdict) -> Expected:
    return v.records, v.failed, v.first, v.pointer, v.message


def verdict(schema: Any, data: bytes, fmt: str) -> Expected:
    return outcome(Validator(schema).validate(io.BytesIO(data), fmt))


# ------------------------------------------------------------------ generated schemas
NAMES = ["a", "b", "c", "p/q~"]       # the last one checks pointer escaping
EXTRA_NAMES = ["x", "extra"]
PATTERNS = ["^[a-z]+$", "^[0-9]{3}-[0-9]{2}$", "ab", "^a", "b$", "[0-9]"]
INT_BOUNDS = [0, 1, -1, 2, 3, 10, -10, 2 ** 53, 2 ** 53 + 1, -(2 ** 53) - 1, 2 ** 63 - 1,
              2 ** 63, -(2 ** 63), 2 ** 64]
FLOAT_BOUNDS = [0.5, 2.5, -2.5, 3.0, -0.0, 1e-9, 1e20, 2.0 ** 53, 9.3e18, 2.0 ** 63]
SIMPLE_TYPES = ["integer", "number", "string", "boolean", "null"]

BIG_INTS = [2 ** 31, 2 ** 53 - 1, 2 ** 53, 2 ** 53 + 1, -(2 ** 53) - 1, 2 ** 63 - 1, 2 ** 63,
            -(2 ** 63), -(2 ** 63) - 1, 2 ** 64 + 3, 10 ** 20]
FLOATS = [0.0, -0.0, 0.5, 1.5, 2.5, -2.5, 3.0, -3.0, 10.0, 1e-9, 1e20, 2.0 ** 53,
          2.0 ** 53 + 2, 9.2e18, 2.0 ** 63, 1e308, 0.1 + 0.2]
STRINGS = ["", "a", "ab", "abc", "xaby", "Z", "ab1", "123-45", "12-345", "123-456", "abc\n",
           "ünïcödé", "日本語", "😀x", "a b", "0", "12", "1.5", "true",
           "2021-02-28", "2021-02-30", "2020-02-29", "2019-02-29", "2021-13-01", "0000-01-01",
           "2021-1-01", "2021-02-28 ", "２０２１-02-28",
           "2021-02-28T10:00:00Z", "2021-02-28T25:00:00Z", "2021-02-28t10:00:00+01:00",
           "2021-02-30T10:00:00Z", "2021-02-28T10:00:60Z", "2021-02-28T23:59:59.5-23:59",
           "2021-02-28 10:00:00Z", "2021-02-28T10:00:00.123Z", "2021-02-28T10:00:00",
           "2016-12-31T23:59:60Z", "0000-01-01T00:00:00Z"]

ints = st.one_of(st.integers(-12, 12), st.sampled_from(BIG_INTS))
floats = st.one_of(st.sampled_from(FLOATS),
                   st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False))
strings = st.one_of(st.sampled_from(STRINGS), st.text(max_size=5))
scalars = st.one_of(ints, floats, st.booleans(), st.none(), strings)
DATES = [x for x in STRINGS if x[4:5] == "-" and x[:1] in "02"]
COLUMN_KINDS: dict[str, st.SearchStrategy[Any]] = {
    "int": ints,
    "small_int": st.integers(-5, 5),
    "float": floats,
    "number": st.one_of(st.integers(-5, 5), floats),
    "big_number": st.one_of(st.sampled_from(BIG_INTS), floats),
    "string": strings,
    "dates": st.sampled_from(DATES),      # Arrow's JSON reader infers timestamps
    "bool": st.booleans(),
    "list_int": st.lists(st.integers(-5, 5), max_size=4),
    "list_str": st.lists(strings, max_size=4),
    "list_float": st.lists(floats, max_size=3),
    "mixed": scalars,
    "mixed_list": st.lists(scalars, max_size=3),
}


def bounds(kind: str) -> st.SearchStrategy[int | float]:
    if kind == "integer":
        return st.one_of(st.integers(-6, 6), st.sampled_from(INT_BOUNDS),
                         st.sampled_from(FLOAT_BOUNDS))
    return st.one_of(st.integers(-6, 6), st.sampled_from(INT_BOUNDS),
                     st.sampled_from(FLOAT_BOUNDS), st.floats(-10, 10, allow_nan=False))


@st.composite
def value_schema(draw: st.DrawFn, *, in_items: bool = False) -> dict[str, Any]:
    """A subschema for one property (or for the items of an array)."""
    kinds = SIMPLE_TYPES + ([] if in_items else ["array"]) + ["any"]
    kind = draw(st.sampled_from(kinds))
    s: dict[str, Any] = {}
    if kind != "any":
        shape = draw(st.integers(0, 5))
        if shape == 0 and kind != "null":
            s["type"] = draw(st.permutations([kind, "null"]))
        elif shape == 1:
            s["type"] = [kind]
        elif shape == 2 and kind == "integer":
            s["type"] = ["integer", "string"]
        else:
            s["type"] = kind

    def maybe(relevant: bool) -> bool:
        return draw(st.integers(0, 99)) < (45 if relevant else 8)

    numeric = kind in ("integer", "number", "any")
    stringy = kind in ("string", "any")
    if maybe(numeric):
        for key in draw(st.lists(st.sampled_from(["minimum", "maximum", "exclusiveMinimum",
                                                   "exclusiveMaximum"]),
                                 min_size=1, max_size=2, unique=True)):
            s[key] = draw(bounds(kind))
    if maybe(stringy):
        for key in draw(st.lists(st.sampled_from(["minLength", "maxLength"]), min_size=1,
                                 max_size=2, unique=True)):
            s[key] = draw(st.integers(0, 4))
    if maybe(stringy):
        s["pattern"] = draw(st.sampled_from(PATTERNS))
    if maybe(stringy):
        s["format"] = draw(st.sampled_from(["date", "date-time"]))
    if maybe(kind != "array"):
        if draw(st.booleans()):
            s["enum"] = draw(st.lists(st.one_of(scalars, st.sampled_from(
                [1, 2, 3.0, 2 ** 53, 2 ** 63, "a", "ab", True, False, None])),
                min_size=1, max_size=4))
        else:
            s["const"] = draw(st.one_of(scalars, st.sampled_from([1, 3.0, 2 ** 63, "ab", None,
                                                                  True]),
                                        st.lists(st.integers(0, 2), max_size=2)))
    if not in_items and maybe(kind in ("array", "any")):
        if draw(st.booleans()):
            s["items"] = draw(value_schema(in_items=True))
        for key in draw(st.lists(st.sampled_from(["minItems", "maxItems"]), max_size=2,
                                 unique=True)):
            s[key] = draw(st.integers(0, 3))
    return s


@st.composite
def object_schemas(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True))
    schema: dict[str, Any] = {"properties": {n: draw(value_schema()) for n in names}}
    if draw(st.booleans()):
        schema["type"] = "object"
    if draw(st.booleans()):
        schema["required"] = draw(st.lists(st.sampled_from(NAMES), max_size=3, unique=True))
    if draw(st.integers(0, 3)) == 0:
        schema["additionalProperties"] = False
    if draw(st.integers(0, 5)) == 0:
        schema["title"] = "generated"
    return schema


@st.composite
def records_for(draw: st.DrawFn, schema: dict[str, Any], *, homogeneous: bool = False
                ) -> list[dict[str, Any]]:
    """Records whose columns mostly hold one kind of value each (so the Arrow path
    runs), with missing keys, nulls and extra keys."""
    names = list(schema["properties"]) + draw(st.lists(st.sampled_from(EXTRA_NAMES + NAMES),
                                                        max_size=2, unique=True))
    kinds = [k for k in COLUMN_KINDS if not (homogeneous and k.startswith("mixed"))]
    columns = {n: COLUMN_KINDS[draw(st.sampled_from(kinds))] for n in names}
    out = []
    for _ in range(draw(st.integers(1, 8))):
        record = {}
        for name, values in columns.items():
            roll = draw(st.integers(0, 9))
            if roll == 0:
                continue               # missing
            record[name] = None if roll == 1 else draw(values)
        out.append(record)
    return out


@st.composite
def schema_and_records(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    schema = draw(object_schemas())
    return schema, draw(records_for(schema))


# ------------------------------------------------------------------ differential tests
@EXAMPLES
@given(schema_and_records())
def test_jsonl_and_json_array_match_jsonschema(case: tuple[dict[str, Any], list[Any]]) -> None:
    schema, records = case
    expected = reference(schema, records)
    jsonl = "".join(json.dumps(r) + "\n" for r in records).encode()
    assert verdict(schema, jsonl, "jsonl") == expected, jsonl
    array = json.dumps(records).encode()
    assert verdict(schema, array, "json") == expected, array


@EXAMPLES
@given(schema_and_records())
def test_json_single_record_matches_jsonschema(case: tuple[dict[str, Any], list[Any]]) -> None:
    schema, records = case
    data = json.dumps(records[0]).encode()
    assert verdict(schema, data, "json") == reference(schema, records[:1]), data


CSV_CELLS = ["", "0", "1", "-1", "+5", "007", "12", "2", "3", "-0", "1.5", ".5", "5.", "+1.5",
             "-2.5", "1e3", "1E-2", "1e400", "3.0", "2.5e1", "9007199254740993",
             "9223372036854775807", "9223372036854775808", "99999999999999999999",
             "123456789012345", "1234567890123456", "nan", "inf", "1_000", "0x10", " 1",
             "nan(123)", "-Infinity",
             "true", "false", "True", "FALSE", "yes", "t", "a", "ab", "abc", "ünï", "日本",
             "a,b", 'say "hi"', "two\nlines", "2021-02-28", "2021-02-30", "2020-02-29",
             "2021-02-28T10:00:00Z", "2021-02-30T10:00:00Z", "123-45"]


NUMERIC_CELLS = st.one_of(
    st.sampled_from(["", "0", "1", "-1", "007", "12", "-0", "1.5", ".5", "5.", "-2.5", "1e3",
                     "1E-2", "3.0", "9007199254740993", "9223372036854775807",
                     "123456789012345"]),
    # what Arrow's number parsing and csv_value may disagree on
    st.sampled_from(["+5", "+1.5", "1e400", "1e-400", "9223372036854775808", "1234567890123456",
                     "nan", "inf", "-Infinity", "NaN", "nan(123)", "-nan(ind)", "0x10", "0X1f",
                     "-0x10", "+inf", "Infinity", "1e999"]))
BOOL_CELLS = st.sampled_from(["", "true", "false", "True", "False", "TRUE", "FALSE", "1", "0"])


@st.composite
def csv_case(draw: st.DrawFn) -> tuple[dict[str, Any], list[str], list[list[str]]]:
    schema = draw(object_schemas())
    header = list(schema["properties"]) + draw(st.lists(st.sampled_from(EXTRA_NAMES),
                                                         max_size=1, unique=True))
    header = draw(st.permutations(header))
    cell = st.one_of(st.sampled_from(CSV_CELLS),
                     st.text(st.characters(blacklist_categories=("Cs",),
                                           blacklist_characters="\r"), max_size=4))
    # a column of number-like cells only takes Arrow's one-cast path
    kinds = [draw(st.sampled_from([cell, NUMERIC_CELLS, NUMERIC_CELLS, BOOL_CELLS]))
             for _ in header]
    rows = draw(st.lists(st.tuples(*kinds).map(list), min_size=1, max_size=8))
    return schema, header, rows


def declared_types(schema: dict[str, Any]) -> dict[str, set[str]]:
    out = {}
    for name, sub in schema["properties"].items():
        t = sub.get("type")
        out[name] = {t} if isinstance(t, str) else set(t) if isinstance(t, list) else set()
    return out


@EXAMPLES
@given(csv_case())
def test_csv_matches_jsonschema_on_converted_cells(
        case: tuple[dict[str, Any], list[str], list[list[str]]]) -> None:
    schema, header, rows = case
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    data = buf.getvalue().encode()
    types = declared_types(schema)
    records = [{h: csv_value(c, types.get(h, set())) for h, c in zip(header, row, strict=True)}
               for row in rows]
    assert verdict(schema, data, "csv") == reference(schema, records), data


def homogeneous(records: list[dict[str, Any]]) -> bool:
    """Every column holds one Python type (bool apart from int), ints within int64."""
    def kind(v: Any) -> Any:
        if isinstance(v, list):
            inner = {kind(x) for x in v if x is not None}
            return ("list", *sorted(map(str, inner))) if len(inner) <= 1 else None
        if isinstance(v, int) and not isinstance(v, bool) and not -2 ** 63 <= v < 2 ** 64:
            return None
        return type(v).__name__
    names = {k for r in records for k in r}
    for name in names:
        seen = {kind(r[name]) for r in records if r.get(name) is not None}
        if None in seen or len(seen) > 1:
            return False
    # an empty list next to a typed one would be inferred, but keep it simple
    return True


# Parquet column types other than Arrow's defaults (int64, double) for the same values
NARROWER = {"int": [pa.int8(), pa.int32(), pa.uint32(), pa.uint64()], "float": [pa.float32()]}


@st.composite
def parquet_case(draw: st.DrawFn
                 ) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, pa.DataType]]:
    schema = draw(object_schemas())
    records = draw(records_for(schema, homogeneous=True))
    if not homogeneous(records):
        records = [{k: v for k, v in r.items() if not isinstance(v, list | int | float)
                    or isinstance(v, bool)} for r in records]
    names = {k for r in records for k in r}
    narrow = {n: draw(st.sampled_from(NARROWER["int"] + NARROWER["float"]))
              for n in sorted(names) if draw(st.integers(0, 2)) == 0}
    return schema, records, narrow


def narrowed(table: pa.Table, narrow: dict[str, pa.DataType]) -> pa.Table:
    """Columns cast to narrower types where the values fit."""
    for name, t in narrow.items():
        col = table.column(name)
        kind = "int" if pa.types.is_integer(col.type) else \
            "float" if pa.types.is_floating(col.type) else None
        if kind is None or t not in NARROWER[kind]:
            continue
        try:
            cast = col.cast(t)
        except (pa.ArrowInvalid, OverflowError):
            continue
        table = table.set_column(table.schema.get_field_index(name), name, cast)
    return table


@EXAMPLES
@given(parquet_case())
def test_parquet_matches_jsonschema(
        case: tuple[dict[str, Any], list[dict[str, Any]], dict[str, pa.DataType]]) -> None:
    schema, records, narrow = case
    names = list(dict.fromkeys(k for r in records for k in r))
    columns = {}
    for n in names:
        values = [r.get(n) for r in records]
        for t in (None, pa.uint64()):   # ints past int64 (all below 2**64): unsigned
            try:
                columns[n] = pa.array(values, t)
                break
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                pass
        else:
            return  # not representable in Arrow: nothing to compare
    table = pa.table(columns) if names else pa.table({"_": pa.nulls(len(records))})
    table = narrowed(table, narrow)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    stored = table.to_pylist()   # what the file holds: a missing key is a null column cell
    assert verdict(schema, buf.getvalue(), "parquet") == reference(schema, stored), stored


# ------------------------------------------------------------------ bugs pinned down
def test_json_array_keys_first_seen_in_later_records_are_checked() -> None:
    """Arrow's from_pylist takes the columns of the first record only: a property
    or an extra key that first appears in a later record must still be judged."""
    schema = {"type": "object", "properties": {"a": {"type": "integer"},
                                               "b": {"type": "integer"}},
              "additionalProperties": False}
    records = [{"a": 1}, {"a": 1, "b": "bad"}, {"a": 2, "x": 1}]
    assert verdict(schema, json.dumps(records).encode(), "json") == \
        (3, 2, 2, "/b", "'bad' is not of type 'integer'")


def test_csv_integer_with_plus_sign() -> None:
    """csv_value converts "+5" to 5 (valid for an integer property); the Arrow
    cast of the column must not make the whole file unreadable."""
    schema = {"type": "object", "properties": {"i": {"type": "integer"}}}
    assert csv_value("+5", {"integer"}) == 5
    assert verdict(schema, b"i\n+5\n3\n", "csv") == (2, 0, None, "", "")
    assert verdict(schema, b"i\n+5\nx\n", "csv") == (
        2, 1, 2, "/i", "'x' is not of type 'integer'")


def test_csv_numbers_only_arrow_parses() -> None:
    """C's strtod (so Arrow's cast) reads "nan(123)" as NaN; csv_value keeps it a
    string, which is not a number."""
    schema = {"type": "object", "properties": {"n": {"type": "number"}}}
    for cell in ["nan(123)", "-nan(ind)", "NAN(0x1)"]:
        assert csv_value(cell, {"number"}) == cell
        assert verdict(schema, f"n\n1\n{cell}\n".encode(), "csv") == (
            2, 1, 2, "/n", f"{cell!r} is not of type 'number'"), cell


def test_csv_values_spanning_lines_across_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A quoted cell may hold newlines (RFC 4180); files larger than one read block
    must validate as a whole file does."""
    schema = {"type": "object", "properties": {"id": {"type": "integer"},
                                               "t": {"type": "string"}}}
    rows = "".join(f'{i},"line one\nline two {i}"\n' for i in range(1, 2001))
    data = ("id,t\n" + rows + '2001,"last\none"\nbad,x\n').encode()
    assert verdict(schema, data, "csv") == (2002, 1, 2002, "/id",
                                            "'bad' is not of type 'integer'")
    monkeypatch.setattr(formats, "BLOCK", 1000)
    assert verdict(schema, data, "csv") == (2002, 1, 2002, "/id",
                                            "'bad' is not of type 'integer'")


def test_jsonl_strings_arrow_reads_as_timestamps_keep_their_string_keywords() -> None:
    """Arrow's JSON reader turns date-like strings of a column without an explicit
    string type into timestamps; pattern, lengths and format still apply to them."""
    for prop, value, message in [
        ({"pattern": "^[a-z]+$"}, "2021-02-28", "'2021-02-28' does not match '^[a-z]+$'"),
        ({"maxLength": 3}, "2021-02-28", "'2021-02-28' is too long"),
        ({"format": "date"}, "2021-02-28T10:00:00", "'2021-02-28T10:00:00' is not a 'date'"),
        ({"format": "date-time"}, "2021-02-28", "'2021-02-28' is not a 'date-time'"),
        ({"type": ["string", "integer"], "minLength": 20}, "2021-02-28",
         "'2021-02-28' is too short"),
    ]:
        schema = {"properties": {"d": prop}}
        data = json.dumps({"d": value}).encode() + b"\n"
        assert verdict(schema, data, "jsonl") == (1, 1, 1, "/d", message), prop


def test_jsonl_integers_past_2_53_in_a_float_column_keep_their_value() -> None:
    """A column mixing ints and floats is read as doubles by Arrow, rounding
    9007199254740993 to 2**53: bounds and enum must still see the exact integer."""
    data = b'{"a": 9007199254740993}\n{"a": 1.5}\n'
    assert verdict({"properties": {"a": {"maximum": 2 ** 53}}}, data, "jsonl") == (
        2, 1, 1, "/a", "9007199254740993 is greater than the maximum of 9007199254740992")
    assert verdict({"properties": {"a": {"enum": [2 ** 53, 1.5]}}}, data, "jsonl") == (
        2, 1, 1, "/a", "9007199254740993 is not one of [9007199254740992, 1.5]")


def test_parquet_uint64_column_with_bounds() -> None:
    """Unsigned 64-bit values past 2**63 are valid integers, not an unreadable file."""
    table = pa.table({"a": pa.array([2 ** 63 + 5, 1], pa.uint64())})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    data = buf.getvalue()
    assert verdict({"properties": {"a": {"minimum": 0}}}, data, "parquet") == (
        2, 0, None, "", "")
    assert verdict({"properties": {"a": {"type": "integer", "exclusiveMaximum": 3}}}, data,
                   "parquet") == (
        2, 1, 1, "/a", "9223372036854775813 is greater than or equal to the maximum of 3")


def test_parquet_float32_column_against_enum_and_const() -> None:
    """A float32 0.1 is 0.10000000149011612 to JSON: not the 0.1 of an enum."""
    table = pa.table({"a": pa.array([0.1, 0.5], pa.float32())})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    data = buf.getvalue()
    assert verdict({"properties": {"a": {"enum": [0.1, 0.5]}}}, data, "parquet") == (
        2, 1, 1, "/a", "0.10000000149011612 is not one of [0.1, 0.5]")
    assert verdict({"properties": {"a": {"const": 0.1}}}, data, "parquet") == (
        2, 2, 1, "/a", "0.1 was expected")


def test_csv_with_a_byte_order_mark() -> None:
    """Excel's "CSV UTF-8" starts with a BOM: the file validates as it does without."""
    schema = {"type": "object", "properties": {"id": {"type": "integer", "minimum": 1},
                                               "name": {"type": "string"}},
              "required": ["id"]}
    bom = b"\xef\xbb\xbf"
    for data in [b"id,name\n1,a\n2,b\n", b"id,name\n1,a\n0,b\n", b"name,id\nx,1\ny,0\n"]:
        assert verdict(schema, bom + data, "csv") == verdict(schema, data, "csv"), data


def test_odd_files_give_a_verdict_not_an_exception() -> None:
    """Whatever the bytes, validate() returns a verdict: an exception would be EIO at
    close (and an error in the daemon's log) instead of EINVAL or success."""
    schema = {"type": "object", "properties": {"id": {"type": "integer"}}}
    for data in [b"id,id\n1,2\n", b"\xef\xbb\xbfid,id\n1,x\n", b"id,name\n1,\xe9\n"]:
        v = Validator(schema).validate(io.BytesIO(data), "csv")
        assert isinstance(v, Verdict), data


# ------------------------------------------------------------------ record numbering
INT_ID = {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}


def test_jsonl_numbers_lines_and_skips_blank_ones() -> None:
    data = b'{"id": 1}\n\n   \n{"id": 2}\r\n\n{"id": "x"}\n{"id": 4}\n{"id": null}'
    assert verdict(INT_ID, data, "jsonl") == (5, 2, 6, "/id", "'x' is not of type 'integer'")
    assert verdict(INT_ID, b"", "jsonl") == (0, 0, None, "", "")
    assert verdict(INT_ID, b"\n\n", "jsonl") == (0, 0, None, "", "")


def test_jsonl_line_that_is_not_json() -> None:
    v = Validator(INT_ID).validate(io.BytesIO(b'{"id": 1}\n\n{"id": 2\n{"id": "x"}\n'), "jsonl")
    assert (v.records, v.failed, v.first, v.pointer) == (3, 2, 3, "")
    assert v.message.startswith("line 3 is not JSON: ")
    v = Validator(INT_ID).validate(io.BytesIO(b'[1]\n{"id": 1}\n'), "jsonl")
    assert outcome(v) == (2, 1, 1, "", "[1] is not of type 'object'")


def test_jsonl_numbering_across_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats, "BLOCK", 64)
    lines = [json.dumps({"id": i}) if i % 3 else "" for i in range(1, 400)]
    lines[250] = '{"id": "z"}'                       # line 251
    lines[300] = '{"id": 1.5}'                       # line 301
    data = ("\n".join(lines) + "\n").encode()
    records = sum(1 for line in lines if line)
    assert verdict(INT_ID, data, "jsonl") == (records, 2, 251, "/id",
                                              "'z' is not of type 'integer'")


@pytest.mark.parametrize("group", [1, 7, 100, 65536])
@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_blocks_checked_in_groups_keep_their_record_numbers(
        monkeypatch: pytest.MonkeyPatch, fmt: str, group: int) -> None:
    """Small read blocks merged into groups of `group` rows for the checks: every
    failure is counted once and the first one is named by its own number."""
    monkeypatch.setattr(formats, "BLOCK", 64)
    monkeypatch.setattr(formats, "PARQUET_BATCH", 5)
    monkeypatch.setattr(validator, "GROUP_ROWS", group)
    ids: list[Any] = list(range(300))
    for bad in (4, 150, 298):
        ids[bad] = -1
    schema = {"type": "object", "properties": {"id": {"type": "integer", "minimum": 0}}}
    if fmt == "csv":
        data = ("id\n" + "".join(f"{i}\n" for i in ids)).encode()
    elif fmt == "jsonl":
        data = "".join(json.dumps({"id": i}) + "\n" for i in ids).encode()
    else:
        buf = io.BytesIO()
        pq.write_table(pa.table({"id": ids}), buf, row_group_size=20)
        data = buf.getvalue()
    assert verdict(schema, data, fmt) == (300, 3, 5, "/id", "-1 is less than the minimum of 0")


def test_json_array_index_plus_one_and_single_record() -> None:
    assert verdict(INT_ID, b'{"id": 1}', "json") == (1, 0, None, "", "")
    assert verdict(INT_ID, b'{"id": true}', "json") == (1, 1, 1, "/id",
                                                        "True is not of type 'integer'")
    assert verdict(INT_ID, b'[{"id": 1}, {"id": 2}, {}, {"id": "q"}]', "json") == (
        4, 2, 3, "", "'id' is a required property")
    assert verdict(INT_ID, b"[]", "json") == (0, 0, None, "", "")
    typed = {**INT_ID, "type": "object"}
    assert verdict(typed, b'[{"id": 1}, 7]', "json") == (2, 1, 2, "",
                                                         "7 is not of type 'object'")


def test_csv_numbers_data_rows_after_the_header() -> None:
    schema = {"type": "object", "properties": {"id": {"type": "integer"},
                                               "score": {"type": "number"},
                                               "ok": {"type": "boolean"},
                                               "note": {"type": ["string", "null"]}},
              "required": ["id"]}
    data = (b'id,score,ok,note\n1,2.5,true,\n2,3,False,"multi\nline"\n3,,TRUE,x\n'
            b"4,abc,true,x\n5,1,yes,x\n")
    assert verdict(schema, data, "csv") == (5, 3, 3, "/score",
                                            "None is not of type 'number'")
    assert verdict(schema, b"id,score,ok,note\n", "csv") == (0, 0, None, "", "")
    assert verdict(schema, b"", "csv") == (0, 0, None, "", "")


def test_parquet_numbers_rows_across_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats, "PARQUET_BATCH", 7)
    ids = list(range(100))
    ids[57] = -1
    table = pa.table({"id": ids})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=10)
    schema = {"type": "object", "properties": {"id": {"type": "integer", "minimum": 0}}}
    assert verdict(schema, buf.getvalue(), "parquet") == (
        100, 1, 58, "/id", "-1 is less than the minimum of 0")


def test_unreadable_files() -> None:
    for data, fmt in [(b"{nope", "json"), (b"", "json"), (b"PAR1 not parquet", "parquet")]:
        v = Validator(INT_ID).validate(io.BytesIO(data), fmt)
        assert (v.failed, v.first) == (1, 1), (data, v)
        assert v.message.startswith("unreadable: "), v


# ------------------------------------------------------------------ check_schema
@pytest.mark.parametrize("schema", [
    {}, True, {"type": "object", "properties": {"a": {"type": ["integer", "null"]}}},
    {"type": "object", "properties": {"d": {"type": "string", "format": "date"}},
     "required": ["d"], "additionalProperties": False},
])
def test_check_schema_accepts_valid_schemas(schema: Any) -> None:
    check_schema(schema)


@pytest.mark.parametrize("schema", [
    {"type": 5}, {"type": "integr"}, {"properties": {"a": {"minimum": "1"}}},
    {"required": "a"}, {"properties": {"a": {"pattern": 3}}}, 5, "object",
])
def test_check_schema_refuses_with_the_validators_message(schema: Any) -> None:
    with pytest.raises(SchemaError) as expected:
        Draft202012Validator.check_schema(schema)
    with pytest.raises(InvalidArgument) as got:
        check_schema(schema)
    assert got.value.message == f"invalid JSON Schema: {expected.value.message}"
