"""The database bound tried from outside: real gunicorn (gthread, WSGI) and uvicorn (ASGI) processes
serving tests/support/urls_db.py through the whole middleware stack, on the test run's PostgreSQL
database, with persistent connections (CONN_MAX_AGE 60) and one worker thread, so consecutive
requests share one database connection (the tests check its backend pid)."""

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.contrib.sessions.models import Session
from django.db import connections

from tests.support.loopback import free_port, stop_server, wait_until_listening

ROOT = Path(__file__).resolve().parents[2]
PG = "postgres"
on_postgres = pytest.mark.django_db(databases=[PG], transaction=True)
SLACK = 0.5  # tells bounded from unbounded (the statements sleep 1-3 s) on a loaded shared machine; how
# close to the deadline a cancellation comes is measured by benchmarks/database.py
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Server:
    kind: str
    url: str
    log: Path

    def get(self, path: str, timeout: float | None = None, **params: object) -> tuple[int, Any, float]:
        """GET ``path`` with ``X-Request-Timeout: timeout``: status, body (JSON when it is), seconds."""
        headers = {} if timeout is None else {"X-Request-Timeout": str(timeout)}
        query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        request = urllib.request.Request(f"{self.url}{path}?{query}", headers=headers)
        started = time.monotonic()
        try:
            with _NO_PROXY.open(request, timeout=15) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, body = error.code, error.read()
        elapsed = time.monotonic() - started
        with contextlib.suppress(ValueError):
            return status, json.loads(body), elapsed
        return status, body, elapsed

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _command(kind: str, port: int) -> list[str]:
    bin_dir = Path(sys.executable).parent
    if kind == "gunicorn":
        return [
            str(bin_dir / "gunicorn"),
            "--worker-class=gthread",
            "--workers=1",
            "--threads=1",
            "--no-control-socket",
            f"--bind=127.0.0.1:{port}",
            "testproject.wsgi:application",
        ]
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--host=127.0.0.1",
        f"--port={port}",
        "--workers=1",
        "--log-level=warning",
        "--no-access-log",
        "testproject.asgi:application",
    ]


