"""The transport's direct route (transport/direct_send.py): it must put on the wire what requests
would, and step aside whenever something in or around the session would change what requests does:
mocking (responses, requests-mock), tracing wrappers, mounted adapters, auth, netrc, proxies and
cookies."""

import functools
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
import responses
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from requests.adapters import HTTPAdapter
from requests.sessions import REDIRECT_STATI
from urllib3 import HTTPConnectionPool

import django_aio_request as dar
from django_aio_request.core import status
from django_aio_request.transport import direct_send
from django_aio_request.transport.requests_transport import RequestsTransport
from tests.end_to_end.test_response_fuzz import answers
from tests.support.loopback import Handler, LoopbackServer
from tests.support.raw_server import RawAnswerServer, request_heads
from tests.support.recording_server import RecordingServer

DEADLINE = 5.0


class _SubclassSession(requests.Session):
    """A session requests treats exactly like its own, but of a subclass: never on the direct route."""


def _route(transport: RequestsTransport, url: str) -> direct_send.DirectRoute | None:
    return transport._host(url).route


@pytest.fixture(scope="module")
def recording() -> Iterator[RecordingServer]:
    server = RecordingServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def both_paths() -> Iterator[tuple[RequestsTransport, RequestsTransport]]:
    direct = RequestsTransport()
    through_requests = RequestsTransport(_SubclassSession())
    yield direct, through_requests
    direct.close()
    through_requests.close()


_TOKEN = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_!#$%&'*+.^`|~", min_size=1, max_size=12
)
_HEADER_VALUE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20).map(str.strip)
_HEADER_NAME = st.one_of(_TOKEN, st.sampled_from(["accept", "USER-AGENT", "Connection", "Accept-Encoding", "Host"]))
_ANY_TEXT = st.text(max_size=12)


@st.composite
def _requests(draw: st.DrawFn) -> dar.Request:
    template = draw(st.sampled_from(["", "things", "things/{id}", "a/{id}/b/{name}", "x?fixed=1", "Über/{id}"]))
    parameters = {name: draw(_ANY_TEXT) for name in ("id", "name") if "{" + name + "}" in template}
    return dar.request(
        draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])),
        template,
        path_parameters=parameters,
        query_parameters=draw(st.dictionaries(_TOKEN, st.one_of(_ANY_TEXT, st.integers(), st.lists(_ANY_TEXT)))),
        headers=draw(st.dictionaries(_HEADER_NAME, _HEADER_VALUE, max_size=4)),
        body=draw(st.one_of(st.none(), st.binary(max_size=40))),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=_requests())
def test_the_direct_route_puts_on_the_wire_what_requests_would(
    recording: RecordingServer, both_paths: tuple[RequestsTransport, RequestsTransport], request: dar.Request
) -> None:
    """Byte for byte: request line, headers (order and case) and body, for any method, path
    parameters, query, headers (overriding the session's too) and body."""
    direct, through_requests = both_paths
    outcomes: list[object] = []
    for transport in (direct, through_requests):
        before = len(recording.requests())
        try:
            response = transport.send(recording.url, request, DEADLINE)
        except Exception as error:  # a caller's mistake: both must refuse it, before sending
            assert len(recording.requests()) == before
            outcomes.append(type(error))
            continue
        assert response.status == 200
        outcomes.append(recording.requests()[before])
    assert _route(direct, recording.url) is not None
    assert _route(through_requests, recording.url) is None
    assert outcomes[0] == outcomes[1]


def test_a_caller_mistake_raises_before_anything_is_sent_on_the_direct_route(recording: RecordingServer) -> None:
    transport = RequestsTransport()
    before = len(recording.requests())
    with pytest.raises(ValueError, match="line break"):  # the request refuses it as it is built ...
        dar.get("x", headers={"X-Bad": "one\r\nInjected: two"})
    smuggled = dar.get("x")
    smuggled.headers["X-Bad"] = "one\r\nInjected: two"  # ... and the transport, should one get past
    with pytest.raises(requests.exceptions.InvalidHeader):
        transport.send(recording.url, smuggled, DEADLINE)
    with pytest.raises(ValueError, match="cannot be"):
        transport.send(recording.url, dar.get("x/{id}", path_parameters={"id": ".."}), DEADLINE)
    assert len(recording.requests()) == before
    assert _route(transport, recording.url) is not None
    transport.close()


def test_the_direct_route_uses_the_adapters_own_pool_and_keeps_its_connection(recording: RecordingServer) -> None:
    transport = RequestsTransport()
    connections = recording.connections
    for _ in range(5):
        assert transport.send(recording.url, dar.get("pooled"), DEADLINE).status == 200
    assert recording.connections == connections + 1
    session = transport._session
    adapter = session.get_adapter(recording.url)
    assert isinstance(adapter, HTTPAdapter)
    prepared = session.prepare_request(requests.Request("GET", recording.url + "pooled"))
    verify = transport._host(recording.url).settings["verify"]  # True, or a CA bundle from the environment
    pool = adapter.get_connection_with_tls_context(prepared, verify=verify)  # the one HTTPAdapter.send takes
    assert isinstance(pool, HTTPConnectionPool)
    assert (pool.num_connections, pool.num_requests) == (1, 5)
    transport.close()


def test_responses_intercepts_calls_of_a_transport_built_before_it_started(server: LoopbackServer) -> None:
    transport = RequestsTransport()
    server.route("/x", lambda h: h.reply(200, b"real"))
    assert transport.send(server.url, dar.get("x"), DEADLINE).read() == b"real"
    with responses.RequestsMock() as mocked:
        mocked.add(responses.GET, server.url + "x", body=b"mocked")
        assert transport.send(server.url, dar.get("x"), DEADLINE).read() == b"mocked"
    assert transport.send(server.url, dar.get("x"), DEADLINE).read() == b"real"
    assert len(server.received("/x")) == 2
    transport.close()


