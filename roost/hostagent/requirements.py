"""Readiness requirements: essential, optional and final.

Each has a description, a check and a debug hint shown when it fails.
Retries are bounded by the requirement's timeout; a check that says its
failure is permanent ends the wait at once. Everything is a coroutine, so
cancelling the wait stops a check in the middle of whatever it awaits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

Kind = Literal["essential", "optional", "final"]


class NotReady(Exception):
    """The check failed this time; `permanent` failures are not retried."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


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


async def wait_for(req: Requirement) -> Result:
    start = time.monotonic()
    deadline = start + req.timeout
    attempts = 0
    last = "not checked"
    while True:
        attempts += 1
        remaining = deadline - time.monotonic()
        try:
            await asyncio.wait_for(req.check(), max(remaining, 0.001))
            return Result(req, True, time.monotonic() - start, attempts=attempts)
        except NotReady as e:
            last = str(e)
            if e.permanent:
                break
        except Exception as e:
            # A check that fails in an unplanned way is a failed attempt,
            # never a crash of readiness.
            last = f"{type(e).__name__}: {e}"
        except TimeoutError:
            timed_out = f"not ready after {req.timeout:g}s"
            last = timed_out + (f" (last: {last})" if attempts > 1 else "")
            break
        if time.monotonic() + req.retry_interval >= deadline:
            break
        await asyncio.sleep(req.retry_interval)
    return Result(req, False, time.monotonic() - start, f"{req.description}: {last}", attempts)
