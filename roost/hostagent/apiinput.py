"""A request's input checked against its model in roost.hostagent.apimodels.

A wrong input is an InputError whose message names each field that is wrong
and what it should be: `writable: expected a boolean, got "no"`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from roost.errors import UsageError
from roost.hostagent.apimodels import NO_NUL, ApiInput, wire_name

Input = TypeVar("Input", bound=ApiInput)

# What an error type says was expected, for the types the models use.
_EXPECTED = {
    "bool_type": "a boolean", "bool_parsing": "a boolean (true or false)",
    "string_type": "a string", "float_type": "a number",
    "int_type": "an integer", "list_type": "a list", "dict_type": "an object",
    "dataclass_type": "an object", "finite_number": "a finite number",
}


class InputError(UsageError):
    """The request's body, query or path is not what its route takes (400)."""


_adapters: dict[type[ApiInput], TypeAdapter[Any]] = {}


def adapter(model: type[Input]) -> TypeAdapter[Input]:
    """The model's validator, built once (building one takes milliseconds)."""
    if model not in _adapters:
        _adapters[model] = TypeAdapter(model)
    return _adapters[model]


def field_names(model: type[ApiInput]) -> list[str]:
    return [wire_name(f.name) for f in dataclasses.fields(model)]


def from_json(model: type[Input], raw: bytes | str, what: str = "the request body") -> Input:
    """A request body (or `what` else is JSON, such as a WebSocket message):
    JSON, an object, with the model's fields and no other."""
    try:
        return adapter(model).validate_json(raw)
    except ValidationError as e:
        raise InputError(describe(e, model, "", what)) from None


def from_strings(model: type[Input], values: Mapping[str, str], where: str) -> Input:
    """A query or a path's parameters (`where` says which, for the message)."""
    try:
        return adapter(model).validate_strings(dict(values))
    except ValidationError as e:
        raise InputError(describe(e, model, f"{where} ")) from None


def describe(error: ValidationError, model: type[ApiInput], prefix: str,
             what: str = "the request body") -> str:
    return "; ".join(_one(e, model, prefix, what) for e in error.errors(include_url=False))


def _one(e: ErrorDetails, model: type[ApiInput], prefix: str, what: str) -> str:
    kind, loc = e["type"], e["loc"]
    ctx: dict[str, Any] = dict(e.get("ctx") or {})
    if kind == "json_invalid":
        return f"{what} is not JSON ({ctx.get('error', 'unreadable')})"
    if not loc:  # the whole input
        return f"{what} must be a JSON object, got {_kind_of(e['input'])}"
    where = prefix + _path(loc)
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        return f"{where}: unknown field (known: {', '.join(field_names(model))})"
    if kind == "missing":
        return f"{where}: required"
    return f"{where}: expected {_expected(kind, ctx, e['msg'])}, got {_shown(e['input'])}"


def _expected(kind: str, ctx: dict[str, Any], message: str) -> str:
    if kind in _EXPECTED:
        return _EXPECTED[kind]
    if kind == "literal_error":
        return f"one of {ctx['expected']}"
    if kind == "too_short":
        return f"at least {ctx['min_length']} item(s)"
    if kind == "greater_than_equal":
        return f"a number >= {ctx['ge']:g}"
    if kind == "less_than":
        return f"a number < {ctx['lt']:g}"
    if kind == "less_than_equal":
        return f"a number <= {ctx['le']:g}"
    if kind == "string_pattern_mismatch":
        if ctx["pattern"] == NO_NUL:
            return "a string without NUL bytes"
        return f"a string matching {ctx['pattern']}"
    return message[0].lower() + message[1:]  # pydantic's words: "input should be ..."


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _kind_of(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number" if isinstance(value, int | float) else type(value).__name__


def _shown(value: object) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
