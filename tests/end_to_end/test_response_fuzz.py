"""Answers no downstream should send, from a raw socket: whatever comes back, ``client.request()``
ends with a status by its deadline, with every strategy, and reading the body raises nothing but
the documented ``ValueError`` of ``json()`` (``json.JSONDecodeError``) and ``UnexpectedContentTypeError``.

Hypothesis mutates the status line, header names and values, the framing (Content-Length, chunked,
both, neither), content encodings and redirect targets. Every case it found is kept below as a
named regression (``REGRESSIONS``), with the status it must end as. The summary of what was tried
is printed (``pytest -s``): answers by kind, statuses, exceptions escaped (0).
"""

import collections
import contextlib
import gzip
import threading
import time
import zlib
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import django_aio_request as dar
from django_aio_request import Client, DefaultCircuitBreaker, RequestStrategy, Response, UnexpectedContentTypeError
from django_aio_request.core import status
from django_aio_request.transport.requests_transport import (
    X_INVALID_REDIRECT,
    X_RESPONSE_TOO_LARGE,
    X_UNREADABLE_CODING,
)
from tests.support.raw_server import RawAnswerServer
from tests.support.resources import eventually, open_fds

DEADLINE = 1.0
#: How far past its deadline a call may end on a busy two-core machine.
SLACK = 0.5
#: Bounded for CI (which runs the suite twice): about 10 s here for the three strategies.
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

STRATEGIES: dict[str, Callable[[], RequestStrategy]] = {
    "single": dar.single_attempt_strategy,
    "sequential": lambda: dar.sequential_strategy(attempts_count=2, delays_provider=dar.constant_delays(delay=0.0)),
    "parallel": lambda: dar.parallel_strategy(attempts_count=2, delays_provider=dar.constant_delays(delay=0.0)),
    "retry_until_deadline": lambda: dar.retry_until_deadline_expired(
        dar.single_attempt_strategy(), delays_provider=dar.constant_delays(delay=0.02)
    ),
}
#: Retrying until the deadline makes a rejected answer last the whole deadline: a shorter one, fewer examples.
DEADLINES = {"retry_until_deadline": 0.2}
EXAMPLES = {"retry_until_deadline": 30}


def _client(url: str, strategy: str) -> Client:
    # A breaker that never opens, so that it records the outcome of every attempt and every call
    # still reaches the server.
    breaker: DefaultCircuitBreaker[str, Response] = DefaultCircuitBreaker(
        break_duration=1.0, sampling_duration=10.0, minimum_throughput=10**9, failure_threshold=0.5
    )
    return dar.setup(
        endpoint=url,
        metrics=False,
        timeout=DEADLINES.get(strategy, DEADLINE),
        safe_method_strategy=STRATEGIES[strategy](),
        circuit_breaker=breaker,
        retry_budget=None,
        max_workers=4,
    )


def call(client: Client) -> tuple[Response, float]:
    """One call and a read of its body the ways a caller would; fails on any other exception."""
    started = time.monotonic()
    with client.request(dar.get("fuzz")) as response:
        elapsed = time.monotonic() - started
        assert isinstance(response.read(), bytes)
        assert isinstance(response.text(), str)
        with contextlib.suppress(ValueError, UnexpectedContentTypeError):
            response.json()
        with contextlib.suppress(ValueError):
            response.json(content_type=None)
    return response, elapsed


# --- the answers ---------------------------------------------------------------------------------------

LATIN1 = st.characters(min_codepoint=0, max_codepoint=255)
NUMBERS = st.one_of(
    st.integers(0, 300).map(str),
    st.sampled_from(["\u00b2", "5, 6", "9" * 5000, "0" * 5000 + "3", "-1", "", " 3", "3 ", "0x10", "1e3", "+3", "3;"]),
    st.text(LATIN1, max_size=8),
)
REDIRECT_TARGETS = st.one_of(
    st.sampled_from(
        [
            *("http://[bad", "ftp://x/y", "http://a..b/", "", "//", "///", "/relative", "?q", "#frag", "http://"),
            *("http://127.0.0.1:99999/", "http://a%00b/", "http://\xe9.invalid/", "https://[::1", "http:/x", "x:"),
            *("http://" + "a" * 70 + ".com/", "javascript:alert(1)", "file:///etc/passwd", "mailto:x@y"),
        ]
    ),
    st.text(LATIN1, max_size=30),
)
HEADER_NAMES = st.one_of(
    st.sampled_from(
        ["X-A", "Content-Type", "Set-Cookie", "Connection", "Content-Encoding", "Location", "X-Do-Not-Retry"]
    ),
    st.text(LATIN1, max_size=12),
)
HEADER_VALUES = st.one_of(
    st.sampled_from(["application/json", "text/plain; charset=base64", "text/html; charset=rot13", "close", "1"]),
    st.text(LATIN1, max_size=40),
)
ENCODINGS = st.sampled_from(["gzip", "deflate", "br", "zstd", "identity", "gzip, gzip", "x-nonsense", "gzip, br"])


