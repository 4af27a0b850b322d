"""Idle/busy status of the guest, from /proc/loadavg.

The 1-minute load average reacts in minutes; the fourth field of
/proc/loadavg (runnable tasks now / all tasks) reacts at once. Each sample
counts runnable tasks other than the sampler itself; the guest is busy
while that count is above the threshold.

Standard library only: runs in the guest.
"""

from __future__ import annotations

import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional


def read_loadavg(path: str = "/proc/loadavg") -> List[float]:
    """[load1, load5, load15, runnable-now] (the sampler excluded)."""
    with open(path) as f:
        fields = f.read().split()
    running = int(fields[3].split("/")[0]) - 1
    return [float(fields[0]), float(fields[1]), float(fields[2]), float(max(running, 0))]


class WorkerStatus:
    def __init__(self, threshold: float = 0.5, interval: float = 1.0,
                 on_change: Optional[Callable[[Dict[str, Any]], None]] = None) -> None:
        self.threshold = threshold
        self.interval = interval
        self.on_change = on_change
        self.state = "idle"
        self.last_busy_at: Optional[float] = None
        self.since = time.time()
        self.sample: List[float] = [0.0, 0.0, 0.0, 0.0]
        self._lock = threading.Lock()
        self._started = False

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        self.tick()
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            time.sleep(self.interval)
            self.tick()

    def tick(self) -> None:
        try:
            sample = read_loadavg()
        except (OSError, ValueError, IndexError):
            return
        now = time.time()
        busy = sample[3] > self.threshold
        with self._lock:
            self.sample = sample
            if busy:
                self.last_busy_at = now
            state = "busy" if busy else "idle"
            changed = state != self.state
            if changed:
                self.state, self.since = state, now
        if changed and self.on_change is not None:
            self.on_change(self.snapshot())

    def snapshot(self) -> Dict[str, Any]:
        with self._lock:
            return {"state": self.state, "since": self.since, "lastBusyAt": self.last_busy_at,
                    "runnable": self.sample[3], "loadavg": self.sample[:3],
                    "threshold": self.threshold, "sampleSecs": self.interval}
