"""roost's Python SDK: sandboxes (roost instances) driven from a program.

    from roost.sdk import Sandbox

    with Sandbox.create(timeout=600) as sb:
        print(sb.commands.run("uname -a").text)
        sb.files.write("/tmp/hello.txt", "hi")

AsyncSandbox is the same for asyncio. See docs/sdk.md.
"""

from roost.errors import (
    AlreadyExists,
    Busy,
    HostAgentUnreachable,
    NotFound,
    RequestFailed,
    RequestRefused,
    RoostError,
    UsageError,
    WrongState,
)
from roost.ops.start import StartFailed
from roost.sdk.commands import CommandError, CommandExited, CommandResult
from roost.sdk.files import EntryInfo, FileChange, WriteInfo
from roost.sdk.sandbox import AsyncSandbox, Paused, Port, Snapshot
from roost.sdk.sync import CommandHandle, Sandbox

__all__ = [
    "AlreadyExists", "AsyncSandbox", "Busy", "CommandError", "CommandExited", "CommandHandle",
    "CommandResult", "EntryInfo", "FileChange", "HostAgentUnreachable", "NotFound", "Paused",
    "Port", "RequestFailed", "RequestRefused", "RoostError", "Sandbox", "Snapshot",
    "StartFailed", "UsageError", "WriteInfo", "WrongState",
]
