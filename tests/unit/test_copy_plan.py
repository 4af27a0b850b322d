"""`roost copy`: locations, and the scp or rsync command each case becomes."""

from __future__ import annotations

import pytest

from roost.errors import UsageError
from roost.ops.copy import Location, parse_location, plan

CFG = "/tmp/cfg"


def test_locations() -> None:
    assert parse_location("dev:/etc/hosts") == Location("/etc/hosts", "dev")
    assert parse_location("dev:") == Location("", "dev")  # the guest user's home
    assert parse_location("notes.txt") == Location("notes.txt")
    assert parse_location("./a:b") == Location("./a:b")
    assert parse_location("/abs/a:b") == Location("/abs/a:b")
    with pytest.raises(UsageError, match=r"write \./Dev:x"):
        parse_location("Dev:x")
    with pytest.raises(UsageError, match="empty path"):
        parse_location("")


def scp(*args: str, recursive: bool = False, verbose: bool = False) -> list[str]:
    *sources, dest = [parse_location(a) for a in args]
    return plan(sources, dest, recursive=recursive, verbose=verbose, backend="auto",
                ssh_config=CFG, rsync_ok=False, dest_exists=True).argv


def test_scp_in_each_direction() -> None:
    assert scp("a.txt", "dev:/tmp/") == ["scp", "-F", CFG, "--", "a.txt", "roost-dev:/tmp/"]
    assert scp("dev:x", ".", recursive=True) == ["scp", "-F", CFG, "-r", "--", "roost-dev:x",
                                                 "."]
    # Guest to guest, the same instance or two: through the host.
    assert scp("dev:x", "other:y", verbose=True) == [
        "scp", "-F", CFG, "-3", "-v", "--", "roost-dev:x", "roost-other:y"]
    assert scp("dev:x", "dev:y")[3] == "-3"
    # Several sources; a path that looks like an option stays a path.
    assert scp("-a", "b", "dev:d")[-4:] == ["--", "-a", "b", "roost-dev:d"]


def test_refusals() -> None:
    with pytest.raises(UsageError, match="neither side"):
        scp("a", "b")
    *_, dest = [parse_location("dev:y")]
    with pytest.raises(UsageError, match="rsync cannot copy from one instance"):
        plan([parse_location("other:x")], dest, recursive=False, verbose=False,
             backend="rsync", ssh_config=CFG, rsync_ok=True, dest_exists=True)
    with pytest.raises(UsageError, match="needs rsync on the host and in the instance"):
        plan([parse_location("x")], dest, recursive=False, verbose=False,
             backend="rsync", ssh_config=CFG, rsync_ok=False, dest_exists=True)


def rsync(source: str, dest: str, dest_exists: bool) -> list[str]:
    return plan([parse_location(source)], parse_location(dest), recursive=True,
                verbose=False, backend="auto", ssh_config=CFG, rsync_ok=True,
                dest_exists=dest_exists).argv


def test_rsync_keeps_cps_meaning_of_a_trailing_slash() -> None:
    head = ["rsync", "-e", f"ssh -F {CFG}", "--protect-args", "--links", "--perms",
            "--times", "--recursive", "--"]
    # cp -r dir new: new is the copy; cp -r dir/ existing: existing/dir.
    assert rsync("dir", "dev:new", dest_exists=False) == [*head, "dir/", "roost-dev:new"]
    assert rsync("dir/", "dev:new", dest_exists=False) == [*head, "dir/", "roost-dev:new"]
    assert rsync("dir/", "dev:old", dest_exists=True) == [*head, "dir", "roost-dev:old"]
    assert rsync("dev:/", "here", dest_exists=True) == [*head, "roost-dev:/", "here"]
