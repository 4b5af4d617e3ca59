"""Responses: one read in full by the transport, or a synthetic one made without the network."""

import codecs
import datetime
import email.utils
import encodings
import encodings.aliases
import functools
import json
import math
import pkgutil
import re
from collections.abc import Callable, Mapping
from typing import Any

from requests.structures import CaseInsensitiveDict

from django_aio_request.core import headers as h
from django_aio_request.core import status

# The media type alone: "application/json" or "application/<anything>+json", then parameters or nothing
# ("application/jsonp", "application/json-seq" are other types).
_JSON = re.compile(r"^\s*application/(?:[\w.+-]+\+)?json\s*(?:;|$)", re.IGNORECASE)
_PYTHON_LITERAL_CODECS = frozenset({"unicode-escape", "raw-unicode-escape"})
_QUOTES_AND_SPACE = "\"' \t"


def _charset_parameter(content_type: str) -> str | None:
    """The ``charset`` parameter of a media type (``text/html; charset="utf-8"``), read as requests
    reads it (each ``;``-separated parameter, quotes stripped): not a ``charset=`` that appears
    inside another parameter's value (``foo="charset=utf-16"``)."""
    found = None
    for parameter in content_type.split(";")[1:]:
        key, equals, value = parameter.partition("=")
        if equals and key.strip(_QUOTES_AND_SPACE).lower() == "charset":
            found = value.strip(_QUOTES_AND_SPACE)
    return found


#: The longest charset name a response may name: Python's longest codec name or alias has 21 characters.
_MOST_CHARSET_CHARACTERS = 64


def _normalized(name: str) -> str:
    """``name`` as Python's codec search reads it: lower case, each run of other characters than
    letters, digits and ``.`` one ``_`` (``UTF-8``, ``utf 8`` and ``utf---8`` are all ``utf_8``)."""
    return encodings.normalize_encoding(name).lower()


@functools.cache
def _shipped_codecs() -> frozenset[str]:
    """Every codec name and alias Python ships, normalized: a few hundred."""
    modules = (module.name for module in pkgutil.iter_modules(encodings.__path__))
    names = {*encodings.aliases.aliases, *encodings.aliases.aliases.values(), *modules}
    return frozenset(_normalized(name) for name in names)


class UnexpectedContentTypeError(Exception):
    """The response's Content-Type is not the one the caller expected."""


def _is_expected(actual: str, expected: str) -> bool:
    if expected == "application/json":
        return bool(_JSON.match(actual))
    return expected.lower() in actual.lower()


