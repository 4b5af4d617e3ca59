"""A deadline exceeded anywhere below AioRequestMiddleware answers 408, in the test process (WSGI
and ASGI handlers through Django's test clients). The same through gunicorn and uvicorn, with a
lost session write: test_database_servers.py."""

import asyncio
import logging
import threading
import time
from collections.abc import Iterator

import pytest
from asgiref.sync import sync_to_async
from django.core.signals import got_request_exception
from django.db import IntegrityError, connections
from django.http import HttpRequest
from django.test import AsyncClient, Client
from prometheus_client import REGISTRY
from pytest_django.fixtures import Settings as SettingsWrapper

from django_aio_request.server import database as db
from tests.server.test_database import end_other_sessions

PG = "postgres"
COUNTED = "aio_request_server_database_cancelled_total"
SLACK = 0.5  # tells bounded from unbounded (the statements sleep 1-3 s) on a loaded shared machine; how
# close to the deadline a cancellation comes is measured by benchmarks/database.py

pytestmark = [pytest.mark.django_db(databases=[PG], transaction=True), pytest.mark.urls("tests.support.urls_db")]


@pytest.fixture(autouse=True)
def enabled(settings: SettingsWrapper) -> None:
    db.install()
    settings.AIO_REQUEST = {"SERVICE_NAME": "tests", db.SETTING_KEY: True}
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "tests.support.urls_db.InnerMiddleware"]


def counted() -> float:
    return REGISTRY.get_sample_value(COUNTED) or 0.0


