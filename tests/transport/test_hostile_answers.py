"""RequestsTransport against answers a broken or hostile peer sends: a compressed body cut short in a
chunked message, a redirect to a host that is no valid name."""

import gzip
import random
import zlib
from collections.abc import Callable

import pytest

from django_aio_request import RequestsTransport, get
from tests.support.loopback import Handler, LoopbackServer

DEADLINE = 5.0  # generous: these tests are about outcomes, not timing


def _chunked(data: bytes, coding: str, *, chunk_size: int = 1000) -> Callable[[Handler], None]:
    """A route answering 200 with ``data`` in ``coding``, framed chunked (as servers send what they
    compress on the fly), complete: every chunk, the last chunk and the blank line after it."""

    def handle(h: Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Encoding", coding)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for start in range(0, len(data), chunk_size):
            piece = data[start : start + chunk_size]
            h.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()

    return handle


def _redirect_to(location: str) -> Callable[[Handler], None]:
    return lambda h: h.reply(302, b"", {"Location": location})


_PAYLOAD = bytes(random.Random(4).randrange(256) for _ in range(40_000))
_GZIP = gzip.compress(_PAYLOAD)
_ZLIB = zlib.compress(_PAYLOAD)  # what most servers send as "deflate"
_RAW_DEFLATE = zlib.compress(_PAYLOAD, wbits=-zlib.MAX_WBITS)  # what some send


@pytest.mark.parametrize("path", ["", "via-redirect/"], ids=["direct route", "requests' Session"])
def test_a_compressed_body_cut_short_in_a_chunked_message_is_a_489(server: LoopbackServer, path: str) -> None:
    """A complete chunked message whose gzip (or deflate) stream ends in the middle was a 200 with
    half the body, a success for the breaker: the check that the stream reached its end looked at
    urllib3's count of body bytes read, which stays 0 for a chunked body."""
    cut = {
        "gzip-half": ("gzip", _GZIP[: len(_GZIP) // 2]),
        "gzip-header-only": ("gzip", _GZIP[:12]),  # bytes read, nothing decoded yet
        "zlib-half": ("deflate", _ZLIB[: len(_ZLIB) // 2]),
        "raw-deflate-half": ("deflate", _RAW_DEFLATE[: len(_RAW_DEFLATE) // 2]),
    }
    for name, (coding, data) in cut.items():
        server.route(f"/{name}", _chunked(data, coding))
        server.route(f"/via-redirect/{name}", _redirect_to(f"/{name}"))
    transport = RequestsTransport()
    try:
        for name in cut:
            answer = transport.send(server.url, get(path + name), DEADLINE)
            assert (answer.status, answer.read()) == (489, b""), name
    finally:
        transport.close()


@pytest.mark.parametrize("path", ["", "via-redirect/"], ids=["direct route", "requests' Session"])
def test_a_whole_compressed_chunked_body_is_read_as_before(server: LoopbackServer, path: str) -> None:
    complete = {
        "gzip": ("gzip", _GZIP),
        "gzip-in-one-chunk": ("gzip", _GZIP),
        "gzip-members": ("gzip", gzip.compress(_PAYLOAD[:100]) + gzip.compress(_PAYLOAD[100:])),
        "gzip-padded": ("gzip", _GZIP + b"\x00"),  # a stray byte after it: trailing garbage, accepted
        "zlib": ("deflate", _ZLIB),
        "raw-deflate": ("deflate", _RAW_DEFLATE),
        "empty": ("gzip", b""),  # no chunk at all: no stream to end
    }
    for name, (coding, data) in complete.items():
        size = len(data) if name == "gzip-in-one-chunk" else 1000
        server.route(f"/{name}", _chunked(data, coding, chunk_size=max(size, 1)))
        server.route(f"/via-redirect/{name}", _redirect_to(f"/{name}"))
    transport = RequestsTransport()
    try:
        for name in complete:
            answer = transport.send(server.url, get(path + name), DEADLINE)
            expected = b"" if name == "empty" else _PAYLOAD
            assert (answer.status, answer.read()) == (200, expected), name
    finally:
        transport.close()
