"""The head of a response, as the transport's connections read it (``FinalResponse``).

Three things ``http.client`` gets wrong for a client that pools connections (and, once the head is
read, a chunked body's framing is checked: see framing.py).

The end of the stream in the middle of the head is taken for its blank line (a 200 with an empty
body, see ``_read_fields``).

A header line it cannot parse ends the header block without a word. Its parser is the ``email``
package's: a line with no colon, a space in the field's name or before its colon, a NUL or a
non-ASCII byte in the name is recorded as a "defect" and that line and every one after it are
taken for the start of the body (urllib3 only logs "Failed to parse headers"). The fields after it
were lost, ``Content-Length``, ``Transfer-Encoding`` and ``Content-Encoding`` among them: a
keep-alive server's answer waited for the end of the stream (a 408 at the deadline), a closing
one's was a 200 whose body was still gzip or still in chunk framing. The field section is parsed
here instead, as RFC 9112 (5) says a field line is: a name that is a token, a colon, a value. Any
other line is a :class:`MalformedHead`, an ``http.client.HTTPException`` (urllib3 makes it a
``ProtocolError``, the transport a 489), as other answers that are not valid HTTP are. Lines that
were harmless are still taken as before: an empty value, whitespace-preceded lines before the first
field (RFC 9112 2.2 lets a recipient ignore them) and a first line ``From ...``. ``http.client``'s
limit of 100 header lines is :data:`MAX_HEADER_LINES` here, the bytes they may take in all
:data:`MAX_HEAD_BYTES` (a head past either is a :class:`HeadTooLarge`).

And interim (1xx) responses are not skipped; here they are: the call gets the final one, and no
other call does. ``http.client`` skips ``100 Continue`` only and returns any other 1xx as the
response. A 1xx has no body, so the connection then went back to the pool with the final response
still on its way, and the *next* call on it read that answer: call B got call A's body, another
request's data (a server sending ``103 Early Hints`` does exactly this). RFC 9110 (15.2) asks a
client to parse any number of 1xx responses before the final one and allows it to ignore those it
did not ask for, so :class:`FinalResponse` reads past them. ``101 Switching Protocols`` is never
asked for here: it is returned as it is, and its connection is closed rather than reused (what
follows is no longer HTTP/1.1). An endless stream of 1xx ends at the deadline, as any other read
does.
"""

import http.client
import re
import threading
from collections.abc import Callable
from typing import Any

from django_aio_request.transport.codings import is_no_coding
from django_aio_request.transport.framing import ChunkedFraming, is_chunked

__all__ = ["MAX_HEADER_LINES", "MAX_HEAD_BYTES", "FinalResponse", "HeadTooLarge", "MalformedHead", "NothingReceived"]

#: The most header lines (fields, and the continuation lines of folded ones) a response's head may
#: have. HTTP sets no limit; ``http.client`` stops at 100 with the blank line after them (its
#: ``_MAXHEADERS``), which valid answers pass: a hundred ``Set-Cookie`` fields were a 489, retried
#: and counted against the endpoint.
MAX_HEADER_LINES = 1000
_MAX_LINE = 65536  # the longest header line, in bytes: http.client's _MAXLINE
#: The most bytes the header lines may take in all: what ``http.client``'s limits allowed (100
#: lines of 64 KiB), so that no head it took is refused and one takes no more memory than before.
MAX_HEAD_BYTES = 100 * _MAX_LINE
# A field's name: RFC 9110's token.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# The fields http.client's begin() reads to frame the body and decide whether the connection is kept.
_FRAMING = frozenset({"transfer-encoding", "content-length", "connection", "keep-alive", "proxy-connection"})


class MalformedHead(http.client.HTTPException):
    """A header line that is not valid HTTP/1.1 (the message names what, never the peer's bytes)."""


class NothingReceived(http.client.RemoteDisconnected):
    """The connection ended (closed or reset) before any byte of an answer came: on a kept-alive
    connection, the server may have closed it as the request went out (attempt_sockets.py)."""


