"""ha.sock: bound at start (0600), the HTTP stack loaded at the first client."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A LazyApiSocket whose server is aiohttp's, in a process of its own: which
# modules were loaded before and after the first request.
PROBE = r"""
import asyncio, json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from roost.hostagent.apisocket import LazyApiSocket

async def serve():
    from aiohttp import web
    async def hello(request):
        return web.json_response({"hello": "world"})
    app = web.Application()
    app.router.add_get("/v1/hello", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    return runner.server, runner.cleanup

async def main():
    path = Path(sys.argv[1])
    sock = LazyApiSocket(serve)
    await sock.start(path)
    before = "aiohttp" in sys.modules
    replies = []
    for _ in range(3):
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b"GET /v1/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        replies.append((await reader.read()).decode().split("\r\n\r\n", 1)[1])
        writer.close()
    await sock.close(path)
    print(json.dumps({"before": before, "after": "aiohttp" in sys.modules,
                      "replies": replies, "left": path.exists()}))

asyncio.run(main())
"""


def test_the_http_stack_loads_at_the_first_client(tmp_path: Path) -> None:
    path = tmp_path / "ha.sock"
    out = subprocess.run([sys.executable, "-c", PROBE, str(path), str(ROOT)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    got = json.loads(out)
    assert got["before"] is False and got["after"] is True
    assert [json.loads(r) for r in got["replies"]] == [{"hello": "world"}] * 3
    assert got["left"] is False


def test_the_socket_is_private_from_the_start(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from roost.hostagent.apisocket import LazyApiSocket

    async def never() -> None:
        raise AssertionError("no client came")

    async def main() -> int:
        sock = LazyApiSocket(never)  # type: ignore[arg-type]
        await sock.start(tmp_path / "ha.sock")
        mode = stat.S_IMODE(os.stat(tmp_path / "ha.sock").st_mode)
        await sock.close(tmp_path / "ha.sock")
        return mode

    assert asyncio.run(main()) == 0o600
