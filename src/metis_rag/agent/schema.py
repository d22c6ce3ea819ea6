"""Checks tool arguments against the JSON-schema subset tool specs use.

Supported keywords: type (string, integer, number, boolean, array, object, null, or a list of
them), properties, required, additionalProperties (bool), enum, minimum, maximum, minLength,
maxLength, items, maxItems. A schema keyword outside this set is refused when a spec is
registered, so a spec can never claim a check that is not made.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SUPPORTED = frozenset({
    "type", "properties", "required", "additionalProperties", "enum", "minimum", "maximum",
    "minLength", "maxLength", "items", "maxItems", "description", "default", "title",
})

_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list, tuple),
    "object": (dict, Mapping),
    "null": (type(None),),
}


def check_schema(schema: Mapping[str, Any], where: str = "parameters") -> None:
    """Raise ValueError when `schema` uses a keyword this validator does not enforce."""
    unknown = set(schema) - SUPPORTED
    if unknown:
        raise ValueError(f"{where}: unsupported JSON-schema keywords {sorted(unknown)}")
    for name, sub in (schema.get("properties") or {}).items():
        check_schema(sub, f"{where}.{name}")
    if isinstance(schema.get("items"), Mapping):
        check_schema(schema["items"], f"{where}[]")


def errors(value: Any, schema: Mapping[str, Any], path: str = "") -> list[str]:
    """Every way `value` breaks `schema`, as short sentences (empty: valid)."""
    where = path or "arguments"
    kinds = schema.get("type")
    if kinds is not None:
        names = [kinds] if isinstance(kinds, str) else list(kinds)
        if not any(_is(value, k) for k in names):
            return [f"{where} must be {' or '.join(names)}, not {_kind(value)}"]
    found: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{where} must be one of {list(schema['enum'])}")
    found += _scalar_errors(value, schema, where)
    if isinstance(value, (list, tuple)):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            found.append(f"{where} must have at most {schema['maxItems']} items")
        elif isinstance(schema.get("items"), Mapping):
            for i, item in enumerate(value):
                found += errors(item, schema["items"], f"{where}[{i}]")
    if isinstance(value, Mapping):
        found += _object_errors(value, schema, path)
    return found


def _scalar_errors(value: Any, schema: Mapping[str, Any], where: str) -> list[str]:
    found: list[str] = []
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            found.append(f"{where} must be >= {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            found.append(f"{where} must be <= {schema['maximum']}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            found.append(f"{where} must have at least {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            found.append(f"{where} must have at most {schema['maxLength']} characters")
    return found


def _object_errors(value: Mapping[str, Any], schema: Mapping[str, Any], path: str) -> list[str]:
    found: list[str] = []
    props: Mapping[str, Any] = schema.get("properties") or {}
    for name in schema.get("required", ()):
        if name not in value:
            found.append(f"{_join(path, name)} is required")
    for name, item in value.items():
        if not isinstance(name, str):
            found.append(f"{path or 'arguments'} has a non-string key")
        elif name in props:
            found += errors(item, props[name], _join(path, name))
        elif schema.get("additionalProperties", True) is False:
            found.append(f"{_join(path, name)[:80]} is not a known argument")
    return found


def _is(value: Any, kind: str) -> bool:
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES.get(kind, ()))


def _kind(value: Any) -> str:
    for name in _TYPES:
        if _is(value, name):
            return name
    return type(value).__name__


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