def test_a_wrapper_around_session_send_sees_every_call(server: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """As OpenTelemetry's and ddtrace's instrumentation wrap ``requests.Session.send``, and inject
    a trace header there: it must reach the server, and the wrapper must see every call."""
    transport = RequestsTransport()
    server.route("/x", lambda h: h.reply(200, b"ok"))
    transport.send(server.url, dar.get("x"), DEADLINE)  # the direct route is planned for the host
    original = requests.Session.send
    seen = []

    def traced(self: requests.Session, prepared: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        seen.append(prepared.url)
        prepared.headers["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        return original(self, prepared, **kwargs)

    monkeypatch.setattr(requests.Session, "send", traced)
    for _ in range(3):
        assert transport.send(server.url, dar.get("x"), DEADLINE).status == 200
    monkeypatch.undo()
    assert transport.send(server.url, dar.get("x"), DEADLINE).status == 200
    assert seen == [server.url + "x"] * 3
    traced_headers = [r.headers.get("traceparent") for r in server.received("/x")]
    assert traced_headers == [None, *["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"] * 3, None]
    transport.close()


class _RecordingAdapter(HTTPAdapter):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        self.sent.append(request.url or "")
        return super().send(request, *args, **kwargs)


def test_a_patched_get_adapter_is_used(server: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """As requests-mock patches ``Session.get_adapter``."""
    transport = RequestsTransport()
    server.route("/x", lambda h: h.reply(200, b"ok"))
    transport.send(server.url, dar.get("x"), DEADLINE)
    adapter = _RecordingAdapter()
    monkeypatch.setattr(requests.Session, "get_adapter", lambda self, url: adapter)
    assert transport.send(server.url, dar.get("x"), DEADLINE).status == 200
    assert adapter.sent == [server.url + "x"]
    transport.close()


def test_an_adapter_mounted_for_a_prefix_gets_its_calls(server: LoopbackServer) -> None:
    session = requests.Session()
    adapter = _RecordingAdapter()
    session.mount(server.url + "special", adapter)
    transport = RequestsTransport(session)
    server.route("/*", lambda h: h.reply(200, b"ok"))
    assert transport.send(server.url, dar.get("plain"), DEADLINE).status == 200
    assert transport.send(server.url, dar.get("special/one"), DEADLINE).status == 200
    assert adapter.sent == [server.url + "special/one"]
    assert _route(transport, server.url) is not None  # the other paths still go direct
    transport.close()


def test_a_hook_that_raises_raises_on_to_the_caller_as_requests_raises_it(server: LoopbackServer) -> None:
    """``raise_for_status`` in a session's hook: requests raises HTTPError for the 404; the transport
    took the exception for a failure of the network, a 489 the breaker counted and strategies retried."""

    def raise_for_status(response: requests.Response, **_: Any) -> None:
        response.raise_for_status()

    server.route("/missing", lambda h: h.reply(404, b"no"))
    server.route("/there", lambda h: h.reply(200, b"yes"))
    session = requests.Session()
    session.hooks["response"].append(raise_for_status)
    with pytest.raises(requests.HTTPError) as plain:
        session.get(server.url + "missing", timeout=5)
    transport = RequestsTransport(session)
    with pytest.raises(requests.HTTPError) as raised:
        transport.send(server.url, dar.get("missing"), DEADLINE)
    assert raised.value.response is not None
    assert raised.value.response.status_code == plain.value.response.status_code == 404
    response = transport.send(server.url, dar.get("there"), DEADLINE)  # the next call is answered
    assert (response.status, response.read()) == (200, b"yes")
    transport.close()


def _one_call(url: str, session: requests.Session, path: str, seconds: float, attempts: int = 1) -> tuple[int, float]:
    """One call through ``session`` (``attempts`` sequential attempts), given ``seconds``: its status
    and how long it took."""
    strategy = (
        dar.single_attempt_strategy()
        if attempts == 1
        else dar.sequential_strategy(attempts_count=attempts, delays_provider=dar.constant_delays(delay=0))
    )
    client = dar.setup(endpoint=url, transport=RequestsTransport(session), safe_method_strategy=strategy)
    try:
        started = time.monotonic()
        with client.request(dar.get(path), deadline=dar.Deadline.from_timeout(seconds)) as response:
            return response.status, time.monotonic() - started
    finally:
        client.close()


class _DigestOfOurOwn(requests.auth.HTTPDigestAuth):
    """A user's subclass: its hooks are an auth's as much as requests' own class's are."""


_GOOD_CHALLENGE = 'Digest realm="r", nonce="abc", qop="auth"'


def _digest_route(server: LoopbackServer, script: list[str | None], *, authorized_after: float = 0.0) -> None:
    """Answers by ``script`` first, one item a request: a challenge (401 with it) or None (200). Then
    401 with a good challenge to a request without Authorization, 200 (after ``authorized_after``
    seconds) to one with it."""

    def handle(handler: Any) -> None:
        if script:
            challenge = script.pop(0)
            if challenge is None:
                handler.reply(200, b"in")
            else:
                handler.reply(401, b"", headers={"WWW-Authenticate": challenge})
        elif handler.headers.get("Authorization") is None:
            handler.reply(401, b"", headers={"WWW-Authenticate": _GOOD_CHALLENGE})
        else:
            time.sleep(authorized_after)
            handler.reply(200, b"in")

    server.route("/secret", handle)


@pytest.mark.parametrize("auth_class", [requests.auth.HTTPDigestAuth, _DigestOfOurOwn])
@pytest.mark.parametrize(
    "challenge",
    ['Digest nonce="abc"', 'Digest realm="r"'],
    ids=["no realm", "no nonce"],
)
def test_a_malformed_digest_challenge_is_the_peer_s_fault_not_raised(
    server: LoopbackServer, challenge: str, auth_class: type[requests.auth.HTTPDigestAuth]
) -> None:
    """docs/faults.md: no answer however malformed raises out of client.request(). The hook an auth
    adds reads the peer's challenge; what it raised (KeyError) was taken for the application's own
    hook's and raised out of the call. After it, the auth's state of this thread is forgotten: it
    signed the next request with the malformed challenge while preparing it, and every later call
    on the thread raised KeyError, even once the server was well again."""
    # A good challenge and its 200; then the next call, signed with what it learnt, is challenged
    # anew, malformed; the third call is answered as the first was.
    _digest_route(server, [_GOOD_CHALLENGE, None, challenge])
    session = requests.Session()
    session.auth = auth_class("user", "password")
    client = dar.setup(
        endpoint=server.url, transport=RequestsTransport(session), safe_method_strategy=dar.single_attempt_strategy()
    )
    statuses = []
    try:
        for _ in range(3):
            with client.request(dar.get("secret"), deadline=dar.Deadline.from_timeout(5)) as response:
                statuses.append(response.status)
    finally:
        client.close()
    assert statuses == [200, 489, 200]


class _TokenAuth(requests.auth.AuthBase):
    """An application's own auth that refreshes its token on a 401, with a bug in its hook."""

    def __init__(self, bug: Exception) -> None:
        self.bug = bug

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.register_hook("response", self.refresh_on_401)  # type: ignore[no-untyped-call]
        return request

    def refresh_on_401(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        if response.status_code == 401:
            raise self.bug  # the application's own: its token file, its token service
        return response


class _TokenAuthWithItsOwnCA(_TokenAuth):
    """Its bug meets a library: a missing CA file, raised in the standard library's ssl."""

    def refresh_on_401(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        if response.status_code == 401:
            ssl.create_default_context(cafile="/nonexistent/token-service-ca.pem")
        return response


class _DigestWithABuggyHeader(requests.auth.HTTPDigestAuth):
    """Requests' handle_401 calls this: the bug is the application's all the same."""

    def build_digest_header(self, method: str, url: str) -> str | None:
        raise AttributeError("'NoneType' object has no attribute 'nonce'")


class _DigestThatLogs(requests.auth.HTTPDigestAuth):
    """Overrides handle_401 and calls requests' own: the peer's malformed challenge is still a 489."""

    def handle_401(self, r: requests.Response, **kwargs: Any) -> requests.Response:
        return super().handle_401(r, **kwargs)  # type: ignore[no-untyped-call,no-any-return]


@pytest.mark.parametrize(
    "auth",
    [
        _TokenAuth(AttributeError("'NoneType' object has no attribute 'token'")),
        _TokenAuth(FileNotFoundError(2, "No such file or directory", "/run/secrets/token")),
        _TokenAuth(requests.HTTPError("500 Server Error: the token service")),
        _DigestWithABuggyHeader("user", "password"),
        _TokenAuthWithItsOwnCA(FileNotFoundError()),
    ],
    ids=["AttributeError", "an OSError", "a requests error", "a method requests' hook calls", "raised in a library"],
)
def test_a_bug_in_an_auth_of_the_application_s_own_is_raised_not_a_489(
    server: LoopbackServer, auth: requests.auth.AuthBase
) -> None:
    """docs/faults.md: a hook of your own that raises is raised on, and not counted by the breaker.
    Taken for the peer's doing, it was a 489: retried (3 requests), and counted until the breaker
    opened on a healthy server; so it was, in a second version, when the bug was an OSError or a
    requests error (judged by its type, not where it came from), or raised in a method of the
    application's that requests' own hook called."""
    server.route("/x", lambda handler: handler.reply(401, b"", headers={"WWW-Authenticate": _GOOD_CHALLENGE}))
    session = requests.Session()
    session.auth = auth
    bug = type(auth.bug) if isinstance(auth, _TokenAuth) else AttributeError  # FileNotFoundError too
    with pytest.raises(bug):
        _one_call(server.url, session, "x", 5, attempts=3)
    assert len(server.received("/x")) == 1


def test_a_malformed_challenge_through_an_auth_s_own_handle_401_calling_requests_is_a_489(
    server: LoopbackServer,
) -> None:
    _digest_route(server, ['Digest realm="r"'])
    session = requests.Session()
    session.auth = _DigestThatLogs("user", "password")
    assert _one_call(server.url, session, "secret", 5)[0] == 489


class _TokenRefreshFailed(Exception):
    pass


@pytest.mark.parametrize("shape", ["partial", "lambda", "wrapped"])
def test_a_hook_s_resend_through_the_transport_ends_at_the_deadline_as_a_408(
    server: LoopbackServer, shape: str
) -> None:
    """A hook of the application's that sends the request again (a token refreshed on 401), not a
    method of an auth: the abort of its resend at the deadline raised ConnectionError out of
    client.request(). What the transport's adapter raises is the network's doing, whichever hook
    sent through it."""
    _digest_route(server, [], authorized_after=1.0)

    def resend_with_token(response: requests.Response, *, token: str, **kwargs: Any) -> requests.Response:
        if response.status_code != 401:
            return response
        again = response.request.copy()
        again.headers["Authorization"] = token
        return response.connection.send(again, **kwargs)

    def wrapping(response: requests.Response, **kwargs: Any) -> requests.Response:
        try:
            return resend_with_token(response, token="Bearer x", **kwargs)
        except requests.ConnectionError as error:  # the application's own error, over the abort
            raise _TokenRefreshFailed("could not refresh") from error

    hook = (
        functools.partial(resend_with_token, token="Bearer x")
        if shape == "partial"
        else wrapping
        if shape == "wrapped"
        else lambda response, **kwargs: resend_with_token(response, token="Bearer x", **kwargs)
    )
    session = requests.Session()
    session.hooks["response"].append(hook)
    status_seen, took = _one_call(server.url, session, "secret", 0.5)
    assert status_seen == 408
    assert took < 0.8


def _status_with_requests_digest(server: RawAnswerServer) -> int:
    """The status of one call to ``server`` (closed after it) through a session with requests' Digest auth."""
    session = requests.Session()
    session.auth = requests.auth.HTTPDigestAuth("user", "password")
    try:
        return _one_call(server.url, session, "x", 5)[0]
    finally:
        server.close()


def test_a_401_whose_body_is_cut_short_is_a_489_with_a_digest_auth() -> None:
    """HTTPDigestAuth reads the 401's body before it sends the request again: a body cut short
    raised ChunkedEncodingError (in requests' own code, not its auth module) out of
    client.request(), where the same cut on a 200 is a 489."""
    server = RawAnswerServer(
        b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: "
        + _GOOD_CHALLENGE.encode()
        + b"\r\nContent-Length: 100\r\n\r\nshort"
    )
    assert _status_with_requests_digest(server) == 489


def test_a_bad_header_a_hook_puts_on_its_resend_is_raised_as_requests_raises_it(server: LoopbackServer) -> None:
    """The application's mistake (a token read from a file with its newline), raised by http.client
    as the resend is made: not a failure of the network, a 489 retried three times."""
    server.route("/x", lambda handler: handler.reply(401, b""))

    def resend_with_token(response: requests.Response, **kwargs: Any) -> requests.Response:
        if response.status_code != 401:
            return response
        again = response.request.copy()
        again.headers["Authorization"] = "Bearer new\n"
        return response.connection.send(again, **kwargs)

    session = requests.Session()
    session.hooks["response"].append(resend_with_token)
    with pytest.raises(ValueError, match="Invalid header value"):
        _one_call(server.url, session, "x", 5, attempts=3)
    assert len(server.received("/x")) == 1


def test_a_hook_s_own_error_met_in_a_request_it_sent_again_through_the_session_is_raised_as_it_is(
    server: LoopbackServer,
) -> None:
    """A token refresh that sends ``r.request`` again through the session (whose hooks run again) and
    raises its own error when refused twice: the caller got the transport's private wrapper."""
    server.route("/x", lambda handler: handler.reply(401, b""))
    session = requests.Session()

    class AuthFailed(Exception):
        pass

    def refresh(response: requests.Response, **kwargs: Any) -> requests.Response:
        if response.status_code != 401:
            return response
        if response.request.headers.get("Authorization"):
            raise AuthFailed("refused with a fresh token too")
        response.request.headers["Authorization"] = "Bearer fresh"
        return session.send(response.request, **kwargs)

    session.hooks["response"].append(refresh)
    with pytest.raises(AuthFailed):
        _one_call(server.url, session, "x", 5, attempts=3)


def test_a_bug_of_a_slow_hook_met_past_the_deadline_is_raised_not_a_408(server: LoopbackServer) -> None:
    """A hook's own bug is the application's also when the attempt's deadline passed while the hook
    ran: taken for the abort's 408, it was retried by the strategy and logged nowhere."""
    server.route("/x", lambda handler: handler.reply(200, b"ok"))

    def slow_and_buggy(response: requests.Response, **kwargs: Any) -> requests.Response:
        time.sleep(0.3)  # its own work, past the attempt's share of the deadline
        raise AttributeError("'Settings' object has no attribute 'METRICS_URL'")

    session = requests.Session()
    session.hooks["response"].append(slow_and_buggy)
    strategy = dar.sequential_strategy(
        attempts_count=3,
        delays_provider=dar.constant_delays(delay=0),
        deadline_provider=dar.split_deadline_between_attempts(),
    )
    client = dar.setup(endpoint=server.url, transport=RequestsTransport(session), safe_method_strategy=strategy)
    try:
        with pytest.raises(AttributeError, match="METRICS_URL"):
            client.request(dar.get("x"), deadline=dar.Deadline.from_timeout(0.6)).__enter__()
    finally:
        client.close()
    assert len(server.received("/x")) == 1


class _GarbageToTheResend(RawAnswerServer):
    """A keep-alive connection: a Digest challenge to a request without Authorization, bytes that
    are not HTTP (a TLS port's) to one with it."""

    def _converse(self, conn: socket.socket, answer: bytes) -> None:
        for head in request_heads(conn, 5):
            if b"Authorization" in head:
                conn.sendall(b"\x16\x03\x01garbage\r\n\r\n")
            else:
                challenge = b"WWW-Authenticate: " + _GOOD_CHALLENGE.encode()
                conn.sendall(b"HTTP/1.1 401 Unauthorized\r\n" + challenge + b"\r\nContent-Length: 0\r\n\r\n")


def test_an_answer_to_an_auth_s_resend_that_is_not_http_is_a_489() -> None:
    """The resend answered with bytes that are not HTTP: http.client closed its file, the head
    reader put the closed file back, and the ValueError of its cleanup replaced the BadStatusLine
    (raised out of client.request(), where the same answer to a first request is a 489)."""
    server = _GarbageToTheResend()
    assert _status_with_requests_digest(server) == 489


def test_an_auth_s_resend_ends_at_the_deadline_as_a_408_not_an_error(server: LoopbackServer) -> None:
    """A user's subclass of HTTPDigestAuth: the abort of its resend at the deadline raised
    requests.ConnectionError out of client.request(), as if the application's own hook had."""
    _digest_route(server, [], authorized_after=1.0)
    session = requests.Session()
    session.auth = _DigestOfOurOwn("user", "password")
    status_seen, took = _one_call(server.url, session, "secret", 0.5)
    assert status_seen == 408
    assert took < 0.8


def test_a_hook_s_exception_holds_no_answer_once_dropped(server: LoopbackServer, gc_off: None) -> None:
    """Chained to the transport's wrapper, and kept in a local of a frame in its traceback, the
    exception made a cycle that kept the answer alive until the garbage collector ran."""
    answers: list[weakref.ref[requests.Response]] = []

    def raise_for_status(response: requests.Response, **_: Any) -> None:
        answers.append(weakref.ref(response))
        response.raise_for_status()

    server.route("/missing", lambda h: h.reply(404, b"no"))
    session = requests.Session()
    session.hooks["response"].append(raise_for_status)
    transport = RequestsTransport(session)
    with pytest.raises(requests.HTTPError) as raised:
        transport.send(server.url, dar.get("missing"), DEADLINE)
    assert raised.value.__context__ is None
    assert raised.value.__cause__ is None
    del raised
    assert [answer() for answer in answers] == [None]
    transport.close()


def test_a_hook_that_answers_a_response_of_its_own_is_answered_that(server: LoopbackServer) -> None:
    """requests returns what the last hook returns; one with no ``request`` was a 489 (AttributeError)."""

    def canned(response: requests.Response, **_: Any) -> requests.Response:
        own = requests.Response()
        own.status_code, own._content, own._content_consumed = 203, b"canned", True  # type: ignore[attr-defined]
        return own

    server.route("/x", lambda h: h.reply(200, b"served"))
    session = requests.Session()
    session.hooks["response"].append(canned)
    assert session.get(server.url + "x", timeout=5).content == b"canned"
    transport = RequestsTransport(session)
    response = transport.send(server.url, dar.get("x"), DEADLINE)
    assert (response.status, response.read()) == (203, b"canned")
    transport.close()


class _CannedAdapter(HTTPAdapter):
    """An adapter that answers from memory, as stubs and caches do: a Response with no ``raw``."""

    def __init__(self, consumed: bool) -> None:
        super().__init__()
        self.consumed = consumed

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        answer = requests.Response()
        answer.status_code, answer._content, answer._content_consumed = 200, b"canned", self.consumed  # type: ignore[attr-defined]
        answer.request, answer.url = request, request.url or ""
        answer.headers["Content-Type"] = "text/plain"
        return answer


class _CannedRedirects(HTTPAdapter):
    """Answers /start with a 302 to /end made in memory, and /end with a 200."""

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        answer = requests.Response()
        answer.request, answer.url = request, request.url or ""
        if (request.url or "").endswith("/start"):
            answer.status_code, answer._content = 302, b""
            answer.headers["Location"] = "/end"
        else:
            answer.status_code, answer._content = 200, b"end"
        answer._content_consumed = True  # type: ignore[attr-defined]
        return answer


def test_a_redirect_an_adapter_makes_in_memory_is_followed_as_requests_follows_it() -> None:
    session = requests.Session()
    session.mount("http://canned.test/", _CannedRedirects())
    assert session.get("http://canned.test/start").content == b"end"
    transport = RequestsTransport(session)
    response = transport.send("http://canned.test/", dar.get("start"), DEADLINE)
    assert (response.status, response.read()) == (200, b"end")
    transport.close()


@pytest.mark.parametrize("consumed", [True, False])
def test_an_adapter_that_answers_a_response_made_in_memory_is_read_as_requests_reads_it(consumed: bool) -> None:
    """Such a Response has no ``raw``: plain requests gives its body, and the transport answered
    489 (AttributeError on ``raw.tell()``) on every call."""
    session = requests.Session()
    session.mount("http://canned.test/", _CannedAdapter(consumed))
    assert session.get("http://canned.test/x").content == b"canned"
    transport = RequestsTransport(session)
    response = transport.send("http://canned.test/", dar.get("x"), DEADLINE)
    assert (response.status, response.read()) == (200, b"canned")
    transport.close()


def test_session_auth_is_sent(server: LoopbackServer) -> None:
    session = requests.Session()
    session.auth = ("user", "secret")
    transport = RequestsTransport(session)
    server.route("/x", lambda h: h.reply(200))
    transport.send(server.url, dar.get("x"), DEADLINE)
    assert server.received("/x")[0].headers["Authorization"] == "Basic dXNlcjpzZWNyZXQ="
    assert _route(transport, server.url) is None
    transport.close()


@pytest.mark.parametrize("as_list", [False, True], ids=["one function", "a list"])
def test_a_session_s_response_hook_runs_on_every_call(server: LoopbackServer, as_list: bool) -> None:
    """requests takes a hook as one function or a list of them: one function made the route's
    planning raise TypeError, and every call raised instead of being sent (5 of 5 in a review)."""
    seen: list[int] = []

    def hook(response: requests.Response, **_: Any) -> None:
        seen.append(response.status_code)

    session = requests.Session()
    session.hooks = {"response": [hook] if as_list else hook}
    transport = RequestsTransport(session)
    server.route("/x", lambda h: h.reply(200))
    assert [transport.send(server.url, dar.get("x"), DEADLINE).status for _ in range(3)] == [200, 200, 200]
    assert seen == [200, 200, 200]
    assert _route(transport, server.url) is None  # requests' own path, where the hook runs
    transport.close()


def test_credentials_in_the_endpoint_are_sent_as_basic_auth(server: LoopbackServer) -> None:
    transport = RequestsTransport()
    server.route("/x", lambda h: h.reply(200))
    endpoint = f"http://user:secret@127.0.0.1:{server.port}/"
    assert transport.send(endpoint, dar.get("x"), DEADLINE).status == 200
    assert server.received("/x")[0].headers["Authorization"] == "Basic dXNlcjpzZWNyZXQ="
    transport.close()


def test_a_netrc_entry_for_the_host_is_sent(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login user password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    transport = RequestsTransport()
    server.route("/x", lambda h: h.reply(200))
    transport.send(server.url, dar.get("x"), DEADLINE)
    assert server.received("/x")[0].headers["Authorization"] == "Basic dXNlcjpzZWNyZXQ="
    transport.close()


def _counting_plans(monkeypatch: pytest.MonkeyPatch, then: Any = None) -> list[str]:
    """The hosts whose direct route is worked out, in order; ``then(session)`` runs after each."""
    planned: list[str] = []
    plan = direct_send.plan_route

    def counted(session: requests.Session, *args: Any) -> direct_send.DirectRoute | None:
        route = plan(session, *args)
        planned.append(args[1])
        if then is not None:
            then(session)
        return route

    monkeypatch.setattr(direct_send, "plan_route", counted)
    return planned


def test_a_token_renewed_before_every_call_keeps_the_route_and_its_pool(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Headers are compared by the route itself: compared with the rest of the session, a token
    renewed before every call worked the host out anew each time (a new SSL context and pool, 25 ms
    of CPU a call on https). A plain dict as the headers, which requests takes, raised AttributeError."""
    planned = _counting_plans(monkeypatch)
    server.route("/x", lambda h: h.reply(200))
    session = requests.Session()
    transport = RequestsTransport(session)
    for n in range(5):
        session.headers["Authorization"] = f"Bearer {n}"
        assert transport.send(server.url, dar.get("x"), DEADLINE).status == 200
    session.headers = {"Authorization": "Bearer plain"}
    assert transport.send(server.url, dar.get("x"), DEADLINE).status == 200
    assert [r.headers["Authorization"] for r in server.received("/x")] == [
        *(f"Bearer {n}" for n in range(5)),
        "Bearer plain",
    ]
    assert planned == [server.url + "x"]  # worked out once
    plain = requests.Session()
    plain.headers = {"Authorization": "Bearer from the start"}
    from_the_start = RequestsTransport(plain)
    assert from_the_start.send(server.url, dar.get("x"), DEADLINE).status == 200
    assert server.received("/x")[-1].headers["Authorization"] == "Bearer from the start"
    transport.close()
    from_the_start.close()


@pytest.mark.parametrize(
    "hook",
    [functools.partial(lambda r, **_: None), type("Hook", (), {"__call__": lambda self, r, **_: None})()],
    ids=["a partial", "a callable object"],
)
def test_a_hook_that_is_one_callable_object_is_worked_out_once(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch, hook: Any
) -> None:
    """Its copy was kept to compare with, and a copy of a partial is not equal to it: the host was
    worked out again on every call (300 times in 300 calls)."""
    planned = _counting_plans(monkeypatch)
    server.route("/x", lambda h: h.reply(200))
    session = requests.Session()
    session.hooks = {"response": hook}
    transport = RequestsTransport(session)
    assert [transport.send(server.url, dar.get("x"), DEADLINE).status for _ in range(5)] == [200] * 5
    assert planned == [server.url + "x"]
    transport.close()


def test_a_session_changed_while_its_host_is_worked_out_is_sent_as_it_is_now(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A route worked out from the session as it was, stored after the session changed, served the
    old session for good (auth set meanwhile was never sent: 10 of 10 trials in a review)."""

    def set_auth_meanwhile(session: requests.Session) -> None:
        if session.auth is None:
            session.auth = ("user", "secret")
            transport._host("http://127.0.0.1:1/")  # another thread's call, which sees the change first

    _counting_plans(monkeypatch, then=set_auth_meanwhile)
    server.route("/x", lambda h: h.reply(200))
    transport = RequestsTransport(requests.Session())
    for _ in range(3):
        assert transport.send(server.url, dar.get("x"), DEADLINE).status == 200
    assert [r.headers.get("Authorization") for r in server.received("/x")] == [
        None,
        "Basic dXNlcjpzZWNyZXQ=",
        "Basic dXNlcjpzZWNyZXQ=",
    ]
    transport.close()


def test_a_session_changed_after_its_first_calls_is_sent_as_it_is_now(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """requests reads the session on every call; the transport worked a host out once, so a token
    put in the session's headers after the first call was never sent (the old one was), nor did
    calls go through a proxy set later (0 of 5)."""
    for variable in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(variable, raising=False)
    server.route("/x", lambda h: h.reply(200))
    server.route("http://service.invalid/x", lambda h: h.reply(200))
    session = requests.Session()
    session.headers["Authorization"] = "Bearer old"
    transport = RequestsTransport(session)
    assert transport.send(server.url, dar.get("x"), DEADLINE).status == 200
    session.headers["Authorization"] = "Bearer new"  # a token renewed in place
    assert transport.send(server.url, dar.get("x"), DEADLINE).status == 200
    assert [r.headers["Authorization"] for r in server.received("/x")] == ["Bearer old", "Bearer new"]
    assert _route(transport, server.url) is not None  # still the direct route
    target = "http://service.invalid/"
    assert transport.send(target, dar.get("x"), 0.5).status == status.NETWORK_ERROR  # no such host
    session.proxies["http"] = server.url  # the loopback server plays the proxy
    assert transport.send(target, dar.get("x"), DEADLINE).status == 200
    assert server.requests[-1].path == "http://service.invalid/x"
    transport.close()


def test_a_proxy_from_the_environment_is_used(server: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loopback server plays the proxy: a proxied request line carries the absolute URL."""
    monkeypatch.setenv("HTTP_PROXY", server.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    transport = RequestsTransport()
    server.route("http://service.invalid/x", lambda h: h.reply(200))
    target = "http://service.invalid/"
    assert transport.send(target, dar.get("x"), DEADLINE).status == 200
    assert server.requests[-1].path == "http://service.invalid/x"
    assert _route(transport, target) is None
    transport.close()


def test_cookies_a_session_keeps_are_kept_and_sent(server: LoopbackServer) -> None:
    """A session of the application's that keeps cookies (requests' default) keeps them on the
    direct route too, and sends them on the next call. The transport's own session keeps none."""

    def set_cookie(handler: Handler) -> None:
        handler.reply(200, b"ok", {"Set-Cookie": "session=abc; Path=/"})

    server.route("/login", set_cookie)
    server.route("/next", lambda h: h.reply(200))
    own = RequestsTransport(requests.Session())
    own.send(server.url, dar.get("login"), DEADLINE)
    own.send(server.url, dar.get("next"), DEADLINE)
    default = RequestsTransport()
    default.send(server.url, dar.get("login"), DEADLINE)
    default.send(server.url, dar.get("next"), DEADLINE)
    assert [r.headers.get("Cookie") for r in server.received("/next")] == ["session=abc", None]
    own.close()
    default.close()


@pytest.fixture(scope="module")
def tls_server() -> Iterator[tuple[int, trustme.CA]]:
    class Echo(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "6")
            self.end_headers()
            self.wfile.write(b"secure")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    authority = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server.server_address[1], authority
    server.shutdown()
    server.server_close()


def test_https_on_the_direct_route_verifies_the_certificate(
    tls_server: tuple[int, trustme.CA], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, authority = tls_server
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    url = f"https://127.0.0.1:{port}/"
    with authority.cert_pem.tempfile() as ca_file:
        session = requests.Session()
        session.verify = ca_file
        trusting = RequestsTransport(session)
        answers = [trusting.send(url, dar.get("x"), DEADLINE) for _ in range(2)]
        assert [(a.status, a.read()) for a in answers] == [(200, b"secure")] * 2
        assert _route(trusting, url) is not None
        trusting.close()
    untrusting = RequestsTransport()  # the system's CAs: this certificate is refused
    assert untrusting.send(url, dar.get("x"), DEADLINE).status == status.NETWORK_ERROR
    assert _route(untrusting, url) is not None
    untrusting.close()


@pytest.mark.parametrize("route", ["direct", "requests' own"])
@pytest.mark.parametrize("trusted", [True, False])
def test_new_tls_connections_to_a_host_share_one_context_loaded_once(
    tls_server: tuple[int, trustme.CA], monkeypatch: pytest.MonkeyPatch, trusted: bool, route: str
) -> None:
    """urllib3 loaded the CA bundle into a new context for each new connection (~55 ms of CPU no
    deadline stops): 200 new connections at once to a peer stalling the handshake ended up to 0.75 s
    past a 0.3 s deadline (40 ms with the context loaded once). Verification is unchanged: the
    session's bundle trusts this server, the default one (certifi) refuses it. On requests' own path
    too (a session with auth here): there, 32 threads' calls given 0.3 s ended up to 1.45 s late, 94
    of 128 more than 0.25 s late (a review)."""
    import urllib3.connection

    port, authority = tls_server
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    wrapped: list[tuple[object, object, object]] = []
    wrap = urllib3.connection._ssl_wrap_socket_and_match_hostname

    def recording(**kwargs: Any) -> Any:
        wrapped.append((kwargs["ca_certs"], kwargs["ca_cert_dir"], kwargs["ssl_context"]))
        return wrap(**kwargs)

    monkeypatch.setattr(urllib3.connection, "_ssl_wrap_socket_and_match_hostname", recording)
    url = f"https://127.0.0.1:{port}/"
    with authority.cert_pem.tempfile() as ca_file:
        session = requests.Session()
        if trusted:
            session.verify = ca_file
        if route != "direct":
            session.auth = ("user", "secret")
        transport = RequestsTransport(session)
        statuses = [
            transport.send(url, dar.get("x", headers={"Connection": "close"}), DEADLINE).status for _ in range(3)
        ]
        # the host name is still checked: the certificate is for 127.0.0.1 only
        assert transport.send(f"https://localhost:{port}/", dar.get("x"), DEADLINE).status == status.NETWORK_ERROR
        transport.close()
        wrapped.pop()  # localhost's own route and context
    assert statuses == ([200] * 3 if trusted else [status.NETWORK_ERROR] * 3)
    assert len(wrapped) == 3  # a new connection each
    assert all(ca_certs is None and ca_cert_dir is None for ca_certs, ca_cert_dir, _ in wrapped)  # nothing to load
    contexts = {id(context) for _, _, context in wrapped}
    assert len(contexts) == 1
    assert wrapped[0][2] is not None


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")  # verify=False, on purpose
@pytest.mark.parametrize("route", ["direct", "requests' own"])
def test_with_verify_false_new_tls_connections_share_one_context_that_loads_no_certificates(
    tls_server: tuple[int, trustme.CA], monkeypatch: pytest.MonkeyPatch, route: str
) -> None:
    """``verify=False``: urllib3 made each new connection a context and loaded the system's whole
    store into it (``load_default_certs``, 35-50 ms of CPU, for nothing it verifies): 200 async calls
    to a peer stalling the handshake ended up to 0.76 s past a 0.3 s deadline, 32 threads' up to
    0.41 s (a review; 43 ms and 3 ms with a CA file). One context for the host now, which loads
    nothing and verifies nothing: this server's certificate passes, under a name it does not carry too."""
    import urllib3.connection

    port, _ = tls_server
    loads: list[str] = []
    for name in ("load_default_certs", "load_verify_locations"):
        method = getattr(ssl.SSLContext, name)

        def counting(self: ssl.SSLContext, *args: Any, _name: str = name, _method: Any = method, **kwargs: Any) -> Any:
            loads.append(_name)
            return _method(self, *args, **kwargs)

        monkeypatch.setattr(ssl.SSLContext, name, counting)
    contexts: list[object] = []
    wrap = urllib3.connection._ssl_wrap_socket_and_match_hostname

    def recording(**kwargs: Any) -> Any:
        contexts.append(kwargs["ssl_context"])
        return wrap(**kwargs)

    monkeypatch.setattr(urllib3.connection, "_ssl_wrap_socket_and_match_hostname", recording)
    session = requests.Session()
    session.verify = False
    if route != "direct":
        session.auth = ("user", "secret")
    transport = RequestsTransport(session)
    try:
        statuses = [
            transport.send(url, dar.get("x", headers={"Connection": "close"}), DEADLINE).status
            for url in [f"https://127.0.0.1:{port}/"] * 3 + [f"https://localhost:{port}/"]
        ]
    finally:
        transport.close()
    assert statuses == [200] * 4
    assert loads == []
    assert len(contexts) == 4  # a new connection each
    assert contexts[0] is not None
    assert len({id(context) for context in contexts[:3]}) == 1  # one for the host


def lateness_of_timed_out_calls(transport: RequestsTransport, url: str, *, calls_each: int) -> list[float]:
    """32 threads started at once, each sending ``calls_each`` calls given 0.3 s that must time out:
    how late each ended."""
    start = threading.Barrier(32)
    late: list[float] = []

    def call() -> None:
        start.wait()
        for _ in range(calls_each):
            began = time.monotonic()
            assert transport.send(url, dar.get("x"), 0.3).status == status.TIMEOUT
            late.append(time.monotonic() - began - 0.3)

    threads = [threading.Thread(target=call) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10 * calls_each)
    return late


def test_a_burst_of_first_calls_to_a_host_plans_its_route_and_loads_its_certificates_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each of 32 threads calling a fresh transport's https host at once planned the host's route
    itself, each loading the CA bundle (~55 ms of CPU, before the deadline's guard exists): calls
    given 0.3 s ended 1.0 s (p50) to 2.5 s past it (benchmarks/tls_deadline.py, a fresh client). One
    thread plans a host's route now; the others wait for it and take it."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    planned: list[str] = []
    plan = direct_send.plan_route

    def counting(*args: Any, **kwargs: Any) -> Any:
        planned.append(args[2])
        return plan(*args, **kwargs)

    monkeypatch.setattr(direct_send, "plan_route", counting)
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)  # accepts, never answers the handshake
    url = f"https://127.0.0.1:{listener.getsockname()[1]}/"
    transport = RequestsTransport()
    try:
        late = lateness_of_timed_out_calls(transport, url, calls_each=1)
    finally:
        transport.close()
        listener.close()
    assert len(late) == 32
    assert planned == [url + "x"]  # once, by one of the threads
    assert max(late) < 0.5, sorted(late)[-5:]


@pytest.mark.parametrize("through", ["the host", "an http proxy"])
def test_a_burst_of_new_tls_connections_on_requests_own_path_loads_the_certificates_once(
    monkeypatch: pytest.MonkeyPatch, through: str
) -> None:
    """requests' own path (a session with auth here), directly and through an http:// proxy's CONNECT
    tunnel: urllib3 loaded the CA bundle for each new connection, and each of 32 threads' first calls
    for the first one: calls given 0.3 s to a peer stalling the handshake ended up to 1.45 s late
    (1.29 s through a proxy; a review). Loaded once now, by one thread; the calls end near their deadline."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    loads: list[object] = []
    load = ssl.SSLContext.load_verify_locations

    def counting(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> Any:
        loads.append(args or kwargs)
        return load(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counting)
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)  # accepts, never answers the handshake
    stop = threading.Event()
    session = requests.Session()
    session.auth = ("user", "secret")
    url = f"https://127.0.0.1:{listener.getsockname()[1]}/"
    if through != "the host":
        proxy = socket.create_server(("127.0.0.1", 0), backlog=128)  # says yes to each CONNECT, then nothing

        held: list[socket.socket] = []  # open until the test ends: the tunnel stays silent

        def tunnels() -> None:
            while not stop.is_set():
                try:
                    conn, _ = proxy.accept()
                except OSError:
                    return
                held.append(conn)
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")

        threading.Thread(target=tunnels, daemon=True).start()
        session.proxies = {"https": f"http://127.0.0.1:{proxy.getsockname()[1]}"}
        url = "https://service.example.test/"
    transport = RequestsTransport(session)
    try:
        late = lateness_of_timed_out_calls(transport, url, calls_each=3)  # each a new connection: the last timed out
    finally:
        stop.set()
        transport.close()
        listener.close()
        if through != "the host":
            proxy.close()
            for conn in held:
                conn.close()
    assert len(late) == 96
    assert len(loads) == 1, len(loads)
    assert max(late) < 0.25, sorted(late)[-5:]


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")  # verify=False, on purpose
@pytest.mark.parametrize("bundle", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_a_session_s_own_certificates_win_over_a_ca_bundle_variable(
    tls_server: tuple[int, trustme.CA], monkeypatch: pytest.MonkeyPatch, bundle: str
) -> None:
    """requests lets the variable replace the session's verify (psf/requests#3829): the call was a
    489 that the breaker counted. A session left at verify=True still takes the variable."""
    port, authority = tls_server
    url = f"https://127.0.0.1:{port}/"
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    with authority.cert_pem.tempfile() as ca_file:
        monkeypatch.setenv(bundle, "/etc/ssl/certs/ca-certificates.crt")  # the system's: refuses this server
        session = requests.Session()
        session.verify = ca_file
        own = RequestsTransport(session)
        assert (own.send(url, dar.get("x"), DEADLINE).status, _route(own, url) is not None) == (200, True)
        own.close()
        unverified = requests.Session()
        unverified.verify = False
        skipping = RequestsTransport(unverified)
        assert skipping.send(url, dar.get("x"), DEADLINE).status == 200
        skipping.close()
        monkeypatch.setenv(bundle, ca_file)
        default = RequestsTransport()  # verify=True: the variable's bundle, which trusts this server
        assert default.send(url, dar.get("x"), DEADLINE).status == 200
        default.close()


def _version_server(maximum: ssl.TLSVersion) -> Iterator[tuple[int, trustme.CA]]:
    """A TLS server that speaks up to ``maximum`` and answers with the version each connection speaks."""

    class Version(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = str(self.connection.version()).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    authority = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.maximum_version = maximum
    authority.issue_cert("127.0.0.1").configure_cert(context)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Version)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server.server_address[1], authority
    server.shutdown()


@pytest.fixture(scope="module")
def tls12_server() -> Iterator[tuple[int, trustme.CA]]:
    yield from _version_server(ssl.TLSVersion.TLSv1_2)


@pytest.fixture(scope="module")
def tls13_server() -> Iterator[tuple[int, trustme.CA]]:
    yield from _version_server(ssl.TLSVersion.TLSv1_3)


def _with_pool_options(verify: Any, **pool_options: Any) -> requests.Session:
    """A session whose plain ``https://`` adapter gives its pools ``pool_options``."""
    made = requests.Session()
    made.verify = verify
    adapter = HTTPAdapter()
    adapter.init_poolmanager(10, 10, **pool_options)
    made.mount("https://", adapter)
    return made


@pytest.mark.parametrize("pool_option", ["ssl_minimum_version", "ca_certs"])
def test_tls_options_a_plain_adapter_gives_its_pools_hold_on_the_direct_route(
    tls12_server: tuple[int, trustme.CA], monkeypatch: pytest.MonkeyPatch, pool_option: str
) -> None:
    """The direct route gives a host's pool one ready-made SSL context, which urllib3 takes as it is:
    a pool limited to TLS 1.3 spoke TLS 1.2 there, and a pool given its own ``ca_certs`` trusted them,
    where requests, which replaces them with certifi's bundle when ``verify`` is True, refuses the
    server. The same session then trusted one thing or another by the route a call took."""
    port, authority = tls12_server
    url = f"https://127.0.0.1:{port}/"
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    with authority.cert_pem.tempfile() as ca_file:

        def session() -> requests.Session:
            if pool_option == "ssl_minimum_version":
                return _with_pool_options(ca_file, ssl_minimum_version=ssl.TLSVersion.TLSv1_3)
            return _with_pool_options(True, ca_certs=ca_file)

        with pytest.raises(requests.exceptions.SSLError):
            session().get(url, timeout=5)
        transport = RequestsTransport(session())
        assert transport.send(url, dar.get("x"), DEADLINE).status == status.NETWORK_ERROR
        assert _route(transport, url) is not None  # on the direct route
        transport.close()


def _spoken_by_both_routes(url: str, make_session: Callable[[], requests.Session]) -> str:
    """The TLS version this test server names to plain requests, once the transport's direct route
    (a session ``make_session`` makes) was found to speak the same: answered 200, on the direct route."""
    plain = make_session().get(url, timeout=5).text
    transport = RequestsTransport(make_session())
    try:
        response = transport.send(url, dar.get("x"), DEADLINE)
        assert (response.status, response.read().decode(), _route(transport, url) is not None) == (200, plain, True)
    finally:
        transport.close()
    return plain


def test_a_pool_s_ca_directory_is_trusted_beside_certifi_as_requests_trusts_it(
    tls13_server: tuple[int, trustme.CA], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """requests replaces a pool's ``ca_certs`` with certifi's bundle but leaves its ``ca_cert_dir``:
    a server signed by a CA of that directory is trusted; the direct route dropped the directory (489)."""
    port, authority = tls13_server
    url = f"https://127.0.0.1:{port}/"
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    pem = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(pem))
    name = subprocess.run(
        ["openssl", "x509", "-hash", "-noout", "-in", str(pem)], capture_output=True, text=True, check=True
    ).stdout.strip()
    (tmp_path / f"{name}.0").write_bytes(pem.read_bytes())

    assert _spoken_by_both_routes(url, lambda: _with_pool_options(True, ca_cert_dir=str(tmp_path))) == "TLSv1.3"


def test_a_pool_s_tls_version_given_as_its_name_holds_on_the_direct_route(
    tls13_server: tuple[int, trustme.CA], monkeypatch: pytest.MonkeyPatch
) -> None:
    """urllib3 takes ``ssl_version`` as a constant or its name; the name was passed on as it was,
    and ignored: TLS 1.3 where requests spoke TLS 1.2."""
    port, authority = tls13_server
    url = f"https://127.0.0.1:{port}/"
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    with authority.cert_pem.tempfile() as ca_file, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ssl.PROTOCOL_TLSv1_2 is deprecated, and still taken
        assert (
            _spoken_by_both_routes(url, lambda: _with_pool_options(ca_file, ssl_version="PROTOCOL_TLSv1_2"))
            == "TLSv1.2"
        )


def test_a_pool_s_highest_tls_version_holds_on_the_direct_route(
    tls13_server: tuple[int, trustme.CA], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, authority = tls13_server
    url = f"https://127.0.0.1:{port}/"
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)  # it would replace the session's verify
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    with authority.cert_pem.tempfile() as ca_file:
        session = requests.Session()
        session.verify = ca_file
        adapter = HTTPAdapter()
        adapter.init_poolmanager(10, 10, ssl_maximum_version=ssl.TLSVersion.TLSv1_2)
        session.mount("https://", adapter)
        assert _spoken_by_both_routes(url, lambda: session) == "TLSv1.2"


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(answer=answers())
def test_any_answer_ends_as_the_same_response_on_both_paths(
    raw_server: RawAnswerServer,
    both_paths: tuple[RequestsTransport, RequestsTransport],
    answer: tuple[bytes, frozenset[str]],
) -> None:
    """The malformed answers of the response fuzz (tests/end_to_end/test_response_fuzz.py), each
    sent to both paths: the same status, body and headers."""
    raw_server.answer = answer[0]
    direct, through_requests = both_paths
    outcomes = []
    for transport in (direct, through_requests):
        response = transport.send(raw_server.url, dar.get("x", allow_redirects=False), 1.0)
        outcomes.append((response.status, response.read(), dict(response.headers)))
    direct_outcome, requests_outcome = outcomes
    if direct_outcome[0] == status.NETWORK_ERROR and requests_outcome[0] in REDIRECT_STATI:
        # A redirect that is not followed and whose body does not decode: requests' Session.send
        # reads a redirect's body itself and swallows the decoding error, so its path answers the
        # redirect with an empty body; the direct route answers it as any undecodable body (489).
        assert "redirect" in answer[1]
        assert requests_outcome[1] == b""
        return
    assert direct_outcome == requests_outcome


@pytest.fixture(scope="module")
def raw_server() -> Iterator[RawAnswerServer]:
    server = RawAnswerServer()
    yield server
    server.close()


def test_a_wrapper_installed_before_this_package_is_imported_is_seen(server: LoopbackServer) -> None:
    """As ``opentelemetry-instrument`` does at start-up: ``requests.Session.send`` is replaced by a
    ``functools.wraps`` wrapper (same name, same module) before django_aio_request is imported. A
    fresh interpreter, so the import really comes after the wrapper."""
    server.route("/x", lambda h: h.reply(200, b"ok"))
    script = f"""
import functools, requests
original = requests.Session.send
seen = []
@functools.wraps(original)
def traced(self, prepared, **kwargs):
    seen.append(prepared.url)
    return original(self, prepared, **kwargs)
requests.Session.send = traced
import django_aio_request as dar
from django_aio_request.transport.requests_transport import RequestsTransport
transport = RequestsTransport()
for _ in range(3):
    assert transport.send({server.url!r}, dar.get("x"), 5.0).status == 200
print(len(seen))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"


def test_long_urls_are_sent_whole_and_not_kept(recording: RecordingServer) -> None:
    """A URL longer than the cache takes is normalised on every call, not kept in memory."""
    transport = RequestsTransport()
    long_value = "v" * (direct_send.MAX_CACHED_URL * 2)
    before = direct_send._prepared_url.cache_info().currsize
    request = dar.get("long", query_parameters={"q": long_value})
    for _ in range(2):
        assert transport.send(recording.url, request, DEADLINE).status == 200
    assert recording.requests()[-1].startswith(f"GET /long?q={long_value} HTTP/1.1".encode())
    assert direct_send._prepared_url.cache_info().currsize == before
    transport.close()


def test_a_host_whose_route_is_slow_to_plan_holds_no_call_to_another_host(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planning is one thread at a time per host, not per transport: a CA bundle on a file system
    that hangs held the first call to every other host of the transport past its deadline (a
    review: a 0.5 s call answered after 5 s, when the file came back)."""
    server.route("/x", lambda handler: handler.reply(200, b"other host"))
    entered, release = threading.Event(), threading.Event()
    plan = direct_send.plan_route

    def hanging_for_one_host(session: Any, adapter: Any, url: str, settings: Any) -> Any:
        if "hanging.invalid" in url:
            entered.set()
            release.wait(10)
        return plan(session, adapter, url, settings)

    monkeypatch.setattr(direct_send, "plan_route", hanging_for_one_host)
    transport = RequestsTransport()
    stuck = threading.Thread(target=transport.send, args=("http://hanging.invalid/", dar.get("x"), 1.0))
    stuck.start()
    try:
        assert entered.wait(5)
        began = time.monotonic()
        answer = transport.send(server.url, dar.get("x"), 0.5)
        elapsed = time.monotonic() - began
    finally:
        release.set()
        stuck.join(10)
        transport.close()
    assert (answer.status, answer.read()) == (200, b"other host")
    assert elapsed < 0.4


_ENCRYPTED_KEY_CALL = """
import sys, time, socket, trustme, requests
from cryptography.hazmat.primitives import serialization
import django_aio_request as dar

ca = trustme.CA()
client = ca.issue_cert("client@example")
folder = sys.argv[1]
with open(folder + "/client.pem", "wb") as f:
    f.write(client.cert_chain_pems[0].bytes())
key = serialization.load_pem_private_key(client.private_key_pem.bytes(), None)
with open(folder + "/key.pem", "wb") as f:
    f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.BestAvailableEncryption(b"s3cret")))
listener = socket.create_server(("127.0.0.1", 0))  # accepts, never answers the handshake
if sys.argv[2] == "combined":  # one file, one path: requests supports it
    with open(folder + "/client.pem", "ab") as f, open(folder + "/key.pem", "rb") as key_file:
        f.write(key_file.read())
session = requests.Session()
session.cert = (folder + "/client.pem", folder + "/key.pem") if sys.argv[2] == "apart" else folder + "/client.pem"
session.verify = sys.argv[3] == "verify"
if sys.argv[4] != "direct":
    session.auth = ("user", "secret")  # requests' own path
transport = dar.RequestsTransport(session)
started = time.monotonic()
status = transport.send(f"https://127.0.0.1:{listener.getsockname()[1]}/", dar.get("x"), 1.0).status
print(f"status {status} in {time.monotonic() - started:.2f} s", flush=True)
"""


@pytest.mark.parametrize(
    ("verify", "route"),
    [("verify", "direct"), ("no-verify", "direct"), ("verify", "requests-own"), ("no-verify", "requests-own")],
)
@pytest.mark.parametrize("key", ["apart", "combined"])
def test_an_encrypted_client_key_given_no_password_fails_at_once_and_prompts_nothing(
    tmp_path: Any, key: str, verify: str, route: str
) -> None:
    """requests raises SSLError at once for an encrypted key file given no password. The direct route
    loaded it into its shared context with no password, and OpenSSL prompted "Enter PEM pass
    phrase:" on the process's terminal: a worker in the foreground, or runserver, blocked on it past
    the call's deadline; left to urllib3, a key inside the certificate's file prompted all the same
    (plain requests too). Run under a terminal (``script``, util-linux) for OpenSSL to find one."""
    import shlex
    import shutil

    script = shutil.which("script")
    assert script is not None, "script (util-linux) is needed: Debian's bsdutils, which every install has"
    arguments = f"{shlex.quote(str(tmp_path))} {key} {verify} {route}"
    command = f"{shlex.quote(sys.executable)} -c {shlex.quote(_ENCRYPTED_KEY_CALL)} {arguments}"
    done = subprocess.run(
        [script, "-qec", command, "/dev/null"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=20,  # before: blocked on the prompt until killed
        check=False,
    )
    assert "pass phrase" not in done.stdout, done.stdout
    assert "status 489 in 0." in done.stdout, done.stdout + done.stderr
    assert "ValueError" not in done.stdout  # refused for its key, not for a context urllib3 cannot set up
