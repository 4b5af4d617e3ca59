"""Reading the claimed priority, service name and timeout from the first bytes of a request head
(``server/shedding/request_head.py``), as ``PriorityThreadWorker`` peeks them off the socket."""

import string

from hypothesis import given
from hypothesis import strategies as st

from django_aio_request import Priority
from django_aio_request.server.middleware import parse_priority
from django_aio_request.server.shedding.request_head import NOTHING, Claims, read_claims


def head(*fields: str, end: bool = True) -> bytes:
    lines = ["GET /cpu HTTP/1.1", "Host: svc", *fields]
    return ("\r\n".join(lines) + ("\r\n\r\n" if end else "")).encode()


def test_the_headers_of_a_plain_request_are_read() -> None:
    data = head("X-Request-Priority: high", "X-Service-Name: billing", "X-Request-Timeout: 4.987")
    assert read_claims(data) == Claims(Priority.HIGH, "billing", "4.987")


def test_names_in_any_case_and_blanks_around_values_as_the_middleware_reads_them() -> None:
    data = head("x-REQUEST-priority:\t LOW ", "X-SERVICE-NAME:  billing\t")
    assert read_claims(data) == Claims(Priority.LOW, "billing", None)


def test_a_request_that_claims_nothing_reads_as_nothing() -> None:
    assert read_claims(head("Accept: */*")) == NOTHING
    assert read_claims(b"") == NOTHING
    assert read_claims(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03") == NOTHING  # a TLS hello


def test_a_head_not_all_there_is_not_read() -> None:
    # "low" cut to "lo" must not be misread; "high" cut before its line ended is not taken either; nor
    # a whole line before the head's end came, which a second header of its name may follow (a review:
    # "X-Request-Timeout: 0.01" first, a second one past the 8 KiB peeked, served ahead of everyone).
    assert read_claims(head("X-Request-Priority: high", end=False)) == NOTHING
    assert read_claims(head("X-Request-Priority: high", "Accept: */*", end=False)) == NOTHING
    assert read_claims(head("X-Request-Timeout: 0.01", "X-Padding: " + "x" * 9000, end=False)[:8192]) == NOTHING
    assert read_claims(head("X-Request-Priority: high", "Accept: */*")).priority is Priority.HIGH


def test_a_header_sent_twice_is_not_trusted() -> None:
    data = head("X-Request-Priority: high", "X-Request-Priority: low", "X-Service-Name: a", "X-Service-Name: b")
    assert read_claims(data) == NOTHING


def test_only_the_first_request_of_pipelined_bytes_counts() -> None:
    data = head("Accept: */*") + head("X-Request-Priority: high")
    assert read_claims(data) == NOTHING


def test_values_that_are_not_priorities_or_ascii_are_not_read() -> None:
    data = head("X-Request-Priority: urgent", "X-Service-Name: bill\u00efng", "X-Request-Timeout: \u0665")
    assert read_claims(data) == NOTHING


_names = st.sampled_from(["X-Request-Priority", "x-request-priority", "X-Service-Name", "X-Request-Timeout", "Accept"])
_values = st.one_of(
    st.sampled_from(["high", "HIGH", " low ", "normal", "5", "billing", "", "hi gh"]),
    st.text(alphabet=string.printable.replace("\r", "").replace("\n", ""), max_size=12),
)


@given(st.lists(st.tuples(_names, _values), max_size=6))
def test_a_well_formed_head_claims_what_the_middleware_would_read(fields: list[tuple[str, str]]) -> None:
    claims = read_claims(head(*(f"{name}: {value}" for name, value in fields)))
    sent = [value for name, value in fields if name.lower() == "x-request-priority"]
    expected = parse_priority(sent[0].strip(" \t")) if len(sent) == 1 else None
    assert claims.priority is expected


@given(st.binary(max_size=600))
def test_any_bytes_are_read_without_an_error(data: bytes) -> None:
    claims = read_claims(data)
    assert claims.priority is None or isinstance(claims.priority, Priority)
    assert claims.service is None or (claims.service.isascii() and claims.service == claims.service.strip(" \t"))


@given(st.binary(max_size=200), st.sampled_from([b"high", b"low", b"normal"]))
def test_a_priority_after_any_junk_line_is_still_read_or_nothing_is(junk: bytes, value: bytes) -> None:
    data = b"GET / HTTP/1.1\r\n" + junk.replace(b"\r\n", b"") + b"\r\nX-Request-Priority: " + value + b"\r\n\r\n"
    assert read_claims(data).priority in (Priority(value.decode()), None)
