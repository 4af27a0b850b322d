"""How a download shows (roost.image.download.DownloadProgress): a rich bar
with bytes, rate and ETA on a terminal, else a plain line every few seconds."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

PLAIN_SECONDS = 2.0
MIB = 1024**2


def _eta(done: int, total: int, rate: float) -> str:
    if rate <= 0:
        return "?"
    seconds = int((total - done) / rate)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def plain_line(location: str, done: int, total: int | None, rate: float) -> str:
    """`downloading URL: 45.2/120.0 MiB, 30.1 MiB/s, ETA 2s`"""
    if total is not None and done >= total:
        return f"downloaded {location}: {done / MIB:.1f} MiB, {rate / MIB:.1f} MiB/s"
    amount = f"{done / MIB:.1f}/{total / MIB:.1f} MiB" if total else f"{done / MIB:.1f} MiB"
    line = f"downloading {location}: {amount}, {rate / MIB:.1f} MiB/s"
    return line + (f", ETA {_eta(done, total, rate)}" if total else "")


class DownloadBar:
    """A DownloadProgress for the terminal. `pause`/`resume` stop and restart
    another live display (the start spinner) while the bar shows: rich draws
    one at a time."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None,
                 pause: Callable[[], None] = lambda: None,
                 resume: Callable[[], None] = lambda: None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self._pause, self._resume = pause, resume
        self._location: str | None = None
        self._printed = 0.0
        self._bar: Any = None
        self._task: Any = None

    def __call__(self, location: str, done_bytes: int, total_bytes: int | None,
                 bytes_per_sec: float) -> None:
        if location != self._location:
            self.close()
            self._location = location
            self._printed = 0.0
        finished = total_bytes is not None and done_bytes >= total_bytes
        if self.tty:
            self._draw(location, done_bytes, total_bytes, bytes_per_sec)
        elif finished or time.monotonic() - self._printed >= PLAIN_SECONDS:
            self._printed = time.monotonic()
            print(plain_line(location, done_bytes, total_bytes, bytes_per_sec),
                  file=self.stream, flush=True)
        if finished:
            self.close()
            self._location = None

    def _draw(self, location: str, done: int, total: int | None, rate: float) -> None:
        if self._bar is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._pause()
            self._bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(),
                DownloadColumn(binary_units=True), TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                console=Console(file=self.stream), transient=False)
            self._bar.start()
            name = location.rsplit("/", 1)[-1] or location
            self._task = self._bar.add_task(f"downloading {name}", total=total, rate="")
        self._bar.update(self._task, completed=done, total=total, rate=f"{rate / MIB:.1f} MiB/s")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
            self._resume()

    def __enter__(self) -> DownloadBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
