"""Where an HTTP/1.1 answer ends in the bytes read so far: what the connection drainer needs to know
before it pools a connection whose answer nobody waits for any more (connection_drainer.py).

Strict on purpose: a connection is kept only when its answer's end is beyond doubt. Anything a
lenient parser would have to guess at (no length, ``Connection: close``, HTTP/1.0, a repeated or
unusual ``Content-Length``, a transfer coding other than ``chunked``, a header line with no colon,
a folded line, a malformed chunk, an answer with no body that announces one) raises
:class:`NotReusable`, and the connection is closed, as it was before connections were drained. A
wrong guess would hand the rest of this answer to the next call on the connection as its own.

Found as the bytes come (:class:`AnswerEnd`): each byte is looked at about once, whatever the pieces
it comes in. Parsed again from its start on every read, a body of many small chunks trickled in
fast kept the drainer thread busy for 0.65-0.83 s of CPU per second (a review).
"""

import re

__all__ = ["MAX_BODY", "MAX_HEAD", "AnswerEnd", "NotReusable", "answer_end"]

#: The most bytes of heads (interim answers' included) and of body the drainer reads of one answer:
#: past either, the connection is closed instead (a large body is cheaper to drop than to read).
MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024

_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9])(?: [^\r\n]*)?")
_FIELD_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_DIGITS = re.compile(rb"[0-9]{1,12}")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,12})[ \t]*(?:;[^\r\n]*)?")


class NotReusable(Exception):
    """The connection cannot carry another request: its answer's end is unknown or it must close."""


def answer_end(data: bytes | bytearray, method: str) -> int | None:
    """The length of the whole answer at the start of ``data`` (interim ``1xx`` answers included), or
    None while more bytes are needed; raises :class:`NotReusable`. ``method``: the request's."""
    return AnswerEnd(method).feed(data)


class AnswerEnd:
    """:func:`answer_end` of a buffer that grows between calls of :meth:`feed` (never changed in
    what it held), keeping what it found so far."""

    __slots__ = ("_body", "_chunk", "_end", "_method", "_searched", "_start", "_trailers")

    def __init__(self, method: str) -> None:
        self._method = method
        self._start = 0  # where the head being read begins (past interim answers)
        self._searched = 0  # how far the head's end was looked for
        self._body: int | None = None  # where the final answer's body begins, once its head is read
        self._end: int | None = None  # where the answer ends, once known
        self._chunk = 0  # chunked: where the next chunk-size (or trailer) line begins
        self._trailers = False  # chunked: past the last chunk

    def feed(self, data: bytes | bytearray) -> int | None:
        """The answer's end in ``data``, or None while more bytes are needed; raises :class:`NotReusable`."""
        if self._body is None and not self._read_heads(data):
            return None
        if self._end is not None:
            return self._end if len(data) >= self._end else None
        return self._read_chunks(data)

    def _read_heads(self, data: bytes | bytearray) -> bool:
        while True:
            head_end = data.find(b"\r\n\r\n", max(self._start, self._searched - 3))
            if head_end < 0:
                if len(data) > MAX_HEAD:
                    raise NotReusable("the answer's head is too long")
                self._searched = len(data)
                return False
            if head_end > MAX_HEAD:
                raise NotReusable("the answer's head is too long")
            status, fields = _head(bytes(data[self._start : head_end]))
            body = head_end + 4
            if 100 <= status < 200:
                if status == 101:
                    raise NotReusable("101 Switching Protocols")
                self._start = self._searched = body  # an interim answer: the final one follows
                continue
            self._body = body
            self._frame(status, fields, body)
            return True

    def _frame(self, status: int, fields: dict[bytes, list[bytes]], body: int) -> None:
        if "close" in _tokens(fields.get(b"connection", [])):
            raise NotReusable("Connection: close")
        codings = fields.get(b"transfer-encoding")
        lengths = fields.get(b"content-length")
        if self._method == "HEAD" or status in (204, 304):
            # No body, whatever the fields say; but one that announces a body may be sent it after
            # all (gunicorn 23.0 does, for HEAD: response_head.py, which closes such connections
            # too), and the next call on the connection read it as its answer. A 304 may state its
            # representation's framing (RFC 9112 6.1).
            announced = lengths is not None and any(v not in (b"", b"0") for v in lengths)
            if self._method == "HEAD" and (codings is not None or lengths != [b"0"]):
                # With no length at all too: gunicorn 23.0 and aiohttp 3.14 send the body after it.
                raise NotReusable("an answer to HEAD that does not say Content-Length: 0")
            if status == 204 and (codings is not None or announced):
                raise NotReusable("a 204 that announces a body")
            self._end = body
            return
        if codings is not None:
            if lengths is not None or _tokens(codings) != ["chunked"]:
                raise NotReusable("a transfer coding other than chunked alone")
            self._chunk = body
            return
        if lengths is None or len(lengths) != 1 or _DIGITS.fullmatch(lengths[0]) is None:
            raise NotReusable("no single valid Content-Length")
        length = int(lengths[0])
        if length > MAX_BODY:
            raise NotReusable("the body is larger than the drainer reads")
        self._end = body + length

    def _read_chunks(self, data: bytes | bytearray) -> int | None:
        body = self._body or 0
        position = self._chunk
        while True:
            line_end = data.find(b"\r\n", position)
            if line_end < 0:
                if len(data) - body > MAX_BODY:
                    raise NotReusable("the body is larger than the drainer reads")
                return None
            if self._trailers:
                if line_end == position:
                    self._end = line_end + 2
                    return self._end
                if b":" not in data[position:line_end]:
                    raise NotReusable("a malformed trailer line")
                position = self._chunk = line_end + 2
                continue
            matched = _CHUNK_SIZE.fullmatch(data, position, line_end)
            if matched is None:
                raise NotReusable("a malformed chunk size")
            size = int(matched.group(1), 16)
            if size == 0:
                self._trailers = True
                position = self._chunk = line_end + 2
                continue
            after = line_end + 2 + size
            if after - body > MAX_BODY:
                raise NotReusable("the body is larger than the drainer reads")
            if len(data) < after + 2:
                return None
            if data[after : after + 2] != b"\r\n":
                raise NotReusable("chunk data not followed by CRLF")
            position = self._chunk = after + 2


def _head(head: bytes) -> tuple[int, dict[bytes, list[bytes]]]:
    lines = head.split(b"\r\n")
    matched = _STATUS_LINE.fullmatch(lines[0])
    if matched is None:
        raise NotReusable("no HTTP/1.1 status line")
    fields: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or _FIELD_NAME.fullmatch(name) is None:
            raise NotReusable("a malformed header line")
        if b"\n" in value or b"\r" in value or b"\x00" in value:
            raise NotReusable("a malformed header value")
        fields.setdefault(name.lower(), []).append(value.strip(b" \t"))
    return int(matched.group(1)), fields


def _tokens(values: list[bytes]) -> list[str]:
    return [token.strip(b" \t").decode("latin-1").lower() for value in values for token in value.split(b",")]
