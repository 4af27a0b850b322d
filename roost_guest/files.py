"""Files of the guest, for the host: read, write, list, stat, make a
directory, remove, rename, watch (guestAgent.allowFiles).

A separate permission from exec: a sandbox whose programs only move files
needs no way to run commands. The agent runs as root, so these reach every
path of the guest; the host asked for them, and the guest is the host's
to manage (the boundary roost keeps is the other way round: the host
agent bounds what it takes from the guest).

Reads and writes move their bytes on a stream (see roost_guest.protocol),
with the tunnels' flow control (FileStream). A write goes to a temporary
file beside the target, renamed over it once the host's eof has come and
the data is on disk, so a reader never sees half a file; then the event
``{"event": "files-written", "stream": S, "size" | "error"}``. A new file
and directory get the owner of the directory they are made in (the guest
user's, in its home).

A watch reports changes under a path as ``{"event": "files-change",
"stream": S, "path", "kind": "created" | "modified" | "deleted"}`` events,
from a scan every WATCH_INTERVAL: portable to every guest kernel and
Python, and bounded (WATCH_MAX_ENTRIES) however large the tree.

Standard library only, and Python 3.8 compatible: it runs in the guest.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import shutil
import stat
import threading

from roost_guest import protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

    SendJson = Callable[[Dict[str, Any]], None]

MAX_PATH = 4096
CHUNK = 64 * 1024
WATCH_INTERVAL = 0.2
WATCH_MAX_ENTRIES = 20000  # a watch of a larger tree sees only this many
LIST_MAX_ENTRIES = 100000


class FilesError(Exception):
    """A request that cannot be served: the message says why."""


def check_path(value: Any, name: str = "path") -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise FilesError("%s must be an absolute path (a string starting with /)" % name)
    if "\0" in value or len(value.encode("utf-8", "surrogateescape")) > MAX_PATH:
        raise FilesError("%s must have no NUL byte and at most %d bytes" % (name, MAX_PATH))
    return value


def _mode(value: Any, default: int) -> int:
    if value is None:
        return default
    if type(value) is not int or not 0 <= value <= 0o7777:
        raise FilesError("mode must be an integer in 0..0o7777 (e.g. 420 for 0o644)")
    return value


def _failed(e: OSError, path: str) -> FilesError:
    code = errno.errorcode.get(e.errno or 0, "EIO")
    return FilesError("%s: %s (%s)" % (path, e.strerror or e, code))


def kind_of(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def describe(st: os.stat_result) -> Dict[str, Any]:
    return {"type": kind_of(st.st_mode), "size": st.st_size,
            "mode": stat.S_IMODE(st.st_mode), "mtime": st.st_mtime,
            "uid": st.st_uid, "gid": st.st_gid}


def stat_path(req: Dict[str, Any]) -> Dict[str, Any]:
    """{"exists": false}, or the path's type, size, mode, mtime, uid, gid
    (of a symlink itself, not what it points to)."""
    path = check_path(req.get("path"))
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return {"exists": False}
    except OSError as e:
        raise _failed(e, path) from None
    return dict(describe(st), exists=True)


def list_dir(req: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The entries of a directory, sorted by name, each with its stat."""
    path = check_path(req.get("path"))
    entries: List[Dict[str, Any]] = []
    try:
        with os.scandir(path) as it:
            for entry in it:
                if len(entries) >= LIST_MAX_ENTRIES:
                    raise FilesError("%s has more than %d entries" % (path, LIST_MAX_ENTRIES))
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # removed meanwhile
                entries.append(dict(describe(st), name=entry.name))
    except OSError as e:
        raise _failed(e, path) from None
    entries.sort(key=lambda e: e["name"])
    return entries


def _owner_of_parent(path: str) -> Tuple[int, int]:
    st = os.stat(os.path.dirname(path.rstrip("/")) or "/")
    return st.st_uid, st.st_gid


def make_dir(req: Dict[str, Any]) -> Dict[str, Any]:
    path = check_path(req.get("path"))
    mode = _mode(req.get("mode"), 0o755)
    parents = req.get("parents") is True
    made = []
    try:
        if parents:
            todo = []
            cur = path.rstrip("/") or "/"
            while not os.path.isdir(cur):
                todo.append(cur)
                cur = os.path.dirname(cur)
            for d in reversed(todo):
                os.mkdir(d, mode)
                made.append(d)
        else:
            os.mkdir(path, mode)
            made.append(path)
        for d in made:
            uid, gid = _owner_of_parent(d)
            os.chown(d, uid, gid)
            os.chmod(d, mode)  # not narrowed by the agent's umask
    except OSError as e:
        raise _failed(e, path) from None
    return {"made": made}


