"""JSON Schema keywords compiled into vectorized checks on Arrow record batches.

The checks are a filter, not the judge: `suspects(batch)` marks every row that
may fail the schema, and only those rows go to jsonschema, whose verdict and
message are final.  A check may therefore mark a valid row (it costs time), but
must never pass an invalid one.  Each check below is written to that rule:
where Arrow's semantics could differ from Python's (regex dialects, date
normalisation, float precision, a null that may be a missing property), it
marks the row.  A keyword this module does not compile marks every row.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

Check = Callable[[pa.Array], pa.Array]   # column -> bool "suspect" per row (no nulls)

# Keywords that never make an instance invalid.
ANNOTATIONS = {"title", "description", "default", "examples", "$comment", "deprecated",
               "readOnly", "writeOnly", "$id", "$schema", "$anchor", "contentMediaType",
               "contentEncoding"}
OBJECT_KEYWORDS = {"type", "properties", "required", "additionalProperties"}
VALUE_KEYWORDS = {"type", "enum", "const", "minimum", "maximum", "exclusiveMinimum",
                  "exclusiveMaximum", "minLength", "maxLength", "pattern", "format",
                  "items", "minItems", "maxItems"}
EXACT_FLOAT = 2 ** 53
# A pattern of these pieces means the same in RE2 (Arrow) and Python's re, except
# that Python also matches a few strings RE2 does not ($ before a final newline,
# non-ASCII digits for \d): those rows are marked, never passed wrongly.
SAFE_PATTERN = re.compile(r"(?:[A-Za-z0-9 _:/@,#%&=<>'\"!~`-]|\\[.\\/()\[\]{}+*?^$|-]"
                          r"|\\d|[\^$.*+?(){}|]|\[(?:[A-Za-z0-9 _:/@,.#%&=-]|\\[.\\\]-])+\])*")
DATE_RE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
DATE_TIME_RE = (r"(?i)^[0-9]{4}-(0[1-9]|1[0-2])-[0-9]{2}t([01][0-9]|2[0-3]):[0-5][0-9]:"
                r"[0-5][0-9](\.[0-9]+)?(z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$")


class Compiled:
    """A schema for one record, as per-column checks."""

    def __init__(self, schema: Any) -> None:
        self.everything = not _compilable_object(schema)
        props = schema.get("properties", {}) if isinstance(schema, dict) else {}
        self.required: list[str] = list(schema.get("required", [])) \
            if isinstance(schema, dict) and not self.everything else []
        self.closed = isinstance(schema, dict) and schema.get("additionalProperties") is False
        self.columns: dict[str, list[Check]] = {}
        if not self.everything:
            for name, sub in props.items():
                checks = _compile_value(sub)
                if checks is None:
                    self.everything = True
                    break
                self.columns[name] = checks

    def suspects(self, batch: pa.RecordBatch) -> pa.Array:
        """A boolean per row: True where the row may be invalid."""
        n = batch.num_rows
        if self.everything:
            return _const(n, True)
        marks = _const(n, False)
        names = set(batch.schema.names)
        for name in self.required:
            if name not in names:
                return _const(n, True)
            marks = pc.or_(marks, batch.column(name).is_null())
        if self.closed and names - set(self.columns):
            return _const(n, True)
        for name, checks in self.columns.items():
            if name in names:
                col, doubt = _comparable(batch.column(name))
                if doubt is not None:
                    marks = pc.or_(marks, doubt)
                for check in checks:
                    marks = pc.or_(marks, check(col))
        return marks


def _comparable(col: pa.Array) -> tuple[pa.Array, pa.Array | None]:
    """A column in the types the checks compare exactly, and rows they cannot:
    floats as float64 (a float32 0.1 is not 0.1), and |x| >= 2**53 suspect (an
    integer may have been rounded into that float); uint64 beyond int64 suspect;
    dates and times suspect (JSON has them only as strings, which Arrow parsed)."""
    t = col.type
    if pa.types.is_floating(t):
        col = col.cast(pa.float64()) if t != pa.float64() else col
        return col, _fill(pc.greater_equal(pc.abs(col), float(EXACT_FLOAT)))
    if pa.types.is_unsigned_integer(t) and t.bit_width == 64:
        big = _fill(pc.greater(col, pa.scalar(2 ** 63 - 1, pa.uint64())))
        return pc.cast(pc.if_else(big, pa.scalar(0, pa.uint64()), col), pa.int64()), big
    if pa.types.is_temporal(t):
        return col, pc.is_valid(col)
    return col, None


def _compilable_object(schema: Any) -> bool:
    if schema is True or schema == {}:
        return True
    if not isinstance(schema, dict):
        return False
    if set(schema) - OBJECT_KEYWORDS - ANNOTATIONS:
        return False
    if "type" in schema and schema["type"] != "object":
        return False
    extra = schema.get("additionalProperties", True)
    return extra in (True, False) and isinstance(schema.get("properties", {}), dict) and \
        isinstance(schema.get("required", []), list)


# ------------------------------------------------------------------ one value
def _compile_value(s: Any) -> list[Check] | None:
    """Checks for one property's subschema, None if it cannot be compiled."""
    if s is True or s == {}:
        return []
    if not isinstance(s, dict) or set(s) - VALUE_KEYWORDS - ANNOTATIONS:
        return None
    checks: list[Check] = []
    types = s.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
            return None
        checks.append(_type_check(set(types)))
    else:
        checks.append(_nested_values)  # no type: anything goes, but nested values may hold
        # keywords of their own below that we only check on flat values
    for builder in (_enum_check, _bounds_checks, _length_checks, _pattern_check,
                    _format_check, _items_check):
        more = builder(s)
        if more is None:
            return None
        checks.extend(more)
    return checks