class HeadTooLarge(http.client.HTTPException):
    """A head past this client's limits: more than :data:`MAX_HEADER_LINES` header lines, one longer
    than 64 KiB (or a status line), or more than :data:`MAX_HEAD_BYTES` in all. It may be valid HTTP: the endpoint
    answered, and would answer the same again."""


_STATUS_LINE_START = b"HTTP/"


def _refuse_what_cannot_begin_a_status_line(fp: Any) -> None:
    """Raise ``BadStatusLine`` when the first bytes that came cannot begin a status line (which starts
    ``HTTP/``), as ``http.client`` does once the line has ended: binary bytes or a banner with no line
    end, on a connection the peer kept open, held the attempt for the rest of a line until its
    deadline (a 408 where garbage is a 489: a review). Looks only at what one read brings (``peek``);
    a peer that sends ``HT`` and waits is read on as a status line."""
    peek = getattr(fp, "peek", None)
    if peek is None:
        return
    start = peek(len(_STATUS_LINE_START))[: len(_STATUS_LINE_START)]
    if start and not _STATUS_LINE_START.startswith(start):
        raise http.client.BadStatusLine(start.decode("latin-1"))


def _read_fields(file: Any) -> list[tuple[str, str]]:
    """The header fields of a head whose status line was read, through the blank line after them.

    ``http.client`` ends the header block at the end of the stream as at a blank line: a server that
    closed (or died) in the middle of its headers gave a 200 with an empty body, which the breaker
    counted as a success. A head cut short is an error (489), as a reset one is.

    A value is taken as RFC 9110 (5.5) and 9112 (5.2) say a recipient takes it: the whitespace
    around it is not part of it, each obs-fold (a line that starts with a space or tab continues the
    one before) is one space, and a CR or NUL inside it is a space (a CR ended the line for
    ``http.client``'s parser, whose rest became a field of its own). ``http.client`` kept the
    whitespace after the value and the fold's CRLF, and urllib3 and requests compare values as they
    are: ``Content-Encoding: gzip `` left the body compressed (a 200), ``Location: /target ``
    redirected to ``/target%20``.
    """
    # Each field's name and the parts of its value: a fold adds a part, where joining the value so far
    # to each fold's line made a head of many long folded lines cost CPU growing with their square
    # (990 lines of 6.5 KB, within the limits: 0.5 s, against 0.02 s as separate fields; a review).
    fields: list[tuple[bytes, list[bytes]]] = []
    lines = size = 0
    while True:
        line: bytes = file.readline(_MAX_LINE + 1)
        if len(line) > _MAX_LINE:
            raise HeadTooLarge(f"a header line longer than {_MAX_LINE} bytes")
        if not line.endswith(b"\n"):
            raise http.client.RemoteDisconnected("the connection ended in the middle of the response's head")
        if line in (b"\r\n", b"\n"):
            break
        lines += 1
        size += len(line)
        if lines > MAX_HEADER_LINES:
            raise HeadTooLarge(f"more than {MAX_HEADER_LINES} header lines")
        if size > MAX_HEAD_BYTES:
            raise HeadTooLarge(f"header lines of more than {MAX_HEAD_BYTES} bytes")
        content = line.rstrip(b"\r\n")
        if content[:1] in (b" ", b"\t"):  # continues the line before (obs-fold)
            if fields:
                _fold_into(fields[-1][1], content)
            continue  # before any field: ignored (RFC 9112 2.2)
        if lines == 1 and content.startswith(b"From "):
            continue  # http.client's parser took it for a mailbox's separator, and always has
        name, colon, value = content.partition(b":")
        if not colon or _TOKEN.fullmatch(name) is None:
            raise MalformedHead("a header line that is not a field name, a colon and a value")
        fields.append((name, [_spaced(value.lstrip(b" \t"))]))
    return [(name.decode("ascii"), b"".join(parts).strip(b" \t").decode("iso-8859-1")) for name, parts in fields]


