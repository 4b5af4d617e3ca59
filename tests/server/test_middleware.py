"""AioRequestMiddleware: incoming X-Request-Timeout / X-Request-Priority set the deadline and priority
of the whole request, reach outgoing calls, and bad values never hurt."""

import asyncio
import concurrent.futures
import json
import logging
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import django
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpResponse
from django.test import AsyncClient, Client, RequestFactory, override_settings
from hypothesis import given
from hypothesis import settings as settings_of_hypothesis
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from pytest_django.fixtures import Settings

from django_aio_request import Priority, get_context
from django_aio_request.checks import check_settings
from django_aio_request.server import middleware
from django_aio_request.server.middleware import AioRequestMiddleware, parse_priority, parse_timeout
from tests.support import urls_server
from tests.support.loopback import LoopbackServer

ROOT = Path(__file__).resolve().parents[2]
MIDDLEWARE = "django_aio_request.middleware.AioRequestMiddleware"
DEFAULT_TIMEOUT = 7.0  # distinct from every other number here, so a test can tell the default apart
MAX_TIMEOUT = 30.0

pytestmark = pytest.mark.urls("tests.support.urls_server")


def server_setting(**extra: Any) -> dict[str, Any]:
    return {"SERVICE_NAME": "tests", "TIMEOUT": DEFAULT_TIMEOUT, "MAX_TIMEOUT": MAX_TIMEOUT, **extra}


@pytest.fixture(autouse=True)
def _server_side(settings: Settings) -> None:
    settings.MIDDLEWARE = [MIDDLEWARE]
    settings.AIO_REQUEST = server_setting()
    urls_server.runs.clear()
    urls_server.finished.clear()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def malformed(header: str) -> float:
    return sample("aio_request_server_malformed_headers_total", header=header)


def rejected(reason: str) -> float:
    return sample("aio_request_server_rejected_total", reason=reason)


def wire(value: str) -> str:
    """What a server puts in META for ``value`` sent as UTF-8 bytes (WSGI and ASGI decode latin-1)."""
    return value.encode("utf-8").decode("latin-1")


def get_sync(path: str, headers: dict[str, str] | None = None) -> Any:
    """A GET through Django's test client (the sync handler, as under WSGI)."""
    return Client().get(path, headers=headers or {})


def get_async(path: str, headers: dict[str, str] | None = None) -> Any:
    """A GET through Django's async test client (the async handler, as under ASGI)."""

    async def go() -> Any:
        return await AsyncClient().get(path, headers=headers or {})

    return asyncio.run(go())


GETTERS: dict[str, Callable[..., HttpResponse]] = {"sync": get_sync, "async": get_async}
CTX = {"sync": "/ctx", "async": "/actx"}


def view_saw(response: HttpResponse) -> dict[str, Any]:
    assert response.status_code == 200, response.content
    seen: dict[str, Any] = json.loads(response.content)
    return seen


BAD_TIMEOUTS = [
    "",
    " ",
    "\t",
    "abc",
    "inf",
    "-inf",
    "+inf",
    "Infinity",
    "nan",
    "NaN",
    "-1",
    "-0.5",
    "-0",
    "+5",
    "1e400",
    "1e3",
    "9e-0",  # an exponent of 0 ...
    "9.99999999999999999999e-0",  # ... would let a value round up to 10.0, beyond "always below 10"
    "5e-000",
    "5e-0005",  # an exponent of more than three digits (docs/server.md) ...
    "1e-1000",  # ... even where the value is what str() would write as 0.0
    "1E2",
    "5e05",
    "1E+16",  # aio-request's far timeouts (str() of a float) have a lowercase e
    "0e+16",
    "1e+1000",
    "1e+0",  # an exponent str() never writes: it writes 1e+16 and up
    "5e+1",
    "1e+3",
    "1e+8",
    "1e+15",
    "1e+016",
    "0x10",
    "0b1",
    "1_0",
    "1_000",
    "5.",
    ".5",
    "5..0",
    "5.0.0",
    "1,5",
    "5, 5",  # the header sent twice, joined by the server
    "5 5",
    "5s",
    "5ms",
    "PT5S",
    "\u0663",  # ARABIC-INDIC DIGIT THREE: float() reads 3
    "\uff15",  # FULLWIDTH DIGIT FIVE: float() reads 5
    "\uff11.\uff15",
    "\u00a05",  # NO-BREAK SPACE: float() strips it
    "5\u2003",  # EM SPACE
    "5\n",
    "\n5",
    "5\x00",
    "5\x0b",
    "1" + "0" * 400,  # float() gives inf
    "0" * 10 + ".5",  # more than 9 integer digits, not a far deadline: it starts with 0
    "0." + "1" * 21,  # more than 20 decimals
    "5" * 5000,  # a huge header
    "1e-5e-5",
    "e-5",
]


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("value", BAD_TIMEOUTS, ids=[f"{i}:{v[:12]!r}" for i, v in enumerate(BAD_TIMEOUTS)])
def test_a_bad_timeout_is_ignored_counted_and_the_default_used(mode: str, value: str) -> None:
    assert len(BAD_TIMEOUTS) >= 30
    before = malformed("X-Request-Timeout")
    seen = view_saw(GETTERS[mode](CTX[mode], {"X-Request-Timeout": wire(value)}))
    assert seen["source"] == "default"
    assert DEFAULT_TIMEOUT - 1.0 < seen["timeout"] <= DEFAULT_TIMEOUT
    assert seen["timeout"] <= MAX_TIMEOUT
    assert seen["priority"] == "normal"
    assert malformed("X-Request-Timeout") == before + 1


BAD_PRIORITIES = [
    "",
    " ",
    "urgent",
    "HIGHEST",
    "hi gh",
    "high,low",
    "high, high",
    "1",
    "0",
    "-1",
    "\uff48\uff49\uff47\uff48",  # fullwidth "high"
    "h\u0131gh",  # dotless i
    "H\u0130GH",  # dotted capital I: lower() gives "i" plus a combining dot
    "high\x00",
    "high\n",
    "normal;q=1",
    "l" * 5000,
    "None",
    "null",
]


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("value", BAD_PRIORITIES, ids=[f"{i}:{v[:12]!r}" for i, v in enumerate(BAD_PRIORITIES)])
def test_a_bad_priority_is_ignored_counted_and_the_default_used(settings: Settings, mode: str, value: str) -> None:
    settings.AIO_REQUEST = server_setting(PRIORITY="low")
    before = malformed("X-Request-Priority")
    seen = view_saw(GETTERS[mode](CTX[mode], {"X-Request-Priority": wire(value), "X-Request-Timeout": "3"}))
    assert seen["priority"] == "low"
    assert seen["source"] == "header"  # the good timeout header still counts
    assert malformed("X-Request-Priority") == before + 1


