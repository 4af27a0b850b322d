"""How the CLI ends on an error roost knows: one line, the right exit status.

Used by the click group and by the fast `ls` path alike (roost.cli.entry),
so it imports nothing heavy.
"""

from __future__ import annotations

import errno
import sys

from roost.errors import RoostError

# Not `typing`: `roost ls` imports this module, and typing costs it ~5 ms
# (mypy takes any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

# Errors of the host's file systems, not of roost: said plainly, not as a
# traceback. Anything else that escapes is a bug and keeps its traceback.
FILE_SYSTEM_ERRORS = {
    errno.ENOSPC: "free space on its file system",
    errno.EDQUOT: "free space within your quota there",
    errno.EROFS: "the file system is read-only; set ROOST_HOME to a writable directory",
    errno.EACCES: "check the permissions of that path",
}


def fail(e: RoostError) -> NoReturn:
    print(f"roost: error: {e}", file=sys.stderr)
    sys.exit(e.exit_code)


def fail_on_file_system(e: OSError) -> None:
    """Exit saying what is wrong, for a file-system error; return for another."""
    if e.errno not in FILE_SYSTEM_ERRORS:
        return
    where = f" ({e.filename})" if e.filename else ""
    print(f"roost: error: {e.strerror}{where}: {FILE_SYSTEM_ERRORS[e.errno]}", file=sys.stderr)
    sys.exit(1)
