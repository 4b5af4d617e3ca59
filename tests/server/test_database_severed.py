"""A connection the bound shut down at the deadline (the server could not be told to cancel the
statement: a proxy that leaves cancel requests unanswered, a server that hangs) while the request
is in a transaction (``ATOMIC_REQUESTS``, ``transaction.atomic()``): through AioRequestMiddleware
and Django's test client, in the test process, against the real PostgreSQL server behind
:class:`tests.server.test_database.HangingProxy`."""

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.test import Client
from pytest_django.fixtures import Settings as SettingsWrapper

from django_aio_request.server import database as db
from tests.server.test_database import HangingProxy, through_proxy
from tests.support.loopback import silent_listener
from tests.support.manage import manage

PG = "postgres"
SLACK = 0.5  # tells "by the deadline plus the cancel timeout" from "after a connect timeout" (2 s)
TIMEOUT = 0.5  # X-Request-Timeout
CANCEL_TIMEOUT = 0.3

pytestmark = [pytest.mark.django_db(databases=[PG], transaction=True), pytest.mark.urls("tests.support.urls_db")]


@pytest.fixture(autouse=True)
def enabled(settings: SettingsWrapper, monkeypatch: pytest.MonkeyPatch) -> None:
    db.install()
    settings.AIO_REQUEST = {"SERVICE_NAME": "tests", db.SETTING_KEY: True}
    monkeypatch.setattr(db, "CANCEL_TIMEOUT", CANCEL_TIMEOUT)


@pytest.fixture
def proxied() -> Iterator[tuple[BaseDatabaseWrapper, HangingProxy]]:
    """The test client serves in this thread: its connection to ``postgres`` goes through a proxy,
    opened before the request (as a persistent connection is), with ``connect_timeout`` 2, as
    docs/database.md advises (without it, a connect to a hung server waits for ever)."""
    pg = connections[PG]
    pg.ensure_connection()
    with through_proxy(pg) as proxy:
        pg.settings_dict["OPTIONS"] = {**pg.settings_dict["OPTIONS"], "connect_timeout": 2}
        with pg.cursor() as cursor:
            cursor.execute("SELECT 1")  # connected through the proxy
        yield pg, proxy


def answered_by_the_deadline(client: Client, path: str, params: dict[str, str]) -> Any:
    """GET ``path`` with ``X-Request-Timeout: TIMEOUT``, answered by the deadline plus the cancel timeout."""
    started = time.monotonic()
    response = client.get(path, params, headers={"X-Request-Timeout": str(TIMEOUT)})
    elapsed = time.monotonic() - started
    assert elapsed < TIMEOUT + CANCEL_TIMEOUT + SLACK, f"{response.status_code} after {elapsed:.2f} s"
    return response


def internal_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("Internal Server Error")]


@pytest.mark.parametrize(("path", "status"), [("/sleep-unguarded/", 408), ("/report/", 503)], ids=["view", "caught"])
def test_atomic_requests_answer_the_deadline_when_the_cancel_request_is_lost(
    client: Client,
    proxied: tuple[BaseDatabaseWrapper, HangingProxy],
    caplog: pytest.LogCaptureFixture,
    path: str,
    status: int,
) -> None:
    """``ATOMIC_REQUESTS``, and a proxy that leaves new connections (the cancel request's) unanswered:
    the statement's connection is shut down CANCEL_TIMEOUT after the deadline. A view that does not
    catch the deadline answers 408, docs/database.md's example that catches it its 503, both by the
    deadline plus the cancel timeout. Before, the ROLLBACK (or the example's COMMIT) on the shut-down
    connection failed ("the connection is lost") and Django opened a new connection to restore
    autocommit: 408 after the 2 s connect timeout, and the example's 503 a 500 ("Internal Server Error")."""
    pg, proxy = proxied
    pg.settings_dict["ATOMIC_REQUESTS"] = True
    client.raise_request_exception = False
    proxy.hang = True
    response = answered_by_the_deadline(client, path, {"sleep": "3"})
    assert response.status_code == status
    assert internal_errors(caplog) == []
    proxy.hang = False
    ok = client.get("/sql/", {"sleep": "0.01"}, headers={"X-Request-Timeout": "5"})
    assert ok.status_code == 200  # on a new connection