GOOD_TIMEOUTS = [
    ("5", 5.0),
    ("0.25", 0.25),
    ("12.5", 12.5),
    ("007", 7.0),
    ("5.000", 5.0),
    (" 5 ", 5.0),  # optional whitespace around a field value (RFC 9110)
    ("\t0.5\t", 0.5),
    ("4.987", 4.987),  # what this package's client sends (core/pipeline.py)
    ("4.999873523011", 4.999873523011),  # aio-request sends str(float)
    ("5.2e-05", 5.2e-05),  # ... which is how str() writes a float below 0.0001
    ("1e-400", 0.0),
    ("999999999", 999999999.0),
    ("0", 0.0),
]


@pytest.mark.parametrize(("raw", "expected"), GOOD_TIMEOUTS)
def test_plain_decimals_are_accepted(raw: str, expected: float) -> None:
    assert parse_timeout(raw) == expected


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(("raw", "expected"), [(raw, seconds) for raw, seconds in GOOD_TIMEOUTS if seconds >= 0.005])
def test_every_accepted_value_sets_the_same_deadline_through_the_sync_shortcut_and_the_async_path(
    mode: str, raw: str, expected: float
) -> None:
    # The sync path checks the common forms ("5", "4.987") without parse_timeout(); the others go
    # through it. Both must give the deadline parse_timeout() names, clamped to MAX_TIMEOUT.
    before = malformed("X-Request-Timeout")
    seen = view_saw(GETTERS[mode](CTX[mode], {"X-Request-Timeout": raw, "X-Request-Priority": "low"}))
    assert seen["source"] == "header"
    assert seen["priority"] == "low"
    assert min(expected, MAX_TIMEOUT) - 1.0 < seen["timeout"] <= min(expected, MAX_TIMEOUT)
    assert malformed("X-Request-Timeout") == before


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("high", Priority.HIGH), ("HIGH", Priority.HIGH), ("Normal", Priority.NORMAL), (" low ", Priority.LOW)],
)
def test_priority_names_in_any_case(raw: str, expected: Priority) -> None:
    assert parse_priority(raw) is expected


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_headers_set_the_deadline_and_priority_of_the_request(mode: str) -> None:
    seen = view_saw(GETTERS[mode](CTX[mode], {"X-Request-Timeout": "3", "X-Request-Priority": "HIGH"}))
    assert seen == {**seen, "source": "header", "priority": "high"}
    assert 2.5 < seen["timeout"] <= 3.0


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_without_headers_the_settings_defaults_apply(settings: Settings, mode: str) -> None:
    seen = view_saw(GETTERS[mode](CTX[mode]))
    assert seen["source"] == "default"
    assert seen["priority"] == "normal"
    assert DEFAULT_TIMEOUT - 1 < seen["timeout"] <= DEFAULT_TIMEOUT
    settings.AIO_REQUEST = {"PRIORITY": "HIGH"}  # and the built-in defaults: 20 s, normal
    seen = view_saw(GETTERS[mode](CTX[mode]))
    assert seen["priority"] == "high"
    assert 19 < seen["timeout"] <= 20


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(
    "value",
    # the last four: what aio-request sends for a timeout of 1e10 s, 3.2e9 s, 1e16 s and more (str()
    # of a float), and ten digits; ignored as malformed before, they got the 20 s default
    ["31", "1000", "999999999", "30.0000001", "9999999999.999987", "3199999999.9999843", "1e+16", "1.5e+300", "9" * 10],
)
def test_a_header_timeout_above_max_timeout_is_clamped(mode: str, value: str) -> None:
    seen = view_saw(GETTERS[mode](CTX[mode], {"X-Request-Timeout": value}))
    assert seen["source"] == "header"
    assert MAX_TIMEOUT - 1 < seen["timeout"] <= MAX_TIMEOUT


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("0", "expired"),
        ("0.000", "expired"),
        ("0e-5", "expired"),
        ("1e-400", "low_timeout"),  # some time left, below the smallest float: not a deadline passed
        ("0.001", "low_timeout"),
        ("0.0049", "low_timeout"),
        ("5.2e-05", "low_timeout"),
    ],
)
def test_no_time_left_is_answered_408_at_once_without_running_the_view(
    mode: str, value: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    before = rejected(reason)
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="django.request"):
        response = GETTERS[mode](CTX[mode], {"X-Request-Timeout": value})
    # Counted, not logged: Django's "Request Timeout" warning per request flooded the logs when
    # callers retried with their time spent (a review), as one per shed request would.
    assert caplog.records == []
    assert time.monotonic() - started < 0.5
    assert response.status_code == 408
    assert response.headers["X-Do-Not-Retry"] == "1"
    assert urls_server.runs == {}
    assert rejected(reason) == before + 1


def test_the_low_timeout_threshold_is_a_setting(settings: Settings) -> None:
    settings.AIO_REQUEST = server_setting(LOW_TIMEOUT_THRESHOLD=0.5)
    assert get_sync("/ctx", {"X-Request-Timeout": "0.4"}).status_code == 408
    assert 0.5 < view_saw(get_sync("/ctx", {"X-Request-Timeout": "0.6"}))["timeout"] <= 0.6
    settings.AIO_REQUEST = server_setting(LOW_TIMEOUT_THRESHOLD=0)
    assert view_saw(get_sync("/ctx", {"X-Request-Timeout": "0.001"}))["source"] == "header"
    assert get_sync("/ctx", {"X-Request-Timeout": "0"}).status_code == 408  # expired stays expired


def test_the_context_is_reset_after_the_request_even_when_the_view_fails(settings: Settings) -> None:
    outside = get_context()
    view_saw(get_sync("/ctx", {"X-Request-Timeout": "3", "X-Request-Priority": "high"}))
    assert get_context() == outside
    settings.ROOT_URLCONF = "tests.support.urls_server"
    with pytest.raises(KeyError):
        get_sync("/aslow", {"X-Request-Timeout": "3"})  # no ?sleep=: the view raises
    assert get_context() == outside