def _fold_into(parts: list[bytes], line: bytes) -> None:
    """Continue the value made of ``parts`` with the obs-fold ``line``: the whitespace the value ends
    with and the line's before its text are one space. Each part is stripped or dropped at most once."""
    while parts:
        last = parts[-1].rstrip(b" \t")
        if last:
            parts[-1] = last
            break
        parts.pop()
    parts.append(b" " + _spaced(line.lstrip(b" \t")))


def _spaced(value: bytes) -> bytes:
    """``value`` with each CR and NUL in it replaced by a space (RFC 9110 5.5)."""
    return value.replace(b"\r", b" ").replace(b"\x00", b" ")


def _framing_fields(fields: list[tuple[str, str]]) -> dict[str, str]:
    """The fields the body is framed by and whether the connection is kept is decided by (their names
    lower-cased, to their values), as urllib3, which reads the body, takes them.

    urllib3 joins the fields of one name with ``", "``, as RFC 9110 5.3 says a recipient may (their
    lines are one list), and reads the body as chunked when any element of ``Transfer-Encoding`` is
    ``chunked``; ``http.client``'s ``begin`` took the first field of a name. Framed by the first
    field alone, ``Transfer-Encoding: identity`` (or an empty one) then ``Transfer-Encoding:
    chunked`` was chunked for urllib3 only: read by its lenient parser, past the framing check
    (framing.py), and the connection closed after it. Here the fields of a name are one value, a
    ``Transfer-Encoding`` urllib3 reads as chunked is ``chunked``, and a ``Content-Length`` is its
    one number (:func:`_content_length`), else its first field."""
    values: dict[str, list[str]] = {}
    for name, value in fields:
        lowered = name.lower()
        if lowered in _FRAMING:
            values.setdefault(lowered, []).append(value)
    framing = {}
    for lowered, given in values.items():
        value = ", ".join(given)
        if lowered == "transfer-encoding" and is_chunked(value):
            value = "chunked"
        elif lowered == "content-length":
            value = _content_length(value) or given[0]
        framing[lowered] = value
    return framing


def length_elements(value: str) -> list[str]:
    """The elements of a ``Content-Length`` value, one number or a list (``5, 6``, or fields joined),
    the blanks around each taken off and the empty ones left out (RFC 9110 5.6.1)."""
    return [element for element in (part.strip(" \t") for part in value.split(",")) if element]


def _content_length(value: str) -> str | None:
    """The one number a ``Content-Length`` list repeats (``2, 2``), as urllib3 reads it (``int()``
    each element, which refuses more than 4,300 digits before it converts any), or None.

    RFC 9110 8.6 lets a recipient take such a list for the number, and urllib3 does; ``http.client``
    could not ``int()`` it, and read to the end of the stream: a keep-alive server's answer waited
    for the deadline. A list of different numbers (``5, 6``) is refused before (:func:`_check_content_length`),
    and a single value is taken as it came."""
    if "," not in value:
        return None
    try:
        lengths = {int(part) for part in length_elements(value)}
    except ValueError:
        return None
    return str(lengths.pop()) if len(lengths) == 1 else None


def _message(fields: list[tuple[str, str]]) -> http.client.HTTPMessage:
    """The response's headers, as ``http.client`` hands them on, from its fields."""
    message = http.client.HTTPMessage()
    # Content-Encoding fields are one list (RFC 9110 5.3), as urllib3 reads them: joined, in the
    # place of the first, what names no coding taken out (a value that names none is left out).
    encodings = [value for name, value in fields if name.lower() == "content-encoding"]
    codings = _without_identity(", ".join(encodings)) if encodings else ""
    for name, value in fields:
        if name.lower() != "content-encoding":
            message[name] = value
        elif codings:
            message[name], codings = codings, ""
    return message


def _closes(version: int, framing: dict[str, str]) -> bool:
    """Whether the connection ends after this response, by its framing fields (lower-cased names).

    As ``http.client`` decides it: HTTP/1.1 keeps a connection unless ``Connection`` names
    ``close``; HTTP/1.0 closes it unless ``Keep-Alive`` is there or ``Connection`` or
    ``Proxy-Connection`` names ``keep-alive``."""
    connection = framing.get("connection", "").lower()
    if version == 11:
        return "close" in connection
    return not (
        framing.get("keep-alive")
        or "keep-alive" in connection
        or "keep-alive" in framing.get("proxy-connection", "").lower()
    )


