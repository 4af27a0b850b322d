"""Load, validate and write roost.yaml."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from roost.config.document import ConfigError, read_document
from roost.config.model import Config
from roost.errors import listing, quote

__all__ = ["Config", "ConfigError", "dump_config", "load_config", "parse_config"]


# pydantic's names for union members and validators in an error's location:
# "str", "function-after[_size(), int]", "literal['a','b']"; not user keys.
_BRANCH = re.compile(r"(str|int|float|bool|none|[a-z-]+\[.*\])", re.DOTALL)
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_LINE = 500  # characters of one error line


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _BRANCH.fullmatch(part):
            continue
        else:
            key = part if _PLAIN_KEY.fullmatch(part) else quote(part, 60)
            out += f".{key}" if out else key
    return out or "(top level)"


def _message(err: dict[str, Any]) -> str:
    kind = err["type"]
    msg = str(err["msg"])
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    got = quote(err.get("input"))
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"expected a whole number, got {got}"
    if kind in ("bool_parsing", "bool_type"):
        return f"expected true or false, got {got}"
    if kind == "literal_error":
        return f"{msg}, got {got}"
    return msg


def _line(err: dict[str, Any]) -> str:
    line = f"{_key_path(tuple(err['loc']))}: {_message(err)}"
    return line if len(line) <= MAX_LINE else line[:MAX_LINE] + "..."


def parse_config(data: Any, source: str = "roost.yaml") -> Config:
    from pydantic import ValidationError

    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values at the top level")
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        lines = listing([_line(dict(err)) for err in e.errors()])
        raise ConfigError(f"invalid configuration in {source}:\n  " + "\n  ".join(lines)) from None


def load_config(path: Path) -> Config:
    return parse_config(read_document(path), str(path))


def dump_config(config: Config) -> str:
    data = config.model_dump(by_alias=True, mode="json")
    return yaml.safe_dump(data, sort_keys=False)
