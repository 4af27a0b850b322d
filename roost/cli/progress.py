"""Progress display: a live spinner on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any


class Progress:
    def __init__(self, title: str) -> None:
        self.title = title
        self._started = time.monotonic()
        self._live: Any = None
        self._last = ""
        self._bar: Any = None

    def __enter__(self) -> Progress:
        if sys.stderr.isatty():
            from rich.console import Console

            self._live = Console(stderr=True).status(self.title)
            self._live.__enter__()
        return self

    @property
    def last_step(self) -> str:
        return self._last

    def step(self, message: str) -> None:
        if message == self._last:
            return
        self._last = message
        elapsed = time.monotonic() - self._started
        if self._live is not None:
            self._live.update(f"{self.title}: {message} [dim]({elapsed:.1f}s)[/dim]")
        else:
            print(f"[{elapsed:5.1f}s] {self.title}: {message}", file=sys.stderr, flush=True)

    def download(self, location: str, done_bytes: int, total_bytes: int | None,
                 bytes_per_sec: float) -> None:
        """A DownloadProgress: the bar stands in for the spinner while it runs."""
        if self._bar is None:
            from roost.cli.download_bar import DownloadBar

            self._bar = DownloadBar(pause=self._pause_live, resume=self._resume_live)
        self._bar(location, done_bytes, total_bytes, bytes_per_sec)

    def _pause_live(self) -> None:
        if self._live is not None:
            self._live.stop()

    def _resume_live(self) -> None:
        if self._live is not None:
            self._live.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)
