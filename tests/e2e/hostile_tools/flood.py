"""Guest root floods the host with listening ports.

    python3 -m hostile_tools.flood listen COUNT FIRST_PORT MAX_SECS
        COUNT TCP listeners on 127.0.0.1 from FIRST_PORT; prints a line
        once they listen, keeps them until stdin ends (or MAX_SECS). Each
        echoes one message of the connections it accepts.
    python3 -m hostile_tools.flood churn SECS COUNT FIRST_PORT
        for SECS, opens COUNT listeners and closes them again, as fast as
        the guest can: each of the guest agent's scans sees a change, so
        it sends the host a `ports` event about every 100 ms, each naming
        COUNT listeners. Prints the cycles done and the guest agent's
        VmRSS before and after.
"""

from __future__ import annotations

import json
import selectors
import socket
import sys
import time

from . import guest_agent


def listen(count: int, first: int) -> list[socket.socket]:
    socks = []
    for port in range(first, first + count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(1)
        socks.append(s)
    return socks


def serve(socks: list[socket.socket], deadline: float) -> None:
    """Echo one message per connection until stdin ends or the deadline
    (epoll: select() takes no fd over 1023)."""
    with selectors.DefaultSelector() as sel:
        sel.register(sys.stdin, selectors.EVENT_READ)
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(left):
                if key.fileobj is sys.stdin:
                    return
                assert isinstance(key.fileobj, socket.socket)
                conn, _ = key.fileobj.accept()
                with conn:
                    conn.settimeout(10)
                    conn.sendall(conn.recv(4096))


def agent_rss_kib() -> int:
    """The guest agent's VmRSS (the one process serving the virtio port)."""
    pids = guest_agent.agent_pids()
    return guest_agent.rss_kib(pids[0]) if len(pids) == 1 else -1


def main() -> None:
    mode, *args = sys.argv[1:]
    if mode == "listen":
        count, first, max_secs = int(args[0]), int(args[1]), float(args[2])
        socks = listen(count, first)
        print(json.dumps({"listening": len(socks)}), flush=True)
        serve(socks, time.monotonic() + max_secs)
        for s in socks:
            s.close()
        return
    secs, count, first = float(args[0]), int(args[1]), int(args[2])
    before = agent_rss_kib()
    cycles = 0
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        socks = listen(count, first)
        time.sleep(0.12)  # one scan of the agent's sees them
        for s in socks:
            s.close()
        time.sleep(0.12)
        cycles += 1
    print(json.dumps({"cycles": cycles, "listenersPerCycle": count,
                      "guestAgentRssKiBBefore": before, "guestAgentRssKiB": agent_rss_kib()}))


if __name__ == "__main__":
    main()