def remove(req: Dict[str, Any]) -> Dict[str, Any]:
    path = check_path(req.get("path"))
    if os.path.realpath(path) == "/":
        raise FilesError("refusing to remove /")
    recursive = req.get("recursive") is True
    try:
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            if recursive:
                shutil.rmtree(path)
            else:
                os.rmdir(path)
        else:
            os.unlink(path)
    except OSError as e:
        raise _failed(e, path) from None
    return {"removed": path}


def rename(req: Dict[str, Any]) -> Dict[str, Any]:
    src = check_path(req.get("from"), "from")
    dst = check_path(req.get("to"), "to")
    try:
        os.rename(src, dst)
    except OSError as e:
        raise _failed(e, "%s -> %s" % (src, dst)) from None
    return {"from": src, "to": dst}


# -- reads and writes on streams -----------------------------------------

class FileStream:
    """A stream end joined to a file: a read sends the file within the
    host's credit, then eof; a write takes the host's data into a temporary
    file and grants credit back as it is written, and renames the file
    into place at the host's eof. A reset (the host gave up, or the session
    ended) leaves the target as it was."""

    def __init__(self, stream_id: int, send_json: SendJson,
                 send_data: Callable[[int, bytes], None],
                 on_done: Callable[[int], None]) -> None:
        self.id = stream_id
        self._send_json = send_json
        self._send_data = send_data
        self._on_done = on_done
        self._cond = threading.Condition()
        self._credit = protocol.WINDOW
        self._queue: Deque[Optional[bytes]] = collections.deque()
        self._queued = 0
        self._closed = False

    # -- from the host (the channel's read thread) ------------------------

    def deliver(self, data: bytes) -> None:
        with self._cond:
            if self._closed:
                return
            if self._queued + len(data) > protocol.WINDOW:
                self._closed = True  # the host broke flow control
                self._cond.notify_all()
                with contextlib.suppress(OSError):
                    self._send_json({"type": "reset", "stream": self.id,
                                     "error": "stream %d overran its window" % self.id})
                return
            self._queue.append(data)
            self._queued += len(data)
            self._cond.notify_all()

    def grant(self, n: int) -> None:
        with self._cond:
            self._credit += n
            self._cond.notify_all()

    def eof(self) -> None:
        with self._cond:
            self._queue.append(None)
            self._cond.notify_all()

    def reset(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- threads ------------------------------------------------------------

    def send_file(self, fd: int) -> None:
        """A read: the file's bytes, then eof."""
        threading.Thread(target=self._send_loop, args=(fd,), daemon=True).start()

    def _send_loop(self, fd: int) -> None:
        try:
            while True:
                with self._cond:
                    while self._credit <= 0 and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                    want = min(self._credit, protocol.DATA_CHUNK)
                data = os.read(fd, want)
                if not data:
                    self._send_json({"type": "eof", "stream": self.id})
                    return
                with self._cond:
                    self._credit -= len(data)
                self._send_data(self.id, data)
        except OSError as e:  # the file, or the channel: the host learns from the reset
            with contextlib.suppress(OSError):
                self._send_json({"type": "reset", "stream": self.id, "error": str(e)})
        finally:
            os.close(fd)
            self._on_done(self.id)

    def receive_file(self, target: Write) -> None:
        """A write: the host's bytes into `target` until its eof."""
        threading.Thread(target=self._receive_loop, args=(target,), daemon=True).start()

    def _receive_loop(self, target: Write) -> None:
        size = 0
        result: Dict[str, Any] = {}
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        target.abandon()
                        return
                    data = self._queue.popleft()
                    if data is not None:
                        self._queued -= len(data)
                if data is None:
                    target.finish()
                    result = {"size": size}
                    break
                target.write(data)
                size += len(data)
                self._send_json({"type": "window", "stream": self.id, "bytes": len(data)})
        except FilesError as e:
            target.abandon()
            result = {"error": str(e)}
        except OSError:
            target.abandon()
            return  # the channel is gone
        finally:
            with self._cond:
                self._closed = True  # data still coming is dropped
            self._on_done(self.id)
        with contextlib.suppress(OSError):
            self._send_json(dict(result, event="files-written", stream=self.id))
            if "error" in result:  # the host may still be sending: it stops now
                self._send_json({"type": "reset", "stream": self.id, "error": result["error"]})


def open_read(req: Dict[str, Any]) -> Tuple[int, Dict[str, Any]]:
    """The open file and what the reply says of it (size, mode...)."""
    path = check_path(req.get("path"))
    try:
        # Non-blocking: a FIFO would block the open until a writer came.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise _failed(e, path) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise FilesError("%s is a %s, not a file" % (path, kind_of(st.st_mode)))
    os.set_blocking(fd, True)
    return fd, describe(st)


class Write:
    """A file being written: a temporary file beside it until finish()."""

    def __init__(self, req: Dict[str, Any]) -> None:
        self.path = check_path(req.get("path"))
        mode = _mode(req.get("mode"), -1)
        if self.path.endswith("/"):
            raise FilesError("%s names a directory; give the file's path" % self.path)
        try:
            old = os.stat(self.path)
        except FileNotFoundError:
            old = None
        except OSError as e:
            raise _failed(e, self.path) from None
        if old is not None and not stat.S_ISREG(old.st_mode):
            raise FilesError("%s is a %s, not a file" % (self.path, kind_of(old.st_mode)))
        try:
            # Kept from the file it replaces, as an editor would; else the directory's.
            self.owner = (old.st_uid, old.st_gid) if old else _owner_of_parent(self.path)
            self.mode = mode if mode >= 0 else (stat.S_IMODE(old.st_mode) if old else 0o644)
            # Not named after the file: a long (or multi-byte) name would not fit NAME_MAX.
            self.tmp = os.path.join(os.path.dirname(self.path), ".roost-write-%d-%d.tmp" % (
                os.getpid(), threading.get_ident()))
            self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                              0o600)
        except OSError as e:
            raise _failed(e, self.path) from None

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as e:
            raise _failed(e, self.path) from None

    def finish(self) -> None:
        """Owner and mode set, on disk, renamed over the target."""
        try:
            os.fchown(self.fd, *self.owner)
            os.fchmod(self.fd, self.mode)
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            os.rename(self.tmp, self.path)
        except OSError as e:
            raise _failed(e, self.path) from None

    def abandon(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)


