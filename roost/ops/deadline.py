"""One deadline for everything `roost start --timeout` does, phase by phase.

The CLI's own phases (fetching or building the image, making the disk)
block in downloads, builds and locks that have no timeout of their own, so
they are bounded with SIGALRM: its handler raises in the main thread, which
ends a blocking system call there; `subprocess.run` kills its child on the
way out, and every `finally`/`except BaseException` cleans up as for Ctrl-C.
The host agent gets the same deadline (handoff.START_DEADLINE_ENV)
and fits its readiness waits into it.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from roost.errors import RoostError


class _Expired(BaseException):
    """Raised by SIGALRM. Not an Exception: no retry loop in a download or a
    build may take it for a failure to retry."""


class StartTimeout(RoostError):
    pass


class Deadline:
    def __init__(self, seconds: float, what: str = "roost start") -> None:
        self.seconds = seconds
        self.what = what
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(self.at - time.monotonic(), 0.0)

    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def message(self, phase: str) -> str:
        return f"{self.what} did not finish in {self.seconds:g}s (--timeout): time ran out {phase}"

    @contextmanager
    def bounding(self, phase: str, last_step: Callable[[], str] = str) -> Iterator[None]:
        """Run the block with the deadline enforced; on expiry a StartTimeout
        naming `phase` (e.g. "while preparing the image") and the block's
        `last_step()` is raised."""
        def expired() -> StartTimeout:
            step = last_step()
            return StartTimeout(self.message(phase) + (f" (last step: {step})" if step else ""))

        if self.expired():
            raise expired()
        if threading.current_thread() is not threading.main_thread():
            # SIGALRM reaches only the main thread (an SDK call runs in a worker):
            # the block runs unbounded and the deadline is checked at its end.
            yield
            if self.expired():
                raise expired()
            return

        def expire(signum: int, frame: FrameType | None) -> None:
            raise _Expired

        previous = signal.signal(signal.SIGALRM, expire)
        try:
            signal.setitimer(signal.ITIMER_REAL, max(self.remaining(), 0.001))
            try:
                yield
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _Expired:  # also one that fired just as the block ended: it did expire
            raise expired() from None
        finally:
            signal.signal(signal.SIGALRM, previous)
