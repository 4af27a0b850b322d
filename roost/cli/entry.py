"""The `roost` command: `roost ls` on a fast path, everything else by click.

`ls` is typed a hundred times a day, and the full command line (click and
the definitions of every command) costs more than all of `ls`'s own work.
Exactly `roost ls` and `roost ls --json` are served here without either;
any other spelling (`--help`, a typo, new options) goes to click, which
defines `ls` the same way and says what is wrong.
"""

from __future__ import annotations

import os
import sys

FAST_LS = (["ls"], ["ls", "--json"])


def main() -> None:
    argv = sys.argv[1:]
    if argv in FAST_LS:
        from roost.cli.failures import fail, fail_on_file_system
        from roost.cli.listing import ls
        from roost.errors import RoostError

        try:
            ls(as_json=argv == ["ls", "--json"])
            sys.stdout.flush()
        except BrokenPipeError:  # `roost ls | head`: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except RoostError as e:
            fail(e)
        except OSError as e:
            fail_on_file_system(e)
            raise
        return
    from roost.cli.main import main as click_main

    click_main()
