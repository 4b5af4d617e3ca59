"""A TLS peer that ends its connection without TLS's close_notify (or an attacker cutting the TCP
connection under it): what a body framed and unframed reads as (docs/security.md, Known gaps)."""

import contextlib
import socket
import ssl

import pytest
import requests
import trustme

from django_aio_request import RequestsTransport, get
from django_aio_request.core import status
from tests.support.raw_server import RawAnswerServer

DEADLINE = 5.0


class CuttingTLSServer(RawAnswerServer):
    """Answers each connection over TLS and then closes its socket with no close_notify (the
    standard library's close does not send one: only ``unwrap()`` would)."""

    def __init__(self, answer: bytes) -> None:
        self.authority = trustme.CA()
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.authority.issue_cert("127.0.0.1").configure_cert(self._context)
        super().__init__(answer)
        self.url = self.url.replace("http://", "https://")

    def _converse(self, conn: socket.socket, answer: bytes) -> None:
        conn.settimeout(DEADLINE)
        with contextlib.suppress(ssl.SSLError), self._context.wrap_socket(conn, server_side=True) as tls:
            head = b""
            while b"\r\n\r\n" not in head and (piece := tls.recv(4096)):
                head += piece
            tls.sendall(answer)  # then closed by the with: a ragged end of the stream


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
    server = CuttingTLSServer(answer)
    try:
        with server.authority.cert_pem.tempfile() as ca_file:
            session = requests.Session()
            session.verify = ca_file
            transport = RequestsTransport(session)
            try:
                response = transport.send(server.url, get("x"), DEADLINE)
            finally:
                transport.close()
    finally:
        server.close()
    assert (response.status, response.read()) == expected
