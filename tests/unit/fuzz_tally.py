"""The counts of a fuzz run: requests per operation and per status, and the
answers that were not as documented; written as JSON for the results."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

MAX_KEPT = 30  # problems kept in full; the rest are counted


@dataclass
class Tally:
    started: float = field(default_factory=time.monotonic)
    by_operation: defaultdict[str, Counter[str]] = field(
        default_factory=lambda: defaultdict(Counter))
    by_source: Counter[str] = field(default_factory=Counter)
    by_status: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.by_source.values())

    def count(self, source: str, operation: str, status: int | str) -> None:
        self.by_operation[operation][str(status)] += 1
        self.by_source[source] += 1
        self.by_status[str(status)] += 1

    def problem(self, where: str, what: list[str]) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_KEPT:
            self.problems.append(f"{where}: {'; '.join(what)}")

    def write(self, path: Path) -> None:
        seconds = sum(self.seconds.values())
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({
            "requests": self.total, "seconds": round(seconds, 1),
            "perSecond": round(self.total / seconds) if seconds else None,
            "secondsByPart": {k: round(v, 1) for k, v in self.seconds.items()},
            "bySource": dict(sorted(self.by_source.items())),
            "byStatus": dict(sorted(self.by_status.items())),
            "byOperation": {op: dict(sorted(c.items()))
                            for op, c in sorted(self.by_operation.items())},
            "notAsDocumented": self.problem_count, "problems": self.problems,
        }, indent=2) + "\n")