# -- watches -------------------------------------------------------------

def _scan(path: str, recursive: bool) -> Dict[str, Tuple[int, int, float]]:
    """(inode, size, mtime) of the path and, for a directory, what is in it."""
    seen: Dict[str, Tuple[int, int, float]] = {}
    todo = [path]
    while todo and len(seen) < WATCH_MAX_ENTRIES:
        cur = todo.pop()
        try:
            st = os.lstat(cur)
        except OSError:
            continue
        seen[cur] = (st.st_ino, st.st_size, st.st_mtime)
        if stat.S_ISDIR(st.st_mode) and (cur == path or recursive):
            try:
                names = os.listdir(cur)
            except OSError:
                continue
            todo.extend(os.path.join(cur, n) for n in names)
    return seen


class Watch:
    """Changes under one path, as events on a stream id, until reset."""

    def __init__(self, req: Dict[str, Any], stream_id: int, send: SendJson,
                 on_done: Callable[[int], None]) -> None:
        self.path = check_path(req.get("path")).rstrip("/") or "/"
        self.recursive = req.get("recursive") is True
        self.id = stream_id
        self._send = send
        self._on_done = on_done
        self._stop = threading.Event()
        self._before = _scan(self.path, self.recursive)

    def start(self) -> None:
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        try:
            self._watch()
        finally:
            self._on_done(self.id)

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL):
            now = _scan(self.path, self.recursive)
            changes = [(p, "created") for p in now if p not in self._before]
            changes += [(p, "modified") for p, v in now.items()
                        if p in self._before and self._before[p] != v and p != self.path]
            changes += [(p, "deleted") for p in self._before if p not in now]
            self._before = now
            for path, kind in sorted(changes):
                try:
                    self._send({"event": "files-change", "stream": self.id, "path": path,
                                "kind": kind})
                except OSError:
                    return  # the host left

    # As a stream end: the host's reset (or the session's end) stops it.
    def reset(self) -> None:
        self._stop.set()

    def deliver(self, data: bytes) -> None:
        pass

    def grant(self, n: int) -> None:
        pass

    def eof(self) -> None:
        self._stop.set()
