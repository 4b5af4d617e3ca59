"""Where an answer ends, for the drainer: certain, or the connection is closed."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from django_aio_request.transport.answer_end import MAX_BODY, MAX_HEAD, AnswerEnd, NotReusable, answer_end

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n"
)


@pytest.mark.parametrize(
    ("answer", "method"),
    [
        (OK, "GET"),
        (CHUNKED, "GET"),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK, "POST"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "HEAD"),  # no body to a HEAD
        (b"HTTP/1.1 204 No Content\r\n\r\n", "GET"),
        (b"HTTP/1.1 304 Not Modified\r\n\r\n", "GET"),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", "GET"),  # its representation's
        (b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", "GET"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n", "GET"),
        (b"HTTP/1.1 200\r\ncontent-length:  5 \r\n\r\nhello", "GET"),  # no reason, white space
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "GET"),
    ],
)
def test_a_whole_answer_ends_where_it_ends_and_not_a_byte_before(answer: bytes, method: str) -> None:
    assert answer_end(answer + b"HTTP/1.1 next", method) == len(answer)
    assert answer_end(answer, method) == len(answer)
    for cut in range(len(answer)):
        assert answer_end(answer[:cut], method) is None


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, Close\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\n\r\nhello",  # ends with the connection
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nno colon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: 1\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        b"HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n",
        b"ICY 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"\r\n\r\n",
    ],
)
def test_an_answer_whose_end_is_in_any_doubt_is_not_reusable(answer: bytes) -> None:
    with pytest.raises(NotReusable):
        answer_end(answer, "GET")


@pytest.mark.parametrize(
    ("answer", "method"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "HEAD"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "HEAD"),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", "GET"),
        (b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n", "GET"),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 11\r\n\r\n", "HEAD"),  # a 304 to HEAD is HEAD's
        (b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", "HEAD"),
        # No length at all: gunicorn 23.0 (a streaming view) and aiohttp 3.14 (a StreamResponse) send
        # the body after it (a review: the next POST a 489, 10 of 10 and 8 of 8).
        (b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n", "HEAD"),
        (b"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n", "HEAD"),
    ],
)
def test_an_answer_with_no_body_that_announces_one_is_not_reusable(answer: bytes, method: str) -> None:
    """Its server may send that body after all, a moment later (gunicorn 23.0 does for HEAD): pooled
    after the head, the next call on the connection read it as its answer (a 489 on a POST the
    server had carried out, 5 of 5 in a review, once the body came 2 ms or more after the head)."""
    with pytest.raises(NotReusable):
        answer_end(answer, method)


def test_heads_and_bodies_past_the_limits_are_not_read() -> None:
    with pytest.raises(NotReusable):
        answer_end(b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD, "GET")  # no end of the head yet
    with pytest.raises(NotReusable):
        answer_end(f"HTTP/1.1 200 OK\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n".encode(), "GET")
    chunk = f"{MAX_BODY:x}\r\n".encode()
    with pytest.raises(NotReusable):
        answer_end(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk + chunk, "GET")
    assert answer_end(f"HTTP/1.1 200 OK\r\nContent-Length: {MAX_BODY}\r\n\r\n".encode(), "GET") is None


@given(st.binary(max_size=300), st.sampled_from(["GET", "HEAD", "POST"]))
def test_any_bytes_give_an_end_within_them_more_to_read_or_not_reusable(data: bytes, method: str) -> None:
    try:
        end = answer_end(data, method)
    except NotReusable:
        return
    assert end is None or 0 < end <= len(data)


@given(st.lists(st.binary(min_size=1, max_size=8), max_size=6))
def test_a_chunked_body_s_end_is_found_in_any_split(chunks: list[bytes]) -> None:
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    assert answer_end(answer, "GET") == len(answer)
    for cut in range(len(answer)):
        assert answer_end(answer[:cut], "GET") is None


def _one_shot(data: bytes, method: str) -> int | type[NotReusable] | None:
    try:
        return answer_end(data, method)
    except NotReusable:
        return NotReusable


@given(
    st.one_of(
        st.binary(max_size=200),
        st.sampled_from([OK, CHUNKED, b"HTTP/1.1 100 Continue\r\n\r\n" + OK]).map(lambda a: a + b"tail"),
    ),
    st.lists(st.integers(min_value=1, max_value=40), max_size=30),
    st.sampled_from(["GET", "HEAD"]),
)
def test_fed_piece_by_piece_it_finds_what_it_finds_in_each_whole_prefix(
    data: bytes, pieces: list[int], method: str
) -> None:
    """The drainer feeds one AnswerEnd the growing buffer: at every step it must say what a fresh
    look at the same bytes says (the end, more needed, or not reusable)."""
    finder, buffer, position = AnswerEnd(method), bytearray(), 0
    for size in [*pieces, len(data)]:
        buffer += data[position : position + size]
        position += size
        expected = _one_shot(bytes(buffer), method)
        try:
            got: int | type[NotReusable] | None = finder.feed(buffer)
        except NotReusable:
            got = NotReusable
        assert got == expected
        if got is NotReusable or got is not None:
            break
