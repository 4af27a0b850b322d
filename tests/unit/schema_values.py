"""Hypothesis strategies of JSON values from the JSON schemas of the host
agent's OpenAPI document: values that fit a schema, and values that break it
in one place (a wrong type, a missing or unknown field, a bound or pattern
crossed).

Only the keywords the document uses are read ($ref, type, enum, const,
pattern, minimum/maximum, exclusiveMaximum, minItems, items, properties,
required, additionalProperties: false); a schema with another keyword is
refused, so a new one cannot be silently ignored.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from hypothesis import strategies as st

Schema = dict[str, Any]
KNOWN = {"$ref", "type", "enum", "const", "pattern", "minimum", "maximum",
         "exclusiveMaximum", "minItems", "items", "properties", "required",
         "additionalProperties", "title", "description", "default"}

_ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8)


class Values:
    """Strategies for the schemas of one document (its components resolve $refs)."""

    def __init__(self, components: dict[str, Schema]) -> None:
        self.components = components
        self._cache: dict[tuple[str, str], st.SearchStrategy[Any]] = {}

    def valid(self, schema: Schema) -> st.SearchStrategy[Any]:
        return self._cached("valid", schema)

    def broken(self, schema: Schema) -> st.SearchStrategy[Any]:
        """A value that `schema` refuses, broken at the top or in one field."""
        return self._cached("broken", schema)

    def _cached(self, kind: str, schema: Schema) -> st.SearchStrategy[Any]:
        """Built once per schema: building (from_regex above all) is what
        costs, far more than drawing."""
        key = (kind, json.dumps(schema, sort_keys=True))
        if key not in self._cache:
            self._cache[key] = (self._valid if kind == "valid" else self._broken)(schema)
        return self._cache[key]

    def resolve(self, schema: Schema) -> Schema:
        while "$ref" in schema:
            schema = self.components[schema["$ref"].rsplit("/", 1)[1]]
        unknown = set(schema) - KNOWN
        assert not unknown, f"schema keywords this generator does not know: {unknown}"
        return schema

    def _valid(self, schema: Schema) -> st.SearchStrategy[Any]:
        s = self.resolve(schema)
        if "const" in s:
            return st.just(s["const"])
        if "enum" in s:
            return st.sampled_from(s["enum"])
        kind = s.get("type")
        if kind == "object":
            return self._object(s)
        if kind == "array":
            return st.lists(self.valid(s.get("items", {})), min_size=s.get("minItems", 0),
                            max_size=max(4, s.get("minItems", 0)))
        if kind == "string":
            if "pattern" in s:
                return st.from_regex(_fullmatch(s["pattern"]), fullmatch=True)
            return st.text(max_size=40)
        if kind == "boolean":
            return st.booleans()
        if kind == "integer":
            return st.integers(s.get("minimum"), s.get("maximum"))
        if kind == "number":
            top = s.get("exclusiveMaximum", s.get("maximum"))
            return st.floats(s.get("minimum"), top, exclude_max="exclusiveMaximum" in s,
                             allow_nan=False, allow_infinity=False)
        assert kind is None or isinstance(kind, list), s
        return _ANY_JSON

    def _object(self, s: Schema) -> st.SearchStrategy[dict[str, Any]]:
        props: dict[str, Schema] = s.get("properties", {})
        required = set(s.get("required", []))
        return st.fixed_dictionaries(
            {name: self.valid(props[name]) for name in props if name in required},
            optional={name: self.valid(props[name]) for name in props if name not in required})

    def _broken(self, schema: Schema) -> st.SearchStrategy[Any]:
        s = self.resolve(schema)
        options = [self._wrong_type(s)]
        if s.get("type") == "object":
            options.append(self._broken_object(s))
        if s.get("type") == "string" and "pattern" in s:
            options.append(st.text().filter(lambda v: not re.fullmatch(s["pattern"], v)))
        if s.get("type") in ("integer", "number"):
            below = s.get("minimum", -math.inf) - 1
            above = s.get("exclusiveMaximum", s.get("maximum", math.inf) + 1)
            options.append(st.sampled_from([v for v in (below, above) if math.isfinite(v)]
                                           or [1.5]))
        if s.get("type") == "array" and s.get("minItems"):
            options.append(st.just([]))
        if "enum" in s or "const" in s:
            allowed = s.get("enum", [s.get("const")])
            options.append(st.text().filter(lambda v: v not in allowed))
        return st.one_of(options)

    def _wrong_type(self, s: Schema) -> st.SearchStrategy[Any]:
        kind = s.get("type")
        others = {"object": st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
                  "array": st.lists(st.integers(), max_size=2), "string": st.text(max_size=9),
                  "boolean": st.booleans(), "integer": st.integers(),
                  "number": st.floats(allow_nan=False) | st.integers(), "null": st.none()}
        if kind == "number":
            del others["integer"]
        if kind is not None and kind in others:
            del others[kind]
        elif "enum" in s or "const" in s:
            del others["string"]
        return st.one_of(list(others.values()))

    def _broken_object(self, s: Schema) -> st.SearchStrategy[dict[str, Any]]:
        props: dict[str, Schema] = s.get("properties", {})
        required = [name for name in s.get("required", []) if name in props]

        @st.composite
        def one_field_broken(draw: st.DrawFn) -> dict[str, Any]:
            value: dict[str, Any] = draw(self._object(s))
            how = draw(st.sampled_from(["missing", "unknown", "field"]))
            if how == "missing" and required:
                del value[draw(st.sampled_from(required))]
            elif how == "unknown" or not props:
                name = draw(st.text(min_size=1, max_size=12).filter(lambda n: n not in props))
                value[name] = draw(_ANY_JSON)
            else:
                name = draw(st.sampled_from(sorted(props)))
                value[name] = draw(self.broken(props[name]))
            return value

        return one_field_broken()


def _fullmatch(pattern: str) -> str:
    """The pattern anchored with \\Z, as JSON schema's (and pydantic's) $
    means the end: Python's $ would also take a trailing newline."""
    return pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith(r"\$") else (
        pattern)
