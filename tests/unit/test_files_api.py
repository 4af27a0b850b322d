"""The guest's files through the host agent's API (/v1/files...), served by
the real guest agent running on this host with --allow-files: round trips,
metadata, errors, the permission at both ends, watches, and a write the
client gives up on."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from roost.hostagent.mounts.manager import MountManager
from tests.unit.api_harness import served_api
from tests.unit.guest_agent_process import guest_agent_on


@pytest.fixture(scope="module")
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="roost-files-") as d:
        yield Path(d)


@pytest.fixture(scope="module")
def agent_sock(short_dir: Path) -> Iterator[str]:
    path = str(short_dir / "ga.sock")
    with guest_agent_on(path, "--allow-files"):
        yield path


@pytest.fixture
async def api(agent_sock: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
              ) -> AsyncIterator[aiohttp.ClientSession]:
    monkeypatch.setenv("ROOST_HOME", str(tmp_path / "h"))
    async with served_api(agent_sock, lambda inst, guest: MountManager(
            inst.dir, None, guest.open, [], default_type="virtiofs")) as served:
        yield served.http


async def test_a_binary_file_round_trips_with_its_mode(api: aiohttp.ClientSession,
                                                       tmp_path: Path) -> None:
    data = os.urandom(10 * 1024 * 1024)
    target = tmp_path / "guest" / "blob.bin"
    target.parent.mkdir()
    resp = await api.put("/v1/files", params={"path": str(target), "mode": "416"}, data=data)
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"path": str(target), "mode": 0o640, "size": len(data)}
    assert target.read_bytes() == data and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in target.parent.iterdir()] == ["blob.bin"]  # no temporary left
    resp = await api.get("/v1/files", params={"path": str(target)})
    assert resp.status == 200 and resp.headers["X-Roost-Mode"] == str(0o640)
    got = await resp.read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    # Replacing keeps the mode it had; an empty file is a file too.
    resp = await api.put("/v1/files", params={"path": str(target)}, data=b"")
    assert (await resp.json())["size"] == 0 and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert await (await api.get("/v1/files", params={"path": str(target)})).read() == b""


async def test_stat_list_mkdir_rename_remove(api: aiohttp.ClientSession, tmp_path: Path) -> None:
    base = tmp_path / "tree"
    resp = await api.post("/v1/files/dir", json={"path": str(base / "a" / "b"), "parents": True})
    assert resp.status == 200 and (base / "a" / "b").is_dir()
    again = await api.post("/v1/files/dir", json={"path": str(base / "a"), "parents": True})
    assert again.status == 200  # mkdir -p: it exists, fine
    exists = await api.post("/v1/files/dir", json={"path": str(base / "a")})
    assert exists.status == 400 and "EEXIST" in (await exists.json())["error"]
    (base / "a" / "f.txt").write_text("hello")
    st = await (await api.get("/v1/files/stat", params={"path": str(base / "a" / "f.txt")})).json()
    assert st["exists"] and st["type"] == "file" and st["size"] == 5
    missing = await (await api.get("/v1/files/stat", params={"path": str(base / "nope")})).json()
    assert missing == {"exists": False}
    entries = await (await api.get("/v1/files/list", params={"path": str(base / "a")})).json()
    assert [(e["name"], e["type"]) for e in entries] == [("b", "dir"), ("f.txt", "file")]
    resp = await api.post("/v1/files/rename", json={"path": str(base / "a" / "f.txt"),
                                                     "to": str(base / "g.txt")})
    assert resp.status == 200 and (base / "g.txt").read_text() == "hello"
    not_empty = await api.delete("/v1/files", params={"path": str(base / "a")})
    assert not_empty.status == 400 and "ENOTEMPTY" in (await not_empty.json())["error"]
    resp = await api.delete("/v1/files", params={"path": str(base / "a"), "recursive": "true"})
    assert resp.status == 200 and not (base / "a").exists()


async def test_bad_paths_are_refused_by_name(api: aiohttp.ClientSession, tmp_path: Path) -> None:
    resp = await api.get("/v1/files", params={"path": str(tmp_path / "missing")})
    assert resp.status == 404 and "No such file" in (await resp.json())["error"]
    resp = await api.get("/v1/files", params={"path": "relative/path"})
    assert resp.status == 400 and "path" in (await resp.json())["error"]
    resp = await api.get("/v1/files", params={"path": str(tmp_path)})
    assert resp.status == 400 and "is a dir, not a file" in (await resp.json())["error"]
    resp = await api.put("/v1/files", params={"path": str(tmp_path / "no" / "dir" / "f")},
                         data=b"x")
    assert resp.status == 404
    resp = await api.put("/v1/files", params={"path": str(tmp_path / "f"), "mode": "99999"},
                         data=b"x")
    assert resp.status == 400 and "mode" in (await resp.json())["error"]


async def test_a_watch_sees_a_write(api: aiohttp.ClientSession, tmp_path: Path) -> None:
    watched = tmp_path / "w"
    watched.mkdir()
    async with api.get("/v1/files/watch", params={"path": str(watched)}) as resp:
        assert resp.status == 200
        put = await api.put("/v1/files", params={"path": str(watched / "new.txt")}, data=b"1")
        assert put.status == 200
        line = await asyncio.wait_for(resp.content.readline(), 10)
        assert json.loads(line) == {"path": str(watched / "new.txt"), "kind": "created"}
        (watched / "new.txt").unlink()
        line = await asyncio.wait_for(resp.content.readline(), 10)
        assert json.loads(line) == {"path": str(watched / "new.txt"), "kind": "deleted"}


async def test_a_write_given_up_on_leaves_the_file_as_it_was(api: aiohttp.ClientSession,
                                                             tmp_path: Path) -> None:
    target = tmp_path / "dir" / "kept.txt"
    target.parent.mkdir()
    target.write_text("original")
    started = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"partial " * 1000
        started.set()
        await asyncio.sleep(3600)
        yield b"never"

    put = asyncio.ensure_future(api.put("/v1/files", params={"path": str(target)},
                                        data=body()))
    await asyncio.wait_for(started.wait(), 10)
    await asyncio.sleep(0.5)
    put.cancel()
    with pytest.raises(asyncio.CancelledError):
        await put
    for _ in range(100):  # the guest's end is reset when the host agent sees the client go
        if [p.name for p in target.parent.iterdir()] == ["kept.txt"]:
            break
        await asyncio.sleep(0.05)
    assert target.read_text() == "original"
    assert [p.name for p in target.parent.iterdir()] == ["kept.txt"]


async def test_files_off_in_the_config_is_403(agent_sock: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROOST_HOME", str(tmp_path / "h"))
    async with served_api(agent_sock, lambda inst, guest: MountManager(
            inst.dir, None, guest.open, [], default_type="virtiofs"),
            allow_files=False) as served:
        resp = await served.http.get("/v1/files/stat", params={"path": "/"})
        assert resp.status == 403 and "guestAgent.allowFiles" in (await resp.json())["error"]


async def test_a_guest_agent_without_allow_files_refuses(short_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROOST_HOME", str(tmp_path / "h"))
    path = str(short_dir / "ga-nofiles.sock")
    with guest_agent_on(path):
        async with served_api(path, lambda inst, guest: MountManager(
                inst.dir, None, guest.open, [], default_type="virtiofs")) as served:
            resp = await served.http.get("/v1/files/stat", params={"path": "/"})
            assert resp.status == 400
            assert "disabled in this guest" in (await resp.json())["error"]


async def test_a_listing_larger_than_a_frame_comes_whole(api: aiohttp.ClientSession,
                                                        tmp_path: Path) -> None:
    """1,100 names of 80 CJK characters: 240 bytes each on disk, 480 in the
    guest's JSON; a thousand of them would not fit one frame."""
    d = tmp_path / "many"
    d.mkdir()
    names = [f"{i:04d}" + "漢" * 76 for i in range(1100)]
    for name in names:
        (d / name).touch()
    resp = await api.get("/v1/files/list", params={"path": str(d)})
    assert resp.status == 200, await resp.text()
    assert [e["name"] for e in await resp.json()] == sorted(names)


async def test_reading_a_fifo_does_not_block(api: aiohttp.ClientSession, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    resp = await asyncio.wait_for(api.get("/v1/files", params={"path": str(fifo)}), 10)
    assert resp.status == 400 and "not a file" in (await resp.json())["error"]
