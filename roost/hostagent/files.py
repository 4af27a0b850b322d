"""The guest's files through the guest agent (guestAgent.allowFiles): the
host's end of roost_guest.files.

Reads and writes are streams with the tunnels' credit, so a 10 GB file
moves in bounded memory at both ends; a read or write the host gives up on
(its API client left) is reset, and the guest then leaves the target as it
was. What the guest sends is checked before it is used: a guest is not
trusted, and its events name paths in the host's logs and answers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from roost.hostagent.guestagent import (
    GuestAgentClient,
    GuestAgentError,
    StreamReset,
    TunnelStream,
)
from roost_guest import protocol

REQUEST_TIMEOUT = 60.0  # a recursive remove of a large tree under TCG
WRITE_DONE_TIMEOUT = 120.0  # after the eof: the guest's fsync and rename
CHANGE_KINDS = ("created", "modified", "deleted")
MAX_PATH = 4096
WATCH_QUEUE = 10000  # changes held for a slow watcher before they are dropped


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def written_problem(event: dict[str, Any]) -> str:
    size, error = event.get("size"), event.get("error")
    if error is not None:
        return "" if isinstance(error, str) else f"error must be a string, got {_short(error)}"
    if not protocol.is_int(size) or size < 0:
        return f"size must be a non-negative integer, got {_short(size)}"
    return ""


def change_problem(event: dict[str, Any]) -> str:
    path, kind = event.get("path"), event.get("kind")
    if not isinstance(path, str) or not path.startswith("/") or len(path) > MAX_PATH:
        return f"path must be an absolute path of at most {MAX_PATH} characters, got " \
               f"{_short(path)}"
    if kind not in CHANGE_KINDS:
        return f"kind must be one of {', '.join(CHANGE_KINDS)}, got {_short(kind)}"
    return ""


ENTRY_TYPES = ("file", "dir", "symlink", "other")
ENTRY_INTS = ("size", "mode", "uid", "gid")


def checked_entries(entries: object) -> list[dict[str, Any]]:
    """A listing from the guest, as the API documents it: entries of a
    wrong shape are left out."""
    out = []
    for e in entries if isinstance(entries, list) else []:
        if not isinstance(e, dict):
            continue
        name, mtime = e.get("name"), e.get("mtime")
        if not isinstance(name, str) or not name or "/" in name or len(name) > 1024 \
                or e.get("type") not in ENTRY_TYPES \
                or not all(protocol.is_int(e.get(k)) and e[k] >= 0 for k in ENTRY_INTS) \
                or not isinstance(mtime, (int, float)) or isinstance(mtime, bool):
            continue
        out.append({"name": name, "type": e["type"], "mtime": mtime,
                    **{k: e[k] for k in ENTRY_INTS}})
    return out


async def request(client: GuestAgentClient, kind: str, **params: Any) -> dict[str, Any]:
    """stat, list, mkdir, remove, rename: the guest's answer."""
    return await client.request(f"files-{kind}", timeout=REQUEST_TIMEOUT, **params)


class Opened:
    """A read or a watch the guest has started: its answer, what comes, and
    close(), which ends it at both ends whether or not `items` was read."""

    def __init__(self, client: GuestAgentClient, stream: TunnelStream,
                 meta: dict[str, Any], items: AsyncIterator[Any]) -> None:
        self.client = client
        self.stream = stream
        self.meta = meta
        self.items = items

    async def close(self) -> None:
        self.client.unwatch_stream(self.stream.id)
        await self.stream.reset("done")


def meta_problem(meta: dict[str, Any]) -> str:
    """What is wrong with a read's answer (its stat) from the guest."""
    for key in ("size", "mode"):
        if not protocol.is_int(meta.get(key)) or meta[key] < 0:
            return f"{key} must be a non-negative integer, got {_short(meta.get(key))}"
    return ""


