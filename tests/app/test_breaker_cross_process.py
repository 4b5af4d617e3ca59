"""Issue 4 across real OS processes: a transition in a worker process shows in admin, and an override
set in admin is obeyed by that worker, each within 5 seconds; and (issue 14) a dead worker's report
stops counting within seconds.

Three processes share one SQLite database file (migrated once with ``manage.py migrate``): a worker
(tests/breaker_registry_worker.py) that builds ``clients["flaky"]`` through the registry, so its
publisher thread runs, and calls a loopback server answering 500 every ~50 ms; an operator (the same
module) logged into admin with the override permission, who reads the "Circuit breakers" changelist
and runs its actions by posting the changelist's form as a browser does; and this test, which owns
the server, counts what reaches it, and reads both processes' JSON lines.

The publisher runs with its default interval (1 s), so the bound checked is the one operators get.
Last, the worker is killed (SIGKILL): its report stops counting within the heartbeat's time to live.
"""

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import pytest

from django_aio_request.breaker_publisher import MIN_HEARTBEAT_TTL
from django_aio_request.models import breaker_id
from tests.support.loopback import LoopbackServer

ROOT = Path(__file__).resolve().parents[2]
BOUND = 5.0  # seconds: issue 4's "within 5 seconds", both ways
PATIENCE = 20.0  # how long to wait for anything before failing with what was seen
SETTINGS_MODULE = "cross_process_settings"
USERNAME, PASSWORD = "operator", "operator-password"

AIO_REQUEST: dict[str, Any] = {
    "SERVICE_NAME": "worker",
    "CLIENTS": {
        "flaky": {
            "ENDPOINT": "set by the test",
            "TIMEOUT": 5.0,
            "SAFE_METHOD_STRATEGY": {"NAME": "single"},  # one call, one request: the server counts calls
            "CIRCUIT_BREAKER": {
                "BREAK_DURATION": 120.0,  # longer than the test: once open, only an override lets calls through
                "SAMPLING_DURATION": 60.0,
                "MINIMUM_THROUGHPUT": 2,
                "FAILURE_THRESHOLD": 0.5,
            },
        }
    },
}


class Process:
    """A subprocess of tests.support.breaker_registry_worker, answering in JSON lines read by a thread."""

    def __init__(self, args: list[str], env: dict[str, str], stderr: Path) -> None:
        self._stderr_path = stderr
        self._stderr: TextIO = stderr.open("w")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "tests.support.breaker_registry_worker", *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
        )
        self.lines: list[dict[str, Any]] = []
        self._read = 0  # lines already returned by next()
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()

    def _read_stdout(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._changed:
                self.lines.append(json.loads(line))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def diagnostics(self) -> str:
        self._stderr.flush()
        return f"exit code {self.popen.poll()}; stderr:\n{self._stderr_path.read_text()[-3000:]}"

    def wait_for(self, predicate: Callable[[int, dict[str, Any]], bool], start: int = 0) -> int:
        """The index of the first line from ``start`` on that satisfies ``predicate(index, line)``."""
        end = time.monotonic() + PATIENCE
        index = start
        with self._changed:
            while True:
                while index < len(self.lines):
                    if predicate(index, self.lines[index]):
                        return index
                    index += 1
                left = end - time.monotonic()
                if left <= 0 or (self.popen.poll() is not None and not self._reader.is_alive()):
                    pytest.fail(f"no such line in {PATIENCE} s; last lines {self.lines[-5:]}; {self.diagnostics()}")
                self._changed.wait(min(left, 0.2))

    def next(self) -> dict[str, Any]:
        index = self.wait_for(lambda _index, _line: True, self._read)
        self._read = index + 1
        return self.lines[index]

    def ask(self, command: str) -> dict[str, Any]:
        assert self.popen.stdin is not None
        self.popen.stdin.write(command + "\n")
        self.popen.stdin.flush()
        answer = self.next()
        assert "error" not in answer, answer
        return answer

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            assert self.popen.stdin is not None
            self.popen.stdin.close()  # both roles exit when their stdin closes
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)
        self._reader.join(5)
        self._stderr.close()


@pytest.fixture
def environment(tmp_path: Path, server: LoopbackServer) -> dict[str, str]:
    """A settings module in ``tmp_path`` (the shared database file, ``flaky`` pointing at ``server``),
    its database migrated once; the environment that runs a process with it."""
    aio_request = json.loads(json.dumps(AIO_REQUEST))
    aio_request["CLIENTS"]["flaky"]["ENDPOINT"] = server.url
    database = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "shared.sqlite3"),
                "OPTIONS": {"timeout": 20}}  # fmt: skip
    (tmp_path / f"{SETTINGS_MODULE}.py").write_text(
        "from settings.test import *  # noqa: F403\n\n"
        f"DATABASES = {{'default': {database!r}}}\n"
        f"AIO_REQUEST = {aio_request!r}\n"
    )
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE=SETTINGS_MODULE,
        PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
    )
    migrate = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    return env


@pytest.fixture
def processes(tmp_path: Path, environment: dict[str, str]) -> Iterator[Callable[[str, list[str]], Process]]:
    """Starts processes; stops every one it started, whatever the test did."""
    started: list[Process] = []

    def start(role: str, args: list[str]) -> Process:
        process = Process([role, *args], environment, tmp_path / f"{role}.stderr")
        started.append(process)
        return process

    yield start
    for process in reversed(started):
        process.stop()


