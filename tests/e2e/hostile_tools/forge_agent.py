"""Guest root in place of the guest agent: it kills the real one, takes the
virtio port before init's respawn can, and speaks the wire protocol to the
host itself (roost_guest.protocol's encoders, from the agent's own zipapp).

    python3 -m hostile_tools.forge_agent READY EXISTING SECRET MOUNT_SECS REVERSE [LINK...]

1. Announces guest streams the host never granted (FORGED), each followed
   by an SFTP INIT, and notes what the host answers: a reset, or data.
2. Writes READY (a file on a share the test watches) and, for up to
   MOUNT_SECS, waits for a reverse-sshfs `mount` request: the host's
   one-time token for a read-only share. It uses that token once (the
   host must serve only that share, read-only, whatever the guest claims),
   answers the mount, then replays the token (the host must refuse).
3. Answers the `umount`, gives the port back and kills the agent init
   respawned meanwhile (it found the port busy), so that a fresh one
   takes the port.

Prints one JSON object with what the host did.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from . import guest_agent, sftp

PORT = "/dev/virtio-ports/io.roost.guest_agent.0"
PYZ = "/mnt/cidata/roost-guestagent.pyz"
RESET_SECONDS = 10.0


def forged_streams(reverse: str) -> list[tuple[str, dict[str, Any]]]:
    """Guest-initiated streams no host record stands behind."""
    return [
        ("sftp-old-style-root", {"path": "sftp:/", "readonly": False}),
        ("sftp-old-style-host-path", {"path": "sftp:/etc", "readonly": False}),
        ("sftp-guessed-token", {"path": "sftp", "token": "guessed"}),
        ("sftp-empty-token", {"path": "sftp", "token": ""}),
        ("sftp-non-string-token", {"path": "sftp", "token": {"$ne": ""}}),
        ("sftp-token-with-host-path", {"path": "sftp", "token": "x" * 32, "location": "/",
                                       "remotePath": "/", "readonly": False}),
        ("reverse-socket-not-configured", {"path": "/run/not-configured.sock"}),
        ("reverse-socket-dotdot", {"path": reverse + "/../../../host.sock"}),
    ]


def take_port(seconds: float = 20.0) -> tuple[int, list[int]]:
    """Kill the agent (and each respawned one) until the port is ours."""
    killed: list[int] = []
    deadline = time.monotonic() + seconds
    while True:
        killed += guest_agent.signal_agents(signal.SIGKILL)
        try:
            return os.open(PORT, os.O_RDWR), killed
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise


class Wire:
    """Our end of the port: frames in and out, the host's requests answered."""

    def __init__(self, fd: int) -> None:
        sys.path.insert(0, PYZ)
        from roost_guest import protocol

        self.protocol = protocol
        self.fd = fd
        self.decoder = protocol.FrameDecoder()
        self.resets: dict[int, str] = {}
        self.data: dict[int, bytearray] = {}
        self.requests: list[str] = []
        self.hellos = 0
        self.protocol_errors = 0
        self.mount: dict[str, Any] | None = None
        self.umounted = False

    def send(self, frame: bytes) -> None:
        view = memoryview(frame)
        while view:
            view = view[os.write(self.fd, view[:32768]):]

    def send_json(self, obj: dict[str, Any]) -> None:
        self.send(self.protocol.encode_json(obj))

    def pump(self, seconds: float, until: Callable[[], bool]) -> bool:
        deadline = time.monotonic() + seconds
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.2))
            if not ready:
                continue
            data = os.read(self.fd, 65536)
            if not data:  # no host on the port: a new session starts with a hello
                self.decoder = self.protocol.FrameDecoder()
                time.sleep(0.05)
                continue
            try:
                messages = self.decoder.feed(data)
            except self.protocol.ProtocolError:
                self.protocol_errors += 1
                self.decoder = self.protocol.FrameDecoder()
                continue
            for msg in messages:
                if isinstance(msg, self.protocol.JsonMessage):
                    self.handle(msg.obj)
                elif isinstance(msg, self.protocol.StreamData):
                    self.data.setdefault(msg.stream_id, bytearray()).extend(msg.data)
        return True

    def handle(self, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        if kind == "hello":
            self.hellos += 1
            # A forger's own epoch: the host takes it for a new guest agent.
            self.send(self.protocol.sync_frame(int(obj.get("nonce", 0)), 4242))
        elif kind in ("reset", "eof") and isinstance(obj.get("stream"), int):
            self.resets[obj["stream"]] = f"{kind}: {obj.get('error', '')}"
        elif kind == "window":
            pass
        elif "id" in obj:
            self.requests.append(str(kind))
            self.answer(obj)

    def answer(self, req: dict[str, Any]) -> None:
        kind = req.get("type")
        if kind == "mount" and req.get("fstype") == "reverse-sshfs" and self.mount is None:
            self.mount = req  # answered once the token has been used
            return
        result: dict[str, Any] | None = {}
        if kind == "umount":
            self.umounted = True
            result = {"mountPoint": req.get("mountPoint")}
        elif kind == "events":
            result = {"ports": []}
        elif kind not in ("ping", "listen", "mount"):
            result = None
        if result is None:
            self.send_json({"id": req["id"], "ok": False, "error": "a forged guest agent"})
        else:
            self.send_json({"id": req["id"], "ok": True, "result": result})

    def stream_client(self, sid: int) -> sftp.Sftp:
        """SFTP over our stream `sid`, in data frames."""

        def send(data: bytes) -> None:
            self.send(self.protocol.encode_data(sid, data))

        def recv() -> bytes:
            self.pump(20.0, lambda: bool(self.data.get(sid)) or sid in self.resets)
            got = bytes(self.data.pop(sid, b""))
            if got:
                self.send_json({"type": "window", "stream": sid, "bytes": len(got)})
            return got

        return sftp.Sftp(send, recv)

    def offer(self, sid: int, meta: dict[str, Any]) -> dict[str, Any]:
        """Announce stream `sid` with `meta`, send an SFTP INIT on it, and
        wait for the host's answer."""
        self.send_json({"event": "accept", "stream": sid, **meta})
        self.send(self.protocol.encode_data(sid, sftp.init_packet()))
        self.pump(RESET_SECONDS, lambda: sid in self.resets)
        got = bytes(self.data.get(sid, b""))
        return {"reset": self.resets.get(sid), "bytesFromHost": len(got),
                "sftpVersion": got[4:5] == bytes([sftp.VERSION])}


def main() -> None:
    ready, existing, secret, mount_secs, reverse, *links = sys.argv[1:]
    started = time.monotonic()
    fd, killed = take_port()
    wire = Wire(fd)
    out: dict[str, Any] = {"killedAgents": killed,
                           "portTakenAfter": round(time.monotonic() - started, 3)}
    wire.pump(1.0, lambda: False)  # a hello, if the host starts a session now
    sids = iter(range(1, 1 << 30, 2))
    out["forged"] = {name: wire.offer(next(sids), meta)
                     for name, meta in forged_streams(reverse)}
    with open(ready, "w") as f:
        f.write("ready\n")
    if wire.pump(float(mount_secs), lambda: wire.mount is not None) and wire.mount:
        req, token = wire.mount, str(wire.mount.get("token"))
        sid = next(sids)
        # Our claims (a writable root) next to the token: the host's record decides.
        wire.send_json({"event": "accept", "stream": sid, "path": "sftp", "token": token,
                        "remotePath": "/", "readonly": False})
        client = wire.stream_client(sid)
        granted: dict[str, Any] = {"version": client.init()}
        granted["readOnly"] = sftp.probe_read_only(client, "/share", existing)
        granted["escapes"] = sftp.probe_escapes(client, "/share", secret, links)
        wire.send_json({"type": "reset", "stream": sid, "error": "done"})
        out["granted"] = granted
        wire.send_json({"id": req["id"], "ok": True,
                        "result": {"mountPoint": req.get("mountPoint")}})
        out["replay"] = wire.offer(next(sids), {"path": "sftp", "token": token})
        wire.pump(float(mount_secs), lambda: wire.umounted)
    out.update(hellos=wire.hellos, requests=wire.requests, protocolErrors=wire.protocol_errors)
    os.close(fd)
    # Respawned while we held the port: it serves no port now.
    guest_agent.signal_agents(signal.SIGKILL)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
