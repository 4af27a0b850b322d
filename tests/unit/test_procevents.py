"""The proc connector as the port watcher's wake-up: the messages, the
subscription kept paired (the kernel counts them globally before 6.6), and
the watcher quiet until something happens.

The pairing and the waits run against a stand-in for the kernel's end (a
datagram socket pair that answers LISTEN and IGNORE as cn_proc does); the
real connector is opened as root and refused to other users.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from roost_guest import procevents
from roost_guest.agent import PortWatcher
from roost_guest.procevents import (
    PROC_CN_MCAST_IGNORE,
    PROC_CN_MCAST_LISTEN,
    ProcEvents,
    activity,
    control_message,
    is_ack,
)

PROC_EVENT_EXEC = 0x2


def event_message(what: int, err: int = 0) -> bytes:
    """What cn_proc sends: nlmsghdr, cn_msg, then proc_event."""
    body = struct.pack("=IIQI", what, 0, time.monotonic_ns(), err) + bytes(12)
    cn = struct.pack("=IIIIHH", 1, 1, 0, 0, len(body), 0) + body
    return struct.pack("=IHHII", 16 + len(cn), 3, 0, 0, 0) + cn


class FakeKernel:
    """The connector's end: delivers to the socket only while it is in the
    group, and acknowledges each LISTEN (and an IGNORE that leaves
    subscribers) before send returns, as cn_proc_mcast_ctl does."""

    def __init__(self) -> None:
        self.ours, self.kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.ours.setblocking(False)
        self.ops: list[int | str] = []
        self.member = False
        self.subscribers = 0
        self.fail_send = False
        self.ack_error = 0
        self.events_on_listen: list[bytes] = []

    # The socket ProcEvents holds.
    def setsockopt(self, level: int, option: int, group: int) -> None:
        assert (level, group) == (procevents.SOL_NETLINK, procevents.CN_IDX_PROC)
        self.member = option == procevents.NETLINK_ADD_MEMBERSHIP
        self.ops.append("join" if self.member else "leave")

    def send(self, data: bytes) -> int:
        if self.fail_send:
            raise OSError(1, "Operation not permitted")
        length, _type, _flags, _seq, _pid, idx, val, _s, _a, size, _f, op = \
            struct.unpack("=IHHIIIIIIHHI", data)
        assert (length, idx, val, size) == (len(data), 1, 1, 4)
        self.ops.append(op)
        self.subscribers += 1 if op == PROC_CN_MCAST_LISTEN else -1
        if self.subscribers > 0:
            self.deliver(event_message(0, self.ack_error))
        for message in self.events_on_listen:
            self.deliver(message)
        self.events_on_listen = []
        return len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ours, name)

    def deliver(self, message: bytes) -> None:
        if self.member:
            self.kernel.send(message)

    def event(self) -> None:
        self.deliver(event_message(PROC_EVENT_EXEC))

    def ack(self) -> None:
        self.deliver(event_message(0))

    @property
    def waiting(self) -> bool:
        return self.member and self.subscribers > 0


def fake_events() -> tuple[ProcEvents, FakeKernel]:
    kernel = FakeKernel()
    return ProcEvents(kernel), kernel  # type: ignore[arg-type]


def later(seconds: float, what: Any) -> threading.Thread:
    def run() -> None:
        time.sleep(seconds)
        what()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_control_message_is_what_cn_proc_reads() -> None:
    data = control_message(PROC_CN_MCAST_LISTEN, 1234)
    assert len(data) == 40
    assert struct.unpack("=IHHII", data[:16]) == (40, 3, 0, 0, 1234)
    assert struct.unpack("=IIIIHH", data[16:36]) == (1, 1, 0, 0, 4, 0)
    assert struct.unpack("=I", data[36:]) == (PROC_CN_MCAST_LISTEN,)


def test_an_acknowledgement_is_told_from_an_event() -> None:
    assert is_ack(event_message(0))
    assert not is_ack(event_message(PROC_EVENT_EXEC))
    assert not is_ack(b"\0" * 20)  # too short to be either


def test_activity_reads_last_pid_and_other_running_tasks(tmp_path: Path) -> None:
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("0.28 0.09 0.03 1/81 313\n")
    assert activity(str(loadavg)) == (313, 0)  # the reader itself is the one running
    loadavg.write_text("1.00 0.50 0.10 3/90 4000\n")
    assert activity(str(loadavg)) == (4000, 2)
    loadavg.write_text("garbage\n")
    assert activity(str(loadavg)) == (-1, 0)
    pid, _ = activity()
    assert pid > 0


def test_wait_times_out_in_a_quiet_guest_and_unsubscribes() -> None:
    events, kernel = fake_events()
    start = time.monotonic()
    assert events.wait(0.2) is False
    assert time.monotonic() - start >= 0.2
    assert kernel.ops == ["join", PROC_CN_MCAST_LISTEN, PROC_CN_MCAST_IGNORE, "leave"]


def test_wait_ends_at_a_process_event() -> None:
    events, kernel = fake_events()
    start = time.monotonic()
    thread = later(0.1, kernel.event)
    assert events.wait(10) is True
    thread.join()
    assert time.monotonic() - start < 5
    assert kernel.ops == ["join", PROC_CN_MCAST_LISTEN, PROC_CN_MCAST_IGNORE, "leave"]


def test_an_event_between_subscribing_and_waiting_is_not_lost() -> None:
    events, kernel = fake_events()
    kernel.events_on_listen = [event_message(PROC_EVENT_EXEC)]
    assert events.wait(10) is True
    assert kernel.ops == ["join", PROC_CN_MCAST_LISTEN, PROC_CN_MCAST_IGNORE, "leave"]


def test_other_subscribers_acknowledgements_do_not_end_the_wait() -> None:
    events, kernel = fake_events()
    thread = later(0.05, kernel.ack)
    start = time.monotonic()
    assert events.wait(0.4) is False
    thread.join()
    assert time.monotonic() - start >= 0.4


def test_events_while_not_waiting_never_reach_the_socket() -> None:
    events, kernel = fake_events()
    kernel.event()  # a busy guest's events while the watcher rescans: not queued
    assert events.wait(0.2) is False
    assert kernel.ops == ["join", PROC_CN_MCAST_LISTEN, PROC_CN_MCAST_IGNORE, "leave"]


def test_wake_ends_the_wait_from_another_thread() -> None:
    events, _kernel = fake_events()
    thread = later(0.1, events.wake)
    start = time.monotonic()
    assert events.wait(10) is True
    thread.join()
    assert time.monotonic() - start < 5
    assert events.wait(0.1) is False  # the wake-up was used up


def test_a_wake_just_before_the_wait_is_not_lost() -> None:
    events, _kernel = fake_events()
    events.wake()
    start = time.monotonic()
    assert events.wait(10) is True
    assert time.monotonic() - start < 1


def test_a_refused_subscription_is_raised_and_not_undone() -> None:
    events, kernel = fake_events()
    kernel.fail_send = True
    with pytest.raises(OSError):
        events.wait(1)
    assert kernel.ops == ["join", "leave"]  # no IGNORE for a LISTEN that never happened


def test_an_acknowledgement_with_an_error_is_no_subscription() -> None:
    events, kernel = fake_events()
    kernel.ack_error = 1  # EPERM: not allowed to subscribe
    kernel.setsockopt(procevents.SOL_NETLINK, procevents.NETLINK_ADD_MEMBERSHIP,
                      procevents.CN_IDX_PROC)
    events._control(PROC_CN_MCAST_LISTEN)
    assert events._acknowledged() is False
    kernel.ack_error = 0
    events._control(PROC_CN_MCAST_LISTEN)
    assert events._acknowledged() is True


def has_net_admin() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & (1 << 12))  # CAP_NET_ADMIN
    return False


def test_the_real_connector_opens_only_with_net_admin() -> None:
    events = ProcEvents.open()
    if not has_net_admin():
        assert events is None  # joining the group needs CAP_NET_ADMIN
        return
    assert events is not None
    try:
        ready = threading.Event()

        def run_a_process() -> None:
            ready.wait()
            time.sleep(0.1)
            subprocess.run(["true"], check=True)

        thread = threading.Thread(target=run_a_process)
        thread.start()  # its own creation is an event too: started before the wait
        ready.set()
        start = time.monotonic()
        assert events.wait(10) is True
        thread.join()
        assert time.monotonic() - start < 5
    finally:
        events.close()


def test_port_watcher_goes_quiet_and_the_host_wakes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    changes: list[Any] = []
    watcher = PortWatcher(lambda added, removed: changes.append((added, removed)))
    watcher.INTERVAL, watcher.ACTIVE_FOR, watcher.QUIET_INTERVAL = 0.01, 0.2, 30.0
    events, kernel = fake_events()
    monkeypatch.setattr(procevents.ProcEvents, "open", classmethod(lambda cls: events))
    monkeypatch.setattr(procevents, "activity", lambda path="/proc/loadavg": (1, 0))
    assert watcher.state()["watching"] is False
    watcher.start()
    deadline = time.monotonic() + 10
    while not kernel.waiting:  # quiet: blocked in the connector, not rescanning
        assert time.monotonic() < deadline, "the watcher never went quiet"
        time.sleep(0.01)
    assert watcher.state() == {"scanner": watcher.scanner_kind, "wakeup": "proc-events",
                               "watching": True, "active": False}
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        watcher.poke()  # the host asked something: rescan now, and often
        assert watcher.state()["active"] is True
        while not any(("tcp", "127.0.0.1", port) in added for added, _ in changes):
            assert time.monotonic() < deadline, "poke did not wake the watcher"
            time.sleep(0.01)
    finally:
        listener.close()
        watcher.stop()
