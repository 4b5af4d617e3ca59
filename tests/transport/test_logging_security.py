"""What the client logs about failing calls: never credentials (docs/security.md)."""

import logging
import time

import pytest
import requests

import django_aio_request as dar
from django_aio_request.core import status
from tests.support.loopback import Handler, LoopbackServer, free_port

SECRETS = ("Bearer-tok3n-AUTH", "sessionid=c00kie-SESSION", "pa55word-USERINFO", "qu3ry-TOKEN", "pa7h-ID")


@pytest.fixture
def everything_logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)  # every logger, every level
    return caplog


HEADER_SECRETS = SECRETS[:3]  # Authorization, Cookie, the password in the endpoint


def _assert_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    """No logger logs headers or the endpoint's password; ours do not log path or query values either.

    (urllib3's own DEBUG records carry the request line, path and query included: docs/security.md.)
    """
    ours = [r for r in caplog.records if r.name.startswith("django_aio_request")]
    assert ours, "the failure was not logged at all: the test would prove nothing"
    for record in caplog.records:
        text = record.getMessage() + repr(record.args) + (record.exc_text or "")
        for secret in SECRETS if record in ours else HEADER_SECRETS:
            assert secret not in text, f"{secret!r} logged by {record.name}: {text}"


def _secret_request() -> dar.Request:
    return dar.get(
        "things/{id}",
        path_parameters={"id": SECRETS[4]},
        query_parameters={"token": SECRETS[3]},
        headers={"Authorization": SECRETS[0], "Cookie": SECRETS[1]},
    )


def _enrich(request: dar.Request) -> dar.Request:
    return request.with_headers({"Authorization": SECRETS[0]})


@pytest.mark.parametrize("fault", ["refused", "timeout", "too_large", "reset", "malformed", "bad_redirect"])
def test_a_failing_calls_log_records_hold_no_credentials(
    fault: str, server: LoopbackServer, everything_logged: pytest.LogCaptureFixture
) -> None:
    def late(handler: Handler) -> None:
        time.sleep(0.5)
        handler.reply(200, b"late")

    def reset(handler: Handler) -> None:
        handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nab")
        handler.close_connection = True

    def malformed(handler: Handler) -> None:
        handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nabcde")
        handler.close_connection = True

    def bad_redirect(handler: Handler) -> None:  # its target joined to the URL sent (which holds secrets)
        handler.reply(302, b"", {"Location": "http://[bad/" + handler.path})

    faults = {"timeout": late, "reset": reset, "malformed": malformed, "bad_redirect": bad_redirect}
    server.route("/things/*", faults.get(fault, lambda h: h.reply(200, b"x" * 5000)))
    port = server.port if fault != "refused" else free_port()
    session = requests.Session()
    session.auth = ("user", SECRETS[2])  # credentials go with the session, never in the endpoint
    client = dar.setup(
        endpoint=f"http://127.0.0.1:{port}/",
        transport=dar.RequestsTransport(session, max_response_size=1000),
        safe_method_strategy=dar.sequential_strategy(attempts_count=2),
        request_enricher=_enrich,
        circuit_breaker=dar.DefaultCircuitBreaker(
            break_duration=1, sampling_duration=1, minimum_throughput=1, failure_threshold=0.5
        ),
        metrics=False,
    )
    try:
        with client.request(_secret_request(), deadline=dar.Deadline.from_timeout(0.2)) as response:
            # the first attempt fails; the breaker (minimum throughput 1) then answers the second
            assert response.status in (
                status.NETWORK_ERROR,
                status.TIMEOUT,
                status.CIRCUIT_BREAKER_OPEN,
                status.TOO_MANY_REDIRECTS,
            )
    finally:
        client.close()
    _assert_no_secret(everything_logged)


def test_an_endpoint_with_credentials_is_refused() -> None:
    with pytest.raises(ValueError, match="must not carry credentials") as info:
        dar.setup(endpoint=f"http://user:{SECRETS[2]}@127.0.0.1:1/")
    assert SECRETS[2] not in str(info.value)


@pytest.mark.parametrize(
    ("endpoint", "logged"),
    [
        ("http://127.0.0.1:{port}", "http://127.0.0.1:{port}/things/{{id}}"),
        ("http://127.0.0.1:{port}/api/", "http://127.0.0.1:{port}/api/things/{{id}}"),
    ],
    ids=["no path", "a path"],
)
def test_a_failure_is_logged_under_the_url_template_as_it_was_joined(
    endpoint: str, logged: str, everything_logged: pytest.LogCaptureFixture
) -> None:
    """An endpoint with no path joins as "/": the line named ``http://127.0.0.1:1234things/{id}``."""
    port = free_port()
    transport = dar.RequestsTransport()
    try:
        answer = transport.send(endpoint.format(port=port), dar.get("things/{id}", path_parameters={"id": 7}), 1.0)
    finally:
        transport.close()
    assert answer.status == status.NETWORK_ERROR
    lines = [r.getMessage() for r in everything_logged.records if r.name.startswith("django_aio_request")]
    assert any(line.startswith(f"GET {logged.format(port=port)} failed after") for line in lines), lines


