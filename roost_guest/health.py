"""Health checks and probes defined by JSON files in the guest.

/etc/roost/integrations.d/*.json: {"name", "health_cmd",
"health_interval_secs", "health_timeout_secs", "startup_grace_secs",
"checkpoint_cmd"?, "restore_cmd"?}. /etc/roost/probes.d/*.json: {"name",
"cmd", "interval_secs", "timeout_secs", "output_format": "exit_code"|"json"}.
Commands are a string (run by /bin/sh -c) or a list (argv). Each runs with
its timeout enforced: over it, its whole process group is killed.

Check status: "pending" (not run yet, past its grace), "starting" (failing
or not run yet within the grace period), "healthy", "error" (with detail).
A bad file is reported, never fatal. The directories are rescanned, so
files that appear after the agent started are picked up.

Standard library only: runs in the guest.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

from roost_guest import compactjson

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional, Tuple

INTEGRATIONS_DIR = "/etc/roost/integrations.d"
PROBES_DIR = "/etc/roost/probes.d"
RESCAN_SECS = 1.0


# In the environment of every command run here: a respawned agent finds what
# its predecessor left running by it (see end_orphans).
COMMAND_MARK = "ROOST_GUEST_COMMAND"


def run_command(cmd: Any, timeout: float) -> Tuple[int, str, str, bool]:
    """(exit code, stdout, stderr, timed out) of `cmd`, killed after `timeout`."""
    import signal
    import subprocess

    argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else [str(a) for a in cmd]
    env = dict(os.environ)
    env[COMMAND_MARK] = "1"
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        timed_out = True
    return (proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"),
            timed_out)


def end_orphans(proc: str = "/proc") -> List[int]:
    """Kill the process groups of the commands a predecessor left running:
    session leaders marked with COMMAND_MARK whose parent is not this agent.
    An agent killed by SIGKILL (the OOM killer) cannot kill its in-flight
    checks at their timeouts, and one that never ends would outlive every
    respawn. The pids of the groups killed."""
    import signal

    mark = ("%s=1" % COMMAND_MARK).encode()
    me = os.getpid()
    killed = []
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open("%s/%s/stat" % (proc, entry), "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()  # after the name
            ppid, session = int(fields[1]), int(fields[3])
            if session != pid or ppid == me:
                continue
            with open("%s/%s/environ" % (proc, entry), "rb") as f:
                if mark not in f.read().split(b"\0"):
                    continue
            os.killpg(pid, signal.SIGKILL)
            killed.append(pid)
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
    return killed


def _number(spec: Dict[str, Any], key: str, default: float) -> float:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError("%s must be a non-negative number" % key)
    return float(value)


def _command(spec: Dict[str, Any], key: str) -> Any:
    cmd = spec.get(key)
    if isinstance(cmd, str) and cmd.strip():
        return cmd
    if isinstance(cmd, list) and cmd and all(isinstance(a, str) for a in cmd):
        return cmd
    raise ValueError("%s must be a command string or a list of strings" % key)


class _Periodic:
    """A named command from a definition file, run every interval."""

    PREFIX = ""  # key prefix: "health_" for checks, "" for probes
    CMD_KEY = "cmd"

    def __init__(self, path: str, spec: Dict[str, Any]) -> None:
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError("name must be a non-empty string")
        self.name = name
        self.path = path
        self.spec = spec
        self.cmd = _command(spec, self.CMD_KEY)
        self.interval = max(_number(spec, self.PREFIX + "interval_secs", 10), 0.2)
        self.timeout = max(_number(spec, self.PREFIX + "timeout_secs", 5), 0.1)
        self.stopped = False


class Check(_Periodic):
    PREFIX = "health_"
    CMD_KEY = "health_cmd"

    def __init__(self, path: str, spec: Dict[str, Any]) -> None:
        super().__init__(path, spec)
        self.grace = _number(spec, "startup_grace_secs", 0)
        self.checkpoint_cmd = spec.get("checkpoint_cmd")
        self.restore_cmd = spec.get("restore_cmd")
        self.started = time.monotonic()
        self.status = "starting" if self.grace > 0 else "pending"
        self.detail = ""
        self.last_run: Optional[float] = None

    def to_json(self) -> Dict[str, Any]:
        return {"name": self.name, "status": self.status, "detail": self.detail,
                "lastRun": self.last_run, "file": self.path}

    def run_once(self) -> bool:
        """Run the check; True when its status or detail changed."""
        code, _, err, timed_out = run_command(self.cmd, self.timeout)
        self.last_run = time.time()
        before = (self.status, self.detail)
        if code == 0 and not timed_out:
            self.status, self.detail = "healthy", ""
        else:
            if timed_out:
                detail = "timed out after %gs (killed)" % self.timeout
            else:
                tail = err.strip().splitlines()[-3:]
                detail = "exit code %d" % code + (": " + " / ".join(tail) if tail else "")
            in_grace = time.monotonic() - self.started < self.grace
            self.status, self.detail = ("starting" if in_grace else "error"), detail
        return (self.status, self.detail) != before


class Probe(_Periodic):
    def __init__(self, path: str, spec: Dict[str, Any]) -> None:
        super().__init__(path, spec)
        self.format = spec.get("output_format", "exit_code")
        if self.format not in ("exit_code", "json"):
            raise ValueError("output_format must be exit_code or json")
        self.result: Dict[str, Any] = {"name": self.name, "ok": None}

    def run_once(self) -> bool:
        code, out, err, timed_out = run_command(self.cmd, self.timeout)
        result: Dict[str, Any] = {"name": self.name, "exitCode": code, "at": time.time(),
                                  "ok": code == 0 and not timed_out}
        if timed_out:
            result["error"] = "timed out after %gs (killed)" % self.timeout
        elif self.format == "json":
            try:
                result["output"] = compactjson.loads(out)
            except ValueError as e:
                result["ok"] = False
                result["error"] = "output is not JSON: %s" % e
        if err.strip():
            result["stderr"] = err.strip()[-500:]
        changed = result.get("ok") != self.result.get("ok")
        self.result = result
        return changed


def _load(directory: str, kind: Any) -> Tuple[Dict[str, Any], List[Dict[str, str]]]:
    items: Dict[str, Any] = {}
    errors: List[Dict[str, str]] = []
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".json"))
    except OSError:
        return items, errors
    for filename in names:
        path = os.path.join(directory, filename)
        try:
            with open(path) as f:
                spec = compactjson.loads(f.read())
            if not isinstance(spec, dict):
                raise ValueError("expected a JSON object")
            item = kind(path, spec)
            if item.name in items:
                raise ValueError("duplicate name %r" % item.name)
            items[item.name] = item
        except (OSError, ValueError) as e:
            errors.append({"file": path, "error": str(e)})
    return items, errors


class HealthMonitor:
    """Runs every check and probe on its interval; reports changes."""

    def __init__(self, on_change: Callable[[Dict[str, Any]], None],
                 integrations_dir: str = INTEGRATIONS_DIR, probes_dir: str = PROBES_DIR) -> None:
        self.on_change = on_change
        self.integrations_dir = integrations_dir
        self.probes_dir = probes_dir
        self.checks: Dict[str, Check] = {}
        self.probes: Dict[str, Probe] = {}
        self.check_errors: List[Dict[str, str]] = []
        self.probe_errors: List[Dict[str, str]] = []
        self._signature: Any = None
        self._lock = threading.Lock()
        self._started = False

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        self.rescan()
        threading.Thread(target=self._rescan_loop, daemon=True).start()

    def _signature_now(self) -> Any:
        sig = []
        for d in (self.integrations_dir, self.probes_dir):
            try:
                for n in sorted(os.listdir(d)):
                    st = os.stat(os.path.join(d, n))
                    sig.append((d, n, st.st_mtime_ns, st.st_size))
            except OSError:
                pass
        return tuple(sig)

    def _rescan_loop(self) -> None:
        while True:
            time.sleep(RESCAN_SECS)
            self.rescan()

    def rescan(self) -> None:
        sig = self._signature_now()
        if sig == self._signature:
            return
        self._signature = sig
        checks, check_errors = _load(self.integrations_dir, Check)
        probes, probe_errors = _load(self.probes_dir, Probe)
        fresh: List[Any] = []
        with self._lock:
            # An unchanged definition keeps its runner and its status.
            for table, new in ((self.checks, checks), (self.probes, probes)):
                for name, old in table.items():
                    if name in new and new[name].spec == old.spec and new[name].path == old.path:
                        new[name] = old
                    else:
                        old.stopped = True
                fresh += [item for name, item in new.items() if table.get(name) is not item]
            self.checks, self.probes = checks, probes
            self.check_errors, self.probe_errors = check_errors, probe_errors
        for item in fresh:
            threading.Thread(target=self._loop, args=(item,), daemon=True).start()
        self.on_change({"event": "health", **self.health()})

    def _loop(self, item: Any) -> None:
        while not item.stopped:
            try:
                changed = item.run_once()
            except OSError as e:
                changed, item.detail = True, "cannot run: %s" % e
                if isinstance(item, Check):
                    item.status = "error"
            if item.stopped:
                return
            if changed:
                event = "health" if isinstance(item, Check) else "probes"
                self.on_change({"event": event,
                                **(self.health() if event == "health" else self.probe_results())})
            time.sleep(item.interval)

    def health(self) -> Dict[str, Any]:
        with self._lock:
            checks = [c.to_json() for c in self.checks.values()]
            errors = list(self.check_errors)
        return {"checks": checks, "errors": errors, "summary": summarize(checks)}

    def probe_results(self) -> Dict[str, Any]:
        with self._lock:
            return {"probes": [p.result for p in self.probes.values()],
                    "errors": list(self.probe_errors)}


def summarize(checks: List[Dict[str, Any]]) -> str:
    states = {c["status"] for c in checks}
    if not states:
        return "-"
    if "error" in states:
        return "error"
    if states & {"starting", "pending"}:
        return "starting"
    return "healthy"
