"""The head of a response, as the transport's connections read it (``FinalResponse``).

Two things ``http.client`` gets wrong for a client that pools connections (and, once the head is
read, a chunked body's framing is checked: see framing.py). The end of the stream
in the middle of the head is taken for its blank line (a 200 with an empty body, see ``begin``).
And interim (1xx) responses are not skipped; here they are: the call gets the final one, and no
other call does.

``http.client`` skips ``100 Continue`` only and returns any other 1xx as the response. A 1xx has no
body, so the connection then went back to the pool with the final response still on its way, and
the *next* call on it read that answer: call B got call A's body, another request's data (a server
sending ``103 Early Hints`` does exactly this). RFC 9110 (15.2) asks a client to parse any number of
1xx responses before the final one and allows it to ignore those it did not ask for, so
:class:`FinalResponse` reads past them. ``101 Switching Protocols`` is never asked for here: it is
returned as it is, and its connection is closed rather than reused (what follows is no longer
HTTP/1.1). An endless stream of 1xx ends at the deadline, as any other read does.
"""

import http.client
from typing import Any

from django_aio_request.transport.framing import ChunkedFraming, is_chunked

__all__ = ["FinalResponse"]


class _HeadReader:
    """The response's file while its head is read: notes whether the stream ended before a blank line."""

    __slots__ = ("ended", "file")

    def __init__(self, file: Any) -> None:
        self.file = file
        self.ended = False

    def readline(self, limit: int = -1) -> bytes:
        line: bytes = self.file.readline(limit)
        if not line.endswith(b"\n"):
            self.ended = True  # end of the stream within the status line or the header fields
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


class FinalResponse(http.client.HTTPResponse):
    """``http.client.HTTPResponse`` that reads past interim responses (see the module docstring)."""

    def _read_status(self) -> tuple[str, int, str]:
        while True:
            version, status, reason = super()._read_status()  # type: ignore[misc]
            if not 100 <= status < 200 or status in (http.client.CONTINUE, http.client.SWITCHING_PROTOCOLS):
                return version, status, reason  # begin() skips 100 Continue itself
            http.client.parse_headers(self.fp)  # the interim response's fields (103's links): not wanted

    def begin(self) -> None:
        if self.headers is not None:
            return
        # http.client ends the header block at the end of the stream as at a blank line: a server
        # that closed (or died) in the middle of its headers gave a 200 with an empty body, which the
        # breaker counted as a success. A head cut short is an error (489), as a reset one is.
        file = self.fp
        watched = self.fp = _HeadReader(file)
        try:
            super().begin()
        finally:
            self.fp = file
        if watched.ended:
            raise http.client.RemoteDisconnected("the connection ended in the middle of the response's head")
        if 100 <= self.status < 200:  # 101: the connection speaks something else now
            self.will_close = True
        if self._method == "HEAD" or self.status < 200 or self.status in (204, 304):
            return  # no body, whatever the headers say
        if is_chunked(self.headers.get("Transfer-Encoding")):
            self.fp = ChunkedFraming(self.fp)  # its framing, which the parsers take leniently: framing.py
