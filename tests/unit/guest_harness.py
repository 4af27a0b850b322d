"""The guest agent's own frame handling, in this process, over an in-memory channel.

The Agent, Connection and PortSessions are the real ones; only the byte
stream is a buffer. The agent serves only requests that touch nothing
outside this process (this test may run as root: no mount, listen, tunnel,
clock or exec from generated frames).
"""

from __future__ import annotations

from typing import Any

from roost_guest import agent as guest
from roost_guest import protocol

HARMLESS_REQUESTS = ("ping", "info", "status", "health", "probes", "events")


class MemoryChannel(guest.Channel):
    name = "memory"

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def read(self) -> bytes:
        return b""

    def write(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True

    def take(self) -> list[dict[str, Any]]:
        """The JSON messages written since the last take (data frames left out)."""
        decoder = protocol.FrameDecoder()
        messages = decoder.feed(bytes(self.out))
        assert decoder.error is None and decoder.pending == 0, "the agent wrote a bad frame"
        self.out.clear()
        out = []
        for msg in messages:
            assert not isinstance(msg, protocol.BadFrame), msg
            if isinstance(msg, protocol.JsonMessage):
                out.append(msg.obj)
        return out


def harmless_agent(tmp: str) -> guest.Agent:
    opts = guest.Options()
    opts.integrations_dir = tmp + "/integrations.d"  # absent: no checks, no probes
    opts.probes_dir = tmp + "/probes.d"
    agent = guest.Agent(opts)
    agent.handlers = {k: v for k, v in agent.handlers.items() if k in HARMLESS_REQUESTS}
    return agent


def frame(obj: dict[str, Any]) -> bytes:
    return protocol.encode_json(obj)


def raw(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def hello(nonce: int) -> bytes:
    return frame({"type": "hello", "nonce": nonce})
