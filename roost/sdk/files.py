"""`sandbox.files`: the guest's files through the guest agent (the host
agent's /v1/files routes), without SSH and without exec: the instance
needs guestAgent.allowFiles, which Sandbox.create turns on."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from roost.errors import RequestRefused
from roost.sdk.transport import HostAgentTransport

CHUNK = 256 * 1024

FileType = Literal["file", "dir", "symlink", "other"]


@dataclass(frozen=True)
class EntryInfo:
    """A path in the guest: what `list` and `stat` say of it."""

    path: str
    name: str
    type: FileType
    size: int
    mode: int  # permission bits, e.g. 0o644
    mtime: float
    uid: int
    gid: int

    @classmethod
    def from_json(cls, path: str, data: dict[str, Any]) -> EntryInfo:
        return cls(path=path, name=path.rstrip("/").rsplit("/", 1)[-1] or "/",
                   type=data["type"], size=int(data["size"]), mode=int(data["mode"]),
                   mtime=float(data["mtime"]), uid=int(data["uid"]), gid=int(data["gid"]))


@dataclass(frozen=True)
class WriteInfo:
    path: str
    size: int
    mode: int


@dataclass(frozen=True)
class FileChange:
    """What a watch saw: `path` was created, modified or deleted; or, with
    kind "dropped", that `dropped` changes were lost to a slow reader."""

    path: str
    kind: Literal["created", "modified", "deleted", "dropped"]
    dropped: int = 0


class Watch:
    """Changes under a path, as an async iterator of FileChange; close() ends it."""

    def __init__(self, resp: Any) -> None:
        self._resp = resp

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> FileChange:
        while True:
            line = await self._resp.content.readline()
            if not line:
                raise StopAsyncIteration
            if not line.strip():
                continue
            data = json.loads(line)
            if "dropped" in data:
                return FileChange("", "dropped", int(data["dropped"]))
            return FileChange(str(data["path"]), data["kind"])

    async def close(self) -> None:
        self._resp.close()

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Files:
    def __init__(self, transport: HostAgentTransport) -> None:
        self._t = transport

    async def read(self, path: str) -> bytes:
        """The whole file."""
        resp = await self._t.open("GET", "/v1/files", params={"path": path})
        try:
            return await resp.read()
        finally:
            resp.release()

    async def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return (await self.read(path)).decode(encoding)

    async def iter_read(self, path: str, chunk: int = CHUNK) -> AsyncIterator[bytes]:
        """The file's bytes as they come (for files too large to hold)."""
        resp = await self._t.open("GET", "/v1/files", params={"path": path})
        try:
            async for data in resp.content.iter_chunked(chunk):
                yield data
        finally:
            resp.release()

    async def write(self, path: str, data: bytes | str | AsyncIterator[bytes],
                    mode: int | None = None) -> WriteInfo:
        """Replace (or create) the file at `path` with `data`, atomically:
        a reader sees the old file or all of the new one. `mode`: its
        permission bits (default: the replaced file's, else 0o644). A new
        file belongs to the owner of its directory."""
        params = {"path": path}
        if mode is not None:
            params["mode"] = str(mode)
        body = data.encode() if isinstance(data, str) else data
        resp = await self._t.open("PUT", "/v1/files", params=params, data=body)
        try:
            written = await resp.json()
        finally:
            resp.release()
        return WriteInfo(str(written["path"]), int(written["size"]), int(written["mode"]))

    async def stat(self, path: str) -> EntryInfo:
        """What `path` is; FileNotFoundError if there is nothing there."""
        data = await self._t.json("GET", "/v1/files/stat", params={"path": path})
        if not data.get("exists"):
            raise FileNotFoundError(f"{path}: no such file or directory in the sandbox")
        return EntryInfo.from_json(path, data)

    async def exists(self, path: str) -> bool:
        data = await self._t.json("GET", "/v1/files/stat", params={"path": path})
        return bool(data.get("exists"))

    async def list(self, path: str) -> list[EntryInfo]:
        """A directory's entries, sorted by name."""
        base = path.rstrip("/")
        try:
            entries = await self._t.json("GET", "/v1/files/list", params={"path": path})
        except RequestRefused as e:
            if e.status == 404:
                raise FileNotFoundError(str(e)) from None
            raise
        return [EntryInfo.from_json(f"{base}/{e['name']}", e) for e in entries]

    async def remove(self, path: str, recursive: bool = False) -> None:
        """Remove a file, or a directory (with what it holds when `recursive`)."""
        await self._t.json("DELETE", "/v1/files",
                           params={"path": path, "recursive": str(recursive).lower()})

    async def rename(self, path: str, to: str) -> None:
        await self._t.json("POST", "/v1/files/rename", body={"path": path, "to": to})

    async def make_dir(self, path: str, parents: bool = True, mode: int | None = None) -> None:
        """Make a directory (and its missing parents, unless parents=False)."""
        body: dict[str, Any] = {"path": path, "parents": parents}
        if mode is not None:
            body["mode"] = mode
        await self._t.json("POST", "/v1/files/dir", body=body)

    async def watch(self, path: str, recursive: bool = False) -> Watch:
        """Follow changes under `path` (scanned in the guest five times a
        second): `async with await sb.files.watch(p) as w: async for c in w`."""
        resp = await self._t.open("GET", "/v1/files/watch",
                                  params={"path": path, "recursive": str(recursive).lower()})
        return Watch(resp)
