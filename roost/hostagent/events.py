"""Status events: one JSON object per line, Lima's schema plus roost's fields.

    {"time": RFC3339, "status": {"running", "degraded", "exiting", "errors",
     "sshLocalPort", "phase", "guestAgent", "requirements", ...}}

Each event is a full snapshot of the status, so a reader needs only the
last line. Writes are serialized and flushed line by line.
"""

from __future__ import annotations

import copy
import json
import threading
from datetime import UTC, datetime
from typing import Any, TextIO


def rfc3339_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class EventEmitter:
    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lock = threading.Lock()
        self.status: dict[str, Any] = {"running": False, "degraded": False, "exiting": False,
                                       "errors": []}

    def emit(self, **changes: Any) -> dict[str, Any]:
        with self._lock:
            for key, value in changes.items():
                if value is None:
                    self.status.pop(key, None)
                else:
                    self.status[key] = value
            event = {"time": rfc3339_now(), "status": _compact(self.status)}
            self._out.write(json.dumps(event, separators=(",", ":")) + "\n")
            self._out.flush()
            return copy.deepcopy(event)

    def emit_transient(self, **fields: Any) -> None:
        """An event whose extra status fields (e.g. portForward) are not kept."""
        with self._lock:
            status = {**_compact(self.status), **fields}
            event = {"time": rfc3339_now(), "status": status}
            self._out.write(json.dumps(event, separators=(",", ":")) + "\n")
            self._out.flush()

    def add_error(self, message: str) -> None:
        with self._lock:
            self.status["errors"] = [*self.status.get("errors", []), message]

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(_compact(self.status))


def _compact(status: dict[str, Any]) -> dict[str, Any]:
    """Lima omits empty fields; so do we, except the three booleans."""
    keep = {"running", "degraded", "exiting"}
    return {k: v for k, v in status.items() if k in keep or v not in (None, [], {}, "")}
