"""urllib3's own warnings that name a request's URL hold no path or query value (docs/security.md)."""

import logging
import traceback
from email.errors import InvalidHeaderDefect
from typing import Any

import pytest
import requests
import requests.adapters
from urllib3.exceptions import HeaderParsingError

import django_aio_request as dar
from django_aio_request.transport import urllib3_logging
from tests.support.loopback import Handler, LoopbackServer, free_port

PATH_SECRET, QUERY_SECRET = "pa7h-ID-SECRET", "qu3ry-TOKEN-SECRET"
FORMAT = logging.Formatter("%(name)s %(levelname)s %(message)s")


@pytest.fixture
def urllib3_at_info(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """What docs/security.md advises for production: urllib3 at INFO."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="urllib3")
    return caplog


def _secret_request() -> dar.Request:
    return dar.get("things/{id}", path_parameters={"id": PATH_SECRET}, query_parameters={"token": QUERY_SECRET})


def _urllib3_records(caplog: pytest.LogCaptureFixture, logger: str, start: str) -> list[str]:
    """The records of ``logger`` at INFO or above whose message starts with ``start``, formatted
    as a handler writes them (traceback included)."""
    return [
        FORMAT.format(record)
        for record in caplog.records
        if record.name == logger and record.levelno >= logging.INFO and record.getMessage().startswith(start)
    ]


def _assert_no_value(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        if record.levelno >= logging.INFO:
            text = FORMAT.format(record)
            assert PATH_SECRET not in text, text
            assert QUERY_SECRET not in text, text


def _call_through_an_adapter_of_its_own(server: LoopbackServer, answer: bytes) -> None:
    """One call whose downstream writes ``answer`` as it is, read through an adapter of the caller's
    own class (the transport uses it as it is, docs/usage.md): http.client parses the head, and
    urllib3 warns about what it could not parse."""

    def write(handler: Handler) -> None:
        handler.wfile.write(answer)
        handler.wfile.flush()
        handler.close_connection = True

    class OwnAdapter(requests.adapters.HTTPAdapter):
        pass

    server.route("/things/*", write)
    session = requests.Session()
    session.mount(server.url, OwnAdapter())
    client = dar.setup(
        endpoint=server.url,
        safe_method_strategy=dar.single_attempt_strategy(),
        metrics=False,
        transport=dar.RequestsTransport(session=session),
    )
    try:
        with client.request(_secret_request()) as response:
            assert response.status == 200
    finally:
        client.close()


def test_a_retried_connection_is_logged_without_path_or_query_values(urllib3_at_info: pytest.LogCaptureFixture) -> None:
    """CONNECT_RETRIES >= 1 and a refused connection: urllib3 warned ``Retrying (...) after connection
    broken by ...: /things/pa7h-ID-SECRET?token=qu3ry-TOKEN-SECRET`` once a retry."""
    port = free_port()  # nothing listens there: refused
    client = dar.setup(
        endpoint=f"http://127.0.0.1:{port}/",
        transport=dar.RequestsTransport(connect_retries=2),
        safe_method_strategy=dar.single_attempt_strategy(),
        metrics=False,
    )
    try:
        with client.request(_secret_request()) as response:
            assert response.status == 489
    finally:
        client.close()
    retries = _urllib3_records(urllib3_at_info, "urllib3.connectionpool", "Retrying")
    assert len(retries) == 2, retries  # still logged, one a retry, with the host and the cause
    for text in retries:
        assert "127.0.0.1/***" in text, text
        assert "Connection refused" in text, text
    _assert_no_value(urllib3_at_info)


def test_a_header_line_urllib3_cannot_parse_is_logged_without_path_or_query_values(
    server: LoopbackServer, urllib3_at_info: pytest.LogCaptureFixture
) -> None:
    """A downstream answering a header line with no name: urllib3 warned ``Failed to parse headers
    (url=http://host:port/things/pa7h-ID-SECRET?token=qu3ry-TOKEN-SECRET)``. The transport's own
    connections refuse such a head (a 489, transport/response_head.py); an adapter of the caller's
    own class, which the transport uses as it is (docs/usage.md), reads it with http.client's parser
    and urllib3 warns."""

    _call_through_an_adapter_of_its_own(
        server, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n: x\r\nConnection: close\r\n\r\nok"
    )
    assert server.received(f"/things/{PATH_SECRET}"), "the request was not sent as the test means"
    warnings = _urllib3_records(urllib3_at_info, "urllib3.connection", "Failed to parse headers")
    assert len(warnings) == 1, warnings
    assert f"url=http://127.0.0.1:{server.port}/***" in warnings[0], warnings[0]
    assert "InvalidHeaderDefect" in warnings[0], warnings[0]
    _assert_no_value(urllib3_at_info)


COOKIE_SECRET = "c00kie-SESSION-SECRET"


class LocalsFormatter(logging.Formatter):
    """Writes each frame's variables under a traceback, as structlog's dict tracebacks do."""

    def formatException(self, ei: Any) -> str:
        return "".join(traceback.TracebackException(*ei, capture_locals=True).format())


def test_a_head_urllib3_cannot_parse_is_logged_without_the_unparsed_fields(
    server: LoopbackServer, urllib3_at_info: pytest.LogCaptureFixture
) -> None:
    """A line that is no field ends http.client's header block: the fields after it (a
    ``Set-Cookie`` here) are its "unparsed data", which urllib3 wrote into its warning, once in the
    message and again in the traceback (``HeaderParsingError: [...], unparsed data: '...'``).
    The warning still says which defects were found, and its traceback still shows where."""

    _call_through_an_adapter_of_its_own(
        server,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nnot a field\r\n"
        b"Set-Cookie: sid=" + COOKIE_SECRET.encode() + b"\r\nConnection: close\r\n\r\nok",
    )
    warnings = _urllib3_records(urllib3_at_info, "urllib3.connection", "Failed to parse headers")
    assert len(warnings) == 1, warnings
    text = warnings[0]
    (record,) = [r for r in urllib3_at_info.records if r.getMessage().startswith("Failed to parse headers")]
    if record.exc_info:
        record.exc_text = None  # a handler before this one cached its own text
    with_locals = LocalsFormatter("%(message)s").format(record)
    for secret in (COOKIE_SECRET, PATH_SECRET, QUERY_SECRET):
        # The frames' variables held them (urllib3's exception, the unparsed data, the request URL):
        # a formatter that shows them (structlog's dict tracebacks do by default) wrote them out.
        assert secret not in with_locals, with_locals
        assert secret not in repr(record.__dict__), record.__dict__
    assert COOKIE_SECRET not in text, text
    assert "MissingHeaderBodySeparatorDefect" in text, text  # what was wrong is still said
    assert "unparsed data withheld" in text, text
    assert "Traceback" in text, text  # and where
    assert "assert_header_parsing" in text, text
    _assert_no_value(urllib3_at_info)


def test_the_filter_is_added_once_however_many_transports_are_built() -> None:
    for _ in range(3):
        dar.RequestsTransport().close()
    for name in urllib3_logging.LOGGERS:
        filters = logging.getLogger(name).filters
        assert sum(isinstance(f, urllib3_logging.RedactUrls) for f in filters) == 1, filters


def test_other_records_of_those_loggers_pass_untouched() -> None:
    redact = urllib3_logging.RedactUrls()
    record = logging.LogRecord(
        "urllib3.connectionpool",
        logging.WARNING,
        __file__,
        1,
        "Connection pool is full, discarding connection: %s",
        ("h",),
        None,
    )
    assert redact.filter(record) is True
    assert record.getMessage() == "Connection pool is full, discarding connection: h"
    for data, said in ((None, "[InvalidHeaderDefect]"), ("", "[InvalidHeaderDefect]")):
        error = HeaderParsingError([InvalidHeaderDefect("Missing header name.")], data)
        record = logging.LogRecord(
            "urllib3.connection",
            logging.WARNING,
            __file__,
            1,
            urllib3_logging.FAILED_TO_PARSE_HEADERS,
            ("http://h/x", error),
            None,
        )
        assert redact.filter(record) is True
        assert record.getMessage() == f"Failed to parse headers (url=http://h/***): {said}"  # nothing withheld
    odd = logging.LogRecord(
        "urllib3.connection", logging.WARNING, __file__, 1, urllib3_logging.FAILED_TO_PARSE_HEADERS, None, None
    )
    assert redact.filter(odd) is True  # a record of another shape is kept as it is
