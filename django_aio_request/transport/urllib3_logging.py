"""Keep path and query values out of urllib3's warnings.

urllib3 logs the URL of a request at WARNING in two messages, whatever its level for the request
line (DEBUG): path parameter values and query tokens reached production logs kept at INFO.

* ``urllib3.connectionpool``: ``Retrying (Retry(...)) after connection broken by '...': /things/<id>?token=<token>``,
  for each connection retried (``CONNECT_RETRIES`` >= 1 and a refused or reset connection);
* ``urllib3.connection``: ``Failed to parse headers (url=http://host:port/things/<id>?token=<token>): ...``,
  whenever a downstream answers a header line Python cannot parse (the peer decides).

:func:`install` adds :class:`RedactUrls` to those two loggers (``RequestsTransport`` does, once a
process, however many are built): each of the two messages keeps everything but the path and the
query, replaced by ``/***``; host and port stay (the retry's from urllib3's own ``extra``). Every
other record passes as it is, and none is dropped.

The second also wrote the head's "unparsed data": every field after the line ``http.client`` could
not parse (``Set-Cookie`` values, tokens), in its message and again in its traceback's last line.
Both now name the defects found (their class names: a defect's own text may quote the line) and
say the data was withheld. The traceback is kept as text (``record.exc_text``, which formatters
print as it is): its frames' variables hold the data and the URL, so the frames are not handed on.
"""

import contextlib
import logging
import re
import traceback
from typing import Any

from urllib3.exceptions import HeaderParsingError

REDACTED = "/***"

#: The two messages, exactly as urllib3 (1.26 and 2.x) writes them.
RETRYING = "Retrying (%r) after connection broken by '%r': %s"
FAILED_TO_PARSE_HEADERS = "Failed to parse headers (url=%s): %s"
_RETRY_EXTRA = "__urllib3-retry-warning"  # urllib3 2.x names the pool's host in this record attribute
_DEFECT_NAME = re.compile(r"\b([A-Z][A-Za-z0-9]*Defect)\(")


def redact_url(url: object) -> str:
    """``url`` without its path, query and fragment: ``http://host:port/***``, ``/***`` for a path."""
    text = str(url)
    scheme, separator, rest = text.partition("://")
    if not separator:
        return REDACTED
    end = len(rest)
    for mark in "/?#":
        found = rest.find(mark)
        if found != -1:
            end = min(end, found)
    return f"{scheme}://{rest[:end]}{REDACTED}"


class RedactUrls(logging.Filter):
    """Replaces the path and query of the URL in urllib3's two warnings that hold one (see the module)."""

    def filter(self, record: logging.LogRecord) -> bool:
        with contextlib.suppress(Exception):  # a record of another shape: passed on as it is, never lost
            self._redact(record)
        return True

    @staticmethod
    def _redact(record: logging.LogRecord) -> None:
        args: Any = record.args
        if not isinstance(args, tuple):
            return
        if record.msg == RETRYING and len(args) == 3:
            extra = getattr(record, _RETRY_EXTRA, None)
            host = extra.get("host") if isinstance(extra, dict) else None
            target = f"{host}{REDACTED}" if host else redact_url(args[2])
            record.args = (args[0], args[1], target)
        elif record.msg == FAILED_TO_PARSE_HEADERS and len(args) == 2:
            error = args[1]
            if isinstance(error, HeaderParsingError):
                error = _withheld(error)
                if record.exc_info and record.exc_info[1] is args[1]:
                    # The traceback as text, frames dropped: their variables hold the data and the
                    # URL (urllib3's exception, the unparsed payload, the request's URL), and a
                    # formatter that shows them (structlog's dict tracebacks) wrote them out.
                    frames = traceback.format_tb(record.exc_info[2])
                    text = "".join(
                        ["Traceback (most recent call last):\n", *frames, *traceback.format_exception_only(error)]
                    )
                    record.exc_info = None
                    record.exc_text = text.rstrip("\n")
            record.args = (redact_url(args[0]), error)


def _withheld(error: HeaderParsingError) -> HeaderParsingError:
    """A copy of ``error`` (same class, no traceback) that names its defects and not the data.

    urllib3 builds the message as ``f"{defects!r}, unparsed data: {data!r}"``: the names are read
    off the defects' reprs, the data (``None``, or empty, when there was none) is only said to exist."""
    text = str(error)
    names = ", ".join(_DEFECT_NAME.findall(text.partition(", unparsed data: ")[0])) or "Unknown"
    data = "" if text.endswith(_NO_DATA) else ", unparsed data withheld"
    copy = HeaderParsingError.__new__(type(error))
    copy.args = (f"[{names}]{data}",)
    return copy


_NO_DATA = tuple(f", unparsed data: {empty!r}" for empty in (None, "", b""))


_FILTER = RedactUrls()
LOGGERS = ("urllib3.connectionpool", "urllib3.connection")


def install() -> None:
    """Add the filter to urllib3's two loggers, once (``Logger.addFilter`` adds an instance once)."""
    for name in LOGGERS:
        logging.getLogger(name).addFilter(_FILTER)
