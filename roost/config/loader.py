"""Load, validate and write roost.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from roost.config.document import ConfigError, read_document
from roost.config.model import Config

__all__ = ["Config", "ConfigError", "dump_config", "load_config", "parse_config"]


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "tuple[", "list[", "str", "int", "literal[")):
            continue  # pydantic's union and validator branches, not user keys
        else:
            out += f".{part}" if out else part
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
    if kind in ("int_parsing", "int_type"):
        return f"expected a whole number, got {err.get('input')!r}"
    if kind in ("bool_parsing", "bool_type"):
        return f"expected true or false, got {err.get('input')!r}"
    if kind == "literal_error":
        return f"{msg}, got {err.get('input')!r}"
    return msg


def parse_config(data: Any, source: str = "roost.yaml") -> Config:
    from pydantic import ValidationError

    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values at the top level")
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        lines = [f"{_key_path(err['loc'])}: {_message(dict(err))}" for err in e.errors()]
        raise ConfigError(f"invalid configuration in {source}:\n  " + "\n  ".join(lines)) from None


def load_config(path: Path) -> Config:
    return parse_config(read_document(path), str(path))


def dump_config(config: Config) -> str:
    data = config.model_dump(by_alias=True, mode="json")
    return yaml.safe_dump(data, sort_keys=False)
