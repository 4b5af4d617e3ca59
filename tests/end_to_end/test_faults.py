"""The fault matrix (docs/faults.md) on real sockets, through a client with a circuit breaker.

For every fault: the call ends by its deadline, its outcome is the documented status (or exception),
the breaker counts it as docs/usage.md says (408, 429, 489 and 5xx are failures; everything else,
488 and a 489 carrying ``X-Do-Not-Retry`` included, is a success), and no thread or file descriptor
is left behind. Outcomes already covered in detail elsewhere (test_transport*.py) are checked here
only for what those tests do not: the deadline, the breaker and leaks, on the whole client.
"""

import contextlib
import gzip
import json
import socket
import ssl
import statistics
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

import django_aio_request as dar
from django_aio_request.core import status
from django_aio_request.transport.deadline_timer import deadline_timer
from django_aio_request.transport.requests_transport import (
    DEFAULT_MAX_RESPONSE_SIZE,
    X_RESPONSE_TOO_LARGE,
    X_UNREADABLE_CODING,
    _is_timeout,
)
from tests.support import loopback
from tests.support.loopback import LoopbackServer, free_port
from tests.support.resources import eventually, open_fds

DEADLINE = 0.5
#: How far past its deadline a call may end on a busy two-core machine.
SLACK = 0.25
#: Threads and descriptors a test may leave above where it started (none expected; a little noise).
LEAK_BOUND = 2

FAILURE = (1, 0)
SUCCESS = (0, 1)


@pytest.fixture(scope="module", autouse=True)
def _warm_up() -> None:
    """One call before the first measurement, so process-wide threads (the deadline timer) already run."""
    server = LoopbackServer()
    server.route("/ok", lambda h: h.reply(200, b"ok"))
    client = dar.setup(endpoint=server.url, metrics=False)
    with client.request(dar.get("ok")) as response:
        assert response.status == 200
    client.close()
    server.close()


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fails the test if threads or open descriptors stay above where they were at its start."""
    threads, fds = threading.active_count(), open_fds()
    yield
    assert eventually(lambda: threading.active_count() <= threads + LEAK_BOUND), (
        f"threads: {threads} before, {threading.active_count()} after: {threading.enumerate()}"
    )
    assert eventually(lambda: open_fds() <= fds + LEAK_BOUND), f"descriptors: {fds} before, {open_fds()} after"


class RawServer:
    """A TCP server on 127.0.0.1 that runs ``handle(conn)`` for every connection, speaking no HTTP of
    its own; ``close()`` stops it and every connection thread."""

    def __init__(self, handle: Callable[[socket.socket], None]) -> None:
        self._handle = handle
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(5)
            self._handle(conn)

    def close(self) -> None:
        self.stop.set()
        self._accepter.join()
        for thread in self._threads:
            thread.join(10)
        self._listener.close()


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[socket.socket], None]], RawServer]]:
    made: list[RawServer] = []

    def make(handle: Callable[[socket.socket], None]) -> RawServer:
        made.append(RawServer(handle))
        return made[-1]

    yield make
    for server in made:
        server.close()


def _read_request(conn: socket.socket) -> bytes:
    """The request's head (what was read of it, if the client closed first)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _reset(conn: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a RST, not a FIN."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def send_then(data: bytes, *, reset: bool) -> Callable[[socket.socket], None]:
    def handle(conn: socket.socket) -> None:
        _read_request(conn)
        conn.sendall(data)
        time.sleep(0.05)  # let the bytes arrive before the reset, so it really comes mid-response
        if reset:
            _reset(conn)

    return handle


@contextlib.contextmanager
def breaker_client(
    endpoint: str, transport: dar.RequestsTransport | None = None
) -> Iterator[tuple[dar.Client, dar.DefaultCircuitBreaker[str, dar.Response]]]:
    """A client making one attempt per call, with a breaker that never opens during a test."""
    breaker: dar.DefaultCircuitBreaker[str, dar.Response] = dar.DefaultCircuitBreaker(
        break_duration=5, sampling_duration=10, minimum_throughput=1_000, failure_threshold=0.5
    )
    client = dar.setup(
        endpoint=endpoint,
        transport=transport,
        safe_method_strategy=dar.single_attempt_strategy(),
        circuit_breaker=breaker,
        metrics=False,
    )
    try:
        yield client, breaker
    finally:
        client.close()


