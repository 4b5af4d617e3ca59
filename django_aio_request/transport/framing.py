"""The framing of a chunked body, checked where the transport's connections read it.

Both parsers that read a body here, urllib3's ``read_chunked`` (every answer the transport takes)
and ``http.client``'s (a redirect's body dropped before it is followed), are lenient where
RFC 9112 is not. A chunk size is parsed with ``int(line, 16)``, which takes ``0x3``, ``+3``,
``0_3`` and whitespace around the digits for 3; and the two bytes after a chunk's data are thrown
away unread, whatever they are: ``3\\r\\nabcXX3\\r\\ndef...`` gave ``abcdef``. A peer (or a proxy in
between) that frames a body so was a 200 with whatever the parser made of it, which the breaker
counted as a success.

:class:`ChunkedFraming` wraps the response's file while a chunked body is read and raises
:class:`MalformedFraming` (an ``http.client.HTTPException``: urllib3 makes it a ``ProtocolError``,
the transport a 489) on a chunk-size line that is not hexadecimal digits (then optional spaces
and a ``;`` extension) or chunk data not followed by CRLF. What the parsers tolerate harmlessly
is still tolerated: a bare LF ending a line, and a body that ends without the blank line after the
last chunk. It looks only at the lines and at the two bytes after each chunk's data; the data
itself is only counted, so a large body costs a few calls per chunk.

A chunk whose size line declares more data than the body may still hold (:meth:`ChunkedFraming.bound`,
set by the transport from ``max_response_size``) raises :class:`ChunkAboveLimit` at that line: the
parsers read a chunk's data whole before handing any of it on, so a peer that declared a huge chunk
and then sent nothing more held the call until its deadline, where a ``Content-Length`` that large
is refused before anything is read.

The trailer section after the last chunk is bounded as a head is (``_MAX_TRAILER_LINES`` lines,
``_MAX_LINE`` bytes in all): urllib3 reads its lines in a loop that nothing interrupts, and a peer
sending trailer lines without end held calls past their deadline (a review: 32 threads, 2.5 s past
a 0.3 s one). A bare LF ending it is taken as its end, as ``http.client`` takes it; urllib3 takes only
CRLF and read on, so from there a line read here is the end of the stream: the call waited out its
deadline for the CRLF that never came and answered 408 (a review).
"""

import http.client
import re
from typing import Any

__all__ = ["ChunkAboveLimit", "ChunkedFraming", "MalformedFraming", "is_chunked"]


class MalformedFraming(http.client.HTTPException):
    """The body's framing is not valid HTTP/1.1 (the message names what, never the peer's bytes)."""


class ChunkAboveLimit(http.client.HTTPException):
    """A chunk declared more data than :meth:`ChunkedFraming.bound` lets the body hold. An
    ``HTTPException``, as :class:`MalformedFraming`: urllib3 wraps it in a ``ProtocolError`` and
    closes the connection."""


# A chunk-size line: hexadecimal digits, optional whitespace before an extension (RFC 9112 7.1.1's
# BWS; extensions are not looked at: the parsers ignore them), and the line's end (CRLF, or a bare
# LF, which RFC 9112 2.2 lets a recipient take for one).
_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]+)[ \t]*(?:;[^\r\n]*)?\r?\n")
# The longest line kept across reads that end in its middle (the parsers read whole lines with
# readline(); urllib3 refuses lines longer than 1,024 bytes itself).
_MAX_LINE = 64 * 1024
# The most trailer lines after the last chunk (http.client's limit on a head's fields).
_MAX_TRAILER_LINES = 100

_SIZE, _DATA, _CR, _LF, _TRAILER, _DONE = range(6)


def is_chunked(transfer_encoding: str | None) -> bool:
    """Whether urllib3 reads the body as chunked: ``chunked`` is one of the codings named (urllib3
    looks for it in the list; ``http.client`` only for the value ``chunked`` alone)."""
    if not transfer_encoding:
        return False
    lowered = transfer_encoding.lower()
    return "chunked" in lowered and any(part.strip() == "chunked" for part in lowered.split(","))


