"""A chunked body's framing that is not valid HTTP/1.1 (transport/framing.py): a 489 on both paths, where the
parsers' leniency made it a 200 with whatever they read; valid framing, however it is split into
reads, still reads as before."""

import gzip
import io
import random
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from django_aio_request import RequestsTransport, get
from django_aio_request.core import status
from django_aio_request.transport.framing import ChunkedFraming, MalformedFraming
from django_aio_request.transport.requests_transport import X_RESPONSE_TOO_LARGE
from tests.support.loopback import LoopbackServer
from tests.support.raw_server import KeepAliveClosingServer, RawAnswerServer
from tests.transport.test_response_head_fields import NEXT, ROUTES, HoldingServer, TurnServer, _sent, _then_next

DEADLINE = 5.0
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.fixture
def raw_server() -> Iterator[RawAnswerServer]:
    server = RawAnswerServer()
    yield server
    server.close()


def _call(server: RawAnswerServer, answer: bytes, route: str) -> tuple[int, bytes]:
    """``answer`` to a GET, through a transport of its own (no connection left from another case)."""
    server.answer = answer
    session = requests.Session()
    if route == "requests":
        session.auth = ("u", "p")  # takes requests' own path
    transport = RequestsTransport(session)
    try:
        response = transport.send(server.url, get("x"), DEADLINE)
        return response.status, response.read()
    finally:
        transport.close()


MALFORMED = {
    "chunk data not followed by CRLF": CHUNKED + b"3\r\nabcXX3\r\ndef\r\n0\r\n\r\n",
    "chunk data followed by LF alone": CHUNKED + b"3\r\nabc\n3\r\ndef\r\n0\r\n\r\n",
    "chunk size 0x3": CHUNKED + b"0x3\r\nabc\r\n0\r\n\r\n",
    "chunk size +3": CHUNKED + b"+3\r\nabc\r\n0\r\n\r\n",
    "chunk size 0_3": CHUNKED + b"0_3\r\nabc\r\n0\r\n\r\n",
    "chunk size after a space": CHUNKED + b" 3\r\nabc\r\n0\r\n\r\n",
    "last chunk size 0x0": CHUNKED + b"3\r\nabc\r\n0x0\r\n\r\n",
    "101 trailer lines": CHUNKED + b"3\r\nabc\r\n0\r\n" + b"X-T: 1\r\n" * 101 + b"\r\n",
    "trailers over 64 KiB": CHUNKED + b"3\r\nabc\r\n0\r\n" + (b"X-T: " + b"a" * 1000 + b"\r\n") * 70 + b"\r\n",
}