def _check_content_length(fields: list[tuple[str, str]]) -> None:
    """Raise :class:`MalformedHead` for a ``Content-Length`` that frames no body: one that is not
    digits (``1 2``, ``-5``, ``0x2``, ``+3``, ``0_3``, ``٣``, an empty value), alone or in a list.

    RFC 9112 6.3: such framing is invalid, an unrecoverable error; the client closes the connection
    and discards the response. urllib3 and ``http.client`` ignored a value ``int()`` refuses and read
    the body to the connection's end: from a server keeping the connection open, that waited for the
    deadline (a 408 at its end, and the attempt retried), and took ``+3`` and ``٣`` for 3. Without
    ``Transfer-Encoding`` only, which frames the body when both come; a list of different numbers
    (``5, 6``, or two fields ``5`` and ``6``) is refused too, with or without empty elements: urllib3
    refused ``5, 6`` but not ``5, 6,``, whose ``int("")`` it took for no length, and the body was read
    to the connection's end (a 200 cut short from a closing server, a 408 from a keep-alive one: a
    review). One number repeated (``2, 2``) is that number. Not the answers that have no body
    whatever the field says (1xx, 204, 304, to HEAD)."""
    lengths = [value for name, value in fields if name.lower() == "content-length"]
    if not lengths or any(name.lower() == "transfer-encoding" for name, _ in fields):
        return
    numbers = [number for value in lengths for number in length_elements(value)]
    if not numbers or not all(number.isascii() and number.isdigit() for number in numbers):
        raise MalformedHead("a Content-Length that is not a number")
    if len(numbers) > 1 and len({number.lstrip("0") for number in numbers}) > 1:
        raise MalformedHead("a Content-Length list of different numbers")


def _without_identity(value: str) -> str:
    """A ``Content-Encoding`` value without the elements that name no coding: empty elements and
    ``identity`` (RFC 9110 5.6.1: a recipient ignores empty list elements; ``identity`` names no
    coding) and, in a list, names that are no content coding at all (``gzip, none``: see
    codings.py). urllib3 gives every element of a list a decoder, deflate's to those it does not
    know: ``gzip, identity``, ``, gzip``, ``gzip,`` and ``gzip, none`` were a ``DecodeError`` (a 489,
    retried and counted against the endpoint) for a body that gzip alone decodes, and ``none, UTF-8``
    one for a body in no coding. A value with nothing to take out is kept as it came, and so is a
    single name that is no coding (urllib3 leaves the body alone then)."""
    elements = [element.strip(" \t") for element in value.split(",")]
    listed = len(elements) > 1
    kept = [
        element
        for element in elements
        if element and element.lower() != "identity" and not (listed and is_no_coding(element))
    ]
    return value if len(kept) == len(elements) else ", ".join(kept)