def admin_row(operator: Process, state: str, processes: str | None = None) -> tuple[dict[str, str], float]:
    """Reloads the changelist until the row of ``flaky`` shows ``state`` (and ``processes`` when given):
    (the row, when the page was read)."""
    end = time.monotonic() + PATIENCE
    while True:
        page = operator.ask("changelist")
        rows = [row for row in page["rows"] if row["client"] == "flaky"]
        assert len(rows) <= 1, page["rows"]
        if rows and rows[0]["state"] == state and processes in (None, rows[0]["processes"]):
            return rows[0], page["finished"]
        if time.monotonic() > end:
            pytest.fail(f"admin never showed flaky {state}; last rows: {page['rows']}")
        time.sleep(0.1)


def obeyed(worker: Process, server: LoopbackServer, action: str, set_at: float, call: tuple[int, bool, str]) -> int:
    """Waits for the worker's first call after ``set_at`` that obeys ``action`` (``call``: status,
    rejected by the breaker, state after), checks it came within the bound and that the next 5 calls
    obey too; returns how many requests had reached the server when the first one returned."""
    first = worker.wait_for(lambda _i, line: line["t"] > set_at and line["breaker"] == call[1], 1)
    lag = worker.lines[first]["t"] - set_at
    assert lag <= BOUND, f"the worker obeyed {action!r} {lag:.1f} s after it was set"
    reached = len(server.received("/fail"))
    last = worker.wait_for(lambda i, _line: i >= first + 5, first)
    calls = worker.lines[first : last + 1]
    assert {(line["status"], line["breaker"], line["state"]) for line in calls} == {call}, calls
    return reached


def test_admin_shows_another_process_s_breaker_and_that_process_obeys_its_overrides(
    server: LoopbackServer, processes: Callable[[str, list[str]], Process]
) -> None:
    server.route("/fail", lambda h: h.reply(500, b"down"))
    # The operator is logged in before the worker starts, so that admin is watching when the breaker opens.
    operator = processes("operator", [USERNAME, PASSWORD])
    assert operator.next() == {"ready": True}
    worker = processes("worker", ["flaky", "60"])
    ready = worker.next()
    assert ready["ready"]
    assert ready["publishing"], "building a client with a breaker through the registry starts the publisher"

    # 1. The worker's breaker opens after two failures; admin shows it open within 5 s, reported by that process.
    rejected = worker.wait_for(lambda _i, line: line["breaker"], 1)
    assert [line["status"] for line in worker.lines[1 : rejected + 1]] == [500, 500, 502]
    opened_at = worker.lines[rejected - 1]["t"]  # the call that opened it returned then
    row, seen_at = admin_row(operator, "open")
    assert seen_at - opened_at <= BOUND, f"admin showed the opening {seen_at - opened_at:.1f} s after it happened"
    assert row == {
        "id": breaker_id("flaky", server.url),
        "client": "flaky",
        "endpoint": server.url,
        "state": "open",
        "processes": "1 process: 1 open",
    }
    assert f"<td>{ready['pid']}</td>" in operator.ask(f"detail {row['id']}")["html"]  # the worker's own report
    assert len(server.received("/fail")) == 2  # since it opened, no call reached the server

    # 2. "Force closed" in admin: within 5 s the worker's calls reach the server again.
    done = operator.ask(f"action force_closed {row['id']}")
    assert "1 circuit breaker set forced closed" in done["message"]
    reached = obeyed(worker, server, "Force closed", done["started"], (500, False, "forced_closed"))
    assert len(server.received("/fail")) >= reached + 5  # the calls after it really reached the server
    row, seen_at = admin_row(operator, "forced_closed", "1 process: 1 forced closed")
    assert seen_at - done["started"] <= BOUND

    # 3. "Back to automatic": within 5 s the worker's breaker is its own again, still open (its break is long).
    done = operator.ask(f"action back_to_automatic {row['id']}")
    assert "1 circuit breaker set back to automatic" in done["message"]
    reached = obeyed(worker, server, "Back to automatic", done["started"], (502, True, "open"))
    assert len(server.received("/fail")) == reached  # rejected again without touching the network
    row, seen_at = admin_row(operator, "open", "1 process: 1 open")
    assert seen_at - done["started"] <= BOUND
    # The worker published each of its transitions: the row's page lists them (to forced closed, and from it).
    assert operator.ask(f"detail {row['id']}")["html"].count("aio-state-forced_closed") >= 2

    # 4. The worker dies without a word (SIGKILL): its report stops counting within the heartbeat's
    # time to live (5 s after its last round, itself at most 1 s before), not a minute later.
    worker.popen.kill()
    killed_at = time.time()
    end = time.monotonic() + PATIENCE
    while any(r["client"] == "flaky" for r in operator.ask("changelist")["rows"]):
        assert time.monotonic() < end, "the dead worker's breaker stayed in admin"
        time.sleep(0.1)
    gone_after = time.time() - killed_at
    assert gone_after <= MIN_HEARTBEAT_TTL + BOUND / 2, f"a dead process's report counted {gone_after:.1f} s"
