"""The inputs of the host agent's /v1 API: one definition for both ends.

The CLI builds its request bodies and queries from these classes
(`wire()`); the host agent validates what it receives against the same
classes with pydantic (roost.hostagent.apiinput), strictly: "no" is not a
boolean, 1 is not a string, an unknown field is refused. The OpenAPI
document (roost.hostagent.openapi) takes its schemas from them too.

They are plain dataclasses on purpose: the CLI imports this module, and
pydantic would add about 0.2 s to the start of `roost exec` (measured
here). pydantic reads `__pydantic_config__` and the `Constraint` markers;
nothing here imports it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from roost.store.snapshots import TAG_RE

MountType = Literal["virtiofs", "9p", "reverse-sshfs"]


def wire_name(field: str) -> str:
    """A field's name in JSON: camelCase, as everywhere in roost's JSON."""
    first, *rest = field.split("_")
    return first + "".join(word.capitalize() for word in rest)


class Constraint:
    """A bound on a field (ge=0, min_length=1, pattern=...), in pydantic-core's
    own terms: pydantic adds it to the field's schema, and the JSON schema
    shows it (minimum, minItems, pattern)."""

    def __init__(self, **bounds: object) -> None:
        self.bounds = bounds

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        schema = handler(source)
        schema.update(self.bounds)
        return schema


@dataclass(frozen=True, kw_only=True)
class ApiInput:
    """A request body, query or path of the API."""

    __pydantic_config__: ClassVar[dict[str, Any]] = {
        "extra": "forbid", "strict": True, "allow_inf_nan": False,
        "alias_generator": wire_name, "use_attribute_docstrings": True,
    }

    def wire(self) -> dict[str, Any]:
        """As sent: JSON names, every field (defaults too)."""
        return {wire_name(f.name): getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True, kw_only=True)
class MountAdd(ApiInput):
    """Mount a host folder in the running guest (POST /v1/mounts)."""

    location: str
    """The host folder (absolute; ~ is the host agent's home)."""
    mount_point: str
    """Where it appears in the guest (absolute)."""
    type: Literal["", MountType] = ""
    """How it is shared; "": the instance's default (roost.yaml mountType)."""
    writable: bool = False
    """Whether the guest may write (read-only by default)."""


@dataclass(frozen=True, kw_only=True)
class MountRemove(ApiInput):
    """Unmount a runtime mount (DELETE /v1/mounts?mountPoint=...)."""

    mount_point: str
    """The guest path it is mounted at."""
    force: bool = False
    """Detach it even when busy or its daemon died: the guest aborts the share's
    connection first, so I/O on it fails instead of hanging."""


SnapshotTag = Annotated[str, Constraint(pattern=TAG_RE.pattern)]


@dataclass(frozen=True, kw_only=True)
class SnapshotCreate(ApiInput):
    """Save the running VM's disk and state under a tag (POST /v1/snapshots)."""

    tag: SnapshotTag
    """The new snapshot's name."""


@dataclass(frozen=True, kw_only=True)
class DiskCopy(ApiInput):
    """Copy the running VM's disk, its snapshots too (POST /v1/disk/copy)."""

    path: Annotated[str, Constraint(pattern=r"^/[^\x00]*$")]
    """Where the copy goes: an absolute path, a new file in a directory that exists."""


@dataclass(frozen=True, kw_only=True)
class SnapshotRef(ApiInput):
    """A snapshot named in the path (/v1/snapshots/{tag})."""

    tag: SnapshotTag
    """The snapshot's name."""


# An argument reaches execve in the guest: a NUL would cut it short.
NO_NUL = r"^[^\x00]*$"
ExecArg = Annotated[str, Constraint(pattern=NO_NUL)]
TerminalSize = Annotated[int, Constraint(ge=0, le=65535)]
ExecSignalName = Literal["HUP", "INT", "QUIT", "KILL", "USR1", "USR2", "TERM", "CONT",
                         "STOP", "TSTP", "WINCH"]  # roost_guest.protocol.EXEC_SIGNALS


@dataclass(frozen=True, kw_only=True)
class ExecRequest(ApiInput):
    """Run a command in the guest through the guest agent: the first message
    on the exec WebSocket (GET /v1/exec), a JSON text message."""

    argv: Annotated[list[ExecArg], Constraint(min_length=1)]
    """The command and its arguments (no shell)."""
    timeout: Annotated[float, Constraint(ge=0, lt=1e9)] = 0.0
    """Seconds until the command's session is killed; 0: no limit."""
    tty: bool = False
    """Run it on a pseudo-terminal (stdout and stderr are then one stream)."""
    rows: TerminalSize = 0
    """The terminal's height (with tty; 0: the guest's default)."""
    cols: TerminalSize = 0
    """The terminal's width (with tty; 0: the guest's default)."""
    term: Annotated[str, Constraint(pattern=r"^[A-Za-z0-9._+-]{0,64}$")] = ""
    """TERM for the terminal, such as xterm-256color ("": dumb)."""
    env: dict[str, ExecArg] = dataclasses.field(default_factory=dict)
    """Environment variables, over the guest agent's own (the guest refuses a
    name with "=" or NUL)."""
    cwd: Annotated[str, Constraint(pattern=r"^(/[^\x00]*)?$")] = ""
    """The directory it starts in (absolute; "": /)."""


@dataclass(frozen=True, kw_only=True)
class ExecEof(ApiInput):
    """Exec WebSocket, client to host agent: stdin has ended."""

    type: Literal["eof"]


@dataclass(frozen=True, kw_only=True)
class ExecResize(ApiInput):
    """Exec WebSocket, client to host agent: the terminal's new size."""

    type: Literal["resize"]
    rows: TerminalSize
    cols: TerminalSize


@dataclass(frozen=True, kw_only=True)
class ExecSignal(ApiInput):
    """Exec WebSocket, client to host agent: a signal to every process of the
    command's session ("signal"), or that signal and then SIGKILL ("kill")."""

    type: Literal["signal", "kill"]
    signal: ExecSignalName


# The control messages after the request, by their type.
EXEC_CONTROLS: dict[str, type[ApiInput]] = {
    "eof": ExecEof, "resize": ExecResize, "signal": ExecSignal, "kill": ExecSignal}


# A path in the guest, for the files routes (guestAgent.allowFiles); the
# guest agent bounds its length (4096 bytes, as PATH_MAX).
GuestPath = Annotated[str, Constraint(pattern=r"^/[^\x00]*$")]
FileMode = Annotated[int, Constraint(ge=-1, le=0o7777)]


@dataclass(frozen=True, kw_only=True)
class FileRef(ApiInput):
    """A file or directory in the guest (GET /v1/files, /v1/files/stat, /v1/files/list)."""

    path: GuestPath
    """Its absolute path in the guest."""


@dataclass(frozen=True, kw_only=True)
class FileWrite(ApiInput):
    """Write a file in the guest from the request body (PUT /v1/files?path=...)."""

    path: GuestPath
    """The file's absolute path; it is replaced at once when the body has all come."""
    mode: FileMode = -1
    """Its permission bits (e.g. 420 for 0o644); -1: kept from the file it
    replaces, else 0o644."""


@dataclass(frozen=True, kw_only=True)
class FileRemove(ApiInput):
    """Remove a file or directory in the guest (DELETE /v1/files?path=...)."""

    path: GuestPath
    """What to remove."""
    recursive: bool = False
    """Remove a directory with all it holds (else only an empty one)."""


@dataclass(frozen=True, kw_only=True)
class FileRename(ApiInput):
    """Rename (move) a file or directory in the guest (POST /v1/files/rename)."""

    path: GuestPath
    """What to move."""
    to: GuestPath
    """Its new path (an existing file there is replaced, as by rename(2))."""


@dataclass(frozen=True, kw_only=True)
class DirCreate(ApiInput):
    """Make a directory in the guest (POST /v1/files/dir)."""

    path: GuestPath
    """The directory to make."""
    parents: bool = False
    """Make missing parents too, and succeed if it exists (mkdir -p)."""
    mode: FileMode = -1
    """Its permission bits; -1: 0o755."""


@dataclass(frozen=True, kw_only=True)
class FileWatch(ApiInput):
    """Follow changes under a path in the guest (GET /v1/files/watch?path=...)."""

    path: GuestPath
    """A file or directory."""
    recursive: bool = False
    """Also what is in its subdirectories."""
