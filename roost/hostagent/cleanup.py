"""Cleanups run last-in-first-out, every one of them, errors joined."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

CleanupFn = Callable[[], Awaitable[None] | None]


class CleanupError(Exception):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


class CleanupStack:
    def __init__(self) -> None:
        self._stack: list[tuple[str, CleanupFn]] = []

    def push(self, description: str, fn: CleanupFn) -> None:
        self._stack.append((description, fn))

    def __len__(self) -> int:
        return len(self._stack)

    async def run(self) -> None:
        """Run and forget every cleanup, newest first; raise CleanupError if any failed."""
        errors: list[str] = []
        while self._stack:
            description, fn = self._stack.pop()
            try:
                result = fn()
                if inspect.isawaitable(result):
                    await result
            except Exception as e:
                log.warning("cleanup %r failed: %s", description, e)
                errors.append(f"{description}: {e}")
        if errors:
            raise CleanupError(errors)
