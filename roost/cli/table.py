"""Plain text tables: columns two spaces apart, the last one not padded."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

Row = TypeVar("Row")


def table_lines(rows: Sequence[Sequence[str]]) -> list[str]:
    """Each row as a line; every column but the last padded to its widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]])
            .rstrip() for row in rows]


def listing_lines(rows: Sequence[Row], as_json: bool, header: Sequence[str],
                  cells: Callable[[Row], Sequence[str]], empty: str | None = None) -> list[str]:
    """What a `list` command prints: its rows as JSON; else `empty` when there
    are none (if given), or a table of `header` and each row's `cells`."""
    if as_json:
        import json

        return [json.dumps(list(rows), indent=2)]
    if not rows and empty is not None:
        return [empty]
    table: list[Sequence[str]] = [header, *(cells(r) for r in rows)]
    return table_lines(table)