async def read(client: GuestAgentClient, path: str) -> Opened:
    """The file's stat (size, mode...) and its bytes as they come."""
    stream = client.new_stream()
    try:
        meta = await client.request("files-read", timeout=REQUEST_TIMEOUT, path=path,
                                    stream=stream.id)
        if problem := meta_problem(meta):
            raise GuestAgentError(f"the guest agent's answer to a read is malformed: {problem}")
    except BaseException:
        await stream.reset("the read was not started")
        raise

    async def chunks() -> AsyncIterator[bytes]:
        while (data := await stream.recv()) is not None:
            yield data
            await stream.ack(len(data))

    return Opened(client, stream, meta, chunks())


async def write(client: GuestAgentClient, path: str, mode: int | None,
                chunks: AsyncIterator[bytes]) -> dict[str, Any]:
    """The file replaced by `chunks`, atomically: {"path", "mode", "size"}."""
    stream = client.new_stream()
    loop = asyncio.get_running_loop()
    done: asyncio.Future[dict[str, Any]] = loop.create_future()

    def on_event(event: dict[str, Any]) -> str:
        if event.get("event") != "files-written":
            return f"a {_short(event.get('event'))} event for a file write"
        if problem := written_problem(event):
            return problem
        if not done.done():
            done.set_result(event)
        if "error" in event:  # the guest takes no more: a send waiting for credit ends
            stream.stop_sending(str(event["error"])[:2000])
        return ""

    def failure() -> GuestAgentError | None:
        if done.done() and "error" in done.result():
            return GuestAgentError(str(done.result()["error"])[:2000])
        return None

    client.watch_stream(stream.id, on_event)
    try:
        params: dict[str, Any] = {"path": path, "stream": stream.id}
        if mode is not None:
            params["mode"] = mode
        meta = await client.request("files-write", timeout=REQUEST_TIMEOUT, **params)
        try:
            async for chunk in chunks:
                await stream.send(chunk)
            await stream.send_eof()
        except StreamReset as e:
            raise failure() or GuestAgentError(f"the guest ended the write of {path}: {e}"
                                               ) from None
        closed: asyncio.Future[Any] = asyncio.ensure_future(client.closed.wait())
        try:
            await asyncio.wait([done, closed], timeout=WRITE_DONE_TIMEOUT,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
        if not done.done():
            raise GuestAgentError(f"the guest agent did not confirm the write of {path}")
        if error := failure():
            raise error
        return {"path": meta.get("path", path), "mode": meta.get("mode"),
                "size": done.result()["size"]}
    finally:
        client.unwatch_stream(stream.id)
        await stream.reset("done")


async def watch(client: GuestAgentClient, path: str, recursive: bool) -> Opened:
    """Changes under `path`: {"path", "kind"} as the guest sees them, and
    {"dropped": n} when a slow reader made the host drop n of them."""
    stream = client.new_stream()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    dropped = 0

    def on_event(event: dict[str, Any]) -> str:
        nonlocal dropped
        if event.get("event") != "files-change":
            return f"a {_short(event.get('event'))} event for a watch"
        if problem := change_problem(event):
            return problem
        if queue.qsize() >= WATCH_QUEUE:
            dropped += 1
        else:
            queue.put_nowait({"path": event["path"], "kind": event["kind"]})
        return ""

    client.watch_stream(stream.id, on_event)
    try:
        meta = await client.request("files-watch", timeout=REQUEST_TIMEOUT, path=path,
                                    recursive=recursive, stream=stream.id)
    except BaseException:
        client.unwatch_stream(stream.id)
        await stream.reset("the watch was not started")
        raise

    async def changes() -> AsyncIterator[dict[str, Any]]:
        nonlocal dropped
        closed: asyncio.Future[Any] = asyncio.ensure_future(client.closed.wait())
        try:
            while not closed.done():
                if dropped:
                    n, dropped = dropped, 0
                    yield {"dropped": n}
                got: asyncio.Future[Any] = asyncio.ensure_future(queue.get())
                await asyncio.wait([got, closed], return_when=asyncio.FIRST_COMPLETED)
                if not got.done():
                    got.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await got
                    return
                yield got.result()
        finally:
            closed.cancel()

    return Opened(client, stream, meta, changes())