@st.composite
def answers(draw: st.DrawFn) -> tuple[bytes, frozenset[str]]:
    """A response's bytes and the kinds of mutation in it (for the summary)."""
    kinds = set()
    # Mostly valid status lines, so that the rest of the answer is read too.
    version = draw(st.sampled_from(["HTTP/1.1"] * 4 + ["HTTP/1.0", "HTTP/2", "http/1.1", "HTTP/9.9", ""]))
    redirect = draw(st.booleans())
    if redirect:
        kinds.add("redirect")
        code = draw(st.sampled_from(["301", "302", "303", "307", "308"]))
    elif draw(st.integers(0, 4)):
        code = draw(st.integers(100, 599).map(str))
    else:
        code = draw(st.sampled_from(["20", "2000", "-1", "\u00b200", "", "abc", "099"]))
    reason = draw(st.text(LATIN1, max_size=10))
    status_line = f"{version} {code} {reason}"
    if version not in ("HTTP/1.1", "HTTP/1.0") or not code.isascii() or not code.isdigit() or len(code) != 3:
        kinds.add("status-line")
    if draw(st.integers(0, 9)) == 0:
        status_line = draw(st.text(LATIN1, max_size=30))
        kinds.add("status-line")
    headers = draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=4))
    if headers:
        kinds.add("headers")
    if redirect:
        headers.append(("Location", draw(REDIRECT_TARGETS)))
    body = draw(st.binary(max_size=120))
    encoding = draw(st.none() | ENCODINGS)
    if encoding is not None:
        kinds.add("encoding")
        if draw(st.booleans()):  # really encoded (by the first of the names), or left as is
            body = gzip.compress(body) if encoding.startswith("gzip") else zlib.compress(body)
        headers.append(("Content-Encoding", encoding))
    framing = draw(st.sampled_from(["content-length", "chunked", "both", "neither"]))
    kinds.add(f"framing:{framing}")
    if framing in ("chunked", "both"):
        headers.append(("Transfer-Encoding", draw(st.sampled_from(["chunked", "chunked, chunked", "gzip, chunked"]))))
        size = draw(st.sampled_from([f"{len(body):x}", f"{len(body) + 3:x}", "zz", "f" * 40, "-1"]))
        body = f"{size}\r\n".encode() + body + draw(st.sampled_from([b"\r\n0\r\n\r\n", b"\r\n", b"", b"\r\n0\r\n"]))
    if framing in ("content-length", "both"):
        lengths = draw(st.lists(st.just(str(len(body))) | NUMBERS, min_size=1, max_size=2))
        headers.extend(("Content-Length", length) for length in lengths)
    lines = [status_line, *(f"{name}: {value}" for name, value in headers)]
    head = "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n"
    if draw(st.integers(0, 9)) == 0:  # a cut anywhere
        kinds.add("cut")
        whole = head + body
        return whole[: draw(st.integers(0, len(whole)))], frozenset(kinds)
    return head + body, frozenset(kinds)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_no_answer_raises_or_outlasts_the_deadline(strategy: str, gc_off: None) -> None:
    server = RawAnswerServer()
    client = _client(server.url, strategy)
    with client.request(dar.get("warm-up")) as response:  # process-wide threads (the deadline timer) start
        assert response.status in (status.NETWORK_ERROR, status.TIMEOUT)  # 408: retried until the deadline
    threads, fds = threading.active_count(), open_fds()
    tried: collections.Counter[str] = collections.Counter()
    statuses: collections.Counter[int] = collections.Counter()
    escaped: list[BaseException] = []
    worst = 0.0

    deadline = DEADLINES.get(strategy, DEADLINE)

    @settings(FUZZ, max_examples=EXAMPLES.get(strategy, FUZZ.max_examples))
    @given(answer=answers())
    def fuzz(answer: tuple[bytes, frozenset[str]]) -> None:
        nonlocal worst
        server.answer, kinds = answer
        tried.update(kinds)
        tried["answers"] += 1
        try:
            response, elapsed = call(client)
        except BaseException as error:
            escaped.append(error)
            raise
        worst = max(worst, elapsed)
        statuses[response.status] += 1
        assert elapsed <= deadline + SLACK, (elapsed, answer)
        assert isinstance(response.status, int)

    try:
        fuzz()
    finally:
        client.close()
        server.close()
    kinds = dict(sorted((k, v) for k, v in tried.items() if k != "answers"))
    print(
        f"\n[response fuzz, {strategy}] answers tried: {tried['answers']}; by kind: {kinds}; "
        f"statuses: {dict(sorted(statuses.items()))}; "
        f"exceptions escaped: {len(escaped)}; slowest call: {worst:.3f} s (deadline {deadline} s)"
    )
    assert escaped == []
    assert eventually(lambda: threading.active_count() <= threads, timeout=3.0), threading.enumerate()
    assert eventually(lambda: open_fds() <= fds, timeout=3.0), f"descriptors: {fds} before, {open_fds()} after (GC off)"
    assert server.open_connections == 0


