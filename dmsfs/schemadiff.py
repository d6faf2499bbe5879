"""What changed between two JSON Schemas for one record.

Properties are compared by their path through `properties` (and `items`):
a property only in the new schema is added, only in the old one removed; for
one in both, every keyword that differs (type, enum, format, bounds, ...) is a
change, and so is a property becoming required or optional.
"""

from __future__ import annotations

from typing import Any

NESTED = ("properties", "items", "required")


def schema_diff(old: Any, new: Any) -> dict[str, list[dict[str, Any]]]:
    """{"added", "removed", "changed"}, each sorted by pointer (then keyword)."""
    out: dict[str, list[dict[str, Any]]] = {"added": [], "removed": [], "changed": []}
    _compare(old if isinstance(old, dict) else {}, new if isinstance(new, dict) else {}, "",
             out)
    for key in out:
        out[key].sort(key=lambda d: (d["pointer"], d.get("what", "")))
    return out


def _compare(old: dict[str, Any], new: dict[str, Any], ptr: str,
             out: dict[str, list[dict[str, Any]]]) -> None:
    for keyword in sorted((old.keys() | new.keys()) - set(NESTED)):
        if old.get(keyword) != new.get(keyword) or (keyword in old) != (keyword in new):
            out["changed"].append({"pointer": ptr, "what": keyword,
                                   "old": old.get(keyword), "new": new.get(keyword)})
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    old_req, new_req = set(old.get("required", [])), set(new.get("required", []))
    for name in sorted(old_props.keys() | new_props.keys()):
        p = f"{ptr}/properties/{_escape(name)}"
        if name not in new_props:
            out["removed"].append({"pointer": p, "schema": old_props[name]})
        elif name not in old_props:
            out["added"].append({"pointer": p, "schema": new_props[name]})
        else:
            a, b = old_props[name], new_props[name]
            _compare(a if isinstance(a, dict) else {}, b if isinstance(b, dict) else {}, p, out)
        if name in old_props and name in new_props and (name in old_req) != (name in new_req):
            out["changed"].append({"pointer": p, "what": "required",
                                   "old": name in old_req, "new": name in new_req})
    for name in sorted((old_req ^ new_req) - old_props.keys() - new_props.keys()):
        out["changed"].append({"pointer": f"{ptr}/properties/{_escape(name)}",
                               "what": "required", "old": name in old_req,
                               "new": name in new_req})
    if "items" in old or "items" in new:
        a, b = old.get("items"), new.get("items")
        if isinstance(a, dict) and isinstance(b, dict):
            _compare(a, b, f"{ptr}/items", out)
        elif a != b:
            out["changed"].append({"pointer": ptr, "what": "items", "old": a, "new": b})


def _escape(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")