class Response:
    """A response whose body has been read; ``elapsed`` is the attempt's wall time in seconds."""

    __slots__ = ("_body", "budget_exhausted", "elapsed", "headers", "status")

    def __init__(
        self, *, status: int, headers: Mapping[str, str] | None = None, body: bytes = b"", elapsed: float = 0.0
    ) -> None:
        self.status = status
        # A transport hands over requests' own dict, which nothing else holds: no need to copy it.
        self.headers: CaseInsensitiveDict[str] = (
            headers if isinstance(headers, CaseInsensitiveDict) else CaseInsensitiveDict(headers or {})
        )
        self.elapsed = elapsed
        self._body = body
        # Set by the client on a call's final response: its retry budget refused an extra attempt
        # (a retry or a hedge) this call would have sent (docs/budgets-and-shedding.md).
        self.budget_exhausted = False

    @property
    def content_type(self) -> str:
        return self.headers.get(h.CONTENT_TYPE, "")

    def read(self) -> bytes:
        return self._body

    def text(self, encoding: str | None = None) -> str:
        """The body decoded with ``encoding``, else the charset the response names, else UTF-8.

        Bytes that do not decode are replaced. A charset the peer names that cannot decode that way
        (``undefined``, ``idna``, ``punycode``: codecs that refuse ``errors="replace"`` or fail on
        any input) is ignored, as an unknown one is, and one Python does not ship (``_charset``):
        UTF-8 then, whatever the name holds (a NUL, a lone surrogate). An ``encoding`` the caller passes
        is the caller's: a wrong one raises.
        """
        if encoding is not None:
            return self._body.decode(encoding, errors="replace")
        charset = self._charset()
        if charset is not None:
            try:
                return self._body.decode(charset, errors="replace")
            except (UnicodeError, LookupError):
                pass
        return self._body.decode("utf-8", errors="replace")

    def json(
        self,
        *,
        encoding: str | None = None,
        loads: Callable[[str], Any] = json.loads,
        content_type: str | None = "application/json",
    ) -> Any:
        """The body parsed as JSON. ``content_type=None`` skips the Content-Type check.

        Raises only ``UnexpectedContentTypeError`` and what ``loads`` raises for invalid input
        (``json.JSONDecodeError``, a ``ValueError``, also for nesting too deep to parse)."""
        if content_type is not None and not _is_expected(self.content_type, content_type):
            raise UnexpectedContentTypeError(
                f"expected {content_type!r} but the response (status {self.status}) has {self.content_type!r}"
            )
        if not self._body.strip(b" \t\r\n"):
            # No JSON text at all, as aiohttp (aio-request's) reads it: None, for an empty body and
            # one of white space alike (the second raised JSONDecodeError here, a review).
            return None
        # A byte order mark before the JSON text: RFC 8259 lets a parser ignore it, requests does,
        # json.loads refuses it ("Unexpected UTF-8 BOM").
        text = self.text(encoding).removeprefix("\ufeff")
        try:
            return loads(text)
        except RecursionError:
            # json.loads recurses once per nesting level: "[" * 100_000 from a peer must not escape
            # as a RecursionError, which no caller expects from parsing.
            raise json.JSONDecodeError("nested too deeply to parse", text, 0) from None
        except ValueError as error:
            if loads is not json.loads or isinstance(error, json.JSONDecodeError):
                raise
            # A number of more than 4,300 digits (int()'s limit) is valid JSON that json.loads refuses
            # with a plain ValueError: the documented error, so that a caller's except catches it.
            raise json.JSONDecodeError(f"cannot be parsed: {error}", text, 0) from None

    def _charset(self) -> str | None:
        """The codec of the charset the response names, if it is one Python ships that decodes text.

        Only a name Python ships (normalized) is looked up: Python's codec search keeps every name
        it was asked for, found or not, for the life of the process, and a peer naming a new
        charset in each response (``charset=x1``, ``x2``..., or ``utf-`` with ever more hyphens)
        grew it without end (20,000 reads of 4 KB names took 77 MB). A codec registered with
        ``codecs.register`` is therefore not used for a peer's charset: pass ``encoding``.
        """
        name = _charset_parameter(self.content_type)
        if not name or len(name) > _MOST_CHARSET_CHARACTERS:
            return None
        normalized = _normalized(name)
        if normalized not in _shipped_codecs():
            # Python's search also tries the name with "." as "_" ("iso8859.1").
            normalized = normalized.replace(".", "_")
            if normalized not in _shipped_codecs():
                return None
        try:
            info = codecs.lookup(normalized)
        except (LookupError, ValueError):
            # LookupError: a module Python ships for another platform (mbcs, oem off Windows).
            # ValueError: what codecs.lookup raises for a NUL or a lone surrogate, which a
            # normalized name no longer holds.
            return None
        # "base64", "rot13", "zlib"... are codecs too, but bytes.decode() refuses them (LookupError);
        # the escape codecs read Python literals, and warn (DeprecationWarning) on what they cannot.
        if not getattr(info, "_is_text_encoding", True) or info.name in _PYTHON_LITERAL_CODECS:
            return None
        return info.name

    def is_informational(self) -> bool:
        return 100 <= self.status < 200

    def is_successful(self) -> bool:
        return 200 <= self.status < 300

    def is_redirection(self) -> bool:
        return 300 <= self.status < 400

    def is_client_error(self) -> bool:
        return 400 <= self.status < 500

    def is_server_error(self) -> bool:
        return 500 <= self.status < 600

    def __repr__(self) -> str:
        return f"<Response {self.status}>"


class EmptyResponse(Response):
    """A response made without a body, for outcomes decided without the server (timeout, open breaker)."""

    __slots__ = ()

    def __init__(self, *, status: int, headers: Mapping[str, str] | None = None, elapsed: float = 0.0) -> None:
        super().__init__(status=status, headers=headers, elapsed=elapsed)