def test_an_atomic_block_answers_408_by_the_deadline_when_the_server_hangs(
    client: Client, proxied: tuple[BaseDatabaseWrapper, HangingProxy]
) -> None:
    """A server that stops answering altogether (the connection's packets lost, new connections
    never answered) during a view's ``transaction.atomic()`` block: 408 by the deadline plus the
    cancel timeout, and the block's write is not committed. Before, the block's exit opened a new
    connection to restore autocommit after the failed ROLLBACK, and the 408 came after the 2 s
    connect timeout (without ``connect_timeout``: never)."""
    _, proxy = proxied
    proxy.freeze()
    proxy.hang = True
    response = answered_by_the_deadline(client, "/atomic-sleep/", {"sleep": "3"})
    assert response.status_code == 408
    proxy.close()
    connections[PG].close()
    connections[PG].settings_dict.update(HOST="", PORT="")  # straight to the server (through_proxy restores it)
    assert not Group.objects.using(PG).exists()


def test_no_connection_is_opened_past_the_deadline(
    client: Client, proxied: tuple[BaseDatabaseWrapper, HangingProxy], caplog: pytest.LogCaptureFixture
) -> None:
    """A server that stops answering during a view's ``atomic()`` block, whose connection is closed
    at the deadline plus the cancel timeout; the view catches the deadline and runs a fallback query
    after the block: refused at once (``DeadlineExceeded``, the middleware's 408) instead of opening
    a new connection past the deadline, which made the 408 wait the 2 s connect timeout (without
    ``connect_timeout``: for ever)."""
    _, proxy = proxied
    client.raise_request_exception = False
    proxy.freeze()
    proxy.hang = True
    accepted = len(proxy.sockets)
    response = answered_by_the_deadline(client, "/atomic-fallback/", {"sleep": "3"})
    assert response.status_code == 408
    assert internal_errors(caplog) == []
    assert len(proxy.sockets) == accepted + 1  # the cancel request's connection, and no other


