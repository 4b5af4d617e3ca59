"""A TLS peer that ends its connection without TLS's close_notify (or an attacker cutting the TCP
connection under it): what a body framed and unframed reads as (docs/security.md, Known gaps)."""

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator

import pytest
import requests
import trustme

from django_aio_request import RequestsTransport, get
from django_aio_request.core import status

DEADLINE = 5.0


@contextlib.contextmanager
def _cutting_server(answer: bytes) -> Iterator[tuple[str, trustme.CA]]:
    """A TLS server writing ``answer`` to each connection and then closing its socket with no
    close_notify (the standard library's close does not send one: only ``unwrap()`` would)."""
    authority = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)  # a close from another thread does not wake accept()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            raw.settimeout(DEADLINE)
            with contextlib.suppress(OSError, ssl.SSLError):
                tls = context.wrap_socket(raw, server_side=True)
                request = b""
                while b"\r\n\r\n" not in request:
                    piece = tls.recv(4096)
                    if not piece:
                        break
                    request += piece
                tls.sendall(answer)
                tls.close()  # no close_notify: a ragged end of the stream
            raw.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}/", authority
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        # Read until the connection ends: its end is all there is to go by, and a ragged one is
        # taken for it, as requests and urllib3 take it (the standard library suppresses ragged EOFs).
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc", (200, b"abc")),
        # Framed: a body cut short of its Content-Length or its last chunk is a 489, as without TLS.
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", (status.NETWORK_ERROR, b"")),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", (status.NETWORK_ERROR, b"")),
    ],
    ids=["read until close", "Content-Length", "chunked"],
)
def test_a_tls_stream_ended_without_close_notify_is_detected_only_where_the_body_is_framed(
    answer: bytes, expected: tuple[int, bytes]
) -> None:
    with _cutting_server(answer) as (url, authority), authority.cert_pem.tempfile() as ca_file:
        session = requests.Session()
        session.verify = ca_file
        transport = RequestsTransport(session)
        try:
            response = transport.send(url, get("x"), DEADLINE)
        finally:
            transport.close()
    assert (response.status, response.read()) == expected
