"""transport/attempt_sockets.py: telling whether an attempt's answer has arrived, on real sockets.

A hedge is not sent for an attempt whose answer already waits unread in the caller's socket
(strategies/parallel.py); these tests hold a real urllib3 connection to a real listening socket and
check what ``AttemptSockets.answer_arrived`` says before, while and after the server answers.
"""

import contextlib
import http.client
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from urllib3.connection import HTTPConnection
from urllib3.util import SKIP_HEADER

from django_aio_request.core import status
from django_aio_request.transport import attempt_sockets
from django_aio_request.transport.attempt_sockets import AttemptSockets, GuardedHTTPConnection

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(5.0)
        yield server


def connected(listener: socket.socket) -> tuple[AttemptSockets, GuardedHTTPConnection, socket.socket]:
    """A guard, a guarded connection that has sent ``GET /`` through it, and the server's end."""
    guard = AttemptSockets(time.monotonic() + 5.0)
    conn = GuardedHTTPConnection("127.0.0.1", listener.getsockname()[1], timeout=5.0)
    with guard.active():
        conn.connect()
        assert not guard.answer_arrived()  # connected, nothing sent yet
        peer, _ = listener.accept()
        conn.request("GET", "/")
    peer.settimeout(5.0)
    assert peer.recv(4096).startswith(b"GET / HTTP/1.1")
    return guard, conn, peer


