"""Reading cloud-init's own status files (as gathered by one SSH command)."""

from __future__ import annotations

import json

from roost.hostagent.cloudinit import parse


def probe_output(status: dict[str, object] | None, result: dict[str, object] | None,
                 log: str = "", done: str = "", agent: str = "") -> str:
    return "\n".join([
        "@@status", json.dumps({"v1": status}) if status is not None else "",
        "@@result", json.dumps({"v1": result}) if result is not None else "",
        "@@done", done, "@@log", log, "@@agent", agent])


def stage(finished: float | None, errors: list[str] | None = None) -> dict[str, object]:
    return {"start": 1.0, "finished": finished, "errors": errors or []}


def test_running_then_done() -> None:
    running = parse(probe_output(
        {"stage": "modules-config", "init-local": stage(2.0), "init": stage(3.0),
         "modules-config": stage(None)}, None,
        log="Cloud-init v. 22.4.2 running 'modules:config'\nci-info: +-----+\n"))
    assert not running.finished and not running.failed
    assert running.stage == "modules-config"
    assert running.log_line == "Cloud-init v. 22.4.2 running 'modules:config'"
    done = parse(probe_output({"stage": None, "init": stage(3.0)},
                              {"datasource": "DataSourceNoCloud", "errors": []},
                              done="i-1 0 "))
    assert done.finished and not done.failed and done.boot_done == "i-1 0"


def test_a_stage_error_fails_before_the_final_stage() -> None:
    err = "('timezone', OSError('Invalid timezone Etc/UTC'))"
    state = parse(probe_output(
        {"stage": "modules-final", "modules-config": stage(5.0, [err]),
         "modules-final": stage(None)}, None))
    assert state.failed and not state.finished
    assert state.errors == [f"modules-config: {err}"]


def test_result_errors_win_and_garbage_is_no_crash() -> None:
    state = parse(probe_output(None, {"errors": ["('locale', ProcessExecutionError())"]}))
    assert state.errors == ["('locale', ProcessExecutionError())"]
    garbage = parse("@@status\n{not json\n@@result\n[1,2]\n@@agent\nno python3\n")
    assert not garbage.finished and not garbage.failed
    assert garbage.agent_missing == "no python3"


def test_guest_text_cannot_drive_the_users_terminal() -> None:
    state = parse(probe_output(
        {"stage": None, "init": stage(3.0, ["bad\x1b]0;pwned\x07thing"])}, None,
        log="ok\nclear\x1b[2J\x1b[H screen\n", agent="no\x1b[31m python"))
    assert "\x1b" not in state.log_line and state.log_line == "clear?[2J?[H screen"
    assert state.errors == ["init: bad?]0;pwned?thing"]
    assert state.agent_missing == "no?[31m python"