class FinalResponse(http.client.HTTPResponse):
    """``http.client.HTTPResponse`` that reads past interim responses and parses its header fields
    as HTTP does (see the module docstring)."""

    _interim_read = False  # a 1xx came: whatever ends the connection after it, the server had the request
    # http.client's own, which its stubs do not declare.
    _method: str | None
    _close_conn: Callable[[], None]
    fp: Any  # the socket's file, or the chunked framing around it

    def close(self) -> None:
        """Close, by the first thread that does: a close from another thread, then or later, does nothing.

        urllib3 gives the connection back to its pool once the body was read, and closes the
        response again right after; meanwhile the connection may go to another attempt, which closes
        it (the server closed it), and ``http.client`` then closes the connection's last response,
        this one. ``IOBase.close()`` flushes before it marks the file closed, and the flush of a file
        the other thread marked closed in between raised "I/O operation on closed file": a 489 for
        an answer read whole (1 call in about 5,000 with 16 threads on a server that resets every
        second request).

        The first thread claims the response in one step (``dict.setdefault``, atomic), and only it
        closes it; the same thread may close it again (the garbage collector finalizing it within
        the close, a second close after the first). Not a lock: one lock for every response (as
        it was) made a close that waits, such as one made while another thread is blocked reading
        the response (the file's close waits for that read), hold every other response's close in
        the process as long (2.6 s in a review's probe); and a lock held at a fork stays held."""
        me = threading.get_ident()
        if self.__dict__.setdefault("_aio_request_closed_by", me) != me:
            return
        # A close that raises leaves nothing for another to do: IOBase marks the file closed and
        # http.client drops the response's file whatever the flush or the file's close raised.
        super().close()

    def _read_status(self) -> tuple[str, int, str]:
        """The final (or ``100``/``101``) status line, past the interim responses before it and their
        fields. The proxy tunnel's ``_tunnel`` calls it on its own and then reads the fields of the
        answer to ``CONNECT`` itself; :meth:`begin` reads the final response's."""
        # begin() calls this again after a 100 Continue: an interim response read then still counts.
        first = not self._interim_read
        while True:
            self._before_status_line()
            try:
                _refuse_what_cannot_begin_a_status_line(self.fp)
                version, status, reason = super()._read_status()  # type: ignore[misc]
            except http.client.LineTooLong as error:  # a status line past 64 KiB: a plain 489, retried
                too_long = HeadTooLarge(f"a status line longer than {_MAX_LINE} bytes")
                too_long.first_line = first  # type: ignore[attr-defined]
                raise too_long from error
            except (http.client.RemoteDisconnected, ConnectionResetError) as error:
                if not first:  # after an interim response: the server had the request
                    raise
                raise NothingReceived(f"the connection ended before any answer: {error}") from error
            except http.client.BadStatusLine as error:
                # What a kept-alive connection's GuardedHTTPConnection.getresponse() looks at: the
                # answer's first line was no status line (the rest of an earlier answer, maybe). One
                # that starts as one ("HTTP/1.1 2000 OK") is the server's, malformed.
                line = str(error.args[0]) if error.args else ""
                error.first_line = first and not line.startswith("HTTP/")  # type: ignore[attr-defined]
                raise
            first = False
            if 100 <= status < 200:
                self._interim_read = True
            if status > 599:
                # RFC 9110 (15) has 100-599; http.client refuses only what is outside 100-999, and a
                # 600 was an answer: accepted, not retried, a success for the breaker. A 489 now,
                # as a 2000 or a 099 is.
                raise http.client.BadStatusLine(f"{version} {status} {reason}".strip())
            if not 100 <= status < 200 or status in (http.client.CONTINUE, http.client.SWITCHING_PROTOCOLS):
                return version, status, reason  # begin() skips 100 Continue itself
            _read_fields(self.fp)  # the interim response's fields (103's links): not wanted

    def _before_status_line(self) -> None:
        """Called before each status line is read (interim responses come before the final one)."""

    def begin(self) -> None:
        """Read the head: what ``http.client``'s ``begin`` sets (status, version, headers, how the
        body is framed, whether the connection closes after it), from the fields read once, here.

        ``http.client``'s own would parse the block again with the ``email`` package (about 10 µs of
        a 300 µs loopback call: docs/benchmarks.md) and frame the body by the first field of a name,
        where urllib3, which reads the body, takes them all (:func:`_framing_fields`)."""
        if self.headers is not None:
            return
        fields = self._read_head()
        self.headers = self.msg = _message(fields)
        if self.debuglevel > 0:  # as http.client prints them
            for name, value in self.headers.items():
                print("header:", name + ":", value)
        self._frame_body(_framing_fields(fields))

    def _read_head(self) -> list[tuple[str, str]]:
        """Read the final status line (past 100 Continue) and the fields after it; set the status,
        reason and HTTP version."""
        while True:
            version, status, reason = self._read_status()
            if status != http.client.CONTINUE:
                break
            skipped = _read_fields(self.fp)  # the 100 Continue's fields: not wanted
            if self.debuglevel > 0:  # as http.client prints them
                print("headers:", skipped)
        self.code = self.status = status
        self.reason = reason.strip()
        # The fields first, then the version: a head past the limits is HeadTooLarge (not retried)
        # whatever its status line says.
        fields = _read_fields(self.fp)
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10  # a "0.9" status line is taken for 1.0, as http.client takes it
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        if not self._bodiless():
            _check_content_length(fields)
        return fields

    def _bodiless(self) -> bool:
        """Whether the response has no body, whatever its fields say (RFC 9112 6.3)."""
        return self._method == "HEAD" or self.status < 200 or self.status in (204, 304)

    def _frame_body(self, framing: dict[str, str]) -> None:
        """Set how the body is read and whether the connection ends after it, from the framing
        fields (lower-cased names)."""
        # urllib3 reads the body as chunked when chunked is in the Transfer-Encoding fields, joined.
        chunked = framing.get("transfer-encoding") == "chunked"
        # 101: the connection speaks something else now.
        self.will_close = 100 <= self.status < 200 or _closes(self.version, framing)
        self.chunk_left = None
        if self._bodiless():
            # http.client still took the 304 or 204 that names chunked (a 304 may: RFC 9112 6.1)
            # for chunked, and urllib3 read its chunks from the next answer's bytes, or waited for
            # them until the deadline: its read_chunked reads nothing from a response already
            # closed, and gives the connection back to the pool then.
            self.chunked, self.length = False, 0
            length = framing.get("content-length")
            if (
                self._method == "HEAD"
                and ("transfer-encoding" in framing or length is None or length.strip(" \t") != "0")
            ) or (
                self.status == 204 and ("transfer-encoding" in framing or (length or "0").strip(" \t") not in ("", "0"))
            ):
                # An answer to HEAD that announces a body: a server may send that body after all
                # (gunicorn 23.0 does, a moment after the head, for a view that streams one or a
                # redirect's page), and on a kept connection the next request read it as its answer's
                # start: sent again when it could go again (OutOfStep), a 489 when it could not (a
                # POST its server had read and acted on: 40-93 of 1,200 after HEADs on 4 threads).
                # The cost: the request after a HEAD opens a connection of its own. So for a 204,
                # which RFC 9110 forbids both fields (8.6, 6.1 of RFC 9112): one naming chunked and
                # then sending the last chunk 10 ms later made the next POST a 489 (3 of 3, a review).
                # A 304 may name its representation's framing (RFC 9112 6.1), and keeps its connection.
                # An answer to HEAD with no length at all is closed too: gunicorn 23.0 (a streaming
                # view) and aiohttp 3.14 (a StreamResponse) send one, then the body (a review: the
                # next POST a 489, 10 of 10 and 8 of 8); only "Content-Length: 0" keeps it.
                self.will_close = True
            if chunked:
                self._close_conn()
            return
        self.chunked, self.length = chunked, None
        length = framing.get("content-length")
        if "transfer-encoding" in framing and (length is not None or self.version == 10):
            # Framing RFC 9112 calls faulty (6.1: a Transfer-Encoding in an HTTP/1.0 answer, and beside
            # a Content-Length, a sign of response splitting): read as before, and the connection not
            # used again. Kept, the bytes its server sent after what the body was read as came as the
            # next call's answer, and every later call on it got the answer of the call before.
            self.will_close = True
        if chunked:
            self.fp = ChunkedFraming(self.fp)  # its framing, which the parsers take leniently: framing.py
            return
        if length:
            # Digits, unless a Transfer-Encoding that is not chunked came with it: then, as
            # http.client does, a value that is not a length ("-2") is none (the body is read to the end).
            try:
                self.length = int(length)
            except ValueError:  # more than 4,300 digits, or a list of different numbers (urllib3 refuses it)
                self.length = None
            if self.length is not None and self.length < 0:
                self.length = None
        if self.length is None:
            self.will_close = True  # the body ends where the stream does
