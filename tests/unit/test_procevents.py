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
    Activity,
    ProcEvents,
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


# What one wait() does to the connector: join, subscribe, unsubscribe, leave.
ONE_WAIT: list[int | str] = ["join", PROC_CN_MCAST_LISTEN, PROC_CN_MCAST_IGNORE, "leave"]


def wait_while(events: ProcEvents, what: Any, timeout: float, after: float = 0.1
               ) -> tuple[bool, float]:
    """wait(timeout) while another thread does `what` after `after` seconds:
    its result and how long it took."""
    def later() -> None:
        time.sleep(after)
        what()

    thread = threading.Thread(target=later)
    thread.start()
    start = time.monotonic()
    result = events.wait(timeout)
    thread.join()
    return result, time.monotonic() - start


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


def write_counters(tmp_path: Path, last_pid: int, guest_ticks: int, own_ticks: int) -> None:
    """/proc/loadavg, /proc/stat and /proc/self/stat as the kernel writes them
    (the guest's busy ticks spread over user, system and softirq; this
    process's over utime and stime)."""
    (tmp_path / "loadavg").write_text(f"0.28 0.09 0.03 1/81 {last_pid}\n")
    (tmp_path / "stat").write_text(
        f"cpu  {guest_ticks - 3} 0 2 98765 40 0 1 0 0 0\ncpu0 1 0 0 1 0 0 0 0 0 0\n")
    (tmp_path / "self-stat").write_text(
        f"42 (python3 (agent)) S 1 42 42 0 -1 4194304 900 0 0 0 {own_ticks - 1} 1 0 0 20 0 5 0\n")


def test_activity_is_a_fork_or_others_using_cpu(tmp_path: Path) -> None:
    write_counters(tmp_path, last_pid=313, guest_ticks=100, own_ticks=40)
    activity = Activity(*(str(tmp_path / n) for n in ("loadavg", "stat", "self-stat")))
    activity.WINDOW = 0.05
    busy_ticks = 50  # at 100 per second, all of a CPU over the window and much more
    assert activity.seen() is False  # nothing since it was made
    write_counters(tmp_path, last_pid=314, guest_ticks=100, own_ticks=40)
    assert activity.seen() is True  # a fork (or a thread)
    assert activity.seen() is False
    time.sleep(activity.WINDOW)
    # Busy, but all of it this process's own: the agent's threads are not a sign.
    write_counters(tmp_path, last_pid=314, guest_ticks=100 + busy_ticks * 4,
                   own_ticks=40 + busy_ticks * 4)
    assert activity.seen() is False
    # Others busy, but CPU counts only over a whole window (a tick of a
    # kernel thread in 100 ms is not a busy guest): next time.
    write_counters(tmp_path, last_pid=314, guest_ticks=100 + busy_ticks * 6,
                   own_ticks=40 + busy_ticks * 4)
    assert activity.seen() is False
    time.sleep(activity.WINDOW)
    assert activity.seen() is True
    assert activity.seen() is False
    (tmp_path / "stat").write_text("garbage\n")
    (tmp_path / "loadavg").write_text("garbage\n")
    assert activity.last_pid() == -1 and activity.others_cpu() == 0.0


def test_activity_reads_this_kernel() -> None:
    activity = Activity()
    assert activity.last_pid() > 0
    before = activity.others_cpu()
    subprocess.run(["sh", "-c", "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done"], check=True)
    assert activity.others_cpu() > before  # the child's CPU is the guest's, not ours


def test_wait_times_out_in_a_quiet_guest_and_unsubscribes() -> None:
    events, kernel = fake_events()
    start = time.monotonic()
    assert events.wait(0.2) is False
    assert time.monotonic() - start >= 0.2
    assert kernel.ops == ONE_WAIT


def test_wait_ends_at_a_process_event() -> None:
    events, kernel = fake_events()
    ended, seconds = wait_while(events, kernel.event, 10)
    assert ended is True and seconds < 5
    assert kernel.ops == ONE_WAIT


def test_an_event_between_subscribing_and_waiting_is_not_lost() -> None:
    events, kernel = fake_events()
    kernel.events_on_listen = [event_message(PROC_EVENT_EXEC)]
    assert events.wait(10) is True
    assert kernel.ops == ONE_WAIT


def test_other_subscribers_acknowledgements_do_not_end_the_wait() -> None:
    events, kernel = fake_events()
    ended, seconds = wait_while(events, kernel.ack, 0.4, after=0.05)
    assert ended is False and seconds >= 0.4


def test_events_while_not_waiting_never_reach_the_socket() -> None:
    events, kernel = fake_events()
    kernel.event()  # a busy guest's events while the watcher rescans: not queued
    assert events.wait(0.2) is False
    assert kernel.ops == ONE_WAIT


def test_wake_ends_the_wait_from_another_thread() -> None:
    events, _kernel = fake_events()
    ended, seconds = wait_while(events, events.wake, 10)
    assert ended is True and seconds < 5
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
    monkeypatch.setattr(procevents.Activity, "seen", lambda self: False)
    assert watcher.state()["watching"] is False
    watcher.start()
    deadline = time.monotonic() + 10
    while not kernel.waiting:  # quiet: blocked in the connector, not rescanning
        assert time.monotonic() < deadline, "the watcher never went quiet"
        time.sleep(0.01)
    assert watcher.state() == {"wakeup": "proc-events", "watching": True, "active": False}
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