def call(
    endpoint: str,
    path: str = "x",
    *,
    deadline: float = DEADLINE,
    transport: dar.RequestsTransport | None = None,
    read: Callable[[dar.Response], object] | None = None,
) -> tuple[dar.Response, tuple[int, int]]:
    """One GET through a breaker client; checks it ended by its deadline. Returns the response and
    the breaker's (failures, successes) for the endpoint afterwards."""
    with breaker_client(endpoint, transport) as (client, breaker):
        started = time.monotonic()
        with client.request(dar.get(path), deadline=dar.Deadline.from_timeout(deadline)) as response:
            if read is not None:
                read(response)
        elapsed = time.monotonic() - started
        assert elapsed < deadline + SLACK, f"the call took {elapsed:.3f}s, its deadline was {deadline}s"
        return response, breaker.counts(endpoint)


# --- the matrix -----------------------------------------------------------------------------------------------


def test_connection_refused(no_leaks: None) -> None:
    response, counts = call(f"http://127.0.0.1:{free_port()}/")
    assert response.status == status.NETWORK_ERROR
    assert counts == FAILURE


def test_unresolvable_host(no_leaks: None) -> None:
    # .invalid never resolves (RFC 6761); the resolver fails locally, at once, without traffic.
    # Name resolution is NOT bounded by the deadline (getaddrinfo runs before any socket timeout):
    # a resolver that hangs would hold the call; this test checks only that failing is fast here.
    response, counts = call("http://nothing.invalid/")
    assert response.status == status.NETWORK_ERROR
    assert counts == FAILURE


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A port whose accept queue is full: a connect to it hangs."""
    with loopback.full_backlog() as listener:
        yield listener.getsockname()[1]


def test_connect_timeout(full_backlog: int, no_leaks: None) -> None:
    started = time.monotonic()
    response, counts = call(f"http://127.0.0.1:{full_backlog}/", deadline=0.3)
    assert response.status == status.TIMEOUT
    assert time.monotonic() - started >= 0.25, "the connect did not hang: the backlog was not full"
    assert counts == FAILURE


def test_reset_mid_headers(raw_server: Callable[..., RawServer], no_leaks: None) -> None:
    server = raw_server(send_then(b"HTTP/1.1 200 OK\r\nContent-Le", reset=True))
    response, counts = call(server.url)
    assert response.status == status.NETWORK_ERROR
    assert counts == FAILURE


def test_reset_mid_body(raw_server: Callable[..., RawServer], no_leaks: None) -> None:
    server = raw_server(send_then(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100, reset=True))
    response, counts = call(server.url)
    assert response.status == status.NETWORK_ERROR
    assert counts == FAILURE


def test_close_after_part_of_the_body(raw_server: Callable[..., RawServer], no_leaks: None) -> None:
    server = raw_server(send_then(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100, reset=False))
    response, counts = call(server.url)
    assert response.status == status.NETWORK_ERROR
    assert counts == FAILURE


def test_close_after_part_of_a_chunked_body(raw_server: Callable[..., RawServer], no_leaks: None) -> None:
    server = raw_server(
        send_then(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n10\r\nabc", reset=False)
    )
    response, counts = call(server.url)
    assert response.status == status.NETWORK_ERROR
    assert counts == FAILURE


def _trickle(conn: socket.socket, stop: threading.Event) -> None:
    _read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    while not stop.wait(0.05):
        conn.sendall(b"x")


def test_trickling_body(raw_server: Callable[..., RawServer], no_leaks: None) -> None:
    holder: list[RawServer] = []
    server = raw_server(lambda conn: _trickle(conn, holder[0].stop))
    holder.append(server)
    response, counts = call(server.url, deadline=0.3)
    assert response.status == status.TIMEOUT
    assert counts == FAILURE


def _trickle_headers(conn: socket.socket, stop: threading.Event) -> None:
    _read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    while not stop.wait(0.05):
        conn.sendall(b"X: y\r\n")


def test_trickling_headers(raw_server: Callable[..., RawServer], no_leaks: None) -> None:
    holder: list[RawServer] = []
    server = raw_server(lambda conn: _trickle_headers(conn, holder[0].stop))
    holder.append(server)
    response, counts = call(server.url, deadline=0.3)
    # http.client gives up after 100 headers (about 5 s here), so the deadline ends it first.
    assert response.status == status.TIMEOUT
    assert counts == FAILURE


def _flood(conn: socket.socket, head: bytes, piece: bytes, stop: threading.Event) -> None:
    """Sends ``head``, then ``piece`` again and again as fast as the connection takes it."""
    _read_request(conn)
    conn.sendall(head)
    burst = piece * max(1, 65536 // len(piece))
    with contextlib.suppress(OSError):
        for _ in range(16_000):  # ~1 GB at most: the client stops reading long before
            if stop.is_set():
                return
            conn.sendall(burst)


FLOODS = {
    "1-byte chunks": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"1\r\na\r\n", None),
    "100 Continue": (b"", b"HTTP/1.1 100 Continue\r\n\r\n", None),
    "103 Early Hints": (b"", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", None),
    "body, no size limit": (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", b"x", "none"),
    # Pieces that decode to nothing: urllib3 reads on inside one read() until one decodes to bytes.
    "empty gzip members, chunked": (
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"%x\r\n%s\r\n" % (len(gzip.compress(b"")), gzip.compress(b"")),
        None,
    ),
    "empty gzip members, to the close": (
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nConnection: close\r\n\r\n",
        gzip.compress(b""),
        None,
    ),
}


@pytest.mark.parametrize("flood", list(FLOODS))
def test_a_peer_flooding_what_it_sends_is_cut_at_the_deadline(
    raw_server: Callable[..., RawServer], flood: str, no_leaks: None
) -> None:
    """A peer sending as fast as loopback goes, in pieces the client parses one by one (or, with
    max_response_size None, a body without end): the deadline's timer can only wake a blocked read,
    and the reading thread parsed on past it. Before the reader looked at the deadline itself:
    1-byte chunks 50-200 ms late as a rule and past SLACK in 7 of 70 calls (1.4 s once), interim
    responses up to 257 ms, the unlimited body 0.25-1.1 s (joined into one piece, to be thrown away)."""
    head, piece, limit = FLOODS[flood]
    holder: list[RawServer] = []
    server = raw_server(lambda conn: _flood(conn, head, piece, holder[0].stop))
    holder.append(server)
    transport = dar.RequestsTransport(max_response_size=None) if limit == "none" else None
    late = []
    for _ in range(3):
        started = time.monotonic()
        response, counts = call(server.url, deadline=0.3, transport=transport)
        late.append(time.monotonic() - started - 0.3)
        assert response.status == status.TIMEOUT
        assert counts == FAILURE
    assert statistics.median(late) < 0.05, late


@pytest.mark.parametrize("flood", list(FLOODS))
def test_a_flood_ends_at_the_deadline_even_when_the_deadline_s_timer_is_late(
    raw_server: Callable[..., RawServer], flood: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reading thread looks at the deadline between the pieces it parses: with the timer that
    shuts the socket down never firing (as when it waits for the CPU beside the reader), each call
    still ends at its deadline; it read on until the peer stopped (1 GB) before."""
    head, piece, limit = FLOODS[flood]
    holder: list[RawServer] = []
    server = raw_server(lambda conn: _flood(conn, head, piece, holder[0].stop))
    holder.append(server)
    monkeypatch.setattr(deadline_timer, "schedule", lambda when, callback: lambda: None)
    transport = dar.RequestsTransport(max_response_size=None) if limit == "none" else None
    started = time.monotonic()
    response, counts = call(server.url, deadline=0.3, transport=transport)
    assert response.status == status.TIMEOUT
    assert counts == FAILURE
    # 0.25 s of slack: empty gzip members, chunked, ended 0.43 s after a 0.3 s deadline in a CI run on a
    # VM three times slower a call (before the fix it read on until the peer stopped: 1 GB, many seconds)
    assert time.monotonic() - started < 0.3 + 0.25


