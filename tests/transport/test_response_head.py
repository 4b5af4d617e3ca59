"""``transport/response_head.py``: 1xx answers before the final one, and heads cut short, from real servers.

A server may send interim responses (``103 Early Hints``, ``102 Processing``) before the final one.
Taken as the answer, they left the final one on the pooled connection for the next call to read.
"""

import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import django_aio_request as dar
from django_aio_request.core import status
from django_aio_request.transport.response_head import FinalResponse
from tests.support.raw_server import BytesSocket, RawAnswerServer, request_heads
from tests.support.steps import run_with_step

# What the server writes before the final answer to a request, by path.
Interim = Callable[[socket.socket], None]


class KeepAliveServer(RawAnswerServer):
    """Answers every request of a connection in turn: first what ``before[path]`` writes, then
    ``200`` with body ``answer for <path>``. Counts the connections it accepted (``connections``)."""

    def __init__(self) -> None:
        self.before: dict[str, Interim] = {}
        super().__init__()

    def _converse(self, conn: socket.socket, answer: bytes) -> None:
        for head in request_heads(conn, 5):
            path = head.split(b" ")[1].decode()
            interim = self.before.get(path)
            if interim is not None:
                interim(conn)
            body = f"answer for {path}".encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


@pytest.fixture
def keep_alive() -> Iterator[KeepAliveServer]:
    server = KeepAliveServer()
    yield server
    server.close()


def sends(*heads: bytes, pause: float = 0.0) -> Interim:
    def write(conn: socket.socket) -> None:
        for head in heads:
            conn.sendall(head)
            time.sleep(pause)

    return write


def answer(client: dar.Client, path: str) -> tuple[int, bytes]:
    with client.request(dar.get(path), deadline=dar.Deadline.from_timeout(2.0)) as response:
        return response.status, response.read()


def test_early_hints_are_skipped_and_the_next_call_reads_its_own_answer(keep_alive: KeepAliveServer) -> None:
    keep_alive.before["/a"] = sends(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n", pause=0.05)
    client = dar.setup(endpoint=keep_alive.url, metrics=False)
    try:
        assert answer(client, "a") == (200, b"answer for /a")
        assert answer(client, "b") == (200, b"answer for /b")  # was call a's answer
        assert keep_alive.connections == 1  # the same connection, in step again
    finally:
        client.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    interim=st.lists(
        st.tuples(
            st.integers(100, 199).filter(lambda code: code != 101),
            st.lists(st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,20}: [ -~]{0,60}", fullmatch=True), max_size=5),
        ),
        max_size=6,
    )
)
def test_any_run_of_interim_responses_leaves_every_call_its_own_answer(
    keep_alive: KeepAliveServer, interim: list[tuple[int, list[str]]]
) -> None:
    heads = [
        f"HTTP/1.1 {code} Interim\r\n{''.join(f + chr(13) + chr(10) for f in fields)}\r\n".encode()
        for code, fields in interim
    ]
    keep_alive.before["/a"] = sends(*heads)
    client = dar.setup(endpoint=keep_alive.url, metrics=False)
    try:
        for path in ("a", "b", "a"):
            assert answer(client, path) == (200, f"answer for /{path}".encode())
    finally:
        client.close()