def test_malformed_values_are_logged_at_debug_level_only_and_no_other_header(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="django_aio_request")
    get_sync("/ctx", {"X-Request-Timeout": "nan", "X-Request-Priority": "urgent", "Authorization": "Bearer s3cret"})
    records = [r for r in caplog.records if r.name.startswith("django_aio_request")]
    assert len(records) == 2
    assert {r.name for r in records} == {"django_aio_request.server.middleware"}  # the logger docs/server.md names
    assert all(r.levelno == logging.DEBUG for r in records)
    assert not any("s3cret" in r.getMessage() for r in records)
    caplog.clear()
    caplog.set_level(logging.INFO, logger="django_aio_request")
    get_sync("/ctx", {"X-Request-Timeout": "nan"})
    assert not [r for r in caplog.records if r.name.startswith("django_aio_request")]


def test_a_huge_malformed_value_is_logged_truncated(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="django_aio_request")
    get_sync("/ctx", {"X-Request-Timeout": "9" * 5000})
    (record,) = [r for r in caplog.records if r.name.startswith("django_aio_request")]
    assert len(record.getMessage()) < 200


# The deadline and priority reach outgoing calls


@pytest.fixture
def downstream(server: LoopbackServer, settings: Settings) -> LoopbackServer:
    server.route("/echo", lambda handler: handler.reply(200, b"ok"))
    # TIMEOUT above MAX_TIMEOUT: the client's own cap never cuts the request's deadline these tests watch.
    settings.AIO_REQUEST = server_setting(
        CLIENTS={"down": {"ENDPOINT": server.url, "TIMEOUT": 60.0, "SAFE_METHOD_STRATEGY": {"NAME": "single"}}}
    )
    return server


def sent(server: LoopbackServer) -> list[tuple[float, str, float]]:
    """(X-Request-Timeout, X-Request-Priority, arrival) of every request the server received."""
    return [(float(r.headers["X-Request-Timeout"]), r.headers["X-Request-Priority"], r.at) for r in server.received()]


@pytest.mark.parametrize(("mode", "path"), [("sync", "/call"), ("async", "/acall"), ("sync", "/acall")])
def test_the_remaining_deadline_and_the_priority_reach_outgoing_calls(
    downstream: LoopbackServer, mode: str, path: str
) -> None:
    started = time.monotonic()
    response = GETTERS[mode](f"{path}?sleep=0.2", {"X-Request-Timeout": "3", "X-Request-Priority": "high"})
    assert json.loads(response.content) == {"status": 200, "body": "ok"}
    ((timeout, priority, at),) = sent(downstream)
    assert priority == "high"
    assert timeout <= 3 - 0.2 + 0.001  # what the view spent (the header has 3 decimals)
    assert timeout >= 3 - (at - started) - 0.001  # and no more than the time that really passed
    assert downstream.received()[0].headers["X-Service-Name"] == "tests"


def test_a_deadline_spent_by_the_middleware_below_still_runs_the_sync_view_whose_calls_are_refused_unsent(
    downstream: LoopbackServer, settings: Settings
) -> None:
    """docs/server.md: the deadline is looked at as the request arrives, not again before the view. A
    middleware below that takes the caller's whole time does not stop a sync view from starting; the
    view's client call is refused at once, without being sent (408, no time left)."""
    settings.MIDDLEWARE = [MIDDLEWARE, "tests.support.urls_server.SlowBeforeViewMiddleware"]
    started = time.monotonic()
    response = get_sync("/call?pre=0.4", {"X-Request-Timeout": "0.2"})
    assert response.status_code == 200  # the view ran: nothing looked at the deadline before it
    assert json.loads(response.content)["status"] == 408  # its call: refused
    assert downstream.received() == []  # and never sent
    assert time.monotonic() - started < 1.5


def test_a_call_made_while_a_streaming_body_is_produced_keeps_the_request_s_deadline_only_when_the_view_passes_it(
    downstream: LoopbackServer,
) -> None:
    """The body of a StreamingHttpResponse is produced after the view returned, the context reset: its
    call went out with the client's own TIMEOUT (60 here) and priority (a review). docs/server.md's
    recipe, the context taken in the view and set again in the body, keeps the request's."""
    headers = {"X-Request-Timeout": "3", "X-Request-Priority": "high"}
    for path in ("/stream-call", "/stream-call-kept"):
        response = get_sync(path, headers)
        assert b"".join(response.streaming_content) == b"ok"
    (lost_timeout, lost_priority, _), (kept_timeout, kept_priority, _) = sent(downstream)
    assert lost_timeout > 50  # the client's 60 s, not what was left of 3
    assert lost_priority == "normal"
    assert 2 < kept_timeout <= 3
    assert kept_priority == "high"