def _nested_values(col: pa.Array) -> pa.Array:
    """Without a type, object and array values are left to jsonschema."""
    if pa.types.is_struct(col.type) or _is_list(col.type):
        return pc.is_valid(col)
    return _none(col)


def _none(col: pa.Array) -> pa.Array:
    return _const(len(col), False)


def _all(col: pa.Array) -> pa.Array:
    return _const(len(col), True)


def _const(n: int, value: bool) -> pa.Array:
    return pc.fill_null(pa.nulls(n, pa.bool_()), value)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def contains(col: pa.Array, *needles: bytes) -> bool:
    """Whether any value of a string column may contain any of needles: a scan of
    its data buffer, cheaper than any per-value kernel (a sliced column's buffer
    holds more than its values: a hit there is only a maybe)."""
    data = col.buffers()[2] if len(col) else None
    if data is None:
        return False
    raw = data.to_pybytes()
    return any(n in raw for n in needles)


def max_bytes(col: pa.Array) -> int:
    """The byte length of the longest value of a string column (0 if none)."""
    return pc.max(pc.binary_length(col)).as_py() or 0


def _fill(mask: pa.Array) -> pa.Array:
    """Nulls in a mask (from null values) count as not suspect."""
    return pc.fill_null(mask, False)


def _type_check(types: set[str]) -> Check:
    def check(col: pa.Array) -> pa.Array:
        t = col.type
        nulls = col.is_null() if "null" not in types else _none(col)
        if pa.types.is_null(t):
            return nulls
        if pa.types.is_boolean(t):
            ok_values = "boolean" in types
        elif pa.types.is_integer(t):
            ok_values = bool(types & {"integer", "number"})
        elif pa.types.is_floating(t):
            if "number" in types:
                ok_values = True
            elif "integer" in types:
                return pc.or_(nulls, _fill(pc.not_equal(pc.floor(col), col)))
            else:
                ok_values = False
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            ok_values = "string" in types
        elif pa.types.is_struct(t):
            ok_values = "object" in types
        elif _is_list(t):
            ok_values = "array" in types
        else:
            ok_values = False
        return nulls if ok_values else pc.or_(nulls, col.is_valid())
    return check