@pytest.mark.parametrize("garbage", [b"garbage\r\n\r\n", b"\x00\xff" * 100, b"SSH-2.0-OpenSSH_9.6\r\n"])
def test_garbage_instead_of_http(raw_server: Callable[..., RawServer], garbage: bytes, no_leaks: None) -> None:
    server = raw_server(send_then(garbage, reset=False))
    response, counts = call(server.url)
    assert response.status == status.NETWORK_ERROR
    assert counts == FAILURE


@pytest.mark.parametrize("garbage", [b"\x00\xff" * 100, b"SSH-2.0-OpenSSH_9.6", b"HTTX"])
def test_garbage_with_no_line_end_on_a_connection_kept_open_is_a_489_at_once(
    raw_server: Callable[..., RawServer], garbage: bytes, no_leaks: None
) -> None:
    """faults.md: garbage instead of HTTP is a 489. With no line end and the connection kept open,
    the client waited for the rest of a status line until the deadline (a 408: a review). What came
    cannot begin one ("HTTP/"), whatever follows: a 489 at once."""

    def hold(conn: socket.socket) -> None:
        _read_request(conn)
        conn.sendall(garbage)
        conn.settimeout(2.5)  # kept open until the client hangs up (past its deadline at the most)
        with contextlib.suppress(OSError):
            conn.recv(1)

    server = raw_server(hold)
    started = time.monotonic()
    response, counts = call(server.url, deadline=2.0)
    assert response.status == status.NETWORK_ERROR
    assert counts == FAILURE
    assert time.monotonic() - started < 1.0