def test_a_query_of_the_view_answers_408(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    before = counted()
    started = time.monotonic()
    response = client.get("/sleep-unguarded/", {"sleep": "3"}, headers={"X-Request-Timeout": "0.5"})
    assert response.status_code == 408
    assert time.monotonic() - started < 0.5 + SLACK
    assert counted() == before + 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    ok = client.get("/sleep-unguarded/", {"sleep": "0.01"}, headers={"X-Request-Timeout": "2"})
    assert ok.status_code == 200


def test_the_timer_is_dropped_when_the_request_ends(client: Client) -> None:
    from django.db import connections

    response = client.get("/sql/", {"sleep": "0.01"}, headers={"X-Request-Timeout": "5"})
    assert response.status_code == 200
    bound = db.wrapper_for(connections[PG])  # the test client serves in this thread: the same connection
    assert bound is not None
    assert not bound.armed  # request_finished dropped it
    with connections[PG].cursor() as cursor:
        cursor.execute("SELECT 1")  # no deadline outside a request
    assert not bound.armed


def test_a_query_of_an_inner_middleware_answers_408_and_says_what_was_lost(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    before = counted()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        response = client.get("/sql/", {"before": "3"}, headers={"X-Request-Timeout": "0.4"})
    assert response.status_code == 408
    assert time.monotonic() - started < 0.4 + SLACK
    assert counted() == before + 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no "Internal Server Error"
    lost = [r.getMessage() for r in caplog.records if r.name == "django_aio_request.server.database"]
    assert len(lost) == 1
    assert lost[0].startswith("GET /sql/: the deadline ran out below the view, in ")
    assert "tests.support.urls_db.InnerMiddleware.__call__" in lost[0]
    assert lost[0].endswith("lost: SELECT pg_sleep(%s)")


@pytest.fixture
def asgi_threads_connections() -> Iterator[None]:
    """Django's ASGI handler runs each request's sync code in a thread of its own, whose database
    connections outlive it: end them, or the test database cannot be dropped at the end."""
    yield
    end_other_sessions()


@pytest.mark.usefixtures("asgi_threads_connections")
def test_under_asgi_too(async_client: AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    """Django converts exceptions of async middleware in a worker thread, without sys.exc_info()."""

    async def requests() -> list[int]:
        first = await async_client.get("/sql/", {"before": "3"}, headers={"X-Request-Timeout": "0.4"})
        second = await async_client.get("/sleep-unguarded/", {"sleep": "3"}, headers={"X-Request-Timeout": "0.4"})
        return [first.status_code, second.status_code]

    started = time.monotonic()
    assert asyncio.run(requests()) == [408, 408]
    assert time.monotonic() - started < 0.8 + 2 * SLACK
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_other_errors_below_the_view_still_answer_500(client: Client) -> None:
    client.raise_request_exception = False
    response = client.get("/broken-below/", headers={"X-Request-Timeout": "5"})
    assert response.status_code == 500


@pytest.mark.parametrize("path", ["/view-bug/", "/broken-below/"], ids=["view", "middleware"])
def test_a_query_cancelled_while_django_answers_another_error_just_below_answers_408(
    client: Client, settings: SettingsWrapper, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    """A ``got_request_exception`` receiver (an error reporter saving to the database) runs a query
    when the layer right below AioRequestMiddleware fails for another reason, and the deadline cancels
    it: Django's wrapper of that layer converts only once, so the cancellation came up raw, and the
    wrapper above the middleware answered 500 with "Internal Server Error" (a review; 408 when a
    middleware sat between). Now 408, with the lost query named."""
    client.raise_request_exception = False
    ours = "django_aio_request.middleware.AioRequestMiddleware"
    # Right below it: the view (the base handler), or a middleware failing after the view.
    settings.MIDDLEWARE = [ours] if path == "/view-bug/" else [ours, "tests.support.urls_db.InnerMiddleware"]

    def report(sender: object, **kwargs: object) -> None:
        with connections[PG].cursor() as cursor:
            cursor.execute("SELECT pg_sleep(3)")

    got_request_exception.connect(report)
    try:
        before = counted()
        started = time.monotonic()
        with caplog.at_level(logging.WARNING):
            response = client.get(path, headers={"X-Request-Timeout": "0.5"})
    finally:
        got_request_exception.disconnect(report)
    assert response.status_code == 408
    assert time.monotonic() - started < 0.5 + SLACK
    assert counted() == before + 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    lost = [r.getMessage() for r in caplog.records if r.name == "django_aio_request.server.database"]
    assert len(lost) == 1, lost
    assert lost[0].endswith("lost: SELECT pg_sleep(3)"), lost
    # Where: the receiver, reached from Django's signal (not this package's middleware, which caught it).
    assert " in django.dispatch.dispatcher.Signal.send (calls: " in lost[0], lost
    assert "report" in lost[0], lost


def own_statement_timeout_with_a_slow_failing_reporter(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    """GET /own-statement-timeout/ at a 0.5 s deadline, with an error reporter (a got_request_exception
    receiver) that takes 0.6 s and fails with its own database error the first time: the
    application's 500, logged, and no 408 counted, whenever the query_canceled is judged."""
    client.raise_request_exception = False
    failed: list[bool] = []

    def slow_failing_report(sender: object, **kwargs: object) -> None:
        if not failed:  # the first time: Django's next conversion up reports the reporter's error
            failed.append(True)
            time.sleep(0.6)
            raise IntegrityError("the reporter's own insert failed")

    got_request_exception.connect(slow_failing_report)
    try:
        before = counted()
        with caplog.at_level(logging.WARNING):
            response = client.get("/own-statement-timeout/", headers={"X-Request-Timeout": "0.5"})
    finally:
        got_request_exception.disconnect(slow_failing_report)
    assert response.status_code == 500
    assert counted() == before
    assert any(r.getMessage().startswith("Internal Server Error: /own-statement-timeout/") for r in caplog.records)


def test_the_applications_own_statement_timeout_stays_its_error_when_the_deadline_passes_while_it_is_answered(
    client: Client, settings: SettingsWrapper, caplog: pytest.LogCaptureFixture
) -> None:
    """The view's own ``statement_timeout`` fires 0.4 s before the deadline; an error reporter then
    takes 0.6 s and fails with its own database error. Reaching the middleware raw after the
    deadline, judged by the clock (a query_canceled that came with the deadline up), it was answered
    408 as the deadline's and counted (a review): it is the application's 500."""
    settings.MIDDLEWARE = ["django_aio_request.middleware.AioRequestMiddleware"]  # the view right below
    own_statement_timeout_with_a_slow_failing_reporter(client, caplog)


def test_with_a_middleware_between_the_applications_own_statement_timeout_stays_its_error_too(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """As above with a middleware between AioRequestMiddleware and the view (this module's
    InnerMiddleware): the reporter's error goes up to that middleware's layer, whose conversion sends
    ``got_request_exception`` again, and this app's receiver, judging the query_canceled in the
    chain by the clock, raised it on as the deadline's: 408 (a review). The bound had sent no cancel
    request for that statement, so it is the application's 500 whenever it is judged."""
    own_statement_timeout_with_a_slow_failing_reporter(client, caplog)


@pytest.mark.usefixtures("asgi_threads_connections")
def test_under_asgi_a_query_cancelled_while_django_answers_another_error_answers_408_too(
    settings: SettingsWrapper, caplog: pytest.LogCaptureFixture
) -> None:
    """The same on an async stack: Django converts the async view's error in a worker thread, where
    the receiver's query is cancelled at the deadline (the context goes with it)."""
    settings.MIDDLEWARE = ["django_aio_request.middleware.AioRequestMiddleware"]

    def report(sender: object, **kwargs: object) -> None:
        with connections[PG].cursor() as cursor:
            cursor.execute("SELECT pg_sleep(3)")

    async def request() -> int:
        response = await AsyncClient(raise_request_exception=False).get(
            "/aview-bug/", headers={"X-Request-Timeout": "0.5"}
        )
        return response.status_code

    got_request_exception.connect(report)
    try:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING):
            status = asyncio.run(request())
    finally:
        got_request_exception.disconnect(report)
    assert status == 408
    assert time.monotonic() - started < 0.5 + 2 * SLACK
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_the_applications_own_timeout_is_its_own_error(client: Client) -> None:
    """A statement_timeout of the application's that fires before the deadline is not a deadline
    cancellation: the view sees it (tests/support/urls_db.py answers what it saw)."""
    query = {"set": "SET statement_timeout = 100", "sleep": "1"}
    response = client.get("/sql/", query, headers={"X-Request-Timeout": "5"})
    assert response.status_code == 200
    assert response.json()["error"] == "57014"
    client.get("/sql/", {"set": "RESET statement_timeout"})


def test_above_the_middleware_django_handles_it(client: Client, settings: SettingsWrapper) -> None:
    """A middleware listed before AioRequestMiddleware that meets a deadline cancellation of its own
    (here: its own deadline) gets Django's usual 500: nobody above would catch a re-raise."""
    client.raise_request_exception = False
    settings.MIDDLEWARE = ["tests.support.urls_db.OuterMiddleware", *settings.MIDDLEWARE]
    response = client.get("/sql/", {"outer": "3"}, headers={"X-Request-Timeout": "5"})
    assert response.status_code == 500


def test_without_the_middleware_django_handles_it() -> None:
    """Only a request AioRequestMiddleware serves has someone above to catch the exception: for any
    other, Django's got_request_exception goes to its receivers as usual (and on to a 500)."""
    request = HttpRequest()
    try:
        raise db.DeadlineExceeded("too late")
    except db.DeadlineExceeded:
        got_request_exception.send(sender=None, request=request)  # does not raise


@pytest.mark.parametrize("from_none", ["", "1"], ids=["chained", "from None"])
def test_a_bug_in_the_handler_of_a_cancelled_query_answers_500_and_is_logged(
    client: Client, caplog: pytest.LogCaptureFixture, from_none: str
) -> None:
    """The error raised while handling the cancellation is the application's, not the deadline's."""
    client.raise_request_exception = False
    response = client.get(
        "/fallback-bug/", {"sleep": "3", "from_none": from_none}, headers={"X-Request-Timeout": "0.5"}
    )
    assert response.status_code == 500
    assert any(r.getMessage().startswith("Internal Server Error: /fallback-bug/") for r in caplog.records)


def test_a_connection_opened_inside_an_execute_wrapper_block_keeps_its_bound(client: Client) -> None:
    """Served on a thread of its own, as a server's thread: its first query opens its connection."""
    from django.db import connections

    answers: list[int] = []

    def serve() -> None:
        try:
            path = "/first-query-in-a-wrapper-block/"
            answers.append(client.get(path, {"sleep": "3"}, headers={"X-Request-Timeout": "0.5"}).status_code)
        finally:
            connections.close_all()

    thread = threading.Thread(target=serve)
    started = time.monotonic()
    thread.start()
    thread.join(10)
    assert answers == [408]  # the block's exit took the bound off, and the sleep ran its 3 s
    assert time.monotonic() - started < 0.5 + SLACK


def test_a_view_given_more_time_than_timeout_keeps_it_for_the_middleware_after_it(
    client: Client, settings: SettingsWrapper
) -> None:
    """docs/server.md: ``@timeout(5)`` when the caller does not say, with ``TIMEOUT`` 1 s. Once the
    view had returned (after 1.2 s), the request's own deadline came back, already over: the query
    an inner middleware made after it (as SessionMiddleware saves a session) was refused, a 408."""
    settings.AIO_REQUEST = {"SERVICE_NAME": "tests", "TIMEOUT": 1, db.SETTING_KEY: True}
    response = client.get("/timed-long/", {"sleep": "1.2", "after": "0.01"})
    assert response.status_code == 200, response.content


def test_a_template_response_is_rendered_under_the_view_s_timeout(client: Client, settings: SettingsWrapper) -> None:
    """Django renders a TemplateResponse after the view returned: a generic ListView's queryset runs
    then. Rendered under the request's deadline, ``@timeout(0.3)`` bounded nothing (a 3 s query was a
    200 after 3 s) and ``@timeout(5)`` with ``TIMEOUT`` 1 s was a 408 at 1 s."""
    started = time.monotonic()
    response = client.get("/lazy-list-short/", {"sleep": "3"})
    assert response.status_code == 408, response.content
    assert time.monotonic() - started < 0.3 + SLACK
    settings.AIO_REQUEST = {"SERVICE_NAME": "tests", "TIMEOUT": 1, db.SETTING_KEY: True}
    response = client.get("/lazy-list-long/", {"sleep": "1.3"})
    assert (response.status_code, response.content) == (200, b"slept")
    response = client.get("/lazy-list-short/", {"sleep": "3"}, headers={"X-Request-Timeout": "5"})
    assert (response.status_code, response.content) == (200, b"slept")  # the caller's deadline wins


@pytest.mark.usefixtures("asgi_threads_connections")
def test_an_async_view_s_template_response_is_rendered_under_its_timeout(async_client: AsyncClient) -> None:
    from django.db import connections

    # The test client renders in asgiref's one shared thread, whose connection an earlier test's
    # end_other_sessions() may have ended: a new one.
    asyncio.run(sync_to_async(connections.close_all)())
    started = time.monotonic()
    response = asyncio.run(async_client.get("/alazy-list-short/", {"sleep": "3"}))
    assert response.status_code == 408, response.content
    assert time.monotonic() - started < 0.3 + 2 * SLACK


def test_a_query_inside_an_application_wrapper_that_runs_its_own_statement_is_bounded(client: Client) -> None:
    """docs/database.md: every statement ends by the deadline, inside the application's own
    execute_wrapper() blocks too. One that ran a statement of its own on the connection before each
    query ended the bound's 'a statement is under way' for the query it wrapped: a 3 s query ran in
    full at a 0.5 s deadline (a 200 after 3 s)."""
    started = time.monotonic()
    response = client.get("/sleep-audited/", {"sleep": "3"}, headers={"X-Request-Timeout": "0.5"})
    assert response.status_code == 408, response.content
    assert time.monotonic() - started < 0.5 + SLACK
    ok = client.get("/sleep-audited/", {"sleep": "0.01"}, headers={"X-Request-Timeout": "2"})
    assert ok.status_code == 200


@pytest.mark.parametrize("where", ["view", "inner middleware"])
def test_a_408_at_a_deadline_max_timeout_cut_says_not_to_retry(
    client: Client, settings: SettingsWrapper, where: str
) -> None:
    """docs/server.md: a query cancelled at a deadline MAX_TIMEOUT cut (the caller still has time, a
    retry meets the same cut) answers 408 with X-Do-Not-Retry; at the caller's own deadline, without."""
    settings.AIO_REQUEST = {"SERVICE_NAME": "tests", db.SETTING_KEY: True, "MAX_TIMEOUT": 0.5, "TIMEOUT": 0.4}
    path, query = ("/sleep-unguarded/", {"sleep": "3"}) if where == "view" else ("/sql/", {"before": "3"})
    response = client.get(path, query, headers={"X-Request-Timeout": "5"})
    assert response.status_code == 408
    assert response.headers.get("X-Do-Not-Retry") == "1"
    for own in ("0.4", "0.5", "0.500"):  # not cut: its own deadline, also one just at MAX_TIMEOUT (a review)
        response = client.get(path, query, headers={"X-Request-Timeout": own})
        assert response.status_code == 408
        assert "X-Do-Not-Retry" not in response.headers, own
    # Under PriorityThreadWorker: the header is the clamped value less the time queued, and the value
    # received is kept aside (server/priority_worker.py); it tells the 408 the deadline was cut.
    for received, said in (("5", "1"), ("0.45", None), ("0.5", None)):
        extra = {"django_aio_request.received_timeout": received}
        response = client.get(path, query, headers={"X-Request-Timeout": "0.4"}, **extra)  # type: ignore[arg-type]
        assert response.status_code == 408
        assert response.headers.get("X-Do-Not-Retry") == said
