"""What cloud-init is doing in the guest, from its own files.

One SSH command gathers them (`PROBE`); `parse` reads its output. Sources:
/run/cloud-init/status.json (per stage: start, finished, errors), then
result.json (written when the final stage ends, with every error), the
last lines of /var/log/cloud-init-output.log (Lima's cloudInitProgress
logLine), roost's boot-done marker, and roost-boot's note that the image
has no python3 for the guest agent. Those files are root's (0640 root:adm
for the log), so the probe reads them through `sudo -n` unless it is root.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

_SECTIONS = ("status", "result", "done", "log", "agent")
PROBE = (
    's=; [ "$(id -u)" = 0 ] || s="sudo -n"; '
    'echo @@status; $s cat /run/cloud-init/status.json 2>/dev/null; '
    'echo @@result; $s cat /run/cloud-init/result.json 2>/dev/null; '
    'echo @@done; cat /run/roost/boot-done 2>/dev/null; '
    'echo @@log; $s tail -n 5 /var/log/cloud-init-output.log 2>/dev/null; '
    'echo @@agent; cat /run/roost/guestagent-missing 2>/dev/null; true'
)
MAX_ERRORS = 10


@dataclass(frozen=True)
class CloudInitState:
    stage: str = ""  # the stage running now, if any
    finished: bool = False  # result.json is there: the final stage has ended
    errors: list[str] = field(default_factory=list)
    log_line: str = ""
    boot_done: str = ""  # the marker's line: "BOOT_ID STATUS [FAILED_STEP]"
    agent_missing: str = ""

    @property
    def failed(self) -> bool:
        return bool(self.errors)


def _sections(output: str) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    current = ""
    for line in output.splitlines():
        name = line[2:].strip() if line.startswith("@@") else ""
        if name in _SECTIONS:
            current = name
            out[current] = []
        elif current:
            out[current].append(line)
    return {k: "\n".join(v).strip() for k, v in out.items()}


def _json(text: str) -> dict[str, object]:
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        return {}
    v1 = data.get("v1") if isinstance(data, dict) else None
    return v1 if isinstance(v1, dict) else {}


def printable(text: str) -> str:
    """The guest's text as it may reach the user's terminal: no escape
    sequences or other control characters (the guest is not trusted)."""
    return "".join(c if c.isprintable() else "?" for c in text)


def _error_lines(errors: object) -> list[str]:
    if not isinstance(errors, list):
        return []
    return [printable(str(e).strip()[:500]) for e in errors if str(e).strip()]


def _last_log_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # cloud-init's boxed tables (ci-info: +---+) say nothing on one line.
    useful = [ln for ln in lines if not ln.replace("ci-info:", "").strip().startswith(("+", "|"))]
    return printable((useful or lines or [""])[-1][:300])


def parse(output: str) -> CloudInitState:
    sec = _sections(output)
    status = _json(sec.get("status", ""))
    result = _json(sec.get("result", ""))
    errors: list[str] = []
    stage = str(status.get("stage") or "")
    for name, info in status.items():
        # A stage's errors count once it has finished; until then it may retry.
        if isinstance(info, dict) and info.get("finished"):
            errors += [f"{name}: {e}" for e in _error_lines(info.get("errors"))]
    finished = bool(result)
    if finished:
        errors = _error_lines(result.get("errors")) or errors
    return CloudInitState(
        stage=stage, finished=finished, errors=list(dict.fromkeys(errors))[:MAX_ERRORS],
        log_line=_last_log_line(sec.get("log", "")), boot_done=sec.get("done", ""),
        agent_missing=printable(sec.get("agent", "")[:300]),
    )