def _endless_body(conn: socket.socket, *, length: bool) -> None:
    _read_request(conn)
    head = b"Content-Length: 1000000000\r\n" if length else b"Connection: close\r\n"
    conn.sendall(b"HTTP/1.1 200 OK\r\n" + head + b"\r\n")
    chunk = b"x" * 65536
    with contextlib.suppress(OSError):
        for _ in range(16_000):  # ~1 GB at most: the client must stop reading long before
            conn.sendall(chunk)


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "until-close"])
def test_huge_body_is_cut_at_max_response_size(
    raw_server: Callable[..., RawServer], length: bool, no_leaks: None
) -> None:
    server = raw_server(lambda conn: _endless_body(conn, length=length))
    limit = 1024 * 1024
    transport = dar.RequestsTransport(max_response_size=limit)
    response, counts = call(server.url, deadline=2.0, transport=transport)
    assert response.status == status.NETWORK_ERROR
    assert response.headers[X_RESPONSE_TOO_LARGE] == str(limit)
    assert response.headers["X-Do-Not-Retry"] == "1"
    assert response.read() == b""
    # Not retried, and not the endpoint's ill health: the breaker counts it as a success.
    assert counts == SUCCESS


@pytest.mark.parametrize(
    ("head", "named"),
    [
        (b"Transfer-Encoding: gzip, chunked", "Transfer-Encoding: gzip"),
        (b"Content-Encoding: compress\r\nTransfer-Encoding: chunked", "Content-Encoding: compress"),
        # urllib3 gave each coding of a list a decoder, deflate's to compress: its DecodeError was a
        # plain 489, retried and counted against the endpoint.
        (b"Content-Encoding: gzip, compress\r\nTransfer-Encoding: chunked", "Content-Encoding: compress"),
        (
            b"Content-Encoding: gzip\r\nContent-Encoding: compress\r\nTransfer-Encoding: chunked",
            "Content-Encoding: compress",
        ),
    ],
    ids=["transfer-coding", "content-coding", "content-coding-in-a-list", "content-coding-in-a-second-field"],
)
@pytest.mark.parametrize("route", ["direct", "requests"], ids=["direct route", "requests' Session"])
def test_a_body_in_a_coding_the_client_cannot_take_off(
    raw_server: Callable[..., RawServer], head: bytes, named: str, route: str, no_leaks: None
) -> None:
    zipped = gzip.compress(b'{"ok": true}')
    body = b"%x\r\n" % len(zipped) + zipped + b"\r\n0\r\n\r\n"
    server = raw_server(send_then(b"HTTP/1.1 200 OK\r\n" + head + b"\r\n\r\n" + body, reset=False))
    session = requests.Session()
    if route == "requests":
        session.auth = ("u", "p")  # takes requests' own path
    response, counts = call(server.url, transport=dar.RequestsTransport(session))
    assert response.status == status.NETWORK_ERROR
    assert response.headers[X_UNREADABLE_CODING] == named
    assert response.read() == b""
    # Not retried (the endpoint would send the same), and the endpoint did answer: a success.
    assert counts == SUCCESS