def test_without_headers_outgoing_calls_get_the_default_deadline_not_the_clients(downstream: LoopbackServer) -> None:
    get_sync("/call")
    ((timeout, priority, _),) = sent(downstream)
    assert DEFAULT_TIMEOUT - 1 < timeout <= DEFAULT_TIMEOUT  # the client's own TIMEOUT is 20
    assert priority == "normal"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_without_the_middleware_calls_send_the_client_s_own_timeout_and_priority_and_nothing_says_so(
    server: LoopbackServer, settings: Settings, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    """README: a service without AioRequestMiddleware reads neither of its caller's headers; the
    calls its views make send their client's own TIMEOUT and priority (a review: a request with
    2.5 s and ``high`` called billing with ``4.995`` and ``normal``), and no check or log says why."""
    caplog.set_level(logging.DEBUG, logger="django_aio_request")
    server.route("/echo", lambda handler: handler.reply(200, b"ok"))
    settings.MIDDLEWARE = []
    # Every number and name distinct: the caller's 2.5 s and high, the server's default 7 s and
    # normal, the client's own 5 s and low.
    client = {"ENDPOINT": server.url, "TIMEOUT": 5.0, "PRIORITY": "low", "SAFE_METHOD_STRATEGY": {"NAME": "single"}}
    settings.AIO_REQUEST = server_setting(CLIENTS={"down": client})
    response = GETTERS[mode](CALL[mode], {"X-Request-Timeout": "2.5", "X-Request-Priority": "high"})
    assert json.loads(response.content) == {"status": 200, "body": "ok"}  # the clients work
    ((timeout, priority, _),) = sent(server)
    assert 4.0 < timeout <= 5.0  # the client's 5 s, not the caller's 2.5 nor the server's default 7
    assert priority == "low"  # the client's, not the caller's high nor the server's default normal
    assert check_settings() == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


CALL = {"sync": "/call", "async": "/acall"}


def test_a_clamped_deadline_is_what_outgoing_calls_get(downstream: LoopbackServer) -> None:
    get_sync("/call", {"X-Request-Timeout": "100000"})
    ((timeout, _, _),) = sent(downstream)
    assert MAX_TIMEOUT - 1 < timeout <= MAX_TIMEOUT


def test_hedged_attempts_in_worker_threads_send_the_request_deadline_and_priority(
    server: LoopbackServer, settings: Settings
) -> None:
    arrivals: list[float] = []

    def first_slow(handler: Any) -> None:
        arrivals.append(time.monotonic())
        if len(arrivals) == 1:
            time.sleep(0.5)
        handler.reply(200, b"ok")

    server.route("/echo", first_slow)
    hedged = {"NAME": "parallel", "ATTEMPTS_COUNT": 2, "DELAYS": {"NAME": "constant", "DELAY": 0.1}}
    settings.AIO_REQUEST = server_setting(CLIENTS={"down": {"ENDPOINT": server.url, "SAFE_METHOD_STRATEGY": hedged}})
    for mode, path in (("sync", "/call"), ("async", "/acall")):
        server.requests.clear()
        arrivals.clear()
        response = GETTERS[mode](path, {"X-Request-Timeout": "4", "X-Request-Priority": "low"})
        assert json.loads(response.content)["status"] == 200
        # Told apart by what each was told, not by when the server read them: a loaded CI machine read
        # attempt 0 0.1 s late, beside the hedge (0.3 ms apart), once in a CI run.
        (first, _, _), (second, _, _) = sorted(sent(server), key=lambda s: -s[0])
        assert {p for _, p, _ in sent(server)} == {"low"}
        assert first <= 4.0
        # The hedge sent what was left when it started, 0.1 s after the call did: judged against the
        # request's 4 s, not attempt 0's stamp, which a loaded CI machine took 35 ms into the call.
        assert second <= 4.0 - 0.1 + 0.001


@pytest.mark.parametrize(
    ("incoming", "named", "expected"),
    [
        ("high", "low", "normal"),
        ("low", "high", "normal"),
        ("normal", "low", "low"),
        ("high", "high", "high"),
        (None, "low", "low"),
        ("high", None, "high"),
    ],
)
def test_a_named_priority_is_normalised_against_the_request_priority(
    downstream: LoopbackServer, incoming: str | None, named: str | None, expected: str
) -> None:
    headers = {"X-Request-Priority": incoming} if incoming else {}
    get_sync(f"/call?priority={named or ''}", headers)
    ((_, priority, _),) = sent(downstream)
    assert priority == expected


# Settings


def messages(setting: object) -> list[str]:
    with override_settings(AIO_REQUEST=setting):
        return [f"{m.msg} | {m.hint}" for m in check_settings()]


def test_the_server_settings_are_validated() -> None:
    assert messages({"TIMEOUT": 5, "PRIORITY": "HIGH", "MAX_TIMEOUT": 10, "LOW_TIMEOUT_THRESHOLD": 0}) == []
    assert messages({"CANCEL_ASYNC_VIEWS_ON_TIMEOUT": True}) == []
    found = messages(
        {
            "TIMEOUT": -1,
            "PRIORITY": "urgent",
            "MAX_TIMEOUT": 0,
            "LOW_TIMEOUT_THRESHOLD": -0.1,
            "CANCEL_ASYNC_VIEWS_ON_TIMEOUT": "yes",
        }
    )
    assert len(found) == 5
    text = "\n".join(found)
    assert "AIO_REQUEST['TIMEOUT'] must be a number of seconds > 0, not -1" in text
    assert "AIO_REQUEST['PRIORITY'] is 'urgent', not a priority | allowed: high, normal, low" in text
    assert "AIO_REQUEST['MAX_TIMEOUT'] must be a number of seconds > 0, not 0" in text
    assert "AIO_REQUEST['LOW_TIMEOUT_THRESHOLD'] must be a number of seconds >= 0, not -0.1" in text
    assert "AIO_REQUEST['CANCEL_ASYNC_VIEWS_ON_TIMEOUT'] must be True or False, not 'yes'" in text
    for bad in (float("inf"), float("nan"), True, "5", None):
        (message,) = messages({"TIMEOUT": bad})
        assert message.startswith("AIO_REQUEST['TIMEOUT'] must be a number of seconds > 0")


def test_the_server_settings_are_checked_against_each_other() -> None:
    (message,) = messages({"TIMEOUT": 30, "MAX_TIMEOUT": 10})
    assert message.startswith("AIO_REQUEST['TIMEOUT'] (30.0) must not exceed MAX_TIMEOUT (10.0)")
    (message,) = messages({"MAX_TIMEOUT": 10})
    assert message.startswith("AIO_REQUEST['TIMEOUT'] (20.0, the default) must not exceed MAX_TIMEOUT (10.0)")
    (message,) = messages({"TIMEOUT": 1, "LOW_TIMEOUT_THRESHOLD": 1})
    assert message.startswith("AIO_REQUEST['LOW_TIMEOUT_THRESHOLD'] (1.0) must be less than TIMEOUT (1.0)")
    assert messages({"TIMEOUT": 10, "MAX_TIMEOUT": 10, "LOW_TIMEOUT_THRESHOLD": 9.99}) == []
    (message,) = messages({"TIMEOUT": 5, "MAX_TIMEOUT": 10, "TIMEOUTS": 3})
    assert message.startswith("AIO_REQUEST['TIMEOUTS'] is not a known key")
    assert "CANCEL_ASYNC_VIEWS_ON_TIMEOUT" in message


def test_the_middleware_refuses_to_start_with_invalid_settings(settings: Settings) -> None:
    settings.AIO_REQUEST = {"TIMEOUT": 0}
    with pytest.raises(ImproperlyConfigured, match=r"AIO_REQUEST\['TIMEOUT'\] must be"):
        AioRequestMiddleware(lambda request: HttpResponse())
    with pytest.raises(ImproperlyConfigured):
        get_sync("/ctx")


def test_the_middleware_is_sync_and_async_capable() -> None:
    async def async_view(request: Any) -> HttpResponse:
        return HttpResponse()

    from asgiref.sync import iscoroutinefunction

    assert AioRequestMiddleware.sync_capable
    assert AioRequestMiddleware.async_capable
    assert not iscoroutinefunction(AioRequestMiddleware(lambda request: HttpResponse()))
    assert iscoroutinefunction(AioRequestMiddleware(async_view))


# Cancelling async views at the deadline


def cancelled() -> float:
    return sample("aio_request_server_cancelled_total")


@pytest.fixture
def cancelling(settings: Settings) -> None:
    settings.AIO_REQUEST = server_setting(CANCEL_ASYNC_VIEWS_ON_TIMEOUT=True)


def timed_get(path: str, headers: dict[str, str] | None = None) -> tuple[HttpResponse, float]:
    started = time.monotonic()
    response = get_async(path, headers)
    return response, time.monotonic() - started


@pytest.mark.usefixtures("cancelling")
def test_a_slow_async_view_is_cancelled_at_the_deadline_and_answered_408(caplog: pytest.LogCaptureFixture) -> None:
    before = cancelled()
    with caplog.at_level(logging.WARNING, logger="django.request"):
        response, took = timed_get("/aslow?sleep=3", {"X-Request-Timeout": "0.3"})
        refused, _ = timed_get("/aslow?sleep=3", {"X-Request-Timeout": "0"})
    assert response.status_code == 408
    assert "X-Do-Not-Retry" not in response.headers
    assert 0.28 < took < 1.0
    assert urls_server.finished == []
    assert cancelled() == before + 1
    # docs/server.md: Django logs the 408 of a cancelled view, as any 4xx the view's work ends in;
    # not one answered before the view ran
    assert refused.status_code == 408
    logged = [r.getMessage() for r in caplog.records if r.name == "django.request"]
    assert logged == ["Request Timeout: /aslow"], logged


def test_threads_see_the_request_s_context_only_when_handed_it_and_keep_it_after_the_request() -> None:
    """docs/server.md, "Reading the deadline and priority anywhere": ``executor.submit(fn)`` and
    ``loop.run_in_executor`` see no deadline; ``copy_context().run``, ``asyncio.to_thread`` and
    ``sync_to_async`` do; and a thread handed the context that outlives the request keeps its
    deadline, expired by then (its calls are answered 408 and not sent)."""
    urls_server.outliving.clear()
    seen = view_saw(get_sync("/ctx-threads?after=0.5", {"X-Request-Timeout": "0.3"}))
    assert seen == {"submit": False, "copy_context_run": True}
    assert view_saw(get_async("/actx-threads", {"X-Request-Timeout": "5"})) == {
        "to_thread": True,
        "run_in_executor": False,
        "sync_to_async": True,
    }
    deadline = time.monotonic() + 10
    while not urls_server.outliving and time.monotonic() < deadline:
        time.sleep(0.05)
    assert urls_server.outliving == [True]


@pytest.mark.usefixtures("cancelling")
def test_an_async_view_that_holds_the_loop_past_its_deadline_runs_on_until_something_below_yields(
    settings: Settings,
) -> None:
    """The cancellation comes from the event loop: a view blocking the loop (``time.sleep``, a sync
    call) runs past its deadline. With nothing below AioRequestMiddleware that yields to the loop
    after it, a view that awaits nothing more answers as it returns; one that awaits 10 ms is
    cancelled there; with Django's MiddlewareMixin middleware below (its sync process_response goes
    through a thread), the view's answer is replaced by the 408 there (reviews: docs/server.md said a
    view still running at its deadline is cancelled, then that it answers when it awaits nothing)."""
    response, took = timed_get("/ablocks?sleep=0.6", {"X-Request-Timeout": "0.3"})
    assert response.status_code == 200
    assert took >= 0.6
    response, took = timed_get("/ablocks?sleep=0.6&then_await=1", {"X-Request-Timeout": "0.3"})
    assert response.status_code == 408
    assert took >= 0.6
    assert urls_server.finished == ["ablocks"]  # the first only
    settings.MIDDLEWARE = [MIDDLEWARE, "django.contrib.sessions.middleware.SessionMiddleware"]
    response, took = timed_get("/ablocks?sleep=0.6", {"X-Request-Timeout": "0.3"})
    assert response.status_code == 408
    assert urls_server.finished == ["ablocks", "ablocks"]  # it ran to its end all the same


@pytest.mark.usefixtures("cancelling")
def test_an_async_view_that_swallows_the_cancellation_answers_its_own_response() -> None:
    """docs/server.md: a view may catch CancelledError to clean up, but should re-raise it; one that
    does not is answered with what it returns, after the deadline."""
    response, took = timed_get("/aswallows?sleep=3", {"X-Request-Timeout": "0.3"})
    assert (response.status_code, response.content) == (200, b"swallowed")
    assert 0.28 < took < 1.0


def test_an_async_view_cancelled_at_a_deadline_max_timeout_cut_says_not_to_retry(settings: Settings) -> None:
    """docs/server.md: the caller still has time left when MAX_TIMEOUT cut its deadline, and a retry
    meets the same cut: an aio-request caller given 5 s retried the 408 of a view cancelled at a
    MAX_TIMEOUT of 0.5 s, and the view ran three times for one call. A caller whose own deadline
    passed gets no X-Do-Not-Retry (the test above), as with aio-request's servers."""
    settings.AIO_REQUEST = server_setting(CANCEL_ASYNC_VIEWS_ON_TIMEOUT=True, MAX_TIMEOUT=0.3, TIMEOUT=0.2)
    response, took = timed_get("/aslow?sleep=3", {"X-Request-Timeout": "5"})
    assert response.status_code == 408
    assert response.headers.get("X-Do-Not-Retry") == "1"
    assert 0.28 < took < 1.0
    for own in ("0.25", "0.3", "0.300"):  # not cut: its own deadline, also one just at MAX_TIMEOUT (a review)
        response, _ = timed_get("/aslow?sleep=3", {"X-Request-Timeout": own})
        assert response.status_code == 408
        assert "X-Do-Not-Retry" not in response.headers, own


@pytest.mark.usefixtures("cancelling")
def test_a_cancelled_view_is_logged_with_its_path_never_its_query(caplog: pytest.LogCaptureFixture) -> None:
    """What docs/security.md says the server side logs of a 408: its method and path (no query
    string) at DEBUG from the middleware, and at WARNING from Django's ``django.request``, which logs
    every 4xx so."""
    caplog.set_level(logging.DEBUG)
    response, _ = timed_get("/aslow?sleep=3&token=qu3ry-SECRET", {"X-Request-Timeout": "0.2"})
    assert response.status_code == 408
    ours = [r.getMessage() for r in caplog.records if r.name == "django_aio_request.server.middleware"]
    assert ours == ["cancelled an async view at its deadline: GET /aslow"], ours
    assert [r.levelno for r in caplog.records if r.name == "django_aio_request.server.middleware"] == [logging.DEBUG]
    djangos = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "django.request"]
    assert djangos == [(logging.WARNING, "Request Timeout: /aslow")], djangos
    assert not [r for r in caplog.records if "qu3ry-SECRET" in r.getMessage()]