def arrives_within(guard: AttemptSockets, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while not guard.answer_arrived():
        if time.monotonic() > end:
            return False
        time.sleep(0.001)
    return True


@contextlib.contextmanager
def answered(listener: socket.socket) -> Iterator[tuple[AttemptSockets, GuardedHTTPConnection]]:
    """A guard and its connection whose request's answer has arrived, unread."""
    guard, conn, peer = connected(listener)
    with peer:
        peer.sendall(ANSWER)
        assert arrives_within(guard, 2.0)
        try:
            yield guard, conn
        finally:
            conn.close()


def test_says_so_once_the_answer_waits_unread_and_not_before_or_after(listener: socket.socket) -> None:
    guard, conn, peer = connected(listener)
    with peer:
        assert not guard.answer_arrived()  # sent, and the server has not answered
        peer.sendall(ANSWER)
        assert arrives_within(guard, 2.0)
        with guard.active():
            assert conn.getresponse().data == b"ok"
        assert not guard.answer_arrived()  # read to the end: nothing waits any more
        conn.close()


def test_a_connection_the_server_closed_counts_as_arrived(listener: socket.socket) -> None:
    # The caller will read the end of the connection next and hear of the failure: no hedge is
    # needed to learn it, and the caller launches the next attempt itself at once.
    guard, conn, peer = connected(listener)
    peer.close()
    assert arrives_within(guard, 2.0)
    conn.close()


def test_says_nothing_for_an_aborted_or_finished_attempt(listener: socket.socket) -> None:
    with answered(listener) as (guard, _):
        guard.abort(status.CANCELLED)
        assert not guard.answer_arrived()
    with answered(listener) as (guard, _):
        guard.close()
        assert not guard.answer_arrived()


def test_a_new_request_on_the_connection_starts_again_from_not_sent(listener: socket.socket) -> None:
    guard, conn, peer = connected(listener)
    with peer:
        peer.sendall(ANSWER)
        with guard.active():
            assert conn.getresponse().data == b"ok"
        leftover = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        peer.sendall(leftover)  # bytes nobody asked for yet, on the kept-alive connection
        assert arrives_within(guard, 2.0)
        guard.attach(conn, conn.sock)  # what request() does first on the connection it is given
        assert not guard.answer_arrived()  # those bytes are no answer to a request not yet sent
        conn.close()


def test_unknown_on_tls_where_waiting_bytes_may_be_session_tickets(listener: socket.socket) -> None:
    with answered(listener) as (guard, conn):
        context = ssl.create_default_context()
        # A TLS socket object standing for the connection (never handshaken): only its type matters.
        tls = context.wrap_socket(socket.socket(), server_hostname="localhost", do_handshake_on_connect=False)
        with tls:
            guard.attach(conn, tls)
            guard.sent()
            assert not guard.answer_arrived()


class _TunnelledTLS:
    """Stands for a socket-like object that is no socket: urllib3's ``SSLTransport`` (TLS inside an
    HTTPS proxy's TLS) or pyOpenSSL's wrapper. Readable at the TCP level says nothing about its answer."""

    def __init__(self, under: socket.socket) -> None:
        self._under = under

    def fileno(self) -> int:
        return self._under.fileno()


def test_unknown_on_a_socket_like_object_that_is_no_plain_socket(listener: socket.socket) -> None:
    with answered(listener) as (guard, conn):
        guard.attach(conn, _TunnelledTLS(conn.sock))  # type: ignore[arg-type]
        guard.sent()
        assert not guard.answer_arrived()


def test_unknown_where_the_platform_has_no_poll(listener: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    # Windows has no select.poll: the hedge timer must hear "unknown", not an AttributeError.
    from django_aio_request.transport import attempt_sockets

    with answered(listener) as (guard, _):
        monkeypatch.setattr(attempt_sockets, "_CAN_POLL", False)
        assert not guard.answer_arrived()


# --- putheader's short path: the same header lines, and the same errors, as urllib3's --------------------


def _writing(cls: type) -> Any:
    """A connection of ``cls`` whose request line is written (in its buffer, not sent): putheader()
    may be called, and buffers its lines after it."""
    conn = cls("127.0.0.1", 9)
    conn.putrequest("GET", "/", skip_host=True, skip_accept_encoding=True)  # buffered, nothing sent
    return conn


def _header_line(cls: type, name: Any, *values: Any) -> tuple[str, object]:
    """What ``putheader(name, *values)`` does on a fresh connection of ``cls``: the line it buffers,
    or the error it raises (its type and text)."""
    conn = _writing(cls)
    try:
        conn.putheader(name, *values)
    except Exception as error:  # the error is what is compared
        return "raised", (type(error), str(error))
    return "wrote", list(conn._buffer)


class _StampedLike(str):
    """A str subclass, as the pipeline's X-Request-Timeout value (StampedTimeout) is."""


@settings(max_examples=400, deadline=None)
@given(
    name=st.one_of(st.sampled_from(["X-Request-Timeout", "Accept", "bad name", "x:y", "Ünï"]), st.text(max_size=12)),
    value=st.one_of(
        st.sampled_from(["19.999", "", " lead", "a\r\nb", "a\r\n b", "a\nb", "a\n\tb", "ü", "€", SKIP_HEADER]),
        st.text(max_size=12),
    ),
    subclass=st.booleans(),
)
def test_a_header_line_is_written_and_refused_as_urllib3_writes_and_refuses_it(
    name: str, value: str, subclass: bool
) -> None:
    given_value = _StampedLike(value) if subclass else value
    assert _header_line(GuardedHTTPConnection, name, given_value) == _header_line(HTTPConnection, name, given_value)


@pytest.mark.parametrize(
    "values",
    [(42,), (b"raw bytes",), ("one", "two"), (), (SKIP_HEADER,), ("a\r\nb", "c")],
    ids=["an int", "bytes", "two values", "no value", "SKIP_HEADER", "two, one bad"],
)
@pytest.mark.parametrize("name", ["User-Agent", b"X-Bytes-Name", "Content-Length"])
def test_what_the_short_path_does_not_take_goes_down_urllib3s_own(name: Any, values: tuple[Any, ...]) -> None:
    assert _header_line(GuardedHTTPConnection, name, *values) == _header_line(HTTPConnection, name, *values)


def test_a_header_before_the_request_line_is_refused_as_http_client_refuses_it() -> None:
    conn = GuardedHTTPConnection("127.0.0.1", 9)
    with pytest.raises(http.client.CannotSendHeader):
        conn.putheader("Accept", "*/*")


def test_the_server_receives_the_header_lines_the_request_named(listener: socket.socket) -> None:
    conn = GuardedHTTPConnection("127.0.0.1", listener.getsockname()[1], timeout=5.0)
    conn.connect()
    with contextlib.closing(conn), listener.accept()[0] as peer:
        conn.request("GET", "/", headers={"X-Request-Priority": "low", "X-Latin": "café", "X-Empty": ""})
        peer.settimeout(5.0)
        head = b""
        while b"\r\n\r\n" not in head:
            head += peer.recv(4096)
    lines = head.split(b"\r\n")
    assert lines[0] == b"GET / HTTP/1.1"
    assert {b"X-Request-Priority: low", b"X-Latin: caf\xe9", b"X-Empty: "} <= set(lines)


def test_on_a_python_without_http_clients_checks_every_header_goes_down_urllib3s_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(attempt_sockets, "_SHORT_HEADER_PATH", False)
    calls: list[tuple[Any, ...]] = []
    original = HTTPConnection.putheader

    def urllib3s(self: HTTPConnection, *args: Any) -> None:
        calls.append(args)
        original(self, *args)

    monkeypatch.setattr(HTTPConnection, "putheader", urllib3s)
    assert _header_line(GuardedHTTPConnection, "Accept", "*/*") == ("wrote", [b"GET / HTTP/1.1", b"Accept: */*"])
    assert calls == [("Accept", "*/*")]
