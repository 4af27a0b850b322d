"""`roost ls` and `roost info`, printed (roost.ops.listing reads them).

On `roost ls`'s fast path (roost.cli.entry): nothing here imports what
`ls` does not use.
"""

from __future__ import annotations

import json

from roost.cli.table import table_lines
from roost.config.sizes import human_size
from roost.ops import listing as instances
from roost.ops.listing import parse_filter

TYPE_CHECKING = False  # not `typing`: it costs `roost ls` ~5 ms
if TYPE_CHECKING:
    from typing import Any

__all__ = ["info", "ls", "parse_filter"]


def _size_cell(value: Any) -> str:
    return human_size(value) if value else "-"


def ls(as_json: bool = False, fmt: str = "table", filters: list[tuple[str, str]] | None = None,
       ) -> None:
    rows = instances.listing(filters)
    if as_json or fmt == "json":
        print(json.dumps(rows, indent=2))
        return
    if fmt == "yaml":
        import yaml

        print(yaml.safe_dump(rows, sort_keys=False), end="")
        return
    header = ("NAME", "STATUS", "HEALTH", "SSH", "CPUS", "MEMORY", "DISK", "DIR")
    table = [header] + [
        (
            r["name"], r["status"], r["health"],
            f"127.0.0.1:{r['sshLocalPort']}" if r["sshLocalPort"] else "-",
            str(r["cpus"] or "-"), _size_cell(r["memory"]), _size_cell(r["disk"]), r["dir"],
        )
        for r in rows
    ]
    for line in table_lines(table):
        print(line)


def info(name: str, as_json: bool) -> None:
    out = instances.info(name)
    if as_json:
        print(json.dumps(out, indent=2))
        return
    import yaml

    print(yaml.safe_dump(out, sort_keys=False).rstrip())