def test_a_peer_s_own_499_is_an_answer_the_breaker_counts(server: LoopbackServer, no_leaks: None) -> None:
    """499 is also the status of an attempt its strategy abandoned, which says nothing about the
    endpoint: a peer that answered 499 (nginx's "client closed request") was counted neither way,
    and one that always did was invisible to the breaker."""
    server.route("/x", lambda h: h.reply(499, b"closed"))
    response, counts = call(server.url)
    assert (response.status, response.read()) == (499, b"closed")
    assert counts == SUCCESS  # accepted (not 5xx, 408, 429 or 489): one attempt, a success


def test_body_of_exactly_max_response_size_is_read(server: LoopbackServer, no_leaks: None) -> None:
    server.route("/x", lambda h: h.reply(200, b"y" * 1000))
    response, counts = call(server.url, transport=dar.RequestsTransport(max_response_size=1000))
    assert response.status == 200
    assert response.read() == b"y" * 1000
    assert counts == SUCCESS
    response, _ = call(server.url, transport=dar.RequestsTransport(max_response_size=999))
    assert response.status == status.NETWORK_ERROR


def test_max_response_size_defaults_to_32_mib_and_none_means_no_limit(server: LoopbackServer) -> None:
    assert dar.RequestsTransport().max_response_size == DEFAULT_MAX_RESPONSE_SIZE == 32 * 1024 * 1024
    server.route("/x", lambda h: h.reply(200, b"z" * 100_000))
    response, _ = call(server.url, transport=dar.RequestsTransport(max_response_size=None))
    assert response.read() == b"z" * 100_000
    with pytest.raises(ValueError, match="max_response_size"):
        dar.RequestsTransport(max_response_size=-1)


def test_redirect_loop(server: LoopbackServer, no_leaks: None) -> None:
    server.route("/x", lambda h: h.reply(302, b"", {"Location": "/x"}))
    response, counts = call(server.url)
    assert response.status == status.TOO_MANY_REDIRECTS
    assert response.headers["Location"] == "/x"
    assert counts == SUCCESS  # 488 is accepted: the endpoint answered, the redirects are the caller's


def test_invalid_json_with_a_json_content_type(server: LoopbackServer, no_leaks: None) -> None:
    server.route("/x", lambda h: h.reply(200, b'{"a": ', {"Content-Type": "application/json"}))
    errors: list[Exception] = []

    def parse(response: dar.Response) -> None:
        try:
            response.json()
        except ValueError as error:
            errors.append(error)

    response, counts = call(server.url, read=parse)
    assert response.status == 200
    assert len(errors) == 1
    assert isinstance(errors[0], json.JSONDecodeError)  # a ValueError subclass
    assert counts == SUCCESS  # the transport does not parse bodies: a 200 is a success


def test_tls_to_a_plain_http_port(server: LoopbackServer, no_leaks: None) -> None:
    server.route("/x", lambda h: h.reply(200, b"plain"))
    response, counts = call(f"https://127.0.0.1:{server.port}/")
    assert response.status == status.NETWORK_ERROR
    assert counts == FAILURE


def test_server_that_accepts_and_never_answers(raw_server: Callable[..., RawServer], no_leaks: None) -> None:
    holder: list[RawServer] = []

    def silent(conn: socket.socket) -> None:
        _read_request(conn)
        holder[0].stop.wait(10)

    server = raw_server(silent)
    holder.append(server)
    response, counts = call(server.url, deadline=0.3)
    assert response.status == status.TIMEOUT
    assert counts == FAILURE


