"""Bodies in a coding the client cannot take off (transport/codings.py): a 489 saying which, never a
200 whose body is still compressed; a coding the caller asked for is the caller's."""

import gzip
import logging
from collections.abc import Callable

import pytest
import requests

from django_aio_request import RequestsTransport, get, request
from django_aio_request.core import headers as h
from django_aio_request.core import status
from django_aio_request.transport.codings import unreadable_coding
from django_aio_request.transport.requests_transport import X_UNREADABLE_CODING
from tests.support.loopback import Handler, LoopbackServer

DEADLINE = 5.0
JSON = b'{"a": 1}'


def _chunked(body: bytes) -> bytes:
    return b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"


def _raw(head: bytes, body: bytes) -> Callable[[Handler], None]:
    def handle(handler: Handler) -> None:
        handler.wfile.write(head + b"\r\n\r\n" + body)
        handler.wfile.flush()
        handler.close_connection = True

    return handle


def _kept_open(head: bytes, body: bytes) -> Callable[[Handler], None]:
    """The answer, and the connection kept open for the next request, as servers keep it."""

    def handle(handler: Handler) -> None:
        handler.wfile.write(head + b"\r\n\r\n" + body)
        handler.wfile.flush()

    return handle


def _encoded(coding: str, body: bytes) -> Callable[[Handler], None]:
    return lambda h: h.reply(200, body, {"Content-Encoding": coding, "Content-Type": "application/json"})


