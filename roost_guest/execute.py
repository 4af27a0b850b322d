"""Dev-only remote command: run argv, stream its output, return its status.

Off unless the agent was started with --allow-exec (the instance config's
guestAgent.allowExec). Every run is appended to the audit log. No shell:
argv is passed to execve as it is.

Standard library only: runs in the guest.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List

AUDIT_LOG = "/var/log/roost/exec.log"
TIMEOUT_EXIT = 124  # as timeout(1)


class ExecError(Exception):
    pass


def _audit(path: str, record: Dict[str, Any]) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError:
        pass


def run(argv: List[str], timeout: float, emit: Callable[[str, bytes], None],
        audit_log: str = AUDIT_LOG) -> Dict[str, Any]:
    """Run `argv`; emit("stdout"|"stderr", chunk) as output arrives."""
    import signal
    import subprocess  # imported on first use: a third of a second under TCG

    if not argv or not all(isinstance(a, str) for a in argv):
        raise ExecError("exec needs a non-empty list of strings")
    started = time.time()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, cwd="/")
    except OSError as e:
        _audit(audit_log, {"time": started, "argv": argv, "error": str(e)})
        raise ExecError("cannot run %s: %s" % (argv[0], e.strerror or e)) from None

    def pump(stream: Any, name: str) -> None:
        while True:
            data = os.read(stream.fileno(), 65536)
            if not data:
                return
            emit(name, data)

    pumps = [threading.Thread(target=pump, args=(proc.stdout, "stdout"), daemon=True),
             threading.Thread(target=pump, args=(proc.stderr, "stderr"), daemon=True)]
    for t in pumps:
        t.start()
    timed_out = False
    try:
        code = proc.wait(timeout=timeout if timeout > 0 else None)
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(OSError):  # the whole group: no orphan left
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        code = TIMEOUT_EXIT
    for t in pumps:
        t.join(5)
    if timed_out:
        emit("stderr", ("roost exec: killed after %gs\n" % timeout).encode())
    result = {"exitCode": code, "timedOut": timed_out,
              "seconds": round(time.time() - started, 3)}
    _audit(audit_log, {"time": started, "argv": argv, **result})
    return result


def encode_chunk(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
