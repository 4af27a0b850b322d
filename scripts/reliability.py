#!/usr/bin/env python3
"""Write RELIABILITY.md from what the suite recorded in tests/.results/.

    python3 scripts/reliability.py [--results tests/.results] [--out RELIABILITY.md]

Each result file is written by its tests while they run (faults.json by
tests/e2e/test_faults.py, hostile.json by test_hostile_guest.py,
badinput.json, apifuzz.json, load.json, ...); a file that is missing is
listed as not run, never filled in. scripts/test.sh runs this after a full
suite.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _load(results: Path, name: str) -> Any:
    try:
        return json.loads((results / name).read_text())
    except (OSError, ValueError):
        return None


def _cell(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    # Bad inputs hold any bytes: control characters shown escaped, as JSON would.
    text = "".join(c if c.isprintable() or c in " \t\n" else json.dumps(c)[1:-1]
                   for c in text)
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _faults(data: Any) -> tuple[list[str], dict[str, Any]]:
    if not data:
        return ["Not run."], {}
    faults = data.get("faults", {})
    rows = [[name, f.get("what", ""), f.get("expected", ""), f.get("ls", ""),
             f.get("message", ""), "yes" if f.get("recovered") else "**no**",
             len(f.get("residue", []))]
            for name, f in sorted(faults.items())]
    lines = _table(["fault", "injected", "expected", "`roost ls`", "what roost said",
                    "recovered", "residue"], rows)
    failed = [(n, f["failure"]) for n, f in sorted(faults.items()) if f.get("failure")]
    if failed:
        lines += ["", "Not recovered:", ""] + [f"* `{n}`: {_cell(why, 400)}" for n, why in failed]
    return lines, data.get("summary", {})


def _hostile(data: Any) -> tuple[list[str], dict[str, Any]]:
    if not data:
        return ["Not run."], {}
    attacks = data.get("attacks", {})
    rows = [[name, a.get("what", ""), "refused" if a.get("refused") else "**not refused**"]
            for name, a in sorted(attacks.items())]
    lines = _table(["attack from guest root", "what", "outcome"], rows)
    if data.get("figures"):
        lines += ["", "Figures:", ""] + [f"* {k}: `{_cell(v, 300)}`"
                                         for k, v in sorted(data["figures"].items())]
    return lines, data.get("summary", {})


def _cases(data: Any) -> tuple[list[str], dict[str, Any]]:
    """A list of {input, expected, outcome} (or {"cases": [...], "summary": {}})."""
    if not data:
        return ["Not run."], {}
    cases = data.get("cases", []) if isinstance(data, dict) else data
    rows = [[c.get("input", ""), c.get("expected", ""), c.get("outcome", "")] for c in cases]
    summary = data.get("summary", {}) if isinstance(data, dict) else {}
    if not summary:
        refused = sum(1 for c in cases if c.get("refused", True))
        summary = {"tried": len(cases), "refused": refused}
    return _table(["bad input", "expected", "what happened"], rows), summary


def _flat(value: Any, prefix: str = "", depth: int = 3) -> list[list[Any]]:
    """Nested figures as dotted keys (a.b.c), lists and deep parts as JSON."""
    if isinstance(value, dict) and depth > 0:
        rows: list[list[Any]] = []
        for k, v in value.items():
            rows += _flat(v, f"{prefix}.{k}" if prefix else str(k), depth - 1)
        return rows
    return [[prefix, value]]


def _plain(data: Any) -> tuple[list[str], dict[str, Any]]:
    """Figures as recorded: key, value; its summary, or its plain top-level figures."""
    if not data:
        return ["Not run."], {}
    summary = data.get("summary", {}) if isinstance(data, dict) else {}
    if not summary and isinstance(data, dict):
        summary = {k: v for k, v in data.items() if isinstance(v, int | float | str)}
        summary = summary or {"recorded": ", ".join(map(str, data))}
    figures = {k: v for k, v in data.items() if k != "summary"} if isinstance(data, dict) \
        else dict(enumerate(data))
    return _table(["what", "recorded"], _flat(figures)), summary


SECTIONS = [
    ("Faults injected", "faults.json", _faults),
    ("Bad input", "badinput.json", _cases),
    ("Guest root attacks", "hostile.json", _hostile),
    ("API fuzzing", "apifuzz.json", _plain),
    ("Wire protocol fuzzing", "frame_fuzz.json", _plain),
    ("Load", "load.json", _plain),
]


def _written(path: Path) -> str:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime("%Y-%m-%d %H:%M UTC")
    except OSError:
        return "never"


def render(results: Path) -> str:
    # The checkout the results were recorded in (tests/.results is in it).
    repo = results.resolve().parents[1]
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    out = ["# Reliability", "",
           f"Written by `scripts/reliability.py` from `tests/.results/` of a checkout at "
           f"commit `{commit}`, after the suite ran there. Nothing here is typed in by hand: "
           "each table is what the tests recorded while they ran; each section says when "
           "its file was written.", "",
           "## Totals", ""]
    body: list[str] = []
    totals: list[list[Any]] = []
    for title, name, section in SECTIONS:
        lines, summary = section(_load(results, name))
        body += ["", f"## {title}", "",
                 f"From `tests/.results/{name}`, written {_written(results / name)}.", "",
                 *lines]
        totals.append([title, ", ".join(f"{k}: {_cell(v, 80)}" for k, v in summary.items())
                       if summary else "not run"])
    out += _table(["area", "totals"], totals)
    return "\n".join(out + body) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", type=Path, default=ROOT / "tests" / ".results")
    parser.add_argument("--out", type=Path, default=ROOT / "RELIABILITY.md")
    args = parser.parse_args()
    args.out.write_text(render(args.results))
    print(f"reliability: wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