@pytest.fixture
def routes(server: LoopbackServer) -> LoopbackServer:
    zipped = gzip.compress(JSON)
    server.route("/te-gzip-chunked", _raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked", _chunked(zipped)))
    server.route("/te-gzip", _raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nConnection: close", zipped))
    server.route("/te-identity", _raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nConnection: close", JSON))
    server.route("/ce-unknown", _encoded("compress", b"\x00\x01squeezed"))
    server.route("/ce-gzip", _encoded("gzip", zipped))
    server.route("/ce-gzip-parameter", _encoded("gzip;q=1", zipped))
    server.route("/te-chunked-parameter", _raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked;x=1", _chunked(JSON)))
    server.route("/ce-not-a-coding", _encoded("none", JSON))
    server.route("/ce-charset", _encoded("UTF-8", JSON))
    server.route("/ce-unknown-empty", lambda h: h.reply(204, b"", {"Content-Encoding": "compress"}))
    server.route("/redirect", lambda h: h.reply(302, b"", {"Location": "/te-gzip-chunked"}))
    return server


@pytest.mark.parametrize(
    ("path", "named"),
    [
        ("te-gzip-chunked", "Transfer-Encoding: gzip"),
        ("te-gzip", "Transfer-Encoding: gzip"),
        ("ce-unknown", "Content-Encoding: compress"),
        ("ce-gzip-parameter", "Content-Encoding: gzip;q=1"),  # urllib3 compares the value as it is
        ("te-chunked-parameter", "Transfer-Encoding: chunked;x=1"),  # read to the end, framing and all
        ("redirect", "Transfer-Encoding: gzip"),  # reached through requests' redirects, not the direct route
    ],
)
def test_a_body_still_coded_is_a_489_naming_the_coding_not_a_200_of_garbage(
    routes: LoopbackServer, path: str, named: str, caplog: pytest.LogCaptureFixture
) -> None:
    transport = RequestsTransport()
    try:
        with caplog.at_level(logging.WARNING):
            response = transport.send(routes.url, get(path), DEADLINE)
    finally:
        transport.close()
    assert response.status == status.NETWORK_ERROR
    assert response.headers[X_UNREADABLE_CODING] == named
    assert response.headers["X-Do-Not-Retry"] == "1"  # the same endpoint would send the same coding again
    assert response.read() == b""
    assert named in caplog.text


@pytest.mark.parametrize("via", ["direct", "redirect"])
@pytest.mark.parametrize(
    ("coding", "body"),
    [
        ("gzip", gzip.compress(JSON)),
        ("chunked;x=1", _chunked(JSON)),
        ("gzip, chunked", _chunked(gzip.compress(JSON))),
        # No name of IANA's registry (a review: a 408 at the deadline, or from a server that closed,
        # a 200 whose body still had its chunks' framing in it).
        ("foo", _chunked(JSON)),
        ("x-chunked", _chunked(JSON)),
    ],
    ids=["gzip", "chunked-parameter", "gzip-chunked", "unknown", "unknown-like-chunked"],
)
def test_a_transfer_coding_left_on_is_a_489_at_once_from_a_server_that_keeps_the_connection(
    server: LoopbackServer, coding: str, body: bytes, via: str
) -> None:
    """A transfer coding that is not chunked leaves the body to run to the connection's close (RFC
    9112 6.3). Read, from a server that kept the connection open, it waited out the whole deadline:
    a 408, counted against the endpoint and retried, not the 489 that names the coding (a review).
    A transfer coding is the framing, not a label: a name this client does not know is one it cannot
    take off, whether or not it is in IANA's registry."""
    server.route("/kept", _kept_open(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + coding.encode(), body))
    server.route("/redirect", lambda h: h.reply(302, b"", {"Location": "/kept"}))
    transport = RequestsTransport()
    try:
        response = transport.send(server.url, get("kept" if via == "direct" else "redirect"), DEADLINE)
    finally:
        transport.close()
    assert response.status == status.NETWORK_ERROR
    assert response.headers[X_UNREADABLE_CODING] == f"Transfer-Encoding: {coding.partition(',')[0]}"
    assert response.elapsed < DEADLINE / 2  # at once: a 408 came after the whole deadline


def test_a_content_coding_left_on_with_no_length_is_a_489_at_once_from_a_server_that_keeps_the_connection(
    server: LoopbackServer,
) -> None:
    """No length either: the body ends with the connection's close, which never comes."""
    server.route("/kept", _kept_open(b"HTTP/1.1 200 OK\r\nContent-Encoding: compress", b"\x00\x01squeezed"))
    transport = RequestsTransport()
    try:
        response = transport.send(server.url, get("kept"), DEADLINE)
    finally:
        transport.close()
    assert (response.status, response.headers[X_UNREADABLE_CODING]) == (
        status.NETWORK_ERROR,
        "Content-Encoding: compress",
    )
    assert response.elapsed < DEADLINE / 2


@pytest.mark.parametrize(
    "framing", ["Transfer-Encoding: gzip", "Transfer-Encoding: identity", "Connection: keep-alive"]
)
def test_a_redirect_whose_body_ends_with_the_close_is_followed_at_once_from_a_server_that_keeps_it(
    server: LoopbackServer, framing: str
) -> None:
    """A redirect whose body only the connection's close ends (a transfer coding that is not chunked,
    or no length at all), from a server that keeps the connection open: its body was read to drop
    it, and the call waited out its deadline (a review: 408 after 3 s). It is not read now: the
    connection is closed and the redirect followed."""
    server.route("/moved", _kept_open(b"HTTP/1.1 302 Found\r\nLocation: /target\r\n" + framing.encode(), b""))
    server.route("/target", lambda h: h.reply(200, JSON, {"Content-Type": "application/json"}))
    transport = RequestsTransport()
    try:
        response = transport.send(server.url, get("moved"), DEADLINE)
    finally:
        transport.close()
    assert (response.status, response.read()) == (200, JSON)
    assert response.elapsed < DEADLINE / 2


@pytest.mark.parametrize("path", ["ce-gzip", "te-identity", "ce-not-a-coding", "ce-charset"])
def test_codings_taken_off_give_the_body(routes: LoopbackServer, path: str) -> None:
    transport = RequestsTransport()
    try:
        response = transport.send(routes.url, get(path), DEADLINE)
    finally:
        transport.close()
    assert (response.status, response.read()) == (200, JSON)


def test_an_empty_body_with_any_content_coding_is_the_answer(routes: LoopbackServer) -> None:
    """No body, nothing to decode: a 204 (or a HEAD's answer) naming a coding is fine."""
    transport = RequestsTransport()
    try:
        response = transport.send(routes.url, get("ce-unknown-empty"), DEADLINE)
    finally:
        transport.close()
    assert response.status == 204


def test_a_content_coding_the_caller_asked_for_is_handed_over_as_it_came(routes: LoopbackServer) -> None:
    transport = RequestsTransport()
    try:
        asked = transport.send(
            routes.url, request("GET", "ce-unknown", headers={"Accept-Encoding": "compress"}), DEADLINE
        )
        refused = transport.send(
            routes.url, request("GET", "ce-unknown", headers={"Accept-Encoding": "compress;q=0, gzip"}), DEADLINE
        )
    finally:
        transport.close()
    assert (asked.status, asked.read()) == (200, b"\x00\x01squeezed")
    assert refused.status == status.NETWORK_ERROR


@pytest.mark.parametrize("route", ["direct", "requests"], ids=["direct route", "requests' Session"])
@pytest.mark.parametrize("codings", ["gzip, compress", "compress, gzip", "deflate, compress, gzip"])
def test_a_list_of_content_codings_with_one_urllib3_cannot_decode_is_handed_over_as_it_came_when_asked_for(
    server: LoopbackServer, route: str, codings: str
) -> None:
    """urllib3 gave the coding it does not know deflate's decoder, which failed on it: a plain 489,
    retried and counted against the endpoint, where the caller had asked for those codings (a
    review). Not asked for, it is still the 489 that says so, not retried."""
    squeezed = gzip.compress(b"\x00\x01squeezed")
    server.route("/listed", _encoded(codings, squeezed))
    session = requests.Session()
    if route == "requests":
        session.auth = ("u", "p")  # takes requests' own path
    transport = RequestsTransport(session)
    try:
        asked = transport.send(server.url, request("GET", "listed", headers={"Accept-Encoding": codings}), DEADLINE)
        refused = transport.send(server.url, request("GET", "listed", headers={"Accept-Encoding": "gzip"}), DEADLINE)
    finally:
        transport.close()
    assert (asked.status, asked.headers["Content-Encoding"], asked.read()) == (200, codings, squeezed)
    assert (refused.status, refused.headers.get(h.X_DO_NOT_RETRY)) == (status.NETWORK_ERROR, "1")
    assert refused.headers.get(X_UNREADABLE_CODING) == "Content-Encoding: compress"


def test_a_list_of_more_than_five_codings_is_a_plain_489_even_without_a_body(server: LoopbackServer) -> None:
    """The known gap docs/faults.md names: urllib3 refuses a list of more than five codings
    (max_decode_links), even to read it as it came, and so for an empty body too."""
    server.route("/six", _encoded("gzip, gzip, gzip, gzip, gzip, compress", b""))
    transport = RequestsTransport()
    try:
        response = transport.send(server.url, request("GET", "six", headers={"Accept-Encoding": "*"}), DEADLINE)
    finally:
        transport.close()
    assert (response.status, response.headers.get(h.X_DO_NOT_RETRY)) == (status.NETWORK_ERROR, None)


def test_a_session_s_own_accept_encoding_counts_as_asked(routes: LoopbackServer) -> None:
    session = requests.Session()
    session.headers["Accept-Encoding"] = "compress"
    transport = RequestsTransport(session=session)
    try:
        response = transport.send(routes.url, get("ce-unknown"), DEADLINE)
    finally:
        transport.close()
    assert (response.status, response.read()) == (200, b"\x00\x01squeezed")


@pytest.mark.parametrize(
    ("headers", "accept", "expected"),
    [
        ({}, None, None),
        ({"Transfer-Encoding": "chunked"}, None, None),
        ({"Transfer-Encoding": "Chunked"}, None, None),
        ({"Transfer-Encoding": "identity"}, None, None),
        ({"Transfer-Encoding": "chunked, chunked"}, None, "Transfer-Encoding: chunked, chunked"),
        ({"Transfer-Encoding": "GZIP, chunked"}, "gzip", "Transfer-Encoding: gzip"),  # Accept-Encoding is for content
        ({"Content-Encoding": "gzip"}, None, None),
        ({"Content-Encoding": "x-gzip, deflate"}, None, None),
        ({"Content-Encoding": "identity"}, None, None),
        ({"Content-Encoding": ", identity, compress,"}, None, "Content-Encoding: compress"),
        ({"Content-Encoding": "identity, compress"}, "compress", None),
        ({"Content-Encoding": "compress"}, "gzip, deflate", "Content-Encoding: compress"),
        ({"Content-Encoding": "compress"}, "gzip, Compress;q=0.5", None),
        ({"Content-Encoding": "compress"}, "compress; q=0.000", "Content-Encoding: compress"),
        ({"Content-Encoding": "gzip, compress"}, "gzip", "Content-Encoding: compress"),
        ({"Content-Encoding": "compress"}, "*", None),  # RFC 9110: * names every coding
        ({"Content-Encoding": "compress"}, "*;q=0", "Content-Encoding: compress"),
        # RFC 9110 12.5.3: * matches only the codings not named; a named q=0 refuses (a review)
        ({"Content-Encoding": "compress"}, "*, compress;q=0", "Content-Encoding: compress"),
        ({"Content-Encoding": "gzip, compress"}, "compress;q=0, *", "Content-Encoding: compress"),
        ({"Content-Encoding": "compress"}, "*, br;q=0", None),
        # A coding urllib3 decodes, written so that it does not (it compares the value as it is).
        ({"Content-Encoding": "gzip;q=1"}, None, "Content-Encoding: gzip;q=1"),
        ({"Content-Encoding": "GZIP; q=1"}, "gzip", "Content-Encoding: gzip; q=1"),  # asked or not
        ({"Content-Encoding": "gzip "}, None, "Content-Encoding: gzip"),
        ({"Content-Encoding": "gzip, gzip;q=1"}, None, None),  # a list: each gets a decoder (or DecodeError)
        ({"Content-Encoding": "compress;x=1"}, "compress", None),
        ({"Content-Encoding": "compress;x=1"}, None, "Content-Encoding: compress;x=1"),
        ({"Transfer-Encoding": "gzip;q=1, chunked"}, None, "Transfer-Encoding: gzip;q=1"),
        ({"Transfer-Encoding": "chunked;x=1"}, None, "Transfer-Encoding: chunked;x=1"),
        # No coding of IANA's registry: the body is as it came (servers that send these exist).
        ({"Content-Encoding": "none"}, None, None),
        ({"Content-Encoding": "UTF-8"}, None, None),
        # A transfer coding is no label: one this client does not know leaves the body unreadable.
        ({"Transfer-Encoding": "none"}, None, "Transfer-Encoding: none"),
        ({"Transfer-Encoding": "foo, chunked"}, None, "Transfer-Encoding: foo"),
        ({"Transfer-Encoding": "identity, chunked"}, None, None),
    ],
)
def test_which_codings_leave_a_body_unreadable(
    headers: dict[str, str], accept: str | None, expected: str | None
) -> None:
    assert unreadable_coding(requests.structures.CaseInsensitiveDict(headers), accept) == expected