@pytest.mark.usefixtures("cancelling")
def test_a_path_that_holds_a_newline_or_escapes_is_logged_escaped(caplog: pytest.LogCaptureFixture) -> None:
    """A review: ``/x%0a9999 CRITICAL django.security: forged line%1b[2J`` wrote a forged log line of
    its own after ours, and a terminal escape; escaped now, as Django escapes it in its own line."""
    caplog.set_level(logging.DEBUG)
    response, _ = timed_get(
        "/aslow/x%0a9999%20CRITICAL%20django.security:%20forged%1b%5b2J?sleep=3", {"X-Request-Timeout": "0.2"}
    )
    assert response.status_code == 408
    ours = [r.getMessage() for r in caplog.records if r.name == "django_aio_request.server.middleware"]
    assert ours == [
        "cancelled an async view at its deadline: GET /aslow/x\\n9999 CRITICAL django.security: forged\\x1b[2J"
    ], ours
    assert "\n" not in ours[0]


@pytest.mark.usefixtures("cancelling")
def test_an_async_view_that_is_in_time_is_not_cancelled() -> None:
    response, _ = timed_get("/aslow?sleep=0.05", {"X-Request-Timeout": "2"})
    assert response.status_code == 200
    assert urls_server.finished == ["aslow"]


@pytest.mark.usefixtures("cancelling")
def test_at_timeout_cancels_at_the_views_own_deadline() -> None:
    for path in ("/atimed-slow?sleep=3", "/urls-async-slow?sleep=3"):
        response, took = timed_get(path)  # no header: the view's 0.3 s, not the default 7 s
        assert response.status_code == 408, path
        assert 0.28 < took < 1.0, path
    response, took = timed_get("/atimed-slow?sleep=0.5", {"X-Request-Timeout": "2"})  # the header wins
    assert response.status_code == 200
    assert urls_server.finished == ["atimed_slow"]