def test_an_unasked_switching_protocols_is_the_answer_and_its_connection_is_not_reused(
    keep_alive: KeepAliveServer,
) -> None:
    keep_alive.before["/a"] = sends(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: nonsense\r\n\r\n")
    client = dar.setup(endpoint=keep_alive.url, metrics=False)
    try:
        assert answer(client, "a")[0] == 101
        assert answer(client, "b") == (200, b"answer for /b")
        assert keep_alive.connections == 2
    finally:
        client.close()


def test_endless_interim_responses_end_at_the_deadline_without_raising(keep_alive: KeepAliveServer) -> None:
    def forever(conn: socket.socket) -> None:
        while True:
            conn.sendall(b"HTTP/1.1 102 Processing\r\n\r\n")
            time.sleep(0.005)

    keep_alive.before["/a"] = forever
    transport = dar.RequestsTransport()
    try:
        started = time.monotonic()
        response = transport.send(keep_alive.url + "a", dar.get("a"), 0.3)
        elapsed = time.monotonic() - started
        assert response.status == status.TIMEOUT
        assert elapsed < 0.3 + 0.05
    finally:
        transport.close()


@pytest.mark.parametrize(
    "head",
    [b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK\r\nContent-Le", b"HTTP/1.1 200 OK\r\nX-A: 1\r\n"],
)
def test_a_head_cut_short_by_the_end_of_the_stream_is_a_489_and_a_failure(head: bytes) -> None:
    """http.client ends the header block at the end of the stream as at a blank line: a server that
    closed (or was killed) in the middle of its headers gave 200 with an empty body, a success."""
    server = RawAnswerServer(head)
    breaker: dar.DefaultCircuitBreaker[str, dar.Response] = dar.DefaultCircuitBreaker(
        break_duration=5, sampling_duration=10, minimum_throughput=100, failure_threshold=0.5
    )
    client = dar.setup(
        endpoint=server.url, safe_method_strategy=dar.single_attempt_strategy(), circuit_breaker=breaker, metrics=False
    )
    try:
        with client.request(dar.get("x"), deadline=dar.Deadline.from_timeout(2.0)) as response:
            assert response.status == status.NETWORK_ERROR
        assert breaker.counts(server.url) == (1, 0)
    finally:
        client.close()
        server.close()


@pytest.mark.parametrize("route", ["direct", "requests"], ids=["direct route", "requests' Session"])
@pytest.mark.parametrize("code", [b"600", b"699", b"999", b"099", b"2000"])
def test_a_status_outside_100_to_599_is_a_489_and_a_failure(code: bytes, route: str) -> None:
    """RFC 9110 (15) limits status codes to 100-599; http.client refuses only those outside
    100-999, so a 600 to 999 was an answer: accepted (not retried), a success for the breaker."""
    server = RawAnswerServer(b"HTTP/1.1 " + code + b" Broken\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    breaker: dar.DefaultCircuitBreaker[str, dar.Response] = dar.DefaultCircuitBreaker(
        break_duration=5, sampling_duration=10, minimum_throughput=100, failure_threshold=0.5
    )
    session = requests.Session()
    if route == "requests":
        session.auth = ("u", "p")  # takes requests' own path, not the direct one (transport/direct_send.py)
    client = dar.setup(
        endpoint=server.url,
        transport=dar.RequestsTransport(session),
        safe_method_strategy=dar.single_attempt_strategy(),
        circuit_breaker=breaker,
        metrics=False,
    )
    try:
        with client.request(dar.get("x"), deadline=dar.Deadline.from_timeout(2.0)) as response:
            assert response.status == status.NETWORK_ERROR
        assert breaker.counts(server.url) == (1, 0)  # a failure, no success
    finally:
        client.close()
        server.close()


@pytest.mark.parametrize("code", [600, 999])
def test_a_status_outside_100_to_599_from_a_mounted_adapter_is_a_489_too(code: int) -> None:
    """``responses`` (an adapter in the session's place) hands over whatever status a test gave it:
    a mocked 600 was an accepted answer where the same status from a real peer is a 489."""
    import responses

    client = dar.setup(endpoint="http://svc.test/", safe_method_strategy=dar.single_attempt_strategy(), metrics=False)
    try:
        with responses.RequestsMock() as mocked:
            mocked.add(responses.GET, "http://svc.test/x", status=code, body=b"ok")
            with client.request(dar.get("x"), deadline=dar.Deadline.from_timeout(2.0)) as response:
                assert response.status == status.NETWORK_ERROR
            mocked.add(responses.GET, "http://svc.test/y", status=599, body=b"ok")
            with client.request(dar.get("y"), deadline=dar.Deadline.from_timeout(2.0)) as response:
                assert response.status == 599
    finally:
        client.close()


@pytest.mark.parametrize("code", [b"100", b"599"])
def test_a_status_of_100_to_599_is_an_answer(code: bytes) -> None:
    head = b"HTTP/1.1 " + code + b" Edge\r\nContent-Length: 0\r\n\r\n"
    if code == b"100":  # an interim answer, then the final one
        head += b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    server = RawAnswerServer(head)
    client = dar.setup(endpoint=server.url, safe_method_strategy=dar.single_attempt_strategy(), metrics=False)
    try:
        with client.request(dar.get("x"), deadline=dar.Deadline.from_timeout(2.0)) as response:
            assert response.status == (200 if code == b"100" else 599)
    finally:
        client.close()
        server.close()


def test_a_whole_head_with_no_body_is_still_an_answer() -> None:
    server = RawAnswerServer(b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n")
    client = dar.setup(endpoint=server.url, metrics=False)
    try:
        with client.request(dar.get("x")) as response:
            assert (response.status, response.headers["X-A"]) == (204, "1")
    finally:
        client.close()
        server.close()


def test_a_response_two_threads_close_at_once_raises_nothing() -> None:
    """urllib3 closes a response again after its connection went back to the pool, and the attempt
    the connection went to may close it meanwhile (http.client closes the connection's last
    response): "I/O operation on closed file" was a 489 for an answer read whole (found by review,
    1 call in about 5,000 with 16 threads on a server resetting every second request)."""
    response = FinalResponse(BytesSocket(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))  # type: ignore[arg-type]
    response.begin()
    assert response.read() == b"ok"
    raised: list[BaseException] = []

    def close() -> None:
        try:
            response.close()
        except BaseException as error:
            raised.append(error)

    other = threading.Thread(target=close)

    def other_closes() -> None:
        other.start()
        other.join(0.2)  # it may wait for this thread's close, as a thread would

    # The other thread's close comes in while this one flushes: IOBase.close() flushes, then marks closed.
    steps = run_with_step(close, http.client.HTTPResponse.flush.__code__, 0, other_closes)
    other.join()
    assert steps > 0
    assert raised == []
    assert response.closed


class _StallingConnection(http.client.HTTPConnection):
    response_class = FinalResponse


def test_a_close_that_waits_on_its_response_s_read_holds_no_other_response_s_close() -> None:
    """A response closed while another thread is blocked reading it waits for that read (the file's
    close takes the read's lock). Closes were made one at a time under one lock for every response:
    meanwhile every other response's close in the process waited as long (2.6 s, found by review)."""
    listener = socket.create_server(("127.0.0.1", 0))
    release = threading.Event()

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")  # 7 bytes never come
                threading.Thread(target=lambda c=conn: (release.wait(10), c.close()), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    responses = []
    for _ in range(2):
        connection = _StallingConnection("127.0.0.1", listener.getsockname()[1], timeout=10)
        connection.request("GET", "/")
        responses.append(connection.getresponse())
    stalled, other = responses

    def read_stalled() -> None:
        # Cut short at the end; http.client's own read and close, racing, may drop its file under it.
        with contextlib.suppress(http.client.HTTPException, ValueError, OSError, AttributeError):
            stalled.read()

    reader = threading.Thread(target=read_stalled, daemon=True)
    try:
        reader.start()
        time.sleep(0.2)  # blocked in its read, holding the file's lock
        closer = threading.Thread(target=stalled.close, daemon=True)
        closer.start()
        time.sleep(0.2)  # waiting for that read
        started = time.monotonic()
        other.close()
        assert time.monotonic() - started < 0.5
    finally:
        release.set()
        listener.close()
        reader.join(10)


def test_a_response_s_own_close_error_is_raised() -> None:
    """Only the race is made harmless: an error closing the response's file is raised as ever."""
    response = FinalResponse(BytesSocket(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"))  # type: ignore[arg-type]
    response.begin()
    file = response.fp

    class Failing:
        def flush(self) -> None:
            raise ValueError("the file's own error")

        def close(self) -> None:
            file.close()

    response.fp = Failing()
    with pytest.raises(ValueError, match="the file's own error"):
        response.close()