def test_failures_leave_the_pool_usable(raw_server: Callable[..., RawServer], server: LoopbackServer) -> None:
    """After a burst of every kind of fault on one transport, a healthy call through it still works."""
    server.route("/ok", lambda h: h.reply(200, b"ok"))
    bad = raw_server(send_then(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab", reset=True))
    transport = dar.RequestsTransport(max_connections=2)
    for _ in range(5):
        assert transport.send(bad.url, dar.get("x"), DEADLINE).status == status.NETWORK_ERROR
    assert transport.send(server.url, dar.get("ok"), DEADLINE).status == 200
    transport.close()


# --- through a proxy set in the environment ------------------------------------------------------------------


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, RawServer], None]:
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)

    def use(variable: str, proxy: RawServer) -> None:
        monkeypatch.setenv(variable, f"http://127.0.0.1:{proxy.port}")

    return use


def test_a_proxy_that_never_accepts_is_a_timeout_however_the_race_ends(full_backlog: int) -> None:
    """The connect to the proxy times out: by the deadline's abort (408), or by the socket's own
    timeout a moment before it. The latter came as requests' ProxyError around urllib3's ProxyError
    around the ConnectTimeoutError, read as a network error: 489 about one time in two."""
    proxies = {"http": f"http://127.0.0.1:{full_backlog}"}
    with pytest.raises(requests.exceptions.ProxyError) as caught:  # the socket's timeout alone
        requests.get("http://service.example.test/", proxies=proxies, timeout=0.2)
    assert _is_timeout(caught.value)
    session = requests.Session()
    session.proxies.update(proxies)
    transport = dar.RequestsTransport(session=session)
    try:
        outcomes = [call("http://service.example.test/", deadline=0.3, transport=transport)[0].status for _ in range(4)]
    finally:
        transport.close()
    assert outcomes == [status.TIMEOUT] * 4


def _first_line(conn: socket.socket, seen: list[bytes]) -> None:
    seen.append(_read_request(conn).split(b"\r\n", 1)[0])


def test_a_proxy_from_the_environment_is_used(
    raw_server: Callable[..., RawServer], proxy_env: Callable[[str, RawServer], None], no_leaks: None
) -> None:
    seen: list[bytes] = []

    def proxy(conn: socket.socket) -> None:
        _first_line(conn, seen)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nproxied")

    proxy_env("HTTP_PROXY", raw_server(proxy))
    response, counts = call("http://service.example.test/")  # a name the proxy resolves, not us
    assert (response.status, response.read()) == (200, b"proxied")
    assert seen == [b"GET http://service.example.test/x HTTP/1.1"]
    assert counts == SUCCESS


def test_a_trickling_proxy_ends_at_the_deadline(
    raw_server: Callable[..., RawServer], proxy_env: Callable[[str, RawServer], None], no_leaks: None
) -> None:
    holder: list[RawServer] = []
    seen: list[bytes] = []

    def proxy(conn: socket.socket) -> None:
        _first_line(conn, seen)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        while not holder[0].stop.wait(0.05):  # every byte well within the socket timeout
            conn.sendall(b"x")

    holder.append(raw_server(proxy))
    proxy_env("HTTP_PROXY", holder[0])
    response, counts = call("http://service.example.test/", deadline=0.3)
    assert response.status == status.TIMEOUT
    assert seen == [b"GET http://service.example.test/x HTTP/1.1"]
    assert counts == FAILURE


