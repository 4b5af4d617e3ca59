"""A kept-alive connection the server closes as the next request goes out on it (the stale-connection
race): an idempotent request is sent again once on a fresh connection; a POST is not."""

import concurrent.futures
import hashlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests

import django_aio_request as dar
from benchmarks._shedding_load import BIN, ROOT
from django_aio_request import Client, Deadline, delete, get, post, put
from django_aio_request.core import status
from django_aio_request.core.deadline import client_low_timeout_threshold
from django_aio_request.core.request import Request
from django_aio_request.transport.requests_transport import RequestsTransport
from tests.support.gunicorn_releases import folder
from tests.support.loopback import clients, free_port, wait_until_listening
from tests.support.raw_server import KeepAliveClosingServer, RawAnswerServer, request_heads

ROUTES = ["direct", "requests"]  # the transport's own route, and requests' (a session with auth)


def second_request_of_each_connection(what: str) -> Callable[[int, int], str | None]:
    return lambda _connection, number: what if number == 2 else None


@pytest.fixture
def make_server() -> Iterator[Callable[[Callable[[int, int], str | None]], KeepAliveClosingServer]]:
    made: list[KeepAliveClosingServer] = []

    def make(plan: Callable[[int, int], str | None], status_line: bytes = b"200 OK") -> KeepAliveClosingServer:
        made.append(KeepAliveClosingServer(plan, status_line))
        return made[-1]

    yield make
    for server in made:
        server.close()


def transport_for(route: str) -> RequestsTransport:
    session = requests.Session()
    if route == "requests":
        session.auth = ("u", "p")  # takes requests' own path
    return RequestsTransport(session)