VALID = {
    "upper-case hexadecimal": (CHUNKED + b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
    "leading zeros": (CHUNKED + b"0003\r\nabc\r\n000\r\n\r\n", b"abc"),
    "an extension, after spaces": (CHUNKED + b"3 ;name=value\r\nabc\r\n0;last\r\n\r\n", b"abc"),
    "lines ended by LF alone": (CHUNKED + b"3\nabc\r\n0\n\n", b"abc"),
    "a trailer": (CHUNKED + b"3\r\nabc\r\n0\r\nX-Checksum: 1\r\n\r\n", b"abc"),
    "100 trailer lines": (CHUNKED + b"3\r\nabc\r\n0\r\n" + b"X-T: 1\r\n" * 100 + b"\r\n", b"abc"),
    "no blank line after the last chunk": (CHUNKED + b"3\r\nabc\r\n0\r\n", b"abc"),
    # The stream ends in the last chunk's size line: the body is whole, and the parsers take it so.
    "the last chunk's size line without its end": (CHUNKED + b"3\r\nabc\r\n0", b"abc"),
    "the last chunk's size line ended by CR alone": (CHUNKED + b"3\r\nabc\r\n0\r", b"abc"),
    # The stream ends in the trailer section, the server closing: the body is whole (docs/faults.md).
    "a trailer field cut in half": (CHUNKED + b"3\r\nabc\r\n0\r\nT: ", b"abc"),
    "a trailer line without its end": (CHUNKED + b"3\r\nabc\r\n0\r\nX-Checksum: 1", b"abc"),
}


@pytest.mark.parametrize("route", ["direct", "requests"], ids=["direct route", "requests' Session"])
@pytest.mark.parametrize("answer", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_framing_is_a_489(raw_server: RawAnswerServer, answer: bytes, route: str) -> None:
    """urllib3 took ``int(size, 16)`` (``0x3`` is 3) and dropped the two bytes after a chunk's data
    unread: these were 200s with ``abc`` or ``abcdef``."""
    assert _call(raw_server, answer, route) == (status.NETWORK_ERROR, b"")


@pytest.mark.parametrize("route", ["direct", "requests"], ids=["direct route", "requests' Session"])
@pytest.mark.parametrize("case", list(VALID.values()), ids=list(VALID))
def test_valid_framing_reads_as_before(raw_server: RawAnswerServer, case: tuple[bytes, bytes], route: str) -> None:
    answer, body = case
    assert _call(raw_server, answer, route) == (200, body)


@pytest.mark.parametrize("size", [b"3", b"0x3"])
def test_a_followed_redirect_s_malformed_chunks_are_a_489(
    raw_server: RawAnswerServer, server: LoopbackServer, size: bytes
) -> None:
    """A redirect's body is read by http.client's parser (as lenient as urllib3's) before it is
    followed: one framed so was followed as if it were valid."""
    server.route("/next", lambda h: h.reply(200, b"ok"))
    redirect = b"HTTP/1.1 302 Found\r\nLocation: %snext\r\nTransfer-Encoding: chunked\r\n\r\n" % server.url.encode()
    expected = (200, b"ok") if size == b"3" else (status.NETWORK_ERROR, b"")
    assert _call(raw_server, redirect + size + b"\r\nabc\r\n0\r\n\r\n", "direct") == expected


def _chunked(pieces: list[bytes], extension: bytes, lf_only: bool) -> bytes:
    end = b"\n" if lf_only else b"\r\n"
    framed = b"".join(b"%x%s%s%s\r\n" % (len(piece), extension, end, piece) for piece in pieces if piece)
    return framed + b"0" + end + end


def _read_all(stream: bytes, cuts: list[int], method: str) -> bytes:
    """Read ``stream`` through ChunkedFraming, in reads ending at ``cuts`` then to the end."""
    framing = ChunkedFraming(io.BufferedReader(io.BytesIO(stream)))
    read: list[bytes] = []
    at = 0
    while True:
        amount = min([cut for cut in cuts if cut > at] or [len(stream) + 1]) - at
        if method == "readinto":
            buffer = bytearray(amount)
            data = bytes(buffer[: framing.readinto(buffer)])
        else:
            data = getattr(framing, method)(amount)
        if not data:
            return b"".join(read)
        read.append(data)
        at += len(data)


@settings(max_examples=200, deadline=None)
@given(
    pieces=st.lists(st.binary(max_size=40), max_size=6),
    extension=st.sampled_from([b"", b";a=b", b" \t;x"]),
    lf_only=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
    method=st.sampled_from(["read", "read1", "readinto", "readline"]),
)
def test_valid_framing_passes_however_it_is_split_into_reads(
    pieces: list[bytes], extension: bytes, lf_only: bool, cuts: list[int], method: str
) -> None:
    stream = _chunked(pieces, extension, lf_only)
    assert _read_all(stream, cuts, method) == stream


@settings(max_examples=200, deadline=None)
@given(
    pieces=st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=6),
    which=st.integers(min_value=0),
    stray=st.binary(min_size=2, max_size=2).filter(lambda b: b != b"\r\n"),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
def test_chunk_data_not_followed_by_crlf_is_refused_however_it_is_split(
    pieces: list[bytes], which: int, stray: bytes, cuts: list[int]
) -> None:
    which %= len(pieces)
    stream = b"".join(
        b"%x\r\n%s%s" % (len(piece), piece, stray if index == which else b"\r\n") for index, piece in enumerate(pieces)
    )
    with pytest.raises(MalformedFraming):
        _read_all(stream + b"0\r\n\r\n", cuts, "read")


class KeptOpenServer(KeepAliveClosingServer):
    """Answers every request with ``answer`` and keeps the connection open; with ``flood``, then sends
    that line without end, until the client closes the connection."""

    def __init__(self, answer: bytes, flood: bytes = b"") -> None:
        self.kept_answer, self.flood = answer, flood
        super().__init__(lambda connection, number: None)

    def respond(self, conn: socket.socket, connection: int, head: bytes) -> bool:
        conn.sendall(self.kept_answer)
        if self.flood:
            block = self.flood * (65536 // len(self.flood))
            while True:  # an OSError ends it: the client closed the connection
                conn.sendall(block)
        return True


def _calls_at_once(answer: bytes, flood: bytes, route: str, threads: int) -> list[tuple[int, bytes, float]]:
    """(status, body, seconds) of ``threads`` calls at once through one transport, to a server that
    keeps its connections open after ``answer`` (and ``flood``)."""
    server = KeptOpenServer(answer, flood)
    session = requests.Session()
    if route == "requests":
        session.auth = ("u", "p")
    transport = RequestsTransport(session)
    results: list[tuple[int, bytes, float]] = []

    def call() -> None:
        started = time.monotonic()
        response = transport.send(server.url, get("x"), DEADLINE)
        body = response.read()
        results.append((response.status, body, time.monotonic() - started))

    try:
        for _ in range(2):  # the second round on whatever connections the first left in the pool
            workers = [threading.Thread(target=call) for _ in range(threads)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(DEADLINE + 5)
    finally:
        transport.close()
        server.close()
    assert len(results) == 2 * threads
    return results


@pytest.mark.parametrize("route", ["direct", "requests"], ids=["direct route", "requests' Session"])
@pytest.mark.parametrize("threads", [1, 8])
def test_a_trailer_section_without_end_is_a_489_at_once(route: str, threads: int) -> None:
    """A review: urllib3 reads trailer lines in a loop nothing interrupts, and a peer that sent them
    without end held 32 threads' calls up to 2.5 s past a 0.3 s deadline. The trailer section is
    bounded as a head is (100 lines, 64 KiB)."""
    results = _calls_at_once(CHUNKED + b"3\r\nabc\r\n0\r\n", b"X-Trailer: a\r\n", route, threads)
    assert {(status_, body) for status_, body, _ in results} == {(status.NETWORK_ERROR, b"")}
    assert max(seconds for *_, seconds in results) < 1.0  # not the deadline (5 s) and more


@pytest.mark.parametrize("route", ["direct", "requests"], ids=["direct route", "requests' Session"])
@pytest.mark.parametrize(
    ("answer", "flood"),
    [
        (CHUNKED + b"3\r\nabc\r\n0\r\nX-Trailer: 1\n\n", b""),
        (CHUNKED + b"3\r\nabc\r\n0\r\n\n", b""),
        (CHUNKED + b"3\r\nabc\r\n0\r\n", b"\n"),
    ],
    ids=["a trailer, then a bare LF", "a bare LF", "bare LFs without end"],
)
def test_a_trailer_section_ended_by_a_bare_lf_ends_the_answer_on_a_kept_connection(
    answer: bytes, flood: bytes, route: str
) -> None:
    """http.client takes a bare LF for the blank line that ends the trailers; urllib3 only CRLF, and read
    on: on a connection the server kept open, the call waited out its whole deadline and answered 408
    (a review). Each call, the second round's on the connections the first left, reads its own answer."""
    results = _calls_at_once(answer, flood, route, 4)
    assert {(status_, body) for status_, body, _ in results} == {(200, b"abc")}
    assert max(seconds for *_, seconds in results) < 1.0


@ROUTES
@pytest.mark.parametrize(
    ("limit", "body"),
    [
        (1024, b"8000000000000000\r\nabc"),
        (1024, b"401\r\nabc"),
        (10, b"6\r\nabcdef\r\n5\r\nabc"),
    ],
    ids=["a chunk of 2**63 bytes", "a chunk one byte above the limit", "a second chunk that passes it"],
)
def test_a_chunk_that_takes_the_body_past_the_limit_is_refused_at_its_size_line(
    route: str, limit: int, body: bytes
) -> None:
    """As a ``Content-Length`` that large is: a 489 saying the body is too large, not retried, at
    once. urllib3 reads a chunk's data whole before it hands any on, so from a server that declared
    such a chunk and then sent no more while keeping the connection open, the call waited for its
    deadline and ended in a 408, a failure for the endpoint's breaker (a review)."""
    server = HoldingServer()
    try:
        response, elapsed = _sent(server, CHUNKED + body, route, max_response_size=limit)
    finally:
        server.close()
    refusal = (response.status, response.headers.get(X_RESPONSE_TOO_LARGE), response.headers.get("X-Do-Not-Retry"))
    assert refusal == (status.NETWORK_ERROR, str(limit), "1")
    assert elapsed < DEADLINE / 5


COMPRESS = b"HTTP/1.1 200 OK\r\nContent-Encoding: compress\r\n"


@ROUTES
@pytest.mark.parametrize(
    "answer",
    [
        COMPRESS + b"Transfer-Encoding: chunked\r\n\r\n401\r\nabc",
        COMPRESS + b"Content-Length: 1025\r\n\r\nabc",
        COMPRESS + b"Content-Length: 100000000\r\n\r\nabc",
    ],
    ids=["a chunk of 1025 bytes", "a Content-Length of 1025", "a Content-Length of 100,000,000"],
)
def test_a_body_in_a_coding_urllib3_leaves_as_it_came_is_refused_at_once_when_it_says_it_is_past_the_limit(
    route: str, answer: bytes
) -> None:
    """A coding the caller accepted that urllib3 has no decoder for (``compress``; ``br`` without
    brotli) is read as it came, and its bytes are the body the limit counts: its chunks were held
    to four times the limit and 64 KiB, as a decoded body's are, and its ``Content-Length`` was not
    looked at; from a server that sent no more, each was a 408 at the deadline (two reviews)."""
    server = HoldingServer()
    server.answer = answer
    session = requests.Session()
    if route == "requests":
        session.auth = ("u", "p")  # takes requests' own path
    transport = RequestsTransport(session, max_response_size=1024)
    try:
        started = time.monotonic()
        response = transport.send(server.url, get("x", headers={"Accept-Encoding": "compress"}), DEADLINE)
        elapsed = time.monotonic() - started
    finally:
        transport.close()
        server.close()
    assert (response.status, response.headers.get(X_RESPONSE_TOO_LARGE)) == (status.NETWORK_ERROR, "1024")
    assert elapsed < DEADLINE / 5


@ROUTES
def test_after_a_chunk_refused_for_its_size_the_next_call_gets_its_own_answer_on_a_new_connection(route: str) -> None:
    """The refused chunk's data is not read: its connection is closed, never pooled half-read."""
    server = TurnServer(CHUNKED + b"6\r\nabcdef\r\n5\r\nabcde\r\n0\r\n\r\n", NEXT)
    first, _, second = _then_next(server, route, max_response_size=10)
    assert (first.status, first.headers.get(X_RESPONSE_TOO_LARGE)) == (status.NETWORK_ERROR, "10")
    assert (second.status, second.read()) == (200, b"next")
    assert server.connections == 2


@ROUTES
def test_chunks_that_fill_the_limit_exactly_are_read_and_their_connection_kept(route: str) -> None:
    server = TurnServer(CHUNKED + b"6\r\nabcdef\r\n4\r\nghij\r\n0\r\n\r\n", NEXT)
    first, _, second = _then_next(server, route, max_response_size=10)
    assert (first.status, first.read()) == (200, b"abcdefghij")
    assert (second.status, second.read()) == (200, b"next")
    assert server.connections == 1


GZIP_CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"


@ROUTES
def test_a_compressed_chunk_larger_than_the_limit_is_read_when_what_it_holds_is_not(route: str) -> None:
    """The limit is on the decoded body: a gzip chunk of random bytes is larger than what it holds,
    and is read (the coded bytes may be four times the limit, and 64 KiB more)."""
    held = random.Random(5).randbytes(1000)
    coded = gzip.compress(held)
    assert len(coded) > 1000
    server = TurnServer(GZIP_CHUNKED + b"%x\r\n%s\r\n0\r\n\r\n" % (len(coded), coded), NEXT)
    first, _, second = _then_next(server, route, max_response_size=1000)
    assert (first.status, first.read()) == (200, held)
    assert (second.status, second.read()) == (200, b"next")


@ROUTES
@pytest.mark.parametrize("framing", ["chunked", "Content-Length"])
def test_a_compressed_body_past_what_its_coded_bytes_may_be_is_refused_at_once(route: str, framing: str) -> None:
    """Four times the limit and 64 KiB: said by a chunk's size line or by the ``Content-Length``
    (that one was read from a server that sent no more until the deadline, a review)."""
    server = HoldingServer()
    try:
        past = 4 * 1000 + 65536 + 1
        if framing == "chunked":
            answer = GZIP_CHUNKED + b"%x\r\n\x1f\x8b" % past
        else:
            answer = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n\x1f\x8b" % past
        response, elapsed = _sent(server, answer, route, max_response_size=1000)
    finally:
        server.close()
    assert (response.status, response.headers.get(X_RESPONSE_TOO_LARGE)) == (status.NETWORK_ERROR, "1000")
    assert elapsed < DEADLINE / 5
