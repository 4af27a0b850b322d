"""The host agent's API driven from its own OpenAPI document: at least
FUZZ_REQUESTS requests in all (schemathesis' positive and negative cases,
raw mutations of api_requests, exec WebSocket handshakes and first
messages), each answered with a status the document lists for it (404/405
off its routes), a body its schema takes, never a 5xx; after each part the
agent still answers and leaks no task or file descriptor.

The real API and the real guest agent behind it, run ON THIS HOST: so the
guest agent runs without --allow-exec and --allow-files (every exec and
every file request is refused by it, which is checked), mounts only
record (RecordedMounts), and the instance directory is a temporary one.
Counts per operation and status go to tests/.results/apifuzz.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.unit.api_harness import RecordedMounts, Served, served_api
from tests.unit.api_requests import Document, RawRequest
from tests.unit.exec_ws_cases import (
    ANSWER_TIMEOUT,
    FirstMessage,
    Handshake,
    first_messages,
    handshakes,
    send_first,
    send_handshake,
)
from tests.unit.fuzz_tally import Tally
from tests.unit.guest_agent_process import guest_agent_on
from tests.unit.unix_http import UnixHTTPConnection, unix_session

FUZZ_REQUESTS = int(os.environ.get("ROOST_API_FUZZ_REQUESTS", "10000"))
# Of FUZZ_REQUESTS: schemathesis' cases per operation with an input (positive,
# negative), the WebSocket's handshakes and first messages; the raw rest.
SCHEMATHESIS_CASES = (FUZZ_REQUESTS * 3 // 100, FUZZ_REQUESTS * 2 // 100)
WEBSOCKET_CASES = max(300, FUZZ_REQUESTS * 3 // 100)
RESULTS = Path(__file__).resolve().parents[1] / ".results" / "apifuzz.json"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection]
EXEC_REFUSED = "exec is disabled in this guest"


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                    phases=[Phase.generate], suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="roost-fuzz-") as d:
        yield Path(d)


@pytest.fixture(scope="module")
def agent_sock(short_dir: Path) -> Iterator[str]:
    path = str(short_dir / "ga.sock")
    # No --allow-exec, no --allow-files: nothing fuzzed runs or touches a file on this host.
    with guest_agent_on(path):
        yield path


@pytest.fixture(scope="module")
def tally() -> Iterator[Tally]:
    counts = Tally()
    yield counts
    counts.write(RESULTS)
    print(f"\nAPI fuzz: {counts.total} requests in {sum(counts.seconds.values()):.1f}s; "
          f"by status {dict(counts.by_status)}; written to {RESULTS}")


@dataclass
class Fuzzed:
    served: Served
    mounts: RecordedMounts
    doc: Document
    sock: str
    fds: int = 0  # open when the fuzz began
    tasks: int = 0
    mounted: int = 0  # POST /v1/mounts answered 201 before


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _mounted(tally: Tally) -> int:
    counts = tally.by_operation.get("POST /v1/mounts")
    return counts["201"] if counts else 0


@pytest.fixture
async def fuzzed(agent_sock: str, short_dir: Path, monkeypatch: pytest.MonkeyPatch,
                 tally: Tally) -> AsyncIterator[Fuzzed]:
    monkeypatch.setenv("ROOST_HOME", tempfile.mkdtemp(dir=short_dir, prefix="h"))
    mounts = RecordedMounts()
    async with served_api(agent_sock, lambda inst, guest: mounts) as served:
        async with served.http.get("/v1/openapi.json") as resp:
            doc = Document(await resp.json())
        async with served.http.get("/v1/guest/status") as resp:  # opens the guest session
            assert resp.status == 200, await resp.text()
        yield Fuzzed(served, mounts, doc, str(served.inst.ha_sock), _open_fds(),
                     len(asyncio.all_tasks()), _mounted(tally))


async def assert_alive_and_clean(f: Fuzzed, tally: Tally) -> None:
    """The agent answers, its guest session too, and the fuzz left no task,
    file descriptor, snapshot or mount behind (mounts only ever recorded)."""
    for path in ("/v1/status", "/v1/guest/status"):
        async with f.served.http.get(path) as resp:
            assert resp.status == 200, (path, await resp.text())
            body = await resp.json()
        assert not f.doc.problems("GET", path, False, 200, resp.content_type, None,
                                  json.dumps(body).encode())
    deadline = time.monotonic() + 5
    while ((_open_fds() > f.fds or len(asyncio.all_tasks()) > f.tasks)
           and time.monotonic() < deadline):
        await asyncio.sleep(0.05)  # connections the fuzz closed, still ending
    fds, tasks = _open_fds(), len(asyncio.all_tasks())
    assert fds <= f.fds and tasks <= f.tasks, (fds, f.fds, tasks, f.tasks)
    snapshots = subprocess.run(["qemu-img", "snapshot", "-l", str(f.served.inst.disk)],
                               capture_output=True, text=True, check=True).stdout
    assert snapshots == ""
    # Each mount recorded was answered 201; none was made behind the API's back.
    assert len(f.mounts.added) == _mounted(tally) - f.mounted


def _problems_reported(tally: Tally) -> str:
    return f"{tally.problem_count} answers not as documented:\n" + "\n".join(tally.problems)


# -- schemathesis ---------------------------------------------------------------

Operation = schemathesis.APIOperation[Any, Any, Any, Any]


def send_cases(op: Operation, mode: GenerationMode, examples: int,
               session: requests.Session, tally: Tally) -> None:
    source = f"schemathesis {mode.value}"

    @fuzz_settings(examples)
    @given(case=op.as_strategy(mode))
    def send(case: schemathesis.Case[Operation]) -> None:
        response = case.call(base_url="http://roost", session=session, timeout=30)
        tally.count(source, op.label, response.status_code)
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as e:
            tally.problem(f"{source} {op.label}", [str(e)[:1500]])

    send()


def run_schemathesis(f: Fuzzed, tally: Tally) -> int:
    """Every operation's positive cases, and negative ones where it takes an
    input, sent over ha.sock; the number of operations with an input."""
    schema = schemathesis.openapi.from_dict(f.doc.doc)
    session = unix_session(f.sock)
    with_input = 0
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        op = result.ok()
        spec = op.definition.raw
        takes_input = "parameters" in spec or "requestBody" in spec
        with_input += takes_input
        modes = [(GenerationMode.POSITIVE, SCHEMATHESIS_CASES[0])]
        if takes_input:
            modes.append((GenerationMode.NEGATIVE, SCHEMATHESIS_CASES[1]))
        for mode, examples in modes:
            send_cases(op, mode, examples, session, tally)
    session.close()
    return with_input


async def test_schemathesis_cases_are_answered_as_documented(
        fuzzed: Fuzzed, tally: Tally) -> None:
    started = time.monotonic()
    with_input = await asyncio.to_thread(run_schemathesis, fuzzed, tally)
    tally.seconds["schemathesis"] = time.monotonic() - started
    assert tally.problem_count == 0, _problems_reported(tally)
    sent = tally.by_source["schemathesis positive"] + tally.by_source["schemathesis negative"]
    assert with_input == 14 and sent >= with_input * sum(SCHEMATHESIS_CASES) * 9 // 10, sent
    await assert_alive_and_clean(fuzzed, tally)


# -- raw mutations ----------------------------------------------------------------

def send_raw(conn: UnixHTTPConnection, req: RawRequest) -> tuple[int, str, str | None, bytes]:
    # Answered before it was all sent (a 413, a malformed line)? Its answer is read.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        conn.request(req.method, req.target, body=req.body, headers=req.headers)
    resp = conn.getresponse()
    body = resp.read()
    ctype = (resp.getheader("Content-Type") or "").split(";")[0].strip()
    return resp.status, ctype, resp.getheader("Allow"), body


def run_raw(f: Fuzzed, tally: Tally, examples: int) -> None:
    conn = UnixHTTPConnection(f.sock)

    @fuzz_settings(examples)
    @given(req=f.doc.requests())
    def send(req: RawRequest) -> None:
        try:
            status, ctype, allow, body = send_raw(conn, req)
        except (http.client.HTTPException, OSError) as e:
            conn.close()
            tally.count(f"raw: {req.kind}", "(no answer)", type(e).__name__)
            tally.problem(f"{req.method} {req.target[:200]}", [f"no answer: {e!r}"])
            return
        op, _ = f.doc.route(req.method, req.path)
        label = "(malformed HTTP)" if req.malformed else op.label if op else "(not a route)"
        tally.count(f"raw: {req.kind}", label, status)
        problems = f.doc.problems(req.method, req.path, req.broken, status, ctype, allow, body,
                                  req.malformed)
        if problems:
            tally.problem(f"{req.method} {req.target[:200]} {req.headers} "
                          f"{(req.body or b'')[:100]!r}", problems)

    send()
    conn.close()


async def test_raw_mutations_are_answered_as_documented(fuzzed: Fuzzed, tally: Tally) -> None:
    started = time.monotonic()
    examples = max(100, FUZZ_REQUESTS - 5 * sum(SCHEMATHESIS_CASES) - 2 * WEBSOCKET_CASES)
    await asyncio.to_thread(run_raw, fuzzed, tally, examples)
    tally.seconds["raw"] = time.monotonic() - started
    assert tally.problem_count == 0, _problems_reported(tally)
    sent = sum(n for source, n in tally.by_source.items() if source.startswith("raw: "))
    assert sent >= examples, sent
    await assert_alive_and_clean(fuzzed, tally)


# -- the exec WebSocket -----------------------------------------------------------

def _first_message_problems(f: Fuzzed, m: FirstMessage, answers: list[Any],
                            code: int | None) -> list[str]:
    """Every answer a server message of the document; one ExecFailure, 400,
    then the close (exec is refused: the guest agent runs without
    --allow-exec); nothing but the close to a close, or to a message larger
    than the document allows."""
    ws = f.doc.doc["paths"]["/v1/exec"]["get"]["x-websocket"]
    problems = []
    for answer in answers:
        try:
            f.doc.validate(ws["serverMessages"], answer)
        except Exception as e:  # jsonschema's ValidationError
            problems.append(f"not a server message of the document: {str(e)[:300]}")
    if m.kind == "close":
        return [*problems, *([f"answers to a close: {answers}"] if answers else [])]
    if m.kind == "too big":  # the document: closed at once, 1009 (None: as we still sent)
        return [*problems, *([f"{answers}, close {code} to a message too big"]
                             if answers or code not in (1009, None) else [])]
    if len(answers) != 1 or not isinstance(answers[0], dict) or answers[0].get("status") != 400:
        return [*problems, f"not one ExecFailure of status 400 (close {code}): {answers}"]
    error = answers[0]["error"]
    if m.valid_request and EXEC_REFUSED not in error and "argv: the command line" not in error:
        problems.append(f"a valid exec request not refused by the guest agent: {error}")
    return problems


def run_websocket(f: Fuzzed, tally: Tally, loop: asyncio.AbstractEventLoop) -> None:
    def on_loop(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(2 * ANSWER_TIMEOUT)

    @fuzz_settings(WEBSOCKET_CASES)
    @given(h=handshakes())
    def handshake(h: Handshake) -> None:
        status, headers, body = on_loop(send_handshake(f.sock, h))
        tally.count("websocket handshake", "GET /v1/exec", status)
        ctype = headers.get("content-type", "").split(";")[0].strip()
        problems = f.doc.problems("GET", "/v1/exec", h.has_input, status, ctype,
                                  headers.get("allow"), body)
        if h.good and status != 101:
            problems.append(f"{status} to a good handshake")
        if problems:
            tally.problem(f"handshake {h}", problems)

    @fuzz_settings(WEBSOCKET_CASES)
    @given(m=first_messages(f.doc))
    def first(m: FirstMessage) -> None:
        answers, code = on_loop(send_first(f.served.http, m))
        last = answers[-1] if answers and isinstance(answers[-1], dict) else {}
        tally.count(f"websocket first message: {m.kind}", "GET /v1/exec (first message)",
                    last.get("status", f"close {code}"))
        problems = _first_message_problems(f, m, answers, code)
        if problems:
            tally.problem(f"first message {m}"[:300], problems)

    handshake()
    first()


async def test_exec_websocket_handshakes_and_first_messages_are_answered_as_documented(
        fuzzed: Fuzzed, tally: Tally) -> None:
    started = time.monotonic()
    await asyncio.to_thread(run_websocket, fuzzed, tally, asyncio.get_running_loop())
    tally.seconds["websocket"] = time.monotonic() - started
    assert tally.problem_count == 0, _problems_reported(tally)
    handshakes_sent = tally.by_source["websocket handshake"]
    firsts = sum(n for source, n in tally.by_source.items()
                 if source.startswith("websocket first message"))
    assert (handshakes_sent, firsts) >= (WEBSOCKET_CASES, WEBSOCKET_CASES)
    assert tally.by_operation["GET /v1/exec"]["101"] > WEBSOCKET_CASES // 10
    await assert_alive_and_clean(fuzzed, tally)