async def _answered_at(path: str, headers: dict[str, str]) -> tuple[int, float]:
    """Status and when the answer's last byte was sent through Django's ASGI handler (the handler
    itself returns later: it closes the response in the request's sync thread)."""
    started = time.monotonic()
    answered: list[tuple[int, float]] = []
    status = 0
    receive = _receiving(lambda: asyncio.sleep(3600))  # the client stays connected

    async def send(message: Mapping[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif not message.get("more_body"):
            answered.append((status, time.monotonic() - started))

    await ASGIHandler()(_asgi_scope(path, headers), receive, send)
    return answered[0]


def _receiving(then: Callable[[], Awaitable[object]]) -> Callable[[], Awaitable[dict[str, Any]]]:
    """An ASGI ``receive``: the request (a GET, no body), then the client's hang-up once ``then`` returned."""
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await then()
        return {"type": "http.disconnect"}

    return receive


def _asgi_scope(path: str, headers: dict[str, str]) -> dict[str, Any]:
    """The scope of a GET of ``path`` (its query string included) as an ASGI server makes it."""
    route, _, query = path.partition("?")
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": route,
        "raw_path": route.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"testserver")] + [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


@pytest.mark.usefixtures("cancelling")
@pytest.mark.parametrize(
    ("how", "above", "at_the_deadline"),
    [
        ("to_thread", ["django.middleware.security.SecurityMiddleware"], True),
        ("sync_to_async", ["django.middleware.security.SecurityMiddleware"], False),
        ("sync_to_async", [], True),
    ],
    ids=["to_thread", "sync_to_async-below-SecurityMiddleware", "sync_to_async-first"],
)
def test_an_async_view_waiting_on_a_thread_is_answered_at_the_deadline_unless_sync_code_above_needs_that_thread(
    settings: Settings, how: str, above: list[str], at_the_deadline: bool
) -> None:
    """docs/server.md: the view is cancelled at the deadline in every case, but Django runs the sync
    code of a middleware above this one (SecurityMiddleware's process_response) in the request's one
    sync thread, which sync_to_async work (thread-sensitive, as ORM calls are) still holds: the 408
    waits for that work. The docs said the view just stopped waiting (a 408 at 3.0 s for a 0.5 s
    deadline under uvicorn)."""
    settings.MIDDLEWARE = [*above, MIDDLEWARE, "django.contrib.sessions.middleware.SessionMiddleware"]
    status, took = asyncio.run(_answered_at(f"/athread?how={how}&sleep=1", {"X-Request-Timeout": "0.3"}))
    assert status == 408
    if at_the_deadline:
        assert 0.28 < took < 0.8
    else:
        assert took >= 1.0


@pytest.mark.usefixtures("cancelling")
def test_sync_views_are_never_cancelled() -> None:
    response, took = timed_get("/slow?sleep=0.4", {"X-Request-Timeout": "0.1"})
    assert response.status_code == 200
    assert took >= 0.4
    assert urls_server.finished == ["slow"]


@pytest.mark.usefixtures("cancelling")
def test_the_views_own_timeout_error_is_not_mistaken_for_a_cancellation() -> None:
    with pytest.raises(TimeoutError):
        get_async("/araises-timeout", {"X-Request-Timeout": "5"})


def test_without_the_setting_a_slow_async_view_runs_to_completion() -> None:
    response, took = timed_get("/aslow?sleep=0.4", {"X-Request-Timeout": "0.1"})
    assert response.status_code == 200
    assert took >= 0.4
    assert urls_server.finished == ["aslow"]


# The real ASGI handler


Answer = tuple[int, dict[str, str], bytes, float]


async def asgi_request(handler: ASGIHandler, path: str, headers: dict[str, str]) -> Answer:
    """One GET through django.core.handlers.asgi.ASGIHandler, as an ASGI server makes it:
    status, headers, body and how long it took."""
    sent: list[dict[str, Any]] = []
    disconnected = asyncio.Event()

    async def send(message: Mapping[str, Any]) -> None:
        sent.append(dict(message))

    scope = _asgi_scope(path, headers)
    started = time.monotonic()
    await handler(scope, _receiving(disconnected.wait), send)  # the client stays connected until the answer is in
    took = time.monotonic() - started
    disconnected.set()
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body, took


def asgi_get(path: str, headers: dict[str, str]) -> Answer:
    async def go() -> Answer:
        return await asgi_request(ASGIHandler(), path, headers)

    return asyncio.run(go())


def test_the_real_asgi_handler_propagates_cancels_and_refuses(downstream: LoopbackServer, settings: Settings) -> None:
    status, _, body, _ = asgi_get("/actx", {"X-Request-Timeout": "2.5", "X-Request-Priority": "Low"})
    seen = json.loads(body)
    assert status == 200
    assert (seen["source"], seen["priority"]) == ("header", "low")
    assert 2.0 < seen["timeout"] <= 2.5

    status, _, body, _ = asgi_get("/acall", {"X-Request-Timeout": "2.5", "X-Request-Priority": "high"})
    assert json.loads(body)["status"] == 200
    ((timeout, priority, _),) = sent(downstream)
    assert (priority, timeout <= 2.5) == ("high", True)

    status, headers, _, _ = asgi_get("/actx", {"X-Request-Timeout": "0"})
    assert (status, headers["X-Do-Not-Retry"]) == (408, "1")

    status, _, body, _ = asgi_get("/actx", {"X-Request-Timeout": "1e400"})
    assert json.loads(body)["source"] == "default"

    settings.AIO_REQUEST = server_setting(CANCEL_ASYNC_VIEWS_ON_TIMEOUT=True)
    status, _, _, took = asgi_get("/aslow?sleep=3", {"X-Request-Timeout": "0.3"})
    assert status == 408
    assert 0.28 < took < 1.0
    status, _, _, took = asgi_get("/slow?sleep=0.3", {"X-Request-Timeout": "0.1"})
    assert status == 200
    assert urls_server.finished == ["slow"]


def test_under_asgi_a_caller_s_hang_up_lets_a_sync_view_run_whole_and_skips_process_response_below(
    settings: Settings,
) -> None:
    """docs/server.md: under ASGI, once the caller hung up Django cancels the request's task; a sync view
    runs on in its thread to its end, and the process_response of the middleware below (SessionMiddleware
    saving the session) is not run for it. Without the hang-up it is (a review measured both under uvicorn).
    Django 4.2's ASGI handler does not listen for the hang-up: all runs, and the answer is sent."""
    settings.MIDDLEWARE = [MIDDLEWARE, "tests.support.urls_server.NotesResponseMiddleware"]
    sent: list[dict[str, Any]] = []

    async def hung_up_at(seconds: float) -> None:
        async def send(message: Mapping[str, Any]) -> None:
            sent.append(dict(message))

        scope = _asgi_scope("/slow?sleep=0.5&name=hung-up", {"X-Request-Timeout": "5"})
        await ASGIHandler()(scope, _receiving(lambda: asyncio.sleep(seconds)), send)

    asyncio.run(hung_up_at(0.1))
    deadline = time.monotonic() + 5
    while "hung-up" not in urls_server.finished and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # what would come after the view, had anything waited for it
    if django.VERSION >= (5, 0):
        assert urls_server.finished == ["hung-up"]  # the view ran whole; nothing below saw its response
        assert sent == []  # and nothing was sent to the caller who left
    else:
        assert urls_server.finished == ["hung-up", "process_response 200"]
        assert sent[0]["status"] == 200
    urls_server.finished.clear()
    asyncio.run(hung_up_at(3600))  # a caller that waits for the answer
    assert urls_server.finished == ["hung-up", "process_response 200"]


def test_concurrent_requests_each_keep_their_own_deadline_and_priority() -> None:
    priorities = ["high", "normal", "low"]
    cases = [(f"{2 + i * 0.5:.1f}", priorities[i % 3]) for i in range(12)]

    async def go() -> list[Answer]:
        handler = ASGIHandler()
        return await asyncio.gather(
            *(asgi_request(handler, "/actx", {"X-Request-Timeout": t, "X-Request-Priority": p}) for t, p in cases)
        )

    for (timeout, priority), (status, _, body, _) in zip(cases, asyncio.run(go()), strict=True):
        seen = json.loads(body)
        assert status == 200
        assert seen["priority"] == priority
        assert float(timeout) - 0.5 < seen["timeout"] <= float(timeout)

    def in_thread(case: tuple[str, str]) -> dict[str, Any]:
        timeout, priority = case
        return view_saw(get_sync("/ctx", {"X-Request-Timeout": timeout, "X-Request-Priority": priority}))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for (timeout, priority), seen in zip(cases, pool.map(in_thread, cases), strict=True):
            assert seen["priority"] == priority
            assert float(timeout) - 0.5 < seen["timeout"] <= float(timeout)


# Metrics without prometheus_client


def test_metrics_are_no_ops_without_prometheus_client() -> None:
    code = (
        "import sys\n"
        "sys.modules['prometheus_client'] = None\n"
        "from django_aio_request.metrics import server as metrics\n"
        "from django_aio_request.metrics.prometheus import ENABLED\n"
        "assert not ENABLED\n"
        "metrics.server_malformed_headers.labels(header='X-Request-Timeout').inc()\n"
        "metrics.server_rejected.labels(reason='expired').inc()\n"
        "metrics.server_cancelled.inc()\n"
        "assert not [m for m in sys.modules if m == 'django' or m.startswith('django.')], 'django imported'\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.strip() == "ok", done.stderr


def test_metric_label_values_are_bounded() -> None:
    from django_aio_request.metrics import server as metrics
    from django_aio_request.metrics.prometheus import ENABLED

    assert ENABLED
    assert metrics.MALFORMED_HEADERS == ("X-Request-Timeout", "X-Request-Priority")
    assert metrics.REJECT_REASONS == ("expired", "low_timeout")
    for header in metrics.MALFORMED_HEADERS:  # exported from the start
        assert REGISTRY.get_sample_value("aio_request_server_malformed_headers_total", {"header": header}) is not None


def test_a_number_a_test_puts_in_the_headers_reads_as_its_text() -> None:
    """Django's (sync) test client puts in META whatever a test passes: ``headers={"X-Request-Timeout": 0.5}``
    answered 500 (``float`` has no ``partition``). It now reads as the text a server would have passed.
    (The async test client refuses anything but text itself.)"""
    headers: Any = {"X-Request-Timeout": 3, "X-Request-Priority": Priority.HIGH}
    seen = view_saw(get_sync("/ctx", headers))
    assert seen["source"] == "header"
    assert seen["priority"] == "high"
    assert 2.0 < seen["timeout"] <= 3.0
    assert get_sync("/ctx", {"X-Request-Timeout": 0.0}).status_code == 408  # type: ignore[dict-item]
    assert view_saw(get_sync("/ctx", {"X-Request-Timeout": 2.5}))["timeout"] <= 2.5  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Request-Timeout", b"5"),
        ("X-Request-Timeout", ["5"]),
        ("X-Request-Priority", b"high"),
        ("X-Request-Priority", ["high"]),
    ],
    ids=["timeout bytes", "timeout list", "priority bytes", "priority list"],
)
def test_bytes_or_a_list_a_test_puts_in_the_headers_is_ignored_on_both_paths(
    settings: Settings, header: str, value: Any
) -> None:
    """What else a test may pass to Django's test client (bytes, a list) is ignored as malformed, as
    on the async path: the sync path raised TypeError (bytes has no str partition, a list no hash)."""
    settings.AIO_REQUEST = server_setting(PRIORITY="low")
    request = RequestFactory().get("/", headers={header: value})
    seen: list[dict[str, Any]] = []

    def view(request: Any) -> HttpResponse:
        seen.append(urls_server.seen())
        return HttpResponse()

    async def aview(request: Any) -> HttpResponse:
        return view(request)

    before = malformed(header)
    assert AioRequestMiddleware(view)(request).status_code == 200
    assert asyncio.run(AioRequestMiddleware(aview)(request)).status_code == 200
    assert malformed(header) - before == 2
    for context in seen:  # the defaults, on both paths
        assert (context["source"], context["priority"]) == ("default", "low")
        assert DEFAULT_TIMEOUT - 2 < context["timeout"] <= DEFAULT_TIMEOUT


