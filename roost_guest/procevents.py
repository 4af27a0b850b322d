"""Signs that processes in the guest are doing something, for the port watcher.

The port watcher (agent.PortWatcher) rescans the listening sockets ten times
a second while the guest is active. In a quiet guest it blocks in
`ProcEvents.wait` instead: the kernel's proc connector reports every fork
(threads included), exec and exit, and a new listener's process did one of
those on its way (or reached the agent from the host, which wakes the
watcher itself). Under TCG each wake-up of an idle guest costs host CPU:
rescanning at 10 Hz was about 5 % of a host core per idle VM.

The socket joins the connector's multicast group and subscribes only while
it waits: a busy guest's thousands of events a second would each cost its
kernel a message queued for us. Before Linux 6.6 the kernel counts
subscriptions globally, not per socket, so every LISTEN here is paired with
one IGNORE (an agent killed while it waits leaves the count one too high
until reboot: the kernel then builds each event's message, and drops it
when no socket is in the group). Needs CAP_NET_ADMIN and
CONFIG_PROC_EVENTS; without them `ProcEvents.open` returns None and the
watcher polls.

Standard library only: runs in the guest.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import time

from roost_guest import lightsocket as socket

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional, Tuple

NETLINK_CONNECTOR = 11
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_DROP_MEMBERSHIP = 2
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
NLMSG_DONE = 3
PROC_EVENT_NONE = 0  # what the kernel's acknowledgement of LISTEN/IGNORE says

# nlmsghdr (len, type, flags, seq, pid); cn_msg (id.idx, id.val, seq, ack,
# len, flags); the operation.
_CONTROL = struct.Struct("=IHHIIIIIIHHI")
# After nlmsghdr and cn_msg: proc_event's what, cpu, timestamp, then for an
# acknowledgement its error.
_EVENT_AT = 16 + 20
_EVENT = struct.Struct("=IIQI")
ACK_TIMEOUT = 1.0  # for the acknowledgement that proves the connector is there


def control_message(op: int, pid: int) -> bytes:
    """The netlink message that subscribes (LISTEN) or unsubscribes (IGNORE)."""
    return _CONTROL.pack(_CONTROL.size, NLMSG_DONE, 0, 0, pid,
                         CN_IDX_PROC, CN_VAL_PROC, 0, 0, 4, 0, op)


def _event(message: bytes) -> Optional[Tuple[int, int]]:
    """(what, ack error) of a proc_event message; None if too short."""
    if len(message) < _EVENT_AT + _EVENT.size:
        return None
    what, _cpu, _ts, err = _EVENT.unpack_from(message, _EVENT_AT)
    return what, err


def is_ack(message: bytes) -> bool:
    """An acknowledgement of a LISTEN or IGNORE (ours or another's), not a
    process's event."""
    event = _event(message)
    return event is not None and event[0] == PROC_EVENT_NONE


class Activity:
    """Signs of activity since the last look: the kernel's last pid moved
    (anything forked, threads included), or tasks outside this process used
    more than BUSY of a CPU over the last WINDOW or more (a server still
    importing its modules, say). CPU time, not /proc/loadavg's running
    count: that count catches a kernel thread or one of our own threads in
    a few per cent of samples even in a quiet guest."""

    BUSY = 0.1  # of one CPU; a quiet guest's others use about 0.01
    WINDOW = 0.5  # seconds: CPU time counts in 10 ms ticks

    def __init__(self, loadavg: str = "/proc/loadavg", stat: str = "/proc/stat",
                 own_stat: str = "/proc/self/stat") -> None:
        self._paths = loadavg, stat, own_stat
        self._tick = 1.0 / os.sysconf("SC_CLK_TCK")
        self._pid = self.last_pid()
        self._since = time.monotonic()
        self._others = self.others_cpu()

    def last_pid(self) -> int:
        """The pid the kernel handed out last; -1 if unreadable."""
        try:
            with open(self._paths[0], "rb") as f:
                return int(f.read().split()[4])
        except (OSError, ValueError, IndexError):
            return -1

    def others_cpu(self) -> float:
        """CPU seconds the guest has spent outside this process, since boot
        (user, nice, system, irq, softirq, steal: not idle or iowait)."""
        try:
            with open(self._paths[1], "rb") as f:
                fields = f.readline().split()
            with open(self._paths[2], "rb") as f:
                own = f.read()
            ticks = [int(fields[i]) for i in (1, 2, 3, 6, 7, 8)]
            mine = own[own.rindex(b")") + 2:].split()
            return (sum(ticks) - int(mine[11]) - int(mine[12])) * self._tick
        except (OSError, ValueError, IndexError):
            return 0.0

    def seen(self) -> bool:
        pid = self.last_pid()
        moved, self._pid = pid != self._pid, pid
        now = time.monotonic()
        if now - self._since < self.WINDOW:
            return moved
        others = self.others_cpu()
        busy = others - self._others > self.BUSY * (now - self._since)
        self._since, self._others = now, others
        return moved or busy


class ProcEvents:
    """A proc connector socket, in the group and subscribed only inside `wait`."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    @classmethod
    def open(cls) -> Optional[ProcEvents]:
        """Events, if this kernel reports them to this process (it checks by
        subscribing once and waiting for the acknowledgement); else None."""
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        except OSError:
            return None
        try:
            sock.bind((0, 0))
            events = cls(sock)
        except OSError:
            sock.close()
            return None
        try:
            events._join()  # EPERM without CAP_NET_ADMIN
            try:
                events._control(PROC_CN_MCAST_LISTEN)
                try:
                    acked = events._acknowledged()
                finally:
                    events._control(PROC_CN_MCAST_IGNORE)
            finally:
                events._leave()
        except OSError:
            acked = False
        if not acked:  # no CONFIG_PROC_EVENTS, or not allowed (a namespace)
            events.close()
            return None
        return events

    def _join(self) -> None:
        self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, CN_IDX_PROC)

    def _leave(self) -> None:
        self.sock.setsockopt(SOL_NETLINK, NETLINK_DROP_MEMBERSHIP, CN_IDX_PROC)
        self._drain()  # what came before we left is no one's business now

    def _control(self, op: int) -> None:
        self.sock.send(control_message(op, os.getpid()))

    def _acknowledged(self) -> bool:
        """Our LISTEN's acknowledgement, without an error, within ACK_TIMEOUT."""
        deadline = time.monotonic() + ACK_TIMEOUT
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.sock.settimeout(remaining)
                try:
                    message = self.sock.recv(4096)
                except TimeoutError:
                    return False
                event = _event(message)
                if event is not None and event[0] == PROC_EVENT_NONE:
                    return event[1] == 0
        finally:
            self.sock.setblocking(False)

    def _drain(self) -> bool:
        """Reads what is queued; True if it held a process's event."""
        seen = False
        while True:
            try:
                message = self.sock.recv(4096)
            except BlockingIOError:
                return seen
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                seen = True  # events were lost: there were some
                continue
            seen = seen or not is_ack(message)

    def wait(self, timeout: float) -> bool:
        """Until a process forks, execs or exits, `wake()` is called (before
        or during the wait), or `timeout` passes; True unless it timed out.
        OSError if the subscription fails (the caller polls instead)."""
        import select

        deadline = time.monotonic() + timeout
        self._join()
        try:
            self._control(PROC_CN_MCAST_LISTEN)
            try:
                if self._drain():  # past the acknowledgement: came meanwhile
                    self._unwake()
                    return True
                poller = select.poll()
                poller.register(self.sock.fileno(), select.POLLIN)
                poller.register(self._wake_r, select.POLLIN)
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    ready = {fd for fd, _ in poller.poll(remaining * 1000)}
                    if self._wake_r in ready:
                        self._unwake()
                        return True
                    if not ready:
                        return False
                    if self._drain():  # else only acknowledgements: wait on
                        return True
            finally:
                self._control(PROC_CN_MCAST_IGNORE)
        finally:
            self._leave()

    def _unwake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 64):
                pass

    def wake(self) -> None:
        """End the current or the next `wait` now (from another thread)."""
        with contextlib.suppress(OSError):  # full: it is being woken already
            os.write(self._wake_w, b"!")

    def close(self) -> None:
        """The socket only: a `wake()` racing with this must not write to
        a descriptor number reused meanwhile (the pipe goes with the process)."""
        self.sock.close()