@contextlib.contextmanager
def cut_off_after(proxy: HangingProxy, seconds: float) -> Iterator[None]:
    """Shut the proxy's connections down ``seconds`` into the block: without the bound, what waits on
    a server that hangs would wait for ever."""

    def cut() -> None:
        for sock in list(proxy.sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    watchdog = threading.Timer(seconds, cut)
    watchdog.start()
    try:
        yield
    finally:
        watchdog.cancel()


def test_an_iterator_whose_server_stops_answering_between_fetches_answers_by_the_deadline(
    client: Client, proxied: tuple[BaseDatabaseWrapper, HangingProxy], caplog: pytest.LogCaptureFixture
) -> None:
    """``.iterator()``, and a server that stops answering between two fetches (a network partition):
    the next fetch falls due past the deadline and is refused, and the server-side cursor's ``CLOSE``,
    which psycopg sends past every execute wrapper when Django closes the cursor, waited for the server
    (a review: 12.3 s for a 0.5 s deadline, 4 of 4 runs; 18 of 18 requests unanswered after 15 s under
    gunicorn and uvicorn). It is cut off the cancel timeout after it began: 408 by then. (Outside a
    transaction, Django's WITH HOLD cursor; inside one the CLOSE waits as COMMIT does: the next test.)"""
    _, proxy = proxied
    Group.objects.using(PG).bulk_create(Group(name=f"group {n}") for n in range(20))
    client.raise_request_exception = False

    def partition() -> None:
        proxy.freeze()
        proxy.hang = True

    stop = threading.Timer(0.25, partition)  # after the first fetch; the second falls due at 0.5 s
    with cut_off_after(proxy, 5):
        stop.start()
        response = answered_by_the_deadline(client, "/iterate-slowly/", {"per_row": "0.1"})
    assert response.status_code == 408
    assert internal_errors(caplog) == []
    proxy.hang = False
    connections[PG].close_if_unusable_or_obsolete()  # what Django does when a request ends (request_finished)
    ok = client.get("/sql/", {"sleep": "0.01"}, headers={"X-Request-Timeout": "5"})
    assert ok.status_code == 200  # on a new connection


@pytest.mark.parametrize("timeout", ["5", "0.2"], ids=["in-time", "past-the-deadline"])
def test_a_write_before_a_cursor_closed_while_the_server_stalls_in_its_transaction_is_committed(
    client: Client, proxied: tuple[BaseDatabaseWrapper, HangingProxy], timeout: str
) -> None:
    """Inside ``atomic()``: a write, an ``.iterator()`` left with a ``break``, and the network stalling
    (a second) as Django closes the cursor. Cut off at the deadline like a fetch, the CLOSE closed the
    connection in the transaction, and its error was raised in a generator's finaliser, which Python
    ignores: ``atomic()`` ended quietly and the view answered 200 for a write never committed (a
    review, 15 of 15). The CLOSE waits as COMMIT does there: the write is committed."""
    _, proxy = proxied
    name = f"kept-{time.monotonic_ns()}"

    def stall_for_a_second() -> None:
        proxy.flowing.clear()
        time.sleep(1.0)
        proxy.flowing.set()

    stall = threading.Timer(0.15, stall_for_a_second)  # after the write and the first fetch, before the CLOSE
    stall.start()
    try:
        response = client.get(
            "/write-then-break/", {"name": name, "pause": "0.3"}, headers={"X-Request-Timeout": timeout}
        )
    finally:
        stall.join()
    assert response.status_code == 200
    assert Group.objects.using(PG).filter(name=name).exists()


@pytest.mark.parametrize("cancel", ["answered", "lost"])
def test_a_deadline_caught_in_a_nested_block_says_whether_the_whole_transaction_is_lost(
    client: Client, proxied: tuple[BaseDatabaseWrapper, HangingProxy], caplog: pytest.LogCaptureFixture, cancel: str
) -> None:
    """A write, then a nested block whose query the deadline stops, caught by the view, which carries
    on (Django's savepoint pattern). With the cancel request answered, only the nested block is rolled
    back and the write is committed. With it lost, the connection is closed in the transaction: the
    server rolls the write back too, and the outermost block ends without an error, as Django ends
    any transaction whose connection broke. The view answered 200 and nothing said the write was
    lost (a review, 4 of 4 runs); ``transaction_lost`` and a warning say so now."""
    _, proxy = proxied
    name = f"nested-{cancel}-{time.monotonic_ns()}"
    if cancel == "lost":
        proxy.hang = True  # cancel requests (new connections) are never answered
    with caplog.at_level(logging.WARNING, logger="django_aio_request"):
        response = answered_by_the_deadline(client, "/write-then-nested-sleep/", {"name": name, "sleep": "3"})
    assert response.status_code == 200
    lost = cancel == "lost"
    assert json.loads(response.content) == {"transaction_lost": lost}
    proxy.hang = False
    assert Group.objects.using(PG).filter(name=name).exists() is not lost
    warned = [r.getMessage() for r in caplog.records if "is lost" in r.getMessage()]
    assert len(warned) == (1 if lost else 0), warned


def test_the_health_check_at_the_requests_first_query_is_bounded_by_the_deadline(
    client: Client, proxied: tuple[BaseDatabaseWrapper, HangingProxy]
) -> None:
    """``CONN_HEALTH_CHECKS`` with a persistent connection: Django checks the connection (``SELECT 1``
    on the driver's cursor) before the request's first query, in the view, under the request's
    deadline. The server hangs: 408 by the deadline plus the cancel timeout. Before, the check
    waited for the server for ever (here: until the test cut the connection off at 4 s)."""
    pg, proxy = proxied
    pg.settings_dict.update(CONN_MAX_AGE=60, CONN_HEALTH_CHECKS=True)
    pg.close()
    pg.ensure_connection()
    pg.close_if_unusable_or_obsolete()  # what Django does when a request starts (request_started)
    assert vars(pg)["health_check_done"] is False  # the request's first query checks the connection
    proxy.freeze()
    proxy.hang = True
    with cut_off_after(proxy, 4):
        response = answered_by_the_deadline(client, "/sleep-unguarded/", {"sleep": "0.01"})
    assert response.status_code == 408
    proxy.hang = False
    ok = client.get("/sql/", {"sleep": "0.01"}, headers={"X-Request-Timeout": "5"})
    assert ok.status_code == 200  # on a new connection, checked in time


@pytest.mark.parametrize(("catch", "status"), [("", 408), ("1", 503)], ids=["left-to-the-middleware", "caught"])
def test_a_query_after_a_nested_block_the_deadline_closed_answers_the_deadline(
    client: Client,
    proxied: tuple[BaseDatabaseWrapper, HangingProxy],
    caplog: pytest.LogCaptureFixture,
    catch: str,
    status: int,
) -> None:
    """``ATOMIC_REQUESTS`` and an inner ``atomic()`` whose deadline the view catches, then a query in
    the outer block: the connection closed at the deadline stays Django's (closed in the
    transaction) until the outer block ends, and the query's cursor failed on it ("the connection is
    closed", not the deadline's error): a 500 where the middleware answers 408 and the view its 503."""
    pg, proxy = proxied
    pg.settings_dict["ATOMIC_REQUESTS"] = True
    client.raise_request_exception = False
    proxy.hang = True
    response = answered_by_the_deadline(client, "/nested-fallback/", {"sleep": "3", "catch": catch})
    assert response.status_code == status
    assert internal_errors(caplog) == []
    proxy.hang = False


def served_by_a_new_thread_with_a_silent_database(
    client: Client, path: str, sleep: str, timeout: str
) -> tuple[int, float]:
    """GET ``path`` through the test client in a thread of its own (a new connection object, never
    connected) while the ``postgres`` alias points at a server that accepts and never answers, with
    ``connect_timeout`` 2 as docs/database.md advises: the status and the seconds taken."""
    pg = connections[PG]
    saved = dict(pg.settings_dict)
    answered: list[tuple[int, float]] = []

    def serve() -> None:
        try:
            started = time.monotonic()
            response = client.get(path, {"sleep": sleep}, headers={"X-Request-Timeout": timeout})
            answered.append((response.status_code, time.monotonic() - started))
        finally:
            connections.close_all()

    with silent_listener() as port:
        pg.settings_dict.update(HOST="127.0.0.1", PORT=str(port), OPTIONS={**saved["OPTIONS"], "connect_timeout": 2})
        try:
            thread = threading.Thread(target=serve)
            thread.start()
            thread.join(10)
        finally:
            pg.settings_dict.clear()
            pg.settings_dict.update(saved)
    [answer] = answered
    return answer


@pytest.mark.parametrize(
    ("timeout", "status"), [("0.5", 408), ("5", 500)], ids=["failed-past-the-deadline", "failed-in-time"]
)
def test_a_thread_s_first_connect_that_fails_past_the_deadline_answers_408(
    client: Client, caplog: pytest.LogCaptureFixture, timeout: str, status: int
) -> None:
    """Under an ASGI server each request's sync view runs in a thread of its own, whose first query
    connects. A server that accepts and never answers: libpq gives up at ``connect_timeout`` (2 s,
    as docs/database.md advises). Past a 0.5 s deadline that was Django's 500 and its "Internal
    Server Error" (20 of 20 requests in a review, under uvicorn); now the deadline's 408. A connect
    that fails within the deadline is the database's failure: the 500 it was."""
    client.raise_request_exception = False
    code, elapsed = served_by_a_new_thread_with_a_silent_database(client, "/sleep-unguarded/", "0.01", timeout)
    assert code == status
    assert 1.5 < elapsed < 3.5  # connect_timeout's 2 s: the connect itself is not bounded (docs/database.md)
    assert bool(internal_errors(caplog)) == (status == 500)


def test_a_thread_s_first_connect_past_the_deadline_is_refused(client: Client) -> None:
    """A view whose thread has no connection yet and whose first query comes with the deadline up is
    refused (``DeadlineExceeded``, 408) without connecting, as a reconnect is: to a server that hangs
    the connect would hold the request for ``connect_timeout`` or for ever."""
    client.raise_request_exception = False
    code, elapsed = served_by_a_new_thread_with_a_silent_database(client, "/python-then-query/", "0.6", "0.5")
    assert code == 408
    assert elapsed < 1.2  # not the connect timeout's 2 s


FIRST_CONNECT_IN_THE_MAIN_THREAD = """
from django.db import connections
from django_aio_request import Deadline, set_context
from django_aio_request.server.database import DeadlineExceeded

for left in (0.3, 0.0):  # a connect that fails past the deadline; one with the deadline up
    with set_context(deadline=Deadline.from_timeout(left) if left else Deadline(0.0)):
        try:
            connections["default"].ensure_connection()
        except DeadlineExceeded as error:
            print("deadline:", error)
        except Exception as error:
            print("other:", type(error).__name__)
"""


def test_the_main_thread_s_connection_made_before_the_app_was_ready_is_guarded_too(tmp_path: Path) -> None:
    """Django makes the main thread's ``connections["default"]`` while it imports the models, before
    the app's ``ready()`` installs the bound; it was not guarded: under gunicorn's sync worker (the
    main thread serves) a worker started during an outage answered 500 at connect_timeout, and
    connected with the deadline up (a review: 10 of 10)."""
    with silent_listener() as port:
        (tmp_path / "first_connect_settings.py").write_text(
            "from settings.test import *\n"
            "DATABASES = {'default': {'ENGINE': 'django.db.backends.postgresql', 'NAME': 'x', 'USER': 'x',"
            f" 'HOST': '127.0.0.1', 'PORT': '{port}', 'OPTIONS': {{'connect_timeout': 2}}}}}}\n"
            "AIO_REQUEST = {**AIO_REQUEST, 'DATABASE_STATEMENT_TIMEOUT': True}\n"
        )
        done = manage("shell", "-c", FIRST_CONNECT_IN_THE_MAIN_THREAD, settings="first_connect_settings", path=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith(("deadline:", "other:"))]
    assert lines[0].startswith("deadline: connecting to database 'default' failed after the deadline"), done.stdout
    assert lines[1].startswith("deadline: the deadline was up before connecting to database 'default'"), done.stdout