@pytest.fixture(scope="module", params=["gunicorn", "uvicorn"])
def server(
    request: pytest.FixtureRequest,
    django_db_setup: None,
    django_db_blocker: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    with django_db_blocker.unblock():
        name = connections[PG].settings_dict["NAME"]  # the test database pytest-django created
    kind = request.param
    port = free_port()
    log = tmp_path_factory.mktemp(f"db-{kind}") / "server.log"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.support.settings_db_server", "AIO_REQUEST_TEST_DB_NAME": name}
    with log.open("wb") as out:
        process = subprocess.Popen(_command(kind, port), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    served = Server(kind, f"http://127.0.0.1:{port}/", log)
    try:
        try:
            wait_until_listening(process, port, kind)
        except RuntimeError as error:
            raise RuntimeError(f"{error}:\n{served.log_text()}") from None
        status, body, _ = served.get("sql/")  # the worker imports Django on its first request
        assert status == 200, body
        yield served
    finally:
        stop_server(process)


@pytest.fixture
def srv(server: Server) -> Iterator[Server]:
    """The server, with the application's session statement_timeout reset after each test."""
    yield server
    server.get("sql/", set="RESET statement_timeout")


def test_uvicorn_is_installed_for_these_tests() -> None:
    """CI must run the ASGI half: uvicorn is a test dependency."""
    import uvicorn

    assert uvicorn.__version__


def sleeps_running() -> int:
    """Statements with pg_sleep the server is still running for other sessions: after a 408 the
    database must not be working on for nobody."""
    time.sleep(0.05)  # the backend's own bookkeeping after a cancel
    with connections[PG].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND state = 'active' AND query LIKE '%%pg_sleep%%'"
        )
        return int(cursor.fetchone()[0])


@on_postgres
class TestThroughTheMiddleware:
    @pytest.mark.parametrize("view", ["sleep-unguarded/", "sleep-async/"], ids=["sync", "async-sync_to_async"])
    def test_a_slow_query_answers_408_by_the_deadline(self, srv: Server, view: str) -> None:
        status, _, elapsed = srv.get(view, 0.5, sleep=3)
        assert status == 408
        assert elapsed < 0.5 + SLACK
        assert sleeps_running() == 0
        status, _, _ = srv.get(view, 2, sleep=0.01)
        assert status == 200

    @pytest.mark.parametrize("atomic", ["0", "1"], ids=["with-hold", "atomic"])
    def test_iterator_answers_408_by_the_deadline(self, srv: Server, atomic: str) -> None:
        Group.objects.using(PG).bulk_create([Group(name=f"g{i}") for i in range(40)])
        status, body, elapsed = srv.get("iterate/", 0.5, per_row=0.05, atomic=atomic)  # 2 s of rows
        assert status == 408, body
        assert elapsed < 0.5 + SLACK
        assert sleeps_running() == 0
        status, body, _ = srv.get("iterate/", 5, per_row=0.001, atomic=atomic)
        assert (status, body) == (200, {"rows": 40})

    def test_a_lost_session_write_answers_408_and_is_logged(self, srv: Server) -> None:
        before = srv.log_text()
        status, body, elapsed = srv.get("session/", 0.3, sleep=0.35)  # the view outlives the deadline
        assert status == 408, body
        assert elapsed < 0.35 + 2 * SLACK  # (under ASGI each request also opens its own connection)
        assert not Session.objects.using(PG).exists()  # the session was never written
        status, body, _ = srv.get("session/", 5, sleep=0)
        assert status == 200, body
        assert Session.objects.using(PG).count() == 1  # with time left, it is
        logged = srv.log_text()[len(before) :]
        assert "Internal Server Error" not in logged
        assert "WARNING django_aio_request.server.database GET /session/: the deadline ran out below the view" in logged
        assert "django.contrib.sessions.middleware.SessionMiddleware.process_response" in logged
        assert "(calls: SessionStore.save > " in logged
        assert "async_unsafe" not in logged  # Django's guard around its database calls is no call of the session's
        # What was lost: the statement, or (a thread with no connection yet, as every request's under
        # ASGI) the connect it needed, refused with the deadline up.
        assert '"django_session"' in logged or "the deadline was up before connecting to database 'default'" in logged

    def test_a_query_in_an_inner_middleware_before_the_view_answers_408(self, srv: Server) -> None:
        before = srv.log_text()
        status, _, elapsed = srv.get("sql/", 0.4, before=3)
        assert status == 408
        assert elapsed < 0.4 + SLACK
        logged = srv.log_text()[len(before) :]
        assert "Internal Server Error" not in logged
        assert "tests.support.urls_db.InnerMiddleware.__call__" in logged

    def test_other_errors_below_the_view_still_answer_500(self, srv: Server) -> None:
        status, _, _ = srv.get("broken-below/", 5)
        assert status == 500
        assert "RuntimeError: an inner middleware failed after the view" in srv.log_text()

    @pytest.mark.parametrize(
        ("statement", "atomic"),
        [
            ("SET statement_timeout = 100", "0"),
            ("SET LOCAL statement_timeout = 100", "1"),
            ("/* app */ set Session \"statement_timeout\" TO '100ms'", "0"),
            ("SELECT set_config('statement_timeout', '0.1s', true)", "1"),
        ],
    )
    def test_a_stricter_timeout_of_the_application_is_honoured(self, srv: Server, statement: str, atomic: str) -> None:
        status, body, _ = srv.get("sql/", 5, set=statement, sleep=1, atomic=atomic)
        assert status == 200, body
        assert body["error"] == "57014"  # the application's own query_canceled, its to handle
        assert 0.1 <= body["elapsed"] < 0.1 + SLACK

    def test_an_application_set_never_weakens_later_deadlines(self, srv: Server) -> None:
        status, _, elapsed = srv.get("sql/", 0.5, set="/* app */ SET statement_timeout = 0", sleep=2)
        assert status == 408
        assert elapsed < 0.5 + SLACK
        pids = set()
        for _ in range(2):
            status, _, elapsed = srv.get("sql/", 0.5, sleep=2)
            assert status == 408
            assert elapsed < 0.5 + SLACK
            status, body, _ = srv.get("sql/", 5)
            assert body["statement_timeout"] == "0"  # still the application's own value: nothing of ours
            pids.add(body["pid"])
        if srv.kind == "gunicorn":
            assert len(pids) == 1  # one connection all along (Django under ASGI opens one per request thread)

    def test_a_short_deadline_never_shortens_the_next_request(self, srv: Server) -> None:
        status, _, _ = srv.get("sql/", 0.3, sleep=2)
        assert status == 408
        status, body, _ = srv.get("sql/", 5, sleep=1)
        assert status == 200, body
        assert body["error"] is None
        # The whole second, not cut at the last request's 0.3 s. pg_sleep times itself by the
        # server's wall clock, the view by its monotonic one: a CI run read 0.9988 s.
        assert body["elapsed"] >= 0.95
        status, body, _ = srv.get("sql/", None, sleep=0.8)  # no header: the default deadline (20 s)
        assert (status, body["error"]) == (200, None)
