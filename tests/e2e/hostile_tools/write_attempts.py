"""Every way guest root has to change a directory through the file system.

    python3 -m hostile_tools.write_attempts DIR EXISTING

Prints {operation: "ok" or the errno's name}. Run it on a read-only share
after `mount -o remount,rw`: the guest then believes it may write, and only
the host can refuse.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Callable


def attempts(root: str, existing: str) -> dict[str, Callable[[], object]]:
    old = os.path.join(root, existing)

    def create() -> None:
        with open(os.path.join(root, "by-guest-root"), "w") as f:
            f.write("guest root was here\n")

    def append() -> None:
        with open(old, "a") as f:
            f.write("appended by guest root\n")

    return {
        "create": create,
        "append": append,
        "truncate": lambda: os.truncate(old, 0),
        "unlink": lambda: os.unlink(old),
        "rename": lambda: os.rename(old, old + ".moved"),
        "mkdir": lambda: os.mkdir(os.path.join(root, "dir-by-guest")),
        "chmod-setuid": lambda: os.chmod(old, 0o4777),
        "chown": lambda: os.chown(old, 1234, 1234),
        "utime": lambda: os.utime(old, (0, 0)),
        "symlink": lambda: os.symlink("/", os.path.join(root, "link-by-guest")),
        "hardlink": lambda: os.link(old, os.path.join(root, "hardlink-by-guest")),
        "mkfifo": lambda: os.mkfifo(os.path.join(root, "fifo-by-guest")),
        "setxattr": lambda: os.setxattr(old, "user.by-guest", b"1"),
    }


def main() -> None:
    root, existing = sys.argv[1:3]
    out = {}
    for name, attempt in attempts(root, existing).items():
        try:
            attempt()
            out[name] = "ok"
        except OSError as e:
            out[name] = errno.errorcode.get(e.errno or 0, str(e))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