def test_a_proxy_trickling_its_answer_to_connect_ends_at_the_deadline(
    raw_server: Callable[..., RawServer],
    proxy_env: Callable[[str, RawServer], None],
    no_leaks: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTPS through an HTTP proxy: the tunnel's CONNECT answer never ends (http.client reads its
    header lines without a limit), so only the deadline can stop the call."""
    holder: list[RawServer] = []
    seen: list[bytes] = []

    def proxy(conn: socket.socket) -> None:
        _first_line(conn, seen)
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n")
        while not holder[0].stop.wait(0.05):
            conn.sendall(b"X-Still: coming\r\n")

    holder.append(raw_server(proxy))
    proxy_env("HTTPS_PROXY", holder[0])
    # After the abort, http.client took the end of the stream for the end of the answer and urllib3
    # went on to load the CA bundle for TLS past the deadline: the call ended 30-340 ms late.
    loads: list[float] = []
    load = ssl.SSLContext.load_verify_locations

    def noted_load(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> Any:
        loads.append(time.monotonic())
        return load(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", noted_load)
    started = time.monotonic()
    response, counts = call("https://service.example.test/", deadline=0.3)
    assert response.status == status.TIMEOUT
    assert [line.rsplit(b" ", 1)[0] for line in seen] == [b"CONNECT service.example.test:443"]
    assert counts == FAILURE
    assert [at - started for at in loads if at - started >= 0.3] == []  # nothing of TLS after the deadline


# SOCKS proxies (socks5://, socks5h://: PySocks, requests[socks])


def _recv_exactly(conn: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = conn.recv(count - len(data))
        if not chunk:
            raise ConnectionError("the client closed the connection")
        data += chunk
    return data


def _socks5_request(conn: socket.socket) -> tuple[str, int]:
    """A SOCKS5 client's greeting (no authentication chosen) and CONNECT request: its host and port."""
    _, methods = _recv_exactly(conn, 2)
    _recv_exactly(conn, methods)
    conn.sendall(b"\x05\x00")
    _, command, _, kind = _recv_exactly(conn, 4)
    assert command == 1  # CONNECT
    if kind == 3:  # a name (socks5h://: the proxy resolves it)
        host = _recv_exactly(conn, _recv_exactly(conn, 1)[0]).decode()
    else:
        host = socket.inet_ntop(
            socket.AF_INET if kind == 1 else socket.AF_INET6, _recv_exactly(conn, 4 if kind == 1 else 16)
        )
    return host, int.from_bytes(_recv_exactly(conn, 2), "big")


_SOCKS5_GRANTED = b"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x00"  # succeeded, bound to 127.0.0.1:0


@pytest.fixture
def socks_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, RawServer], None]:
    for name in (
        "NO_PROXY",
        "no_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)

    def use(scheme: str, proxy: RawServer) -> None:
        monkeypatch.setenv("ALL_PROXY", f"{scheme}://127.0.0.1:{proxy.port}")

    return use


def test_a_socks_proxy_from_the_environment_is_used(
    raw_server: Callable[..., RawServer], socks_env: Callable[[str, RawServer], None], no_leaks: None
) -> None:
    """Through a SOCKS5 proxy, the connection guarded as any other (socks_sockets.py): the call works,
    the proxy is asked for the host by name (socks5h://) and carries the request."""
    asked: list[tuple[str, int]] = []
    seen: list[bytes] = []

    def proxy(conn: socket.socket) -> None:
        asked.append(_socks5_request(conn))
        conn.sendall(_SOCKS5_GRANTED)
        while True:  # the proxy is the server here: what it relays would come the same way
            head = _read_request(conn)
            if not head:
                return
            seen.append(head.split(b"\r\n", 1)[0])
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nproxied")

    socks_env("socks5h", raw_server(proxy))
    with breaker_client("http://service.example.test/") as (client, _):
        for _ in range(2):  # the second on the connection kept alive
            with client.request(dar.get("x")) as response:
                assert (response.status, response.read()) == (200, b"proxied")
    assert asked == [("service.example.test", 80)]
    assert seen == [b"GET /x HTTP/1.1"] * 2


def test_through_socks5_the_target_s_name_is_looked_up_within_the_deadline(
    raw_server: Callable[..., RawServer],
    socks_env: Callable[[str, RawServer], None],
    monkeypatch: pytest.MonkeyPatch,
    no_leaks: None,
) -> None:
    """``socks5://`` (not ``socks5h://``) sends the proxy the target's address: PySocks looked the name
    up itself, mid-handshake, and a lookup taking 3 s held a call given 0.3 s for 3 s (a review). Now
    the bounded resolver looks it up, within the deadline, and the proxy is asked for the address."""
    asked: list[tuple[str, int]] = []

    def proxy(conn: socket.socket) -> None:
        asked.append(_socks5_request(conn))
        conn.sendall(_SOCKS5_GRANTED)
        _read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    real_getaddrinfo = socket.getaddrinfo
    release = threading.Event()

    def lookup(host: str, *args: Any, **kwargs: Any) -> Any:
        if host.startswith("slow-name"):  # stands in for a name server that does not answer
            release.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "no answer")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    socks_env("socks5", raw_server(proxy))
    try:
        response, counts = call("http://localhost/", deadline=5)
        assert (response.status, response.read()) == (200, b"ok")
        response, counts = call("http://slow-name.example.test/", deadline=0.3)
        assert response.status == status.TIMEOUT
        assert counts == FAILURE
    finally:
        release.set()
    # an address of localhost (which one first is the hosts file's to say); the slow name never reached the proxy
    assert asked in ([("127.0.0.1", 80)], [("::1", 80)]), asked