def _enum_check(s: dict[str, Any]) -> list[Check] | None:
    if "enum" not in s and "const" not in s:
        return []
    members = list(s["enum"]) if "enum" in s else []
    if "const" in s:
        members = [s["const"]] if "enum" not in s else [m for m in members if _eq(m, s["const"])]
    allow_null = any(m is None for m in members)
    strings = [m for m in members if isinstance(m, str)]
    bools = [m for m in members if isinstance(m, bool)]
    numbers = [m for m in members if isinstance(m, int | float) and not isinstance(m, bool)]
    ints = [int(m) for m in numbers if isinstance(m, int) or (math.isfinite(m) and m == int(m))]
    ints = [m for m in ints if -2 ** 63 <= m < 2 ** 63]
    floats = [float(m) for m in numbers if abs(m) <= EXACT_FLOAT]

    def check(col: pa.Array) -> pa.Array:
        t = col.type
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            outside = pc.invert(pc.is_in(col, value_set=pa.array(strings, t)))
        elif pa.types.is_boolean(t):
            outside = pc.invert(pc.is_in(col, value_set=pa.array(bools, pa.bool_())))
        elif pa.types.is_integer(t):
            outside = pc.invert(pc.is_in(col, value_set=pa.array(ints, pa.int64())))
        elif pa.types.is_floating(t):
            outside = pc.invert(pc.is_in(col, value_set=pa.array(floats, pa.float64())))
        elif pa.types.is_null(t):
            return col.is_null() if not allow_null else _none(col)
        else:
            return _all(col)  # objects, arrays: jsonschema decides
        nulls = col.is_null() if not allow_null else _none(col)
        return pc.or_(nulls, _fill(outside))
    return [check]


