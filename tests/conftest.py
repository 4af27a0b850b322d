"""Suite-wide guard: with ROOST_REQUIRE_E2E=1 (scripts/test.sh sets it), a run
in which no end-to-end test passed, or one was skipped, fails."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

E2E_DIR = Path(__file__).parent / "e2e"
_e2e_outcomes: dict[str, int] = {"passed": 0, "skipped": 0, "failed": 0}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "/e2e/" not in report.nodeid.replace("\\", "/") and not report.nodeid.startswith("e2e/"):
        return
    if report.when == "call" or report.skipped:
        _e2e_outcomes[report.outcome] = _e2e_outcomes.get(report.outcome, 0) + 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("ROOST_REQUIRE_E2E") != "1" or exitstatus not in (0, 5):
        return
    if _e2e_outcomes["passed"] == 0 or _e2e_outcomes["skipped"]:
        print(f"\nend-to-end tests are required but {_e2e_outcomes} ran; failing the run")
        session.exitstatus = 1
