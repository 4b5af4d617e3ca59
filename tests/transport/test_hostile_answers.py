"""RequestsTransport against answers a broken or hostile peer sends: a compressed body cut short in a
chunked message, a redirect to a host that is no valid name."""

import gzip
import logging
import random
import socket
import zlib
from collections.abc import Callable
from typing import Any

import pytest
import requests
from urllib3.exceptions import LocationParseError

from django_aio_request import (
    Deadline,
    DefaultCircuitBreaker,
    RequestsTransport,
    Response,
    get,
    post,
    sequential_strategy,
)
from django_aio_request.transport.requests_transport import host_name_problem
from tests.support.loopback import Handler, LoopbackServer, clients, free_port, send_once

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
_FIRST_MEMBER, _SECOND_MEMBER = gzip.compress(_PAYLOAD[:100]), gzip.compress(_PAYLOAD[100:])
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
        # Several members (cat a.gz b.gz, pigz), the second cut short: only the first was checked.
        "gzip-second-member-half": ("gzip", _FIRST_MEMBER + _SECOND_MEMBER[: len(_SECOND_MEMBER) // 2]),
        "gzip-second-member-header-only": ("gzip", _FIRST_MEMBER + _SECOND_MEMBER[:10]),
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
        "gzip-members": ("gzip", _FIRST_MEMBER + _SECOND_MEMBER),
        "gzip-padded": ("gzip", _GZIP + b"\x00"),  # a stray byte after it: trailing garbage, accepted
        "gzip-members-padded": ("gzip", _FIRST_MEMBER + _SECOND_MEMBER + b"\x00" * 512),
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


_INVALID_HOSTS = {
    "space": "http://a b/x",  # requoted to a%20b
    "bang": "http://a!b/x",
    "name-of-259-characters": "http://" + "a." * 128 + "com/",
    "label-of-64-characters": "http://" + "a" * 64 + ".com/",
    "invalid-punycode": "http://xn--zz-/x",
    "empty-punycode": "http://xn--.example/",
    "non-ascii-name-idna-2008-refuses": "http://\u2603.example/",  # a snowman: no IDNA 2008 label
}


@pytest.mark.parametrize("location", list(_INVALID_HOSTS.values()), ids=list(_INVALID_HOSTS))
def test_a_redirect_to_a_host_that_is_no_valid_name_is_a_488_not_fetched_not_retried(
    server: LoopbackServer, location: str
) -> None:
    """Such a redirect went to the resolver, whose failure was a 489: retried (the endpoint that
    answered the redirect asked again) and counted against that healthy endpoint, whose circuit
    opened (502 to every call). It cannot be followed: a 488 with X-Invalid-Redirect, a success."""
    # As a server sends it: UTF-8 bytes (the loopback server writes a header's str as Latin-1).
    sent = location.encode().decode("latin-1")
    server.route("/x", lambda h: h.reply(302, b"", {"Location": sent}))
    breaker: DefaultCircuitBreaker[str, Response] = DefaultCircuitBreaker(
        break_duration=30, sampling_duration=10, minimum_throughput=3, failure_threshold=0.5
    )
    with clients(server.url) as make:
        client = make(
            metrics=False,
            safe_method_strategy=sequential_strategy(attempts_count=3),
            circuit_breaker=breaker,
        )
        for _ in range(4):
            with client.request(get("x"), deadline=Deadline.from_timeout(DEADLINE)) as response:
                assert response.status == 488
                assert response.headers["X-Invalid-Redirect"] == "LocationParseError"
                assert response.headers["Location"] == sent
    assert len(server.received("/x")) == 4  # one request a call: no retry, and the circuit stayed closed


def test_a_redirect_to_a_target_that_cannot_be_reached_is_a_489_of_the_call_retried_when_it_is_safe(
    server: LoopbackServer, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/security.md: a redirect to a valid target nothing answers at (a port nobody listens on)
    is a network failure of the call, a 489 logged under the URL the call was made to: a GET is tried
    again, as any GET that failed so, and a POST is sent once (one attempt: unsafe methods' default)."""
    target = f"http://127.0.0.1:{free_port()}/gone"
    server.route("/go", lambda h: h.reply(307, b"", {"Location": target}))
    strategy = sequential_strategy(attempts_count=3)
    with clients(server.url) as make:
        client = make(metrics=False, safe_method_strategy=strategy)  # POST: the default, one attempt
        with caplog.at_level(logging.WARNING):
            with client.request(get("go"), deadline=Deadline.from_timeout(DEADLINE)) as response:
                assert response.status == 489
            with client.request(post("go", body=b"x"), deadline=Deadline.from_timeout(DEADLINE)) as response:
                assert response.status == 489
    methods = [r.method for r in server.received("/go")]
    assert methods == ["GET"] * 3 + ["POST"]
    failed = [r.getMessage() for r in caplog.records if " failed after " in r.getMessage()]
    assert len(failed) == 4, failed
    assert all(f"{server.url.rstrip('/')}/go failed" in message for message in failed), failed


@pytest.mark.parametrize(
    "location",
    ["http://localhost:{port}/ok", "http://LocalHost:{port}/ok", "http://127.0.0.1:{port}/ok"],
)
def test_a_redirect_to_a_valid_host_is_followed(server: LoopbackServer, location: str) -> None:
    server.route("/x", lambda h: h.reply(302, b"", {"Location": location.format(port=server.port)}))
    server.route("/ok", lambda h: h.reply(200, b"ok"))
    answer = send_once(server.url, get("x"), DEADLINE)
    assert (answer.status, answer.read()) == (200, b"ok")


_INVALID_ENDPOINTS = dict(_INVALID_HOSTS)


@pytest.mark.parametrize("endpoint", list(_INVALID_ENDPOINTS.values()), ids=list(_INVALID_ENDPOINTS))
def test_an_endpoint_whose_host_is_no_valid_name_raises_before_anything_is_sent(endpoint: str) -> None:
    """Such an endpoint went to the resolver on every call: a 489 each time, the breaker's failure.
    (A non-ASCII endpoint host is encoded by urllib3 and requests before it is looked up: valid.)"""
    transport = RequestsTransport()
    try:
        with pytest.raises(LocationParseError):  # a ValueError
            transport.send(endpoint, get("y"), DEADLINE)
    finally:
        transport.close()


@pytest.mark.parametrize(
    ("host", "valid"),
    [
        ("example.com", True),
        ("example.com.", True),  # a trailing dot: the name is absolute
        ("my_api", True),  # underscores: DNS carries them, Docker Compose names services so
        ("xn--tda.example", True),  # ü.example
        ("ü.example", True),  # encoded as socket encodes it
        ("-edge-", True),  # no LDH rule for a label's ends: resolvers look such names up
        ("a" * 63 + ".com", True),
        (".".join(["a" * 63] * 3 + ["a" * 61]), True),  # 253 characters, the most
        (".".join(["a" * 63] * 3 + ["a" * 61]) + ".", True),
        (".".join(["a" * 63] * 3 + ["a" * 62]), False),  # 254
        ("a" * 64 + ".com", False),
        ("a..b", False),
        (".", False),
        ("a%20b", False),
        ("a!b", False),
        ("xn--zz-", False),
        ("XN--ZZ-", False),
        ("xn--", False),
        ("xn--abc-", False),  # punycode for "abc", which no IDNA encoder writes so
        ("xn--99999999999", False),  # not punycode at all
        # IDNA 2008, as the idna package, urllib3, requests and registries write them: Python's
        # idna codec (IDNA 2003) read xn--fa-hia as "fass" and called these "not valid punycode".
        ("xn--fa-hia.de", True),  # faß.de
        ("xn--nxasmm1c.com", True),  # βόλος.com
        ("xn--10cl1a0b660p.lk", True),  # ශ්‍රී.lk (with a zero-width joiner)
        ("faß.de", True),
        ("βόλος.com", True),
        ("ශ්‍රී.lk", True),
        ("xn--ls8h.la", True),  # 💩.la: registered under IDNA 2003, still looked up
        ("127.0.0.1", True),  # IP addresses are not names
        ("[::1]", True),
    ],
)
def test_which_host_names_are_valid(host: str, valid: bool) -> None:
    assert (host_name_problem(host) is None) == valid, host_name_problem(host)


#: IDNA 2008 names (their Unicode form: as urllib3 and requests send it, as DNS holds it).
_IDNA_2008_NAMES = {
    "faß.de": "xn--fa-hia.de",
    "βόλος.com": "xn--nxasmm1c.com",
    "\u0dc1\u0dca\u200d\u0dbb\u0dd3.lk": "xn--10cl1a0b660p.lk",  # ශ්‍රී.lk, with a zero-width joiner
}


@pytest.fixture
def idna_names_to_loopback(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of ``_IDNA_2008_NAMES`` resolve to 127.0.0.1, as a name server resolves them to their
    hosts; the names looked up, in order."""
    real_getaddrinfo = socket.getaddrinfo
    asked: list[str] = []

    def lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        asked.append(name)
        return real_getaddrinfo("127.0.0.1" if name in _IDNA_2008_NAMES.values() else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    return asked


@pytest.mark.parametrize("name", list(_IDNA_2008_NAMES.values()))
def test_a_redirect_to_an_idna_2008_name_is_followed(
    server: LoopbackServer, idna_names_to_loopback: list[str], name: str
) -> None:
    """Python's IDNA 2003 codec called these names, as every IDNA 2008 encoder writes them, "not
    valid punycode": the redirect was a 488, nothing fetched."""
    server.route("/x", _redirect_to(f"http://{name}:{server.port}/ok"))
    server.route("/ok", lambda h: h.reply(200, b"ok"))
    answer = send_once(server.url, get("x"), DEADLINE)
    assert (answer.status, answer.read()) == (200, b"ok")
    assert name in idna_names_to_loopback
    assert server.received("/ok")[0].headers["Host"] == f"{name}:{server.port}"


@pytest.mark.parametrize("route", ["requests' Session", "direct route"])
@pytest.mark.parametrize("name", list(_IDNA_2008_NAMES))
def test_a_redirect_to_a_name_in_unicode_is_followed_to_its_idna_2008_name(
    server: LoopbackServer, idna_names_to_loopback: list[str], name: str, route: str
) -> None:
    """requests percent-encodes a Location's characters that are not ASCII, the host's too
    (``fa%C3%9F.de``), a name no resolver can be asked for: the redirect was a 488. It is followed
    now to the name as urllib3 sends an endpoint written in Unicode, as a browser follows it."""
    sent = f"http://{name}:{server.port}/ok?q=\u00e9".encode().decode("latin-1")  # UTF-8 bytes, as servers send
    server.route("/x", lambda h: h.reply(302, b"", {"Location": sent}))
    server.route("/ok", lambda h: h.reply(200, b"ok"))
    session = requests.Session()
    if route == "requests' Session":
        session.auth = ("u", "p")  # takes requests' own path: the first answer is hooked there
    answer = send_once(server.url, get("x"), DEADLINE, session)
    assert (answer.status, answer.read()) == (200, b"ok")
    assert _IDNA_2008_NAMES[name] in idna_names_to_loopback
    (received,) = server.received("/ok")
    assert received.headers["Host"] == f"{_IDNA_2008_NAMES[name]}:{server.port}"
    assert received.path == "/ok?q=%C3%A9"  # the rest of the Location as requests sends it


@pytest.mark.parametrize("route", ["requests' Session", "direct route"])
@pytest.mark.parametrize("follow", [True, False], ids=["followed", "not followed"])
def test_a_redirect_to_a_name_in_unicode_shows_the_location_received(
    server: LoopbackServer, route: str, follow: bool
) -> None:
    """The host is written in ASCII only to follow the redirect: a 488 (here, for its port) and a
    redirect that is the answer showed the rewritten ``xn--`` name, on requests' path only for the
    second."""
    sent = "http://fa\u00df.example:99999/x".encode().decode("latin-1")  # UTF-8 bytes, as servers send
    server.route("/x", lambda h: h.reply(302, b"moved", {"Location": sent}))
    session = requests.Session()
    if route == "requests' Session":
        session.auth = ("u", "p")
    answer = send_once(server.url, get("x", allow_redirects=follow), DEADLINE, session)
    assert answer.status == (488 if follow else 302)
    assert answer.headers["Location"] == sent


@pytest.mark.parametrize("written", ["ascii", "unicode"])
@pytest.mark.parametrize("name", list(_IDNA_2008_NAMES))
def test_an_endpoint_of_an_idna_2008_name_is_accepted_and_called(
    server: LoopbackServer, idna_names_to_loopback: list[str], name: str, written: str
) -> None:
    """setup() refused the name as written in ASCII (xn--fa-hia.de); written in Unicode (faß.de),
    setup() checked it as IDNA 2003 reads it (fass.de) and let it pass, and then every call raised
    LocationParseError, for the xn--fa-hia.de that urllib3 makes of it. Both are called now, and so
    is the endpoint again after a redirect to a path on it."""
    sent = _IDNA_2008_NAMES[name]
    host = sent if written == "ascii" else name
    server.route("/x", _redirect_to("/ok"))
    server.route("/ok", lambda h: h.reply(200, b"ok"))
    with clients(f"http://{host}:{server.port}/") as make:
        client = make(metrics=False)
        for path in ("ok", "x"):
            with client.request(get(path), deadline=Deadline.from_timeout(DEADLINE)) as response:
                assert (response.status, response.read()) == (200, b"ok"), path
    assert sent in idna_names_to_loopback
    assert set(idna_names_to_loopback) <= {sent, "127.0.0.1"}  # the address is looked up to connect
    assert [r.headers["Host"] for r in server.received("/ok")] == [f"{sent}:{server.port}"] * 2
