"""The host agent's API on a real Unix socket, served by the pieces that
provide its operations (the guest agent session, mounts, checkpoints), with
the real guest agent running on the host behind a driver that has no
optional capability."""

from __future__ import annotations

import asyncio
import io
import json
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from roost.driver.channel import Dialer, UnixDialer
from roost.errors import UsageError
from roost.hostagent.errors import HostAgentError
from roost.hostagent.events import EventEmitter
from roost.hostagent.execstream import ExecSpec
from roost.hostagent.guestagent import GuestAgentClient, GuestAgentError
from roost.hostagent.mounts.manager import MountManager
from roost.hostagent.session import GuestAgentSession
from tests.unit.api_harness import served_api
from tests.unit.guest_agent_process import guest_agent_on


@pytest.fixture(scope="module")
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="roost-api-") as d:
        yield Path(d)  # Unix socket paths must stay short


@pytest.fixture(scope="module")
def agent_sock(short_dir: Path) -> Iterator[str]:
    path = str(short_dir / "ga.sock")
    with guest_agent_on(path, "--allow-exec"):
        yield path


def session(dialer: Dialer, allow_exec: bool = True,
            early: asyncio.Future[GuestAgentClient] | None = None,
            events: EventEmitter | None = None) -> GuestAgentSession:
    return GuestAgentSession(dialer, events or EventEmitter(io.StringIO()), instance="dev",
                             allow_exec=allow_exec, changed=lambda: None, early=early)


async def test_one_session_shared_until_dropped(agent_sock: str) -> None:
    s = session(UnixDialer(agent_sock))
    first = await s.open()
    assert await s.open() is first and s.connected
    await s.drop()
    assert not s.connected
    again = await s.open()
    assert again is not first and await again.request("ping") == {"pong": True}
    await s.drop()


async def test_the_session_that_woke_the_guest_is_adopted(agent_sock: str) -> None:
    woke = GuestAgentClient(UnixDialer(agent_sock))
    await woke.connect()
    early: asyncio.Future[GuestAgentClient] = asyncio.get_running_loop().create_future()
    early.set_result(woke)
    s = session(UnixDialer(agent_sock), early=early)
    assert s.woken_early and await s.open() is woke
    await s.drop()

    failed: asyncio.Future[GuestAgentClient] = asyncio.get_running_loop().create_future()
    failed.set_exception(GuestAgentError("no answer"))
    events = EventEmitter(io.StringIO())
    s = session(UnixDialer(agent_sock), early=failed, events=events)
    client = await s.open()  # dialled afresh
    assert client.connected and client is not woke
    assert events.snapshot()["errors"] == ["the guest agent did not wake: no answer"]
    await s.drop()


async def test_requests_refused_or_unanswered(agent_sock: str, short_dir: Path) -> None:
    s = session(UnixDialer(agent_sock))
    with pytest.raises(UsageError, match="unknown request type"):
        await s.request("fly")  # the guest said no: the session stays
    assert s.connected
    await s.drop()
    with pytest.raises(HostAgentError, match="does not answer"):
        await session(UnixDialer(str(short_dir / "none.sock"))).request("status")


@pytest.fixture
async def api(agent_sock: str, short_dir: Path, monkeypatch: pytest.MonkeyPatch
              ) -> AsyncIterator[aiohttp.ClientSession]:
    monkeypatch.setenv("ROOST_HOME", str(short_dir / "home"))
    async with served_api(agent_sock, lambda inst, guest: MountManager(
            inst.dir, None, guest.open, [], default_type="virtiofs")) as served:
        yield served.http


async def answer(resp: aiohttp.ClientResponse) -> tuple[int, Any]:
    return resp.status, await resp.json()


async def test_guest_requests_through_the_api(api: aiohttp.ClientSession) -> None:
    status, body = await answer(await api.get("/v1/guest/status"))
    assert status == 200 and "state" in body
    async with api.ws_connect("/v1/exec") as ws:
        await ws.send_json({"argv": ["sh", "-c", "echo hi; echo oops >&2"], "timeout": 10})
        messages = [m async for m in ws]
    started = json.loads(messages[0].data)
    assert started["type"] == "started" and started["window"] > 0
    output = [m.data for m in messages if m.type == aiohttp.WSMsgType.BINARY]
    assert sorted(output) == [b"\x01hi\n", b"\x02oops\n"]
    exit_ = json.loads(messages[-1].data)
    assert (exit_["type"], exit_["exitCode"]) == ("exit", 0)
    async with api.ws_connect("/v1/exec") as ws:
        await ws.send_json({"argv": "echo hi"})
        error = await ws.receive_json()
    assert error["status"] == 400 and "argv" in error["error"]


async def test_exec_takes_an_environment_and_a_directory(api: aiohttp.ClientSession,
                                                         tmp_path: Path) -> None:
    async def run(request: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
        async with api.ws_connect("/v1/exec") as ws:
            await ws.send_json(request)
            messages = [m async for m in ws]
        out = b"".join(m.data[1:] for m in messages if m.type == aiohttp.WSMsgType.BINARY)
        return out, json.loads(messages[-1].data)

    out, end = await run({"argv": ["sh", "-c", 'echo "$A|$B"; pwd'], "env": {"A": "x y",
                          "B": "$HOME"}, "cwd": str(tmp_path)})
    assert end["type"] == "exit" and out == f"x y|$HOME\n{tmp_path}\n".encode()
    _, refused = await run({"argv": ["true"], "env": {"A=B": "c"}})
    assert refused["status"] == 400 and "env" in refused["error"]
    _, refused = await run({"argv": ["true"], "cwd": "relative"})
    assert refused["status"] == 400 and "cwd" in refused["error"]


async def test_capabilities_the_driver_lacks_are_usage_errors(api: aiohttp.ClientSession
                                                              ) -> None:
    status, body = await answer(await api.post("/v1/suspend"))
    assert (status, body["error"]) == (400, "this instance's driver cannot suspend")
    status, body = await answer(await api.post("/v1/snapshots", json={"tag": "a"}))
    assert status == 400 and "cannot snapshot a running VM" in body["error"]
    status, body = await answer(await api.post("/v1/mounts", json={
        "location": "/tmp", "mountPoint": "/mnt/x", "type": "virtiofs"}))
    assert status == 400 and "cannot plug file systems" in body["error"]
    status, body = await answer(await api.get("/v1/mounts"))
    assert (status, body) == (200, [])


async def test_exec_is_off_unless_roost_yaml_enables_it(agent_sock: str) -> None:
    s = session(UnixDialer(agent_sock), allow_exec=False)
    with pytest.raises(UsageError, match=r"guestAgent\.allowExec: true"):
        await s.start_exec(ExecSpec(["true"]))
    assert s.client is None  # refused before the guest was asked
