"""The record of bad inputs tried: tests/.results/badinput.json.

A list of {input, expected, outcome, ok}, one per input, rewritten after
each, for RELIABILITY.md (as tests/e2e/test_hostile_guest.py writes
hostile.json). `outcome` is what roost did: its exit status and the first
line of its message, or the exception that escaped.

    python3 -c 'import json; r = json.load(open("tests/.results/badinput.json")); \\
        print(len(r), sum(e["ok"] for e in r))'
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / ".results" / "badinput.json"
REFUSED = "refused: exit 2, a message naming the key, nothing left behind"

_records: dict[str, dict[str, Any]] = {}


def record(what: str, expected: str, outcome: str, ok: bool) -> None:
    _records[what] = {"input": what, "expected": expected, "outcome": outcome[:300], "ok": ok}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(list(_records.values()), indent=2) + "\n")


def fuzzed(what: str, expected: str, examples: int, run: Callable[[], None],
           tally: dict[str, int] | None = None) -> None:
    """Run a hypothesis property (`run`) and record how it went; `tally`
    counts what the inputs came to (accepted, refused), filled by `run`."""
    try:
        run()
    except BaseException as e:
        record(what, expected, f"{examples} examples; failed: {str(e)[:250]}", False)
        raise
    counts = "".join(f", {n} {k}" for k, n in (tally or {}).items())
    record(what, expected, f"{examples} examples{counts}: all as expected", True)
