"""Where an HTTP/1.1 answer ends in the bytes read so far: what the connection drainer needs to know
before it pools a connection whose answer nobody waits for any more (connection_drainer.py).

Strict on purpose: a connection is kept only when its answer's end is beyond doubt. Anything a
lenient parser would have to guess at (no length, ``Connection: close``, HTTP/1.0, a repeated or
unusual ``Content-Length``, a transfer coding other than ``chunked``, a header line with no colon,
a folded line, a malformed chunk) raises :class:`NotReusable`, and the connection is closed, as it
was before connections were drained. A wrong guess would hand the rest of this answer to the next
call on the connection as its own.
"""

import re

__all__ = ["MAX_BODY", "MAX_HEAD", "NotReusable", "answer_end"]

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


def answer_end(data: bytes, method: str) -> int | None:
    """The length of the whole answer at the start of ``data`` (interim ``1xx`` answers included), or
    None while more bytes are needed; raises :class:`NotReusable`. ``method``: the request's."""
    start = 0
    while True:
        head_end = data.find(b"\r\n\r\n", start)
        if head_end < 0:
            if len(data) > MAX_HEAD:
                raise NotReusable("the answer's head is too long")
            return None
        if head_end > MAX_HEAD:
            raise NotReusable("the answer's head is too long")
        status, fields = _head(data[start:head_end])
        body_start = head_end + 4
        if 100 <= status < 200:
            if status == 101:
                raise NotReusable("101 Switching Protocols")
            start = body_start  # an interim answer: the final one follows
            continue
        if "close" in _tokens(fields.get(b"connection", [])):
            raise NotReusable("Connection: close")
        if method == "HEAD" or status in (204, 304):
            return body_start  # no body, whatever the fields say
        codings = fields.get(b"transfer-encoding")
        if codings is not None:
            if b"content-length" in fields or _tokens(codings) != ["chunked"]:
                raise NotReusable("a transfer coding other than chunked alone")
            return _chunked_end(data, body_start)
        lengths = fields.get(b"content-length")
        if lengths is None or len(lengths) != 1 or _DIGITS.fullmatch(lengths[0]) is None:
            raise NotReusable("no single valid Content-Length")
        length = int(lengths[0])
        if length > MAX_BODY:
            raise NotReusable("the body is larger than the drainer reads")
        end = body_start + length
        return end if len(data) >= end else None


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


def _chunked_end(data: bytes, start: int) -> int | None:
    position = start
    while True:
        line_end = data.find(b"\r\n", position)
        if line_end < 0:
            _check_size(data, start)
            return None
        matched = _CHUNK_SIZE.fullmatch(data, position, line_end)
        if matched is None:
            raise NotReusable("a malformed chunk size")
        size = int(matched.group(1), 16)
        position = line_end + 2
        if size == 0:
            while True:  # trailer lines, then the empty line
                line_end = data.find(b"\r\n", position)
                if line_end < 0:
                    _check_size(data, start)
                    return None
                if line_end == position:
                    return line_end + 2
                if b":" not in data[position:line_end]:
                    raise NotReusable("a malformed trailer line")
                position = line_end + 2
        after = position + size
        if after - start > MAX_BODY:
            raise NotReusable("the body is larger than the drainer reads")
        if len(data) < after + 2:
            return None
        if data[after : after + 2] != b"\r\n":
            raise NotReusable("chunk data not followed by CRLF")
        position = after + 2


def _check_size(data: bytes, start: int) -> None:
    if len(data) - start > MAX_BODY:
        raise NotReusable("the body is larger than the drainer reads")