# --- what the fuzzing found, kept by name ---------------------------------------------------------------


def _answer(head: str, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").encode("latin-1") + b"\r\n\r\n" + body


def _redirect_to(location: str) -> bytes:
    return _answer(f"HTTP/1.1 302 Found\nLocation: {location}\nContent-Length: 0")


_GZIPPED = gzip.compress(b'{"a": 1}')

#: name -> (answer, status it ends as, header the synthetic response carries or None)
REGRESSIONS: dict[str, tuple[bytes, int, str | None]] = {
    # str.isdigit() is true for "²", int() refuses it: urllib3 ignored the header and read until close
    # (a 200); no number frames no body (RFC 9112 6.3), a 489.
    "content_length_superscript": (
        _answer("HTTP/1.1 200 OK\nContent-Length: \u00b2", b"ab"),
        status.NETWORK_ERROR,
        None,
    ),
    # More digits than int() converts: larger than any size limit.
    "content_length_5000_digits": (
        _answer("HTTP/1.1 200 OK\nContent-Length: " + "9" * 5000, b"ab"),
        status.NETWORK_ERROR,
        X_RESPONSE_TOO_LARGE,
    ),
    "content_length_leading_zeros": (_answer("HTTP/1.1 200 OK\nContent-Length: " + "0" * 5000 + "2", b"ab"), 200, None),
    "content_length_list": (_answer("HTTP/1.1 200 OK\nContent-Length: 5, 6", b"abcde"), status.NETWORK_ERROR, None),
    "two_content_lengths": (
        _answer("HTTP/1.1 200 OK\nContent-Length: 5\nContent-Length: 6", b"abcde"),
        status.NETWORK_ERROR,
        None,
    ),
    "content_length_negative": (
        _answer("HTTP/1.1 200 OK\nContent-Length: -1", b"ab"),
        status.NETWORK_ERROR,
        None,
    ),
    "chunk_size_not_hex": (
        _answer("HTTP/1.1 200 OK\nTransfer-Encoding: chunked", b"zz\r\nab\r\n0\r\n\r\n"),
        status.NETWORK_ERROR,
        None,
    ),
    "gzip_that_is_not": (
        _answer("HTTP/1.1 200 OK\nContent-Encoding: gzip\nContent-Length: 3", b"abc"),
        status.NETWORK_ERROR,
        None,
    ),
    # Codings urllib3 does not take off: the body came still compressed, a 200 of garbage.
    "transfer_coding_gzip_then_chunked": (
        _answer(
            "HTTP/1.1 200 OK\nTransfer-Encoding: gzip, chunked", b"%x\r\n" % len(_GZIPPED) + _GZIPPED + b"\r\n0\r\n\r\n"
        ),
        status.NETWORK_ERROR,
        X_UNREADABLE_CODING,
    ),
    "chunked_twice": (
        _answer("HTTP/1.1 200 OK\nTransfer-Encoding: chunked, chunked", b"c\r\n2\r\nhi\r\n0\r\n\r\n\r\n0\r\n\r\n"),
        status.NETWORK_ERROR,
        X_UNREADABLE_CODING,
    ),
    "content_coding_not_asked_for": (
        _answer("HTTP/1.1 200 OK\nContent-Encoding: compress\nContent-Length: 3", b"abc"),
        status.NETWORK_ERROR,
        X_UNREADABLE_CODING,
    ),
    "redirect_to_invalid_ipv6": (_redirect_to("http://[bad"), status.TOO_MANY_REDIRECTS, X_INVALID_REDIRECT),
    "redirect_to_ftp": (_redirect_to("ftp://x/y"), status.TOO_MANY_REDIRECTS, X_INVALID_REDIRECT),
    "redirect_to_empty_label": (_redirect_to("http://a..b/"), status.TOO_MANY_REDIRECTS, X_INVALID_REDIRECT),
    "redirect_to_label_over_63": (
        _redirect_to("http://" + "a" * 70 + ".com/"),
        status.TOO_MANY_REDIRECTS,
        X_INVALID_REDIRECT,
    ),
    "redirect_to_port_out_of_range": (
        _redirect_to("http://127.0.0.1:99999/"),
        status.TOO_MANY_REDIRECTS,
        X_INVALID_REDIRECT,
    ),
    # No server listens on port 0: followed, it was a 489, retried and counted against the endpoint (a review).
    "redirect_to_port_0": (_redirect_to("http://127.0.0.1:0/x"), status.TOO_MANY_REDIRECTS, X_INVALID_REDIRECT),
    "redirect_to_null_byte_host": (_redirect_to("http://a%00b/"), status.TOO_MANY_REDIRECTS, X_INVALID_REDIRECT),
    "redirect_with_empty_location": (_redirect_to(""), status.TOO_MANY_REDIRECTS, X_INVALID_REDIRECT),
    "redirect_location_not_utf8": (_redirect_to("http://\xff\xfe/"), status.TOO_MANY_REDIRECTS, X_INVALID_REDIRECT),
    "redirect_scheme_relative_bad_ipv6": (_redirect_to("//[::1"), status.TOO_MANY_REDIRECTS, X_INVALID_REDIRECT),
    "redirect_to_javascript": (_redirect_to("javascript:alert(1)"), status.TOO_MANY_REDIRECTS, X_INVALID_REDIRECT),
    "status_out_of_range": (_answer("HTTP/1.1 2000 OK\nContent-Length: 0"), status.NETWORK_ERROR, None),
    "not_http_at_all": (b"SSH-2.0-OpenSSH_9.6\r\n", status.NETWORK_ERROR, None),
    "charset_that_is_no_text_encoding": (
        _answer("HTTP/1.1 200 OK\nContent-Type: application/json; charset=base64\nContent-Length: 2", b"{}"),
        200,
        None,
    ),
    "json_nested_too_deep": (
        _answer(f"HTTP/1.1 200 OK\nContent-Type: application/json\nContent-Length: {100_000}", b"[" * 100_000),
        200,
        None,
    ),
}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("name", list(REGRESSIONS))
def test_regression(name: str, strategy: str) -> None:
    answer, expected, header = REGRESSIONS[name]
    server = RawAnswerServer(answer)
    client = _client(server.url, strategy)
    try:
        response, elapsed = call(client)
    finally:
        client.close()
        server.close()
    if strategy == "retry_until_deadline" and expected == status.NETWORK_ERROR and header is None:
        # Rejected every time and retried until the deadline: the last attempt's 489, or a 408 when
        # the deadline cut the last one short.
        assert response.status in (status.NETWORK_ERROR, status.TIMEOUT)
    else:
        assert response.status == expected
    assert elapsed <= DEADLINES.get(strategy, DEADLINE) + SLACK
    if header is not None:
        assert header in response.headers


@pytest.mark.parametrize("name", ["content_length_list", "redirect_to_invalid_ipv6", "gzip_that_is_not"])
def test_a_half_open_probe_that_gets_a_malformed_answer_ends_the_half_open_state(name: str) -> None:
    """The probe's outcome is recorded like any other: the circuit opens again (a 489) or closes
    (a 488 is an answer: the endpoint is up), never stays half-open with every call getting 502."""
    answer, expected, _ = REGRESSIONS[name]
    server = RawAnswerServer(_answer("HTTP/1.1 500 Oops\nContent-Length: 0"))
    breaker: DefaultCircuitBreaker[str, Response] = DefaultCircuitBreaker(
        break_duration=0.2, sampling_duration=10.0, minimum_throughput=2, failure_threshold=0.5
    )
    client = dar.setup(
        endpoint=server.url,
        metrics=False,
        timeout=DEADLINE,
        safe_method_strategy=dar.single_attempt_strategy(),
        circuit_breaker=breaker,
    )
    try:
        for _ in range(2):
            call(client)
        assert breaker.state[client.endpoint] is dar.CircuitState.OPEN
        time.sleep(0.25)
        server.answer = answer
        response, _ = call(client)  # the probe
        assert response.status == expected
        state = breaker.state[client.endpoint]
        assert state is (dar.CircuitState.OPEN if expected == status.NETWORK_ERROR else dar.CircuitState.CLOSED)
    finally:
        client.close()
        server.close()


@pytest.mark.parametrize("location", ["http://[bad", "http://\xff\xfe/", "ftp://x/y"])
def test_an_unfollowed_redirect_with_a_bad_location_is_the_answer(location: str) -> None:
    server = RawAnswerServer(_answer(f"HTTP/1.1 302 Found\nLocation: {location}\nContent-Length: 4", b"body"))
    client = _client(server.url, "single")
    try:
        with client.request(dar.get("x", allow_redirects=False)) as response:
            assert (response.status, response.read()) == (302, b"body")
            assert X_INVALID_REDIRECT not in response.headers
    finally:
        client.close()
        server.close()
