"""Sandbox: the blocking face of AsyncSandbox, for programs without asyncio.

Every call runs the async one on one event loop of the SDK's own, in a
daemon thread, and waits for it; callbacks (on_stdout, on_stderr, on_data)
are called on that thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Literal, TypeVar

from roost.sdk.commands import CommandHandle as AsyncCommandHandle
from roost.sdk.commands import CommandResult, Output
from roost.sdk.files import EntryInfo, FileChange, WriteInfo
from roost.sdk.files import Watch as AsyncWatch
from roost.sdk.sandbox import START_TIMEOUT, AsyncSandbox, Paused, Port, Snapshot
from roost.store.instance import Status

T = TypeVar("T")


class _Loop:
    """The SDK's event loop thread, started on first use."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="roost-sdk",
                                 daemon=True).start()
                cls._loop = loop
            return cls._loop


def _run(coro: Coroutine[Any, Any, T]) -> T:
    loop = _Loop.get()
    if threading.current_thread().name == "roost-sdk":
        coro.close()
        raise RuntimeError("a blocking Sandbox call from one of its own callbacks would "
                           "wait for itself; use AsyncSandbox there")
    future: Future[T] = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return future.result()
    except KeyboardInterrupt:
        future.cancel()
        raise


class CommandHandle:
    """A command started with background=True (or a pty)."""

    def __init__(self, handle: AsyncCommandHandle) -> None:
        self._h = handle
        self.argv = handle.argv
        self.pid = handle.pid

    @property
    def stdout(self) -> bytes:
        return self._h.stdout

    @property
    def stderr(self) -> bytes:
        return self._h.stderr

    @property
    def exited(self) -> bool:
        return self._h.exited

    def wait(self, check: bool = False, timeout: float | None = None) -> CommandResult:
        """How it ended; TimeoutError if it runs on after `timeout` seconds."""
        async def waiting() -> CommandResult:
            return await asyncio.wait_for(self._h.wait(check), timeout)

        return _run(waiting())

    def send_stdin(self, data: bytes | str) -> None:
        _run(self._h.send_stdin(data))

    def close_stdin(self) -> None:
        _run(self._h.close_stdin())

    def signal(self, name: str) -> None:
        _run(self._h.signal(name))

    def kill(self, name: str = "TERM") -> CommandResult:
        return _run(self._h.kill(name))

    def resize(self, rows: int, cols: int) -> None:
        _run(self._h.resize(rows, cols))

    def close(self) -> None:
        _run(self._h.close())


class Commands:
    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._c = sandbox.commands

    def run(self, cmd: str | Sequence[str], *, stdin: bytes | str | None = None,
            on_stdout: Output | None = None, on_stderr: Output | None = None,
            timeout: float = 0, cwd: str | None = None, env: Mapping[str, str] | None = None,
            background: bool = False, check: bool = False) -> Any:
        """As AsyncSandbox.commands.run: a CommandResult, or with `background`
        a CommandHandle."""
        result = _run(self._c.run(cmd, stdin=stdin, on_stdout=on_stdout, on_stderr=on_stderr,
                                  timeout=timeout, cwd=cwd, env=env, background=background,
                                  check=check))
        return CommandHandle(result) if background else result

    def pty(self, cmd: str | Sequence[str] = ("/bin/sh", "-l"), *, rows: int = 24,
            cols: int = 80, on_data: Output | None = None, timeout: float = 0,
            cwd: str | None = None, env: Mapping[str, str] | None = None) -> CommandHandle:
        return CommandHandle(_run(self._c.pty(cmd, rows=rows, cols=cols, on_data=on_data,
                                              timeout=timeout, cwd=cwd, env=env)))


