"""`roost exec`'s client, run against a host agent socket given on the command
line (the tests' own API server): python -m tests.unit.exec_cli_process SOCK
TIMEOUT tty|notty ARGV..."""

from __future__ import annotations

import sys
from pathlib import Path

from roost.cli import execclient
from roost.errors import RoostError


def main() -> None:
    sock, timeout, tty, *argv = sys.argv[1:]
    try:
        sys.exit(execclient.run(Path(sock), argv, float(timeout), tty == "tty"))
    except RoostError as e:  # as roost.cli.main reports it
        print(f"roost: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