def _eq(a: Any, b: Any) -> bool:
    """JSON equality as jsonschema sees it: 1 == 1.0, but True != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return bool(a == b)


def _bounds_checks(s: dict[str, Any]) -> list[Check] | None:
    checks = []
    for key, op in (("minimum", "less"), ("maximum", "greater"),
                    ("exclusiveMinimum", "less_equal"), ("exclusiveMaximum", "greater_equal")):
        if key not in s:
            continue
        bound = s[key]
        if isinstance(bound, bool) or not isinstance(bound, int | float):
            return None
        checks.append(_bound_check(key, op, bound))
    return checks


def _bound_check(key: str, op: str, bound: int | float) -> Check:
    def check(col: pa.Array) -> pa.Array:
        t = col.type
        if not math.isfinite(bound):
            return pc.is_valid(col) if _numeric(t) else _none(col)
        if pa.types.is_integer(t):
            # compare integers exactly: x >= 2.5 is x >= 3, and so on
            b = _int_bound(key, bound)
            if abs(b) >= 2 ** 63:
                return pc.is_valid(col)
            return _fill(getattr(pc, _int_op(key))(col, pa.scalar(b, pa.int64())))
        if pa.types.is_floating(t):
            if abs(bound) > EXACT_FLOAT:
                return pc.is_valid(col)
            bad = getattr(pc, op)(col, pa.scalar(float(bound), pa.float64()))
            return pc.or_(_fill(bad), _fill(pc.is_nan(col)))
        return _none(col)  # the keyword applies to numbers only
    return check


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def _int_bound(key: str, bound: int | float) -> int:
    if key == "minimum":
        return math.ceil(bound)
    if key == "maximum":
        return math.floor(bound)
    if key == "exclusiveMinimum":
        return math.floor(bound) + 1
    return math.ceil(bound) - 1


def _int_op(key: str) -> str:
    return "less" if key in ("minimum", "exclusiveMinimum") else "greater"


def _length_checks(s: dict[str, Any]) -> list[Check] | None:
    checks = []
    for key in ("minLength", "maxLength"):
        if key in s:
            if not isinstance(s[key], int) or isinstance(s[key], bool):
                return None
            checks.append(_string_check(_too_short(s[key]) if key == "minLength" else
                                        _too_long(s[key])))
    return checks


def _too_short(n: int) -> Callable[[pa.Array], pa.Array]:
    return lambda col: pc.less(pc.utf8_length(col), n)


def _too_long(n: int) -> Callable[[pa.Array], pa.Array]:
    def check(col: pa.Array) -> pa.Array:
        if max_bytes(col) <= n:     # a character is at least a byte
            return _none(col)
        return pc.greater(pc.utf8_length(col), n)
    return check


def _string_check(fn: Callable[[pa.Array], pa.Array]) -> Check:
    def check(col: pa.Array) -> pa.Array:
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            return _fill(fn(col))
        return _none(col)  # string keywords ignore other types
    return check


def _pattern_check(s: dict[str, Any]) -> list[Check] | None:
    if "pattern" not in s:
        return []
    pattern = s["pattern"]
    if not isinstance(pattern, str) or not SAFE_PATTERN.fullmatch(pattern):
        return None
    try:
        re.compile(pattern)
        pc.match_substring_regex(pa.array([""]), pattern)
    except (re.error, pa.ArrowInvalid):
        return None
    return [_string_check(lambda col: pc.invert(pc.match_substring_regex(col, pattern)))]


def _format_check(s: dict[str, Any]) -> list[Check] | None:
    fmt = s.get("format")
    if fmt is None:
        return []
    if fmt == "date":
        return [_string_check(_bad_date)]
    if fmt == "date-time":
        return [_string_check(_bad_date_time)]
    return None


def _bad_day(dates: pa.Array, shaped: pa.Array) -> pa.Array:
    """True where a YYYY-MM-DD string is not a real day."""
    candidates = pc.if_else(pc.fill_null(shaped, False), dates, "2000-01-01")
    try:  # the usual case, all real days: one cast says so
        pc.cast(candidates, pa.date32())
        return _none(dates)
    except pa.ArrowInvalid:
        pass
    # which ones (strptime alone would roll 02-30 over to 03-02: compare back)
    parsed = pc.strptime(candidates, format="%Y-%m-%d", unit="s", error_is_null=True)
    again = pc.strftime(parsed, format="%Y-%m-%d")
    return pc.or_(_fill(pc.not_equal(again, candidates)), pc.is_null(again))


def _bad_date(col: pa.Array) -> pa.Array:
    try:  # the usual case: Arrow reads every value as a real day (it takes YYYY-MM-DD only)
        pc.cast(col, pa.date32())
        return pc.starts_with(col, "0000")
    except pa.ArrowInvalid:
        pass
    shaped = pc.match_substring_regex(col, DATE_RE)
    return pc.or_(pc.invert(shaped), pc.or_(pc.starts_with(col, "0000"), _bad_day(col, shaped)))


def _bad_date_time(col: pa.Array) -> pa.Array:
    shaped = pc.match_substring_regex(col, DATE_TIME_RE)
    day = pc.utf8_slice_codeunits(col, 0, 10)
    return pc.or_(pc.invert(shaped), pc.or_(pc.starts_with(col, "0000"),
                                            _bad_day(day, shaped)))


def _items_check(s: dict[str, Any]) -> list[Check] | None:
    checks = []
    for key, op in (("minItems", "less"), ("maxItems", "greater")):
        if key in s:
            if not isinstance(s[key], int) or isinstance(s[key], bool):
                return None
            checks.append(_list_check(lambda col, op=op, n=s[key]: _fill(getattr(pc, op)(
                pc.list_value_length(col), n))))
    if "items" in s:
        inner = _compile_value(s["items"])
        if inner is None or any(k in s["items"] for k in ("items", "properties")):
            return None
        checks.append(_list_check(lambda col: _items_suspects(col, inner)))
    return checks


def _list_check(fn: Callable[[pa.Array], pa.Array]) -> Check:
    def check(col: pa.Array) -> pa.Array:
        return fn(col) if _is_list(col.type) else _none(col)
    return check


def _items_suspects(col: pa.Array, inner: list[Check]) -> pa.Array:
    """Rows with a suspect element."""
    values = pc.list_flatten(col)
    parents = pc.list_parent_indices(col)
    bad = _none(values)
    for check in inner:
        bad = pc.or_(bad, check(values))
    rows = pc.filter(parents, bad).cast(pa.int64())
    every = pc.indices_nonzero(_all(col)).cast(pa.int64())
    return pc.is_in(every, value_set=rows)