class UnsentResponse(EmptyResponse):
    """The outcome of an attempt that sent nothing: the transport's, for an attempt cancelled or out
    of time while it waited for one of the client's connections (``MAX_CONNECTIONS``; its ``elapsed``
    is that wait, which says nothing of the server: a learning delays provider and the circuit
    breaker leave it out, and ``aio_request_transport_latency`` does not record it), an open
    circuit's 502 and the 408 of an attempt with too little time left (both made before the
    transport, with ``elapsed`` 0). The retry budget takes no deposit for a first attempt that got one."""

    __slots__ = ()


class UnreachedResponse(EmptyResponse):
    """The outcome of an attempt whose request never went out on a connection: the connection was
    refused, timed out or was aborted while being made, the name did not resolve, the TLS handshake
    failed. Unlike :class:`UnsentResponse` it says something of the endpoint (it is unreachable), so
    the circuit breaker counts it as a failure; but the server received no request, so the retry
    budget takes no deposit for a first attempt that got one. (Deposited, an outage that dropped
    connections left a budget that let through 2.07 requests a call once the server came back
    answering 500s, where 1.2 and the floor are due: a review.)"""

    __slots__ = ()


def is_abandoned(response: Response) -> bool:
    """The attempt was stopped by its strategy (a hedge that lost) or with its call: the 499 made
    here, which says nothing about the endpoint. A peer's own 499 is an answer like any other."""
    return response.status == status.CANCELLED and isinstance(response, EmptyResponse)


# The most a Retry-After is taken to ask for: a larger one is the same as "not within this call".
_RETRY_AFTER_MAX_DIGITS = 9


def retry_after(response: Response) -> float:
    """Seconds a 503 or 429 asks its client to wait before trying again (``Retry-After``, RFC 9110
    10.2.3: whole seconds, or an HTTP date); 0 when it asks nothing, or asks it in a form that is not
    one of those (a malformed value from the peer is no reason to wait, nor to fail the call).

    A call's next attempt waits at least this long, whatever its strategy (strategies/): a shedding
    server asks its callers to step back, and retried at the backoff's 50 ms, 146 retries of a
    review's callers came within 58 ms of the 503 that asked for 1 s."""
    if response.status not in (429, 503):
        return 0.0
    raw = response.headers.get("Retry-After")
    if raw is None:
        return 0.0
    value = raw.strip()
    if value.isascii() and value.isdigit():
        # Leading zeros are digits too (RFC 9110's 1*DIGIT), not a larger number: "0000000001" is
        # 1 s. Counted with them, it was past the limit, "never", and every call ended at once.
        digits = value.lstrip("0") or "0"
        return float(digits) if len(digits) <= _RETRY_AFTER_MAX_DIGITS else math.inf
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return 0.0
    if when.tzinfo is None:  # "-0000": a time in UTC, says RFC 5322
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, (when - datetime.datetime.now(datetime.UTC)).total_seconds())


# The statuses of a server that declines to serve an attempt now (its time, its load), not of a failure.
_DECLINED = frozenset((408, 429, 503))


#: The only statuses :func:`is_refusal` or :func:`is_abandoned` can say yes to: a response with any
#: other is neither, told by one look (a hedged call asks of its attempt 0 on every call).
REFUSED_OR_ABANDONED = _DECLINED | {status.CANCELLED}


def is_refusal(response: Response) -> bool:
    """The server declined this attempt and said not to try again: ``X-Do-Not-Retry`` on a 408, 429
    or 503 (a shedding server's 503 for an attempt it cannot serve within the caller's deadline, the
    middleware's 408 for too little time left). It speaks of that attempt, not of the others of the
    call already admitted and running: a hedge it answers ends no attempt in flight
    (strategies/parallel.py). Not one carrying ``X-Circuit-Breaker`` (a gateway's breaker, open: the
    endpoint behind it is failing, and the attempts in flight with it)."""
    return (
        response.status in _DECLINED
        and h.X_DO_NOT_RETRY in response.headers
        and h.X_CIRCUIT_BREAKER not in response.headers
    )


def is_open_circuit_fallback(response: Response) -> bool:
    """The 502 this client's own circuit breaker answered without sending (made in the pipeline,
    core/pipeline.py). A peer's answer carrying ``X-Circuit-Breaker`` (a gateway passing on its own
    breaker's fallback) is an answer like any other: the endpoint answered, and it said so."""
    return isinstance(response, EmptyResponse) and h.X_CIRCUIT_BREAKER in response.headers
