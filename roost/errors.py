"""Errors that carry a message meant for the user."""


class RoostError(Exception):
    """A failure with a message that says what is wrong and what to do."""

    exit_code = 1


class UsageError(RoostError):
    """Bad input from the user (exit status 2)."""

    exit_code = 2


# Bounds on what a message quotes: a value from the user may be megabytes.
QUOTE_CHARS = 200
MAX_LISTED = 20


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """`value`'s repr, cut to `limit` characters with an ellipsis."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def listing(lines: list[str], limit: int = MAX_LISTED) -> list[str]:
    """At most `limit` of `lines`, then a line that counts the rest."""
    if len(lines) <= limit:
        return lines
    return [*lines[:limit], f"... and {len(lines) - limit} more"]


def shown(text: str, limit: int = 80) -> str:
    """`text` as it is when short and printable, else quoted (and cut)."""
    return text if len(text) <= limit and text.isprintable() else quote(text, limit)


def cut(text: str, limit: int = 2 * QUOTE_CHARS) -> str:
    """A message made elsewhere, at most about `limit` characters: its start
    and its end (where the reason usually is), the middle left out."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}...{text[-half:]}"