def test_https_through_a_socks_proxy_is_verified_end_to_end(
    raw_server: Callable[..., RawServer], socks_env: Callable[[str, RawServer], None], no_leaks: None
) -> None:
    """HTTPS through a SOCKS5 proxy that relays the bytes to a TLS server: the TLS connection is made
    over the proxy's socket and verified against the server's certificate (socks_sockets.py's TLS class)."""
    import trustme

    authority = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert("service.example.test").configure_cert(context)

    def tls_server(conn: socket.socket) -> None:
        with context.wrap_socket(conn, server_side=True) as tls:
            _read_request(tls)
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nsecret")

    server = raw_server(tls_server)

    def proxy(conn: socket.socket) -> None:
        assert _socks5_request(conn) == ("service.example.test", 443)
        with socket.create_connection(("127.0.0.1", server.port)) as upstream:
            conn.sendall(_SOCKS5_GRANTED)
            for ahead, behind in ((conn, upstream), (upstream, conn)):  # relay both ways until each ends
                threading.Thread(target=_relay, args=(ahead, behind), daemon=True).start()
            while not server.stop.wait(0.05) and upstream.fileno() != -1 and _open(upstream):
                pass

    socks_env("socks5h", raw_server(proxy))
    with authority.cert_pem.tempfile() as ca_file:
        session = requests.Session()
        session.verify = ca_file
        response, counts = call("https://service.example.test/", deadline=5, transport=dar.RequestsTransport(session))
    assert (response.status, response.read()) == (200, b"secret")
    assert counts == SUCCESS


def _relay(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)


def _open(sock: socket.socket) -> bool:
    """Whether the peer of ``sock`` has not yet closed its side (a look, nothing read)."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


@pytest.mark.parametrize("where", ["handshake", "answer"])
def test_a_trickling_socks_proxy_ends_at_the_deadline(
    raw_server: Callable[..., RawServer], socks_env: Callable[[str, RawServer], None], no_leaks: None, where: str
) -> None:
    """A SOCKS proxy that trickles its reply to CONNECT (each byte well within the socket's timeout),
    or relays an answer that trickles: PySocks' sockets, which the deadline's timer did not reach, held
    the call for as long as it trickled (a known gap until 2026-12-07)."""
    holder: list[RawServer] = []

    def proxy(conn: socket.socket) -> None:
        _socks5_request(conn)
        if where == "handshake":
            for byte in _SOCKS5_GRANTED:
                if holder[0].stop.wait(0.1):
                    return
                conn.sendall(bytes([byte]))
        else:
            conn.sendall(_SOCKS5_GRANTED)
        _read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        while not holder[0].stop.wait(0.05):
            conn.sendall(b"x")

    holder.append(raw_server(proxy))
    socks_env("socks5", holder[0])
    response, counts = call("http://127.0.0.1:9/", deadline=0.3)  # the proxy connects nowhere
    assert response.status == status.TIMEOUT
    assert counts == FAILURE