def test_without_the_app_installed_the_middleware_refuses_to_start_and_says_why() -> None:
    """Without 'django_aio_request' in INSTALLED_APPS the middleware and the clients worked, and
    nothing said what was missing: `manage.py check` passed a misspelt key (its checks are the
    app's), a 3 s query ran in full at a 1 s deadline (the database bound is the app's), and the
    InvalidSettings of the first client use sent the user to that check."""
    from django_aio_request import clients

    with override_settings(INSTALLED_APPS=["django.contrib.contenttypes"]):
        with pytest.raises(ImproperlyConfigured, match="needs 'django_aio_request' in INSTALLED_APPS"):
            AioRequestMiddleware(lambda request: HttpResponse())
        misspelt = {"CLIENTS": {"billing": {"ENDPOINT": "http://x/", "TIMOUT": 1}}}
        with (
            override_settings(AIO_REQUEST=misspelt),
            pytest.raises(ImproperlyConfigured, match="add 'django_aio_request' to INSTALLED_APPS for"),
        ):
            clients["billing"]


# Remembered timeouts (server/middleware.py, _ACCEPTED): a value seen before is looked up, not parsed.

TIMEOUT_TEXT = st.one_of(
    st.from_regex(middleware._TIMEOUT, fullmatch=True),
    st.from_regex(middleware._BEYOND, fullmatch=True),
    st.sampled_from(BAD_TIMEOUTS + [raw for raw, _ in GOOD_TIMEOUTS]),
    st.text(alphabet=" \t.e-+0123456789\u00b2\u0663\uff15xa", max_size=12),
    st.text(max_size=40),
)