class ChunkedFraming:
    """The response's file while a chunked body is read: checks its framing as it goes by.

    Every read the parsers make goes through it (``readline`` for the size lines and trailers,
    ``read``, ``read1`` or ``readinto`` for the data and the CRLF after it); whatever they read is
    fed to a small state machine, whatever the reads' boundaries. The end of the stream is left to
    the parsers, which take it for a body cut short where it is one.
    """

    __slots__ = ("_left", "_line", "_room", "_state", "_trailer_bytes", "_trailer_lines", "file")

    def __init__(self, file: Any) -> None:
        self.file = file
        self._state = _SIZE
        self._left = 0  # bytes of the current chunk's data still to come
        self._line = b""  # the start of a line a read ended in the middle of
        self._trailer_lines = 0  # the trailer section's lines so far
        self._trailer_bytes = 0  # and its bytes
        self._room: int | None = None  # the chunk data the body may still hold; None: no bound

    def bound(self, most: int) -> None:
        """Refuse (:class:`ChunkAboveLimit`) a chunk that takes the body's data past ``most`` bytes
        in all, at its size line."""
        self._room = most

    def readline(self, limit: int = -1) -> bytes:
        if self._state == _DONE:
            # Past the blank line that ends the trailers: a line read now is the next answer's, or
            # waits for bytes that never come (urllib3 reads on after a bare LF, see the docstring).
            return b""
        line: bytes = self.file.readline(limit)
        self._check(line)
        return line

    def read(self, amount: int | None = None) -> bytes:
        data: bytes = self.file.read(amount)
        self._check(data)
        return data

    def read1(self, amount: int = -1) -> bytes:
        data: bytes = self.file.read1(amount)
        self._check(data)
        return data

    def readinto(self, buffer: Any) -> int:
        count: int = self.file.readinto(buffer)
        if count:
            self._check(memoryview(buffer)[:count].tobytes())
        return count

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)

    def _check(self, data: bytes) -> None:
        """Feed ``data`` to the state machine; raise on a framing error."""
        at, end = 0, len(data)
        while at < end:
            state = self._state
            if state == _DATA:
                taken = min(self._left, end - at)
                self._left -= taken
                at += taken
                if not self._left:
                    self._state = _CR
            elif state in (_CR, _LF):
                if data[at] != (13 if state == _CR else 10):
                    raise MalformedFraming("chunk data not followed by CRLF")
                at += 1
                self._state = _LF if state == _CR else _SIZE
            elif state == _DONE:
                return  # past the body: not this response's
            else:  # a size line, or a trailer line after the last chunk
                newline = data.find(b"\n", at)
                if newline < 0:
                    self._line += data[at:]
                    if len(self._line) > _MAX_LINE:
                        raise MalformedFraming("chunk line too long")
                    return
                line, self._line = self._line + data[at : newline + 1], b""
                at = newline + 1
                if state == _TRAILER:
                    self._trailer_line(line)
                    continue
                match = _SIZE_LINE.fullmatch(line)
                if match is None:
                    raise MalformedFraming("chunk size is not hexadecimal")
                self._size(int(match.group(1), 16))

    def _size(self, size: int) -> None:
        """A chunk of ``size`` bytes comes next (0: the last chunk, the trailers follow)."""
        self._left = size
        self._state = _DATA if size else _TRAILER
        if self._room is not None:
            self._room -= size
            if self._room < 0:
                raise ChunkAboveLimit("a chunk larger than the body may be")

    def _trailer_line(self, line: bytes) -> None:
        """A line of the trailer section: its end (CRLF, or a bare LF), or one more field, bounded."""
        if line in (b"\r\n", b"\n"):
            self._state = _DONE
            return
        self._trailer_lines += 1
        self._trailer_bytes += len(line)
        if self._trailer_lines > _MAX_TRAILER_LINES or self._trailer_bytes > _MAX_LINE:
            raise MalformedFraming("trailer section too long")