def test_an_unreachable_endpoint_is_logged_with_the_cause_and_no_query_of_the_template(
    everything_logged: pytest.LogCaptureFixture,
) -> None:
    """A refused connection logged "failed after 0.004s: MaxRetryError (status 489)", even at DEBUG:
    urllib3's wrapper, not what it wraps (a review). The chain of classes down to the cause and the
    operating system's words for it now; never what the exceptions say of themselves (the URL), nor a
    query written into the URL template (left out of metrics too)."""
    port = free_port()
    transport = dar.RequestsTransport()
    try:
        answer = transport.send(f"http://127.0.0.1:{port}/", dar.get(f"things?token={SECRETS[0]}"), 1.0)
    finally:
        transport.close()
    assert answer.status == status.NETWORK_ERROR
    [line] = [r.getMessage() for r in everything_logged.records if r.name.startswith("django_aio_request")]
    assert line.startswith(f"GET http://127.0.0.1:{port}/things failed after "), line
    assert line.endswith("MaxRetryError > NewConnectionError > ConnectionRefusedError: Connection refused (status 489)")
    _assert_no_secret(everything_logged)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Transfer-Encoding", "gzip;token=Set-Cookie=s%3Dsecret\x1b[2J\x1b[31mFAKE LOG LINE"),
        ("Content-Encoding", "gzip;q=" + "9" * 60_000),
    ],
    ids=["terminal escapes", "60,000 characters"],
)
def test_a_peer_s_coding_is_logged_escaped_and_cut_short(
    header: str, value: str, server: LoopbackServer, everything_logged: pytest.LogCaptureFixture
) -> None:
    """The coding a body cannot be read in is the peer's text, parameters and all: it went into the
    warning as it was, terminal escapes included, and a 60,000-character one made a warning and an
    X-Unreadable-Coding header of 60,000 characters."""

    def coded(handler: Handler) -> None:
        handler.reply(200, b"body", {header: value, "Content-Length": "4"})

    server.route("/coded", coded)
    response = _sent_once(server, "coded", 2.0)
    assert response.status == status.NETWORK_ERROR
    shown = response.headers["X-Unreadable-Coding"]
    assert len(shown) < 150
    assert shown.startswith(f"{header}: gzip;")
    [warning] = [r.getMessage() for r in everything_logged.records if r.name.startswith("django_aio_request")]
    assert len(warning) < 400, len(warning)
    assert "\x1b" not in warning


def test_a_call_ended_by_its_deadline_is_logged_as_such(
    server: LoopbackServer, everything_logged: pytest.LogCaptureFixture
) -> None:
    """It read "failed after 1.000s: ProtocolError (status 408)": what urllib3 raised once the deadline
    timer had shut the socket, naming a broken peer where the server was only slow."""

    def slow(handler: Handler) -> None:
        time.sleep(1.0)
        handler.reply(200, b"late")

    server.route("/slow", slow)
    answer = _sent_once(server, "slow", 0.3)
    assert answer.status == status.TIMEOUT
    [line] = [r.getMessage() for r in everything_logged.records if r.name.startswith("django_aio_request")]
    assert line.startswith("GET ")
    assert line.endswith(": the deadline ran out (status 408)"), line


def _sent_once(server: LoopbackServer, path: str, timeout: float) -> dar.Response:
    """One GET of ``path`` through a transport of its own, closed after."""
    transport = dar.RequestsTransport()
    try:
        return transport.send(server.url, dar.get(path), timeout)
    finally:
        transport.close()


def test_the_cause_named_in_the_log_never_fails_and_stays_short() -> None:
    """What the log names of an exception (``_what_failed``) reads properties of exception classes of
    other packages': one that raises must not fail the call, and a system's words are cut short."""
    from django_aio_request.transport.requests_transport import _what_failed

    class Odd(Exception):
        @property
        def reason(self) -> BaseException:
            raise RuntimeError("no reason")

    long = OSError(5, "x" * 100_000)
    wrapped = Odd("outer")
    wrapped.__cause__ = long
    assert _what_failed(wrapped) == "Odd > OSError: " + "x" * 200
    looped = Odd("self")
    looped.__cause__ = looped
    assert _what_failed(looped) == "Odd"