def context_seen(raw: str) -> tuple[int, str, str, float]:
    """What the sync path made of ``raw``: status, deadline source, priority and the seconds left."""
    seen: list[dict[str, Any]] = []

    def view(request: Any) -> HttpResponse:
        seen.append(urls_server.seen())
        return HttpResponse()

    request = RequestFactory().get("/", headers={"X-Request-Timeout": raw, "X-Request-Priority": "low"})
    response = AioRequestMiddleware(view)(request)
    if not seen:
        return response.status_code, "", "", 0.0
    return response.status_code, seen[0]["source"], seen[0]["priority"], seen[0]["timeout"]


@given(raw=TIMEOUT_TEXT)
@settings_of_hypothesis(max_examples=300, deadline=None)
def test_a_timeout_sent_again_means_what_it_meant_the_first_time_and_junk_is_never_remembered(raw: str) -> None:
    """The second time a value comes, it is looked up: the request must get the same answer (408,
    default or the header's deadline, clamped) as the first, and parse_timeout() the same number.
    What is remembered is only ever what the regular expression accepts, as the number it names."""
    middleware._ACCEPTED.clear()
    first_parse = parse_timeout(raw)
    middleware._ACCEPTED.clear()
    first = context_seen(raw)
    again = context_seen(raw)
    assert again[:3] == first[:3]
    assert abs(again[3] - first[3]) < 0.5
    assert parse_timeout(raw) == first_parse
    for key, seconds in middleware._ACCEPTED.items():
        value = key.strip(" \t")
        assert middleware._TIMEOUT.fullmatch(value) is not None or middleware._BEYOND.fullmatch(value) is not None, key
        assert seconds == float(key.strip(" \t"))


def test_a_remembered_timeout_is_judged_by_the_settings_of_each_request(settings: Settings) -> None:
    """The seconds are remembered, not the verdict: a value accepted under one LOW_TIMEOUT_THRESHOLD
    or MAX_TIMEOUT is refused or clamped under the next."""
    settings.AIO_REQUEST = server_setting(LOW_TIMEOUT_THRESHOLD=0)
    assert [context_seen("0")[0] for _ in range(2)] == [408, 408]  # no time left is none, at any threshold
    assert context_seen("0.002")[:2] == (200, "header")
    assert context_seen("25")[3] > 24
    settings.AIO_REQUEST = server_setting(LOW_TIMEOUT_THRESHOLD=0.005, MAX_TIMEOUT=10)
    before = rejected("low_timeout")
    assert context_seen("0.002")[0] == 408
    assert rejected("low_timeout") == before + 1
    assert 9 < context_seen("25")[3] <= 10
    assert context_seen("0")[0] == 408  # a remembered 0 is still a deadline passed


def test_remembered_timeouts_stay_bounded_while_many_threads_send_new_ones() -> None:
    """Peers sending a new value on every request cannot grow the memory: emptied when full. Eight
    threads at once parse right throughout. A float's repr, as aio-request sends it, is not kept."""
    middleware._ACCEPTED.clear()
    assert parse_timeout("4.999873523011") == 4.999873523011
    assert context_seen("4.999873523011")[:2] == (200, "header")
    assert middleware._ACCEPTED == {}
    wrong: list[str] = []
    sizes: list[int] = []

    def send(offset: int) -> None:
        for n in range(3000):
            raw = f"{(offset * 3000 + n) / 1000:.3f}"  # what this package's client sends
            if parse_timeout(raw) != float(raw):
                wrong.append(raw)
            sizes.append(len(middleware._ACCEPTED))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(send, range(8)))
    assert wrong == []
    assert max(sizes) == middleware._ACCEPTED_MAX  # filled, and emptied when full
    assert len(middleware._ACCEPTED) <= middleware._ACCEPTED_MAX
