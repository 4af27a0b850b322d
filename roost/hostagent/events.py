"""Status events: one JSON object per line, Lima's schema plus roost's fields.

    {"time": RFC3339, "status": {"running", "degraded", "exiting", "errors",
     "sshLocalPort", "phase", "guestAgent", "requirements", ...}}

Each event is a full snapshot of the status, so a reader needs only the
last line. Writes are serialized and flushed line by line; the file is
rotated past a size (roost.store.logfile), and status.errors keeps only the
newest MAX_ERRORS, counting the others in errorsDropped: a host agent that
runs for months stays the same size.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from datetime import UTC, datetime
from typing import Any, TextIO

from roost.store.logfile import Rotation

log = logging.getLogger(__name__)

MAX_ERRORS = 50
MAX_ERROR_CHARS = 2000  # one error's message (a guest's output may be in it)


def rfc3339_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class EventEmitter:
    def __init__(self, out: TextIO, rotation: Rotation | None = None) -> None:
        self._out = out
        self._rotation = rotation  # of `out`'s file, when it is one
        self._lock = threading.Lock()
        self._write_failed = False
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
            self._write(event)
            return copy.deepcopy(event)

    def emit_transient(self, **fields: Any) -> None:
        """An event whose extra status fields (e.g. portForward) are not kept."""
        with self._lock:
            status = {**_compact(self.status), **fields}
            event = {"time": rfc3339_now(), "status": status}
            self._write(event)

    def _write(self, event: dict[str, Any]) -> None:
        # A full file system keeps the event in the stream's buffer (what was
        # written of it stays a torn line, which readers skip until the rest
        # follows with the next flush); the status itself lives on in memory.
        try:
            self._out.write(json.dumps(event, separators=(",", ":")) + "\n")
            self._out.flush()
            if self._rotation is not None:
                self._rotation.check()
        except OSError as e:
            if not self._write_failed:
                log.warning("cannot write the status events: %s", e)
            self._write_failed = True
        else:
            self._write_failed = False

    def add_error(self, message: str) -> None:
        if len(message) > MAX_ERROR_CHARS:
            cut = " ... (cut short)"
            message = message[:MAX_ERROR_CHARS - len(cut)] + cut
        with self._lock:
            errors = [*self.status.get("errors", []), message]
            if len(errors) > MAX_ERRORS:
                dropped = len(errors) - MAX_ERRORS
                self.status["errorsDropped"] = self.status.get("errorsDropped", 0) + dropped
                errors = errors[dropped:]
            self.status["errors"] = errors

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(_compact(self.status))


def _compact(status: dict[str, Any]) -> dict[str, Any]:
    """Lima omits empty fields; so do we, except the three booleans."""
    keep = {"running", "degraded", "exiting"}
    return {k: v for k, v in status.items() if k in keep or v not in (None, [], {}, "")}