class Watch:
    """Changes under a path; iterate, then close() (or use `with`)."""

    def __init__(self, watch: AsyncWatch) -> None:
        self._w = watch

    def __iter__(self) -> Iterator[FileChange]:
        return self

    def __next__(self) -> FileChange:
        try:
            return _run(self._w.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def next(self, timeout: float | None = None) -> FileChange:
        """The next change; TimeoutError if none comes within `timeout` seconds."""
        async def waiting() -> FileChange:
            return await asyncio.wait_for(self._w.__anext__(), timeout)

        return _run(waiting())

    def close(self) -> None:
        _run(self._w.close())

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Files:
    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._f = sandbox.files

    def read(self, path: str) -> bytes:
        return _run(self._f.read(path))

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return _run(self._f.read_text(path, encoding))

    def write(self, path: str, data: bytes | str, mode: int | None = None) -> WriteInfo:
        return _run(self._f.write(path, data, mode))

    def stat(self, path: str) -> EntryInfo:
        return _run(self._f.stat(path))

    def exists(self, path: str) -> bool:
        return _run(self._f.exists(path))

    def list(self, path: str) -> list[EntryInfo]:
        return _run(self._f.list(path))

    def remove(self, path: str, recursive: bool = False) -> None:
        _run(self._f.remove(path, recursive))

    def rename(self, path: str, to: str) -> None:
        _run(self._f.rename(path, to))

    def make_dir(self, path: str, parents: bool = True, mode: int | None = None) -> None:
        _run(self._f.make_dir(path, parents, mode))

    def watch(self, path: str, recursive: bool = False) -> Watch:
        return Watch(_run(self._f.watch(path, recursive)))


class Sandbox:
    """A sandbox, blocking: Sandbox.create(...) / Sandbox.connect(name);
    `with Sandbox.create() as sb:` deletes it at the end."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sb = sandbox
        self.name = sandbox.name
        self.instance = sandbox.instance
        self.commands = Commands(sandbox)
        self.files = Files(sandbox)

    def __repr__(self) -> str:
        return f"Sandbox({self.name!r})"

    @classmethod
    def create(cls, template: str | None = "default", *, name: str | None = None,
               cpus: int | None = None, memory: str | int | None = None,
               disk: str | int | None = None, env: Mapping[str, str] | None = None,
               timeout: float | None = None,
               timeout_action: Literal["delete", "suspend", "stop"] = "delete",
               allow_exec: bool = True, allow_files: bool = True,
               internet: bool | None = None, allow_out: Sequence[str] | None = None,
               config_file: str | None = None,
               sets: Sequence[str] = (), start_timeout: float = START_TIMEOUT) -> Sandbox:
        """As AsyncSandbox.create."""
        return cls(_run(AsyncSandbox.create(
            template, name=name, cpus=cpus, memory=memory, disk=disk, env=env, timeout=timeout,
            timeout_action=timeout_action, allow_exec=allow_exec, allow_files=allow_files,
            internet=internet, allow_out=allow_out, config_file=config_file, sets=sets,
            start_timeout=start_timeout)))

    @classmethod
    def connect(cls, name: str, *, resume: bool = True, start: bool = False,
                start_timeout: float = START_TIMEOUT) -> Sandbox:
        return cls(_run(AsyncSandbox.connect(name, resume=resume, start=start,
                                             start_timeout=start_timeout)))

    @classmethod
    def fork(cls, source: str | Sandbox | Snapshot, *, name: str | None = None,
             start_timeout: float = START_TIMEOUT) -> Sandbox:
        src = source.name if isinstance(source, Sandbox) else source
        return cls(_run(AsyncSandbox.fork(src, name=name, start_timeout=start_timeout)))

    def status(self) -> Status:
        return self._sb.status()

    def pause(self) -> Paused:
        return _run(self._sb.pause())

    def resume(self, start_timeout: float = START_TIMEOUT) -> None:
        _run(self._sb.resume(start_timeout))

    def snapshot(self, tag: str | None = None) -> Snapshot:
        return _run(self._sb.snapshot(tag))

    def restore(self, snapshot: Snapshot | str) -> None:
        _run(self._sb.restore(snapshot))

    def stop(self, force: bool = False) -> None:
        _run(self._sb.stop(force))

    def kill(self) -> None:
        _run(self._sb.kill())

    def ports(self) -> list[Port]:
        return _run(self._sb.ports())

    def info(self) -> dict[str, Any]:
        return _run(self._sb.info())

    def close(self) -> None:
        _run(self._sb.close())

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.kill()
