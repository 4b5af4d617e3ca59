"""``server/socket_peek.py``: peeking at a socket's waiting bytes with the GIL held, on real sockets."""

import socket
import ssl
import sys
import threading
from collections.abc import Iterator

import pytest
import trustme

from django_aio_request.server import socket_peek
from django_aio_request.server.socket_peek import hung_up, peek


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


@pytest.fixture(params=["libc recv, GIL held", "socket.recv"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "socket.recv":
        monkeypatch.setattr(socket_peek, "_recv", None)  # as where libc's recv cannot be loaded
    else:
        assert socket_peek._recv is not None  # Linux: the fast way is the one in use
    return str(request.param)


def test_waiting_bytes_are_read_and_left_in_place(pair: tuple[socket.socket, socket.socket], way: str) -> None:
    a, b = pair
    a.sendall(b"GET / HTTP/1.1\r\nX-Request-Priority: high\r\n\r\n")
    assert peek(b, 8192) == b"GET / HTTP/1.1\r\nX-Request-Priority: high\r\n\r\n"
    assert peek(b, 3) == b"GET"
    assert b.recv(8192).startswith(b"GET / HTTP/1.1")  # still there for the server to read


def test_nothing_yet_is_none_and_the_end_of_the_stream_is_empty(
    pair: tuple[socket.socket, socket.socket], way: str
) -> None:
    a, b = pair
    assert peek(b, 1) is None
    b.setblocking(True)
    assert peek(b, 1) is None  # a blocking socket does not block either
    a.close()
    assert peek(b, 1) == b""


def test_a_closed_socket_or_a_tls_one_reads_as_empty(pair: tuple[socket.socket, socket.socket], way: str) -> None:
    a, b = pair
    b.close()
    assert peek(b, 10) == b""
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(context)
    server_side = context.wrap_socket(a, server_side=True, do_handshake_on_connect=False)
    assert peek(server_side, 10) == b""  # encrypted bytes are never read as a request


def test_hung_up_only_when_the_peer_closed_and_nothing_is_left_unread(way: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        caller = socket.create_connection(listener.getsockname())
        served, _ = listener.accept()
        with served:
            assert not hung_up(served)  # connected, nothing sent
            caller.sendall(b"body")
            caller.close()
            assert not hung_up(served)  # gone, but a body is still to read: not told
            served.recv(10)
            assert hung_up(served)
            caller = socket.create_connection(listener.getsockname())
            reset, _ = listener.accept()
            caller.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            caller.close()  # a reset
            with reset:
                assert hung_up(reset)
    assert not hung_up(None)  # no socket (a server that puts none in the environ)
    a, b = socket.socketpair()
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(context)
    server_side = context.wrap_socket(a, server_side=True, do_handshake_on_connect=False)
    b.close()
    assert not hung_up(server_side)  # a TLS socket's bytes are records: it cannot be told, so not gone
    server_side.close()


@pytest.fixture
def threads_switching_often() -> Iterator[None]:
    """A switch interval of 1 µs: a thread may lose the GIL between any two steps of a peek."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def test_many_threads_peeking_at_once_each_read_their_own_bytes(way: str, threads_switching_often: None) -> None:
    pairs = [socket.socketpair() for _ in range(16)]
    for i, (a, _) in enumerate(pairs):
        a.sendall(f"request {i:02d}".encode() * 50)
    wrong: list[int] = []

    def read(i: int, sock: socket.socket) -> None:
        for _ in range(500):
            if peek(sock, 4096) != f"request {i:02d}".encode() * 50:
                wrong.append(i)

    threads = [threading.Thread(target=read, args=(i, b)) for i, (_, b) in enumerate(pairs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for a, b in pairs:
        a.close()
        b.close()
    assert wrong == []
