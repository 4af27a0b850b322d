"""Readiness requirements: essential, optional and final.

Each has a description, a check and a debug hint shown when it fails.
Retries are bounded by the requirement's timeout; a check that says its
failure is permanent ends the wait at once. Everything is a coroutine, so
cancelling the wait stops a check in the middle of whatever it awaits.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from roost.hostagent.handoff import START_DEADLINE_ENV

Kind = Literal["essential", "optional", "final"]


def start_deadline_from_env() -> float | None:
    """The start's deadline, taken out of the environment (the host agent's
    children have no use for it); None when there is none or it is not a time."""
    value = os.environ.pop(START_DEADLINE_ENV, "")
    try:
        return float(value) if value else None
    except ValueError:
        return None


class NotReady(Exception):
    """The check failed this time; `permanent` failures are not retried, and
    `fatal` ones end this boot (nothing after them can pass)."""

    def __init__(self, message: str, permanent: bool = False, fatal: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent or fatal
        self.fatal = fatal


@dataclass(frozen=True)
class Requirement:
    name: str
    kind: Kind
    description: str
    check: Callable[[], Awaitable[None]]
    debug_hint: str
    timeout: float
    retry_interval: float = 0.05


@dataclass(frozen=True)
class Result:
    requirement: Requirement
    ok: bool
    seconds: float
    error: str = ""
    attempts: int = 0
    fatal: bool = False

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "name": self.requirement.name, "kind": self.requirement.kind,
            "description": self.requirement.description, "ok": self.ok,
            "seconds": round(self.seconds, 3),
        }
        if not self.ok:
            out["error"] = self.error
            out["hint"] = self.requirement.debug_hint
        return out


async def wait_for(req: Requirement, deadline_left: float | None = None) -> Result:
    """Retry `req`'s check until it passes, fails for good, or its time is up:
    its own timeout, or `deadline_left` (what is left of the start's deadline)
    if that is shorter. A timeout names the requirement, the time waited and
    the last error the check gave."""
    limit = req.timeout
    cut_short = deadline_left is not None and deadline_left < limit
    if deadline_left is not None:
        limit = min(limit, max(deadline_left, 0.0))
    start = time.monotonic()
    deadline = start + limit
    attempts = 0
    last = ""
    while True:
        attempts += 1
        window = asyncio.timeout(max(deadline - time.monotonic(), 0.0))
        try:
            async with window:
                await req.check()
            return Result(req, True, time.monotonic() - start, attempts=attempts)
        except NotReady as e:
            if e.permanent:
                return Result(req, False, time.monotonic() - start,
                              f"{req.description}: {e}", attempts, fatal=e.fatal)
            last = str(e)
        except TimeoutError as e:
            if window.expired():
                break  # cut off by the deadline: `last` is what the attempt before said
            last = f"TimeoutError: {e}" if str(e) else "the check timed out"
        except Exception as e:
            # A check that fails in an unplanned way is a failed attempt,
            # never a crash of readiness.
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() + req.retry_interval >= deadline:
            break
        await asyncio.sleep(req.retry_interval)
    waited = time.monotonic() - start
    seen = last or "none (the first check had not finished)"
    return Result(req, False, waited,
                  f"{req.description}: not ready after {waited:.1f}s ({attempts} attempts, "
                  f"limit {limit:.3g}s{', the rest of the start deadline' if cut_short else ''}"
                  f"); last error: {seen}", attempts)