def two_calls(server: KeepAliveClosingServer, second: Request, route: str, timeout: float = 5.0) -> dar.Response:
    """A GET that leaves its connection in the pool, then ``second`` on that connection."""
    transport = transport_for(route)
    try:
        first = transport.send(server.url, get("x"), timeout)
        assert (first.status, first.read()) == (200, b"ok")
        response = transport.send(server.url, second, timeout)
        response.read()
        return response
    finally:
        transport.close()


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("what", ["reset", "read_and_close"])
@pytest.mark.parametrize("second", [get("x"), put("x", b"{}"), delete("x")], ids=["GET", "PUT", "DELETE"])
def test_an_idempotent_request_on_a_connection_the_server_closed_is_sent_again_on_a_fresh_one(
    make_server: Callable[..., KeepAliveClosingServer], what: str, second: Request, route: str
) -> None:
    # It was a 489, retried by the strategies as a failure, counted against the endpoint by the breaker.
    server = make_server(second_request_of_each_connection(what))

    response = two_calls(server, second, route)

    assert (response.status, response.read()) == (200, b"ok")
    assert server.connections == 2  # sent again once, on a new connection
    assert server.requests_read == (
        3 if what == "read_and_close" else 2
    )  # the first call, and the second once or twice


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("what", ["reset", "read_and_close"])
def test_a_post_on_a_connection_the_server_closed_is_not_sent_again(
    make_server: Callable[..., KeepAliveClosingServer], what: str, route: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The server may have read it and acted on it (read_and_close): sent again, it would be twice.
    server = make_server(second_request_of_each_connection(what))

    response = two_calls(server, post("x", b"charge"), route)

    assert response.status == status.NETWORK_ERROR
    assert "StaleConnection: the server closed the kept-alive connection" in caplog.text  # not a bare ProtocolError
    assert server.connections == 1
    assert server.requests_read == (2 if what == "read_and_close" else 1)


def test_a_request_on_a_new_connection_that_ends_unanswered_is_not_sent_again(
    make_server: Callable[..., KeepAliveClosingServer],
) -> None:
    server = make_server(lambda _connection, number: "reset" if number == 1 else None)
    transport = transport_for("direct")
    try:
        response = transport.send(server.url, get("x"), 5.0)
    finally:
        transport.close()

    assert response.status == status.NETWORK_ERROR
    assert server.connections == 1


@pytest.mark.parametrize("interim", ["100_and_close", "103_and_close"])
def test_a_request_the_server_sent_an_interim_response_for_is_not_sent_again(
    make_server: Callable[..., KeepAliveClosingServer], interim: str
) -> None:
    # After a 100 Continue, http.client reads the next status line in a new call: the connection's end
    # then passed for "nothing received", and a GET the server had answered 100 went out again.
    server = make_server(second_request_of_each_connection(interim))

    response = two_calls(server, get("x"), "direct")

    assert response.status == status.NETWORK_ERROR
    assert server.connections == 1
    assert server.requests_read == 2


def test_a_request_sent_again_is_sent_once_only(make_server: Callable[..., KeepAliveClosingServer]) -> None:
    # The fresh connection's answer is cut too: its 489 stands, and nothing goes a third time.
    server = make_server(lambda connection, number: "reset" if (connection, number) in {(1, 2), (2, 1)} else None)

    response = two_calls(server, get("x"), "direct")

    assert response.status == status.NETWORK_ERROR
    assert server.connections == 2


def test_a_request_sent_again_is_still_bounded_by_the_deadline(
    make_server: Callable[..., KeepAliveClosingServer],
) -> None:
    server = make_server(
        lambda connection, number: "reset" if (connection, number) == (1, 2) else "hang" * (connection == 2)
    )
    transport = transport_for("direct")
    try:
        assert transport.send(server.url, get("x"), 5.0).status == 200
        started = time.monotonic()
        response = transport.send(server.url, get("x"), 0.5)
        elapsed = time.monotonic() - started
    finally:
        transport.close()

    assert response.status == status.TIMEOUT
    assert 0.5 <= elapsed < 0.5 + 0.2
    assert server.connections == 2


def test_no_request_goes_again_with_less_time_left_than_the_client_sends_attempts_with(
    make_server: Callable[..., KeepAliveClosingServer],
) -> None:
    # Sent again regardless, requests went out with X-Request-Timeout 0.000 (answered 408 at once by a
    # server running this app), and one found just past the deadline was a 489: a failure.
    server = make_server(second_request_of_each_connection("read_and_close_late"))
    transport = transport_for("direct")
    threshold = client_low_timeout_threshold.set(0.1)  # as a client's call sets it
    try:
        assert transport.send(server.url, get("x"), 5.0).status == 200
        response = transport.send(server.url, get("x"), 0.3)  # closed unanswered 0.25 s in: 0.05 s left
    finally:
        client_low_timeout_threshold.reset(threshold)
        transport.close()

    assert response.status == status.TIMEOUT
    assert server.connections == 1
    assert server.requests_read == 2


def test_the_race_on_every_call_opens_no_circuit(
    make_server: Callable[..., KeepAliveClosingServer],
) -> None:
    # Worst case: every connection is closed as its second request arrives, so every call but the
    # first meets the race. As 489s, 5 of 10 failed attempts opened this breaker on a healthy server.
    server = make_server(second_request_of_each_connection("reset"))
    with clients(server.url) as make:
        client: Client = make(
            safe_method_strategy=dar.single_attempt_strategy(),
            circuit_breaker=dar.DefaultCircuitBreaker(
                break_duration=60, sampling_duration=10, minimum_throughput=2, failure_threshold=0.5
            ),
        )
        answers = []
        for _ in range(10):
            with client.request(get("x"), deadline=Deadline.from_timeout(5)) as response:
                answers.append((response.status, response.read()))

    assert answers == [(200, b"ok")] * 10
    assert server.connections == 10


@pytest.mark.parametrize("strategy", ["sequential", "single"])
def test_a_request_sent_again_is_paid_for_by_the_retry_budget(
    make_server: Callable[..., KeepAliveClosingServer], strategy: str
) -> None:
    """A failing server that closes each kept-alive connection unanswered once it read the request:
    every attempt but those on a fresh connection went twice, below the strategy, and the retry budget
    never saw it: 2.6 requests a call with 3 sequential attempts where docs/budgets-and-shedding.md
    promises at most RATIO x calls + the floor over the calls (2.0 with single attempts)."""
    server = make_server(lambda _connection, number: "read_and_close" if number >= 2 else None, b"500 Oops")
    calls, budget = 200, dar.RetryBudget(ratio=0.2, min_per_second=1.0, window_seconds=10.0)
    made = (
        dar.sequential_strategy(attempts_count=3, delays_provider=dar.constant_delays(delay=0.0))
        if strategy == "sequential"
        else dar.single_attempt_strategy()
    )
    with clients(server.url) as make:
        client: Client = make(safe_method_strategy=made, retry_budget=budget)
        statuses = set()
        for _ in range(calls):
            with client.request(get("x"), deadline=Deadline.from_timeout(5)) as response:
                statuses.add(response.status)

    assert statuses <= {500, status.NETWORK_ERROR}
    # Every request but a call's first is an extra one: at most 20% of the calls, plus the floor of
    # 10 for each of the (at most 2) windows the run spans.
    assert server.requests_read <= calls + 0.2 * calls + 2 * 10, server.requests_read
    assert budget.refused > 0


class DigestServer(KeepAliveClosingServer):
    """A keep-alive HTTP/1.1 server behind Digest auth (user ``u``, password ``p``): 401 with a
    challenge (a nonce of its own for each connection) to a request without a valid Authorization,
    200 ``ok`` to one with it. The first connection plays the stale-connection race on the auth's
    resend, its second request (``what``: as :class:`KeepAliveClosingServer` does), or closes right
    after its 401 (``"close_after_401"``, without ``Connection: close``)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.answered: list[tuple[int, int]] = []  # (connection, status) of each answer
        self.nonces: set[str] = set()
        race = what if what != "close_after_401" else None
        super().__init__(lambda connection, number: race if (connection, number) == (1, 2) else None)

    def _authorized(self, head: bytes) -> bool:
        lines = head.decode("latin-1").split("\r\n")
        method, uri = lines[0].split(" ")[:2]
        fields = dict(line.split(": ", 1) for line in lines[1:])
        header = fields.get("Authorization", "")
        if not header.startswith("Digest "):
            return False
        got = requests.utils.parse_dict_header(header[len("Digest ") :])  # type: ignore[no-untyped-call]

        def md5(text: str) -> str:
            return hashlib.md5(text.encode()).hexdigest()  # Digest's own hash

        expected = md5(f"{md5('u:r:p')}:{got['nonce']}:{got['nc']}:{got['cnonce']}:auth:{md5(f'{method}:{uri}')}")
        return got["nonce"] in self.nonces and got["uri"] == uri and got["response"] == expected

    def respond(self, conn: socket.socket, connection: int, head: bytes) -> bool:
        with self._lock:
            nonce = f"nonce{connection}"
            self.nonces.add(nonce)
        if self._authorized(head):
            self.answered.append((connection, 200))
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            return True
        self.answered.append((connection, 401))
        challenge = f'WWW-Authenticate: Digest realm="r", nonce="{nonce}", qop="auth"'.encode()
        conn.sendall(b"HTTP/1.1 401 Unauthorized\r\n" + challenge + b"\r\nContent-Length: 0\r\n\r\n")
        return not (connection == 1 and self.what == "close_after_401")


def call_with_digest(server: DigestServer, request: Request) -> dar.Response:
    session = requests.Session()
    session.auth = requests.auth.HTTPDigestAuth("u", "p")  # requests' own path, its hook answers the 401
    transport = RequestsTransport(session)
    try:
        response = transport.send(server.url, request, 5.0)
        response.read()
        return response
    finally:
        transport.close()
        server.close()


@pytest.mark.parametrize("what", ["reset", "read_and_close", "close_after_401"])
@pytest.mark.parametrize("second", [get("x"), put("x", b"{}"), delete("x")], ids=["GET", "PUT", "DELETE"])
def test_a_digest_auth_s_resend_on_a_connection_the_server_closed_is_sent_again_and_answered(
    what: str, second: Request
) -> None:
    """The server answered the Digest challenge's 401 on a kept-alive connection and closed it as the
    auth's resend went out on it. The request went again on a fresh connection, but HTTPDigestAuth
    (its per-thread ``num_401_calls``) still counted the first 401 and returned the fresh
    connection's challenge as the answer: a 401 for a network blip, where plain requests raises
    ConnectionError. Sent again, the exchange starts afresh: challenged anew, answered, 200."""
    server = DigestServer(what)

    response = call_with_digest(server, second)

    assert (response.status, response.read()) == (200, b"ok")
    assert server.answered[0] == (1, 401)
    assert server.answered[-2:] == [(server.answered[-2][0], 401), (server.answered[-1][0], 200)]
    if what != "close_after_401":  # (there urllib3 may see the closed connection first: no race)
        # The challenge and its answer on the one fresh connection: the auth's resend went on a third.
        assert server.answered[-2:] == [(2, 401), (2, 200)]
        assert server.connections == 2


@pytest.mark.parametrize("what", ["reset", "read_and_close"])
def test_a_digest_auth_s_post_on_a_connection_the_server_closed_is_not_sent_again(
    what: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A POST: the server may have read the auth's resend and acted on it, so it is not sent again
    (docs/faults.md, the stale-connection row): a 489, not the server's 401."""
    server = DigestServer(what)

    response = call_with_digest(server, post("x", b"charge"))

    assert response.status == status.NETWORK_ERROR
    assert "StaleConnection: the server closed the kept-alive connection" in caplog.text
    assert server.connections == 1
    assert server.answered == [(1, 401)]
    assert server.requests_read == (2 if what == "read_and_close" else 1)


@pytest.mark.parametrize("route", ROUTES)
def test_a_request_sent_again_leaves_no_garbage(make_server: Callable[..., KeepAliveClosingServer], route: str) -> None:
    """On requests' path the request sent again was wrapped a second time in the hooks of its first
    try: the first try's answer collector, emptied when that try ended, filled again and held the
    answers in a cycle (the answers hold the request, which holds its hooks) until the collector ran."""
    from tests.transport.test_reference_cycles import collector_off, ours

    server = make_server(second_request_of_each_connection("reset"))
    two_calls(server, get("x"), route)  # the transport and its pools made, outside the measured block
    with collector_off() as garbage:
        response = two_calls(server, get("x"), route)
        assert (response.status, response.read()) == (200, b"ok")
        del response
    assert ours(garbage) == []


def test_the_answer_to_a_request_sent_again_is_seen_waiting_unread(
    make_server: Callable[..., KeepAliveClosingServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hedge asks whether attempt 0's answer waits unread (then it does not go). After the request
    went again, the stale connection's closed socket stayed registered with the attempt, and the
    answer on the fresh one was never seen: unknown, where the same answer without the resend said so."""
    from django_aio_request.core.cancellation import Cancellation
    from django_aio_request.transport.attempt_sockets import GuardedHTTPConnection

    server = make_server(second_request_of_each_connection("reset"))
    transport = transport_for("direct")
    first = transport.send(server.url, get("x"), 5.0)
    assert first.read() == b"ok"
    read, caller = GuardedHTTPConnection.getresponse, threading.get_ident()

    def slow_to_read(conn: GuardedHTTPConnection) -> object:
        if threading.get_ident() == caller and conn._aio_request_requests == 1:  # the fresh connection's
            time.sleep(0.3)
        return read(conn)

    monkeypatch.setattr(GuardedHTTPConnection, "getresponse", slow_to_read)
    cancellation, seen = Cancellation(), []
    looker = threading.Timer(0.15, lambda: seen.append(cancellation.answer_arrived()))
    looker.start()
    try:
        response = transport.send(server.url, get("x"), 5.0, cancellation)
    finally:
        looker.join()
        transport.close()
    assert (response.status, response.read()) == (200, b"ok")
    assert server.connections == 2  # sent again
    assert seen == [True]


class StrayBytesServer(RawAnswerServer):
    """A keep-alive server that answers ``/stray`` with ``200 ok`` and, a moment later on the same
    connection, ``stray`` bytes (more than its ``Content-Length`` said); a ``HEAD`` with a head that
    announces ``stray`` as its body and then sends it (gunicorn 23.0 does, for a view that streams one
    or a redirect's page); every other request with ``200 ok``, after what it sent before."""

    def __init__(self, stray: bytes) -> None:
        self.stray = stray
        self.requests_read = 0
        super().__init__()

    def _converse(self, conn: socket.socket, answer: bytes) -> None:
        for head in request_heads(conn, 5.0):
            with self._lock:
                self.requests_read += 1
            if head.startswith(b"HEAD "):
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(self.stray))
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            if head.startswith((b"HEAD ", b"GET /stray ")):
                time.sleep(0.05)  # after the client read the answer and gave the connection back
                conn.sendall(self.stray)


STRAY = {"a short body": b"hello world", "a body past the status line's 64 KiB": b"x" * 70_000}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("stray", list(STRAY.values()), ids=list(STRAY))
def test_a_get_after_bytes_of_an_earlier_answer_on_its_connection_is_sent_again_on_a_fresh_one(
    stray: bytes, route: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The call after read the bytes as its own answer's status line: a 489 (and past 64 KiB one
    marked not to be retried, X-Response-Too-Large). Found by review against gunicorn 23.0.0."""
    server = StrayBytesServer(stray)
    transport = transport_for(route)
    caplog.set_level("DEBUG", logger="django_aio_request")
    try:
        first = transport.send(server.url, get("stray"), 5.0)
        assert (first.status, first.read()) == (200, b"ok")
        response = transport.send(server.url, get("y"), 5.0)
        assert (response.status, response.read()) == (200, b"ok")
        assert "X-Response-Too-Large" not in response.headers
    finally:
        transport.close()
        server.close()
    assert server.connections == 2  # sent again once, on a new connection
    assert "no status line (the rest of an earlier answer); sent again on a fresh one" in caplog.text


@pytest.mark.parametrize("route", ROUTES)
def test_a_post_after_bytes_of_an_earlier_answer_on_its_connection_is_not_sent_again(
    route: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The server read it (it answers it after the stray bytes): sent again, it would act twice."""
    server = StrayBytesServer(b"hello world")
    transport = transport_for(route)
    try:
        transport.send(server.url, get("stray"), 5.0).read()
        response = transport.send(server.url, post("y", b"charge"), 5.0)
        assert response.status == status.NETWORK_ERROR
    finally:
        transport.close()
        server.close()
    assert server.connections == 1
    assert server.requests_read == 2
    assert "OutOfStep: what came first on the kept-alive connection was no status line" in caplog.text


class SecondAnswerServer(RawAnswerServer):
    """A keep-alive server that answers a connection's first request with ``200 ok`` and every later
    one with ``later``."""

    def __init__(self, later: bytes) -> None:
        self.later = later
        self.requests_read = 0
        super().__init__()

    def _converse(self, conn: socket.socket, answer: bytes) -> None:
        for number, _ in enumerate(request_heads(conn, 5.0)):
            with self._lock:
                self.requests_read += 1
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" if number == 0 else self.later)


@pytest.mark.parametrize("route", ROUTES)
def test_a_malformed_status_line_on_a_kept_alive_connection_is_the_server_s_answer_not_sent_again(route: str) -> None:
    """A first line that starts as a status line is the server's own answer, malformed (a 489 at once),
    not bytes of an earlier one: sent again it was a second request and a log blaming the wrong thing."""
    server = SecondAnswerServer(b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok")
    response = two_calls(server, get("x"), route)  # type: ignore[arg-type]
    server.close()
    assert response.status == status.NETWORK_ERROR
    assert (server.connections, server.requests_read) == (1, 2)


class StrayRedirectServer(StrayBytesServer):
    """As :class:`StrayBytesServer`, and ``/redirect`` answered with a 302 to ``/y`` followed, a
    moment later, by the stray bytes: its hop, on the same connection, reads them first."""

    def _converse(self, conn: socket.socket, answer: bytes) -> None:
        for head in request_heads(conn, 5.0):
            with self._lock:
                self.requests_read += 1
            if head.startswith(b"GET /redirect "):
                conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: /y\r\nContent-Length: 0\r\n\r\n")
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            if head.startswith((b"GET /stray ", b"GET /redirect ")):
                time.sleep(0.05)
                conn.sendall(self.stray)


def test_a_request_out_of_step_again_after_it_was_sent_again_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """Once per attempt: its redirect's hop out of step on the fresh connection too is a 489, and the
    log said "not sent again" of a request the server had received twice (review)."""
    server = StrayRedirectServer(b"hello world")
    transport = transport_for("direct")
    try:
        transport.send(server.url, get("stray"), 5.0).read()
        response = transport.send(server.url, get("redirect"), 5.0)
        assert response.status == status.NETWORK_ERROR
    finally:
        transport.close()
        server.close()
    assert "no status line (the rest of an earlier answer), after it was sent again once" in caplog.text
    assert "not sent again" not in caplog.text


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("stray", "connections"), [(b"hello world", 2), (b"", 1)], ids=["a body", "none"])
def test_the_request_after_a_head_whose_answer_announces_a_body_goes_on_a_connection_of_its_own(
    stray: bytes, connections: int, route: str
) -> None:
    """A POST after a HEAD whose server then sent the body read it as its answer: a 489 for a request
    the server had acted on (40-93 of 1,200 against gunicorn 23.0.0, review). A HEAD answered with
    Content-Length: 0 announces nothing: its connection is kept."""
    server = StrayBytesServer(stray)
    transport = transport_for(route)
    try:
        head = transport.send(server.url, dar.request("HEAD", "x"), 5.0)
        assert (head.status, head.read()) == (200, b"")
        response = transport.send(server.url, post("y", b"charge"), 5.0)
        assert (response.status, response.read()) == (200, b"ok")
    finally:
        transport.close()
        server.close()
    assert server.connections == connections
    assert server.requests_read == 2


@pytest.mark.timeout(60)
def test_calls_after_heads_that_gunicorn_23_answers_with_a_body_each_get_their_own_answer() -> None:
    """What users run: gunicorn 23.0.0 sends the body with its answer to HEAD (24.1 and later do
    not), a redirect's page too. Before, 53-64 of 1,000 GETs and 40-93 of 1,200 POSTs that followed a
    HEAD on 4 threads got a 489, and 63 of 600 HEADs that followed a redirect (reviews)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder("23.0.0")), str(ROOT)])}
    command = [str(BIN / "gunicorn"), "-k", "gthread", "--threads", "4", "--bind", f"127.0.0.1:{port}",
               "--log-level", "warning", "tests.support.head_body_app:wsgi"]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    client = dar.setup(
        endpoint=f"http://127.0.0.1:{port}/", timeout=5, safe_method_strategy=dar.single_attempt_strategy()
    )
    wrong: list[tuple[int, bytes]] = []

    def pairs(thread: int) -> None:
        for number in range(150):
            with client.request(dar.request("HEAD", ("head", "redirect")[number % 2])) as response:
                assert (response.status, response.read()) == (200, b"")
            call = (get, post)[number // 2 % 2]  # GET and POST after each kind of HEAD
            with client.request(call(f"ok/{thread}/{number}")) as response:
                body = response.read()
                if (response.status, body) != (200, f"answer for /ok/{thread}/{number}".encode()):
                    wrong.append((response.status, body[:40]))

    try:
        wait_until_listening(process, port, "gunicorn")
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(pairs, range(4)))  # a HEAD's own answer that was not a 200 raises here
    finally:
        client.close()
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert wrong == []
