"""A configuration document: one YAML file read into plain data, before any
schema. Errors name the file. No pydantic here: `roost template list` reads
documents without validating them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from roost.config import MAX_DOCUMENT_BYTES
from roost.config.yamltext import YamlProblem, load_yaml
from roost.errors import UsageError


class ConfigError(UsageError):
    """Invalid configuration; the message names each bad key or file."""


def read_text(path: Path, what: str = "config file") -> str:
    """The text of `path`, refused unreadable, over MAX_DOCUMENT_BYTES or not UTF-8."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_DOCUMENT_BYTES + 1)  # never more, whatever `path` is
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a directory, not a YAML file") from None
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise ConfigError(f"{what} {path} is larger than {MAX_DOCUMENT_BYTES // 1024} KiB; "
                          "a configuration is a few KiB (is it the right file?)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {e.start} is "
                          f"{data[e.start]:#04x}); save it as UTF-8") from None


def read_document(path: Path, what: str = "config file") -> Any:
    """The YAML data in `path` (None for an empty file)."""
    text = read_text(path, what)
    try:
        return load_yaml(text)
    except YamlProblem as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None


def read_mapping(path: Path, what: str = "config file") -> dict[str, Any]:
    """Like read_document, for a file whose top level must be a mapping."""
    data = read_document(path, what)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def leading_comment(path: Path) -> str:
    """The first paragraph of the comment a YAML file starts with (up to a
    bare `#` line), as one line of text: a template's description."""
    words: list[str] = []
    for line in path.read_text().splitlines():
        text = line.lstrip("#").strip()
        if not line.startswith("#") or not text:
            break
        words.append(text)
    return " ".join(words)
